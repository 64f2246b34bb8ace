"""
Replies to a PDF-encrypted message: the PDF (and the mail carrying it) has a
link to a page of the portal where its recipient writes a reply, with
attachments, without an account.

The link is a token signed with the *server secret* (HMAC-SHA256, bound to
the purpose C{pdf-reply}, with its own domain separation from the sign-up
and reset links): who the reply goes to (the original sender, and no one
else), who writes it (the original recipient), the original's Message-ID
for threading, its subject (left out when the sender obscures subjects:
the link also stands in the mail's clear text), an expiry and a random
nonce naming the link.  Nothing is stored when a link is made; the replies
sent through a link are counted in the database (table C{pdf_replies}, by
nonce, shared by all nodes), for single-use links and a rate limit per
link.

The reply is a new message from the recipient to the sender, threaded
(C{In-Reply-To}, C{References}), with a field saying where it was written:
whoever holds the link can write it, so it is no more authenticated than
the link's secrecy.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from twisted.internet.interfaces import IReactorTime

from cipherd.core.addresses import canonical_address
from cipherd.logs import mail_logger
from cipherd.settings import IAddressSettings
from cipherd.smtp.config import MTAConfig
from cipherd.smtp.queue import ISubmission
from cipherd.store import Store
from cipherd.store.schema import pdf_replies
from cipherd.webmail.accounts import LinkRefused, signed_payload, signed_token
from cipherd.webmail.notify import one_line
from cipherd.webmail.reply import MAX_REPLY_SIZE, Attachment, add_attachments

log = mail_logger("cipherd.mpa.pdfreply")

PURPOSE = "pdf-reply"
# Replies one link may send within an hour, single use or not.
REPLIES_PER_HOUR = 5
_HOUR = 3600
REPLY_FIELD = "X-Cipherd-PDF-Reply"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,3000}\.[A-Za-z0-9_-]{43}")
MAX_SUBJECT = 200


@dataclass(frozen=True)
class ReplyLink:
    """
    What a PDF reply link says.

    @ivar sender: the original sender: the reply goes to this address only.
    @ivar recipient: the original recipient, who writes the reply.
    @ivar message_id: the original's Message-ID (empty: none).
    @ivar subject: the original's subject (empty when obscured).
    @ivar nonce: names the link (its replies are counted under it).
    """

    sender: str
    recipient: str
    message_id: str
    subject: str
    expires: int
    nonce: str
    single_use: bool = False


_DOMAIN = b"cipherd pdf reply link"
_NOT_VALID = "This link is not valid. Copy the whole link from the message."


def may_reply_to(config: MTAConfig, sender: str) -> bool:
    """
    Whether a reply written on the portal may go to C{sender}: an address
    of our own domains (the relay domains) or an authorized recipient, as
    for the webmail's own replies (guide §2.3.14).  A reply leaves as
    written, unencrypted: never to anyone else.
    """
    return bool(sender) and (config.receive_policy().relay_domain(canonical_address(sender))
                             or config.authorized(sender))


def new_link(*, sender: str, recipient: str, message_id: str, subject: str, now: float,
             validity_days: int, single_use: bool, not_after: float = 0.0) -> ReplyLink:
    """
    @param not_after: when the message expires (0: never): the link
        expires then at the latest.
    """
    # A Message-ID longer than this is no usual one, and would make the
    # token too long to read back: no threading then.
    message_id = one_line(message_id)
    return ReplyLink(sender, recipient, message_id if len(message_id) <= 250 else "",
                     one_line(subject)[:MAX_SUBJECT],
                     int(min(now + validity_days * 86400, not_after or float("inf"))),
                     secrets.token_urlsafe(16), single_use)


def make_token(secret: str, link: ReplyLink) -> str:
    """
    The link's token, for the URL.
    """
    payload = json.dumps({"p": PURPOSE, "s": link.sender, "r": link.recipient,
                          "m": link.message_id, "j": link.subject, "e": link.expires,
                          "n": link.nonce, "o": link.single_use},
                         separators=(",", ":"), ensure_ascii=False).encode()
    return signed_token(secret, _DOMAIN, payload)


def read_token(secret: str, token: str, now: float) -> ReplyLink:
    """
    The link of an authentic, unexpired token.

    @raise LinkRefused: damaged, forged (or made under another secret),
        for another purpose, or expired; the reason is fit to show.
    """
    claims: Any = json.loads(signed_payload(secret, _DOMAIN, token, _TOKEN, _NOT_VALID))
    if claims.get("p") != PURPOSE:
        raise LinkRefused(_NOT_VALID)
    link = ReplyLink(str(claims["s"]), str(claims["r"]), str(claims["m"]), str(claims["j"]),
                     int(claims["e"]), str(claims["n"]), bool(claims["o"]))
    if now > link.expires:
        raise LinkRefused("This reply link has expired. Write to the sender by email, or ask "
                          "for the message to be sent again.")
    return link


def reply_url(base: str, token: str) -> str:
    """
    The page's address: the token as C{?token=}, which the access log
    scrubs (L{cipherd.web.common.access_log_formatter}).
    """
    return f"{base.rstrip('/')}/pdf/reply?token={token}"


def compose(link: ReplyLink, text: str, attachments: Sequence[Attachment], *, now: float,
            my_hostname: str) -> bytes:
    """
    The reply: from the recipient, to the sender only, threaded.
    """
    subject = link.subject or "your encrypted message"
    if not subject.lower().startswith("re:"):
        subject = f"Re: {subject}"
    reply = EmailMessage(policy=SMTP)
    reply["From"] = link.recipient
    reply["To"] = link.sender
    reply["Subject"] = subject
    reply["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    reply["Message-ID"] = make_msgid(domain=my_hostname or "localhost")
    if link.message_id:
        reply["In-Reply-To"] = link.message_id
        reply["References"] = link.message_id
    reply[REPLY_FIELD] = (f"written on the PDF reply page with the link sent to "
                          f"{link.recipient}")
    reply.set_content(text.rstrip() + "\n", charset="utf-8", cte="quoted-printable")
    add_attachments(reply, attachments)
    return reply.as_bytes()


class ReplyCounts:
    """
    The replies sent through each link, in the database: a single-use link
    sends one, any link at most L{REPLIES_PER_HOUR} an hour.
    """

    def __init__(self, store: Store, clock: IReactorTime) -> None:
        self._store = store
        self._clock = clock

    async def take(self, link: ReplyLink) -> str | None:
        """
        Count a reply through C{link}, if it may send one.

        @return: why it may not (fit to show), or C{None} when counted.
        """
        now = self._clock.seconds()

        def count(conn: Connection) -> str | None:
            conn.execute(delete(pdf_replies).where(pdf_replies.c.expires < now))
            row = conn.execute(select(pdf_replies).where(pdf_replies.c.link == link.nonce)
                               .with_for_update()).first()
            if row is None:
                conn.execute(insert(pdf_replies).values(
                    link=link.nonce, replies=1, window_start=now, window_count=1,
                    expires=link.expires))
                return None
            if link.single_use and row.replies >= 1:
                return "This link has been used for a reply already: it works once."
            start, window = row.window_start, row.window_count
            if now - start >= _HOUR:
                start, window = now, 0
            if window >= REPLIES_PER_HOUR:
                minutes = max(1, int((start + _HOUR - now) // 60))
                return (f"This link has sent {REPLIES_PER_HOUR} replies within an hour. Try "
                        f"again in {minutes} minutes.")
            conn.execute(update(pdf_replies).where(pdf_replies.c.link == link.nonce).values(
                replies=row.replies + 1, window_start=start, window_count=window + 1))
            return None

        try:
            result: str | None = await self._store.run(count)
        except IntegrityError:
            # Another node counted this link's first reply at the same moment.
            result = await self._store.run(count)
        return result

    async def give_back(self, link: ReplyLink) -> None:
        """
        Un-count a reply that was not sent after all (it could not be queued).
        """
        def uncount(conn: Connection) -> None:
            conn.execute(update(pdf_replies).where(pdf_replies.c.link == link.nonce).values(
                replies=pdf_replies.c.replies - 1,
                window_count=pdf_replies.c.window_count - 1))

        await self._store.run(uncount)


class PDFReplies:
    """
    The portal's side of PDF reply links: checking a link and sending the
    reply written with it.

    @param settings: the original sender's settings (I{PDF reply enabled}
        is checked again when the reply is sent) and the global ones (the
        server secret).
    @param submission: where the replies go (the queue).
    """

    def __init__(self, settings: IAddressSettings, counts: ReplyCounts,
                 mta: Callable[[], MTAConfig], submission: ISubmission,
                 clock: IReactorTime) -> None:
        self._settings = settings
        self._counts = counts
        self._mta = mta
        self._submission = submission
        self._clock = clock

    async def check(self, token: str) -> ReplyLink:
        """
        @raise LinkRefused: the link may not be used (the reason is fit to
            show).
        """
        secret = (await self._settings.by_address([""]))[""]["server_secret"]
        link = read_token(secret, token, self._clock.seconds())
        if not (await self._settings.by_address([link.sender]))[link.sender][
                "pdf_reply_enabled"]:
            raise LinkRefused("Replies through this page are turned off for this sender. "
                              "Write to the sender by email instead.")
        return link

    async def send(self, link: ReplyLink, text: str, attachments: Sequence[Attachment]
                   ) -> str:
        """
        Queue the reply written with C{link} (from L{check}).

        @return: the reply's queue id.
        @raise LinkRefused: the link may not be used, or not now.
        @raise ReplyRefused: the reply itself is refused (too large, empty).
        """
        size = len(text.encode()) + sum(len(a.data) for a in attachments)
        if size > MAX_REPLY_SIZE:
            raise ReplyRefused(f"The reply is too large ({size // 1024 // 1024} MB; at most "
                               f"{MAX_REPLY_SIZE // 1024 // 1024} MB).")
        if not text.strip() and not attachments:
            raise ReplyRefused("The reply is empty: write something or attach a file.")
        config = self._mta()
        if not may_reply_to(config, link.sender):
            raise LinkRefused("Replies through this page cannot go to this sender. Write to "
                              "the sender by email instead.")
        refusal = await self._counts.take(link)
        if refusal is not None:
            raise LinkRefused(refusal)
        try:
            message = compose(link, text, attachments, now=self._clock.seconds(),
                              my_hostname=config.my_hostname)
            queued = await self._submission.submit(link.recipient, [link.sender], message,
                                                   "webmail", processed=True)
        except BaseException:
            await self._counts.give_back(link)
            raise
        queue_id = str(queued.envelope.queue_id)
        log.info("PDF reply from {recipient} to {sender} (queued as {queue_id})",
                 recipient=link.recipient, sender=link.sender, queue_id=queue_id)
        return queue_id


class ReplyRefused(Exception):
    """
    A reply that cannot be sent as written; the reason is fit to show.
    """
