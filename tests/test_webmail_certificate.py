"""
Settings → webmail → "create webmail certificate" (guide §3.8, §3.9,
figures 14 to 16) and its API, C{POST /api/v1/webmail/sender-certificate}: the
gateway's self-signed tunnel certificate and key for the webmail sender,
whitelisted in the CTL, made once unless asked again.

The pages in memory (StubTreq), the API against a running appliance, the
whole walk in headless Chromium with screenshots.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from cipherd.testing import result_of
from cipherd.web.backend import WEBMAIL_CERTIFICATE_AVAILABLE, WEBMAIL_CERTIFICATE_SUBJECT
from tests.conftest import Appliance, api_call
from tests.harness import AdminHarness
from tests.test_browser_admin import (  # noqa: F401 -- browser and context are fixtures
    GOOD_PASSWORD,
    browser,
    context,
    log_in_and_change_default_password,
    shoot,
)

SENDER = "webmail@example.com"
PAGE = "/settings/global/webmail/certificate"
CREATED = "A certificate was created."


# The pages, in memory -------------------------------------------------------

@pytest.fixture
def admin(tmp_path: Path) -> Iterator[AdminHarness]:
    harness = AdminHarness(tmp_path)
    harness.login_with_new_password()
    yield harness
    harness.close()


def stored(admin: AdminHarness) -> int:
    """
    How many certificates the store holds, and the CTL entries.
    """
    return (len(result_of(admin.certificates.listing()))
            + len(result_of(admin.certificates.ctl())))


def field_errors(page: str) -> dict[str, str]:
    return {name: html.unescape(text)
            for name, text in re.findall(r'id="error\.(\w+)">([^<]*)<', page)}


def test_the_webmail_settings_link_to_the_page_where_there_is_a_webmail_sender(
        admin: AdminHarness) -> None:
    assert admin.post_form("/settings/domains", {"name": "example.com"}).code == 303
    assert admin.post_form("/settings/users", {"name": "alice@example.com"}).code == 303
    for base in ("/settings/global", "/settings/domains/example.com"):
        page = admin.get(f"{base}/webmail")
        assert f'<a href="{base}/webmail/certificate">create webmail certificate</a>' \
            in page.text
    # Users have no webmail sender of their own: no link, no page.
    assert "create webmail certificate" not in admin.get(
        "/settings/users/alice@example.com/webmail").text
    assert admin.get("/settings/users/alice@example.com/webmail/certificate").code == 404
    assert admin.get("/settings/domains/example.net/webmail/certificate").code == 404
    # Other settings pages do not link it.
    assert "create webmail certificate" not in admin.get("/settings/global/preferences").text


def test_the_form_proposes_the_webmail_sender_and_the_guides_subject(
        admin: AdminHarness) -> None:
    page = admin.get(PAGE)
    assert page.code == 200
    assert "<h1>Create webmail tunnel certificate for global preferences</h1>" in page.text
    assert "For sending to the secure webmail gateway, a valid sender certificate is " \
        "required." in page.text
    assert "No webmail sender is set for global preferences." in page.text
    assert 'id="email" name="email" value=""' in page.text

    for path, form in [
        ("/settings/global/webmail",
         [("fields", "webmail_sender"), ("value.webmail_sender", SENDER)]),
        ("/settings/domains", [("name", "example.org")]),
        ("/settings/domains/example.org/webmail",
         [("fields", "webmail_sender"), ("value.webmail_sender", "tunnel@example.org")]),
    ]:
        assert admin.post_form(path, form).code == 303, path
    page = admin.get(PAGE)
    assert "No webmail sender is set" not in page.text
    assert f'id="email" name="email" value="{SENDER}"' in page.text
    assert f'id="subject" name="subject" value="{WEBMAIL_CERTIFICATE_SUBJECT}"' in page.text
    domain = admin.get("/settings/domains/example.org/webmail/certificate")
    assert "<h1>Create webmail tunnel certificate for domain example.org</h1>" in domain.text
    assert 'id="email" name="email" value="tunnel@example.org"' in domain.text


def test_refused_fields_create_nothing(admin: AdminHarness) -> None:
    cases = [
        ({"email": "", "subject": "ok"}, {"email": "No webmail sender is set"}),
        ({"email": "webmail.example.com", "subject": "ok"},
         {"email": "'webmail.example.com' is not a valid email address: it has no @."}),
        ({"email": SENDER, "subject": "  "}, {"subject": "Enter a subject."}),
        ({"email": SENDER, "subject": "two\r\nlines"},
         {"subject": "The subject must be one line of text, without control characters."}),
        ({"email": "a@@b", "subject": "x" * 65},
         {"email": "it must contain exactly one @",
          "subject": "The subject is 65 characters long; a certificate's subject may "
                     "have at most 64."}),
    ]
    for form, expected in cases:
        page = admin.post_form(PAGE, form)
        assert page.code == 400, form
        assert "No certificate was created." in page.text
        errors = field_errors(page.text)
        assert errors.keys() == expected.keys(), (form, errors)
        for name, words in expected.items():
            assert words in errors[name], (form, errors)
    assert stored(admin) == 0


def test_a_form_without_the_csrf_token_is_refused(admin: AdminHarness) -> None:
    refused = admin.post_form(PAGE, {"email": SENDER, "subject": "s"}, csrf=None)
    assert refused.code == 403
    forged = admin.post_form(PAGE, {"email": SENDER, "subject": "s"}, csrf="forged")
    assert forged.code == 403
    assert stored(admin) == 0


def test_create_then_available(admin: AdminHarness) -> None:
    created = admin.post_form(PAGE, {"email": SENDER, "subject": "Tunnel"})
    assert created.code == 303
    assert created.header("location") == f"{PAGE}?created=1&email={SENDER}"
    page = admin.get(created.header("location") or "")
    link = re.search(r'is <a href="/pki/certificates/([0-9a-f]{64})">available</a>\. '
                     r'There is no need to create a new certificate\.', page.text)
    assert link, page.text
    assert CREATED in page.text
    details = admin.get(f"/pki/certificates/{link.group(1)}")
    assert "EMAILADDRESS=webmail@example.com, CN=Tunnel" in details.text
    assert "stored (encrypted)" in details.text
    assert "<dt>Certificate trust list</dt><dd>whitelisted</dd>" in details.text
    # Opened again (the webmail sender is not set: the address comes in the URL).
    again = admin.get(f"{PAGE}?email={SENDER}")
    assert link.group(0) in again.text and CREATED not in again.text
    # Without an address there is nothing to look for.
    assert "available</a>" not in admin.get(PAGE).text


# The API, against a running appliance ------------------------------------------

API_PATH = "/webmail/sender-certificate"


def call(appliance: Appliance, method: str, path: str, body: Any = None,
         password: str = GOOD_PASSWORD) -> tuple[int, Any]:
    return api_call(appliance, method, path, body, password=password)


@pytest.fixture
def gateway(appliance: Appliance) -> Appliance:
    status, _ = call(appliance, "POST", "/admin/password", {"password": GOOD_PASSWORD},
                     password="admin")
    assert status == 200
    return appliance


def sender_certificates(appliance: Appliance) -> list[dict[str, Any]]:
    status, body = call(appliance, "GET", f"/certificates?email={SENDER}")
    assert status == 200
    certificates: list[dict[str, Any]] = body["certificates"]
    return certificates


@pytest.mark.e2e
def test_api_creates_once_unless_forced(gateway: Appliance) -> None:
    status, _ = call(gateway, "PATCH", "/settings/global", {"webmail_sender": SENDER})
    assert status == 200

    status, made = call(gateway, "POST", API_PATH)
    assert status == 201
    assert made == {"thumbprint": made["thumbprint"], "email": SENDER,
                    "subject": WEBMAIL_CERTIFICATE_SUBJECT, "created": True}
    [listed] = sender_certificates(gateway)
    assert listed["thumbprint"] == made["thumbprint"]
    assert listed["has_private_key"] is True
    assert listed["self_signed"] is True
    assert listed["valid"] is True
    assert listed["ctl"] == "whitelisted"
    status, ctl = call(gateway, "GET", "/ctl")
    assert {"thumbprint": made["thumbprint"], "status": "whitelisted"} in ctl["ctl"]
    status, details = call(gateway, "GET", f"/certificates/{made['thumbprint']}")
    assert details["purposes"]["signing"]["valid"] is True
    assert details["subject"] == f"EMAILADDRESS={SENDER}, CN={WEBMAIL_CERTIFICATE_SUBJECT}"

    # Asked again: the valid one is named, nothing new is made.
    status, again = call(gateway, "POST", API_PATH, {})
    assert (status, again) == (200, {"thumbprint": made["thumbprint"], "email": SENDER,
                                     "created": False,
                                     "message": WEBMAIL_CERTIFICATE_AVAILABLE})
    assert again["message"] == ("A valid webmail certificate is available. There is no "
                                "need to create a new certificate.")
    assert len(sender_certificates(gateway)) == 1

    # "force" makes another, with the subject asked for.
    status, forced = call(gateway, "POST", API_PATH,
                          {"force": True, "subject": "Second tunnel certificate"})
    assert status == 201 and forced["created"] is True
    assert forced["thumbprint"] != made["thumbprint"]
    assert forced["subject"] == "Second tunnel certificate"
    listed_now = sender_certificates(gateway)
    assert {c["thumbprint"] for c in listed_now} == {made["thumbprint"], forced["thumbprint"]}
    assert all(c["ctl"] == "whitelisted" and c["has_private_key"] for c in listed_now)

    # Another address than the webmail sender's, given in the body.
    status, other = call(gateway, "POST", API_PATH, {"email": "tunnel@example.org"})
    assert status == 201 and other["email"] == "tunnel@example.org"


@pytest.mark.e2e
def test_api_refusals_create_nothing(gateway: Appliance) -> None:
    # No webmail sender configured and no address given.
    status, body = call(gateway, "POST", API_PATH)
    assert status == 400
    assert body["errors"] == {"email": "No webmail sender is set (Settings → webmail → "
                                       "Webmail sender) and no email address was given."}
    for request, field, words in [
        ({"email": "not-an-address"}, "email",
         "'not-an-address' is not a valid email address: it has no @."),
        ({"email": SENDER, "subject": ""}, "subject", "Enter a subject."),
        ({"email": SENDER, "subject": "a\nb"}, "subject", "one line"),
        ({"email": SENDER, "subject": "s" * 65}, "subject", "at most 64"),
        ({"email": SENDER, "force": "yes"}, "force", "must be true or false"),
        ({"email": 7}, "email", "must be a string"),
    ]:
        status, body = call(gateway, "POST", API_PATH, request)
        assert status == 400, request
        assert body["error"] == "Some values were refused; nothing was created."
        assert words in body["errors"][field], (request, body)
    status, body = call(gateway, "POST", API_PATH, ["not", "an", "object"])
    assert status == 400 and "errors" not in body
    status, listing = call(gateway, "GET", "/certificates")
    assert listing["certificates"] == []
    status, ctl = call(gateway, "GET", "/ctl")
    assert ctl["ctl"] == []


@pytest.mark.e2e
def test_api_needs_the_default_password_changed(appliance: Appliance) -> None:
    status, body = call(appliance, "POST", API_PATH, {"email": SENDER}, password="admin")
    assert status == 403 and "default admin password" in body["error"]


# The guide's walk in a browser -------------------------------------------------

def open_certificate_page(page: Page) -> None:
    page.get_by_role("link", name="Settings", exact=True).click()
    page.get_by_role("link", name="Webmail", exact=True).click()
    page.get_by_role("link", name="create webmail certificate").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Create webmail tunnel certificate for global preferences")


@pytest.mark.e2e
@pytest.mark.browser
def test_create_the_gateway_tunnel_certificate_as_the_guide_says(
        context: BrowserContext,  # noqa: F811 -- the fixture imported above
        appliance: Appliance, artifacts: Path) -> None:
    page = context.new_page()
    log_in_and_change_default_password(page)

    # Without a webmail sender the page says so, and Close leads to where it is set.
    open_certificate_page(page)
    expect(page.locator("p.warning")).to_contain_text(
        "No webmail sender is set for global preferences.")
    expect(page.get_by_label("Email address")).to_have_value("")
    shoot(page, artifacts, "webmail-certificate-no-sender")
    page.get_by_role("link", name="Close").click()

    # §3.6: the webmail sender first.
    page.locator('[id="inherit.webmail_sender"]').uncheck()
    page.locator('[id="value.webmail_sender"]').fill(SENDER)
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("status")).to_have_text("The settings were applied.")
    shoot(page, artifacts, "webmail-settings")

    # §3.8, figure 15.
    open_certificate_page(page)
    expect(page.get_by_text("For sending to the secure webmail gateway, a valid sender "
                            "certificate is required.")).to_be_visible()
    expect(page.get_by_label("Email address")).to_have_value(SENDER)
    expect(page.get_by_label("Subject")).to_have_value(WEBMAIL_CERTIFICATE_SUBJECT)
    expect(page.get_by_text("email address of webmail sender")).to_be_visible()
    expect(page.get_by_text("subject of certificate")).to_be_visible()
    expect(page.get_by_role("status")).to_have_count(0)
    shoot(page, artifacts, "webmail-certificate")

    # A refused address: said at the field, nothing made.
    page.get_by_label("Email address").fill("webmail.example.com")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("alert")).to_have_text("No certificate was created. See the "
                                                   "messages below.")
    expect(page.locator('[id="error.email"]')).to_have_text(
        "'webmail.example.com' is not a valid email address: it has no @.")
    expect(page.get_by_label("Email address")).to_have_attribute("aria-invalid", "true")
    shoot(page, artifacts, "webmail-certificate-refused")

    # Figure 16.
    page.get_by_label("Email address").fill(SENDER)
    page.get_by_role("button", name="Create").click()
    status = page.get_by_role("status")
    expect(status).to_contain_text(CREATED)
    expect(status).to_contain_text(WEBMAIL_CERTIFICATE_AVAILABLE)
    shoot(page, artifacts, "webmail-certificate-created")

    # Opened again: no need for another.
    page.get_by_role("link", name="Close").click()
    expect(page).to_have_url(f"{appliance.admin_url}/settings/global/webmail")
    page.get_by_role("link", name="create webmail certificate").click()
    expect(status).to_have_text(WEBMAIL_CERTIFICATE_AVAILABLE)
    expect(page.get_by_text(CREATED)).to_have_count(0)
    shoot(page, artifacts, "webmail-certificate-available")

    # §3.9: "available" leads to the certificate, to download it.
    status.get_by_role("link", name="available").click()
    expect(page).to_have_url(re.compile(r"/pki/certificates/[0-9a-f]{64}$"))
    facts = page.locator("dl.facts")
    expect(facts).to_contain_text(f"EMAILADDRESS={SENDER}")
    expect(facts).to_contain_text(f"CN={WEBMAIL_CERTIFICATE_SUBJECT}")
    expect(facts).to_contain_text("stored (encrypted)")
    expect(facts).to_contain_text("whitelisted")
    expect(facts).to_contain_text("valid: The certificate is whitelisted")
    expect(page.get_by_role("link", name="download certificate (PEM)")).to_be_visible()
    shoot(page, artifacts, "webmail-certificate-details")
