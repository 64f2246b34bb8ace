"""
Admin → DLP in headless Chromium against a running appliance: patterns
added from the built-in library and written (a backreference refused with
why), a message with a card number quarantined (sent with swaks), viewed
(what hit, masked; its header fields) and released after the question.
Screenshots at desktop and phone widths in C{artifacts/}.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests import dlp_samples as samples
from tests.conftest import Appliance, api_call
from tests.peers import require_tool, run
from tests.sink import Sink
from tests.test_browser_admin import (  # noqa: F401 -- browser is a fixture
    DESKTOP,
    GOOD_PASSWORD,
    browser,
    log_in,
    shoot,
)
from tests.test_operations_browser import api

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def test_the_dlp_pages(browser: Browser, appliance: Appliance, artifacts: Path) -> None:  # noqa: F811
    status, _ = api_call(appliance, "POST", "/admin/password", {"password": GOOD_PASSWORD},
                         password="admin")
    assert status == 200
    sink = Sink()
    context = browser.new_context(base_url=appliance.admin_url, ignore_https_errors=True,
                                  viewport=DESKTOP)
    page = context.new_page()
    try:
        api(appliance, "PATCH", "/mta", {"relay_domains": ["example.com"], "transports": [
            {"domain": "partner.example", "host": "[127.0.0.1]", "port": sink.port},
            {"domain": "example.com", "host": "[127.0.0.1]", "port": sink.port}]})
        api(appliance, "PATCH", "/settings/global", {"dlp_enabled": True})
        log_in(page, GOOD_PASSWORD)
        page.get_by_role("link", name="DLP", exact=True).click()
        expect(page.locator("main")).to_contain_text("There are no patterns yet")
        page.get_by_label("credit-card", exact=False).check()
        page.get_by_role("button", name="Add").click()
        expect(page.get_by_role("status")).to_contain_text("The built-in patterns were added")

        page.get_by_label("Name", exact=True).fill("employee-id")
        page.get_by_label("Regular expression", exact=True).fill(r"(EMP)-\d+-\1")
        page.get_by_role("button", name="Save").click()
        expect(page.locator("#regex-error")).to_contain_text("Backreferences")
        page.get_by_label("Regular expression", exact=True).fill(r"\bEMP-\d{6}\b")
        page.get_by_label("Action").select_option("quarantine")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("status")).to_contain_text("The pattern was saved")
        expect(page.locator("table.dlp")).to_contain_text("employee-id")
        shoot(page, artifacts, "dlp-patterns")

        api(appliance, "POST", "/dlp/patterns", {
            "name": "credit-card", "regex": r"\b(?:\d[ -]?){12,18}\d\b", "validator": "luhn",
            "action": "quarantine"})
        run([require_tool("swaks"), "--server", f"127.0.0.1:{appliance.smtp_port}",
             "--from", "alice@example.com", "--to", "bob@partner.example", "--data", "-"],
            stdin=samples.message(subject="Payment details", attachments=[
                ("invoice.pdf", "application/pdf",
                 samples.pdf(f"Card {samples.CARD}"))]).removesuffix(b"\r\n"))
        deadline = time.monotonic() + 20
        while not api(appliance, "GET", "/dlp/quarantine")["messages"]:
            assert time.monotonic() < deadline, "nothing was quarantined"
            time.sleep(0.2)
        page.get_by_role("link", name="Quarantine").click()
        page.get_by_role("link", name="Payment details").click()
        expect(page.locator("table.findings")).to_contain_text("credit-card")
        expect(page.locator("table.findings")).to_contain_text("•••• •••• •••• 1111")
        expect(page.locator("dl.headers")).to_contain_text("Payment details")
        assert samples.CARD not in page.inner_text("main")
        shoot(page, artifacts, "dlp-message")
        page.on("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Release").click()
        expect(page.get_by_role("status")).to_contain_text("The message was released")
        shoot(page, artifacts, "dlp-quarantine")
        delivered = [c for c in sink.wait_for(2) if c.recipients == ["bob@partner.example"]]
        assert delivered and b"invoice.pdf" in delivered[0].content
    finally:
        context.close()
        sink.close()
