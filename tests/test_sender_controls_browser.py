"""
Sender controls on the guide's two appliances, in Chromium: Alice sends
Dave a message he may not answer nor download (an image is only shown, a
spreadsheet not at all), and one he may read only with a second factor;
Dave sees each as the sender asked, and reads the second once he has set
up TOTP.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from cipherd.webmail import totp
from tests.test_browser_admin import DESKTOP, browser, shoot  # noqa: F401
from tests.test_portal_browser import link_in
from tests.test_webmail_accounts_browser import DAVE, DAVE_PASSWORD, dave_logs_in, send_to
from tests.test_webmail_appliance import Pair, pair, sign_up, text_of  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
BOARD_PACK = (
    b"From: Alice <alice@example.org>\r\nTo: dave@partner.example\r\n"
    b"Subject: Board pack\r\nX-Cipherd-Controls: no-reply, no-download\r\n"
    b"Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
    b"Content-Type: text/plain\r\n\r\nThe figures, for your eyes only.\r\n--b\r\n"
    b"Content-Type: text/csv\r\nContent-Disposition: attachment; filename=figures.csv\r\n\r\n"
    b"1,2\r\n--b\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=chart.png\r\n\r\n"
    + base64.b64encode(PNG) + b"\r\n--b--\r\n")
PAYROLL = BOARD_PACK.replace(b"Subject: Board pack\r\nX-Cipherd-Controls: no-reply, "
                             b"no-download\r\n", b"Subject: Payroll [require-totp]\r\n")


def test_sender_controls_in_the_portal(browser: Browser, pair: Pair,  # noqa: F811
                                       artifacts: Path) -> None:
    pair.trust_the_gateway()
    send_to(pair, DAVE, BOARD_PACK)
    (invitation,) = pair.arrived(DAVE)
    sign_up(link_in(text_of(invitation), "/signup"), DAVE_PASSWORD)
    send_to(pair, DAVE, PAYROLL)
    pair.arrived(DAVE, 2)
    logged = pair.gateway.wait_for_log("mpa", "; Controls: require_totp")
    assert "Controls: no_reply, no_download" in pair.gateway.wait_for_log(
        "mpa", "; Controls: no_reply, no_download") and logged

    context = browser.new_context(base_url=pair.webmail.portal_url, ignore_https_errors=True,
                                  viewport=DESKTOP)
    try:
        page = context.new_page()
        dave_logs_in(page)
        page.get_by_role("link", name="Board pack").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Board pack")
        notes = page.get_by_role("note")
        expect(notes.filter(has_text="does not allow replies")).to_have_count(1)
        expect(notes.filter(has_text="to be downloaded")).to_have_count(1)
        expect(page.get_by_role("link", name="Reply")).to_have_count(0)
        expect(page.get_by_role("link", name="Download (.eml)")).to_have_count(0)
        attachments = page.locator("section.attachments")
        expect(attachments.get_by_role("link", name="figures.csv")).to_have_count(0)
        expect(attachments).to_contain_text("not available: the sender does not allow "
                                            "downloads")
        shoot(page, artifacts, "portal-sender-controls")
        with page.expect_popup() as opening:
            attachments.get_by_role("link", name="chart.png").click()
        shown = opening.value
        shown.wait_for_load_state()
        expect(shown.locator("img")).to_have_count(1)  # the browser shows it
        shown.close()
        eml = page.request.get(page.url + "/eml")
        assert eml.status == 403 and "Not allowed for this message" in eml.text()

        page.goto("/inbox")
        page.get_by_role("link", name="Payroll").click()
        expect(page.get_by_role("heading", level=1)).to_have_text(
            "Not allowed for this message")
        expect(page.get_by_role("main")).to_contain_text(
            "The sender requires a second factor to read this message.")
        shoot(page, artifacts, "portal-second-factor-required")
        payroll = page.url
        page.get_by_role("link", name="Set up a second factor").click()
        key = page.locator("#secret").inner_text().replace(" ", "")
        secret = totp.base64.b32decode(key + "=" * (-len(key) % 8))
        page.get_by_label("Code").fill(totp.totp(secret, time.time()))
        page.get_by_role("button", name="Turn on the second factor").click()
        expect(page.get_by_role("status")).to_contain_text("The second factor is set up")
        page.goto(payroll)
        expect(page.get_by_role("heading", level=1)).to_have_text("Payroll")
        # Replies and downloads are allowed for this one.
        expect(page.get_by_role("link", name="Reply", exact=True)).to_have_count(1)
    finally:
        context.close()
