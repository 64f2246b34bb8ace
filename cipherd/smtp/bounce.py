"""
Delivery status notifications (RFC 3464): the bounce a sender gets for the
recipients that could not be reached, in Postfix's wording.  A bounce has
the null sender, so it is never bounced itself (RFC 5321 §4.5.5).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

# Postfix's bounce_size_limit: a larger original is returned as its header
# only (RFC 6522 text/rfc822-headers), a smaller one whole (message/rfc822).
BOUNCE_SIZE_LIMIT = 50_000


@dataclass(frozen=True)
class Failed:
    """
    A recipient that will not get the message.

    @ivar dsn: the enhanced status code, e.g. C{"5.4.6"}.
    @ivar reason: Postfix's words (C{"host H[IP] said: ..."}).
    @ivar remote_mta: the next hop that refused it, if one did.
    """

    recipient: str
    dsn: str
    reason: str
    remote_mta: str = ""


def _date(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")


def _clean(text: str) -> str:
    # No header or line can be injected through a remote server's words.
    return " ".join(text.replace("\r", " ").replace("\n", " ").split())


def build_bounce(*, my_hostname: str, queue_id: str, sender: str, received: float,
                 now: float, failed: Sequence[Failed], original: bytes,
                 notice: Sequence[str] | None = None, subject: str | None = None,
                 headers_only: bool = False) -> bytes:
    """
    The bounce for C{failed}, addressed to C{sender} (CRLF lines).

    @param notice: the human-readable part's lines instead of Postfix's
        (the MPA's words for a message it could not encrypt).
    @param subject: the subject instead of Postfix's.
    @param headers_only: return the original's header only, whatever its
        size (when its content must not travel in the clear).
    """
    boundary = f"{queue_id}.{secrets.token_hex(8)}/{my_hostname}"
    human = [_clean(line) for line in notice] if notice is not None else [
        f"This is the mail system at host {my_hostname}.",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients. It's attached below.",
        "",
        "For further assistance, please send mail to postmaster.",
        "",
        "If you do so, please include this problem report. You can",
        "delete your own text from the attached returned message.",
        "",
        "                   The mail system",
        "",
    ]
    if notice is None:
        human += [f"<{entry.recipient}>: {_clean(entry.reason)}" for entry in failed]
    charset = "us-ascii" if all(line.isascii() for line in human) else "utf-8"
    status = [
        f"Reporting-MTA: dns; {my_hostname}",
        f"X-Postfix-Queue-ID: {queue_id}",
        f"X-Postfix-Sender: rfc822; {sender}",
        f"Arrival-Date: {_date(received)}",
    ]
    for entry in failed:
        status += ["", f"Final-Recipient: rfc822; {entry.recipient}",
                   f"Original-Recipient: rfc822;{entry.recipient}",
                   "Action: failed", f"Status: {entry.dsn}"]
        if entry.remote_mta:
            status.append(f"Remote-MTA: dns; {_clean(entry.remote_mta)}")
        status.append(f"Diagnostic-Code: {'smtp' if entry.remote_mta else 'X-Postfix'}; "
                      f"{_clean(entry.reason)}")
    if len(original) <= BOUNCE_SIZE_LIMIT and not headers_only:
        returned = original if original.endswith(b"\r\n") else original + b"\r\n"
        part = ["Content-Description: Undelivered Message", "Content-Type: message/rfc822"]
    else:
        end = original.find(b"\r\n\r\n")
        returned = (original[:end + 2] if end >= 0 else original)[:BOUNCE_SIZE_LIMIT]
        part = ["Content-Description: Undelivered Message Headers",
                "Content-Type: text/rfc822-headers"]
    head = [
        f"Date: {_date(now)}",
        f"From: MAILER-DAEMON@{my_hostname} (Mail Delivery System)",
        f"To: {sender}",
        f"Subject: {_clean(subject or 'Undelivered Mail Returned to Sender')}",
        "Auto-Submitted: auto-replied",
        f"Message-Id: <{queue_id}.{secrets.token_hex(6)}@{my_hostname}>",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "Content-Transfer-Encoding: 8bit",
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        f"Content-Type: text/plain; charset={charset}",
        "",
        *human,
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        *status,
        "",
        f"--{boundary}",
        *part,
        "Content-Transfer-Encoding: 8bit",
        "",
    ]
    tail = ["", f"--{boundary}--", ""]
    return ("\r\n".join(head) + "\r\n").encode("utf-8", "replace") + returned + (
        "\r\n".join(tail)).encode("ascii")
