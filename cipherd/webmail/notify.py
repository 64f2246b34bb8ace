"""
The messages the webmail messenger sends people: the sign-up invitation on
a recipient's first message, the new-message notice afterwards, the
password reset mail, and what it tells the postmaster and senders.

Texts are jinja2 templates (defaults in C{cipherd/webmail/templates/}).
Every header value is made one line before it is set, and set through
C{email.message.EmailMessage}, so no name, subject or address can add a
header.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email import quoprimime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import dkim
from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment
from twisted.internet.interfaces import IReactorTime

from cipherd.logs import mail_logger
from cipherd.smtp.processing import Made
from cipherd.smtp.queue import ISubmission

TEMPLATES = Path(__file__).parent / "templates"

log = mail_logger("cipherd.mpa.notify")

# Plain text mail, never HTML: nothing to escape.  Sandboxed: the templates
# are the administrator's to edit, and no template may reach Python objects.
_environment = SandboxedEnvironment(
    loader=FileSystemLoader(TEMPLATES), autoescape=False,
    undefined=StrictUndefined, keep_trailing_newline=True)


def one_line(value: str) -> str:
    """
    C{value} with every line break and control character made a space.
    """
    return " ".join("".join(c if c.isprintable() else " " for c in value).split())


@dataclass(frozen=True)
class Notice:
    """
    A rendered template: its subject (the first line, after C{Subject:})
    and its text.
    """

    subject: str
    text: str


def render(name: str, context: Mapping[str, Any], source: str | None = None) -> Notice:
    """
    Render template C{name} (or C{source}, an administrator's version of
    it): its first line is C{Subject: ...}, then an empty line, then the
    text.
    """
    template = (_environment.from_string(source) if source
                else _environment.get_template(f"{name}.txt"))
    rendered = template.render(**context)
    head, _, text = rendered.partition("\n\n")
    subject = head.removeprefix("Subject:").strip() if head.startswith("Subject:") else ""
    return Notice(one_line(subject), text if subject else rendered)


# What the fast path of L{build} writes as it is: an address of plain
# characters, and a header value of printable ASCII words that needs neither
# folding nor encoding (anything else goes through the email package).
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+\Z")
_PLAIN_VALUE = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*\Z")
_FOLD_AT = 78


def _plain_fields(fields: list[tuple[str, str]]) -> bytes | None:
    """
    C{fields} as header lines when each is written as it is by the email
    package's SMTP policy, else C{None}.
    """
    lines = []
    for name, value in fields:
        plain = (_PLAIN_ADDRESS.match(value) if name in ("From", "To")
                 else _PLAIN_VALUE.match(value))
        # An encoded word (=?...?=) the email package would decode: never plain.
        if not plain or "=?" in value or len(name) + 2 + len(value) > _FOLD_AT:
            return None
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("ascii")


def _quoted_printable(text: str) -> bytes:
    """
    C{text} as UTF-8 quoted-printable with CRLF lines, as C{set_content}
    makes it.
    """
    lines = text.encode("utf-8").splitlines()
    encoded = quoprimime.body_encode((b"\n".join(lines) + b"\n").decode("latin-1"), _FOLD_AT)
    return encoded.replace("\n", "\r\n").encode("ascii")


def _plain_message(fields: list[tuple[str, str]], text: str) -> bytes | None:
    """
    The text message of C{fields} and C{text}, written directly, when its
    fields are plain (L{_plain_fields}); else C{None}.
    """
    head = _plain_fields(fields)
    if head is None:
        return None
    return b"".join([head, b'Content-Type: text/plain; charset="utf-8"\r\n'
                     b"Content-Transfer-Encoding: quoted-printable\r\nMIME-Version: 1.0\r\n"
                     b"\r\n", _quoted_printable(text)])


def _package_message(fields: list[tuple[str, str]], text: str) -> bytes:
    """
    The same message made by the email package (any header value: folded,
    encoded, addresses parsed).
    """
    message = EmailMessage(policy=SMTP)
    for name, value in fields:
        message[name] = value
    message.set_content(text, charset="utf-8", cte="quoted-printable")
    return message.as_bytes()


def build(*, sender: str, recipient: str, notice: Notice, my_hostname: str, now: float,
          attachment: bytes | None = None, auto: bool = True) -> bytes:
    """
    A whole message (CRLF lines) from C{notice}.

    Plain header values (every new-message notice, as a rule) are written
    directly, byte for byte what the email package would write (tested
    against it), at a tenth of its cost; others go through it.

    @param attachment: a message to attach (C{message/rfc822}).
    """
    fields = [("From", one_line(sender)), ("To", one_line(recipient)),
              ("Subject", notice.subject),
              ("Date", format_datetime(datetime.fromtimestamp(now, UTC))),
              ("Message-ID", make_msgid(domain=one_line(my_hostname) or "localhost"))]
    if auto:
        fields.append(("Auto-Submitted", "auto-generated"))
    plain = _plain_message(fields, notice.text) if attachment is None else None
    if plain is not None:
        return plain
    message = _package_message(fields, notice.text)
    if attachment is None:
        return message
    # The attached message goes in as it is, byte for byte (as 8bit, or
    # binary for lines too long for SMTP): re-encoding it would change it.
    head, _, body = message.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    content = [f for f in lines if f.lower().startswith((b"content-", b"mime-version"))]
    outer = [f for f in lines if f not in content]
    boundary = b"=_notice_" + secrets.token_hex(16).encode()
    if not attachment.endswith(b"\r\n"):
        attachment += b"\r\n"
    long_lines = max((len(line) for line in attachment.split(b"\r\n")), default=0) > 998
    return b"".join([
        b"\r\n".join(outer), b"\r\nMIME-Version: 1.0\r\n",
        b'Content-Type: multipart/mixed; boundary="', boundary, b'"\r\n\r\n',
        b"--", boundary, b"\r\n",
        b"\r\n".join(f for f in content if not f.lower().startswith(b"mime-version")),
        b"\r\n\r\n", body, b"\r\n--", boundary, b"\r\n",
        b"Content-Type: message/rfc822\r\nContent-Disposition: attachment\r\n",
        b"Content-Transfer-Encoding: ", b"binary" if long_lines else b"8bit", b"\r\n\r\n",
        attachment, b"\r\n--", boundary, b"--\r\n",
    ])


def dkim_sign(message: bytes, *, domain: str, selector: str, key_pem: str) -> bytes:
    """
    C{message} with a DKIM-Signature (relaxed/relaxed, SHA-256) on top.
    """
    signature = dkim.sign(message, selector.encode(), domain.encode(), key_pem.encode(),
                          canonicalize=(b"relaxed", b"relaxed"), include_headers=_SIGNED)
    return signature.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + message


_SIGNED = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version",
           b"content-type", b"content-transfer-encoding", b"auto-submitted"]


class Notices:
    """
    What the webmail messenger says to people, as messages: from the
    *notification sender* (or postmaster at my hostname), DKIM-signed when
    the DKIM settings say so.  Processing (the relay) makes them and the
    queue writes them; L{Notifier} sends them from the portal.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock

    def render(self, name: str, context: Mapping[str, Any], settings: Mapping[str, Any]
               ) -> Notice:
        """
        Template C{name}, the administrator's version (setting
        C{template_<name>}) if there is one.
        """
        source = settings.get(f"template_{name}") or None
        if source:
            try:
                return render(name, context, source)
            except Exception as e:  # a template that parses but does not render
                log.warn("The {name} template could not be used ({why}); the built-in text "
                         "was sent instead (Settings → Templates)", name=name, why=e)
        return render(name, context)

    def message(self, recipient: str, notice: Notice, settings: Mapping[str, Any],
                my_hostname: str, attachment: bytes | None = None) -> Made:
        """
        C{notice} for C{recipient}, as a message to queue.
        """
        sender = settings["notification_sender"] or f"postmaster@{my_hostname}"
        message = build(sender=sender, recipient=recipient, notice=notice,
                        my_hostname=my_hostname, now=self._clock.seconds(),
                        attachment=attachment)
        if settings["dkim_enabled"] and settings["dkim_private_key"] and \
                settings["dkim_domain"] and settings["dkim_selector"]:
            message = dkim_sign(message, domain=settings["dkim_domain"],
                                selector=settings["dkim_selector"],
                                key_pem=settings["dkim_private_key"])
        return Made(settings["notification_sender"], (recipient,), message)


class Notifier(Notices):
    """
    L{Notices}, sent at once through outbound submission (the portal's
    password resets and read receipts).
    """

    def __init__(self, submission: ISubmission, clock: IReactorTime) -> None:
        super().__init__(clock)
        self._submission = submission

    async def send(self, recipient: str, notice: Notice, settings: Mapping[str, Any],
                   my_hostname: str, attachment: bytes | None = None) -> str:
        """
        Queue C{notice} for C{recipient}; its queue id.
        """
        made = self.message(recipient, notice, settings, my_hostname, attachment)
        queued = await self._submission.submit(made.sender, list(made.recipients),
                                               made.content, "mpa", processed=True)
        return str(queued.envelope.queue_id)
