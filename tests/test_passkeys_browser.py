"""
A passkey in Chromium, with its virtual authenticator (the DevTools
protocol's WebAuthn domain, driven through Playwright), on the guide's two
appliances: Dave, who got a message through the gateway, signs up, adds a
passkey on his account page, logs out, and signs in with the passkey
alone; then, with a password and the passkey as the second factor; and Erin,
who never signs up, signs in with a code mailed to her.  The
portal is reached as https://localhost (a passkey's relying party is a
host name, not an address).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.test_browser_admin import DESKTOP, browser, shoot  # noqa: F401
from tests.test_mta_appliance import api
from tests.test_portal_browser import link_in
from tests.test_webmail_accounts_browser import DAVE, DAVE_PASSWORD, send_to
from tests.test_webmail_appliance import FIRST, Pair, pair, sign_up, text_of  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def log_out(page: Page) -> None:
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Log in to read your secure messages")


def test_a_passkey_in_chromium(browser: Browser, pair: Pair,  # noqa: F811
                               artifacts: Path) -> None:
    portal = f"https://localhost:{pair.webmail.portal_port}"
    api(pair.webmail, "PATCH", "/settings/global", {"portal_base_url": portal})
    pair.trust_the_gateway()
    send_to(pair, DAVE, FIRST)
    (invitation,) = pair.arrived(DAVE)
    sign_up(link_in(text_of(invitation), "/signup").replace(portal, pair.webmail.portal_url),
            DAVE_PASSWORD)

    context = browser.new_context(base_url=portal, ignore_https_errors=True, viewport=DESKTOP)
    try:
        page = context.new_page()
        devtools = context.new_cdp_session(page)
        devtools.send("WebAuthn.enable")
        authenticator = devtools.send("WebAuthn.addVirtualAuthenticator", {"options": {
            "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
            "hasUserVerification": True, "isUserVerified": True,
            "automaticPresenceSimulation": True}})["authenticatorId"]

        page.goto("/login")
        page.get_by_label("Email address").fill(DAVE)
        page.get_by_label("Password", exact=True).fill(DAVE_PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Inbox")
        page.get_by_role("link", name="Account").click()
        page.get_by_label("Name of the new passkey").fill("Work laptop")
        page.get_by_role("button", name="Add a passkey").click()
        expect(page.get_by_role("status")).to_contain_text("The passkey was added")
        expect(page.locator("ul.passkeys")).to_contain_text("Work laptop")
        shoot(page, artifacts, "portal-passkeys")
        (credential,) = devtools.send("WebAuthn.getCredentials",
                                      {"authenticatorId": authenticator})["credentials"]
        assert credential["isResidentCredential"]
        count = credential["signCount"]

        # Without a password.
        log_out(page)
        page.get_by_role("button", name="Sign in with a passkey").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Inbox")
        expect(page.get_by_role("link", name="Contract draft")).to_have_count(1)

        # With the password, the passkey as the second factor.
        log_out(page)
        page.get_by_label("Email address").fill(DAVE)
        page.get_by_label("Password", exact=True).fill(DAVE_PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Enter your one-time code")
        shoot(page, artifacts, "portal-passkey-second-factor")
        page.get_by_role("button", name="Use a passkey").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Inbox")
        (used,) = devtools.send("WebAuthn.getCredentials",
                                {"authenticatorId": authenticator})["credentials"]
        assert used["signCount"] == count + 2  # each use counted (the server checks it rises)
    finally:
        context.close()


def test_a_mailed_code_in_chromium(browser: Browser, pair: Pair,  # noqa: F811
                                   artifacts: Path) -> None:
    """
    Erin never signs up: from the login page she asks for a code by mail,
    and the code signs her in (a wrong one first is refused).
    """
    erin = "erin@partner.example"
    api(pair.webmail, "PATCH", "/settings/global", {"webmail_email_code_login": True})
    pair.trust_the_gateway()
    send_to(pair, erin, FIRST.replace(b"dave@partner.example", erin.encode()))
    (invitation,) = pair.arrived(erin)
    assert "/signup?token=" in text_of(invitation)
    context = browser.new_context(base_url=pair.webmail.portal_url, ignore_https_errors=True,
                                  viewport=DESKTOP)
    try:
        page = context.new_page()
        page.goto("/login")
        page.get_by_role("link", name="Email me a sign-in code instead").click()
        page.get_by_label("Email address").fill(erin)
        page.get_by_role("button", name="Email me a code").click()
        expect(page.get_by_role("status")).to_contain_text("a code is on its way")
        mailed = text_of(pair.arrived(erin, 2)[-1])
        code = re.search(r"^\s+(\d{8})\s*$", mailed, re.MULTILINE)
        assert code is not None, mailed
        page.get_by_label("Sign-in code").fill("00000000")
        page.get_by_role("button", name="Sign in", exact=True).click()
        expect(page.get_by_role("alert")).to_contain_text("That code is not right")
        shoot(page, artifacts, "portal-email-code")
        page.get_by_label("Sign-in code").fill(code.group(1))
        page.get_by_role("button", name="Sign in", exact=True).click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Inbox")
        expect(page.get_by_role("link", name="Contract draft")).to_have_count(1)
    finally:
        context.close()
