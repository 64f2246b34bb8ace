"""
Admin → Webmail accounts in headless Chromium on the webmail appliance of
the guide's pair: accounts made by tunnelled mail, each action tried as
support would (the invitation again, a reset link, the second factor
removed, disable and enable, delete after the confirmation page), with what
reaches the recipients checked at the sink and screenshots at 1280 and
390 px in C{artifacts/}.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from cipherd.webmail import totp
from tests.peers import require_tool, run
from tests.test_browser_admin import DESKTOP, browser, log_in, shoot  # noqa: F401
from tests.test_mta_appliance import NEW_PASSWORD
from tests.test_portal_browser import link_in
from tests.test_webmail_appliance import FIRST, Pair, pair, sign_up, text_of  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

DAVE = "dave@partner.example"
ERIN = "erin@partner.example"
DAVE_PASSWORD = "tangerine-harbour-lantern-62"


def send_to(pair: Pair, recipient: str, message: bytes) -> None:  # noqa: F811
    run([require_tool("swaks"), "--server", f"127.0.0.1:{pair.gateway.smtp_port}",
         "--from", "alice@example.org", "--to", recipient, "--helo", "client.example.org",
         "--data", "-"], stdin=message.removesuffix(b"\r\n"))


def dave_logs_in(page: Page) -> None:
    """
    Dave logs in to the portal C{page}'s context is on.
    """
    page.goto("/login")
    page.get_by_label("Email address").fill(DAVE)
    page.get_by_label("Password", exact=True).fill(DAVE_PASSWORD)
    page.get_by_role("button", name="Log in").click()


def act(page: Page, button: str, status: str) -> None:
    page.get_by_role("button", name=button).click()
    expect(page.get_by_role("status")).to_contain_text(status)


def test_support_actions_on_webmail_accounts(browser: Browser, pair: Pair,  # noqa: F811
                                             artifacts: Path) -> None:
    pair.trust_the_gateway()
    send_to(pair, DAVE, FIRST)
    send_to(pair, ERIN, FIRST.replace(b"Contract draft", b"Board minutes"))
    (dave_invitation,) = pair.arrived(DAVE)
    pair.arrived(ERIN)
    # Dave signs up and sets up a second factor in the portal.
    sign_up(link_in(text_of(dave_invitation), "/signup"), DAVE_PASSWORD)
    portal = browser.new_context(base_url=pair.webmail.portal_url, ignore_https_errors=True,
                                 viewport=DESKTOP)
    try:
        page = portal.new_page()
        dave_logs_in(page)
        page.goto("/account/totp")
        key = page.locator("#secret").inner_text().replace(" ", "")
        secret = totp.base64.b32decode(key + "=" * (-len(key) % 8))
        page.get_by_label("Code").fill(totp.totp(secret, time.time()))
        page.get_by_role("button", name="Turn on the second factor").click()
        expect(page.get_by_role("status")).to_contain_text("The second factor is set up")
    finally:
        portal.close()

    admin = browser.new_context(base_url=pair.webmail.admin_url, ignore_https_errors=True,
                                viewport=DESKTOP)
    try:
        page = admin.new_page()
        log_in(page, NEW_PASSWORD)
        page.goto("/mta/config")
        page.locator("nav.sub").get_by_role("link", name="Webmail accounts").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Webmail accounts")
        rows = page.locator("table.accounts tbody tr")
        expect(rows).to_have_count(2)
        expect(rows.nth(0)).to_contain_text(DAVE)
        expect(rows.nth(0)).to_contain_text("2FA")
        expect(rows.nth(0)).to_contain_text("active")
        expect(rows.nth(1)).to_contain_text("invited")
        expect(rows.nth(1)).to_contain_text("never")
        shoot(page, artifacts, "webmail-accounts")

        # Erin never signed up: the invitation once more.
        page.get_by_role("link", name=ERIN).click()
        expect(page.locator("table.messages")).to_contain_text("Board minutes")
        shoot(page, artifacts, "webmail-account-invited")
        act(page, "Send the invitation again", "The sign-up invitation was sent again.")
        shoot(page, artifacts, "webmail-account-invite")
        again = pair.arrived(ERIN, 2)[-1]
        assert "/signup?token=" in text_of(again) and "Board minutes" in text_of(again)

        # Dave: a reset link, the second factor removed, disabled, enabled.
        page.goto("/webmail/accounts")
        page.get_by_role("link", name=DAVE).click()
        shoot(page, artifacts, "webmail-account-active")
        act(page, "Send a password reset link", "A password reset link was sent.")
        reset = pair.arrived(DAVE, 2)[-1]
        assert "/reset?token=" in text_of(reset)
        shoot(page, artifacts, "webmail-account-reset-password")
        act(page, "Remove the second factor", "The second factor was removed.")
        expect(page.get_by_role("button", name="Remove the second factor")).to_have_count(0)
        shoot(page, artifacts, "webmail-account-reset-totp")
        act(page, "Disable", "The account is disabled")
        expect(page.locator("dl.facts")).to_contain_text("disabled")
        shoot(page, artifacts, "webmail-account-disabled")
        act(page, "Enable", "The account is enabled.")
        expect(page.locator("dl.facts")).to_contain_text("active")

        # Erin deleted, after the confirmation page.
        page.goto("/webmail/accounts?q=erin")
        page.get_by_role("link", name=ERIN).click()
        page.get_by_role("button", name="Delete with the mailbox").click()
        expect(page.get_by_role("heading", level=1)).to_have_text(f"Delete {ERIN}?")
        shoot(page, artifacts, "webmail-account-delete")
        page.get_by_role("button", name="Delete the account and its mailbox").click()
        expect(page.get_by_role("status")).to_have_text(
            f"{ERIN} was deleted with its mailbox.")
        expect(page.locator("table.accounts tbody tr")).to_have_count(1)
        shoot(page, artifacts, "webmail-accounts-after-delete")

        # Every action is in the audit log.
        page.goto("/audit?action=webmail")
        for done in (f"deleted the webmail account {ERIN} and its 1 message(s)",
                     f"enabled the webmail account {DAVE}",
                     f"disabled the webmail account {DAVE}",
                     f"removed the second factor of {DAVE}",
                     f"sent a password reset link to {DAVE}",
                     f"sent the sign-up invitation again to {ERIN}"):
            expect(page.locator("table.audit")).to_contain_text(done)
    finally:
        admin.close()
