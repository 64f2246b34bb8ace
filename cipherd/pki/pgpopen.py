"""
Incoming OpenPGP for internal recipients: what L{cipherd.pki.engine.LayerOpener}
calls for the PGP layers of a received message.

  - PGP/MIME encryption (RFC 3156 C{multipart/encrypted}, and the form MS
    Exchange mangles it into: a C{multipart/mixed} holding the version part
    and the encrypted part) is decrypted with the recipients' secret keys
    from the keyring; signatures in the same OpenPGP message are checked;
  - PGP/MIME signatures (C{multipart/signed}, C{application/pgp-signature})
    are checked over the signed part as sent (CRLF, RFC 3156 §5);
  - inline PGP, last: armored blocks in the text parts (also HTML, also a
    block with text before or after it: "partly encrypted") and encrypted
    attachments (C{*.asc}, C{*.pgp}, C{*.gpg}) are decrypted in place;
    cleartext-signed blocks are checked and left as they are, for the
    reader's client.  Nested messages (C{message/rfc822}) and signed or
    encrypted parts inside a C{multipart/mixed} are not opened: they are
    the forwarded or quoted mail of someone else, as Thunderbird sees them.

Each signer is judged by the keyring: I{verified} when a stored key checks
the signature; I{trusted} when, in addition, the key is trusted and valid
now, the message's (first) From address is one of the key's, and a
signature whose time is known was made within a day of the message's Date.
"""

from __future__ import annotations

import email
import email.policy
import mimetypes
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from email import encoders
from email.charset import QP, Charset
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime
from html.parser import HTMLParser
from typing import Any

from cipherd.core.addresses import canonical_address
from cipherd.core.clock import minute_utc
from cipherd.core.headers import header_fields
from cipherd.pki.keyring import IKeyring, StoredKey
from cipherd.pki.pgp import IOpenPGP, PGPError, PGPKey, SignatureCheck
from cipherd.pki.smime import (
    CMSFormatError,
    MessagePieces,
    Parts,
    _content_fields,
    _split_signed,
    canonicalize,
)
from cipherd.threads import IBlockingRunner

PGP_ENCRYPTED = "pgp-encrypted"
PGP_SIGNED = "pgp-signed"
PGP_INLINE = "pgp-inline"

PGP_ENCRYPTED_TYPE = "application/pgp-encrypted"
PGP_SIGNATURE_TYPE = "application/pgp-signature"

# Blocks and attachments opened per message at most, and how deep parts
# are looked into: a message is anyone's to write.
MAX_BLOCKS = 16
MAX_DEPTH = 16

# A signature made further than this from the message's Date is not
# believed to be this message's (an old signed text sent again).
DATE_TOLERANCE = 24 * 3600.0

MESSAGE_BEGIN, MESSAGE_END = "-----BEGIN PGP MESSAGE-----", "-----END PGP MESSAGE-----"
SIGNED_BEGIN, SIGNED_END = "-----BEGIN PGP SIGNED MESSAGE-----", "-----END PGP SIGNATURE-----"
# A text part larger than this is not searched for blocks.
MAX_TEXT = 4 * 1024 * 1024
_VERSION_PART = re.compile(rb"application/pgp-encrypted", re.IGNORECASE)
_ENCRYPTED_NAME = re.compile(r"\.(asc|pgp|gpg)$", re.IGNORECASE)
_HEADER_LINE = re.compile(rb"^[!-9;-~]+:")
# What a message with inline PGP may show in its raw bytes.
_MAY_HAVE_INLINE = re.compile(rb"-----BEGIN PGP |\.(?:asc|pgp|gpg)\b|pgp-encrypted",
                              re.IGNORECASE)


@dataclass(frozen=True)
class PGPSignerReport:
    """
    One OpenPGP signature and what the keyring says of its signer.

    @ivar stored: the signer's key, if the keyring has it.
    @ivar problem: why the signer is not trusted (C{""} when trusted).
    """

    check: SignatureCheck
    stored: StoredKey | None
    problem: str = ""

    @property
    def verified(self) -> bool:
        return self.check.valid

    @property
    def valid(self) -> bool:
        return self.check.valid and not self.problem

    @property
    def signer(self) -> str:
        if self.stored is None:
            return f"PGP key {self.check.issuer.upper()}"
        key = self.stored.key
        name = key.user_ids[0] if key.user_ids else ""
        return f"{name}; PGP key {key.fingerprint.upper()}".lstrip("; ")

    @property
    def emails(self) -> list[str]:
        return list(self.stored.key.emails) if self.stored is not None else []

    @property
    def reason(self) -> str:
        return self.check.reason if not self.check.valid else self.problem


@dataclass(frozen=True)
class PGPDecrypted:
    """
    How an OpenPGP message was decrypted: with which key (of the keyring)
    and subkey, and whom else it was for.
    """

    key: PGPKey
    subkey: str
    recipients: tuple[str, ...]

    def describe(self) -> str:
        name = self.key.user_ids[0] if self.key.user_ids else ""
        return (f"{name}; PGP key {self.key.fingerprint.upper()}, subkey "
                f"{self.subkey.upper()}").lstrip("; ")


@dataclass(frozen=True)
class InlineResult:
    """
    What the inline step found in a message.

    @ivar message: the message with every block and attachment that could
        be decrypted decrypted (as given when none).
    @ivar decrypted: how many were.
    @ivar partly: text outside the encrypted blocks, or parts beside them,
        that was not encrypted.
    @ivar keys: the decryptions.
    @ivar signed: how many cleartext-signed blocks were checked.
    @ivar errors: why blocks could not be decrypted or checked.
    @ivar whole: the message is one text part and its blocks are all of it:
        what a signature in them covers is what the reader sees.
    """

    message: bytes
    decrypted: int = 0
    partly: bool = False
    keys: tuple[PGPDecrypted, ...] = ()
    signed: int = 0
    signatures: tuple[SignatureCheck, ...] = ()
    errors: tuple[str, ...] = ()
    whole: bool = False

    @property
    def found(self) -> bool:
        return bool(self.decrypted or self.signed or self.errors)


@dataclass(frozen=True)
class Context:
    """
    What a signature is judged against: the message's From address and its
    Date (POSIX), as received.

    @ivar sender: the (first) From address, canonical, lower case.
    @ivar sender_problem: why no signer can be the message's author: no
        From address, or more than one (C{""} when there is one).
    """

    sender: str = ""
    date: float | None = None
    sender_problem: str = ""

    @classmethod
    def of(cls, message: bytes) -> Context:
        fields = header_fields(message)
        senders = [value for name, value in fields if name == "from"]
        addresses = [a for _, a in getaddresses(senders) if "@" in a]
        sender = canonical_address(addresses[0]).lower() if addresses else ""
        problem = ""
        if len(senders) > 1:
            problem = f"the message has {len(senders)} From fields"
        elif len(addresses) != 1:
            problem = ("the message's From field has no address" if not addresses else
                       f"the message's From field has {len(addresses)} addresses")
        date = None
        for value in (value for name, value in fields if name == "date"):
            try:
                date = parsedate_to_datetime(value.strip()).timestamp()
            except (TypeError, ValueError, IndexError, OverflowError):
                date = None
            break
        return cls(sender, date, problem)


def kind(message: bytes) -> str | None:
    """
    L{PGP_ENCRYPTED}, L{PGP_SIGNED} or C{None}, by the message's Content-Type.
    """
    end = message.find(b"\r\n\r\n")
    fields = _content_fields(Parts.split(message if end < 0 else message[:end + 4]))
    if fields.content_type == "multipart/encrypted" and fields.protocol == PGP_ENCRYPTED_TYPE:
        return PGP_ENCRYPTED
    if fields.content_type == "multipart/signed" and fields.protocol == PGP_SIGNATURE_TYPE:
        return PGP_SIGNED
    # The MS Exchange form: parsed only when it may be (most mixed mail is not).
    if fields.content_type == "multipart/mixed" and _VERSION_PART.search(message) \
            and _exchange_parts(message) is not None:
        return PGP_ENCRYPTED
    return None


def may_have_inline(message: bytes) -> bool:
    return _MAY_HAVE_INLINE.search(message) is not None


def _parse(message: bytes) -> Message:
    return email.message_from_bytes(message, policy=email.policy.compat32)


def _subparts(part: Message) -> list[Message]:
    payload = part.get_payload()
    return [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []


def _decoded(part: Message) -> bytes | None:
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else None


def _exchange_parts(message: bytes) -> bytes | None:
    """
    The encrypted data of a PGP/MIME message MS Exchange restructured: a
    C{multipart/mixed} of (an empty text part,) the version part and the
    encrypted part, nothing else.
    """
    parts = [p for p in _subparts(_parse(message))
             if not (p.get_content_type() == "text/plain" and not (_decoded(p) or b"").strip())]
    if len(parts) != 2 or parts[0].get_content_type() != PGP_ENCRYPTED_TYPE:
        return None
    data = _decoded(parts[1])
    return data if data is not None and b"-----BEGIN PGP MESSAGE-----" in data else None


def encrypted_data(message: bytes) -> tuple[bytes, bool]:
    """
    The OpenPGP message in a PGP/MIME encrypted message, and whether it was
    found in the MS Exchange form.

    @raise PGPError: there is none.
    """
    parsed = _parse(message)
    parts = _subparts(parsed)
    if parsed.get_content_type() == "multipart/mixed":
        data = _exchange_parts(message)
        if data is None:
            raise PGPError("The PGP/MIME message has no encrypted part.")
        return data, True
    if len(parts) < 2:
        raise PGPError("The PGP/MIME message does not have its two parts.")
    data = _decoded(parts[1])
    if data is None or not data.strip():
        raise PGPError("The PGP/MIME message's encrypted part is empty.")
    return data, False


def as_entity(data: bytes) -> bytes:
    """
    Decrypted PGP/MIME content as a MIME entity (RFC 3156 says it is one;
    some clients encrypt bare text).
    """
    data = canonicalize(data)
    if _HEADER_LINE.match(data) or data.startswith(b"\r\n"):
        return data
    return b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + data


class PGPOpener:
    """
    The OpenPGP work on incoming mail (see the module's docstring), its
    cryptography on the crypto pool.
    """

    def __init__(self, keyring: IKeyring, openpgp: IOpenPGP, crypto: IBlockingRunner) -> None:
        self._keyring = keyring
        self._openpgp = openpgp
        self._crypto = crypto

    async def decrypt(self, message: bytes, decrypt_for: Collection[str], context: Context
                      ) -> tuple[bytes, PGPDecrypted, tuple[PGPSignerReport, ...], str]:
        """
        A PGP/MIME encrypted message decrypted.

        @return: the entity inside, how it was decrypted, a report per
            signature inside the OpenPGP message, and a note (the MS
            Exchange repair) or C{""}.
        @raise PGPError: it cannot be.
        """
        data, repaired = encrypted_data(message)
        decryptors = await self._keyring.decryptors(decrypt_for)
        if not decryptors:
            raise PGPError("None of the recipients has a PGP secret key.")
        known = await self._sender_keys(context)
        result = await self._crypto.run(self._openpgp.decrypt, data, decryptors,
                                        [k.key for k in known])
        more = await self._missing(result.signatures, known)
        if more:
            known += more
            result = await self._crypto.run(self._openpgp.decrypt, data, decryptors,
                                            [k.key for k in known])
        key = next(k for k, _ in decryptors if k.fingerprint == result.key)
        note = "repaired: MS Exchange had restructured the PGP/MIME message" if repaired else ""
        return (as_entity(result.data), PGPDecrypted(key, result.subkey, result.recipients),
                self._reports(result.signatures, known, context), note)

    async def verify(self, message: bytes, context: Context
                     ) -> tuple[bytes, tuple[PGPSignerReport, ...]]:
        """
        A PGP/MIME signed message checked.

        @return: the signed entity and a report per signature.
        @raise PGPError: the structure or the signature cannot be read.
        """
        parts = Parts.split(message)
        boundary = _content_fields(parts).boundary
        if not boundary:
            raise PGPError("The PGP/MIME signed message has no boundary.")
        try:
            signed, signature = _split_signed(parts, boundary)
        except CMSFormatError as e:
            raise PGPError(str(e)) from None
        known = await self._sender_keys(context)
        checks = await self._crypto.run(self._openpgp.verify_detached, signed, signature,
                                        [k.key for k in known])
        more = await self._missing(checks, known)
        if more:
            known += more
            checks = await self._crypto.run(self._openpgp.verify_detached, signed, signature,
                                            [k.key for k in known])
        return signed, self._reports(checks, known, context)

    async def inline(self, message: bytes, decrypt_for: Collection[str], context: Context
                     ) -> tuple[InlineResult, tuple[PGPSignerReport, ...]]:
        """
        Inline PGP in C{message} (a whole message: header and body) opened
        (see the module's docstring).
        """
        if not may_have_inline(message):
            return InlineResult(message), ()
        decryptors = await self._keyring.decryptors(decrypt_for)
        known = await self._sender_keys(context)
        run = _Inline(self._openpgp, decryptors)
        result = await self._crypto.run(run, message, [k.key for k in known])
        more = await self._missing(result.signatures, known)
        if more:
            known += more
            result = await self._crypto.run(run, message, [k.key for k in known])
        return result, self._reports(result.signatures, known, context)

    # Signers ---------------------------------------------------------------

    async def _sender_keys(self, context: Context) -> list[StoredKey]:
        return await self._keyring.keys_for(context.sender) if context.sender else []

    async def _missing(self, checks: Sequence[SignatureCheck], known: Sequence[StoredKey]
                       ) -> list[StoredKey]:
        """
        The keys of signers the first look did not have, if the keyring
        has them.
        """
        have = {k.fingerprint for k in known}
        found: dict[str, StoredKey] = {}
        for check in checks:
            if check.key is not None:
                continue
            if len(check.issuer) == 64:
                stored = await self._keyring.get(check.issuer)
                candidates = [stored] if stored is not None else []
            else:
                candidates = await self._keyring.by_key_id(check.issuer[-16:])
            for stored in candidates:
                if stored.fingerprint not in have:
                    found[stored.fingerprint] = stored
        return list(found.values())

    def _reports(self, checks: Sequence[SignatureCheck], known: Sequence[StoredKey],
                 context: Context) -> tuple[PGPSignerReport, ...]:
        by_fingerprint = {k.fingerprint: k for k in known}
        now = self._keyring.now()
        reports = []
        for check in checks:
            stored = by_fingerprint.get(check.key or "")
            problem = ""
            if stored is None:
                problem = check.reason or "the signer's key is not in the keyring"
            elif (why := stored.key.problem(now)) is not None:
                problem = why
            elif not stored.trusted and not stored.introduced_at(now):
                problem = "the signer's key is not trusted (PGP keys)"
            elif context.sender_problem:
                problem = context.sender_problem
            elif context.sender not in stored.key.emails:
                problem = (f"the From address {context.sender} is not an address of the "
                           "signer's key")
            elif check.created is not None and context.date is not None \
                    and abs(check.created - context.date) > DATE_TOLERANCE:
                problem = (f"the signature was made on {minute_utc(check.created)}, the message's "
                           f"Date is {minute_utc(context.date)}")
            reports.append(PGPSignerReport(check, stored, problem))
        return tuple(reports)



@dataclass
class _Found:
    decrypted: int = 0
    partly: bool = False
    plain_parts: int = 0
    keys: list[PGPDecrypted] = field(default_factory=list)
    signed: int = 0
    signatures: list[SignatureCheck] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    attempts: int = 0
    text_parts: int = 0
    outside: bool = False  # text beside the blocks

    def attempt(self) -> bool:
        """
        Whether one more block may be opened (L{MAX_BLOCKS}).
        """
        self.attempts += 1
        if self.attempts == MAX_BLOCKS + 1:
            self.errors.append(f"more than {MAX_BLOCKS} PGP blocks: the rest is not opened")
        return self.attempts <= MAX_BLOCKS


class _Inline:
    """
    The inline step, on a crypto thread: the message walked, each block
    and encrypted attachment decrypted, each cleartext signature checked.
    """

    def __init__(self, openpgp: IOpenPGP, decryptors: Sequence[tuple[PGPKey, Any]]) -> None:
        self._openpgp = openpgp
        self._decryptors = decryptors

    def __call__(self, message: bytes, certificates: Sequence[PGPKey]) -> InlineResult:
        parsed = _parse(message)
        found = _Found()
        changed = self._walk(parsed, certificates, found)
        if found.decrypted and (found.plain_parts or found.outside):
            found.partly = True
        whole = found.text_parts == 1 and not found.plain_parts and not found.outside
        result = message
        if changed:
            result = canonicalize(parsed.as_bytes(policy=email.policy.compat32.clone(
                linesep="\r\n")))
        return InlineResult(result, found.decrypted, found.partly, tuple(found.keys),
                            found.signed, tuple(found.signatures), tuple(found.errors), whole)

    def _walk(self, part: Message, certificates: Sequence[PGPKey], found: _Found,
              depth: int = 0) -> bool:
        content_type = part.get_content_type()
        if part.is_multipart():
            if content_type in ("multipart/signed", "multipart/encrypted") \
                    or depth >= MAX_DEPTH:
                return False
            changed = False
            for sub in _subparts(part):
                changed = self._walk(sub, certificates, found, depth + 1) or changed
            return changed
        if content_type.startswith("message/"):
            return False
        name = part.get_filename() or ""
        attachment = (part.get("Content-Disposition") or "").lower().startswith("attachment")
        if content_type in ("text/plain", "text/html") and not (attachment and name):
            return self._text(part, content_type, certificates, found)
        if _ENCRYPTED_NAME.search(name) or content_type == "application/pgp-encrypted":
            return self._attachment(part, name, certificates, found)
        found.plain_parts += 1
        return False

    def _decrypt(self, data: bytes, certificates: Sequence[PGPKey], found: _Found
                 ) -> bytes | None:
        if not found.attempt():
            return None
        if not self._decryptors:
            found.errors.append("None of the recipients has a PGP secret key.")
            return None
        try:
            result = self._openpgp.decrypt(data, self._decryptors, certificates)
        except PGPError as e:
            found.errors.append(str(e))
            return None
        key = next(k for k, _ in self._decryptors if k.fingerprint == result.key)
        found.keys.append(PGPDecrypted(key, result.subkey, result.recipients))
        found.signatures += result.signatures
        found.decrypted += 1
        return result.data

    def _text(self, part: Message, content_type: str, certificates: Sequence[PGPKey],
              found: _Found) -> bool:
        raw = _decoded(part)
        if raw is None:
            found.plain_parts += 1
            return False
        found.text_parts += 1
        charset = part.get_content_charset() or "utf-8"
        try:
            text = raw.decode(charset, "replace")
        except LookupError:
            text = raw.decode("utf-8", "replace")
        html = content_type == "text/html"
        if len(text) > MAX_TEXT or (html and MESSAGE_BEGIN not in text):
            found.plain_parts += 1
            return False
        if html:
            text = _html_text(text)
        # A cleartext signature in HTML is not checked: what the reader's
        # client shows of the HTML is not the text that was signed.
        signed = [] if html else _spans(text, SIGNED_BEGIN, SIGNED_END)
        encrypted = [(a, b) for a, b in _spans(text, MESSAGE_BEGIN, MESSAGE_END)
                     if not any(s <= a < e for s, e in signed)]
        if not signed and not encrypted:
            found.plain_parts += 1
            return False
        if _outside(text, sorted(signed + encrypted)).strip():
            found.outside = True
        for start, end in signed:
            if not found.attempt():
                break
            try:
                _, checks = self._openpgp.verify_cleartext(
                    text[start:end].encode(charset, "replace"), certificates)
            except (PGPError, LookupError) as e:
                found.errors.append(f"The cleartext signature cannot be read: {e}")
                continue
            found.signed += 1
            found.signatures += checks
        if not encrypted:
            return False
        pieces: list[str] = []
        at = 0
        opened = False
        for start, end in encrypted:
            pieces.append(text[at:start])
            at = end
            plain = self._decrypt(_armor(text[start:end]), certificates, found)
            if plain is None:
                pieces.append(text[start:end])
                continue
            opened = True
            pieces.append(_text_of(plain, charset))
        if not opened:
            return False
        pieces.append(text[at:])
        del part["Content-Transfer-Encoding"]
        if html:
            part.set_type("text/plain")
        utf8 = Charset("utf-8")
        utf8.body_encoding = QP
        part.set_payload("".join(pieces).replace("\r\n", "\n").replace("\n", "\r\n"),
                         charset=utf8)
        return True

    def _attachment(self, part: Message, name: str, certificates: Sequence[PGPKey],
                    found: _Found) -> bool:
        data = _decoded(part)
        if data is None or not _is_encrypted(data):
            found.plain_parts += 1
            return False
        plain = self._decrypt(data, certificates, found)
        if plain is None:
            return False
        new_name = _ENCRYPTED_NAME.sub("", name) or "decrypted"
        guessed = mimetypes.guess_type(new_name)[0] or "application/octet-stream"
        for header in ("Content-Type", "Content-Transfer-Encoding", "Content-Disposition"):
            del part[header]
        part.set_payload(plain)
        part["Content-Type"] = guessed
        part.set_param("name", new_name)
        part["Content-Disposition"] = "attachment"
        part.set_param("filename", new_name, header="Content-Disposition")
        encoders.encode_base64(part)
        return True


def _spans(text: str, begin: str, end: str) -> list[tuple[int, int]]:
    """
    Where the armored blocks from C{begin} to C{end} are in C{text}, in
    one pass (a BEGIN without its END ends the search).
    """
    found: list[tuple[int, int]] = []
    at = 0
    while len(found) <= MAX_BLOCKS:
        start = text.find(begin, at)
        if start < 0:
            break
        stop = text.find(end, start + len(begin))
        if stop < 0:
            break
        at = stop + len(end)
        found.append((start, at))
    return found


def _outside(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """
    C{text} without the (sorted) C{spans}.
    """
    pieces = []
    at = 0
    for start, end in spans:
        pieces.append(text[at:start])
        at = max(at, end)
    pieces.append(text[at:])
    return "".join(pieces)


def _is_encrypted(data: bytes) -> bool:
    head = data.lstrip()[:64]
    if head.startswith(b"-----BEGIN PGP MESSAGE-----"):
        return True
    # Binary: a PKESK (tag 1) or SKESK (tag 3) packet first.
    return bool(data) and data[0] in (0x84, 0x85, 0x86, 0xC1, 0x8C, 0x8D, 0x8E, 0xC3)


def _armor(block: str) -> bytes:
    """
    An armored block as found in a text: each line's blanks (and
    no-break spaces, which HTML and some clients put in the blank line)
    removed, the blank line after the armor headers restored.
    """
    lines = [line.replace("\xa0", " ").strip() for line in block.splitlines()]
    out: list[str] = [lines[0]]
    body = lines[1:]
    n = 0
    while n < len(body) and re.match(r"^[A-Za-z-]+: ", body[n]):
        out.append(body[n])
        n += 1
    out.append("")
    out += [line for line in body[n:] if line]
    return ("\n".join(out) + "\n").encode("ascii", "replace")


def _text_of(plain: bytes, charset: str) -> str:
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        try:
            return plain.decode(charset, "replace")
        except LookupError:
            return plain.decode("latin-1")


class _HTMLText(HTMLParser):
    """
    An HTML part as plain text, enough to find and read an armored block in
    it (one pass): line breaks for breaking elements, script and style
    dropped, entities decoded.
    """

    BREAKING = frozenset({"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6",
                          "pre", "table"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._hidden += 1
        elif tag in self.BREAKING:
            self.pieces.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._hidden = max(0, self._hidden - 1)
        elif tag in self.BREAKING:
            self.pieces.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.pieces.append(data.replace("\r", "").replace("\n", " "))


def _html_text(text: str) -> str:
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    return "".join(parser.pieces)


def rejoin(message: bytes, entity: bytes) -> bytes:
    """
    The outer header fields of C{message} around C{entity}.
    """
    return MessagePieces(Parts.split(message).outer_fields(), [entity]).join()


__all__ = ["PGP_ENCRYPTED", "PGP_INLINE", "PGP_SIGNED", "Context", "InlineResult",
           "PGPDecrypted", "PGPOpener", "PGPSignerReport", "as_entity", "kind", "rejoin"]
