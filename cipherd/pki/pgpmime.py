"""
PGP/MIME (RFC 3156) and inline PGP for outgoing mail.

PGP/MIME: the message's MIME entity -- with its user-facing header fields
copied inside (RFC 9788 header protection, marked as Thunderbird and
Enigmail mark it too, C{protected-headers="v1"}) -- encrypted, and signed
in the same OpenPGP message when a signer is given (RFC 3156 §6.2), in a
C{multipart/encrypted} whose first part says C{Version: 1}.

Inline: for a message whose whole body is one text/plain part, that text
(decoded to UTF-8 from its charset and transfer encoding) encrypted and
armored as the body, so a client without PGP/MIME support shows the block.
Anything else goes as PGP/MIME.
"""

from __future__ import annotations

import email.policy
from collections.abc import Sequence
from email.parser import BytesParser
from typing import Any

from twisted.internet.defer import Deferred

from cipherd.pki.pgp import IOpenPGP, PGPKey
from cipherd.pki.smime import (
    Parts,
    _boundary,
    _content_fields,
    canonicalize,
    protect_headers,
)
from cipherd.threads import IBlockingRunner

PGP_MIME = "pgp_mime"
INLINE = "inline"


def inner_entity(message: bytes, *, obscure_subject: bool) -> tuple[list[bytes], bytes]:
    """
    The header fields that stay outside and the MIME entity to encrypt
    (canonical, its user-facing header fields protected inside).
    """
    pieces = protect_headers(message, encrypted=True, obscure_subject=obscure_subject)
    head, *rest = pieces.entity
    head = bytes(head)
    end = head.find(b"\r\n\r\n")
    fields = head[:end].split(b"\r\n")
    # Thunderbird and Enigmail read protected headers by this parameter.
    fields = [f + b'; protected-headers="v1"' if f[:13].lower() == b"content-type:" else f
              for f in fields]
    entity = b"\r\n".join(fields) + head[end:] + b"".join(bytes(piece) for piece in rest)
    return pieces.outer, entity


def wrap_pgp_mime(outer: Sequence[bytes], armored: bytes) -> bytes:
    """
    The RFC 3156 message: C{outer} header fields, then C{multipart/encrypted}
    with the version part and C{armored}.
    """
    boundary = _boundary().encode()
    head = [*outer, b"MIME-Version: 1.0",
            b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; '
            b'boundary="' + boundary + b'"']
    body = [
        b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)",
        b"--" + boundary,
        b"Content-Type: application/pgp-encrypted",
        b"Content-Description: PGP/MIME version identification",
        b"",
        b"Version: 1",
        b"",
        b"--" + boundary,
        b'Content-Type: application/octet-stream; name="encrypted.asc"',
        b"Content-Description: OpenPGP encrypted message",
        b'Content-Disposition: inline; filename="encrypted.asc"',
        b"",
        canonicalize(armored).rstrip(b"\r\n"),
        b"",
        b"--" + boundary + b"--",
        b"",
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + b"\r\n".join(body)


def inline_text(message: bytes) -> tuple[list[bytes], str] | None:
    """
    The outer header fields and the text of a message whose body is one
    text/plain part, or C{None} when it is anything else (multipart, HTML,
    an attachment).
    """
    parts = Parts.split(message)
    fields = _content_fields(parts)
    if fields.content_type != "text/plain":
        return None
    parsed = BytesParser(policy=email.policy.default).parsebytes(
        b"\r\n".join(parts.mime_fields()) + b"\r\n\r\n" + parts.body)
    disposition = (parsed.get("Content-Disposition") or "").lower()
    if disposition.startswith("attachment"):
        return None
    try:
        text = parsed.get_content()
    except (LookupError, ValueError):
        return None
    if not isinstance(text, str):
        return None
    return parts.outer_fields(), text


def wrap_inline(outer: Sequence[bytes], armored: bytes) -> bytes:
    head = [*outer, b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=us-ascii",
            b"Content-Transfer-Encoding: 7bit"]
    return b"\r\n".join(head) + b"\r\n\r\n" + canonicalize(armored)


class PGPEngine:
    """
    Outgoing PGP: the message made PGP/MIME or inline, its OpenPGP work on
    the crypto pool.
    """

    def __init__(self, openpgp: IOpenPGP, crypto: IBlockingRunner) -> None:
        self._openpgp = openpgp
        self._crypto = crypto

    def protect(self, message: bytes, recipients: Sequence[PGPKey], *, signer: Any = None,
                encoding: str = PGP_MIME, obscure_subject: bool = False,
                now: float) -> Deferred[tuple[bytes, str]]:
        """
        C{message} encrypted to C{recipients} (signed by C{signer}, from
        L{IOpenPGP.unlock}).

        @return: the message to send, and how it was encoded (L{PGP_MIME}
            or L{INLINE}: inline only when asked and the message is text).
        """
        return self._crypto.run(self._protect, message, recipients, signer, encoding,
                                obscure_subject, now)

    def _protect(self, message: bytes, recipients: Sequence[PGPKey], signer: Any,
                 encoding: str, obscure_subject: bool, now: float) -> tuple[bytes, str]:
        if encoding == INLINE and (text := inline_text(message)) is not None:
            outer, body = text
            data = canonicalize(body.encode("utf-8"))
            armored = self._openpgp.encrypt(data, recipients, signer, now=now)
            return wrap_inline(outer, armored), INLINE
        outer, entity = inner_entity(message, obscure_subject=obscure_subject)
        armored = self._openpgp.encrypt(entity, recipients, signer, now=now)
        return wrap_pgp_mime(outer, armored), PGP_MIME

