"""
Messages cipherd writes itself (the admin's *send email* test tool; later
notifications): well-formed, CRLF, and with header values that cannot
smuggle in further header lines.
"""

from __future__ import annotations

import email.policy
import secrets
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime

from cipherd.settings import email_problem


class ComposeError(ValueError):
    """
    A field of the message cannot be used: C{field} says which.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def compose(*, sender: str, recipients: list[str], subject: str, body: str, now: float,
            my_hostname: str) -> bytes:
    """
    A text/plain message from C{sender} to C{recipients}.

    @raise ComposeError: a bad address, or a line break in the subject.
    """
    problem = email_problem(sender)
    if problem:
        raise ComposeError("from", f"{sender!r}: {problem}")
    if not recipients:
        raise ComposeError("to", "give at least one recipient")
    for recipient in recipients:
        problem = email_problem(recipient)
        if problem:
            raise ComposeError("to", f"{recipient!r}: {problem}")
    if "\r" in subject or "\n" in subject:
        raise ComposeError("subject", "the subject must be one line")
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    try:
        message["Subject"] = subject
    except ValueError as e:  # other line separators (\x0b, \u2028, ...)
        raise ComposeError("subject", f"the subject cannot be used: {e}") from None
    message["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    message["Message-ID"] = f"<{secrets.token_hex(12)}@{my_hostname}>"
    message.set_content(body.replace("\r\n", "\n"))
    return message.as_bytes()
