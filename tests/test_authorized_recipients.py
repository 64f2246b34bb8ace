"""
Admin → MTA → authorized recipients (guide §2.3.14): the domains and
addresses recipients of webmail messenger messages may send to; empty by
default, so nobody can reply.  The page in memory (StubTreq), the API
(C{GET}/C{PUT /api/v1/mta/authorized-recipients}, C{PATCH /api/v1/mta})
against a running appliance, and the page in headless Chromium.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from cipherd.testing import result_of
from tests.conftest import Appliance, api_call
from tests.harness import AdminHarness
from tests.test_browser_admin import (  # noqa: F401 -- browser and context are fixtures
    browser,
    context,
    log_in_and_change_default_password,
    shoot,
)
from tests.test_mta_appliance import NEW_PASSWORD, api, api_refusal
from tests.test_webmail_certificate import admin, gateway  # noqa: F401 -- fixtures

PAGE = "/mta/authorized-recipients"
REMOVE = f"{PAGE}/remove"
API = "/mta/authorized-recipients"
GUIDE = ("Recipients of a webmail messenger message are only allowed to send messages to the "
         "list of authorized recipients.")
EMPTY = "The list is empty: webmail recipients cannot reply to any email."


# The page, in memory ---------------------------------------------------------

def listed(page: str) -> list[str]:
    return [html.unescape(e) for e in re.findall(r'<td><code class="wrap">([^<]*)</code>',
                                                 page)]


def stored(admin: AdminHarness) -> tuple[str, ...]:  # noqa: F811 -- the fixture
    return result_of(admin.site.backend.mta.refresh()).authorized_recipients


def test_empty_by_default_with_the_guides_explanation(
        admin: AdminHarness) -> None:  # noqa: F811 -- the fixture imported above
    page = admin.get(PAGE)
    assert page.code == 200
    assert "<h1>Authorized recipients</h1>" in page.text
    assert GUIDE in page.text
    assert "By default the list is empty which means that a webmail recipient cannot reply " \
        "to an email." in page.text
    assert EMPTY in page.text and listed(page.text) == []
    # Admin → MTA: the config page and this one, each a tab of the other.
    tab = '<a href="/mta/authorized-recipients" aria-current="page">Authorized recipients</a>'
    assert tab in page.text
    config = admin.get("/mta/config").text
    assert '<a href="/mta/config" aria-current="page">Config</a>' in config
    assert '<a href="/mta/authorized-recipients" >Authorized recipients</a>' in config


def test_add_and_remove(admin: AdminHarness) -> None:  # noqa: F811
    for entered, entry in [("Example.COM", "example.com"), ("*.partner.example",
                                                             "*.partner.example"),
                           (" Bob@Else.Example ", "bob@else.example")]:
        added = admin.post_form(PAGE, {"entry": entered})
        assert added.code == 303, added.text
        assert added.header("location") == f"{PAGE}?added={entry}"
        page = admin.get(added.header("location") or "")
        assert f'<p class="notice" role="status">{entry} is an authorized recipient.</p>' \
            in page.text
    page = admin.get(PAGE)
    assert listed(page.text) == ["example.com", "*.partner.example", "bob@else.example"]
    assert EMPTY not in page.text
    assert "this domain, not the domains below it" in page.text
    assert "partner.example and every domain below it" in page.text
    assert "this address" in page.text
    assert 'aria-label="Remove bob@else.example"' in page.text

    # Again, written differently: the same entry, not a second one.
    assert admin.post_form(PAGE, {"entry": "example.com."}).code == 303
    assert stored(admin) == ("example.com", "*.partner.example", "bob@else.example")

    removed = admin.post_form(REMOVE, {"entry": "*.partner.example"}, csrf=admin.csrf_from(
        admin.get(PAGE)))
    assert removed.code == 303
    assert removed.header("location") == f"{PAGE}?removed=*.partner.example"
    page = admin.get(removed.header("location") or "")
    assert "*.partner.example was removed." in page.text
    assert listed(page.text) == ["example.com", "bob@else.example"]
    gone = admin.post_form(REMOVE, {"entry": "*.partner.example"},
                           csrf=admin.csrf_from(admin.get(PAGE)))
    assert gone.code == 404
    assert "*.partner.example is not in the list of authorized recipients." in gone.text


@pytest.mark.parametrize("entered, words", [
    ("", "Not added: an entry is empty."),
    ("not a domain", "Not added: 'not a domain' is neither an email address nor a valid "
                     "domain: the domain 'not a domain' has no dot."),
    ("bob@@example.com", "Not added: 'bob@@example.com' is not a valid email address: it "
                         "must contain exactly one @."),
    ("*.com", "the domain 'com' has no dot"),
    ("<b>x</b>", "'<b>x</b>' is neither"),
])
def test_a_refused_entry_is_said_and_nothing_changes(
        admin: AdminHarness, entered: str, words: str) -> None:  # noqa: F811
    assert admin.post_form(PAGE, {"entry": "example.com"}).code == 303
    page = admin.post_form(PAGE, {"entry": entered})
    assert page.code == 400
    assert words in html.unescape(page.text)
    assert "<b>" not in page.text  # escaped wherever it is shown
    assert 'aria-invalid="true"' in page.text
    # What was typed stays in the field to be corrected.
    assert f'value="{html.escape(entered)}"' in page.text
    assert stored(admin) == ("example.com",)


def test_forms_need_the_csrf_token(admin: AdminHarness) -> None:  # noqa: F811
    assert admin.post_form(PAGE, {"entry": "example.com"}, csrf=None).code == 403
    assert admin.post_form(PAGE, {"entry": "example.com"}, csrf="forged").code == 403
    assert admin.post_form(PAGE, {"entry": "example.com"}).code == 303
    assert admin.post_form(REMOVE, {"entry": "example.com"}, csrf=None).code == 403
    assert stored(admin) == ("example.com",)


def test_a_link_cannot_make_the_page_claim_a_change(
        admin: AdminHarness) -> None:  # noqa: F811
    page = admin.get(f"{PAGE}?added=evil.example&removed=example.com")
    assert "evil.example" not in page.text
    assert admin.post_form(PAGE, {"entry": "example.com"}).code == 303
    assert "was removed" not in admin.get(f"{PAGE}?removed=example.com").text


def test_the_mta_config_form_leaves_the_list_alone(
        admin: AdminHarness) -> None:  # noqa: F811
    assert admin.post_form(PAGE, {"entry": "example.com"}).code == 303
    assert admin.post_form("/mta/relay-domains", {"domain": "webmail.local"},
                           csrf=admin.csrf_from(admin.get("/mta/config"))).code == 303
    saved = admin.post_form("/mta/config", {"my_networks": "127.0.0.0/8",
                                            "my_hostname": "webmail.example.com"})
    assert saved.code == 303, saved.text
    config = result_of(admin.site.backend.mta.refresh())
    assert config.relay_domains == ("webmail.local",)
    assert config.authorized_recipients == ("example.com",)


# The API, against a running appliance -------------------------------------------

@pytest.mark.e2e
def test_api_put_replaces_the_whole_list(gateway: Appliance) -> None:  # noqa: F811
    appliance = gateway
    assert api(appliance, "GET", API) == {"authorized_recipients": []}
    assert api(appliance, "GET", "/mta")["authorized_recipients"] == []

    answer = api(appliance, "PUT", API, ["Example.com", "bob@partner.example",
                                         "*.example.org", "example.com."])
    assert answer == {"authorized_recipients": ["example.com", "bob@partner.example",
                                                "*.example.org"]}
    assert api(appliance, "GET", API) == answer
    assert api(appliance, "GET", "/mta")["authorized_recipients"] == \
        answer["authorized_recipients"]

    # The whole list each time: what is left out is gone.
    assert api(appliance, "PUT", API, ["example.com"]) == {
        "authorized_recipients": ["example.com"]}
    # Kept with the MTA config: a restart keeps it.
    appliance.restart()
    assert api(appliance, "GET", API) == {"authorized_recipients": ["example.com"]}
    # [] for nobody, as by default.
    assert api(appliance, "PUT", API, []) == {"authorized_recipients": []}


@pytest.mark.e2e
def test_api_refuses_each_bad_entry_and_changes_nothing(
        gateway: Appliance) -> None:  # noqa: F811
    appliance = gateway
    api(appliance, "PUT", API, ["example.com"])
    errors = api_refusal(appliance, "PUT", API, [
        "ok.example", "not a domain", "bob@@partner.example", "*.com", 7])
    assert errors == {
        "not a domain": "'not a domain' is neither an email address nor a valid domain: "
                        "the domain 'not a domain' has no dot",
        "bob@@partner.example": "'bob@@partner.example' is not a valid email address: it "
                                "must contain exactly one @",
        "*.com": "'*.com' is neither an email address nor a valid domain: the domain 'com' "
                 "has no dot",
        "7": "7 is not a string: write a domain or an email address in quotes",
    }
    status, answer = api_call(appliance, "PUT", API, {"authorized_recipients": []},
                              password=NEW_PASSWORD)
    assert status == 400 and "JSON array" in answer["error"]
    assert api(appliance, "GET", API) == {"authorized_recipients": ["example.com"]}


@pytest.mark.e2e
def test_api_patch_mta_takes_them_like_the_other_fields(
        gateway: Appliance) -> None:  # noqa: F811
    appliance = gateway
    config = api(appliance, "PATCH", "/mta", {"authorized_recipients": ["Partner.example"],
                                              "relay_domains": ["example.com"]})
    assert config["authorized_recipients"] == ["partner.example"]
    errors = api_refusal(appliance, "PATCH", "/mta", {"authorized_recipients": ["x y"],
                                                      "relay_domains": ["example.net"]})
    assert errors == {"authorized_recipients": "'x y' is neither an email address nor a "
                                               "valid domain: the domain 'x y' has no dot"}
    assert api(appliance, "GET", "/mta")["relay_domains"] == ["example.com"]
    assert api(appliance, "PATCH", "/mta", {"authorized_recipients": None})[
        "authorized_recipients"] == []


@pytest.mark.e2e
def test_api_needs_the_default_password_changed(appliance: Appliance) -> None:
    status, answer = api_call(appliance, "PUT", API, ["example.com"], password="admin")
    assert status == 403 and "default admin password" in answer["error"]


# The page in a browser ------------------------------------------------------------

def entries(page: Page) -> list[str]:
    return page.locator("table.entries tbody td code").all_inner_texts()


@pytest.mark.e2e
@pytest.mark.browser
def test_authorized_recipients_as_the_guide_says(
        context: BrowserContext,  # noqa: F811 -- the fixture imported above
        appliance: Appliance, artifacts: Path) -> None:
    page = context.new_page()
    log_in_and_change_default_password(page)

    # Admin → MTA → authorized recipients.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin").click()
    page.get_by_role("navigation", name="Pages of the MTA").get_by_role(
        "link", name="Authorized recipients").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Authorized recipients")
    expect(page.get_by_text(GUIDE)).to_be_visible()
    expect(page.get_by_text(EMPTY)).to_be_visible()
    shoot(page, artifacts, "authorized-recipients-empty")

    # The guide's action: the gateway's relay domains; here one address too.
    field = page.get_by_label("Add domain or email address")
    for entry in ("example.com", "*.example.org", "Bob@Partner.Example"):
        field.fill(entry)
        page.get_by_role("button", name="Add").click()
        expect(page.get_by_role("status")).to_have_text(
            f"{entry.lower()} is an authorized recipient.")
    assert entries(page) == ["example.com", "*.example.org", "bob@partner.example"]
    shoot(page, artifacts, "authorized-recipients")

    # A refused entry: said at the field, kept to correct, nothing added.
    field.fill("not a domain")
    page.get_by_role("button", name="Add").click()
    expect(page.locator('[id="error.entry"]')).to_have_text(
        "Not added: 'not a domain' is neither an email address nor a valid domain: the "
        "domain 'not a domain' has no dot.")
    expect(field).to_have_value("not a domain")
    expect(field).to_have_attribute("aria-invalid", "true")
    assert entries(page) == ["example.com", "*.example.org", "bob@partner.example"]
    shoot(page, artifacts, "authorized-recipients-refused")

    page.get_by_role("button", name="Remove *.example.org").click()
    expect(page.get_by_role("status")).to_have_text("*.example.org was removed.")
    assert entries(page) == ["example.com", "bob@partner.example"]
    shoot(page, artifacts, "authorized-recipients-removed")

    # Applied: the API and the MTA config page see the same list.
    assert api(appliance, "GET", API) == {"authorized_recipients": ["example.com",
                                                                    "bob@partner.example"]}
    page.get_by_role("link", name="Config", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("MTA config")
    shoot(page, artifacts, "mta-config-tabs")
