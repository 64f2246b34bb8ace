"""
Admin → CA in headless Chromium against a running appliance: create a root
CA from the form, issue a certificate for an internal user, find it in the
issued list, download its PKCS#12 file, revoke it (after the confirmation
question) and see the CRL count it; a CSV of addresses lands in Pending.
Screenshots of every page at desktop and phone widths in C{artifacts/}.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12
from playwright.sync_api import Browser, Dialog, expect

from tests.conftest import Appliance, api_call
from tests.test_browser_admin import (  # noqa: F401 -- browser is a fixture
    DESKTOP,
    GOOD_PASSWORD,
    browser,
    log_in,
    shoot,
)
from tests.test_operations_browser import api

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def test_the_ca_pages(browser: Browser, appliance: Appliance, artifacts: Path,  # noqa: F811
                      tmp_path: Path) -> None:
    status, _ = api_call(appliance, "POST", "/admin/password", {"password": GOOD_PASSWORD},
                         password="admin")
    assert status == 200
    api(appliance, "PATCH", "/mta", {"relay_domains": ["example.com"]})
    context = browser.new_context(base_url=appliance.admin_url, ignore_https_errors=True,
                                  viewport=DESKTOP, accept_downloads=True)
    page = context.new_page()
    try:
        log_in(page, GOOD_PASSWORD)
        page.get_by_role("link", name="CA", exact=True).click()
        expect(page.locator("main")).to_contain_text("There is no CA yet")
        shoot(page, artifacts, "ca-empty")

        page.get_by_label("Subject").fill("CN=Example Mail CA, O=Example")
        page.get_by_label("Key", exact=True).select_option("ec-p256")
        expect(page.get_by_label("CRL distribution point")).to_have_value(
            re.compile(r"^http://.+/crl/ca1\.crl$"))
        page.get_by_role("button", name="Create").click()
        expect(page.get_by_role("status")).to_contain_text("The CA was created")
        expect(page.locator("main")).to_contain_text("0 revoked")
        shoot(page, artifacts, "ca-authority")

        page.get_by_role("link", name="Request certificate").click()
        page.get_by_label("Email address").fill("outsider@elsewhere.org")
        page.get_by_role("button", name="Issue").click()
        expect(page.get_by_role("alert")).to_contain_text("not an internal address")
        page.get_by_label("Email address").fill("alice@example.com")
        page.get_by_role("button", name="Issue").click()
        expect(page.get_by_role("status")).to_contain_text("The certificate was issued")
        expect(page.locator("main")).to_contain_text("valid")
        shoot(page, artifacts, "ca-certificate")

        page.get_by_label("Password for the file").fill("a long file password")
        with page.expect_download() as download:
            page.get_by_role("button", name="Download .p12").click()
        saved = tmp_path / "alice.p12"
        download.value.save_as(saved)
        loaded = pkcs12.load_pkcs12(saved.read_bytes(), b"a long file password")
        assert loaded.cert is not None and loaded.key is not None

        questions: list[str] = []

        def answer(dialog: Dialog) -> None:
            questions.append(dialog.message)
            dialog.accept()

        page.on("dialog", answer)
        page.get_by_label("Reason").select_option("key_compromise")
        page.get_by_role("button", name="Revoke").click()
        expect(page.get_by_role("status")).to_contain_text("The certificate was revoked")
        expect(page.locator("main")).to_contain_text("revoked: Key compromise")
        assert questions == ["Revoke this certificate? This cannot be undone."]

        page.get_by_role("link", name="Issued").click()
        expect(page.locator("table.issued")).to_contain_text("alice@example.com")
        expect(page.locator("table.issued")).to_contain_text("revoked (key compromise)")
        shoot(page, artifacts, "ca-issued")

        page.get_by_role("link", name="Request certificate").click()
        page.get_by_label("…or addresses, one per line").fill(
            "bob@example.com\ncarol@example.com\nzed@elsewhere.org")
        page.get_by_role("button", name="Issue").click()
        expect(page.get_by_role("status")).to_contain_text("3 certificate requests queued")
        shoot(page, artifacts, "ca-pending")

        page.get_by_role("link", name="CAs").click()
        expect(page.locator("table.cas")).to_contain_text("1 revoked")
        shoot(page, artifacts, "ca-list")
    finally:
        context.close()
