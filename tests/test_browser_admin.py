"""
The admin site in headless Chromium against a running appliance: the forced
change of the default password, a setting that survives a restart, a refused
value, a form without its CSRF token, and screenshots of every page at desktop
and phone widths (kept in C{artifacts/} for people to look at).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    expect,
    sync_playwright,
)

from tests.conftest import Appliance
from tests.peers import require_tool, run

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}

DEFAULT_PASSWORD = "admin"
# Long enough to pass the form's minlength, so the server is what refuses it.
WEAK_PASSWORD = "password1234"
GOOD_PASSWORD = "purple-otter-canvas-91"
SENDER = "notification_sender"
PREFERENCES = "/settings/global/preferences"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_context(browser: Browser, appliance: Appliance) -> BrowserContext:
    return browser.new_context(
        base_url=appliance.admin_url, ignore_https_errors=True, viewport=DESKTOP
    )


@pytest.fixture
def context(browser: Browser, appliance: Appliance) -> Iterator[BrowserContext]:
    context = new_context(browser, appliance)
    try:
        yield context
    finally:
        context.close()


def log_in(page: Page, password: str) -> None:
    page.goto("/login")
    page.get_by_label("User name", exact=True).fill("admin")
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()


def set_password(page: Page, password: str) -> None:
    page.get_by_label("New password", exact=True).fill(password)
    page.get_by_label("Repeat the new password").fill(password)
    page.get_by_role("button", name="Change password").click()


def log_in_and_change_default_password(page: Page) -> None:
    log_in(page, DEFAULT_PASSWORD)
    expect(page).to_have_url(re.compile(r"/admin/password$"))
    set_password(page, GOOD_PASSWORD)
    expect(page.get_by_role("status")).to_contain_text("The password was changed.")


def sender_row(page: Page) -> Locator:
    return page.locator(f'div.row[data-property="{SENDER}"]')


def shoot(page: Page, artifacts: Path, name: str) -> None:
    """
    Keep C{artifacts/admin-<name>-desktop.png} and C{...-phone.png}.
    """
    for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        page.screenshot(path=artifacts / f"admin-{name}-{width}.png", full_page=True)
        assert not clipped(page), f"{name}, {width}: {clipped(page)}"
    page.set_viewport_size(DESKTOP)


# What sticks out of the page's main column or of a box that scrolls
# sideways: cut off, or reachable only by scrolling across.
CLIPPED = """() => {
  const found = [];
  const main = document.querySelector("main");
  if (!main) return found;
  if (document.documentElement.scrollWidth > window.innerWidth + 1)
    found.push("the page is wider than the window");
  const edge = main.getBoundingClientRect().right;
  for (const el of main.querySelectorAll("*")) {
    // Only for screen readers (a 1 px box, clipped): hidden on purpose.
    let hidden = false;
    for (let up = el; up && up !== main; up = up.parentElement)
      if (getComputedStyle(up).clip !== "auto") { hidden = true; break; }
    if (hidden) continue;
    const box = el.getBoundingClientRect();
    const name = el.tagName.toLowerCase() + (el.className ? "." + el.className : "");
    if (box.width > 1 && box.right > edge + 1) found.push(name + " runs out of the page");
    const style = getComputedStyle(el);
    if (["auto", "scroll", "hidden"].includes(style.overflowX) && el.tagName !== "TEXTAREA"
        && el.scrollWidth > el.clientWidth + 1)
      found.push(name + " is cut at the right");
  }
  return found;
}"""


def clipped(page: Page) -> list[str]:
    """
    What of the page is cut off at its current width.
    """
    found: list[str] = page.evaluate(CLIPPED)
    return found


def test_password_change_and_setting_survive_restart(
    browser: Browser, context: BrowserContext, appliance: Appliance, artifacts: Path
) -> None:
    page = context.new_page()

    # Any page leads to the login form, and the default password to its change.
    page.goto(PREFERENCES)
    expect(page).to_have_url(f"{appliance.admin_url}/login")
    log_in(page, DEFAULT_PASSWORD)
    expect(page).to_have_url(f"{appliance.admin_url}/admin/password")
    expect(page.locator("p.warning")).to_have_text(
        "You are using the default password. Choose a new one before you continue."
    )
    page.goto(PREFERENCES)
    expect(page).to_have_url(f"{appliance.admin_url}/admin/password")

    set_password(page, WEAK_PASSWORD)
    expect(page.locator("p.error")).to_contain_text("The password is too easy to guess.")
    expect(page.locator("p.warning")).to_be_visible()

    set_password(page, GOOD_PASSWORD)
    expect(page.get_by_role("status")).to_contain_text("The password was changed.")
    expect(page.locator("p.warning")).to_have_count(0)

    # Override the notification sender on the global preferences.
    page.goto(PREFERENCES)
    row = sender_row(page)
    expect(row.locator("label").first).to_have_text("Notification sender")
    inherit = page.locator(f'[id="inherit.{SENDER}"]')
    value = page.locator(f'[id="value.{SENDER}"]')
    expect(inherit).to_be_checked()
    expect(value).to_be_disabled()
    inherit.uncheck()
    expect(value).to_be_enabled()
    value.fill("notification@example.com")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("status")).to_have_text("The settings were applied.")
    expect(value).to_have_value("notification@example.com")
    expect(inherit).not_to_be_checked()

    appliance.restart()

    # A new browser (no session cookie): the new password is what works.
    fresh = new_context(browser, appliance)
    try:
        page = fresh.new_page()
        log_in(page, GOOD_PASSWORD)
        expect(page).to_have_url(f"{appliance.admin_url}/")  # the dashboard
        page.goto(PREFERENCES)
        expect(page.locator(f'[id="value.{SENDER}"]')).to_have_value("notification@example.com")
        expect(page.locator(f'[id="value.{SENDER}"]')).to_be_enabled()
        expect(page.locator(f'[id="inherit.{SENDER}"]')).not_to_be_checked()
        page.screenshot(path=artifacts / "admin-global-preferences.png", full_page=True)
    finally:
        fresh.close()


def test_invalid_sender_is_refused_and_nothing_saved(
    context: BrowserContext, artifacts: Path
) -> None:
    page = context.new_page()
    log_in_and_change_default_password(page)
    page.goto(PREFERENCES)
    page.locator(f'[id="inherit.{SENDER}"]').uncheck()
    page.locator(f'[id="value.{SENDER}"]').fill("not-an-address")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.get_by_role("button", name="Apply").click()
    assert posted.value.status == 400

    expect(sender_row(page).locator("p.field-error")).to_have_text(
        "'not-an-address' is not a valid email address: it has no @"
    )
    expect(page.get_by_role("alert")).to_contain_text("nothing was changed")
    # What was typed is shown again, to be corrected.
    expect(page.locator(f'[id="value.{SENDER}"]')).to_have_value("not-an-address")
    shoot(page, artifacts, "preferences-invalid")

    page.goto(PREFERENCES)
    expect(page.locator(f'[id="inherit.{SENDER}"]')).to_be_checked()
    expect(page.locator(f'[id="value.{SENDER}"]')).to_have_value("")
    expect(page.locator("p.field-error")).to_have_count(0)


def test_form_without_csrf_token_is_refused(context: BrowserContext, artifacts: Path) -> None:
    page = context.new_page()
    log_in_and_change_default_password(page)
    page.goto(PREFERENCES)
    # The same fields the page sends, but no csrf_token.
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.evaluate(
            """([name, value]) => {
                const form = document.createElement("form");
                form.method = "post";
                form.action = "/settings/global/preferences";
                for (const [k, v] of [["fields", name], ["value." + name, value]]) {
                    const input = document.createElement("input");
                    input.type = "hidden";
                    input.name = k;
                    input.value = v;
                    form.append(input);
                }
                document.body.append(form);
                form.submit();
            }""",
            [SENDER, "forged@example.com"],
        )
    assert posted.value.status == 403
    assert "This form was not sent from this site" in posted.value.text()
    expect(page.locator("h1")).to_have_text("Form refused")
    shoot(page, artifacts, "form-refused")

    page.goto(PREFERENCES)
    expect(page.locator(f'[id="inherit.{SENDER}"]')).to_be_checked()
    expect(page.locator(f'[id="value.{SENDER}"]')).to_have_value("")


def test_screenshots_of_every_page(
    context: BrowserContext, appliance: Appliance, artifacts: Path
) -> None:
    page = context.new_page()
    page.goto("/login")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    shoot(page, artifacts, "login")

    log_in(page, DEFAULT_PASSWORD)
    expect(page.locator("p.warning")).to_be_visible()
    shoot(page, artifacts, "password")
    set_password(page, GOOD_PASSWORD)
    expect(page.get_by_role("status")).to_contain_text("The password was changed.")

    # Some entries, so the lists show a table rather than "No domains yet".
    for kind, names in (
        ("domains", ["example.com", "*.example.org"]),
        ("users", ["alice@example.com"]),
    ):
        for name in names:
            page.goto(f"/settings/{kind}")
            page.get_by_label("Add").fill(name)
            page.get_by_role("button", name="Add", exact=True).click()
            expect(page.get_by_role("heading", level=1)).to_contain_text(name)

    pages = {
        "preferences": PREFERENCES,
        "preferences-advanced": f"{PREFERENCES}?advanced=1",
        "webmail": "/settings/global/webmail",
        "encryption": "/settings/global/encryption",
        "quota": "/settings/global/quota",
        "cleanup": "/settings/global/cleanup",
        "domains": "/settings/domains",
        "users": "/settings/users",
        "logs": "/logs",
        "network": "/admin/network",
    }
    for name, path in pages.items():
        response = page.goto(path)
        assert response is not None and response.status == 200, (name, path)
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        shoot(page, artifacts, name)


def test_import_and_trust_a_tunnel_certificate_as_the_guide_says(
    context: BrowserContext, artifacts: Path, tmp_path: Path
) -> None:
    """
    Guide §4.1 and §4.2: import the gateway's self-signed tunnel certificate
    with "skip self-signed" unticked, then whitelist it in the CTL.
    """
    from datetime import UTC, datetime

    from cryptography.hazmat.primitives import serialization

    from cipherd.pki.certs import create_tunnel_certificate

    cert, _ = create_tunnel_certificate("webmail@example.com",
                                        "Webmail sender tunnel certificate",
                                        datetime.now(UTC))
    pem = tmp_path / "gateway-tunnel.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    page = context.new_page()
    log_in_and_change_default_password(page)
    page.get_by_role("link", name="Certificates", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Intermediate and user certificates")
    page.get_by_role("link", name="Import certificates").click()
    expect(page.get_by_label("skip self-signed")).to_be_checked()
    shoot(page, artifacts, "certificates-import")

    # With "skip self-signed" ticked the tunnel certificate is left out...
    page.get_by_label("Certificate file").set_input_files(str(pem))
    page.get_by_role("button", name="Import").click()
    expect(page.get_by_role("status")).to_contain_text("0 certificate(s) imported")
    page.go_back()
    # ... and imported once it is unticked.
    page.get_by_label("Certificate file").set_input_files(str(pem))
    page.get_by_label("skip self-signed").uncheck()
    page.get_by_role("button", name="Import").click()
    expect(page.get_by_role("status")).to_contain_text("1 certificate(s) imported")
    page.get_by_role("link", name="Close").click()

    row = page.locator("table.certs tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_have_class("invalid")  # greyed: not yet trusted
    shoot(page, artifacts, "certificates-untrusted")
    row.get_by_role("link").click()
    expect(page.locator("dl.facts")).to_contain_text(
        "EMAILADDRESS=webmail@example.com, CN=Webmail sender tunnel certificate")
    # "add to CTL", then the "Add new Certificate Trust List entry" page.
    page.get_by_role("link", name="add to CTL").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Add new Certificate Trust List entry")
    page.get_by_label("Status").select_option("whitelisted")
    shoot(page, artifacts, "ctl-entry")
    page.get_by_role("button", name="Add").click()
    expect(page.get_by_role("status")).to_have_text("The certificate trust list was changed.")
    expect(page.locator("dl.facts")).to_contain_text(
        "valid: The certificate is whitelisted in the certificate trust list.")
    shoot(page, artifacts, "certificate-details")

    page.get_by_role("link", name="Certificates", exact=True).click()
    expect(row).to_have_class("valid")
    expect(row.locator(".badge.ok")).to_have_text("whitelisted")
    shoot(page, artifacts, "certificates-whitelisted")

    with page.expect_download() as download:
        row.get_by_role("link").click()
        page.get_by_role("link", name="download certificate (PEM)").click()
    assert Path(download.value.path()).read_bytes() == pem.read_bytes()


def test_mta_config_and_queue_pages(
    context: BrowserContext, appliance: Appliance, artifacts: Path
) -> None:
    page = context.new_page()
    page.goto("/login")
    log_in_and_change_default_password(page)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("MTA config")
    shoot(page, artifacts, "mta-config")

    # A bad network: named, and nothing changes.
    page.get_by_label("My networks").fill("127.0.0.0/8\n10.0.0.0/33")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("alert")).to_contain_text("nothing was changed")
    expect(page.locator("#error\\.my_networks")).to_contain_text("'10.0.0.0/33' is not a network")

    # The guide's steps: relay domain, internal relay host 127.0.0.1 port 26 —
    # and a transport whose next hop is down, so mail waits in the queue.
    page.get_by_label("My networks").fill("127.0.0.0/8")
    page.get_by_label("Add domain").fill("webmail local")
    page.get_by_role("button", name="Add domain").click()
    expect(page.locator('[id="error.domain"]')).to_have_text(
        "'webmail local' is not a domain name: it contains spaces.")
    page.get_by_label("Add domain").fill("webmail.local")
    page.get_by_role("button", name="Add domain").click()
    expect(page.get_by_role("status")).to_have_text("webmail.local is a relay domain.")
    relay_host = page.get_by_role("group", name="Internal relay host")
    relay_host.get_by_role("textbox").fill("127.0.0.1")
    relay_host.get_by_label("port").fill("26")
    page.get_by_label("Match subdomains").check()
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("status")).to_have_text("The new MTA settings were applied.")
    page.get_by_role("link", name="show advanced settings").click()
    expect(page.get_by_label("SMTP helo name")).to_be_visible()
    shoot(page, artifacts, "mta-config-advanced")
    page.get_by_label("SMTP helo name").fill("gw.example.org")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("status")).to_have_text("The new MTA settings were applied.")
    expect(page.get_by_label("SMTP helo name")).to_have_value("gw.example.org")
    expect(page.locator("ul.relay-domain-list li code")).to_have_text(["webmail.local"])

    # Guide §3.10: Admin → MTA → transports, "add transport".
    page.get_by_role("link", name="Transports").click()
    page.get_by_label("Recipients domain").fill("example.com")
    page.get_by_label("Relay host").fill("host name with spaces")
    page.get_by_role("button", name="Add").click()
    expect(page.locator('[id="error.host"]')).to_have_text(
        "'host name with spaces' is not a host name or an IP address (the port goes in its "
        "own field).")
    expect(page.get_by_label("Recipients domain")).to_have_value("example.com")
    shoot(page, artifacts, "transports-refused")
    page.get_by_label("Relay host").fill("127.0.0.1")
    page.get_by_label("Port").fill("9")
    page.get_by_role("button", name="Add").click()
    expect(page.get_by_role("status")).to_have_text("Mail for example.com now goes by its "
                                                    "transport.")
    expect(page.locator("table.transports tbody tr td")).to_have_text(
        ["example.com", "127.0.0.1", "9", "no", "Delete"])
    shoot(page, artifacts, "transports")

    run([require_tool("swaks"), "--server", f"127.0.0.1:{appliance.smtp_port}",
         "--from", "alice@example.org", "--to", "bob@example.com", "--helo", "client.test"])
    page.get_by_role("link", name="Queues").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Mail queue")
    row = page.locator("tbody tr").first
    expect(row).to_contain_text("bob@example.com")
    for _ in range(50):  # the first attempt may still be under way
        if "Connection refused" in row.inner_text():
            break
        page.wait_for_timeout(200)
        page.reload()
    expect(row).to_contain_text("Connection refused")
    shoot(page, artifacts, "queue")
    queue_id = row.locator("code").inner_text()

    # Admin → Logs: its lines found by queue id, whole (the status= part
    # included), then the page follows the log.
    page.get_by_role("link", name="Logs").click()
    page.get_by_label("Search", exact=True).fill(queue_id)
    page.get_by_role("button", name="Show").click()
    log = page.locator("pre.log")
    expect(log).to_contain_text(f"{queue_id}: to=<bob@example.com>")
    expect(log).to_contain_text("status=deferred (connect to 127.0.0.1[127.0.0.1]:9")
    assert all(queue_id in line for line in log.inner_text().splitlines())
    shoot(page, artifacts, "logs-search")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download").click()
    assert queue_id in download.value.path().read_text()
    page.get_by_label("Follow").check()
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_role("status")).to_contain_text("Following")
    expect(page.get_by_label("Search", exact=True)).to_have_value(queue_id)
    # The message ticked and held, released, deleted from the list.
    page.get_by_role("link", name="Queues").click()
    page.get_by_label(f"Select {queue_id}").check()
    page.get_by_role("button", name="Hold").click()
    expect(page.get_by_role("status")).to_have_text("1 message was put on hold.")
    expect(page.locator("tbody tr").first).to_contain_text("hold")
    page.get_by_label(f"Select {queue_id}").check()
    page.get_by_role("button", name="Release").click()
    expect(page.get_by_role("status")).to_have_text("1 message was released for delivery.")
    page.get_by_label(f"Select {queue_id}").check()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("status")).to_have_text("1 message was deleted.")
    expect(page.get_by_text("The queue is empty")).to_be_visible()

    # Admin → send email: a refused address is named; a good message is queued.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin").click()
    page.get_by_role("link", name="Send email").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Send email")
    page.get_by_label("From").fill("postmaster@example.org")
    page.get_by_label("To").fill("bob@example.com, not an address")
    page.get_by_label("Subject").fill("Test")
    page.get_by_label("Message").fill("Hello")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#error\\.to")).to_contain_text("'not an address'")
    page.get_by_label("To").fill("bob@example.com")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status")).to_contain_text("Queued for delivery as")
    shoot(page, artifacts, "send-email")


def same_line(page: Page, label: Locator, field: Locator) -> bool:
    """
    Whether C{label} and C{field} are side by side: their boxes' middles at
    one height.
    """
    label_box, field_box = label.bounding_box(), field.bounding_box()
    assert label_box is not None and field_box is not None
    middle = label_box["y"] + label_box["height"] / 2
    return field_box["y"] <= middle <= field_box["y"] + field_box["height"]


def test_the_relay_host_port_stays_beside_its_label_on_a_phone(
    context: BrowserContext, artifacts: Path
) -> None:
    page = context.new_page()
    log_in_and_change_default_password(page)
    page.goto("/mta/config")
    for viewport in (PHONE, DESKTOP):
        page.set_viewport_size(viewport)
        for name in ("External relay host", "Internal relay host"):
            group = page.get_by_role("group", name=name)
            for label, field in (("port", group.get_by_role("spinbutton")),
                                 ("mx", group.get_by_role("checkbox"))):
                assert same_line(page, group.get_by_text(label, exact=True), field), (
                    viewport, name, label)
    shoot(page, artifacts, "mta-config-relay-hosts")


def test_a_gateway_shows_neither_portal_fields_nor_authorized_recipients(
    context: BrowserContext, artifacts: Path
) -> None:
    """
    Appliance role *Gateway*: Settings → General without the webmail
    messenger's fields, Admin → MTA without authorized recipients.
    """
    page = context.new_page()
    log_in_and_change_default_password(page)
    page.goto(f"{PREFERENCES}?advanced=1")
    expect(page.get_by_label("Portal base URL")).to_be_visible()
    page.locator('[id="inherit.appliance_role"]').uncheck()
    page.get_by_label("Appliance role").select_option(label="Gateway")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("status")).to_have_text("The settings were applied.")
    for label in ("Portal base URL", "Relay recipient", "Password reset enabled",
                  "Initial login allowed", "Signup URL"):
        expect(page.get_by_label(label, exact=True)).to_have_count(0)
    expect(page.get_by_label("Header external")).to_be_visible()
    expect(page.locator("p.role-note")).to_contain_text(
        "Not shown, as this appliance's role is Gateway")
    shoot(page, artifacts, "preferences-gateway")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin").click()
    tabs = page.get_by_role("navigation", name="Pages of the MTA")
    expect(tabs.get_by_role("link")).to_have_text(["Config", "Transports"])
    shoot(page, artifacts, "mta-config-gateway")
    # Still there by its address.
    page.goto("/mta/authorized-recipients")
    expect(tabs.get_by_role("link", name="Authorized recipients")).to_be_visible()

