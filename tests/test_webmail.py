"""
The webmail messenger's back end, in memory with the clock injected: links
at their exact expiry, reused, forged, for another address or purpose, and
after the secret changed; passwords; sealed mailboxes, stored once, quota;
relay messages from the gateway into mailboxes with invitations, and every
fault to the postmaster with the relay message attached.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import os
from typing import Any

import dkim
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from cipherd.core.envelope import Envelope
from cipherd.mpa.composite import Composite
from cipherd.mpa.relay import NOT_SIGNED, VALIDITY, WebmailRelay
from cipherd.mpa.tunnel import TunnelFormatError, TunnelMetadata, read_tunnel
from cipherd.pki.certs import thumbprint
from cipherd.settings import GLOBAL, REGISTRY, InvalidValue, Level, scope_for
from cipherd.smtp.config import apply_changes
from cipherd.store.settings import SettingsRepository
from cipherd.testing import SynchronousRunner, cheap_hasher, migrated_store, result_of
from cipherd.webmail import notify
from cipherd.webmail.accounts import (
    ACTIVE,
    RESET,
    SIGNUP,
    Accounts,
    LinkRefused,
    make_link_token,
    password_problem,
)
from cipherd.webmail.cleanup import MAILBOX_CLEANUP_EVERY, Cleanup
from cipherd.webmail.mailbox import Mailboxes, SealedMessageError, message_key, seal, unseal
from cipherd.webmail.messenger import RESET_INTERVAL, Messenger
from cipherd.webmail.notify import Notices, Notifier, build, dkim_sign, render
from cipherd.webmail.reply import Attachment, compose_reply, plan_recipients
from tests.test_gateway import QUEUE_ID, RECEIVED, SENT, WEBMAIL_RECIPIENT, World, pki  # noqa: F401

SECRET = "a-server-secret-of-some-length"
ADDRESS = "dave@partner.example"


@pytest.fixture
def accounts(clock: Clock) -> Accounts:
    return Accounts(migrated_store(), clock, SynchronousRunner(), cheap_hasher())


def refused(accounts: Accounts, token: str, purpose: str = SIGNUP) -> str:
    with pytest.raises(LinkRefused) as e:
        result_of(accounts.check_link(SECRET, token, purpose))
    return str(e.value)


def test_a_link_is_valid_until_its_expiry_to_the_second(clock: Clock, accounts: Accounts
                                                        ) -> None:
    account, new = result_of(accounts.invite(ADDRESS))
    assert new and account.state == "invited"
    token = accounts.link(SECRET, SIGNUP, account, 10)
    clock.advance(10 * 60 - 1)
    assert result_of(accounts.check_link(SECRET, token, SIGNUP)).address == ADDRESS
    clock.advance(2)
    assert "expired" in refused(accounts, token)


def test_a_link_works_once(accounts: Accounts) -> None:
    account, _ = result_of(accounts.invite(ADDRESS))
    token = accounts.link(SECRET, SIGNUP, account, 10)
    checked = result_of(accounts.check_link(SECRET, token, SIGNUP))
    assert result_of(accounts.set_password(checked, "correct horse battery staple"))
    assert "used already" in refused(accounts, token)
    # The account's page state changed too: active, with a password.
    now = result_of(accounts.get(ADDRESS))
    assert now is not None and (now.state, now.password_set) == (ACTIVE, True)
    # A second use racing the first changes nothing.
    assert not result_of(accounts.set_password(checked, "another long passphrase"))
    assert result_of(accounts.verify_password(ADDRESS, "correct horse battery staple"))


def test_forged_damaged_and_foreign_links_are_refused(accounts: Accounts) -> None:
    account, _ = result_of(accounts.invite(ADDRESS))
    other, _ = result_of(accounts.invite("erin@partner.example"))
    token = accounts.link(SECRET, SIGNUP, account, 10)
    payload, mac = token.split(".")
    # Another address in the payload, the MAC kept: forged.
    forged_payload = make_link_token(SECRET, SIGNUP, "erin@partner.example", account.link_nonce,
                                     10**10).split(".")[0]
    assert "not valid" in refused(accounts, f"{forged_payload}.{mac}")
    assert "not valid" in refused(accounts, f"{payload}.{mac[:-2]}AA")
    assert "damaged" in refused(accounts, "no-dot-at-all-%%%")
    # Made with another secret (the secret changed since).
    assert "not valid" in refused(accounts, accounts.link("another secret here!", SIGNUP,
                                                          account, 10))
    # Authentic, but for the other account's nonce: not this account's.
    assert "used already" in refused(accounts, make_link_token(
        SECRET, SIGNUP, ADDRESS, other.link_nonce, 10**10))
    # A reset link is not a sign-up link.
    assert "not valid" in refused(accounts, accounts.link(SECRET, RESET, account, 10))
    # Unknown addresses read like used links: nothing tells them apart.
    assert "used already" in refused(accounts, make_link_token(
        SECRET, SIGNUP, "nobody@partner.example", "0" * 32, 10**10))


def test_a_disabled_account_cannot_use_its_link(accounts: Accounts) -> None:
    account, _ = result_of(accounts.invite(ADDRESS))
    token = accounts.link(SECRET, SIGNUP, account, 10)
    assert result_of(accounts.set_state(ADDRESS, "disabled"))
    assert "disabled" in refused(accounts, token)


def test_wrong_passwords_and_unknown_addresses(accounts: Accounts) -> None:
    account, _ = result_of(accounts.invite(ADDRESS))
    assert result_of(accounts.verify_password(ADDRESS, "anything")) is None  # no password yet
    assert result_of(accounts.set_password(account, "correct horse battery staple"))
    assert result_of(accounts.verify_password(ADDRESS, "wrong")) is None
    assert result_of(accounts.verify_password("nobody@x.example", "wrong")) is None


@pytest.mark.parametrize("password, ok", [
    ("password1", False), ("dave2026", False), ("partner.example", False),
    ("Password123!", False), ("qwertyuiop", False), ("correct horse battery staple", True),
    ("vX7#qL9!mZ2$", True),
])
def test_min_password_strength_in_bits(password: str, ok: bool) -> None:
    problem = password_problem(password, 30, ADDRESS)
    assert (problem is None) == ok, problem
    if problem:
        assert "at least 30" in problem


def test_cleanup_of_idle_accounts(clock: Clock, accounts: Accounts) -> None:
    result_of(accounts.invite("old@partner.example"))
    clock.advance(86400)
    result_of(accounts.invite("new@partner.example"))
    assert result_of(accounts.delete_inactive(clock.seconds() - 3600)) == {
        "old@partner.example": 0}
    assert result_of(accounts.get("new@partner.example")) is not None


# Mailboxes --------------------------------------------------------------------


def test_messages_are_sealed_bound_to_their_mailbox_and_stored_once(clock: Clock) -> None:
    store = migrated_store()
    key = message_key(os.urandom(32))
    mailboxes = Mailboxes(store, key)
    assert result_of(mailboxes.deliver(ADDRESS, "t1", 100.0, SENT))
    assert not result_of(mailboxes.deliver(ADDRESS, "t1", 200.0, SENT))  # once
    assert result_of(mailboxes.deliver("erin@partner.example", "t1", 100.0, SENT))
    (summary,) = result_of(mailboxes.listing(ADDRESS))
    assert (summary.sender, summary.subject, summary.size, summary.read) == (
        "alice@example.com", "Quarterly figures [encrypt]", len(SENT), False)
    assert result_of(mailboxes.held(ADDRESS, summary.id, now=0)).content == SENT
    assert result_of(mailboxes.held("erin@partner.example", summary.id, now=0)) is None
    with pytest.raises(SealedMessageError):
        unseal(key, "erin@partner.example", "t1", seal(key, ADDRESS, "t1", SENT))
    assert result_of(mailboxes.usage(ADDRESS)) == len(SENT)
    result_of(mailboxes.deliver(ADDRESS, "t2", 300.0, SENT))
    assert result_of(mailboxes.delete_older_than(250.0)) == {ADDRESS: 1,
                                                             "erin@partner.example": 1}
    assert [m.tunnel_id for m in result_of(mailboxes.listing(ADDRESS))] == ["t2"]


# Relay messages -------------------------------------------------------------------


class Both:
    """
    One appliance in both roles: the gateway makes the tunnel message, the
    relay takes it in.
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self.mailboxes = Mailboxes(world.certificates._store,  # type: ignore[attr-defined]
                                   message_key(os.urandom(32)))
        self.accounts = Accounts(world.certificates._store,  # type: ignore[attr-defined]
                                 world.clock, SynchronousRunner(), cheap_hasher())
        self.relay = WebmailRelay(world.engine, self.mailboxes, self.accounts,
                                  Notices(world.clock), world.settings,
                                  lambda: world.config, world.clock, world.certificates.ctl)
        world.processor = Composite(world.settings, self.relay, world.gateway)
        world.set(GLOBAL, encrypt_mode="mandatory", webmail_enabled=True,
                  relay_recipient=WEBMAIL_RECIPIENT, postmaster="postmaster@webmail.local",
                  portal_base_url="https://webmail.example", server_secret=SECRET,
                  notification_sender="notify@webmail.example")

    def tunnel(self, *recipients: str) -> bytes:
        return self.tunnel_with(SENT, *recipients)

    def tunnel_with(self, content: bytes, *recipients: str) -> bytes:
        self.world.process(*recipients, content=RECEIVED + content)
        (_, _, sealed), = [s for s in self.world.submitted if s[1] == [WEBMAIL_RECIPIENT]][-1:]
        return sealed

    def opened(self, sealed: bytes) -> tuple[TunnelMetadata, bytes]:
        """
        What a tunnel message carries, as the webmail relay reads it.
        """
        opened = result_of(self.world.engine.open(sealed, decrypt_for=[WEBMAIL_RECIPIENT]))
        return read_tunnel(opened.message)

    def relay_in(self, sealed: bytes) -> Any:
        parts = self.world.process(WEBMAIL_RECIPIENT, content=sealed,
                                   sender="webmail-sender@example.com")
        return parts[(WEBMAIL_RECIPIENT,)].outcome

    def sent_to(self, address: str) -> list[bytes]:
        return [content for _, to, content in self.world.submitted if to == [address]]


@pytest.fixture
def messenger(pki: dict[str, Any]) -> Both:  # noqa: F811
    return Both(World(pki))


def test_a_relay_message_is_stored_and_the_recipient_invited(
        messenger: Both, log_lines: list[str]) -> None:
    messenger.world.tunnel_certificates()
    sealed = messenger.tunnel("dave@partner.example", "erin@partner.example")
    outcome = messenger.relay_in(sealed)
    assert outcome.status == "sent" and "stored for dave@partner.example, erin" in outcome.reason
    for address in ("dave@partner.example", "erin@partner.example"):
        (summary,) = result_of(messenger.mailboxes.listing(address))
        assert result_of(messenger.mailboxes.held(address, summary.id, now=0)).content == SENT
        (invitation,) = messenger.sent_to(address)
        parsed = email.message_from_bytes(invitation)
        assert parsed["Subject"] == "Secure message from alice@example.com"
        assert parsed["From"] == "notify@webmail.example"
        text = parsed.get_payload(decode=True).decode()
        link = next(word for word in text.split() if word.startswith("https://"))
        assert link.startswith("https://webmail.example/signup?token=")
        token = link.split("token=")[1]
        account = result_of(messenger.accounts.check_link(SECRET, token, SIGNUP))
        assert account.address == address
    # The same tunnel again (a gateway that crashed): stored once, nobody told twice.
    again = messenger.relay_in(sealed)
    assert "handled before" in again.reason
    assert len(messenger.sent_to("dave@partner.example")) == 1


def test_an_active_account_gets_a_new_message_notice(messenger: Both) -> None:
    messenger.world.tunnel_certificates()
    account, _ = result_of(messenger.accounts.invite("dave@partner.example"))
    assert result_of(messenger.accounts.set_password(account, "correct horse battery staple"))
    messenger.relay_in(messenger.tunnel("dave@partner.example"))
    (notice,) = messenger.sent_to("dave@partner.example")
    parsed = email.message_from_bytes(notice)
    assert parsed["Subject"] == "New secure message from alice@example.com"
    assert "https://webmail.example/login" in parsed.get_payload(decode=True).decode()


def test_quota_refuses_and_tells_the_sender(messenger: Both) -> None:
    messenger.world.tunnel_certificates()
    messenger.world.set(scope_for(Level.USER, "dave@partner.example"),
                        mailbox_size_limit=len(SENT) + 10)
    messenger.relay_in(messenger.tunnel("dave@partner.example"))
    messenger.world.clock.advance(1)
    outcome = messenger.relay_in(_second_tunnel(messenger))
    assert "mailbox full for dave@partner.example" in outcome.reason
    (notice,) = messenger.sent_to("alice@example.com")
    assert b"mailbox is full" in notice and b"dave@partner.example" in notice
    assert len(result_of(messenger.mailboxes.listing("dave@partner.example"))) == 1


def _second_tunnel(messenger: Both) -> bytes:
    # Another queued message (another queue id): another tunnel id.
    world = messenger.world
    envelope = Envelope("5B2C3D4E5F60", "alice@example.com", ("dave@partner.example",), 0)

    async def processed() -> Any:
        return await world.gateway.process(envelope, RECEIVED.replace(
            QUEUE_ID.encode(), b"5B2C3D4E5F60") + SENT)

    (tunnel,) = [m.content for m in result_of(processed()).made
                 if m.recipients == (WEBMAIL_RECIPIENT,)]
    return tunnel


@pytest.mark.parametrize("fault, line, reason", [
    ("no relay key", "S/MIME decryption key not found",
     "The web relay message could not be decrypted: A suitable decryption key could not be "
     "found."),
    ("untrusted signer", "S/MIME signature was not valid; Signer IDs: "
                         "EMAILADDRESS=webmail-sender@example.com, CN=Webmail tunnel "
                         "certificate", NOT_SIGNED),
    ("too old", "The relay message is too old", "outside the 6 days"),
])
def test_faults_go_to_the_postmaster_with_the_relay_message(
        messenger: Both, log_lines: list[str], fault: str, line: str,
        reason: str) -> None:
    world = messenger.world
    world.tunnel_certificates()
    sealed = messenger.tunnel("dave@partner.example")
    if fault == "no relay key":
        for cert in result_of(world.certificates.find_by_email(WEBMAIL_RECIPIENT)):
            result_of(world.certificates.delete(thumbprint(cert)))
    elif fault == "untrusted signer":  # not whitelisted on the webmail side
        for cert in result_of(world.certificates.find_by_email("webmail-sender@example.com")):
            result_of(world.certificates.remove_ctl(thumbprint(cert)))
    else:
        world.clock.advance(VALIDITY + 1)
    outcome = messenger.relay_in(sealed)
    assert outcome.status == "sent" and "forwarded to the postmaster" in outcome.reason
    assert any(line in entry for entry in log_lines), "\n".join(log_lines)
    (forwarded,) = messenger.sent_to("postmaster@webmail.local")
    text = forwarded.decode(errors="replace").replace("=\r\n", "")  # quoted-printable
    assert "The webmail relay message could not be handled. The message is attached to this " \
           "message." in text
    assert "Additional information:" in text and reason in text
    assert sealed in forwarded  # the relay message itself, attached as it came
    assert result_of(messenger.mailboxes.listing("dave@partner.example")) == []


def test_without_a_postmaster_the_relay_message_stays_queued(messenger: Both) -> None:
    world = messenger.world
    world.tunnel_certificates()
    world.set(GLOBAL, postmaster=None)
    sealed = messenger.tunnel("dave@partner.example")
    world.clock.advance(VALIDITY + 1)
    outcome = messenger.relay_in(sealed)
    assert outcome.status == "deferred" and "no postmaster is set" in outcome.reason


def test_not_a_relay_email_is_logged_as_the_guide_says(messenger: Both,
                                                       log_lines: list[str]) -> None:
    world = messenger.world
    world.tunnel_certificates()
    sealed = messenger.tunnel("dave@partner.example")
    world.set(GLOBAL, relay_recipient="other@webmail.local")
    # Guide §2.3.1: webmail.local is a relay domain of the webmail appliance.
    world.config, errors = apply_changes(world.config, {
        "relay_domains": ["example.com", "webmail.local"]})
    assert not errors
    parts = world.process(WEBMAIL_RECIPIENT, content=sealed, sender="webmail-sender@example.com")
    # It waits in the queue, unopened, as the guide says.
    outcome = parts[(WEBMAIL_RECIPIENT,)].outcome
    assert outcome is not None and outcome.status == "deferred"
    assert outcome.reason.startswith("Email is not a relay email")
    assert any(entry.startswith("Email is not a relay email;") and
               entry.endswith("Recipients: [webmail@webmail.local]") for entry in log_lines)


# Cleanup ---------------------------------------------------------------------------

DAY = 86400


class Site:
    def __init__(self) -> None:
        self.clock = Clock()
        # 2026-11-28 00:00:00 UTC.
        self.clock.advance(1_795_824_000)
        self.store = migrated_store()
        self.settings = SettingsRepository(self.store, self.clock)
        self.mailboxes = Mailboxes(self.store, message_key(os.urandom(32)))
        self.accounts = Accounts(self.store, self.clock, SynchronousRunner(), cheap_hasher())

    def cleanup(self) -> Cleanup:
        return Cleanup(self.store, self.settings, self.mailboxes, self.accounts,
                       self.clock)


def test_mailbox_cleanup_removes_exactly_the_old_messages(log_lines: list[str]) -> None:
    site = Site()
    result_of(site.settings.update(GLOBAL, {"auto_mailbox_cleanup_enabled": True,
                                            "auto_mailbox_cleanup_interval": "1d"}))
    now = site.clock.seconds()
    result_of(site.mailboxes.deliver(ADDRESS, "old", now - DAY - 1, SENT))
    result_of(site.mailboxes.deliver(ADDRESS, "edge", now - DAY + 1, SENT))
    result_of(site.mailboxes.deliver("erin@partner.example", "new", now, SENT))
    result_of(site.cleanup().tick())
    assert [m.tunnel_id for m in result_of(site.mailboxes.listing(ADDRESS))] == ["edge"]
    assert len(result_of(site.mailboxes.listing("erin@partner.example"))) == 1
    assert ("Auto mailbox cleanup: removed 1 message(s) older than 1d from the mailbox of "
            f"{ADDRESS}") in log_lines
    # Not again before ten minutes, then the edge message is old enough.
    site.clock.advance(2)
    result_of(site.cleanup().tick())
    assert len(result_of(site.mailboxes.listing(ADDRESS))) == 1
    site.clock.advance(MAILBOX_CLEANUP_EVERY)
    result_of(site.cleanup().tick())
    assert result_of(site.mailboxes.listing(ADDRESS)) == []


def test_account_cleanup_runs_on_its_schedule_on_one_node(log_lines: list[str]) -> None:
    site = Site()  # day 0, 00:00 UTC
    result_of(site.settings.update(GLOBAL, {"auto_account_cleanup_enabled": True,
                                            "auto_account_cleanup_last_activity": 90,
                                            "auto_account_cleanup_schedule": "0 0 2 * * ?"}))
    result_of(site.accounts.invite("idle@partner.example"))
    result_of(site.mailboxes.deliver("idle@partner.example", "t1", site.clock.seconds(), SENT))
    first, second = site.cleanup(), site.cleanup()  # two nodes
    result_of(first.tick())  # the first look starts the schedule

    def at(day: int, seconds: int) -> None:
        site.clock.advance(1_795_824_000 + day * DAY + seconds - site.clock.seconds())

    at(80, 0)
    result_of(site.accounts.invite("busy@partner.example"))
    at(89, 2 * 3600)  # 02:00 on day 89: runs; idle for 89 days and 2 hours
    result_of(first.tick())
    assert result_of(site.accounts.get("idle@partner.example")) is not None
    at(90, 2 * 3600 - 1)  # not due yet
    result_of(first.tick())
    assert result_of(site.accounts.get("idle@partner.example")) is not None
    at(90, 2 * 3600)
    result_of(second.tick())
    result_of(first.tick())  # the same run: taken by the other node
    assert result_of(site.accounts.get("idle@partner.example")) is None
    assert result_of(site.mailboxes.listing("idle@partner.example")) == []
    assert result_of(site.accounts.get("busy@partner.example")) is not None
    removed = [line for line in log_lines if line.startswith("Auto account cleanup: removed")]
    assert removed == ["Auto account cleanup: removed the account idle@partner.example, idle "
                       "for more than 90 days, and its 1 message(s)"]
    runs = [line for line in log_lines if line.startswith("Auto account cleanup:")]
    assert len(runs) == 2  # day 89 (nothing) and day 90, each on one node


# The portal's back end -----------------------------------------------------------


def back_end(messenger: Both, authorized: tuple[str, ...] = ("example.com",)) -> Messenger:
    world = messenger.world
    world.config, errors = apply_changes(world.config, {
        "authorized_recipients": list(authorized)})
    assert not errors
    return Messenger(messenger.accounts, messenger.mailboxes,
                     Notifier(world.submission, world.clock), world.settings,
                     lambda: world.config, world.submission, world.clock)


def stored(messenger: Both, *recipients: str, read_receipt: bool = False) -> int:
    messenger.world.tunnel_certificates()
    if read_receipt:
        messenger.world.set(GLOBAL, webmail_read_receipt=True)
    messenger.relay_in(messenger.tunnel(*recipients))
    (summary,) = result_of(messenger.mailboxes.listing(recipients[0]))
    return summary.id


def test_sign_up_through_the_link_with_a_strong_password(messenger: Both) -> None:
    stored(messenger, ADDRESS)
    webmail = back_end(messenger)
    (invitation,) = messenger.sent_to(ADDRESS)
    token = email.message_from_bytes(invitation).get_payload(decode=True).decode().split(
        "token=")[1].split()[0]
    assert result_of(webmail.set_password(token, SIGNUP, "abc", "abd"))[1] == \
        "The two passwords are not the same."
    account, problem = result_of(webmail.set_password(token, SIGNUP, "password1", "password1"))
    assert account is None and problem is not None and "too easy to guess" in problem
    account, problem = result_of(webmail.set_password(
        token, SIGNUP, "correct horse battery staple", "correct horse battery staple"))
    assert problem is None and account is not None
    with pytest.raises(LinkRefused):
        result_of(webmail.set_password(token, SIGNUP, "another good passphrase here",
                                       "another good passphrase here"))
    assert result_of(webmail.login(ADDRESS.upper(), "correct horse battery staple"))


def test_reading_sends_the_read_receipt_once(messenger: Both) -> None:
    message_id = stored(messenger, ADDRESS, read_receipt=True)
    webmail = back_end(messenger)
    assert result_of(webmail.read(ADDRESS, message_id)).content == SENT
    assert result_of(webmail.read(ADDRESS, message_id)).content == SENT
    (receipt,) = messenger.sent_to("alice@example.com")
    parsed = email.message_from_bytes(receipt)
    assert parsed["Subject"] == "Read: Quarterly figures [encrypt]"
    assert result_of(webmail.read("erin@partner.example", message_id)) is None


def test_a_reply_goes_to_authorized_recipients_only_and_is_threaded(messenger: Both) -> None:
    message_id = stored(messenger, ADDRESS)
    webmail = back_end(messenger)
    attachment = Attachment("figures.csv", "text/csv", b"q,value\r\n3,42\r\n")
    result = result_of(webmail.reply(ADDRESS, message_id, "Thanks, see attached.",
                                     to=["boss@elsewhere.test", "bad address"],
                                     attachments=[attachment], copy_to_self=True))
    assert result.sent_to == ["alice@example.com"] and result.problem is None
    assert set(result.refused) == {"boss@elsewhere.test", "bad address"}
    assert "not an authorized recipient" in result.refused["boss@elsewhere.test"]
    ((sender, to, content),) = [s for s in messenger.world.submitted
                                if s[0] == ADDRESS]
    # The copy goes to the user's webmail mailbox, not out by mail.
    assert (sender, to) == (ADDRESS, ["alice@example.com"])
    copy = [m for m in result_of(messenger.mailboxes.listing(ADDRESS))
            if m.tunnel_id.startswith("sent-")]
    assert len(copy) == 1 and copy[0].sender == ADDRESS
    parsed = email.message_from_bytes(content, policy=email.policy.default)
    assert parsed["Subject"] == "Re: Quarterly figures [encrypt]"
    assert parsed["From"] == ADDRESS and parsed["To"] == "alice@example.com"
    body = parsed.get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n")
    assert body.startswith("Thanks, see attached.\n\nThe original message:\n")
    assert "> .dot" in body and "> Grüße" in body
    (part,) = list(parsed.iter_attachments())
    assert (part.get_filename(), part.get_content()) == ("figures.csv",
                                                         "q,value\r\n3,42\r\n")


def test_a_reply_with_no_authorized_recipient_is_not_sent(messenger: Both) -> None:
    message_id = stored(messenger, ADDRESS)
    webmail = back_end(messenger, authorized=())
    result = result_of(webmail.reply(ADDRESS, message_id, "hello"))
    assert result.queue_id is None and result.problem == ("The reply was not sent: no "
                                                          "authorized recipient.")


def test_a_password_reset_link_for_active_accounts_only(messenger: Both) -> None:
    webmail = back_end(messenger)
    result_of(webmail.request_password_reset(ADDRESS, "https://webmail.example"))
    assert messenger.sent_to(ADDRESS) == []  # no account: nothing, and no way to tell
    account, _ = result_of(messenger.accounts.invite(ADDRESS))
    assert result_of(messenger.accounts.set_password(account, "correct horse battery staple"))
    # Asked again within the interval: nothing (no flood of reset mail).
    result_of(webmail.request_password_reset(ADDRESS, "https://webmail.example"))
    assert messenger.sent_to(ADDRESS) == []
    messenger.world.clock.advance(RESET_INTERVAL)
    result_of(webmail.request_password_reset(ADDRESS, "https://webmail.example"))
    (mail,) = messenger.sent_to(ADDRESS)
    text = email.message_from_bytes(mail).get_payload(decode=True).decode()
    token = text.split("https://webmail.example/reset?token=")[1].split()[0]
    new = "a completely different passphrase"
    assert result_of(webmail.set_password(token, RESET, new, new))[1] is None
    assert result_of(webmail.login(ADDRESS, new))
    messenger.world.set(GLOBAL, password_reset_enabled=False)
    messenger.world.clock.advance(RESET_INTERVAL)
    result_of(webmail.request_password_reset(ADDRESS, "https://webmail.example"))
    assert len(messenger.sent_to(ADDRESS)) == 1


def test_threading_headers_and_the_quoted_html_original() -> None:
    original = (b"From: Alice <alice@example.com>\r\nTo: dave@partner.example, "
                b"carol@example.com\r\nCc: x@elsewhere.test\r\nSubject: Re: plans\r\n"
                b"Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <m2@example.com>\r\n"
                b"References: <m1@example.com>\r\nMIME-Version: 1.0\r\n"
                b"Content-Type: text/html; charset=utf-8\r\n\r\n"
                b"<p>Hi <b>Dave</b></p><script>alert(1)</script>\r\n")
    plan = plan_recipients(original, ADDRESS, reply_all=True, extra=(),
                           authorized=lambda a: a.endswith("@example.com"))
    assert plan.recipients == ["alice@example.com", "carol@example.com"]
    assert list(plan.refused) == ["x@elsewhere.test"]
    reply = compose_reply(original, user=ADDRESS, recipients=plan.recipients, text="Fine.",
                          now=1_800_000_000, my_hostname="webmail.example")
    parsed = email.message_from_bytes(reply, policy=email.policy.default)
    assert parsed["Subject"] == "Re: plans"  # not "Re: Re:"
    assert parsed["In-Reply-To"] == "<m2@example.com>"
    assert parsed["References"] == "<m1@example.com> <m2@example.com>"
    body = parsed.get_body().get_content().replace("\r\n", "\n")
    assert "On Sat, 28 Nov 2026 10:00:00 +0000, alice@example.com wrote:\n> Hi Dave" in body
    assert "alert" not in body and "<b>" not in body


# Notifications ---------------------------------------------------------------------


def test_no_header_can_be_injected_through_a_name_or_subject() -> None:
    notice = render("new_message", {"sender": "Eve\r\nBcc: victim@example.net",
                                    "subject": "x\nX-Evil: 1", "link": "https://w.example"})
    message = build(sender="notify@webmail.example", recipient="dave@partner.example\r\nCc: a@b",
                    notice=notice, my_hostname="webmail.example", now=1_800_000_000)
    head = message[:message.index(b"\r\n\r\n")]
    names = [line.split(b":")[0].lower() for line in head.split(b"\r\n")
             if line and line[:1] not in b" \t"]
    assert b"bcc" not in names and b"x-evil" not in names and b"cc" not in names
    assert b"Subject: New secure message from Eve Bcc: victim@example.net" in head


def test_notifications_are_dkim_signed_when_configured() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    assert REGISTRY["dkim_private_key"].validate(pem) == pem.strip() + "\n"
    other = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    with pytest.raises(InvalidValue, match="must be an RSA key"):
        REGISTRY["dkim_private_key"].validate(other)
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    notice = render("new_message", {"sender": "alice@example.com", "subject": "Hi",
                                    "link": "https://w.example/login"})
    message = build(sender="notify@webmail.example", recipient=ADDRESS, notice=notice,
                    my_hostname="webmail.example", now=1_800_000_000)
    signed = dkim_sign(message, domain="webmail.example", selector="s2026", key_pem=pem)
    assert signed.startswith(b"DKIM-Signature: ") and signed.endswith(message)

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"s2026._domainkey.webmail.example."
        return record

    assert dkim.verify(signed, dnsfunc=dns)
    assert not dkim.verify(signed.replace(b"Hi", b"Ho"), dnsfunc=dns)


def test_links_honour_initial_login_allowed_and_password_reset_enabled(
        messenger: Both) -> None:
    webmail = back_end(messenger)
    account, _ = result_of(messenger.accounts.invite(ADDRESS))
    signup = messenger.accounts.link(SECRET, SIGNUP, account, 10)
    reset = messenger.accounts.link(SECRET, RESET, account, 10)
    messenger.world.set(GLOBAL, initial_login_allowed=False, password_reset_enabled=False)
    for token, purpose, words in ((signup, SIGNUP, "Signing up is not possible"),
                                  (reset, RESET, "Password reset is not possible")):
        with pytest.raises(LinkRefused, match=words):
            result_of(webmail.check_link(token, purpose))


# What the review found --------------------------------------------------------------


def test_a_signer_that_merely_chains_to_a_root_is_no_gateway(messenger: Both,
                                                             log_lines: list[str]) -> None:
    world = messenger.world
    world.tunnel_certificates(sender=False)
    # alice's certificate chains to the trusted root, and she has a key:
    # anyone with such a certificate could otherwise fill any mailbox.
    world.set(GLOBAL, webmail_sender="alice@example.com")
    outcome = messenger.relay_in(messenger.tunnel(ADDRESS))
    assert "forwarded to the postmaster" in outcome.reason and "not a gateway" in outcome.reason
    assert result_of(messenger.mailboxes.listing(ADDRESS)) == []
    # Listed as a trusted gateway sender, it is one.
    world.set(GLOBAL, trusted_gateway_senders="alice@example.com")
    world.clock.advance(1)
    accepted = messenger.relay_in(_second_tunnel(messenger))
    assert accepted.reason.startswith("webmail relay message") and "stored for" in \
        accepted.reason


def test_a_relay_message_processed_again_after_a_crash_tells_whoever_was_not_told(
        messenger: Both) -> None:
    world = messenger.world
    world.tunnel_certificates()
    sealed = messenger.tunnel(ADDRESS)
    # Processed, and the queue crashed before it wrote the results: the
    # invitation made is lost, the mailbox has the message.
    world.process(WEBMAIL_RECIPIENT, content=sealed, sender="webmail-sender@example.com",
                  written=False)
    assert len(result_of(messenger.mailboxes.listing(ADDRESS))) == 1
    assert messenger.sent_to(ADDRESS) == []
    # Processed again after the restart: handled (the tunnel id was
    # recorded with the mailbox), stored once, told now.
    assert "handled before" in messenger.relay_in(sealed).reason
    assert len(result_of(messenger.mailboxes.listing(ADDRESS))) == 1
    (invitation,) = messenger.sent_to(ADDRESS)
    assert b"Secure message from alice@example.com" in invitation
    # Once written, the tunnel is handled: a copy again is not told again.
    assert "handled before" in messenger.relay_in(sealed).reason
    assert len(messenger.sent_to(ADDRESS)) == 1


def test_tunnel_metadata_that_no_gateway_writes_is_refused() -> None:
    good = {"version": 1, "id": "1d892b95-4f88-9d72-7ea0-45f2d954a462", "created": 1.8e9,
            "sender": "alice@example.com", "recipients": ["dave@partner.example"]}
    assert TunnelMetadata.from_json(json.dumps(good).encode()).recipients == (
        "dave@partner.example",)
    for change in ({"created": float("nan")}, {"created": 1e300}, {"recipients": []},
                   {"recipients": ["not an address"]}, {"id": "x" * 65},
                   {"sender": "bad sender"}, {"recipients": ["a@b.example"] * 1001}):
        with pytest.raises(TunnelFormatError):
            TunnelMetadata.from_json(json.dumps({**good, **change}).encode())


def test_a_long_passphrase_is_judged_not_refused_with_an_error() -> None:
    assert password_problem("correct horse battery staple " * 4, 30, ADDRESS) is None


def test_mail_passing_through_is_not_held_for_looking_like_a_tunnel(messenger: Both) -> None:
    world = messenger.world
    world.tunnel_certificates()
    sealed = messenger.tunnel(ADDRESS)
    world.set(GLOBAL, encrypt_mode="no_encryption")
    parts = world.process("x@elsewhere.test", content=sealed, sender="someone@example.com")
    assert parts[("x@elsewhere.test",)].outcome is None  # delivered as it is


@settings(max_examples=300, deadline=None)
@given(sender=st.from_regex(r"[A-Za-z0-9.+_=?-]{1,20}@[a-z0-9.-]{1,20}", fullmatch=True),
       subject=st.one_of(st.text(st.characters(min_codepoint=32, max_codepoint=126),
                                 max_size=90),
                         st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF),
                                 max_size=90)),
       text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=400))
def test_a_plain_notice_is_written_as_the_email_package_writes_it(
        sender: str, subject: str, text: str) -> None:
    """
    The direct path of C{notify.build} gives byte for byte what the email
    package gives, whenever it is taken (and it is not taken when a value
    would be folded or encoded).
    """
    fields = [("From", sender), ("To", "bob@partner.example"),
              ("Subject", notify.one_line(subject)),
              ("Date", "Fri, 15 Jan 2027 08:00:00 +0000"),
              ("Message-ID", "<1.2.3@webmail.local>"), ("Auto-Submitted", "auto-generated")]
    plain = notify._plain_message(fields, text)
    event("direct" if plain is not None else "email package")
    if plain is not None:
        assert plain == notify._package_message(fields, text)


def test_common_notices_take_the_direct_path() -> None:
    fields = [("From", "postmaster@webmail.local"), ("To", "bob@partner.example"),
              ("Subject", "You have a new secure message from alice@example.com"),
              ("Date", "Fri, 15 Jan 2027 08:00:00 +0000"),
              ("Message-ID", "<1.2.3@webmail.local>")]
    text = "Hello,\n\nAlice sent you a secure message: Quarterly figures ünïcode = 100%.\n"
    assert notify._plain_message(fields, text) == notify._package_message(fields, text)
    # Not plain: an encoded subject, an encoded word in an address.
    assert notify._plain_message([*fields[:2], ("Subject", "Grüße")], text) is None
    assert notify._plain_message([("To", "=?utf-8?q?hi?=@x.example")], text) is None
