"""
The vendor guide as an acceptance test, in headless Chromium and the admin
UI only: two freshly started appliances on 127.0.0.1 -- a webmail
messenger and a gateway -- configured step by step as sections 2 to 4 say,
with the guide's labels; a capturing sink is the internet and a DNS server
of the test's own the DNS.  Then a message sent with swaks to the gateway
is read by its recipient in the portal.

Then the guide's Troubleshooting section: each fault made through the UI,
a message sent, and the guide's log line found in Admin → Logs (and the
bounce or postmaster message it names at the sink); each test undoes its
fault through the UI again.

Every step is kept as a screenshot in C{artifacts/guide/}.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect

from tests.conftest import ARTIFACTS, Appliance, free_port
from tests.dns_server import DNSServer
from tests.peers import require_tool, run
from tests.sink import Captured, Sink
from tests.test_browser_admin import DESKTOP, browser, clipped  # noqa: F401
from tests.test_mta_appliance import queue_id_of
from tests.test_webmail_appliance import start

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

SCREENSHOTS = ARTIFACTS / "guide"
ADMIN_PASSWORD = "purple-otter-canvas-91"
RELAY = "webmail@webmail.local"
WEBMAIL_SENDER = "webmail-sender@example.org"
POSTMASTER = "postmaster@webmail.example"
NOTIFICATION_SENDER = "notify@webmail.example"
RECIPIENT = "dave@partner.example"
SENDER = "alice@example.org"
RECIPIENT_PASSWORD = "correct horse battery staple"
DNS_ADDRESS = "127.83.0.55"  # the test's DNS server: it knows no name at all
# Where mail to the internet goes: the sink, by transports.
INTERNET = ("partner.example", "example.org", "webmail.example")


class Admin:
    """
    One appliance's admin UI, in a browser context of its own.
    """

    shots = itertools.count(1)

    def __init__(self, browser: Browser, appliance: Appliance, name: str) -> None:  # noqa: F811
        self.appliance = appliance
        self.name = name
        self.context: BrowserContext = browser.new_context(
            base_url=appliance.admin_url, ignore_https_errors=True, viewport=DESKTOP,
            accept_downloads=True)
        self.page: Page = self.context.new_page()

    def close(self) -> None:
        self.context.close()

    def step(self, name: str) -> None:
        """
        A screenshot of the page as it is now, numbered in the guide's order;
        nothing on it may be cut off.
        """
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(
            path=SCREENSHOTS / f"{next(self.shots):02d}-{self.name}-{name}.png",
            full_page=True)
        assert not clipped(self.page), f"{self.name} {name}: {clipped(self.page)}"

    def menu(self, name: str) -> None:
        self.page.get_by_role("navigation", name="Main").get_by_role(
            "link", name=name, exact=True).click()

    def status(self) -> Locator:
        return self.page.get_by_role("status")

    def setting(self, name: str, value: str) -> None:
        """
        One field of a settings page: C{inherit} unticked, the value typed
        or chosen.
        """
        inherit = self.page.locator(f'[id="inherit.{name}"]')
        if inherit.is_checked():
            inherit.uncheck()
        field = self.page.locator(f'[id="value.{name}"]')
        if field.evaluate("e => e.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)

    def change_settings(self, step: str | None = None, **values: str) -> None:
        """
        Fields of the settings page shown, each set (L{setting}), a
        screenshot as C{step}, then *Apply*.
        """
        for name, value in values.items():
            self.setting(name, value)
        if step is not None:
            self.step(step)
        self.page.get_by_role("button", name="Apply").click()
        expect(self.status()).to_have_text("The settings were applied.")

    def log_line(self, log: str, text: str, search: str | None = None,
                 timeout: float = 45.0) -> str:
        """
        Admin → Logs: the MTA or MPA log searched for C{search} (by default
        C{text}) until a line shows C{text}; that line.
        """
        self.menu("Logs")
        self.page.get_by_role("link", name=f"{log} log").click()
        self.page.get_by_label("Search", exact=True).fill(search or text)
        self.page.get_by_role("button", name="Show").click()
        shown = self.page.locator("pre.log")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if shown.count() and text in shown.inner_text():
                return next(line for line in shown.inner_text().splitlines() if text in line)
            self.page.wait_for_timeout(300)
            self.page.reload()
        path = self.appliance.data_dir / "logs" / f"{log.lower()}.log"
        raise AssertionError(
            f"{self.name}'s {log} log shows no line with {text!r} for {search or text!r}: "
            f"{shown.inner_text() if shown.count() else '(none)'}\nIts last lines:\n"
            + "\n".join(path.read_text().splitlines()[-15:]))

    def add_transport(self, domain: str, host: str, port: int) -> None:
        """
        Admin → MTA → transports, *add transport* (guide §3.10).
        """
        self.menu("Admin")
        self.page.get_by_role("link", name="Transports").click()
        self.page.get_by_label("Recipients domain", exact=True).fill(domain)
        self.page.get_by_label("Relay host", exact=True).fill(host)
        self.page.get_by_label("Port", exact=True).fill(str(port))
        self.page.get_by_role("button", name="Add").click()
        expect(self.status()).to_have_text(f"Mail for {domain} now goes by its transport.")

    def delete_transport(self, domain: str) -> None:
        self.menu("Admin")
        self.page.get_by_role("link", name="Transports").click()
        self.page.once("dialog", lambda dialog: dialog.accept())
        self.page.get_by_role("button", name=f"Delete the transport for {domain}").click()
        expect(self.status()).to_have_text(f"The transport for {domain} was deleted.")

    def import_and_whitelist(self, certificate: Path, email: str) -> None:
        """
        Certificates → Import certificates with *skip self-signed* unticked,
        then the certificate's *add to CTL*, *Whitelisted* (guide §3.2-3.3,
        §4.1-4.2).
        """
        self.menu("Certificates")
        self.page.get_by_role("link", name="Import certificates").click()
        self.page.get_by_label("Certificate file").set_input_files(str(certificate))
        self.page.get_by_label("skip self-signed").uncheck()
        self.step("import-certificate")
        self.page.get_by_role("button", name="Import").click()
        expect(self.status()).to_contain_text("1 certificate(s) imported")
        self.page.get_by_role("link", name="Close").click()
        # Greyed: not valid until trusted.
        row = self.page.locator("table.certs tbody tr", has_text=f"EMAILADDRESS={email},")
        expect(row).to_have_class("invalid")
        self.step("imported-untrusted")
        row.get_by_role("link").click()
        self.page.get_by_role("link", name="add to CTL").click()
        expect(self.page.get_by_role("heading", level=1)).to_have_text(
            "Add new Certificate Trust List entry")
        self.page.get_by_label("Status").select_option("whitelisted")
        self.step("ctl-entry")
        self.page.get_by_role("button", name="Add").click()
        expect(self.status()).to_have_text("The certificate trust list was changed.")
        self.menu("Certificates")
        expect(self.page.locator("table.certs tbody tr.invalid")).to_have_count(0)
        self.step("whitelisted")

    def create_tunnel_certificate(self, link: str, email: str) -> None:
        """
        The settings page's certificate link (§2.3.11 *webmail
        certificate*, §3.8 *create webmail certificate*), then *Create*.
        """
        self.page.get_by_role("link", name=link, exact=True).click()
        expect(self.page.get_by_label("Email address")).to_have_value(email)
        self.page.get_by_role("button", name="Create").click()
        expect(self.status()).to_contain_text("A certificate was created.")

    def download_certificate(self, email: str, path: Path) -> None:
        """
        Certificates, the certificate of C{email} ticked, *download
        certificates* (§2.3.12), saved to C{path}.
        """
        self.menu("Certificates")
        self.page.get_by_role("checkbox", name=re.compile(f"Select EMAILADDRESS={email},")
                              ).check()
        with self.page.expect_download() as download:
            self.page.get_by_role("button", name="Download certificates (PEM)").click()
        download.value.save_as(path)
        assert path.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")

    def ctl(self, email: str, status: str) -> None:
        """
        A certificate's entry in the CTL: its details page, *add to CTL* or
        *change CTL entry*, the status chosen.
        """
        self.menu("Certificates")
        self.page.get_by_role("link", name=re.compile(f"EMAILADDRESS={email},")).click()
        self.page.get_by_role("link", name=re.compile("add to CTL|change CTL entry")).click()
        self.page.get_by_label("Status").select_option(status)
        self.page.get_by_role("button", name=re.compile("^(Add|Change)$")).click()
        expect(self.status()).to_have_text("The certificate trust list was changed.")

    def flush_until_empty(self, timeout: float = 30.0) -> None:
        """
        Queues → Flush, until the queue is empty.
        """
        self.menu("Queues")
        self.page.get_by_role("button", name="Flush").click()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.page.get_by_text("The queue is empty").count():
                return
            self.page.wait_for_timeout(300)
            self.menu("Queues")
        raise AssertionError(self.page.locator("main").inner_text())


@dataclass
class Guide:
    webmail: Admin
    gateway: Admin
    sink: Sink
    dns: DNSServer
    gateway_certificate: Path  # exported in §3.9
    webmail_certificate: Path  # exported in §2.3.12
    subjects: Iterator[int]

    def send(self, subject: str) -> str:
        """
        A message from alice@example.org to dave@partner.example, sent to
        the gateway with swaks; its queue id there.
        """
        done = run([require_tool("swaks"), "--server",
                    f"127.0.0.1:{self.gateway.appliance.smtp_port}",
                    "--from", SENDER, "--to", RECIPIENT, "--helo", "client.example.org",
                    "--header", f"Subject: {subject}", "--body", f"About {subject}.\n"])
        return queue_id_of(done.stdout.decode(errors="replace"))

    def arrived(self, recipient: str, text: str, timeout: float = 30.0) -> Captured:
        """
        The first message at the sink for C{recipient} that contains C{text}.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.sink.state.lock:
                for message in self.sink.state.messages:
                    content = message.content.decode(errors="replace").replace("=\r\n", "")
                    if recipient in message.recipients and text in content:
                        return message
            time.sleep(0.1)
        raise AssertionError(f"no message for {recipient} with {text!r}; the sink has "
                             f"{[m.recipients for m in self.sink.state.messages]}")

    def subject(self, what: str) -> str:
        return f"{what} {next(self.subjects)}"


def log_in_first_time(admin: Admin) -> None:
    """
    Guide §2.1 / §3.1: admin/admin, and the new password the default one
    leads to.
    """
    page = admin.page
    page.goto("/login")
    page.get_by_label("User name", exact=True).fill("admin")
    page.get_by_label("Password", exact=True).fill("admin")
    admin.step("login")
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/admin/password$"))
    page.get_by_label("New password", exact=True).fill(ADMIN_PASSWORD)
    page.get_by_label("Repeat the new password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Change password").click()
    expect(admin.status()).to_contain_text("The password was changed.")


def mta_basics(admin: Admin, hostname: str, sink: Sink) -> None:
    """
    Admin → Network (§2.2: the interfaces seen, a DNS server set), then
    the MTA config's "My hostname" (§2.3.2) and the transports that stand
    for the internet here (the sink).
    """
    page = admin.page
    admin.menu("Admin")
    page.get_by_role("navigation", name="Admin").get_by_role("link", name="Network").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Network info")
    expect(page.locator("main")).to_contain_text("127.0.0.1/8")
    page.get_by_label("DNS 1", exact=True).fill(DNS_ADDRESS)
    page.get_by_role("button", name="Apply").click()
    expect(admin.status()).to_have_text("The DNS servers were applied.")
    admin.step("network")
    admin.menu("Admin")
    page.get_by_label("My hostname").fill(hostname)
    page.get_by_role("button", name="Apply").click()
    expect(admin.status()).to_have_text("The new MTA settings were applied.")
    for domain in INTERNET:
        admin.add_transport(domain, "127.0.0.1", sink.port)


def set_up_the_webmail_appliance(admin: Admin, sink: Sink, downloads: Path) -> Path:
    """
    Guide §2: the webmail appliance, part 1.  The webmail tunnel
    certificate exported in §2.3.12.
    """
    page = admin.page
    log_in_first_time(admin)
    mta_basics(admin, "webmail.example", sink)
    # §2.3.1, §2.3.3, §2.3.4: relay domain, internal relay host, apply.
    admin.menu("Admin")
    page.get_by_label("Add domain").fill("webmail.local")
    page.get_by_role("button", name="Add domain").click()
    expect(admin.status()).to_have_text("webmail.local is a relay domain.")
    relay_host = page.get_by_role("group", name="Internal relay host")
    relay_host.get_by_role("textbox").fill("127.0.0.1")
    relay_host.get_by_label("port").fill("26")
    admin.step("mta-config")
    page.get_by_role("button", name="Apply").click()
    expect(admin.status()).to_have_text("The new MTA settings were applied.")
    # §2.3.5: the send email tool reaches an external recipient.
    page.get_by_role("navigation", name="Admin").get_by_role("link", name="Send email").click()
    page.get_by_label("From").fill(POSTMASTER)
    page.get_by_label("To").fill("someone@example.org")
    page.get_by_label("Subject").fill("Test from the webmail appliance")
    page.get_by_label("Message").fill("Outgoing mail works.")
    page.get_by_role("button", name="Send").click()
    expect(admin.status()).to_contain_text("Queued for delivery as")
    admin.step("send-email")
    # §2.3.6-2.3.10: the global settings.
    admin.menu("Settings")
    admin.change_settings("global-preferences", relay_recipient=RELAY,
                          portal_base_url=admin.appliance.portal_url,
                          notification_sender=NOTIFICATION_SENDER, postmaster=POSTMASTER)
    # §2.3.11: "webmail certificate", Create.
    admin.create_tunnel_certificate("webmail certificate", RELAY)
    admin.step("webmail-certificate")
    # §2.3.12: the webmail certificate exported.
    exported = downloads / "webmail-tunnel.pem"
    admin.download_certificate(RELAY, exported)
    admin.step("certificates")
    # §2.3.13: Settings → auto cleanup.
    admin.menu("Settings")
    page.get_by_role("link", name="Auto cleanup").click()
    admin.change_settings("auto-cleanup", auto_mailbox_cleanup_enabled="true",
                          auto_mailbox_cleanup_interval="2w")
    # §2.3.14: Admin → MTA → authorized recipients.
    admin.menu("Admin")
    page.get_by_role("link", name="Authorized recipients").click()
    page.get_by_label("Add domain or email address").fill("example.org")
    page.get_by_role("button", name="Add").click()
    expect(page.locator("table.entries")).to_contain_text("example.org")
    admin.step("authorized-recipients")
    return exported


def set_up_the_gateway(admin: Admin, sink: Sink, webmail: Appliance,
                       webmail_certificate: Path, downloads: Path) -> Path:
    """
    Guide §3: the gateway; the gateway tunnel certificate exported in §3.9.
    Mail to partner.example must be encrypted (a domain's encryption
    policy), which is what sends it to webmail.
    """
    page = admin.page
    log_in_first_time(admin)
    mta_basics(admin, "gateway.example", sink)
    # §3.2-3.3.
    admin.import_and_whitelist(webmail_certificate, RELAY)
    # §3.4-3.7: Settings → webmail.
    admin.menu("Settings")
    page.get_by_role("link", name="Webmail", exact=True).click()
    admin.change_settings("webmail-settings", webmail_enabled="true", webmail_recipient=RELAY,
                          webmail_sender=WEBMAIL_SENDER)
    # §3.8: "create webmail certificate", Create.
    admin.create_tunnel_certificate("create webmail certificate", WEBMAIL_SENDER)
    admin.step("gateway-tunnel-certificate")
    # §3.9: the "available" link, then "download certificate".
    page.get_by_role("link", name="available").click()
    expect(page.locator("dl.facts")).to_contain_text(f"EMAILADDRESS={WEBMAIL_SENDER}")
    admin.step("gateway-tunnel-certificate-details")
    with page.expect_download() as download:
        page.get_by_role("link", name="download certificate (PEM)").click()
    exported = downloads / "gateway-tunnel.pem"
    download.value.save_as(exported)
    # §3.10: the SMTP transport for webmail.local.
    admin.add_transport("webmail.local", "127.0.0.1", webmail.smtp_port)
    admin.step("transports")
    # The policy: mail to partner.example must be encrypted.
    admin.menu("Settings")
    page.get_by_role("link", name="Domains").click()
    page.get_by_label("Add domain").fill("partner.example")
    page.get_by_role("button", name="Add", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("partner.example")
    page.get_by_role("link", name="Encryption policy").click()
    admin.change_settings("encryption-policy", encrypt_mode="mandatory")
    return exported


@pytest.fixture(scope="module")
def guide(browser: Browser, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
          ) -> Iterator[Guide]:
    directory = tmp_path_factory.mktemp("guide")
    sink, dns = Sink(), DNSServer(DNS_ADDRESS)
    webmail = gateway = None
    admins: list[Admin] = []
    try:
        # Fresh, with the default password the UI will change (§2.1).
        webmail = start(directory / "webmail", password=None)
        gateway = start(directory / "gateway", password=None)
        webmail_admin = Admin(browser, webmail, "webmail")
        gateway_admin = Admin(browser, gateway, "gateway")
        admins = [webmail_admin, gateway_admin]
        webmail_pem = set_up_the_webmail_appliance(webmail_admin, sink, directory)
        gateway_pem = set_up_the_gateway(gateway_admin, sink, webmail, webmail_pem, directory)
        # §4.1-4.2: the gateway tunnel certificate on the webmail appliance.
        webmail_admin.import_and_whitelist(gateway_pem, WEBMAIL_SENDER)
        yield Guide(webmail_admin, gateway_admin, sink, dns, gateway_pem, webmail_pem,
                    itertools.count(1))
    finally:
        for admin in admins:
            admin.close()
        for appliance in (gateway, webmail):
            if appliance is not None:
                appliance.stop()
        sink.close()
        dns.close()


def test_the_guide_then_a_message_read_in_the_portal(
        guide: Guide, browser: Browser) -> None:  # noqa: F811
    # §2.3.5's test message reached the internet.
    guide.arrived("someone@example.org", "Outgoing mail works.")
    # Figure 18: two certificates, both whitelisted, one with a key.
    page = guide.webmail.page
    guide.webmail.menu("Certificates")
    rows = page.locator("table.certs tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.locator(".badge.ok")).to_have_text(["whitelisted", "whitelisted"])
    guide.webmail.step("figure-18")

    subject = guide.subject("Contract draft")
    guide.send(subject)
    line = guide.webmail.log_line("MPA", f"stored in the mailbox of {RECIPIENT}")
    assert RECIPIENT in line
    invitation = guide.arrived(RECIPIENT, "/signup?token=")
    text = invitation.content.decode(errors="replace").replace("=\r\n", "")
    found = re.search(r"https://\S+/signup\?token=[A-Za-z0-9_.=%-]+", text)
    assert found, text
    link = found.group(0).replace("=3D", "=")
    assert link.startswith(guide.webmail.appliance.portal_url)

    context = browser.new_context(base_url=guide.webmail.appliance.portal_url,
                                  ignore_https_errors=True, viewport=DESKTOP)
    try:
        portal = context.new_page()
        portal.goto(link)
        expect(portal.get_by_role("heading", level=1)).to_have_text("Choose your password")
        portal.get_by_label("New password", exact=True).fill(RECIPIENT_PASSWORD)
        portal.get_by_label("New password again").fill(RECIPIENT_PASSWORD)
        portal.get_by_role("button", name="Set password").click()
        expect(portal.get_by_role("heading", level=1)).to_have_text("Your password is set")
        portal.get_by_role("link", name="Log in").click()
        portal.get_by_label("Email address").fill(RECIPIENT)
        portal.get_by_label("Password", exact=True).fill(RECIPIENT_PASSWORD)
        portal.get_by_role("button", name="Log in").click()
        portal.get_by_role("link", name=subject).click()
        expect(portal.get_by_role("heading", level=1)).to_have_text(subject)
        expect(portal.locator("main")).to_contain_text(f"About {subject}.")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        portal.screenshot(path=SCREENSHOTS / "99-portal-message.png", full_page=True)
    finally:
        context.close()


# Troubleshooting ------------------------------------------------------------

def _gateway_setting(guide: Guide, tab: str, name: str, value: str) -> None:
    admin = guide.gateway
    admin.menu("Settings")
    admin.page.get_by_role("link", name=tab, exact=True).click()
    admin.change_settings(**{name: value})


def _bounce_for_alice(guide: Guide, subject: str, reason: str) -> None:
    """
    The guide's bounce: the subject, "could not be encrypted", the
    recipient and the reason.
    """
    notice = guide.arrived(SENDER, f"{subject}\r\n\r\nhas not been sent")
    text = notice.content.decode(errors="replace")
    assert ("has not been sent to the following recipients because the message could not "
            f"be encrypted.\r\n\r\n{RECIPIENT}\r\n\r\n") in text, text
    assert reason in text, text


def test_webmail_is_disabled(guide: Guide) -> None:
    _gateway_setting(guide, "Webmail", "webmail_enabled", "false")
    try:
        subject = guide.subject("Webmail disabled")
        guide.send(subject)
        line = guide.gateway.log_line("MPA", "INFO Webmail is disabled for the sender")
        assert f"Recipient: {RECIPIENT}; Sender: {SENDER}" in line
        guide.gateway.step("troubleshooting-webmail-disabled")
        _bounce_for_alice(guide, subject, "Webmail is disabled for the sender.")
    finally:
        _gateway_setting(guide, "Webmail", "webmail_enabled", "true")


def test_the_tunnel_message_could_not_be_signed(guide: Guide) -> None:
    # A webmail sender with no certificate and key.
    _gateway_setting(guide, "Webmail", "webmail_sender", "other-sender@example.org")
    try:
        subject = guide.subject("Not signed")
        guide.send(subject)
        guide.gateway.log_line("MPA", "WARN The tunneled message should have been signed")
        guide.gateway.step("troubleshooting-not-signed")
        _bounce_for_alice(guide, subject, "The tunneled message should have been signed.")
    finally:
        _gateway_setting(guide, "Webmail", "webmail_sender", WEBMAIL_SENDER)


def test_the_tunnel_message_could_not_be_encrypted(guide: Guide) -> None:
    # A webmail recipient with no trusted certificate on the gateway.
    _gateway_setting(guide, "Webmail", "webmail_recipient", "other@webmail.local")
    try:
        subject = guide.subject("Not encrypted")
        guide.send(subject)
        guide.gateway.log_line(
            "MPA", "WARN There are no valid S/MIME certificates for the webmail recipient")
        guide.gateway.step("troubleshooting-not-encrypted")
        _bounce_for_alice(guide, subject,
                          "There are no valid S/MIME certificates for the webmail recipient.")
    finally:
        _gateway_setting(guide, "Webmail", "webmail_recipient", RELAY)


def test_the_tunnel_message_was_bounced_by_the_gateway(guide: Guide) -> None:
    # No SMTP transport for webmail.local: the DNS knows no such name.
    guide.gateway.delete_transport("webmail.local")
    try:
        guide.send(guide.subject("No transport"))
        line = guide.gateway.log_line("MTA", "status=bounced",
                                      search=f"to=<{RELAY}>, relay=none")
        assert ("dsn=5.4.4, status=bounced (Host or domain name not found. Name service "
                "error for name=webmail.local type=AAAA: Host not found)") in line, line
        guide.gateway.step("troubleshooting-bounced")
        bounce = guide.arrived(WEBMAIL_SENDER, "Host or domain name not found")
        assert (b"<webmail@webmail.local>: Host or domain name not found. Name service error "
                b"for name=webmail.local type=AAAA: Host not found") in bounce.content
    finally:
        guide.gateway.add_transport("webmail.local", "127.0.0.1",
                                    guide.webmail.appliance.smtp_port)


def test_the_tunnel_message_gets_stuck_no_route(guide: Guide) -> None:
    # The transport points where nothing listens: deferred, then delivered
    # once it is put right and the queue flushed.
    guide.gateway.delete_transport("webmail.local")
    closed = free_port()
    guide.gateway.add_transport("webmail.local", "127.0.0.1", closed)
    try:
        guide.send(guide.subject("Stuck"))
        line = guide.gateway.log_line("MTA", "status=deferred",
                                      search=f"127.0.0.1[127.0.0.1]:{closed}")
        assert line.split(": ", 1)[1].startswith("to=<webmail@webmail.local>")
        assert (f"status=deferred (connect to 127.0.0.1[127.0.0.1]:{closed}: Connection "
                "refused)") in line, line
        guide.gateway.step("troubleshooting-stuck-connect")
    finally:
        guide.gateway.delete_transport("webmail.local")
        guide.gateway.add_transport("webmail.local", "127.0.0.1",
                                    guide.webmail.appliance.smtp_port)
    guide.gateway.flush_until_empty()


def test_the_tunnel_message_gets_stuck_relay_access_denied(guide: Guide) -> None:
    # On the webmail appliance: webmail.local not a relay domain, and the
    # gateway not one of its trusted networks.
    page = guide.webmail.page
    guide.webmail.menu("Admin")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete the relay domain webmail.local").click()
    expect(guide.webmail.status()).to_have_text("webmail.local is no longer a relay domain.")
    page.get_by_label("My networks").fill("192.0.2.0/24")
    page.get_by_role("button", name="Apply").click()
    expect(guide.webmail.status()).to_have_text("The new MTA settings were applied.")
    try:
        guide.send(guide.subject("Relay denied"))
        line = guide.gateway.log_line("MTA", "status=deferred", search="Relay access denied")
        assert ("said: 454 4.7.1 <webmail@webmail.local>: Relay access denied (in reply to "
                "RCPT TO command))") in line, line
        guide.gateway.step("troubleshooting-relay-denied")
    finally:
        guide.webmail.menu("Admin")
        page.get_by_label("Add domain").fill("webmail.local")
        page.get_by_role("button", name="Add domain").click()
        expect(guide.webmail.status()).to_have_text("webmail.local is a relay domain.")
        page.get_by_label("My networks").fill("127.0.0.0/8")
        page.get_by_role("button", name="Apply").click()
        expect(guide.webmail.status()).to_have_text("The new MTA settings were applied.")
    guide.gateway.flush_until_empty()


def test_not_a_relay_email_on_the_webmail_appliance(guide: Guide) -> None:
    admin = guide.webmail
    admin.menu("Settings")
    admin.change_settings(relay_recipient="other@webmail.local")
    try:
        guide.send(guide.subject("Not relay"))
        line = admin.log_line("MPA", "Recipients: [webmail@webmail.local]",
                              search="INFO Email is not a relay email;")
        assert "INFO Email is not a relay email; " in line
        admin.step("troubleshooting-not-a-relay-email")
    finally:
        admin.menu("Settings")
        admin.change_settings(relay_recipient=RELAY)


def test_the_signature_was_not_valid_on_the_webmail_appliance(guide: Guide) -> None:
    # The gateway tunnel certificate off the webmail appliance's CTL.
    admin = guide.webmail
    admin.ctl(WEBMAIL_SENDER, "remove")
    try:
        subject = guide.subject("Bad signature")
        guide.send(subject)
        line = admin.log_line("MPA", "WARN S/MIME signature was not valid; Signer IDs: "
                                     f"EMAILADDRESS={WEBMAIL_SENDER}")
        assert line
        admin.step("troubleshooting-signature")
        forwarded = guide.arrived(POSTMASTER, "The webmail relay message could not be handled")
        text = forwarded.content.decode(errors="replace").replace("=\r\n", "")
        assert "The web relay message was not properly signed." in text
    finally:
        admin.ctl(WEBMAIL_SENDER, "whitelisted")


def test_the_decryption_key_was_not_found_on_the_webmail_appliance(guide: Guide) -> None:
    # A new webmail tunnel certificate on the webmail appliance (the guide's
    # "webmail certificate" Create, confirmed), the old one deleted: the
    # gateway still encrypts to the old one.
    admin, page = guide.webmail, guide.webmail.page
    admin.menu("Certificates")
    page.get_by_role("link", name=re.compile(f"EMAILADDRESS={RELAY}")).click()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete certificate").click()
    admin.menu("Settings")
    admin.create_tunnel_certificate("webmail certificate", RELAY)
    try:
        guide.send(guide.subject("No key"))
        line = admin.log_line("MPA", "WARN S/MIME decryption key not found; ")
        assert "Message: A suitable decryption key could not be found.." in line, line
        admin.step("troubleshooting-decryption-key")
        guide.arrived(POSTMASTER, "A suitable decryption key could not be found.")
    finally:
        # The new certificate exported and trusted on the gateway instead
        # of the old one (§2.3.12, §3.2-3.3 again).
        admin.download_certificate(RELAY, guide.webmail_certificate)
        gateway = guide.gateway
        gateway.menu("Certificates")
        gateway.page.get_by_role("link", name=re.compile(f"EMAILADDRESS={RELAY}")).click()
        gateway.page.once("dialog", lambda dialog: dialog.accept())
        gateway.page.get_by_role("button", name="Delete certificate").click()
        gateway.import_and_whitelist(guide.webmail_certificate, RELAY)
    before = len(guide.sink.state.messages)
    guide.send(guide.subject("Key again"))
    guide.sink.wait_for(before + 1)  # the new-message notice
    assert guide.sink.state.messages[before].recipients == [RECIPIENT]


def test_a_mail_loop_is_refused(guide: Guide) -> None:
    # Guide §2.3.2: the gateway named as the webmail appliance names itself.
    admin, page = guide.gateway, guide.gateway.page
    admin.menu("Admin")
    page.get_by_label("My hostname").fill("webmail.example")
    page.get_by_role("button", name="Apply").click()
    expect(admin.status()).to_have_text("The new MTA settings were applied.")
    try:
        guide.send(guide.subject("Loop"))
        line = admin.log_line(
            "MTA", "loops back to myself", search="status=bounced (mail for")
        assert f"mail for [127.0.0.1]:{guide.webmail.appliance.smtp_port} loops back to " \
               "myself" in line, line
        admin.step("troubleshooting-mail-loop")
    finally:
        admin.menu("Admin")
        page.get_by_label("My hostname").fill("gateway.example")
        page.get_by_role("button", name="Apply").click()
        expect(admin.status()).to_have_text("The new MTA settings were applied.")
