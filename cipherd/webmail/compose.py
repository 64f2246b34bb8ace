"""
New messages from webmail users (when *compose enabled* allows): a plain
text message with attachments, as L{cipherd.webmail.reply} makes replies
but without an original to thread or quote.
"""

from __future__ import annotations

import email.policy
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from cipherd.webmail.notify import one_line
from cipherd.webmail.reply import Attachment, add_attachments


def compose_message(*, user: str, recipients: Sequence[str], subject: str, text: str,
                    attachments: Sequence[Attachment] = (), now: float,
                    my_hostname: str) -> bytes:
    """
    The message as a whole (CRLF lines).
    """
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = user
    message["To"] = ", ".join(recipients)
    message["Subject"] = one_line(subject) or "(no subject)"
    message["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    message["Message-ID"] = make_msgid(domain=my_hostname or "localhost")
    message.set_content(text.rstrip() + "\n", charset="utf-8", cte="quoted-printable")
    add_attachments(message, attachments)
    return message.as_bytes()
