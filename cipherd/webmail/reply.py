"""
Replies from webmail users: a proper MIME message from the user to the
people they answer, threaded (In-Reply-To, References), the original
quoted, attachments added, addressed only to *authorized recipients*.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, make_msgid, parseaddr

import nh3

from cipherd.settings import email_problem
from cipherd.webmail.notify import one_line

# What one reply may carry, attachments included.
MAX_REPLY_SIZE = 25 * 1024 * 1024
MAX_RECIPIENTS = 50


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


@dataclass
class ReplyPlan:
    """
    Who a reply goes to, and who it may not go to and why.
    """

    recipients: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


def _parse(original: bytes) -> email.message.EmailMessage:
    parsed = email.message_from_bytes(original, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _header(parsed: EmailMessage, name: str) -> str:
    try:
        return str(parsed.get(name, ""))
    except Exception:  # a header the parser cannot make sense of
        return ""


def plan_recipients(original: bytes, user: str, *, reply_all: bool, extra: Sequence[str],
                    authorized: Callable[[str], bool]) -> ReplyPlan:
    """
    The recipients of a reply by C{user}: the original's Reply-To or From;
    with C{reply_all} also its To and Cc (never the user); then C{extra}.
    Each is kept only when authorized, else refused with the reason.
    """
    parsed = _parse(original)
    reply_to = _header(parsed, "Reply-To") or _header(parsed, "From")
    wanted = [address for _, address in getaddresses([reply_to])]
    if reply_all:
        wanted += [address for _, address in getaddresses(
            [_header(parsed, "To"), _header(parsed, "Cc")])]
    wanted += list(extra)
    plan = ReplyPlan()
    seen = {user.lower()}
    for address in wanted:
        address = address.strip()
        key = address.lower()
        if not address or key in seen:
            continue
        seen.add(key)
        if problem := email_problem(address):
            plan.refused[address] = f"not an email address: {problem}"
        elif not authorized(address):
            plan.refused[address] = ("not an authorized recipient: replies may go only to the "
                                     "addresses and domains the administrator allows")
        elif len(plan.recipients) >= MAX_RECIPIENTS:
            plan.refused[address] = f"a reply may have at most {MAX_RECIPIENTS} recipients"
        else:
            plan.recipients.append(address)
    return plan


def quoted_text(original: bytes) -> str:
    """
    The original's text, each line quoted with "> ".
    """
    parsed = _parse(original)
    try:
        body = parsed.get_body(preferencelist=("plain", "html"))
        text = body.get_content() if body is not None else ""
        if body is not None and body.get_content_type() == "text/html":
            text = nh3.clean(text, tags=set())
    except Exception:  # an undecodable body: nothing to quote
        text = ""
    return "\n".join("> " + line if line else ">" for line in text.splitlines())


def compose_reply(original: bytes, *, user: str, recipients: Sequence[str], text: str,
                  attachments: Sequence[Attachment] = (), now: float,
                  my_hostname: str) -> bytes:
    """
    The reply as a whole message (CRLF lines).
    """
    parsed = _parse(original)
    subject = one_line(_header(parsed, "Subject"))
    if not subject.lower().startswith("re:"):
        subject = f"Re: {subject}" if subject else "Re: your message"
    message_id = one_line(_header(parsed, "Message-ID"))
    references = one_line(_header(parsed, "References"))
    when = one_line(_header(parsed, "Date"))
    who = one_line(parseaddr(_header(parsed, "From"))[1] or _header(parsed, "From"))
    reply = EmailMessage(policy=email.policy.SMTP)
    reply["From"] = user
    reply["To"] = ", ".join(recipients)
    reply["Subject"] = subject
    reply["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    reply["Message-ID"] = make_msgid(domain=my_hostname or "localhost")
    if message_id:
        reply["In-Reply-To"] = message_id
        reply["References"] = f"{references} {message_id}".strip()
    intro = f"On {when}, {who} wrote:" if when and who else "The original message:"
    quoted = quoted_text(original)
    reply.set_content(f"{text.rstrip()}\n\n{intro}\n{quoted}\n", charset="utf-8",
                      cte="quoted-printable")
    add_attachments(reply, attachments)
    return reply.as_bytes()


def add_attachments(message: EmailMessage, attachments: Sequence[Attachment]) -> None:
    """
    Attach files a webmail user uploaded; a type that would make the
    attachment a message or a multipart becomes application/octet-stream.
    """
    for attachment in attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        if not subtype or maintype in ("message", "multipart"):
            maintype, subtype = "application", "octet-stream"
        message.add_attachment(attachment.data, maintype=maintype, subtype=subtype,
                               filename=one_line(attachment.filename) or "attachment")
