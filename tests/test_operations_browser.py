"""
The operations pages in headless Chromium against a running appliance with
mail sent by swaks: the dashboard (charts with traffic, the queue with a
deferred message, a certificate about to expire) and the audit log of the
changes made to set it up, at desktop and phone widths (screenshots in
C{artifacts/}).
"""

from __future__ import annotations

import base64
import re
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Appliance, api_call, free_port, insecure_tls
from tests.pki_factory import make_ca, make_user
from tests.sink import Sink
from tests.test_browser_admin import (  # noqa: F401 -- browser is a fixture
    DESKTOP,
    GOOD_PASSWORD,
    browser,
    log_in,
    shoot,
)
from tests.test_mta_appliance import swaks

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def api(appliance: Appliance, method: str, path: str, body: Any = None, **kw: Any) -> Any:
    status, answer = api_call(appliance, method, path, body, password=GOOD_PASSWORD, **kw)
    assert status < 300, (method, path, status, answer)
    return answer


def dashboard_shows(page: Page, text: str, timeout: float = 30.0) -> None:
    """
    Reload the dashboard until it shows C{text} (counts are stored every
    few seconds).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page.goto("/")
        if text in re.sub(r"\s+", " ", page.inner_text("main")):
            return
        time.sleep(1)
    raise AssertionError(f"{text!r} not on the dashboard:\n{page.inner_text('main')}")


def test_dashboard_and_audit_log_with_traffic(
        browser: Browser, appliance: Appliance, artifacts: Path) -> None:  # noqa: F811
    status, _ = api_call(appliance, "POST", "/admin/password", {"password": GOOD_PASSWORD},
                         password="admin")
    assert status == 200
    sink = Sink()
    try:
        down = free_port()  # nothing listens there: deferred
        api(appliance, "PATCH", "/mta", {"transports": [
            {"domain": "example.com", "host": "[127.0.0.1]", "port": sink.port},
            {"domain": "down.example", "host": "[127.0.0.1]", "port": down}]})
        api(appliance, "PATCH", "/settings/global", {"comment": "dashboard test"})
        now = datetime.now(UTC)
        ca = make_ca("Operations CA", not_before=now - timedelta(days=30),
                     not_after=now + timedelta(days=400))
        expiring = make_user("signer@example.org", ca, not_before=now - timedelta(days=300),
                             not_after=now + timedelta(days=12))
        api(appliance, "POST", "/certificates", raw=expiring.pkcs12(b"pw"),
            headers={"X-Password": "pw"})
        for n in range(6):
            swaks(appliance, "--to", f"user{n}@example.com")
        swaks(appliance, "--to", "someone@down.example")
        sink.wait_for(6)
    finally:
        sink.close()

    # The metrics moved with the mail (Prometheus text, parsed).
    request = urllib.request.Request(f"{appliance.admin_url}/metrics", headers={
        "Authorization": "Basic " + base64.b64encode(
            f"admin:{GOOD_PASSWORD}".encode()).decode()})
    with urllib.request.urlopen(request, context=insecure_tls()) as response:
        text = response.read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("cipherd_messages_received_total", (("tls", "false"),))] == 7
    assert samples[("cipherd_messages_handed_on_total", (("tls", "false"),))] == 6
    assert samples[("cipherd_recipients_total", (("outcome", "deferred"),))] == 1
    assert samples[("cipherd_queue_messages", (("state", "deferred"),))] == 1

    context = browser.new_context(base_url=appliance.admin_url, ignore_https_errors=True,
                                  viewport=DESKTOP)
    try:
        page = context.new_page()
        log_in(page, GOOD_PASSWORD)
        dashboard_shows(page, "Received 7 messages")
        main = re.sub(r"\s+", " ", page.inner_text("main"))
        assert "Delivered 6" in main and "Deferred 1" in main
        assert re.search(r"Queue: deferred 1 message oldest \d+ s", main), main
        assert "Plain (not encrypted) 7 7" in main
        assert "Expires soon" in main and "signer@example.org" in main
        assert "Reachable" in main and "GB free" in main
        expect(page.locator("svg.chart rect.received")).to_have_count(1)
        expect(page.locator("svg.chart rect.delivered")).to_have_count(1)
        shoot(page, artifacts, "dashboard")

        # The queue: the deferred message found, opened, its content shown.
        page.goto("/mta/queue")
        page.get_by_label("Find", exact=True).fill("down.example")
        page.get_by_role("button", name="Find").click()
        rows = page.locator("table.queue tbody tr")
        expect(rows).to_have_count(1)
        shoot(page, artifacts, "queue")
        rows.first.locator("a").click()
        expect(page.locator("dl.facts")).to_contain_text("someone@down.example")
        expect(page.locator("dl.facts")).to_contain_text("Connection refused")
        expect(page.locator("table.headers")).to_contain_text("Subject")
        shoot(page, artifacts, "queue-message")
        page.get_by_role("button", name="Show content").click()
        expect(page.locator("pre.message-content")).to_be_visible()
        shoot(page, artifacts, "queue-message-content")
        page.get_by_role("button", name="Hold").click()
        expect(page.get_by_role("status")).to_have_text("The message is on hold.")

        page.goto("/audit")
        expect(page.get_by_role("heading", level=1)).to_have_text("Logs")
        rows = page.locator("table.audit tbody tr")
        expect(rows.first).to_contain_text("held ")
        expect(rows.nth(1)).to_contain_text("showed the content of")
        expect(page.locator("table.audit")).to_contain_text("logged in")
        expect(page.locator("table.audit")).to_contain_text(
            "imported 1 certificate(s) into certificates")
        expect(page.locator("table.audit")).to_contain_text(
            "changed comment at global")
        expect(page.locator("table.audit")).to_contain_text("changed the MTA config")
        page.locator("table.audit details").first.locator("summary").click()
        page.get_by_label("Kind of change").select_option("settings")
        page.get_by_role("button", name="Show").click()
        expect(rows).to_have_count(1)
        rows.first.locator("summary").click()
        expect(rows.first).to_contain_text("comment")
        expect(rows.first).to_contain_text("inherited / default → dashboard test")
        shoot(page, artifacts, "audit")
    finally:
        context.close()
