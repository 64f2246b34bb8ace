"""
The multi-line settings on Settings → templates and Settings → DKIM: a
template saved through the page reads back the same through the API, a
broken one is explained on its field and nothing is saved, the DKIM key is
never sent back, and the DNS record for it is shown and verifies a
signature.  In memory through StubTreq, then in headless Chromium.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from playwright.sync_api import BrowserContext, expect

from cipherd.settings import GLOBAL, Level, Scope
from cipherd.testing import result_of
from cipherd.web.backend import DkimRecord, dkim_record_for_key
from cipherd.webmail.notify import TEMPLATES, Notice, build, dkim_sign
from tests.conftest import Appliance, api_call
from tests.harness import GOOD_PASSWORD, AdminHarness
from tests.test_browser_admin import (
    browser,  # noqa: F401 -- a fixture
    context,  # noqa: F401 -- a fixture
    log_in_and_change_default_password,
    shoot,
)

TEMPLATES_PAGE = "/settings/global/templates"
DKIM_PAGE = "/settings/global/dkim"
EDITED = ("Subject: {{ sender }} wrote to you\n"
          "\n"
          "Hello,\n"
          "\n"
          "{{ sender }} sent you a message{% if subject %} about \"{{ subject }}\"{% endif %}.\n"
          "  Indented line & <angle brackets>\n"
          "\n"
          "{{ link }}\n")
BROKEN = "Subject: Hello\n\nText\n{% if %}\n"
BROKEN_REASON = ("is not a valid template: Expected an expression, got 'end of statement "
                 "block' (line 4)")


@pytest.fixture
def admin(signed_in_admin: AdminHarness) -> AdminHarness:
    return signed_in_admin


def crlf(text: str) -> str:
    """
    What a browser sends for a textarea: every line end CRLF.
    """
    return text.replace("\n", "\r\n")


def textarea(page_html: str, name: str) -> str:
    """
    The text a browser shows in textarea C{value.<name>}: the first
    newline after the start tag is dropped (HTML §13.2.6.4.7).
    """
    match = re.search(rf'<textarea id="value\.{re.escape(name)}"[^>]*>(.*?)</textarea>',
                      page_html, re.DOTALL)
    assert match, f"no textarea for {name}"
    return html.unescape(match.group(1)).removeprefix("\n")


def row(page_html: str, name: str) -> str:
    match = re.search(rf'<div class="row[^"]*" data-property="{re.escape(name)}">(.*?)'
                      r'\n    </div>\n', page_html, re.DOTALL)
    assert match, f"no row for {name}"
    return match.group(1)


def element_text(fragment: str, pattern: str) -> str:
    """
    The unescaped text of the first group of C{pattern} in C{fragment}.
    """
    match = re.search(pattern, fragment, re.DOTALL)
    assert match, f"nothing matches {pattern}"
    return html.unescape(match.group(1))


def api_settings(admin: AdminHarness, path: str = "/settings/global") -> dict[str, dict]:
    response = admin.request("GET", "/api/v1" + path, auth=("admin", GOOD_PASSWORD))
    assert response.code == 200, response.text
    properties: dict[str, dict] = response.json()["properties"]
    return properties


def rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def pem_body(pem: str) -> str:
    """
    The base64 lines of a PEM key, which must never appear on a page.
    """
    return "".join(pem.strip().splitlines()[1:-1])


def shown_record(page_html: str) -> tuple[str, str]:
    name = re.search(r'id="dkim-record-name">([^<]*)<', page_html)
    value = re.search(r'id="dkim-record-value">([^<]*)<', page_html)
    assert name and value, "no DNS record on the page"
    return html.unescape(name.group(1)), html.unescape(value.group(1))


# Templates ------------------------------------------------------------------


def test_template_saved_on_the_page_reads_back_the_same_through_the_api(
    admin: AdminHarness,
) -> None:
    saved = admin.post_form(TEMPLATES_PAGE, [
        ("fields", "template_new_message"), ("value.template_new_message", crlf(EDITED)),
    ])
    assert saved.header("location") == f"{TEMPLATES_PAGE}?saved=1", saved.text
    assert api_settings(admin)["template_new_message"]["value"] == EDITED

    # The page shows it back as it is, and sending the form again unchanged
    # (as a browser does, CRLF) changes nothing.
    page = admin.get(f"{TEMPLATES_PAGE}?saved=1")
    assert textarea(page.text, "template_new_message") == EDITED
    assert not re.search(r'id="inherit\.template_new_message"[^>]* checked', page.text)
    again = admin.post_form(TEMPLATES_PAGE, [
        ("fields", "template_new_message"),
        ("value.template_new_message", crlf(textarea(page.text, "template_new_message"))),
    ])
    assert again.code == 303
    assert api_settings(admin)["template_new_message"]["value"] == EDITED

    # Ticking inherit empties it: the built-in text is used again.
    admin.post_form(TEMPLATES_PAGE, [("fields", "template_new_message"),
                                     ("inherit.template_new_message", "on"),
                                     ("value.template_new_message", crlf(EDITED))])
    properties = api_settings(admin)
    assert properties["template_new_message"]["value"] == ""
    assert properties["template_new_message"]["level"] == "default"


def test_a_domain_sees_the_global_template_and_may_override_it(admin: AdminHarness) -> None:
    admin.post_form(TEMPLATES_PAGE, [("fields", "template_signup"),
                                     ("value.template_signup", crlf(EDITED))])
    admin.post_form("/settings/domains", {"name": "example.com"})
    page = admin.get("/settings/domains/example.com/templates")
    assert textarea(page.text, "template_signup") == EDITED
    assert "Inherited from global." in row(page.text, "template_signup")

    own = EDITED.replace("wrote to you", "for example.com")
    admin.post_form("/settings/domains/example.com/templates",
                    [("fields", "template_signup"), ("value.template_signup", crlf(own))])
    assert ("Overrides global (Subject: {{ sender }} wrote to you …)." in
            html.unescape(row(admin.get("/settings/domains/example.com/templates").text,
                              "template_signup")))
    domain = api_settings(admin, "/settings/domains/example.com")["template_signup"]
    assert (domain["value"], domain["level"]) == (own, "domain")
    assert api_settings(admin)["template_signup"]["value"] == EDITED


def test_a_broken_template_is_explained_on_its_field_and_nothing_is_saved(
    admin: AdminHarness,
) -> None:
    refused = admin.post_form(TEMPLATES_PAGE, [
        ("fields", "template_read_receipt"),
        ("value.template_read_receipt", crlf("Subject: Read: {{ subject }}\n\n{{ reader }} "
                                             "read it at {{ read }}.\n")),
        ("fields", "template_signup"), ("value.template_signup", crlf(BROKEN)),
    ])
    assert refused.code == 400
    assert "Some values were refused; nothing was changed." in refused.text
    signup = row(refused.text, "template_signup")
    assert element_text(signup, r'<p class="error field-error" id="error\.template_signup">'
                        r"([^<]*)</p>") == BROKEN_REASON
    assert 'aria-invalid="true"' in signup
    assert "error.template_read_receipt" not in refused.text
    # What was typed is kept, to be corrected.
    assert textarea(refused.text, "template_signup") == crlf(BROKEN)

    properties = api_settings(admin)
    assert properties["template_signup"]["value"] == ""
    assert properties["template_read_receipt"]["value"] == ""  # the good one neither


def test_a_template_without_its_subject_line_is_refused(admin: AdminHarness) -> None:
    refused = admin.post_form(TEMPLATES_PAGE, [
        ("fields", "template_password_reset"),
        ("value.template_password_reset", "Hello {{ address }}\r\n"),
    ])
    assert refused.code == 400
    assert ("must begin with a line &#39;Subject: ...&#39;, then an empty line, then the "
            "text") in row(refused.text, "template_password_reset")
    assert api_settings(admin)["template_password_reset"]["value"] == ""


@pytest.mark.parametrize("name", ["signup", "new_message", "password_reset", "read_receipt"])
def test_an_empty_template_shows_its_built_in_text(admin: AdminHarness, name: str) -> None:
    builtin = (TEMPLATES / f"{name}.txt").read_text()
    page = admin.get(TEMPLATES_PAGE)
    assert page.code == 200
    shown = row(page.text, f"template_{name}")
    assert textarea(page.text, f"template_{name}") == ""
    # As the empty field's placeholder and in a block under it.
    assert element_text(shown, r'placeholder="([^"]*)"') == builtin
    assert "<summary>Built-in text (used while this is empty)</summary>" in shown
    assert element_text(shown, rf'<pre id="builtin\.template_{name}">([^<]*)</pre>') == builtin


def test_an_overridden_template_still_offers_the_built_in_text(admin: AdminHarness) -> None:
    admin.post_form(TEMPLATES_PAGE, [("fields", "template_new_message"),
                                     ("value.template_new_message", crlf(EDITED))])
    shown = row(admin.get(TEMPLATES_PAGE).text, "template_new_message")
    assert "<summary>Built-in text</summary>" in shown
    assert "Overrides factory default (the built-in text)." in shown
    assert element_text(shown, r'<pre id="builtin\.template_new_message">([^<]*)</pre>'
                        ) == (TEMPLATES / "new_message.txt").read_text()


# DKIM -----------------------------------------------------------------------


def save_dkim(admin: AdminHarness, pem: str, page: str = DKIM_PAGE) -> None:
    saved = admin.post_form(page, [
        ("fields", "dkim_enabled"), ("value.dkim_enabled", "true"),
        ("fields", "dkim_domain"), ("value.dkim_domain", "Example.COM"),
        ("fields", "dkim_selector"), ("value.dkim_selector", "mail2026"),
        ("fields", "dkim_private_key"), ("value.dkim_private_key", crlf(pem)),
    ])
    assert saved.code == 303, saved.text


def test_dkim_key_is_stored_but_never_sent_back(admin: AdminHarness) -> None:
    pem = rsa_pem()
    save_dkim(admin, pem)
    assert result_of(admin.settings.get(GLOBAL, "dkim_private_key")) == pem.strip() + "\n"

    page = admin.get(f"{DKIM_PAGE}?saved=1")
    assert pem_body(pem)[:64] not in page.text
    assert "PRIVATE KEY" not in page.text
    assert textarea(page.text, "dkim_private_key") == ""
    key_row = row(page.text, "dkim_private_key")
    assert 'placeholder="hidden; paste a new key to replace it"' in key_row
    assert "Overrides factory default (not set)." in key_row
    # The API keeps it write-only too.
    assert api_settings(admin)["dkim_private_key"] == {
        "value": None, "hidden": True, "level": "global", "inherited": False}

    # Sent blank, it stays; a refused one is not shown back either.
    admin.post_form(DKIM_PAGE, [("fields", "dkim_private_key"),
                                ("value.dkim_private_key", "")])
    assert result_of(admin.settings.get(GLOBAL, "dkim_private_key")) == pem.strip() + "\n"
    broken = pem.replace(pem_body(pem)[10:30], "A" * 20)
    refused = admin.post_form(DKIM_PAGE, [("fields", "dkim_private_key"),
                                          ("value.dkim_private_key", crlf(broken))])
    assert refused.code == 400
    assert ("could not be read: the key is damaged or incomplete"
            in row(refused.text, "dkim_private_key"))
    assert "ASN.1" not in refused.text and "deserialize" not in refused.text
    assert pem_body(broken)[:64] not in refused.text
    assert result_of(admin.settings.get(GLOBAL, "dkim_private_key")) == pem.strip() + "\n"


def test_dkim_key_can_be_removed_with_inherit(admin: AdminHarness) -> None:
    save_dkim(admin, rsa_pem())
    page = admin.get(DKIM_PAGE)
    assert 'id="inherit.dkim_private_key"' in page.text  # not a generated secret
    admin.post_form(DKIM_PAGE, [("fields", "dkim_private_key"),
                                ("inherit.dkim_private_key", "on")])
    assert result_of(admin.settings.get(GLOBAL, "dkim_private_key")) == ""
    after = admin.get(DKIM_PAGE).text
    assert 'placeholder="not set; paste a key in PEM format"' in after
    assert "No key is stored, so notifications are not signed." in after


def test_dkim_page_shows_the_dns_record_that_verifies_the_signatures(
    admin: AdminHarness,
) -> None:
    pem = rsa_pem()
    save_dkim(admin, pem)
    page = admin.get(DKIM_PAGE)
    name, value = shown_record(page.text)
    assert name == "mail2026._domainkey.example.com"
    assert value.startswith("v=DKIM1; k=rsa; p=MII")

    # The public key shown is the stored key's: a notification signed with
    # it verifies against the record as shown.
    message = build(sender="notify@example.com", recipient="bob@example.org",
                    notice=Notice("Hello", "Text\n"), my_hostname="mail.example.com",
                    now=1_800_000_000)
    signed = dkim_sign(message, domain="example.com", selector="mail2026", key_pem=pem)

    def dns(query: bytes, timeout: int = 5) -> bytes:
        assert query == b"mail2026._domainkey.example.com."
        return value.encode()

    assert dkim.verify(signed, dnsfunc=dns)
    # As a zone file entry each string fits DNS's 255 octets.
    zone = html.unescape(page.text.split("<summary>As a zone file entry")[1]
                         .split("</pre>")[0])
    assert zone.split("<pre>")[1].startswith("mail2026._domainkey.example.com. IN TXT (")
    strings = re.findall(r'"([^"]*)"', zone)
    assert "".join(strings) == value
    assert all(len(s) <= 255 for s in strings)


def test_an_ed25519_key_is_published_raw() -> None:
    """
    RFC 8463 §4: p= is the raw 32-byte public key, not a SubjectPublicKeyInfo
    (for when the key setting accepts Ed25519 again).
    """
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    record = dkim_record_for_key("example.com", "ed1", pem)
    assert record == DkimRecord("ed1._domainkey.example.com",
                                f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}")


def test_no_dns_record_until_key_domain_and_selector_are_set(admin: AdminHarness) -> None:
    page = admin.get(DKIM_PAGE).text
    assert "dkim-record-name" not in page
    assert "No key is stored." in page and "openssl genpkey" in page
    admin.post_form(DKIM_PAGE, [("fields", "dkim_private_key"),
                                ("value.dkim_private_key", crlf(rsa_pem()))])
    page = admin.get(DKIM_PAGE).text
    assert "dkim-record-name" not in page
    assert "A key is stored. Set the domain and the selector" in page


def test_a_domain_shows_the_record_for_its_effective_settings(admin: AdminHarness) -> None:
    """
    The key set globally, the domain and selector on the domain: the domain's
    page shows the record its notifications need.
    """
    pem = rsa_pem()
    save_dkim(admin, pem)
    admin.post_form("/settings/domains", {"name": "example.org"})
    admin.post_form("/settings/domains/example.org/dkim", [
        ("fields", "dkim_domain"), ("value.dkim_domain", "example.org"),
        ("fields", "dkim_selector"), ("value.dkim_selector", "org1"),
    ])
    page = admin.get("/settings/domains/example.org/dkim").text
    assert shown_record(page)[0] == "org1._domainkey.example.org"
    assert "Inherited from global." in row(page, "dkim_private_key")
    assert pem_body(pem) not in page
    scope = Scope(Level.DOMAIN, "example.org")
    assert result_of(admin.settings.get(scope, "dkim_private_key")) == pem.strip() + "\n"


# In Chromium ------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.browser
def test_templates_and_dkim_pages_in_a_browser(
    context: BrowserContext, appliance: Appliance, artifacts: Path,  # noqa: F811
) -> None:
    page = context.new_page()
    log_in_and_change_default_password(page)

    page.goto(TEMPLATES_PAGE)
    field = page.locator('[id="value.template_new_message"]')
    inherit = page.locator('[id="inherit.template_new_message"]')
    builtin = (TEMPLATES / "new_message.txt").read_text()
    expect(inherit).to_be_checked()
    expect(field).to_be_disabled()
    expect(field).to_have_attribute("placeholder", builtin)
    shoot(page, artifacts, "settings-templates")

    # Start from a copy of the built-in text, change it, apply.
    details = page.locator('div.row[data-property="template_new_message"] details.builtin')
    details.locator("summary").click()
    expect(details.locator("pre")).to_be_visible()
    shoot(page, artifacts, "settings-templates-built-in")
    details.get_by_role("button", name="Edit a copy of it").click()
    expect(inherit).not_to_be_checked()
    expect(field).to_be_enabled()
    expect(field).to_have_value(builtin)
    edited = builtin.replace("Log in to read it:", "Log in to read it (link valid once):")
    field.fill(edited)
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("status")).to_have_text("The settings were applied.")
    expect(field).to_have_value(edited)
    status, body = api_call(appliance, "GET", "/settings/global", password=GOOD_PASSWORD)
    assert status == 200
    assert body["properties"]["template_new_message"]["value"] == edited

    # A syntax error: explained on the field, the text kept, nothing saved.
    page.locator('[id="inherit.template_signup"]').uncheck()
    page.locator('[id="value.template_signup"]').fill(BROKEN)
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.get_by_role("button", name="Apply").click()
    assert posted.value.status == 400
    expect(page.locator('[id="error.template_signup"]')).to_have_text(BROKEN_REASON)
    expect(page.locator('[id="value.template_signup"]')).to_have_value(BROKEN)
    shoot(page, artifacts, "settings-templates-invalid")
    status, body = api_call(appliance, "GET", "/settings/global", password=GOOD_PASSWORD)
    assert body["properties"]["template_signup"]["value"] == ""

    # DKIM: the key pasted once, never shown again; the record to publish.
    page.goto(DKIM_PAGE)
    expect(page.get_by_text("No key is stored.")).to_be_visible()
    shoot(page, artifacts, "settings-dkim-empty")
    pem = rsa_pem()
    page.locator('[id="inherit.dkim_enabled"]').uncheck()
    page.locator('[id="value.dkim_enabled"]').select_option("true")
    for name, value in (("dkim_domain", "example.com"), ("dkim_selector", "mail2026"),
                        ("dkim_private_key", pem)):
        page.locator(f'[id="inherit.{name}"]').uncheck()
        page.locator(f'[id="value.{name}"]').fill(value)
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("status")).to_have_text("The settings were applied.")
    key = page.locator('[id="value.dkim_private_key"]')
    expect(key).to_have_value("")
    expect(key).to_have_attribute("placeholder", "hidden; paste a new key to replace it")
    expect(page.locator("#dkim-record-name")).to_have_text("mail2026._domainkey.example.com")
    expect(page.locator("#dkim-record-value")).to_contain_text("v=DKIM1; k=rsa; p=MII")
    assert pem_body(pem)[:64] not in page.content()
    shoot(page, artifacts, "settings-dkim")
