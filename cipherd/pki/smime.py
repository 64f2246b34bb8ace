"""
S/MIME (RFC 8551) on whole messages: the message's own headers (From, To,
Subject, ...) stay outside; its MIME entity (the Content-* headers and the
body) is what gets signed or encrypted.

Signatures are made over, and checked against, the canonical form of the
entity (RFC 8551 §3.1.1: CRLF line ends).  A ``multipart/signed`` message is
split on its raw bytes -- never re-serialised through the ``email``
package, which would change what was signed.
"""

from __future__ import annotations

import binascii
import email.policy
import functools
import io
import itertools
import os
import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from email import encoders
from email.parser import BytesHeaderParser, BytesParser

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cipherd.core.lines import has_long_line, windows
from cipherd.pki import cms
from cipherd.pki.cms import PrivateKey
from cipherd.pki.errors import CMSFormatError

_MIME_HEADER = re.compile(rb"(?i)(content-|mime-version$)")
_HEADER_START = re.compile(rb"[!-9;-~]+:")


class NotSMIME(CMSFormatError):
    """
    The message is not signed or encrypted with S/MIME.
    """


@dataclass(frozen=True)
class Parts:
    """
    A message cut into its header fields (each with its folded lines, raw)
    and body.  The body stays where it is in the (canonical) message: a
    large body is not copied to be read.
    """

    fields: list[bytes]
    source: bytes
    body_start: int

    @classmethod
    def split(cls, message: bytes) -> Parts:
        message = canonicalize(message)
        end = message.find(b"\r\n\r\n")
        if message.startswith(b"\r\n"):
            head, body_start = b"", 2
        elif end < 0:
            head, body_start = message, len(message)
        else:
            head, body_start = message[: end + 2], end + 4
        fields: list[bytes] = []
        for line in head.split(b"\r\n"):
            if not line:
                continue
            if line[:1] in (b" ", b"\t") and fields:
                fields[-1] += b"\r\n" + line
            else:
                fields.append(line)
        return cls(fields, message, body_start)

    @property
    def body(self) -> bytes:
        """
        The body (a copy: prefer L{body_view} for reading a large one).
        """
        return self.source[self.body_start:]

    def body_view(self) -> memoryview:
        return memoryview(self.source)[self.body_start:]

    @staticmethod
    def _name(field: bytes) -> bytes:
        return field.split(b":", 1)[0].strip().lower()

    @functools.cached_property
    def _mime_and_outer(self) -> tuple[list[bytes], list[bytes]]:
        mime: list[bytes] = []
        outer: list[bytes] = []
        for field in self.fields:
            (mime if _MIME_HEADER.match(self._name(field)) else outer).append(field)
        return mime, outer

    def mime_fields(self) -> list[bytes]:
        return list(self._mime_and_outer[0])

    def outer_fields(self) -> list[bytes]:
        return list(self._mime_and_outer[1])

    def entity_head(self) -> bytes:
        """
        The header of the MIME entity: its Content-* fields and the blank line.
        """
        fields = [f for f in self.mime_fields() if self._name(f) != b"mime-version"]
        if not fields:
            # RFC 2045 §5.2: no Content-Type means this.
            fields = [b"Content-Type: text/plain; charset=us-ascii"]
        return b"\r\n".join(fields) + b"\r\n\r\n"

    def entity(self) -> bytes:
        """
        The MIME entity: the Content-* fields and the body.
        """
        return self.entity_head() + self.body_view()


def canonicalize(data: bytes) -> bytes:
    """
    CRLF line ends throughout (bare LF and bare CR become CRLF).
    """
    if b"\r" not in data:
        return data.replace(b"\n", b"\r\n")
    crlf = data.count(b"\r\n")
    if crlf == data.count(b"\r") and crlf == data.count(b"\n"):
        return data  # already canonical: no copy
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def _needs_encoding(entity: Chunk) -> bool:
    """
    Whether C{entity} (canonical) has 8-bit bytes or a line over 998.
    """
    return any(not window.isascii() or has_long_line(window) for window in windows(entity))


def seven_bit(entity: bytes) -> bytes:
    """
    The entity with every 8-bit or long-lined leaf part re-encoded as
    base64, so that a signature survives transports that are not 8-bit
    clean (RFC 8551 §3.1.2).  An entity that is already 7-bit is returned
    unchanged, byte for byte.
    """
    if not _needs_encoding(entity):
        return entity
    message = BytesParser(policy=email.policy.SMTP).parsebytes(entity)
    for part in message.walk():
        if part.is_multipart():
            continue
        raw = part.get_payload(decode=True)
        if raw is None:
            continue
        encoding = (part.get("Content-Transfer-Encoding") or "7bit").lower()
        payload = part.get_payload()
        if encoding in ("base64", "quoted-printable") and isinstance(payload, str) and (
            not _needs_encoding(payload.encode("ascii", "replace"))
        ):
            continue
        del part["Content-Transfer-Encoding"]
        part.set_payload(raw)
        encoders.encode_base64(part)
    return canonicalize(message.as_bytes(policy=email.policy.SMTP))


def _boundary() -> str:
    return "----=_cipherd_" + os.urandom(12).hex()


_BASE64_LINE = 76  # RFC 2045 §6.8
_BASE64_BLOCK = 57 * 1024  # raw bytes per step: a whole number of lines

Chunk = cms.Chunk


def _base64_size(raw_length: int) -> int:
    encoded = 4 * -(-raw_length // 3)
    return encoded + 2 * -(-encoded // _BASE64_LINE) if raw_length else 2


def _base64_block(data: Chunk | bytearray) -> bytes:
    if not len(data):
        return b"\r\n"
    encoded = binascii.b2a_base64(data, newline=False)
    return b"\r\n".join([encoded[i : i + _BASE64_LINE]
                        for i in range(0, len(encoded), _BASE64_LINE)]) + b"\r\n"


def _base64_stream(pieces: Iterable[Chunk | bytearray]) -> Iterator[bytes]:
    """
    The concatenation of C{pieces} as base64 in 76-character CRLF lines,
    made a block at a time as it is read: neither the data nor its base64
    form is ever held whole.
    """
    pending = bytearray()
    empty = True
    for piece in pieces:
        view = memoryview(piece)
        start = 0
        if len(view):
            empty = False
        if pending:
            start = min(len(view), _BASE64_BLOCK - len(pending))
            pending += view[:start]
            if len(pending) < _BASE64_BLOCK:
                continue
            yield _base64_block(pending)
            pending.clear()
        whole = start + (len(view) - start) // _BASE64_BLOCK * _BASE64_BLOCK
        for block in range(start, whole, _BASE64_BLOCK):
            yield _base64_block(view[block : block + _BASE64_BLOCK])
        pending += view[whole:]
    if pending or empty:
        yield _base64_block(pending)


def _base64_lines(data: Chunk | bytearray) -> bytes:
    return b"".join(_base64_stream([data]))


def _head(outer: Iterable[bytes], mime: Sequence[bytes]) -> bytes:
    return b"\r\n".join([*outer, b"MIME-Version: 1.0", *mime]) + b"\r\n\r\n"


def _join(length: int, pieces: Iterable[Chunk]) -> bytes:
    """
    C{pieces} in one bytes object of C{length}, laid out once: its buffer is
    made at its final size before the first piece is written, and handed
    over without a copy.
    """
    out = io.BytesIO()
    if length:
        out.seek(length - 1)
        out.write(b"\0")  # io.BytesIO makes its buffer this size at once
        out.seek(0)
    for piece in pieces:
        out.write(piece)
    if out.tell() != length:
        raise RuntimeError(f"wrote {out.tell()} bytes where {length} were laid out")
    return out.getvalue()


@dataclass(frozen=True)
class MessagePieces:
    """
    A message as S/MIME takes it: its own header fields (From, To, ...),
    which stay outside, and its MIME entity (the Content-* fields, a blank
    line and the body) in canonical pieces, which are signed or encrypted
    without being joined.  Each piece but the last ends at a line end.
    """

    outer: list[bytes]
    entity: list[Chunk]

    @classmethod
    def of(cls, message: bytes | MessagePieces) -> MessagePieces:
        if isinstance(message, MessagePieces):
            return message
        parts = Parts.split(message)
        return cls(parts.outer_fields(), [parts.entity_head(), parts.body_view()])

    @property
    def length(self) -> int:
        return sum(len(piece) for piece in self.entity)

    def join(self) -> bytes:
        """
        The message in one piece: the outer fields, then the entity (which
        starts with its own Content-* fields).
        """
        head = b"\r\n".join([*self.outer, b"MIME-Version: 1.0"]) + b"\r\n"
        return _join(len(head) + self.length, itertools.chain([head], self.entity))


def _pkcs7_mime_fields(smime_type: bytes) -> list[bytes]:
    return [b"Content-Type: application/pkcs7-mime; smime-type=" + smime_type
            + b"; name=smime.p7m",
            b"Content-Transfer-Encoding: base64",
            b"Content-Disposition: attachment; filename=smime.p7m"]


def _signed_entity(entity: list[Chunk], certificate: x509.Certificate, key: PrivateKey,
                   *, signing_time: datetime, chain: Sequence[x509.Certificate],
                   detached: bool, pss: bool = False) -> tuple[list[bytes], int, Iterable[Chunk]]:
    """
    The signed form of C{entity}: its Content-* fields, the length of its
    body and its body, in pieces made as they are read.
    """
    if detached and any(_needs_encoding(piece) for piece in entity):
        entity = [seven_bit(b"".join(entity))]
    signature = cms.sign_chunks(entity, certificate, key, signing_time=signing_time,
                                detached=detached, chain=chain, pss=pss)
    if not detached:
        return (_pkcs7_mime_fields(b"signed-data"), _base64_size(sum(len(p) for p in signature)),
                _base64_stream(signature))
    boundary = _boundary().encode()
    body: list[Chunk] = [
        b"This is a cryptographically signed message in MIME format.\r\n\r\n--" + boundary
        + b"\r\n",
        *entity,
        b"\r\n--" + boundary + b"\r\n"
        b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename=smime.p7s\r\n\r\n"
        + b"".join(_base64_stream(signature)) + b"\r\n--" + boundary + b"--\r\n",
    ]
    # RFC 8551 §3.5.3.2; Ed25519 signs with SHA-512 (RFC 8419).
    micalg = b"sha-512" if isinstance(key, Ed25519PrivateKey) else b"sha-256"
    fields = [b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; '
              b'micalg=' + micalg + b';\r\n\tboundary="' + boundary + b'"']
    return fields, sum(len(piece) for piece in body), body


def _encrypted(outer: list[bytes], length: int, entity: Iterable[Chunk],
               recipients: Sequence[x509.Certificate], *, cipher: str, oaep: bool) -> bytes:
    der_length, der = cms.encrypt_chunks(entity, recipients, length=length, cipher=cipher,
                                         oaep=oaep)
    smime_type = b"authEnveloped-data" if cipher.endswith("gcm") else b"enveloped-data"
    head = _head(outer, _pkcs7_mime_fields(smime_type))
    return _join(len(head) + _base64_size(der_length),
                 itertools.chain([head], _base64_stream(der)))


def sign_message(
    message: bytes | MessagePieces,
    certificate: x509.Certificate,
    key: PrivateKey,
    *,
    signing_time: datetime,
    chain: Sequence[x509.Certificate] = (),
    detached: bool = True,
    pss: bool = False,
) -> bytes:
    """
    Sign a message: C{multipart/signed} (detached, the default: readable
    without S/MIME) or opaque C{application/pkcs7-mime; smime-type=signed-data}.

    @param pss: sign with RSASSA-PSS rather than PKCS#1 v1.5 (RSA keys).
    """
    pieces = MessagePieces.of(message)
    fields, length, body = _signed_entity(pieces.entity, certificate, key,
                                          signing_time=signing_time, chain=chain,
                                          detached=detached, pss=pss)
    head = _head(pieces.outer, fields)
    return _join(len(head) + length, itertools.chain([head], body))


def encrypt_message(
    message: bytes | MessagePieces,
    recipients: Sequence[x509.Certificate],
    *,
    cipher: str = "aes256_cbc",
    oaep: bool = False,
) -> bytes:
    """
    Encrypt a message's entity for C{recipients}; the outer headers stay.
    The entity is encrypted from its pieces and the result written once:
    a large message is never copied whole on the way.
    """
    pieces = MessagePieces.of(message)
    return _encrypted(pieces.outer, pieces.length, pieces.entity, recipients, cipher=cipher,
                      oaep=oaep)


def sign_and_encrypt_message(
    message: bytes | MessagePieces,
    certificate: x509.Certificate,
    key: PrivateKey,
    recipients: Sequence[x509.Certificate],
    *,
    signing_time: datetime,
    chain: Sequence[x509.Certificate] = (),
    detached: bool = True,
    cipher: str = "aes256_cbc",
    oaep: bool = False,
    pss: bool = False,
) -> bytes:
    """
    C{encrypt_message(sign_message(message, ...), ...)}, byte for byte, but
    the signed message is encrypted as it is made: it is never held whole
    (for an opaque signature, neither is its base64 form).
    """
    pieces = MessagePieces.of(message)
    fields, length, body = _signed_entity(pieces.entity, certificate, key,
                                          signing_time=signing_time, chain=chain,
                                          detached=detached, pss=pss)
    fields_head = b"\r\n".join(fields) + b"\r\n\r\n"
    return _encrypted(pieces.outer, len(fields_head) + length,
                      itertools.chain([fields_head], body), recipients, cipher=cipher,
                      oaep=oaep)


@dataclass(frozen=True)
class SmimeInfo:
    """
    What the outer Content-Type of a message says about S/MIME.

    @ivar kind: C{"signed"} (multipart/signed), C{"signed-data"},
        C{"enveloped-data"}, C{"authEnveloped-data"} or C{None}.
    """

    kind: str | None
    boundary: str | None = None


@dataclass(frozen=True)
class _ContentFields:
    """
    What S/MIME reads of an entity's header: the content type (lower case,
    C{text/plain} when absent or invalid), the C{protocol}, C{smime-type}
    and C{boundary} parameters, and the transfer encoding (lower case).
    """

    content_type: str
    protocol: str
    smime_type: str
    boundary: str | None
    encoding: str


def _content_fields(parts: Parts) -> _ContentFields:
    """
    Read as the C{email} package (compat32) reads them -- but without it for
    the plain ASCII headers nearly every message has; the package reads the
    rest (8-bit values, RFC 2231 parameters).
    """
    return _content_fields_fast(parts) or _content_fields_by_email(parts)


def _content_fields_by_email(parts: Parts) -> _ContentFields:
    headers = BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        b"\r\n".join(parts.mime_fields()) + b"\r\n\r\n"
    )
    return _ContentFields(
        headers.get_content_type(),
        str(headers.get_param("protocol") or "").lower(),
        str(headers.get_param("smime-type") or "").lower(),
        headers.get_boundary(),
        # compat32 gives a Header object, not a str, for 8-bit values.
        str(headers.get("Content-Transfer-Encoding") or "7bit").strip().lower(),
    )


def _content_fields_fast(parts: Parts) -> _ContentFields | None:
    values: dict[bytes, str] = {}
    for field in parts.mime_fields():
        if not field.isascii() or not _HEADER_START.match(field):
            return None
        name, _, value = field.partition(b":")
        values.setdefault(name.lower(), value.decode("ascii").lstrip(" \t"))
    content_type = "text/plain"
    params: dict[str, str] = {}
    header = values.get(b"content-type")
    if header is not None:
        declared = header.partition(";")[0].strip().lower()
        if declared.count("/") == 1:
            content_type = declared
        for param in _split_params(header)[1:]:
            key, equals, raw = param.partition("=")
            key = key.strip().lower()
            if "*" in key:
                return None  # RFC 2231 encoding or continuation
            params.setdefault(key, _unquote(raw.strip()) if equals else "")
    boundary = params.get("boundary")
    return _ContentFields(
        content_type,
        params.get("protocol", "").lower(),
        params.get("smime-type", "").lower(),
        None if boundary is None else boundary.rstrip(),
        values.get(b"content-transfer-encoding", "7bit").strip().lower() or "7bit",
    )


def _split_params(value: str) -> list[str]:
    """
    Split a header value at the semicolons outside quoted strings, as
    C{email.message} does.
    """
    pieces = []
    rest = value
    while True:
        end = rest.find(";")
        while end > 0 and (rest.count('"', 0, end) - rest.count('\\"', 0, end)) % 2:
            end = rest.find(";", end + 1)
        if end < 0:
            pieces.append(rest.strip())
            return pieces
        pieces.append(rest[:end].strip())
        rest = rest[end + 1:]


def _unquote(value: str) -> str:
    if len(value) > 1 and value[0] == value[-1] == '"':
        return value[1:-1].replace("\\\\", "\\").replace('\\"', '"')
    if len(value) > 1 and value[0] == "<" and value[-1] == ">":
        return value[1:-1]
    return value


def classify(message: bytes) -> SmimeInfo:
    """
    Whether, and how, a message is S/MIME protected (by its headers).
    """
    return _classify(_content_fields(Parts.split(message)))


def _classify(fields: _ContentFields) -> SmimeInfo:
    if fields.content_type == "multipart/signed":
        if fields.protocol in ("application/pkcs7-signature", "application/x-pkcs7-signature"):
            return SmimeInfo("signed", fields.boundary)
        return SmimeInfo(None)
    if fields.content_type in ("application/pkcs7-mime", "application/x-pkcs7-mime"):
        if fields.smime_type == "signed-data":
            return SmimeInfo("signed-data")
        if fields.smime_type == "authenveloped-data":
            return SmimeInfo("authEnveloped-data")
        # Old clients leave smime-type out of enveloped messages.
        return SmimeInfo("enveloped-data")
    return SmimeInfo(None)


def _decode_body(parts: Parts, fields: _ContentFields | None = None) -> bytes:
    if fields is None:
        fields = _content_fields(parts)
    if fields.encoding != "base64":
        return parts.body
    try:
        # Non-strict a2b_base64 skips every byte outside the alphabet.
        return binascii.a2b_base64(parts.body_view())
    except binascii.Error as e:
        raise CMSFormatError(f"The S/MIME body is not valid base64: {e}") from None


def split_signed(message: bytes, boundary: str) -> tuple[bytes, bytes]:
    """
    The signed entity (canonical, exactly as sent) and the decoded signature
    of a C{multipart/signed} message, cut from the raw bytes.

    @raise CMSFormatError: the parts are not where the boundary says.
    """
    return _split_signed(Parts.split(message), boundary)


def _split_signed(parts: Parts, boundary: str) -> tuple[bytes, bytes]:
    data, start = parts.source, parts.body_start
    delimiter = b"--" + boundary.encode("ascii", "replace")
    # Delimiters at the start of a line (the body is canonical: CRLF).
    starts = [start] if data.startswith(delimiter, start) else []
    needle = b"\r\n" + delimiter
    found = data.find(needle, start)
    while found >= 0:
        starts.append(found + 2)
        found = data.find(needle, found + 2)
    if len(starts) < 2:
        raise CMSFormatError("The multipart/signed message does not have two parts.")
    first_line_end = data.find(b"\r\n", starts[0])
    signed = data[first_line_end + 2 : starts[1] - 2]
    close = starts[2] if len(starts) > 2 else len(data)
    second_start = data.find(b"\r\n", starts[1]) + 2
    signature_part = Parts.split(data[second_start : close - 2] if close != len(data)
                                 else data[second_start:])
    return signed, _decode_body(signature_part)


def _rejoin(parts: Parts, entity: bytes) -> bytes:
    """
    The outer header fields of C{parts} around an unwrapped C{entity} (which
    starts with its own Content-* fields).
    """
    return MessagePieces(parts.outer_fields(), [entity]).join()


_HEAD_LIMIT = 1 << 20


def _entity_fields(entity: bytes) -> list[bytes]:
    """
    The header fields of an entity (with their folded lines), read from its
    head alone.
    """
    if entity.startswith(b"\r\n"):
        return []  # no header fields at all: the body starts at once
    end = entity.find(b"\r\n\r\n", 0, _HEAD_LIMIT)
    if end < 0:
        return []  # no header section: nothing protected to read
    fields: list[bytes] = []
    for line in entity[: end + 2].split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        elif line:
            fields.append(line)
    return fields


def protected_fields(entity: bytes) -> list[bytes]:
    """
    The header fields an entity carries besides its own Content-* ones:
    under RFC 9788 header protection, the message's own (From, Subject, ...)
    and C{HP-Outer}.
    """
    return [field for field in _entity_fields(entity)
            if not _MIME_HEADER.match(Parts._name(field))]


def with_protected_fields(outer: Sequence[bytes], entity: bytes,
                          names: Collection[bytes]) -> bytes:
    """
    A message of C{outer}'s header fields and C{entity}, the entity's own
    header fields of C{names} (lower case) taking the place of the outer
    ones, and its other non-Content fields (C{HP-Outer}, ones not to be
    believed) dropped.
    """
    fields = _entity_fields(entity)
    start = entity.find(b"\r\n\r\n", 0, _HEAD_LIMIT) + 4 if fields else 0
    inner = [field for field in fields if Parts._name(field) in names or (
        _MIME_HEADER.match(Parts._name(field)) and Parts._name(field) != b"mime-version")]
    kept = [field for field in outer if Parts._name(field) not in names]
    head = b"\r\n".join(inner) + b"\r\n\r\n"
    return MessagePieces(kept, [head, memoryview(entity)[start:]]).join()


# RFC 9788 §2: the header fields an S/MIME message protects inside
# (user-facing, not the transport's: never Received, Bcc, DKIM-Signature).
PROTECTED_FIELDS = (b"from", b"sender", b"reply-to", b"to", b"cc", b"date", b"subject",
                    b"message-id", b"in-reply-to", b"references", b"keywords", b"comments",
                    b"followup-to", b"mail-followup-to")
OBSCURED_SUBJECT = b"[...]"  # RFC 9788 §3.2.1
# An hp parameter already there (a message protected before): replaced.
_HP_PARAMETER = re.compile(rb'(?i);\s*hp\s*=\s*("[^"]*"|[^;\s]*)')


def protect_headers(message: bytes | MessagePieces, *, encrypted: bool,
                    obscure_subject: bool = False) -> MessagePieces:
    """
    Header protection (RFC 9788): the message's user-facing header fields
    copied into its MIME entity, whose Content-Type says C{hp="cipher"}
    (for a message to be encrypted) or C{hp="clear"} (signed only).  When
    encrypted, C{HP-Outer} fields inside record what stays outside, and
    with C{obscure_subject} the outer Subject becomes C{[...]}.
    """
    pieces = MessagePieces.of(message)
    head, *rest = pieces.entity
    fields = _entity_fields(bytes(head))
    body_start = bytes(head).find(b"\r\n\r\n") + 4
    protected = [field for field in pieces.outer if Parts._name(field) in PROTECTED_FIELDS]
    outer = list(pieces.outer)
    if encrypted and obscure_subject:
        outer = [b"Subject: " + OBSCURED_SUBJECT if Parts._name(field) == b"subject"
                 else field for field in outer]
    hp = b"cipher" if encrypted else b"clear"
    mime = [_HP_PARAMETER.sub(b"", field) + b'; hp="' + hp + b'"'
            if Parts._name(field) == b"content-type" else field
            for field in fields if _MIME_HEADER.match(Parts._name(field))]
    if not any(Parts._name(field) == b"content-type" for field in mime):
        mime.insert(0, b'Content-Type: text/plain; charset=us-ascii; hp="' + hp + b'"')
    hp_outer = [b"HP-Outer: " + field for field in outer
                if Parts._name(field) in PROTECTED_FIELDS] if encrypted else []
    new_head = b"\r\n".join([*mime, *protected, *hp_outer]) + b"\r\n\r\n"
    return MessagePieces(outer, [new_head, memoryview(head)[body_start:], *rest])


def header_protection(message: bytes) -> str | None:
    """
    The C{hp} parameter of a message's Content-Type (RFC 9788): C{"cipher"}
    or C{"clear"} when the header fields inside are protected; C{"v1"} for
    the older C{protected-headers="v1"} of Thunderbird and Enigmail.
    """
    for field in Parts.split(message).mime_fields():
        if Parts._name(field) == b"content-type":
            legacy = False
            for param in _split_params(field.partition(b":")[2].decode("ascii", "replace")):
                key, _, value = param.partition("=")
                key = key.strip().lower()
                if key == "hp":
                    hp = _unquote(value.strip()).lower()
                    return hp if hp in ("cipher", "clear") else None
                legacy = legacy or (key == "protected-headers"
                                    and _unquote(value.strip()).lower() == "v1")
            return "v1" if legacy else None
    return None


@dataclass(frozen=True)
class VerifiedMessage:
    """
    @ivar entity: the signed MIME entity.
    @ivar message: the outer headers with the signed entity: the message as
        it was before it was signed.
    """

    entity: bytes
    message: bytes
    result: cms.VerifiedContent


def verify_message(
    message: bytes, *, known_certificates: Iterable[x509.Certificate] = ()
) -> VerifiedMessage:
    """
    Check the signatures of a signed message (detached or opaque).

    @raise NotSMIME: the message is not signed.
    @raise CMSFormatError: it is broken.
    """
    parts = Parts.split(message)
    del message
    fields = _content_fields(parts)
    info = _classify(fields)
    if info.kind == "signed":
        if not info.boundary:
            raise CMSFormatError("The multipart/signed message has no boundary.")
        entity, signature = _split_signed(parts, info.boundary)
        result = cms.verify(signature, entity, known_certificates=known_certificates)
    elif info.kind == "signed-data":
        result = cms.verify(_decode_body(parts, fields),
                            known_certificates=known_certificates)
        entity = canonicalize(result.content)
    else:
        raise NotSMIME("The message is not signed with S/MIME.")
    return VerifiedMessage(entity, _rejoin(parts, entity), result)


@dataclass(frozen=True)
class DecryptedMessage:
    entity: bytes
    message: bytes
    result: cms.DecryptedContent


def decrypt_message(
    message: bytes, keys: Iterable[tuple[x509.Certificate, PrivateKey]]
) -> DecryptedMessage:
    """
    Decrypt an encrypted message; the outer headers stay.

    @raise NotSMIME: the message is not encrypted.
    @raise DecryptionKeyNotFound, DecryptionFailed, CMSFormatError,
        UnsupportedAlgorithm: see L{cms.decrypt}.
    """
    parts = Parts.split(message)
    del message
    fields = _content_fields(parts)
    info = _classify(fields)
    if info.kind not in ("enveloped-data", "authEnveloped-data"):
        raise NotSMIME("The message is not encrypted with S/MIME.")
    result = cms.decrypt(_decode_body(parts, fields), keys)
    entity = canonicalize(result.content)
    return DecryptedMessage(entity, _rejoin(parts, entity), result)
