"""
Admin → PGP keys through StubTreq, with the real keyring on its database
and keys real clients made (Thunderbird's test keys): the list (greyed
when no mail can be encrypted to a key, trust and secret keys marked),
search and pages, import (a file or pasted keys, a passphrase, trusted or
not), details with the download, trust and delete, generate; CSRF on every
form, and user IDs -- anyone's to write -- escaped.  One test drives the
pages in headless Chromium against a running appliance and keeps
screenshots in C{artifacts/}.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pysequoia
import pytest
from playwright.sync_api import BrowserContext, expect

from cipherd.pki.pgp import SequoiaOpenPGP
from cipherd.testing import result_of
from tests.conftest import Appliance, api_call
from tests.harness import AdminHarness, Response
from tests.openpgp_keys import (
    ALICE,
    ALICE_PASSPHRASE,
    ALICE_SECRET_FILE,
    BOB,
    BOB_FILE,
    CAROL,
    CAROL_FILE,
    EDDIE,
    EDDIE_FILE,
    KEYS,
)
from tests.test_browser_admin import (  # noqa: F401 -- the fixtures are used by name
    GOOD_PASSWORD,
    browser,
    context,
    log_in,
    shoot,
)

BOB_GROUPED = "D1A6 6E1A 23B1 82C9 980F 788C FBFC C82A 015E 7330"
IMPORT = "/pgp/keys/import"
HOSTILE = "<script>alert(1)</script> <x@example.org>"


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[AdminHarness]:
    harness = AdminHarness(tmp_path)  # its clock: 2027-01-15
    harness.login_with_new_password()
    yield harness
    harness.close()


def key_file(name: str) -> bytes:
    return (KEYS / name).read_bytes()


def import_file(admin: AdminHarness, data: bytes, csrf: str | None = "page",
                **fields: str) -> Response:
    """
    The import form sent as a browser sends it: C{data} as the file (empty:
    none chosen), C{trusted} ticked unless C{fields} say otherwise.
    """
    fields.setdefault("trusted", "on")
    if fields["trusted"] == "":
        del fields["trusted"]
    return admin.post_file(IMPORT, data, form_page=IMPORT, csrf=csrf, **fields)


def rows(page: Response) -> dict[str, str]:
    """
    The list's rows by the key id they show.
    """
    found = {}
    for row in page.text.split("<tr class=")[1:]:
        row = row.split("</tr>")[0]
        match = re.search(r"<code>([0-9A-F]{16})</code>", row)
        assert match, row
        found[match.group(1)] = row
    return found


def test_menu_has_pgp_keys_next_to_certificates(admin: AdminHarness) -> None:
    page = admin.get("/pgp/keys")
    assert page.code == 200
    nav = page.text.split('<nav aria-label="Main">')[1].split("</nav>")[0]
    links = re.findall(r">([^<]+)</a></li>", nav)
    assert links[:4] == ["Dashboard", "Certificates", "PGP keys", "Roots"]
    assert '<a href="/pgp/keys" aria-current="page">PGP keys</a>' in page.text
    assert "There are no PGP keys yet." in page.text


def test_import_lists_what_was_imported(admin: AdminHarness) -> None:
    bob = import_file(admin, key_file(BOB_FILE))
    assert bob.code == 200, bob.text
    assert '<div class="notice" role="status">' in bob.text
    assert "1 key imported:" in bob.text
    assert (f'new: <a href="/pgp/keys/{BOB}"><code>{BOB_GROUPED}</code></a>'
            in bob.text)
    assert "Bob Babbage &lt;bob@openpgp.example&gt;" in bob.text
    assert "with its secret key" not in bob.text
    again = import_file(admin, key_file(BOB_FILE))
    assert f'updated: <a href="/pgp/keys/{BOB}">' in again.text
    # Pasted instead of a file, with the passphrase of its secret key.
    alice = import_file(admin, b"", text=key_file(ALICE_SECRET_FILE).decode(),
                        passphrase=ALICE_PASSPHRASE)
    assert alice.code == 200, alice.text
    assert "Alice Lovelace &lt;alice@openpgp.example&gt;, with its secret key" in alice.text
    assert result_of(admin.keyring.signer("alice@openpgp.example")) is not None
    for name in (EDDIE_FILE, CAROL_FILE):
        assert import_file(admin, key_file(name)).code == 200

    listing = rows(admin.get("/pgp/keys"))
    assert set(listing) == {k[-16:] for k in (BOB, ALICE, EDDIE, CAROL)}
    bob_row = listing[BOB[-16:]]
    assert bob_row.startswith('"valid"')
    assert f'title="Fingerprint {BOB_GROUPED}"' in bob_row
    assert ">trusted</span>" in bob_row and ">secret</span>" not in bob_row
    assert "2019-10-15 10:18 UTC" in bob_row and ">never</td>" in bob_row
    assert '<td class="status">valid</td>' in bob_row
    assert ">secret</span>" in listing[ALICE[-16:]]
    eddie = listing[EDDIE[-16:]]
    assert eddie.startswith('"invalid"')
    assert "the key expired on 2016-12-31 01:02 UTC" in eddie
    assert "2016-12-31 01:02 UTC</td>" in eddie  # the expiry column
    carol = listing[CAROL[-16:]]
    assert carol.startswith('"invalid"') and "the key is revoked" in carol
    assert ">secret</span>" in carol


def test_wrong_passphrase_is_the_forms_error_and_nothing_is_stored(
        admin: AdminHarness) -> None:
    pasted = key_file(ALICE_SECRET_FILE).decode()
    for passphrase in ("not-alices", ""):
        wrong = import_file(admin, b"", text=pasted, passphrase=passphrase)
        assert wrong.code == 400
        assert (f'<p class="error" role="alert">The passphrase of the secret key {ALICE} is '
                "wrong or missing.</p>") in wrong.text
        # What was pasted is there to try again with; the passphrase is not.
        assert "-----BEGIN PGP PRIVATE KEY BLOCK-----" in wrong.text
        assert "not-alices" not in wrong.text
    assert result_of(admin.keyring.count()) == 0


def test_untrusted_import(admin: AdminHarness) -> None:
    response = import_file(admin, key_file(BOB_FILE), trusted="")
    assert response.code == 200
    assert ">not trusted</span>" in rows(response)[BOB[-16:]]
    stored = result_of(admin.keyring.get(BOB))
    assert stored is not None and not stored.trusted
    refused = result_of(admin.keyring.encryption_keys("bob@openpgp.example"))
    assert refused.keys == () and refused.refused == (f"PGP key {BOB}: the key is not trusted",)
    form = admin.get(IMPORT).text
    assert '<input id="trusted" name="trusted" type="checkbox" checked' in form


def test_import_refusals(admin: AdminHarness) -> None:
    nothing = import_file(admin, b"")
    assert nothing.code == 400
    assert "Choose a key file or paste armored keys to import." in nothing.text
    both = import_file(admin, key_file(BOB_FILE), text=key_file(EDDIE_FILE).decode())
    assert both.code == 400 and "Choose a file or paste keys, not both." in both.text
    garbage = import_file(admin, b"not a key at all")
    assert garbage.code == 400
    assert '<p class="error" role="alert">No OpenPGP key could be read' in garbage.text
    forged = import_file(admin, key_file(BOB_FILE), csrf=None)
    assert forged.code == 403 and "Form refused" in forged.text
    assert result_of(admin.keyring.count()) == 0


def test_list_search_and_pages(admin: AdminHarness) -> None:
    for number in range(55):
        result_of(admin.keyring.generate(f"user{number}@list.example", f"User {number}"))
    first = admin.get("/pgp/keys")
    assert '<p class="count" aria-live="polite">1\u201350 of 55 keys</p>' in first.text
    assert len(rows(first)) == 50
    assert "page 1 of 2" in first.text
    assert '<a href="/pgp/keys?q=&amp;page=2" rel="next">next</a>' in first.text
    second = admin.get("/pgp/keys?page=2")
    assert "51\u201355 of 55 keys" in second.text and len(rows(second)) == 5
    assert set(rows(first)).isdisjoint(rows(second))
    assert "51\u201355 of 55 keys" in admin.get("/pgp/keys?page=99").text  # the last

    search = admin.get("/pgp/keys?q=USER1")  # user1, user10..user19
    assert "1\u201311 of 11 keys matching “USER1”" in search.text
    assert 'value="USER1"' in search.text
    assert '<nav class="pager"' not in search.text
    assert all(re.search(r"User 1[0-9]? &lt;user1[0-9]?@list.example&gt;", row)
               for row in rows(search).values())
    assert "No PGP key matches “nobody”." in admin.get("/pgp/keys?q=nobody").text
    some = result_of(admin.keyring.listing(limit=1))[0]
    by_fingerprint = admin.get(f"/pgp/keys?q={some.fingerprint[:20]}")
    assert list(rows(by_fingerprint)) == [some.key.key_id.upper()]


def test_details_and_download(admin: AdminHarness) -> None:
    import_file(admin, key_file(BOB_FILE))
    page = admin.get(f"/pgp/keys/{BOB.lower()}")
    assert page.code == 200
    text = page.text
    assert "<div>Bob Babbage &lt;bob@openpgp.example&gt;</div>" in text
    assert f'<code class="wrap">{BOB_GROUPED}</code>' in text
    assert "<dt>Version</dt><dd>4</dd>" in text
    assert "<dt>Revoked</dt><dd>no</dd>" in text
    assert '<dd class="ok">trusted</dd>' in text
    assert '<dd class="ok">valid</dd>' in text
    subkeys = text.split('<table class="certs subkeys">')[1].split("</table>")[0]
    assert "FBFCC82A015E7330</code> <span class=\"badge\">primary</span>" in subkeys
    assert '<td class="usage">certify, sign</td>' in subkeys
    assert "7C2FAA4DF93C37B2" in subkeys and '<td class="usage">encrypt</td>' in subkeys
    assert f'href="/pgp/keys/{BOB}.asc" download' in text
    assert 'data-confirm="Delete this PGP key?"' in text

    download = admin.get(f"/pgp/keys/{BOB}.asc")
    assert download.code == 200
    assert download.header("content-type") == "application/pgp-keys"
    assert download.header("content-disposition") == f'attachment; filename="{BOB}.asc"'
    [key] = SequoiaOpenPGP().read_keys(download.body)
    assert key.fingerprint.upper() == BOB and key.secret is None

    for missing in ("AB" * 20, "not-a-fingerprint", f"{BOB}.pem", f"{'CD' * 20}.asc"):
        assert admin.get(f"/pgp/keys/{missing}").code == 404

    import_file(admin, key_file(EDDIE_FILE))
    eddie = admin.get(f"/pgp/keys/{EDDIE}").text
    assert ('<dd class="error">not valid: the key expired on 2016-12-31 01:02 UTC</dd>'
            in eddie)
    assert '<tr class="invalid">' in eddie  # its expired subkey, greyed


def test_trust_toggle_needs_the_forms_token(admin: AdminHarness) -> None:
    import_file(admin, key_file(BOB_FILE))
    details = admin.get(f"/pgp/keys/{BOB}")
    assert '<input type="hidden" name="trusted" value="no">' in details.text
    assert '<button type="submit">Untrust</button>' in details.text
    forged = admin.post_form(f"/pgp/keys/{BOB}/trust", {"trusted": "no"}, csrf=None)
    assert forged.code == 403
    assert result_of(admin.keyring.get(BOB)).trusted  # type: ignore[union-attr]

    untrusted = admin.post_form(f"/pgp/keys/{BOB}/trust", {"trusted": "no"},
                                csrf=admin.csrf_from(details))
    assert untrusted.header("location") == f"/pgp/keys/{BOB}?changed=trust"
    after = admin.get(f"/pgp/keys/{BOB}?changed=trust").text
    assert '<p class="notice" role="status">The key is now not trusted.</p>' in after
    assert '<dd class="error">not trusted</dd>' in after
    assert '<button type="submit">Trust</button>' in after
    refused = result_of(admin.keyring.encryption_keys("bob@openpgp.example"))
    assert refused.refused == (f"PGP key {BOB}: the key is not trusted",)

    trusted = admin.post_form(f"/pgp/keys/{BOB}/trust", {"trusted": "yes"},
                              csrf=admin.csrf_from(details))
    assert trusted.code == 303
    assert "The key is now trusted." in admin.get(f"/pgp/keys/{BOB}?changed=trust").text
    assert len(result_of(admin.keyring.encryption_keys("bob@openpgp.example")).keys) == 1
    for path, value in ((f"/pgp/keys/{'AB' * 20}/trust", "yes"),
                        (f"/pgp/keys/{BOB}/trust", "maybe")):
        assert admin.post_form(path, {"trusted": value},
                               csrf=admin.csrf_from(details)).code == 404


def test_introducer_toggle(admin: AdminHarness) -> None:
    import_file(admin, key_file(BOB_FILE))
    details = admin.get(f"/pgp/keys/{BOB}")
    assert "<dt>Introducer</dt><dd>no</dd>" in details.text
    assert admin.post_form(f"/pgp/keys/{BOB}/introducer", {"introducer": "yes"},
                           csrf=None).code == 403
    made = admin.post_form(f"/pgp/keys/{BOB}/introducer", {"introducer": "yes"},
                           csrf=admin.csrf_from(details))
    assert made.header("location") == f"/pgp/keys/{BOB}?changed=introducer"
    after = admin.get(f"/pgp/keys/{BOB}?changed=introducer").text
    assert "The key is now a trusted introducer." in after
    assert '<button type="submit">Not an introducer</button>' in after
    assert result_of(admin.keyring.get(BOB)).introducer  # type: ignore[union-attr]
    assert '<span class="badge" title="The keys it certifies are trusted">introducer</span>' \
        in admin.get("/pgp/keys").text
    assert admin.post_form(f"/pgp/keys/{BOB}/introducer", {"introducer": "maybe"},
                           csrf=admin.csrf_from(details)).code == 404


def test_delete_needs_the_forms_token(admin: AdminHarness) -> None:
    import_file(admin, key_file(ALICE_SECRET_FILE), passphrase=ALICE_PASSPHRASE)
    details = admin.get(f"/pgp/keys/{ALICE}")
    assert 'data-confirm="Delete this PGP key and its secret key?"' in details.text
    forged = admin.post_form(f"/pgp/keys/{ALICE}/delete", {}, csrf=None)
    assert forged.code == 403
    wrong = admin.post_form(f"/pgp/keys/{ALICE}/delete", {}, csrf="not-the-token")
    assert wrong.code == 403
    assert result_of(admin.keyring.get(ALICE)) is not None

    gone = admin.post_form(f"/pgp/keys/{ALICE}/delete", {}, csrf=admin.csrf_from(details))
    assert gone.header("location") == f"/pgp/keys?deleted={ALICE}"
    listing = admin.get(f"/pgp/keys?deleted={ALICE}").text
    assert "The key <code>EB85 BB5F" in listing and "was deleted." in listing
    assert admin.get(f"/pgp/keys/{ALICE}").code == 404
    assert result_of(admin.keyring.signer("alice@openpgp.example")) is None
    again = admin.post_form(f"/pgp/keys/{ALICE}/delete", {}, csrf=admin.csrf_from(details))
    assert again.code == 404
    # Only a fingerprint is said back from the query.
    assert "was deleted" not in admin.get("/pgp/keys?deleted=all+your+keys").text


def test_generate(admin: AdminHarness) -> None:
    form = admin.get("/pgp/keys/generate")
    assert form.code == 200 and "Generate PGP key" in form.text
    made = admin.post_form("/pgp/keys/generate",
                           {"email": " Dave@Example.COM ", "name": " Dave Dealer "})
    assert made.code == 303, made.text
    location = made.header("location")
    assert location and location.endswith("?changed=generated")
    [stored] = result_of(admin.keyring.listing())
    assert location == f"/pgp/keys/{stored.fingerprint.upper()}?changed=generated"
    assert stored.key.user_ids == ("Dave Dealer <Dave@example.com>",)
    assert stored.trusted and stored.key.secret is not None and stored.source == "generated"
    page = admin.get(location).text
    assert '<p class="notice" role="status">The key was generated.</p>' in page
    assert "Dave Dealer &lt;Dave@example.com&gt;" in page
    assert "<dt>Source</dt><dd>generated here" in page
    assert ">secret</span>" in admin.get("/pgp/keys").text
    forged = admin.post_form("/pgp/keys/generate", {"email": "eve@example.com"}, csrf=None)
    assert forged.code == 403


@pytest.mark.parametrize(("fields", "field", "message"), [
    ({"email": "", "name": "Dave"}, "email", "Enter the email address of the key."),
    ({"email": "not-an-address"}, "email",
     "&#39;not-an-address&#39; is not a valid email address: it has no @."),
    ({"email": "dave@example.com", "name": "Eve <eve@example.org>"}, "name",
     "The name must not contain &lt; or &gt;."),
    ({"email": "dave@example.com", "name": "eve@example.org"}, "name",
     "The name must not contain an email address."),
    ({"email": "dave@example.com", "name": "D" * 129}, "name",
     "The name is 129 characters long; at most 128 are allowed."),
])
def test_generate_refusals(admin: AdminHarness, fields: dict[str, str], field: str,
                           message: str) -> None:
    refused = admin.post_form("/pgp/keys/generate", fields)
    assert refused.code == 400
    assert f'<p class="error field-error" id="{field}-error">{message}</p>' in refused.text
    assert f'id="{field}" name="{field}"' in refused.text
    assert result_of(admin.keyring.count()) == 0


def test_hostile_user_id_is_escaped(admin: AdminHarness) -> None:
    tsk = pysequoia.Tsk.generate(HOSTILE)
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt; &lt;x@example.org&gt;"
    imported = import_file(admin, bytes(tsk))
    assert imported.code == 200, imported.text
    [stored] = result_of(admin.keyring.listing())
    assert stored.key.user_ids == (HOSTILE,)
    fingerprint = stored.fingerprint.upper()
    for page in (imported, admin.get("/pgp/keys"), admin.get("/pgp/keys?q=script"),
                 admin.get(f"/pgp/keys/{fingerprint}")):
        assert page.code == 200
        assert escaped in page.text
        assert "<script>" not in page.text
    # The search text too.
    searched = admin.get("/pgp/keys?q=%3Cscript%3Ealert(2)")
    assert "<script>alert(2)" not in searched.text
    assert "&lt;script&gt;alert(2)" in searched.text


@pytest.mark.e2e
@pytest.mark.browser
def test_import_untrust_and_delete_in_a_browser(context: BrowserContext,  # noqa: F811
                                                appliance: Appliance, artifacts: Path) -> None:
    status, _ = api_call(appliance, "POST", "/admin/password", {"password": GOOD_PASSWORD},
                         password="admin")
    assert status == 200
    # An expired and a revoked key already there: the list has greyed rows.
    for name in (EDDIE_FILE, CAROL_FILE):
        status, body = api_call(appliance, "POST", "/pgp/keys", password=GOOD_PASSWORD,
                                raw=key_file(name))
        assert status == 201, body

    page = context.new_page()
    log_in(page, GOOD_PASSWORD)
    page.get_by_role("navigation", name="Main").get_by_role(
        "link", name="PGP keys", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("PGP keys")
    page.get_by_role("link", name="Import PGP keys").click()
    expect(page.get_by_label("trusted", exact=True)).to_be_checked()
    shoot(page, artifacts, "pgp-import")
    page.get_by_label("Key file").set_input_files(str(KEYS / BOB_FILE))
    page.get_by_role("button", name="Import").click()
    notice = page.get_by_role("status")
    expect(notice).to_contain_text("1 key imported:")
    expect(notice).to_contain_text(f"new: {BOB_GROUPED} Bob Babbage <bob@openpgp.example>")
    bob = page.locator("table.pgp tbody tr", has_text="Bob Babbage")
    expect(bob).to_have_class("valid")
    expect(bob.locator(".badge.ok")).to_have_text("trusted")
    expect(page.locator("table.pgp tbody tr.invalid")).to_have_count(2)
    shoot(page, artifacts, "pgp-imported")

    notice.get_by_role("link").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("PGP key")
    expect(page.locator("dl.facts")).to_contain_text(BOB_GROUPED)
    page.get_by_role("button", name="Untrust").click()
    expect(page.get_by_role("status")).to_have_text("The key is now not trusted.")
    expect(page.get_by_role("button", name="Trust", exact=True)).to_be_visible()
    shoot(page, artifacts, "pgp-key")
    page.get_by_role("button", name="Make a trusted introducer").click()
    expect(page.get_by_role("status")).to_have_text("The key is now a trusted introducer.")
    # Untrusted just before: the mark is not in force.
    expect(page.locator("dl.facts")).to_contain_text(
        "yes, but not in force: the key itself is not trusted")
    shoot(page, artifacts, "pgp-key-introducer")
    page.get_by_role("button", name="Not an introducer").click()
    expect(page.get_by_role("status")).to_have_text("The key is now not an introducer.")

    with page.expect_download() as download:
        page.get_by_role("link", name="download public key (.asc)").click()
    assert download.value.suggested_filename == f"{BOB}.asc"
    [key] = SequoiaOpenPGP().read_keys(Path(download.value.path()).read_bytes())
    assert key.fingerprint.upper() == BOB

    page.get_by_role("navigation", name="Main").get_by_role(
        "link", name="PGP keys", exact=True).click()
    expect(bob.locator(".badge.bad")).to_have_text("not trusted")
    expect(page.locator("p.count")).to_have_text("1\u20133 of 3 keys")
    shoot(page, artifacts, "pgp-keys")

    # Delete asks first: declined, the key stays; confirmed, it is gone.
    bob.get_by_role("link").click()
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Delete key").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("PGP key")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete key").click()
    expect(page.get_by_role("status")).to_contain_text("was deleted.")
    expect(page.locator("p.count")).to_have_text("1\u20132 of 2 keys")
    expect(bob).to_have_count(0)

    # Generate: a refused name is said beside its field; then the key.
    page.get_by_role("link", name="Generate key").click()
    page.get_by_label("Email address").fill("dave@example.com")
    page.get_by_label("Name").fill("Dave <dave@example.org>")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#name-error")).to_have_text("The name must not contain < or >.")
    shoot(page, artifacts, "pgp-generate-refused")
    page.get_by_label("Name").fill("Dave Dealer")
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("status")).to_have_text("The key was generated.")
    expect(page.locator("dl.facts")).to_contain_text("Dave Dealer <dave@example.com>")
