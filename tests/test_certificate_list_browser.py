"""
Admin → Certificates in headless Chromium with a store that fills several
pages: the count, the search box, the page links (which keep the search),
and screenshots at desktop and phone widths (kept in C{artifacts/}).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from playwright.sync_api import BrowserContext, expect

from cipherd.testing.certificates import ec_ca, many_certificates
from tests.conftest import Appliance, api_call
from tests.test_browser_admin import (  # noqa: F401 -- the fixtures are used by name
    GOOD_PASSWORD,
    browser,
    context,
    log_in,
    shoot,
)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

COUNT = 120
PEM = serialization.Encoding.PEM


def fill(appliance: Appliance) -> None:
    """
    The default password changed, a CA as a root and COUNT certificates it
    issued, through the API.
    """
    status, _ = api_call(appliance, "POST", "/admin/password", {"password": GOOD_PASSWORD},
                         password="admin")
    assert status == 200
    now = datetime.now(UTC)
    ca, key = ec_ca("Browser List CA", now - timedelta(days=1), now + timedelta(days=30))
    made = many_certificates(ca, key, COUNT, now - timedelta(days=1), now + timedelta(days=30),
                             domain="list.example")
    for path, data in (("/certificates?store=roots", ca.public_bytes(PEM)),
                       ("/certificates", b"".join(c.public_bytes(PEM) for c in made))):
        status, body = api_call(appliance, "POST", path, password=GOOD_PASSWORD, raw=data)
        assert status == 200, body


def test_pages_and_search_of_a_large_store(context: BrowserContext, appliance: Appliance,  # noqa: F811
                                           artifacts: Path) -> None:
    fill(appliance)
    page = context.new_page()
    log_in(page, GOOD_PASSWORD)
    page.get_by_role("link", name="Certificates", exact=True).click()
    count = page.locator("p.count")
    expect(count).to_have_text("1\u201350 of 120 certificates")
    expect(page.locator("table.certs tbody tr.valid")).to_have_count(50)
    expect(page.get_by_role("navigation", name="Pages")).to_contain_text("page 1 of 3")
    shoot(page, artifacts, "certificates-pages")

    page.get_by_role("link", name="next").click()
    expect(count).to_have_text("51\u2013100 of 120 certificates")
    page.get_by_role("link", name="last").click()
    expect(count).to_have_text("101\u2013120 of 120 certificates")
    expect(page.get_by_role("link", name="next")).to_have_count(0)

    search = page.get_by_role("search").get_by_label("Search")
    search.fill("USER11")  # user11, user110..user119
    page.get_by_role("button", name="Search").click()
    expect(count).to_have_text("1\u201311 of 11 certificates matching \u201cUSER11\u201d")
    expect(page.get_by_role("search").get_by_label("Search")).to_have_value("USER11")
    expect(page.get_by_role("navigation", name="Pages")).to_have_count(0)
    shoot(page, artifacts, "certificates-search")

    page.get_by_role("search").get_by_label("Search").fill("list.example")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="next").click()  # the search goes with the page
    expect(count).to_have_text("51\u2013100 of 120 certificates matching \u201clist.example\u201d")

    page.get_by_role("search").get_by_label("Search").fill("nobody@nowhere.example")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("main")).to_contain_text(
        "No certificate matches \u201cnobody@nowhere.example\u201d.")
    page.get_by_role("link", name="Show all").click()
    expect(count).to_have_text("1\u201350 of 120 certificates")
