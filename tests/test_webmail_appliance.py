"""
Two appliances on 127.0.0.1, configured through the API as the guide
describes — a gateway (section 3) and a webmail messenger (sections 2 and
4) — and a capturing sink as the internet:

    swaks → gateway (must encrypt; no certificate: webmail tunnel)
          → webmail messenger (relay message: decrypted, signer checked,
            stored) → sign-up invitation at the sink → its link sets a
            password on the portal → a second message gives a new-message
            notice instead → a reply through the back end reaches the
            original sender with its threading headers.

And the webmail side's troubleshooting symptoms, each made by the
misconfiguration the guide names, with its MPA log line and the message
to the postmaster carrying the relay message.
"""

from __future__ import annotations

import base64
import email
import email.policy
import html
import http.cookiejar
import re
import smtplib
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from cipherd.core.envelope import Envelope
from cipherd.datadir import DataDir, read_kek
from cipherd.smtp.config import MTAConfig
from cipherd.smtp.config import load as load_mta_config
from cipherd.smtp.queue import ISubmission
from cipherd.smtp.spool import QueuedMessage
from cipherd.store.settings import SettingsRepository
from cipherd.testing import SynchronousRunner, cheap_hasher, migrated_store, result_of
from cipherd.webmail.accounts import Accounts
from cipherd.webmail.mailbox import Mailboxes, message_key
from cipherd.webmail.messenger import Messenger
from cipherd.webmail.notify import Notifier
from tests.conftest import Appliance, free_port, insecure_tls, write_appliance_config
from tests.peers import require_tool, run
from tests.sink import Captured, Sink
from tests.test_mta_appliance import NEW_PASSWORD, api, queue_id_of

pytestmark = pytest.mark.e2e

RELAY = "webmail@webmail.local"
WEBMAIL_SENDER = "webmail-sender@example.org"
POSTMASTER = "postmaster@webmail.example"
FIRST = (b"From: Alice <alice@example.org>\r\nTo: dave@partner.example\r\n"
         b"Subject: Contract draft\r\nMessage-ID: <draft-1@example.org>\r\n"
         b"Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
         b"Content-Type: text/plain; charset=utf-8\r\n\r\nDear Dave,\r\nthe draft.\r\n")
SECOND = FIRST.replace(b"Contract draft", b"Second draft").replace(b"draft-1", b"draft-2")


def start(directory: Path, password: str | None = NEW_PASSWORD) -> Appliance:
    """
    A new appliance in C{directory}, its admin password changed to
    C{password} through the API (C{None}: left at the default).
    """
    directory.mkdir()
    admin, smtp, portal = free_port(), free_port(), free_port()
    appliance = Appliance(directory, write_appliance_config(directory, admin, smtp,
                                                            portal_port=portal),
                          admin, smtp, portal_port=portal)
    appliance.start()
    if password is not None:
        api(appliance, "POST", "/admin/password", {"password": password}, password="admin")
    return appliance


def download(appliance: Appliance, thumbprint: str) -> bytes:
    request = urllib.request.Request(
        f"{appliance.admin_url}/api/v1/certificates/{thumbprint}.pem",
        headers={"Authorization": "Basic " + base64.b64encode(
            f"admin:{NEW_PASSWORD}".encode()).decode()})
    with urllib.request.urlopen(request, context=insecure_tls()) as response:
        return bytes(response.read())


class Pair:
    """
    The guide's set-up, section by section, through the API.
    """

    def __init__(self, tmp_path: Path, sink: Sink) -> None:
        self.sink = sink
        self.webmail = start(tmp_path / "webmail")
        self.gateway = start(tmp_path / "gateway")
        to_sink = {"host": "[127.0.0.1]", "port": sink.port}
        # 2.3.1-2.3.9: relay domain, internal relay host, relay recipient,
        # portal base URL, notification sender, postmaster.
        api(self.webmail, "PATCH", "/mta", {
            "relay_domains": ["webmail.local"], "internal_relay_host": "[127.0.0.1]:26",
            "my_hostname": "webmail.example", "transports": [
                {"domain": d, **to_sink} for d in ("partner.example", "example.org",
                                                   "webmail.example")]})
        api(self.webmail, "PATCH", "/settings/global", {
            "relay_recipient": RELAY, "portal_base_url": self.webmail.portal_url,
            "notification_sender": "notify@webmail.example", "postmaster": POSTMASTER})
        # 2.3.11-2.3.12: the webmail tunnel certificate, exported.
        relay = api(self.webmail, "POST", "/webmail/relay-certificate", {})
        relay_pem = download(self.webmail, relay["thumbprint"])
        # 2.3.14: authorized recipients.
        api(self.webmail, "PUT", "/mta/authorized-recipients", ["example.org"])
        # 3.2-3.3: imported into the gateway and trusted.
        imported = api(self.gateway, "POST", "/certificates?skip_self_signed=false",
                       raw=relay_pem)["imported"]
        api(self.gateway, "POST", "/ctl", {"thumbprint": imported[0],
                                           "status": "whitelisted"})
        # 3.4-3.8: webmail enabled, recipient and sender, the gateway tunnel
        # certificate; mail to partner.example must be encrypted.
        api(self.gateway, "PATCH", "/settings/global", {
            "webmail_enabled": True, "webmail_recipient": RELAY,
            "webmail_sender": WEBMAIL_SENDER})
        api(self.gateway, "PATCH", "/settings/domains/partner.example",
            {"encrypt_mode": "mandatory"})
        sender = api(self.gateway, "POST", "/webmail/sender-certificate", {})
        self.sender_pem = download(self.gateway, sender["thumbprint"])
        # 3.10: the SMTP transport for webmail.local; the rest to the sink.
        api(self.gateway, "PATCH", "/mta", {"my_hostname": "gateway.example", "transports": [
            {"domain": "webmail.local", "host": "[127.0.0.1]", "port": self.webmail.smtp_port},
            *({"domain": d, **to_sink} for d in ("partner.example", "example.org"))]})

    def trust_the_gateway(self) -> None:
        """
        4.1-4.2: the gateway tunnel certificate imported and whitelisted on
        the webmail appliance.
        """
        imported = api(self.webmail, "POST", "/certificates?skip_self_signed=false",
                       raw=self.sender_pem)["imported"]
        api(self.webmail, "POST", "/ctl", {"thumbprint": imported[0],
                                           "status": "whitelisted"})

    def send(self, message: bytes) -> str:
        done = run([require_tool("swaks"), "--server", f"127.0.0.1:{self.gateway.smtp_port}",
                    "--from", "alice@example.org", "--to", "dave@partner.example",
                    "--helo", "client.example.org", "--data", "-"],
                   stdin=message.removesuffix(b"\r\n"))
        return queue_id_of(done.stdout.decode(errors="replace"))

    def mpa_log(self, text: str, timeout: float = 20.0) -> str:
        return self.webmail.wait_for_log("mpa", text, timeout)

    def arrived(self, recipient: str, count: int = 1, timeout: float = 30.0) -> list[Captured]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.sink.state.messages if recipient in m.recipients]
            if len(found) >= count:
                return found
            time.sleep(0.1)
        raise AssertionError(f"{count} message(s) for {recipient} did not arrive; the sink "
                             f"has {[m.recipients for m in self.sink.state.messages]}")

    def close(self) -> None:
        self.gateway.stop()
        self.webmail.stop()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    sink = Sink()
    pair = None
    try:
        pair = Pair(tmp_path, sink)
        yield pair
    finally:
        if pair is not None:
            pair.close()
        sink.close()


def text_of(captured: Captured) -> str:
    parsed = email.message_from_bytes(captured.content, policy=email.policy.default)
    body = parsed.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


def sign_up(link: str, password: str) -> str:
    """
    Follow the sign-up link in a client with cookies, as a browser would.
    """
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=insecure_tls()),
                                         urllib.request.HTTPCookieProcessor(jar))
    def fetch(request: str | urllib.request.Request) -> str:
        try:
            with opener.open(request) as response:
                return str(response.read().decode())
        except urllib.error.HTTPError as e:  # a refusal is a page too
            return str(e.read().decode())

    page = fetch(link)
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page))
    if not fields:
        return page
    fields = {k: html.unescape(v) for k, v in fields.items()}
    form = urllib.parse.urlencode({**fields, "password": password, "confirm": password})
    return fetch(urllib.request.Request(urllib.parse.urljoin(link, "/signup"),
                                        data=form.encode()))


def back_end(appliance: Appliance) -> Messenger:
    """
    The webmail appliance's back end, opened on its own database and data
    dir; what it submits goes to the appliance's SMTP port, as the portal's
    replies go to its queue.
    """
    store = migrated_store(f"sqlite:///{appliance.data_dir / 'cipherd.db'}")
    kek = read_kek(DataDir(appliance.data_dir))
    clock = Clock()
    clock.advance(time.time())

    @implementer(ISubmission)
    class BySMTP:
        def submit(self, sender: str, recipients: list[str], content: bytes, client: str, *,
                   processed: bool = False) -> Deferred[QueuedMessage]:
            with smtplib.SMTP("127.0.0.1", appliance.smtp_port) as smtp:
                smtp.sendmail(sender, recipients, content)
            return succeed(QueuedMessage(Envelope("000000000000", sender, tuple(recipients),
                                                  0), "active", Path(), len(content)))

    submit = BySMTP()

    def mta_config() -> MTAConfig:
        with store.engine.connect() as conn:
            return load_mta_config(conn)

    settings = SettingsRepository(store, clock)
    return Messenger(Accounts(store, clock, SynchronousRunner(), cheap_hasher()),
                     Mailboxes(store, message_key(kek)), Notifier(submit, clock),
                     settings, mta_config, submit, clock)


def test_the_guides_two_appliances_end_to_end(pair: Pair) -> None:
    pair.trust_the_gateway()
    pair.send(FIRST)
    pair.mpa_log("stored in the mailbox of dave@partner.example")
    (invitation,) = pair.arrived("dave@partner.example")
    assert invitation.sender == "notify@webmail.example"
    assert b"Subject: Secure message from alice@example.org" in invitation.content
    link = re.search(r"https://\S+/signup\?token=\S+", text_of(invitation))
    assert link, text_of(invitation)
    assert link.group(0).startswith(pair.webmail.portal_url)
    weak = sign_up(link.group(0), "password1")
    assert "too easy to guess" in weak
    done = sign_up(link.group(0), "correct horse battery staple")
    assert "Your password is set" in done
    # The link works once.
    assert "used already" in sign_up(link.group(0), "another good passphrase")

    pair.send(SECOND)
    notice = pair.arrived("dave@partner.example", 2)[-1]
    assert b"Subject: New secure message from alice@example.org" in notice.content
    assert f"{pair.webmail.portal_url}/login" in text_of(notice)

    webmail = back_end(pair.webmail)
    account = result_of(webmail.login("dave@partner.example", "correct horse battery staple"))
    assert account is not None
    inbox = result_of(webmail.inbox("dave@partner.example"))
    assert [m.subject for m in inbox] == ["Second draft", "Contract draft"]
    original = result_of(webmail.read("dave@partner.example", inbox[1].id))
    assert original is not None and original.content.endswith(FIRST)
    result = result_of(webmail.reply("dave@partner.example", inbox[1].id,
                                     "Thanks, I will sign it.", to=["eve@elsewhere.test"]))
    assert result.sent_to == ["alice@example.org"]
    assert "not an authorized recipient" in result.refused["eve@elsewhere.test"]
    (reply,) = pair.arrived("alice@example.org")
    parsed = email.message_from_bytes(reply.content, policy=email.policy.default)
    assert parsed["From"] == "dave@partner.example"
    assert parsed["Subject"] == "Re: Contract draft"
    assert parsed["In-Reply-To"] == "<draft-1@example.org>"
    assert "> the draft." in str(parsed.get_body().get_content())


@pytest.mark.parametrize("misconfiguration", [
    "gateway certificate not imported", "gateway certificate not whitelisted",
    "relay certificate not matching", "relay recipient mismatch"])
def test_the_webmail_side_symptoms(pair: Pair, misconfiguration: str) -> None:
    if misconfiguration == "gateway certificate not whitelisted":
        api(pair.webmail, "POST", "/certificates?skip_self_signed=false", raw=pair.sender_pem)
    elif misconfiguration != "gateway certificate not imported":
        pair.trust_the_gateway()
    if misconfiguration == "relay certificate not matching":
        # A new relay certificate on the webmail side; the gateway still
        # encrypts to the old one, whose key is gone.
        for row in api(pair.webmail, "GET", f"/certificates?email={RELAY}")["certificates"]:
            api(pair.webmail, "DELETE", f"/certificates/{row['thumbprint']}")
        api(pair.webmail, "POST", "/webmail/relay-certificate", {})
    if misconfiguration == "relay recipient mismatch":
        api(pair.webmail, "PATCH", "/settings/global", {"relay_recipient": "other@webmail.local"})
        pair.send(FIRST)
        pair.mpa_log("Email is not a relay email; ")
        log = pair.mpa_log("Recipients: [webmail@webmail.local]")
        assert "INFO Email is not a relay email;" in log
        return
    pair.send(FIRST)
    if misconfiguration == "relay certificate not matching":
        line = "WARN S/MIME decryption key not found; "
        reason = "A suitable decryption key could not be found."
    else:
        line = "WARN S/MIME signature was not valid; Signer IDs: EMAILADDRESS=" + WEBMAIL_SENDER
        reason = "The web relay message was not properly signed."
    log = pair.mpa_log(line)
    if "decryption" in line:
        assert "Message: A suitable decryption key could not be found.." in log
    (forwarded,) = pair.arrived(POSTMASTER)
    text = forwarded.content.decode(errors="replace").replace("=\r\n", "")
    assert ("The webmail relay message could not be handled. The message is attached to this "
            "message.") in text
    assert "Additional information:" in text and reason in text
    parsed = email.message_from_bytes(forwarded.content, policy=email.policy.default)
    (attached,) = list(parsed.iter_attachments())
    assert attached.get_content_type() == "message/rfc822"
    assert b"Subject: Secure Webmail message" in attached.as_bytes()
    assert not [m for m in pair.sink.state.messages if "dave@partner.example" in m.recipients]
