"""
What the portal asks of the webmail messenger: signing up and resetting
passwords through links, logging in, the inbox, reading (with the read
receipt), deleting, and replying.  The portal knows web pages; this knows
accounts, mailboxes and mail.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from cipherd.core.clock import minute_utc
from cipherd.core.headers import subject as subject_of
from cipherd.logs import mail_logger
from cipherd.settings import IAddressSettings
from cipherd.smtp.config import MTAConfig
from cipherd.smtp.queue import ISubmission
from cipherd.webmail import reply as replies
from cipherd.webmail import tracking
from cipherd.webmail.accounts import (
    ACTIVE,
    DISABLED,
    RESET,
    SIGNUP,
    Account,
    Accounts,
    LinkRefused,
)
from cipherd.webmail.compose import compose_message
from cipherd.webmail.controls import NO_REPLY, REQUIRE_TOTP, WORDS, ControlRefused
from cipherd.webmail.invitations import password_reset_notice
from cipherd.webmail.logincodes import RESEND_AFTER, LoginCodes
from cipherd.webmail.logincodes import VALIDITY as CODE_VALIDITY
from cipherd.webmail.mailbox import FULL, Held, Mailboxes, MessageEnded, Summary
from cipherd.webmail.notify import Notifier, one_line
from cipherd.webmail.passkeys import Passkeys
from cipherd.webmail.sessions import PortalSessions
from cipherd.webmail.tracking import (
    DOWNLOADED,
    EXPIRED,
    RECALLED,
    REPLIED,
    Timeline,
    TrackingLink,
)

log = mail_logger("cipherd.mpa.webmail")

# Why a message that ended cannot be read or answered, fit to show.
ENDED = {EXPIRED: "This message has expired: it is no longer available.",
         RECALLED: "The sender has recalled this message: it is no longer available."}

# One password reset mail per address per this many seconds (per node).
RESET_INTERVAL = 300.0


@dataclass
class ReplyResult:
    """
    @ivar queue_id: the reply's queue id, when it was sent to anyone.
    @ivar refused: the addresses it did not go to, with the reason.
    """

    sent_to: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    queue_id: str | None = None
    problem: str | None = None


class Messenger:
    """
    @param settings: the settings of the recipients, and the global ones.
    @param submission: where the replies and notices go (the queue).
    """

    def __init__(self, accounts: Accounts, mailboxes: Mailboxes, notifier: Notifier,
                 settings: IAddressSettings, mta: Callable[[], MTAConfig],
                 submission: ISubmission, clock: IReactorTime) -> None:
        self.accounts = accounts
        self.mailboxes = mailboxes
        self._notifier = notifier
        self._settings = settings
        self._mta = mta
        self._submission = submission
        self._clock = clock
        self._recent_resets: dict[str, float] = {}
        self._codes = LoginCodes(accounts.store, clock, mailboxes.key_for("login codes"))
        self.passkeys = Passkeys(accounts.store, clock, mailboxes.key_for("passkey challenges"))

    async def _values(self, address: str) -> Mapping[str, Any]:
        found = await self._settings.by_address(["", address])
        # Link secrets are global only.
        return ChainMap({"server_secret": found[""]["server_secret"]}, dict(found[address]))

    # Links -------------------------------------------------------------------

    async def check_link(self, token: str, purpose: str) -> Account:
        """
        @raise LinkRefused: the link may not be used (the reason is fit to
            show).
        """
        secret = (await self._settings.by_address([""]))[""]["server_secret"]
        account = await self.accounts.check_link(secret, token, purpose)
        values = await self._values(account.address)
        if purpose == SIGNUP and not values["initial_login_allowed"]:
            raise LinkRefused("Signing up is not possible here at the moment. Ask the sender "
                              "of your messages.")
        if purpose == RESET and not values["password_reset_enabled"]:
            raise LinkRefused("Password reset is not possible here. Ask the sender of your "
                              "messages.")
        return account

    async def password_problem(self, address: str, password: str) -> str | None:
        return (await self.password_strength(address, password))[1]

    async def password_strength(self, address: str, password: str
                                ) -> tuple[float, str | None]:
        """
        The password's strength in bits and why it is refused (or C{None}),
        judged off the reactor.
        """
        values = await self._values(address)
        return await self.accounts.judge_password(password, values["min_password_strength"],
                                                  address)

    async def set_password(self, token: str, purpose: str, password: str, confirm: str
                           ) -> tuple[Account | None, str | None]:
        """
        Set a password through a sign-up or reset link.

        @return: the account, or C{None} and why not.
        @raise LinkRefused: the link may not be used.
        """
        account = await self.check_link(token, purpose)
        if password != confirm:
            return None, "The two passwords are not the same."
        problem = await self.password_problem(account.address, password)
        if problem:
            return None, problem
        if not await self.accounts.set_password(account, password):
            return None, "This link has been used already. Ask for a new one."
        log.info("Webmail password set for {address} ({how})", address=account.address,
                 how="sign-up" if purpose != RESET else "password reset")
        return account, None

    async def request_password_reset(self, address: str, portal_url: str) -> None:
        """
        Mail a reset link to C{address} if it has an active account and
        resets are enabled; nothing otherwise (the caller says the same
        either way: no enumeration).  The work goes on after this returns,
        so that the answer takes as long whether or not a mail is sent, and
        an address gets at most one reset mail per L{RESET_INTERVAL}.

        @param portal_url: the portal's origin as the request reached it,
            for when the *portal base URL* is not set.
        """
        address = address.strip().lower()[:320]
        now = self._clock.seconds()
        if now < self._recent_resets.get(address, 0.0):
            log.info("Password reset asked for {address} again within {seconds:.0f} s; "
                     "nothing sent", address=address, seconds=RESET_INTERVAL)
            return
        if len(self._recent_resets) > 10_000:
            self._recent_resets = {a: t for a, t in self._recent_resets.items() if t > now}
        self._recent_resets[address] = now + RESET_INTERVAL
        Deferred.fromCoroutine(self._send_reset(address, portal_url)).addErrback(
            lambda f: log.failure("Sending a password reset link to {address} failed", f,
                                  address=address))

    async def _send_reset(self, address: str, portal_url: str) -> None:
        account = await self.accounts.get(address)
        values = await self._values(address)
        if account is None or account.state != ACTIVE or not values["password_reset_enabled"]:
            log.info("Password reset asked for {address}: no active account, or resets are "
                     "disabled; nothing sent", address=address)
            return
        notice = password_reset_notice(self.accounts, self._notifier, account, values,
                                       portal_url, self._clock.seconds())
        queue_id = await self._notifier.send(address, notice, values,
                                             self._mta().my_hostname)
        log.info("Sent a password reset link to {address} (queued as {notice_id})",
                 address=address, notice_id=queue_id)

    # Sign-in by a code mailed to the recipient --------------------------------

    async def _code_login_allowed(self, address: str) -> Account | None:
        """
        C{address}'s account if it may sign in by a mailed code: it is not
        disabled, and its settings allow codes.
        """
        account = await self.accounts.get(address)
        if account is None or account.state == DISABLED:
            return None
        return account if (await self._values(address))["webmail_email_code_login"] else None

    def request_login_code(self, address: str) -> None:
        """
        Mail C{address} a sign-in code if it may sign in by code; nothing
        otherwise (the caller says the same either way: no enumeration).
        The work goes on after this returns, so that the answer takes as
        long whether or not a mail is sent.
        """
        address = address.strip().lower()[:320]
        Deferred.fromCoroutine(self._send_login_code(address)).addErrback(
            lambda f: log.failure("Sending a sign-in code to {address} failed", f,
                                  address=address))

    async def _send_login_code(self, address: str) -> None:
        if await self._code_login_allowed(address) is None:
            log.info("Sign-in code asked for {address}: no account, a disabled one, or sign-in "
                     "by code is off for it; nothing sent", address=address)
            return
        code = await self._codes.issue(address)
        if code is None:
            log.info("Sign-in code asked for {address} again within {seconds:.0f} s; nothing "
                     "sent", address=address, seconds=RESEND_AFTER)
            return
        values = await self._values(address)
        notice = self._notifier.render("login_code", {
            "address": address, "code": code,
            "expires": minute_utc(self._clock.seconds() + CODE_VALIDITY)}, values)
        queue_id = await self._notifier.send(address, notice, values, self._mta().my_hostname)
        log.info("Sent a sign-in code to {address} (queued as {notice_id})", address=address,
                 notice_id=queue_id)

    async def login_with_code(self, address: str, code: str) -> Account | None:
        """
        The account whose live sign-in code C{code} is (spent now), or
        C{None}.
        """
        address = address.strip().lower()[:320]
        account = await self._code_login_allowed(address)
        if account is None or not await self._codes.use(address, code):
            return None
        await self.accounts.touch(address, login=True)
        return account

    # The mailbox ------------------------------------------------------------

    async def login(self, address: str, password: str) -> Account | None:
        return await self.accounts.verify_password(address.strip().lower(), password)

    async def inbox(self, address: str, *, offset: int = 0, limit: int = 50) -> list[Summary]:
        return await self.mailboxes.listing(address, offset=offset, limit=limit,
                                            now=self._clock.seconds())

    async def read(self, address: str, message_id: int) -> Held | None:
        """
        A message of C{address}'s mailbox, marked read; the first time, its
        read receipt goes out if the gateway asked for one.

        @raise MessageEnded: it expired or was recalled.
        @raise ControlRefused: its sender requires a second factor, which
            the account has not.
        """
        held = await self.held(address, message_id)
        if held is None:
            return None
        content = held.content
        receipt_to = await self.mailboxes.mark_read(address, message_id, self._clock.seconds())
        if receipt_to:
            values = await self._values(address)
            subject = one_line(subject_of(content))
            notice = self._notifier.render("read_receipt", {
                "reader": address, "subject": subject,
                "read": minute_utc(self._clock.seconds())}, values)
            await self._notifier.send(receipt_to, notice, values, self._mta().my_hostname)
            log.info("Read receipt for {address}'s message sent to {sender}", address=address,
                     sender=receipt_to)
        return held

    async def delete(self, address: str, ids: Sequence[int]) -> int:
        return await self.mailboxes.delete(address, ids, self._clock.seconds())

    async def reply(self, address: str, message_id: int, text: str, *, reply_all: bool = False,
                    to: Sequence[str] = (), attachments: Sequence[replies.Attachment] = (),
                    copy_to_self: bool = False) -> ReplyResult:
        """
        Send a reply by C{address} to a message of its mailbox, to the
        authorized recipients among those it names.
        """
        try:
            held = await self.held(address, message_id)
        except MessageEnded as e:
            return ReplyResult(problem=ENDED[e.how])
        except ControlRefused as e:
            return ReplyResult(problem=str(e))
        if held is None:
            return ReplyResult(problem="That message is not in your mailbox.")
        if NO_REPLY in held.controls:
            return ReplyResult(problem=WORDS[NO_REPLY])
        original = held.content
        size = len(text.encode()) + sum(len(a.data) for a in attachments)
        if size > replies.MAX_REPLY_SIZE:
            return ReplyResult(problem=f"The reply is too large ({size // 1024 // 1024} MB; "
                                       f"at most {replies.MAX_REPLY_SIZE // 1024 // 1024} MB).")
        config = self._mta()
        plan = replies.plan_recipients(original, address, reply_all=reply_all, extra=to,
                                       authorized=config.authorized)
        result = ReplyResult(refused=plan.refused)
        if not plan.recipients:
            result.problem = "The reply was not sent: no authorized recipient."
            return result
        message = replies.compose_reply(original, user=address, recipients=plan.recipients,
                                        text=text, attachments=attachments,
                                        now=self._clock.seconds(),
                                        my_hostname=config.my_hostname)
        result = await self._send(address, message, result, plan.recipients, copy_to_self,
                                  "reply")
        await self.mailboxes.track(address, message_id, self._clock.seconds(), REPLIED,
                                   ", ".join(result.sent_to))
        return result

    async def held(self, address: str, message_id: int) -> Held | None:
        """
        A message of C{address}'s mailbox as it is (not marked read), with
        its sender's controls.

        @raise MessageEnded: it expired or was recalled.
        @raise ControlRefused: its sender requires a second factor, which
            the account has not.
        """
        held = await self.mailboxes.held(address, message_id, now=self._clock.seconds())
        if held is not None and REQUIRE_TOTP in held.controls and \
                not await self.has_second_factor(address):
            raise ControlRefused(REQUIRE_TOTP)
        return held

    async def has_second_factor(self, address: str) -> bool:
        """
        Whether C{address} has a second factor: a TOTP app, or a passkey.
        """
        return (await self.accounts.totp_secret(address) is not None
                or bool(await self.passkeys.listing(address)))

    async def downloaded(self, address: str, message_id: int, what: str) -> None:
        """
        An attachment (or the whole message) of C{address}'s message was
        downloaded: on its timeline.
        """
        await self.mailboxes.track(address, message_id, self._clock.seconds(), DOWNLOADED,
                                   what)

    async def _send(self, address: str, message: bytes, result: ReplyResult,
                    recipients: list[str], copy_to_self: bool, what: str) -> ReplyResult:
        """
        Queue what a webmail user wrote; their copy, if they want one, goes
        into their own webmail mailbox: mailed to their address it would
        carry the quoted original out unencrypted.
        """
        queued = await self._submission.submit(address, recipients, message, "webmail",
                                               processed=True)
        result.sent_to = recipients
        result.queue_id = str(queued.envelope.queue_id)
        if copy_to_self:
            limit = (await self._values(address))["mailbox_size_limit"]
            kept = await self.mailboxes.deliver_within(
                address, f"sent-{result.queue_id}", self._clock.seconds(), message,
                limit=limit)
            if kept == FULL:
                log.info("Webmail {what} from {address}: no copy kept, the mailbox is full",
                         what=what, address=address)
        await self.accounts.touch(address)
        log.info("Webmail {what} from {address} to {rcpts} (queued as {queue_id}){refused}",
                 what=what, address=address, rcpts=", ".join(recipients),
                 queue_id=result.queue_id,
                 refused=f"; refused: {', '.join(result.refused)}" if result.refused else "")
        return result

    # What became of a message: its sender's status and recall links -------------

    async def tracking_link(self, token: str, purpose: str) -> TrackingLink:
        """
        @raise LinkRefused: the link may not be used (the reason is fit to
            show).
        """
        secret = (await self._settings.by_address([""]))[""]["server_secret"]
        return tracking.read_token(secret, token, purpose, self._clock.seconds())

    async def timeline(self, tunnel_id: str) -> Timeline | None:
        return await self.mailboxes.timeline(tunnel_id)

    async def recall(self, tunnel_id: str, addresses: Sequence[str] | None, by: str
                     ) -> list[str]:
        """
        Recall a tunnelled message from C{addresses}' mailboxes (C{None}:
        everyone's); it is gone from them at once.

        @param by: who, for the timeline and the log.
        @return: whose mailboxes it was taken from.
        """
        return await self.mailboxes.recall(tunnel_id, addresses, self._clock.seconds(), by)

    # For the portal's pages ----------------------------------------------------

    def now(self) -> float:
        return self._clock.seconds()

    def portal_sessions(self) -> PortalSessions:
        """
        The portal's sessions and login throttling, on this messenger's
        database and clock.
        """
        return PortalSessions(self.accounts.store, self._clock, self.login)

    async def settings_for(self, address: str) -> Mapping[str, Any]:
        """
        The effective settings of C{address} (C{""}: the global ones).
        """
        found: Mapping[str, Any] = (await self._settings.by_address([address]))[address]
        return found

    async def search(self, address: str, query: str = "", *, offset: int = 0,
                     limit: int = 50) -> tuple[list[Summary], int]:
        """
        A page of the inbox, filtered by sender or subject, and the number
        of messages that match.
        """
        return await self.mailboxes.find(address, query.strip()[:200], offset=offset,
                                         limit=limit, now=self._clock.seconds())

    def plan_reply(self, address: str, original: bytes, *, reply_all: bool
                   ) -> replies.ReplyPlan:
        """
        Who a reply to C{original} would go to, and who not and why.
        """
        return replies.plan_recipients(original, address, reply_all=reply_all, extra=(),
                                       authorized=self._mta().authorized)

    async def change_password(self, address: str, current: str, new: str, confirm: str
                              ) -> str | None:
        """
        @return: why the password was not changed, or C{None}.
        """
        if new != confirm:
            return "The two passwords are not the same."
        problem = await self.password_problem(address, new)
        if problem:
            return problem
        if not await self.accounts.change_password(address, current, new):
            return "The current password is not right."
        log.info("Webmail password changed by {address}", address=address)
        return None

    async def compose(self, address: str, to: Sequence[str], subject: str, text: str, *,
                      attachments: Sequence[replies.Attachment] = (),
                      copy_to_self: bool = False) -> ReplyResult:
        """
        Send a new message by C{address} to the authorized recipients among
        C{to} (when the *compose enabled* setting allows; the caller checks).
        """
        size = len(text.encode()) + sum(len(a.data) for a in attachments)
        if size > replies.MAX_REPLY_SIZE:
            return ReplyResult(problem=f"The message is too large ({size // 1024 // 1024} MB; "
                                       f"at most {replies.MAX_REPLY_SIZE // 1024 // 1024} MB).")
        config = self._mta()
        # No original to answer: only the addresses given.
        plan = replies.plan_recipients(b"", address, reply_all=False, extra=to,
                                       authorized=config.authorized)
        result = ReplyResult(refused=plan.refused)
        if not plan.recipients:
            result.problem = "The message was not sent: no authorized recipient."
            return result
        message = compose_message(user=address, recipients=plan.recipients, subject=subject,
                                  text=text, attachments=attachments,
                                  now=self._clock.seconds(), my_hostname=config.my_hostname)
        return await self._send(address, message, result, plan.recipients, copy_to_self,
                                "message")
