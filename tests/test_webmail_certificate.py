"""
Both ends of the webmail tunnel get their certificate the same way:

- gateway side, Settings → webmail → "create webmail certificate" (guide
  §3.8, §3.9, figures 14 to 16) and C{POST /api/v1/webmail/sender-certificate}:
  the self-signed tunnel certificate and key for the webmail sender;
- webmail side, Settings → General → "webmail certificate" (guide §2.3.11,
  §2.3.12, figures 9 and 10) and C{POST /api/v1/webmail/relay-certificate}:
  the one for the relay recipient, which the gateway encrypts to.

Each is whitelisted in the CTL and made once unless asked again.

The pages in memory (StubTreq), the API against a running appliance, the
whole walk in headless Chromium with screenshots.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from cipherd.pki.certs import thumbprint
from cipherd.pki.trust import CTLStatus
from cipherd.testing import result_of
from cipherd.web.backend import WEBMAIL_CERTIFICATE_AVAILABLE, WEBMAIL_CERTIFICATE_SUBJECT
from tests.conftest import Appliance, api_call
from tests.harness import AdminHarness
from tests.pki_factory import EMAIL_EKU, START, make_user
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
# Guide §2.3.6: the relay recipient on the webmail side.
RELAY = "webmail@webmail.local"
RELAY_PAGE = "/settings/global/preferences/certificate"
RELAY_SUBJECT = "Webmail relay recipient certificate"


# The pages, in memory -------------------------------------------------------

@pytest.fixture
def admin(signed_in_admin: AdminHarness) -> AdminHarness:
    return signed_in_admin


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


@pytest.mark.parametrize(("path", "email", "other_side"), [
    (PAGE, SENDER, "imported there and whitelisted in its certificate trust list"),
    (RELAY_PAGE, RELAY, "download it and import it on the gateway"),
])
def test_another_certificate_while_one_is_valid_only_when_confirmed(
        admin: AdminHarness, path: str, email: str, other_side: str) -> None:
    """
    Create on a page that says a valid one is available asks first: a
    second sender certificate is signed with at once, and the webmail
    appliance refuses its messages until it is imported and whitelisted.
    """
    assert admin.post_form(path, {"email": email, "subject": "First"}).code == 303
    (first,) = result_of(admin.certificates.listing())
    asked = admin.post_form(path, {"email": email, "subject": "Second"})
    assert asked.code == 200
    assert result_of(admin.certificates.listing()) == [first]  # nothing made
    alert = re.search(r'<div class="confirm-box" role="alert">(.*?)</div>', asked.text, re.S)
    assert alert, asked.text
    assert available_link(alert.group(1)) == first.row.thumbprint  # the guide's sentence
    assert other_side in alert.group(1)
    assert "Nothing was created. Create another certificate anyway?" in alert.group(1)
    # What was typed stays, and the button now says what it does.
    assert 'id="subject" name="subject" value="Second"' in asked.text
    assert '<input type="hidden" name="confirm" value="yes">' in asked.text
    assert ">Create a new certificate anyway</button>" in asked.text
    confirmed = admin.post_form(path, {"email": email, "subject": "Second", "confirm": "yes"})
    assert confirmed.code == 303
    rows = result_of(admin.certificates.listing())
    assert len(rows) == 2
    # The list tells the two apart: thumbprint prefix and when each began.
    listed = admin.get("/pki/certificates").text
    for row in rows:
        assert f"SHA-256 {row.row.thumbprint[:16]}…" in listed
        began = row.certificate.not_valid_before_utc
        assert f'<td class="date">{began:%Y-%m-%d %H:%M} \N{EN DASH}<br>' in listed


def tunnel_warnings(page: str) -> list[str]:
    return [html.unescape(w) for w in
            re.findall(r'<p class="warning tunnel-warning">([^<]*)</p>', page)]


def test_a_tunnel_address_without_its_certificate_is_accepted_and_said(
        admin: AdminHarness) -> None:
    """
    The guide sets the addresses first and makes the certificates after:
    an address without one is stored, and its page says what is missing
    until it is there.
    """
    webmail = "/settings/global/webmail"
    assert admin.post_form(webmail, [
        ("fields", "webmail_sender"), ("value.webmail_sender", SENDER),
        ("fields", "webmail_recipient"), ("value.webmail_recipient", RELAY)]).code == 303
    sender, recipient = tunnel_warnings(admin.get(webmail).text)
    assert sender.startswith(f"There is no valid signing certificate with private key for "
                             f"the webmail sender {SENDER}. Tunnel messages cannot be signed")
    assert recipient.startswith(f"There are no valid S/MIME certificates for the webmail "
                                f"recipient {RELAY}")
    assert admin.post_form(PAGE, {"email": SENDER, "subject": "Tunnel"}).code == 303
    assert tunnel_warnings(admin.get(webmail).text) == [recipient]
    # The relay recipient's certificate, imported and whitelisted (here:
    # made on this side, as one appliance could serve both roles).
    made = result_of(admin.certificates.create_tunnel_certificate(RELAY, RELAY_SUBJECT))
    result_of(admin.certificates.set_ctl(made, CTLStatus.WHITELISTED))
    assert tunnel_warnings(admin.get(webmail).text) == []

    general = "/settings/global/preferences"
    assert admin.post_form(general, [
        ("fields", "relay_recipient"), ("value.relay_recipient", "relay@webmail.local")]
        ).code == 303
    (relay,) = tunnel_warnings(admin.get(general).text)
    assert relay.startswith("There is no valid encryption certificate with private key for "
                            "the relay recipient relay@webmail.local.")
    assert admin.post_form(RELAY_PAGE, {"email": "relay@webmail.local", "subject": "R"}
                           ).code == 303
    assert tunnel_warnings(admin.get(general).text) == []


def available_link(page: str) -> str | None:
    """
    The thumbprint the "A valid webmail certificate is available" notice
    links, or C{None} when the page has no such notice.
    """
    match = re.search(r'is <a href="/pki/certificates/([0-9a-f]{64})">available</a>\. '
                      r'There is no need to create a new certificate\.', page)
    return match.group(1) if match else None


def test_the_general_page_links_the_relay_certificate_page(admin: AdminHarness) -> None:
    # Guide figure 9: "webmail certificate" on the global preferences.
    page = admin.get("/settings/global/preferences")
    assert f'<a href="{RELAY_PAGE}">webmail certificate</a>' in page.text
    # The relay recipient is global only: no link, no page elsewhere.
    assert admin.post_form("/settings/domains", {"name": "example.com"}).code == 303
    assert "webmail certificate</a>" not in admin.get(
        "/settings/domains/example.com/preferences").text
    for path in ("/settings/domains/example.com/preferences/certificate",
                 "/settings/global/encryption/certificate",
                 "/settings/global/nonsense/certificate"):
        assert admin.get(path).code == 404, path


def test_the_relay_form_proposes_the_relay_recipient(admin: AdminHarness) -> None:
    page = admin.get(RELAY_PAGE)
    assert page.code == 200
    assert "<h1>Create webmail relay recipient certificate</h1>" in page.text
    assert "For receiving email from the gateway, a valid recipient certificate is " \
        "required." in page.text
    assert ("No relay recipient is set for global preferences. Set “Relay recipient” on the "
            '<a href="/settings/global/preferences">general settings</a> page') in page.text
    assert 'id="email" name="email" value=""' in page.text
    assert '<p class="help" id="help.email">email address of relay recipient</p>' in page.text
    assert '<a href="/settings/global/preferences">Close</a>' in page.text

    assert admin.post_form("/settings/global/preferences", [
        ("fields", "relay_recipient"), ("value.relay_recipient", RELAY)]).code == 303
    page = admin.get(RELAY_PAGE)
    assert "No relay recipient is set" not in page.text
    assert f'id="email" name="email" value="{RELAY}"' in page.text
    assert f'id="subject" name="subject" value="{RELAY_SUBJECT}"' in page.text
    assert available_link(page.text) is None


def test_relay_refusals_create_nothing(admin: AdminHarness) -> None:
    for form, field, words in [
        ({"email": "", "subject": "ok"}, "email",
         "No relay recipient is set (Settings → General → Relay recipient) and no email "
         "address was given."),
        ({"email": "webmail.local", "subject": "ok"}, "email", "it has no @"),
        ({"email": RELAY, "subject": ""}, "subject", "Enter a subject."),
    ]:
        page = admin.post_form(RELAY_PAGE, form)
        assert page.code == 400, form
        errors = field_errors(page.text)
        assert list(errors) == [field] and words in errors[field], (form, errors)
    assert admin.post_form(RELAY_PAGE, {"email": RELAY, "subject": "s"}, csrf=None).code == 403
    assert stored(admin) == 0


def test_the_relay_certificate_needs_a_key_and_encryption(admin: AdminHarness) -> None:
    """
    Available means the gateway can encrypt to it and this side open it: a
    certificate without its key, or one for signing only, does not count.
    """
    until = datetime(2030, 1, 1, tzinfo=UTC)
    public = make_user(RELAY, None, not_before=START, not_after=until, eku=EMAIL_EKU)
    signing = make_user(RELAY, None, not_before=START, not_after=until, eku=EMAIL_EKU,
                        key_usage={"digital_signature": True})
    for identity, key in ((public, None), (signing, signing.key)):
        made = result_of(admin.certificates.add_certificate(identity.cert, key))
        result_of(admin.certificates.set_ctl(made, CTLStatus.WHITELISTED))
    assert available_link(admin.get(f"{RELAY_PAGE}?email={RELAY}").text) is None
    # The same signing certificate is what the sender page looks for.
    assert available_link(admin.get(f"{PAGE}?email={RELAY}").text) == \
        thumbprint(signing.cert)

    created = admin.post_form(RELAY_PAGE, {"email": RELAY, "subject": RELAY_SUBJECT})
    assert created.code == 303
    assert created.header("location") == f"{RELAY_PAGE}?created=1&email={RELAY}"
    page = admin.get(created.header("location") or "")
    assert CREATED in page.text
    made = available_link(page.text)
    assert made not in (None, thumbprint(public.cert), thumbprint(signing.cert))
    details = admin.get(f"/pki/certificates/{made}")
    assert f"EMAILADDRESS={RELAY}, CN={RELAY_SUBJECT}" in details.text
    assert "stored (encrypted)" in details.text
    assert "<dt>Certificate trust list</dt><dd>whitelisted</dd>" in details.text
    # §2.3.12: it is downloaded from there for the gateway.
    assert f'href="/pki/certificates/{made}.pem"' in details.text
    again = admin.get(RELAY_PAGE + f"?email={RELAY}")
    assert available_link(again.text) == made and CREATED not in again.text


# The API, against a running appliance ------------------------------------------

@dataclass(frozen=True)
class End:
    """
    One end of the tunnel as its API sees it.

    @ivar purpose: the certificate details' purpose it must be valid for.
    """

    path: str
    setting: str
    address: str
    subject: str
    unset: str
    purpose: str


SENDER_END = End("/webmail/sender-certificate", "webmail_sender", SENDER,
                 WEBMAIL_CERTIFICATE_SUBJECT,
                 "No webmail sender is set (Settings → webmail → Webmail sender) and no email "
                 "address was given.", "signing")
RELAY_END = End("/webmail/relay-certificate", "relay_recipient", RELAY, RELAY_SUBJECT,
                "No relay recipient is set (Settings → General → Relay recipient) and no "
                "email address was given.", "encryption")
BOTH_ENDS = pytest.mark.parametrize("end", [SENDER_END, RELAY_END], ids=["sender", "relay"])


def call(appliance: Appliance, method: str, path: str, body: Any = None,
         password: str = GOOD_PASSWORD) -> tuple[int, Any]:
    return api_call(appliance, method, path, body, password=password)


@pytest.fixture
def gateway(appliance: Appliance) -> Appliance:
    status, _ = call(appliance, "POST", "/admin/password", {"password": GOOD_PASSWORD},
                     password="admin")
    assert status == 200
    return appliance


def certificates_of(appliance: Appliance, email: str) -> list[dict[str, Any]]:
    status, body = call(appliance, "GET", f"/certificates?email={email}")
    assert status == 200
    certificates: list[dict[str, Any]] = body["certificates"]
    return certificates


@pytest.mark.e2e
@BOTH_ENDS
def test_api_creates_once_unless_forced(gateway: Appliance, end: End) -> None:
    status, _ = call(gateway, "PATCH", "/settings/global", {end.setting: end.address})
    assert status == 200

    status, made = call(gateway, "POST", end.path)
    assert status == 201
    assert made == {"thumbprint": made["thumbprint"], "email": end.address,
                    "subject": end.subject, "created": True}
    [listed] = certificates_of(gateway, end.address)
    assert listed["thumbprint"] == made["thumbprint"]
    assert listed["has_private_key"] is True
    assert listed["self_signed"] is True
    assert listed["valid"] is True
    assert listed["ctl"] == "whitelisted"
    status, ctl = call(gateway, "GET", "/ctl")
    assert {"thumbprint": made["thumbprint"], "status": "whitelisted"} in ctl["ctl"]
    status, details = call(gateway, "GET", f"/certificates/{made['thumbprint']}")
    assert details["purposes"][end.purpose]["valid"] is True
    assert details["subject"] == f"EMAILADDRESS={end.address}, CN={end.subject}"

    # Asked again: the valid one is named, nothing new is made.
    status, again = call(gateway, "POST", end.path, {})
    assert (status, again) == (200, {"thumbprint": made["thumbprint"], "email": end.address,
                                     "created": False,
                                     "message": WEBMAIL_CERTIFICATE_AVAILABLE})
    assert again["message"] == ("A valid webmail certificate is available. There is no "
                                "need to create a new certificate.")
    assert len(certificates_of(gateway, end.address)) == 1

    # "force" makes another, with the subject asked for.
    status, forced = call(gateway, "POST", end.path,
                          {"force": True, "subject": "Second tunnel certificate"})
    assert status == 201 and forced["created"] is True
    assert forced["thumbprint"] != made["thumbprint"]
    assert forced["subject"] == "Second tunnel certificate"
    listed_now = certificates_of(gateway, end.address)
    assert {c["thumbprint"] for c in listed_now} == {made["thumbprint"], forced["thumbprint"]}
    assert all(c["ctl"] == "whitelisted" and c["has_private_key"] for c in listed_now)

    # Another address than the configured one, given in the body.
    status, other = call(gateway, "POST", end.path, {"email": "tunnel@example.org"})
    assert status == 201 and other["email"] == "tunnel@example.org"


@pytest.mark.e2e
def test_api_relay_certificate_is_downloadable_for_the_gateway(gateway: Appliance) -> None:
    """
    Guide §2.3.12: the webmail side's certificate goes to the gateway as a
    file; the gateway imports it with "skip self-signed" off (§3.2).
    """
    status, made = call(gateway, "POST", RELAY_END.path, {"email": RELAY})
    assert status == 201
    status, details = call(gateway, "GET", f"/certificates/{made['thumbprint']}")
    assert status == 200 and details["pem"].startswith("-----BEGIN CERTIFICATE-----")
    assert details["purposes"]["encryption"]["valid"] is True


@pytest.mark.e2e
@BOTH_ENDS
def test_api_refusals_create_nothing(gateway: Appliance, end: End) -> None:
    # No address configured and none given.
    status, body = call(gateway, "POST", end.path)
    assert status == 400
    assert body["errors"] == {"email": end.unset}
    for request, field, words in [
        ({"email": "not-an-address"}, "email",
         "'not-an-address' is not a valid email address: it has no @."),
        ({"email": end.address, "subject": ""}, "subject", "Enter a subject."),
        ({"email": end.address, "subject": "a\nb"}, "subject", "one line"),
        ({"email": end.address, "subject": "s" * 65}, "subject", "at most 64"),
        ({"email": end.address, "force": "yes"}, "force", "must be true or false"),
        ({"email": 7}, "email", "must be a string"),
    ]:
        status, body = call(gateway, "POST", end.path, request)
        assert status == 400, request
        assert body["error"] == "Some values were refused; nothing was created."
        assert words in body["errors"][field], (request, body)
    status, body = call(gateway, "POST", end.path, ["not", "an", "object"])
    assert status == 400 and "errors" not in body
    status, listing = call(gateway, "GET", "/certificates")
    assert listing["certificates"] == []
    status, ctl = call(gateway, "GET", "/ctl")
    assert ctl["ctl"] == []


@pytest.mark.e2e
@BOTH_ENDS
def test_api_needs_the_default_password_changed(appliance: Appliance, end: End) -> None:
    status, body = call(appliance, "POST", end.path, {"email": end.address}, password="admin")
    assert status == 403 and "default admin password" in body["error"]


# The guide's walk in a browser -------------------------------------------------

def open_certificate_page(
        page: Page, tab: str = "Webmail", link: str = "create webmail certificate",
        heading: str = "Create webmail tunnel certificate for global preferences") -> None:
    """
    Settings → global preferences → C{tab} → C{link}.
    """
    page.get_by_role("link", name="Settings", exact=True).click()
    page.get_by_role("link", name=tab, exact=True).click()
    page.get_by_role("link", name=link, exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(heading)


def open_relay_certificate_page(page: Page) -> None:
    # Guide figure 9: "webmail certificate" on the Edit Global preferences page.
    open_certificate_page(page, "General", "webmail certificate",
                          "Create webmail relay recipient certificate")


def apply_setting(page: Page, name: str, value: str) -> None:
    """
    On the settings page shown: set C{name} here instead of inheriting, Apply.
    """
    page.locator(f'[id="inherit.{name}"]').uncheck()
    page.locator(f'[id="value.{name}"]').fill(value)
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("status")).to_have_text("The settings were applied.")


def expect_certificate_form(page: Page, intro: str, email: str, email_help: str,
                            subject: str) -> None:
    """
    The form as the guide's figure shows it, before anything was created.
    """
    expect(page.get_by_text(intro)).to_be_visible()
    expect(page.get_by_label("Email address")).to_have_value(email)
    expect(page.get_by_label("Subject")).to_have_value(subject)
    expect(page.get_by_text(email_help)).to_be_visible()
    expect(page.get_by_text("subject of certificate")).to_be_visible()
    expect(page.get_by_role("status")).to_have_count(0)


def expect_certificate_details(page: Page, email: str, subject: str) -> None:
    """
    The details page the "available" link leads to (guide §2.3.12, §3.9).
    """
    expect(page).to_have_url(re.compile(r"/pki/certificates/[0-9a-f]{64}$"))
    facts = page.locator("dl.facts")
    expect(facts).to_contain_text(f"EMAILADDRESS={email}")
    expect(facts).to_contain_text(f"CN={subject}")
    expect(facts).to_contain_text("stored (encrypted)")
    expect(facts).to_contain_text("whitelisted")
    expect(facts).to_contain_text("valid: The certificate is whitelisted")
    expect(page.get_by_role("link", name="download certificate (PEM)")).to_be_visible()


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
    apply_setting(page, "webmail_sender", SENDER)
    shoot(page, artifacts, "webmail-settings")

    # §3.8, figure 15.
    open_certificate_page(page)
    expect_certificate_form(page, "For sending to the secure webmail gateway, a valid "
                            "sender certificate is required.", SENDER,
                            "email address of webmail sender", WEBMAIL_CERTIFICATE_SUBJECT)
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
    expect_certificate_details(page, SENDER, WEBMAIL_CERTIFICATE_SUBJECT)
    shoot(page, artifacts, "webmail-certificate-details")

    # Create again: asked first, nothing made until confirmed.
    open_certificate_page(page)
    page.get_by_role("button", name="Create").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text(WEBMAIL_CERTIFICATE_AVAILABLE)
    expect(alert).to_contain_text("it forwards every tunnel message to its postmaster")
    expect(page.get_by_role("button", name="Create a new certificate anyway")).to_be_visible()
    shoot(page, artifacts, "webmail-certificate-confirm")
    page.get_by_role("link", name="Close").click()
    page.goto(f"{appliance.admin_url}/pki/certificates")
    expect(page.locator("p.count")).to_have_text("1\N{EN DASH}1 of 1 certificate")


@pytest.mark.e2e
@pytest.mark.browser
def test_create_the_relay_recipient_certificate_as_the_guide_says(
        context: BrowserContext,  # noqa: F811 -- the fixture imported above
        appliance: Appliance, artifacts: Path) -> None:
    page = context.new_page()
    log_in_and_change_default_password(page)

    # Without a relay recipient the page says so; Close returns to where it is set.
    open_relay_certificate_page(page)
    expect(page.locator("p.warning")).to_contain_text(
        "No relay recipient is set for global preferences.")
    shoot(page, artifacts, "relay-certificate-no-recipient")
    page.get_by_role("link", name="Close").click()
    expect(page).to_have_url(f"{appliance.admin_url}/settings/global/preferences")

    # §2.3.6: the relay recipient first.
    apply_setting(page, "relay_recipient", RELAY)
    shoot(page, artifacts, "relay-certificate-general")

    # §2.3.11, figure 10.
    open_relay_certificate_page(page)
    expect_certificate_form(page, "For receiving email from the gateway, a valid recipient "
                            "certificate is required.", RELAY,
                            "email address of relay recipient", RELAY_SUBJECT)
    shoot(page, artifacts, "relay-certificate")

    page.get_by_role("button", name="Create").click()
    status = page.get_by_role("status")
    expect(status).to_contain_text(CREATED)
    expect(status).to_contain_text(WEBMAIL_CERTIFICATE_AVAILABLE)
    shoot(page, artifacts, "relay-certificate-created")

    # Opened again: no need for another.
    open_relay_certificate_page(page)
    expect(status).to_have_text(WEBMAIL_CERTIFICATE_AVAILABLE)

    # §2.3.12: "available" leads to the certificate, to download it for the gateway.
    status.get_by_role("link", name="available").click()
    expect_certificate_details(page, RELAY, RELAY_SUBJECT)
    with page.expect_download() as downloaded:
        page.get_by_role("link", name="download certificate (PEM)").click()
    pem = Path(downloaded.value.path()).read_bytes()
    assert pem.startswith(b"-----BEGIN CERTIFICATE-----")
    shoot(page, artifacts, "relay-certificate-details")
