"""
The webmail tunnel message: how the gateway hands a message to the webmail
messenger.

Before signing and encryption it is a C{multipart/mixed} message from the
*webmail sender* to the *webmail recipient*, subject C{Secure Webmail
message}, of two parts:

    1. C{application/vnd.cipherd.tunnel+json}: the metadata the webmail
       side needs (format version, the tunnel id, when it was made, the
       original envelope sender, the recipients it is for, options);
    2. C{message/rfc822}: the original message, byte for byte as the client
       sent it (C{8bit}, or C{binary} when a line is longer than SMTP's
       998 octets).

The gateway signs it opaquely (the signed content is carried inside the
CMS structure, so no transfer encoding touches the original) with the
webmail sender's key, then encrypts it to the webmail recipient's
certificates.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from cipherd.core.headers import field_name, split_header
from cipherd.core.lines import has_long_line, windows
from cipherd.pki.smime import MessagePieces, canonicalize
from cipherd.settings import email_problem
from cipherd.webmail.controls import CONTROLS
from cipherd.webmail.tracking import TUNNEL_ID

SUBJECT = "Secure Webmail message"
METADATA_TYPE = "application/vnd.cipherd.tunnel+json"
VERSION = 1
# The gateway's queue takes at most this many recipients per message.
MAX_RECIPIENTS = 1000


class TunnelFormatError(ValueError):
    """
    The content is not a tunnel message this version can read.
    """


@dataclass(frozen=True)
class TunnelMetadata:
    """
    @ivar tunnel_id: unique per original message and recipient set: the
        webmail side stores a tunnel once, even when it comes twice.
    @ivar created: when the gateway made it (seconds since the epoch).
    @ivar sender: the original envelope sender.
    @ivar recipients: the original recipients it is for.
    @ivar read_receipt: the sender is told when each first opens it.
    @ivar delivery_receipt: the sender is told when it is in the
        mailboxes, with its status and recall links.
    @ivar expires: when it expires (0: never).
    @ivar recall: for a recall request (and not a message): the tunnel id
        of the message to recall from C{recipients}' mailboxes (from every
        recipient's when C{recipients} is empty); its original part only
        says so.
    @ivar recall_by: who asked for the recall, in words.
    @ivar controls: the sender's controls (L{cipherd.webmail.controls}).
    """

    tunnel_id: str
    created: float
    sender: str
    recipients: tuple[str, ...]
    read_receipt: bool = False
    delivery_receipt: bool = False
    expires: float = 0.0
    recall: str = ""
    recall_by: str = ""
    controls: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        options: dict[str, Any] = {"read_receipt": self.read_receipt}
        if self.delivery_receipt:
            options["delivery_receipt"] = True
        if self.expires:
            options["expires"] = self.expires
        if self.controls:
            options["controls"] = list(self.controls)
        if self.recall:
            options["recall"] = self.recall
            options["recall_by"] = self.recall_by
        return json.dumps({
            "version": VERSION, "id": self.tunnel_id, "created": self.created,
            "sender": self.sender, "recipients": list(self.recipients), "options": options,
        }, ensure_ascii=True, separators=(",", ":")).encode("ascii")

    @classmethod
    def from_json(cls, data: bytes) -> TunnelMetadata:
        try:
            value: Any = json.loads(data)
            if value.get("version") != VERSION:
                raise TunnelFormatError(f"tunnel format version {value.get('version')!r} "
                                        "is not supported")
            recipients = value["recipients"]
            if not isinstance(recipients, list) or not all(isinstance(r, str)
                                                           for r in recipients):
                raise TunnelFormatError("the tunnel's recipients are not a list of addresses")
            options = value.get("options", {})
            if not isinstance(options, dict):
                raise TunnelFormatError("the tunnel's options are not an object")
            recall = str(options.get("recall", ""))
            if recall and not TUNNEL_ID.fullmatch(recall):
                raise TunnelFormatError("the recalled tunnel id is not one this version makes")
            if not (0 if recall else 1) <= len(recipients) <= MAX_RECIPIENTS:
                raise TunnelFormatError(f"the tunnel names {len(recipients)} recipients (1 to "
                                        f"{MAX_RECIPIENTS} are allowed)")
            for recipient in recipients:
                if problem := email_problem(recipient):
                    raise TunnelFormatError(f"the tunnel names a bad recipient address: "
                                            f"{problem}")
            tunnel = str(value["id"])
            if not TUNNEL_ID.fullmatch(tunnel):
                raise TunnelFormatError("the tunnel id is not one this version makes")
            created = float(value["created"])
            if not math.isfinite(created) or not 0 < created < 2**40:
                raise TunnelFormatError("the tunnel's creation time is not a time")
            sender = str(value["sender"])
            if sender and email_problem(sender):
                raise TunnelFormatError("the tunnel's sender is not an address")
            expires = float(options.get("expires", 0))
            if not math.isfinite(expires) or not 0 <= expires < 2**40:
                raise TunnelFormatError("the tunnel's expiry is not a time")
            controls = options.get("controls", [])
            if not isinstance(controls, list) or not set(controls) <= set(CONTROLS):
                # A control this version cannot honour: not shown without it.
                raise TunnelFormatError(f"the tunnel asks for controls this version does not "
                                        f"know: {controls!r}"[:300])
            return cls(tunnel, created, sender, tuple(recipients),
                       bool(options.get("read_receipt")), bool(options.get("delivery_receipt")),
                       expires, recall, str(options.get("recall_by", ""))[:200],
                       tuple(c for c in CONTROLS if c in controls))
        except TunnelFormatError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise TunnelFormatError(f"the tunnel's metadata cannot be read: {e}") from None


def _transfer_encoding(original: bytes | memoryview) -> bytes:
    ascii = True
    for window in windows(original):
        if has_long_line(window):
            return b"binary"
        ascii = ascii and window.isascii()
    return b"7bit" if ascii else b"8bit"


def build_tunnel(original: bytes, metadata: TunnelMetadata, *, webmail_sender: str,
                 webmail_recipient: str, my_hostname: str, start: int = 0) -> MessagePieces:
    """
    The tunnel message, before signing and encryption, in the pieces S/MIME
    takes: the original (C{original} from C{start}) is not copied.
    """
    boundary = b"=_tunnel_" + secrets.token_hex(16).encode()
    while original.find(boundary, start) >= 0:  # pragma: no cover - 128 random bits
        boundary = b"=_tunnel_" + secrets.token_hex(16).encode()
    date = format_datetime(datetime.fromtimestamp(metadata.created, UTC))
    outer = [f"From: <{webmail_sender}>".encode("ascii"),
             f"To: <{webmail_recipient}>".encode("ascii"),
             f"Subject: {SUBJECT}".encode("ascii"),
             f"Date: {date}".encode("ascii"),
             f"Message-ID: <{metadata.tunnel_id}@{my_hostname}>".encode("ascii")]
    body: bytes | memoryview = memoryview(original)[start:]
    if not original.endswith(b"\r\n", start) or not _canonical(original, start):
        ending = b"" if original.endswith(b"\r\n", start) else b"\r\n"
        body = canonicalize(original[start:] + ending)
    return MessagePieces(outer, [
        b"".join([
            b'Content-Type: multipart/mixed; boundary="', boundary, b'"\r\n\r\n',
            b"--", boundary, b"\r\n",
            b"Content-Type: ", METADATA_TYPE.encode(), b"\r\n\r\n",
            metadata.to_json(), b"\r\n",
            b"--", boundary, b"\r\n",
            b"Content-Type: message/rfc822\r\n",
            b"Content-Transfer-Encoding: ", _transfer_encoding(body), b"\r\n\r\n",
        ]),
        body,
        b"\r\n--" + boundary + b"--\r\n",
    ])


def _canonical(data: bytes, start: int) -> bool:
    crlf = data.count(b"\r\n", start)
    return crlf == data.count(b"\r", start) == data.count(b"\n", start)


def read_tunnel(entity: bytes) -> tuple[TunnelMetadata, bytes]:
    """
    The metadata and the original of a tunnel message (signed and
    encrypted layers already removed).

    @raise TunnelFormatError: it is not one.
    """
    fields, rest = split_header(entity)
    content_type = b"".join(f for f in fields if field_name(f) == "content-type")
    marker = b'boundary="'
    start = content_type.find(marker)
    if not content_type.lower().split(b":", 1)[-1].strip().startswith(b"multipart/mixed") or \
            start < 0:
        raise TunnelFormatError("not a tunnel message (no multipart/mixed boundary)")
    boundary = content_type[start + len(marker):].split(b'"', 1)[0]
    body = rest[2:] if rest.startswith(b"\r\n") else rest
    delimiter = b"--" + boundary
    if not body.startswith(delimiter + b"\r\n"):
        raise TunnelFormatError("not a tunnel message (no first part)")
    end = body.rfind(b"\r\n" + delimiter + b"--")
    if end < 0:
        raise TunnelFormatError("the tunnel message is cut short")
    inner = body[len(delimiter) + 2:end]
    separator = b"\r\n" + delimiter + b"\r\n"
    first_end = inner.find(separator)
    if first_end < 0:
        raise TunnelFormatError("the tunnel message has one part, not two")
    first, second = inner[:first_end], inner[first_end + len(separator):]
    first_fields, first_rest = split_header(first)
    if not any(field_name(f) == "content-type" and METADATA_TYPE.encode() in f.lower()
               for f in first_fields):
        raise TunnelFormatError("the tunnel's first part is not its metadata")
    metadata = TunnelMetadata.from_json(first_rest.strip())
    second_fields, second_rest = split_header(second)
    if not any(field_name(f) == "content-type" and b"message/rfc822" in f.lower()
               for f in second_fields):
        raise TunnelFormatError("the tunnel's second part is not a message")
    original = second_rest[2:] if second_rest.startswith(b"\r\n") else second_rest
    return metadata, original


def tunnel_id(my_hostname: str, queue_id: str, recipients: Sequence[str]) -> str:
    """
    The same id each time the same queued message is tunnelled to the same
    recipients (after a crash, say), a different one otherwise.
    """
    digest = hashlib.sha256("\0".join([my_hostname, queue_id, *sorted(recipients)])
                            .encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"
