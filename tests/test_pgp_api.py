"""
The OpenPGP keyring's JSON API (/pgp/keys, /pgp/keys/{fingerprint},
/pgp/keys/generate), over the admin harness with the real keyring on its
database, with keys real clients made (Thunderbird's test keys).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import formatEvent

from cipherd.pki.pgp import SequoiaOpenPGP
from cipherd.testing import result_of
from tests.harness import GOOD_PASSWORD, LOCKOUT_DURATION, AdminHarness
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

AUTH = ("admin", GOOD_PASSWORD)

LOCKOUT_WINDOW = 900  # the harness's


@pytest.fixture
def api(tmp_path: Path) -> Iterator[AdminHarness]:
    harness = AdminHarness(tmp_path)  # its clock: 2027-01-15
    response = harness.request("POST", "/api/v1/admin/password", auth=("admin", "admin"),
                               data=json.dumps({"password": GOOD_PASSWORD}).encode(),
                               headers={"Content-Type": "application/json"})
    assert response.code == 200
    yield harness
    harness.close()


def key_file(name: str) -> bytes:
    return (KEYS / name).read_bytes()


def call(api: AdminHarness, method: str, path: str, body: Any = None,
         raw: bytes | None = None, auth: Any = AUTH, **kw: Any) -> Any:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    media = "application/octet-stream" if raw is not None else "application/json"
    kw["headers"] = {"Content-Type": media, **kw.get("headers", {})}
    if auth is not None:
        kw["auth"] = auth
    return api.request(method, "/api/v1" + path, data=data, **kw)


def import_all(api: AdminHarness) -> None:
    for name, query in ((BOB_FILE, ""), (ALICE_SECRET_FILE, f"?password={ALICE_PASSPHRASE}"),
                        (EDDIE_FILE, ""), (CAROL_FILE, "")):
        response = call(api, "POST", "/pgp/keys" + query, raw=key_file(name))
        assert response.code == 201, response.text


def test_import_answers_what_was_imported(api: AdminHarness) -> None:
    bob = call(api, "POST", "/pgp/keys", raw=key_file(BOB_FILE))
    assert (bob.code, bob.json()) == (201, {"imported": [{
        "fingerprint": BOB, "user_ids": ["Bob Babbage <bob@openpgp.example>"], "new": True,
        "secret": False}]})
    again = call(api, "POST", "/pgp/keys", raw=key_file(BOB_FILE))
    assert again.json()["imported"][0]["new"] is False
    # The passphrase may come in a header instead, out of URLs and logs.
    alice = call(api, "POST", "/pgp/keys", raw=key_file(ALICE_SECRET_FILE),
                 headers={"X-Password": ALICE_PASSPHRASE})
    assert (alice.code, alice.json()["imported"]) == (201, [{
        "fingerprint": ALICE, "user_ids": ["Alice Lovelace <alice@openpgp.example>"],
        "new": True, "secret": True}])


def test_list_shows_each_key_with_its_verdict(api: AdminHarness) -> None:
    import_all(api)
    listing = call(api, "GET", "/pgp/keys").json()
    assert (listing["total"], listing["offset"], listing["limit"]) == (4, 0, 100)
    keys = {k["fingerprint"]: k for k in listing["keys"]}
    assert set(keys) == {BOB, ALICE, EDDIE, CAROL}
    assert keys[BOB] == {
        "fingerprint": BOB,
        "key_id": "FBFCC82A015E7330",
        "user_ids": ["Bob Babbage <bob@openpgp.example>"],
        "emails": ["bob@openpgp.example"],
        "created": "2019-10-15T10:18:26Z",
        "expires": None,
        "revoked": False,
        "trusted": True,
        "introducer": False,
        "secret": False,
        "source": "admin",
        "valid": True,
        "problem": None,
        "algorithm": "RSAEncryptSign",
        "flags": ["certify", "sign"],
        "subkeys": [{
            "key_id": "7C2FAA4DF93C37B2",
            "fingerprint": "1DDCE15F09217CEE2F3B37607C2FAA4DF93C37B2",
            "algorithm": "RSAEncryptSign",
            "created": "2019-10-15T10:18:26Z",
            "expires": None,
            "flags": ["encrypt"],
            "revoked": False,
        }],
    }
    assert keys[ALICE]["secret"] is True and keys[ALICE]["valid"] is True
    eddie = keys[EDDIE]
    assert (eddie["valid"], eddie["problem"], eddie["expires"]) == (
        False, "the key expired on 2016-12-31 01:02 UTC", "2016-12-31T01:02:31Z")
    assert eddie["subkeys"][0]["expires"] == "2016-12-31T01:02:31Z"
    carol = keys[CAROL]
    assert (carol["revoked"], carol["valid"], carol["problem"], carol["secret"]) == (
        True, False, "the key is revoked", True)


def test_list_search_and_pages(api: AdminHarness) -> None:
    import_all(api)

    def found(query: str) -> list[str]:
        response = call(api, "GET", "/pgp/keys" + query)
        assert response.code == 200, response.text
        return sorted(k["fingerprint"] for k in response.json()["keys"])

    assert found("?q=bob") == [BOB]
    assert found("?q=OPENPGP.EXAMPLE") == sorted([BOB, ALICE, EDDIE])
    assert found("?q=Lovelace") == [ALICE]
    assert found("?q=f231550c4f47") == [ALICE]  # the key id, part of the fingerprint
    assert found("?email=Carol@PGP.icu") == [CAROL]
    assert found("?email=carol") == []
    assert found("?q=nobody-here") == []

    first = call(api, "GET", "/pgp/keys?limit=3").json()
    second = call(api, "GET", "/pgp/keys?limit=3&offset=3").json()
    assert (first["total"], len(first["keys"])) == (4, 3)
    assert (second["total"], len(second["keys"])) == (4, 1)
    assert {k["fingerprint"] for k in first["keys"] + second["keys"]} == {
        BOB, ALICE, EDDIE, CAROL}
    assert call(api, "GET", "/pgp/keys?q=openpgp&limit=2").json()["total"] == 3

    refused = call(api, "GET", "/pgp/keys?limit=0&offset=x&q=" + "a" * 321)
    assert (refused.code, refused.json()) == (400, {
        "error": "Some query parameters were refused.",
        "errors": {"limit": "must be from 1 to 1000", "offset": "'x' is not a whole number",
                   "q": "must be at most 320 characters"}})


def test_wrong_or_missing_passphrase_is_refused(api: AdminHarness,
                                                log_events: list[dict[str, Any]]) -> None:
    message = (f"The passphrase of the secret key {ALICE} is wrong or missing.")
    wrong = call(api, "POST", "/pgp/keys?password=not-alices", raw=key_file(ALICE_SECRET_FILE))
    assert (wrong.code, wrong.json()) == (400, {"error": message})
    missing = call(api, "POST", "/pgp/keys", raw=key_file(ALICE_SECRET_FILE))
    assert (missing.code, missing.json()) == (400, {"error": message})
    assert call(api, "GET", "/pgp/keys").json()["total"] == 0
    # The right one, in the query: imported, and in no log.
    assert call(api, "POST", f"/pgp/keys?password={ALICE_PASSPHRASE}",
                raw=key_file(ALICE_SECRET_FILE)).code == 201
    logged = [formatEvent(e) + repr(e) for e in log_events]
    assert any("imported 1 PGP key(s)" in line and ALICE in line for line in logged)
    assert not [line for line in logged if ALICE_PASSPHRASE in line or "not-alices" in line]


def test_import_refusals(api: AdminHarness) -> None:
    empty = call(api, "POST", "/pgp/keys", raw=b"")
    assert (empty.code, empty.json()) == (400, {
        "error": "The request body is empty: send the key file (armored or binary) as the "
                 "body."})
    garbage = call(api, "POST", "/pgp/keys", raw=b"not a key at all")
    assert garbage.code == 400
    assert garbage.json()["error"].startswith("No OpenPGP key could be read")
    form = call(api, "POST", "/pgp/keys", raw=key_file(BOB_FILE),
                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (form.code, form.json()["error"]) == (415, "Send the file as the request body with "
                                                 "a Content-Type such as application/octet-stream.")
    trust = call(api, "POST", "/pgp/keys?trusted=maybe", raw=key_file(BOB_FILE))
    assert (trust.code, trust.json()) == (400, {
        "error": "Some query parameters were refused.",
        "errors": {"trusted": "'maybe' is not true or false"}})
    assert call(api, "GET", "/pgp/keys").json()["total"] == 0


def test_details(api: AdminHarness) -> None:
    import_all(api)
    listed = {k["fingerprint"]: k for k in call(api, "GET", "/pgp/keys").json()["keys"]}
    for fingerprint in (BOB, CAROL):
        details = call(api, "GET", f"/pgp/keys/{fingerprint}")
        assert (details.code, details.json()) == (200, listed[fingerprint])
    assert call(api, "GET", f"/pgp/keys/{BOB.lower()}").json() == listed[BOB]
    for missing in ("AB" * 20, "AB" * 32, "not-a-fingerprint", f"{BOB}.pem", "generate"):
        response = call(api, "GET", f"/pgp/keys/{missing}")
        assert (response.code, response.json()) == (404, {"error": "There is no such PGP key."})


def test_armored_download_reads_back_without_secrets(api: AdminHarness) -> None:
    import_all(api)
    for fingerprint in (BOB, ALICE, BOB.lower()):
        download = call(api, "GET", f"/pgp/keys/{fingerprint}.asc")
        assert download.code == 200
        assert download.header("content-type") == "application/pgp-keys"
        assert download.header("content-disposition") == (
            f'attachment; filename="{fingerprint.upper()}.asc"')
        assert download.body.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")
        [key] = SequoiaOpenPGP().read_keys(download.body)
        assert key.fingerprint.upper() == fingerprint.upper()
        assert key.secret is None  # Alice's secret key stays on the server
    assert call(api, "GET", f"/pgp/keys/{'CD' * 20}.asc").code == 404


def test_trust_toggle(api: AdminHarness) -> None:
    untrusted = call(api, "POST", "/pgp/keys?trusted=false", raw=key_file(BOB_FILE))
    assert untrusted.code == 201
    assert call(api, "GET", f"/pgp/keys/{BOB}").json()["trusted"] is False
    refused = result_of(api.keyring.encryption_keys("bob@openpgp.example"))
    assert refused.keys == () and refused.refused == (f"PGP key {BOB}: the key is not trusted",)

    trusted = call(api, "PATCH", f"/pgp/keys/{BOB.lower()}", {"trusted": True})
    assert trusted.code == 200
    assert trusted.json() == {**call(api, "GET", f"/pgp/keys/{BOB}").json(), "trusted": True}
    [key] = result_of(api.keyring.encryption_keys("bob@openpgp.example")).keys
    assert key.fingerprint == BOB.lower()
    assert call(api, "PATCH", f"/pgp/keys/{BOB}", {"trusted": False}).json()["trusted"] is False
    assert call(api, "GET", "/pgp/keys").json()["keys"][0]["trusted"] is False

    # A trusted introducer: both at once.
    both = call(api, "PATCH", f"/pgp/keys/{BOB}", {"trusted": True, "introducer": True})
    assert (both.json()["trusted"], both.json()["introducer"]) == (True, True)
    assert call(api, "PATCH", f"/pgp/keys/{BOB}", {"introducer": False}).json()[
        "introducer"] is False
    for body, errors in (({"trusted": "yes"}, {"trusted": "must be true or false"}),
                         ({}, {"trusted": "must be true or false"}),
                         (["trusted"], {"trusted": "must be true or false"}),
                         ({"trusted": 1}, {"trusted": "must be true or false"}),
                         ({"introducer": "no"}, {"introducer": "must be true or false"}),
                         ({"trusted": True, "other": 1}, {"trusted": "must be true or false"})):
        wrong = call(api, "PATCH", f"/pgp/keys/{BOB}", body)
        assert (wrong.code, wrong.json()) == (400, {
            "error": 'Send {"trusted": true|false} and/or {"introducer": true|false}.',
            "errors": errors}), body
    not_json = call(api, "PATCH", f"/pgp/keys/{BOB}", raw=b'{"trusted": true}')
    assert not_json.code == 415
    for missing in ("AB" * 20, "nope"):
        unknown = call(api, "PATCH", f"/pgp/keys/{missing}", {"trusted": True})
        assert (unknown.code, unknown.json()) == (404, {"error": "There is no such PGP key."})


def test_delete(api: AdminHarness, log_events: list[dict[str, Any]]) -> None:
    import_all(api)
    deleted = call(api, "DELETE", f"/pgp/keys/{ALICE.lower()}")
    assert (deleted.code, deleted.body) == (204, b"")
    assert call(api, "GET", f"/pgp/keys/{ALICE}").code == 404
    assert sorted(k["fingerprint"] for k in call(api, "GET", "/pgp/keys").json()["keys"]) == \
        sorted([BOB, EDDIE, CAROL])
    assert result_of(api.keyring.signer("alice@openpgp.example")) is None
    again = call(api, "DELETE", f"/pgp/keys/{ALICE}")
    assert (again.code, again.json()) == (404, {"error": "There is no such PGP key."})
    assert call(api, "DELETE", "/pgp/keys/nope").code == 404
    assert any(f"deleted the PGP key {ALICE}" in formatEvent(e) for e in log_events)


def test_generate(api: AdminHarness, log_events: list[dict[str, Any]]) -> None:
    made = call(api, "POST", "/pgp/keys/generate",
                {"email": " Dave@Example.COM ", "name": " Dave Dealer "})
    assert made.code == 201, made.text
    key = made.json()
    assert (key["user_ids"], key["emails"]) == (["Dave Dealer <Dave@example.com>"],
                                                ["dave@example.com"])
    assert (key["trusted"], key["secret"], key["source"], key["valid"], key["problem"]) == (
        True, True, "generated", True, None)
    # Made at the machine's time (the library's clock, not the harness's).
    assert key["created"].endswith("Z") and key["expires"] is None
    assert key["flags"] == ["certify"]
    assert sorted(s["flags"][0] for s in key["subkeys"]) == ["encrypt", "sign"]
    assert call(api, "GET", f"/pgp/keys/{key['fingerprint']}").json() == key
    assert call(api, "GET", "/pgp/keys?email=dave@example.com").json()["keys"] == [key]
    assert result_of(api.keyring.signer("dave@example.com")) is not None
    assert any(f"generated the PGP key {key['fingerprint']} for Dave@Example.COM"
               in formatEvent(e) for e in log_events)

    # No name: the address alone.
    bare = call(api, "POST", "/pgp/keys/generate", {"email": "erin@example.com"}).json()
    assert bare["user_ids"] == ["<erin@example.com>"]


@pytest.mark.parametrize(("body", "errors"), [
    ({"email": "not-an-address"},
     {"email": "'not-an-address' is not a valid email address: it has no @."}),
    ({"email": "a@b@example.com"},
     {"email": "'a@b@example.com' is not a valid email address: it must contain exactly "
               "one @."}),
    ({}, {"email": "Enter the email address of the key."}),
    ({"email": 5, "name": 7}, {"email": "Enter the email address of the key.",
                               "name": "must be a string"}),
    ({"email": "dave@example.com", "name": "Eve <eve@example.org>"},
     {"name": "The name must not contain < or >."}),
    ({"email": "dave@example.com", "name": "eve@example.org"},
     {"name": "The name must not contain an email address."}),
    ({"email": "dave@example.com", "name": "Dave\nDealer"},
     {"name": "The name must be one line of text, without control characters."}),
    ({"email": "dave@example.com", "name": "D" * 129},
     {"name": "The name is 129 characters long; at most 128 are allowed."}),
])
def test_generate_refusals(api: AdminHarness, body: dict[str, Any],
                           errors: dict[str, str]) -> None:
    refused = call(api, "POST", "/pgp/keys/generate", body)
    assert (refused.code, refused.json()) == (400, {
        "error": "Some values were refused; nothing was created.", "errors": errors})
    assert call(api, "GET", "/pgp/keys").json()["total"] == 0


def test_generate_takes_a_json_object(api: AdminHarness) -> None:
    listed = call(api, "POST", "/pgp/keys/generate", ["dave@example.com"])
    assert (listed.code, listed.json()) == (400, {"error": 'Send {"email": ..., "name": ...}.'})
    form = call(api, "POST", "/pgp/keys/generate", raw=b"email=dave@example.com",
                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.code == 415


ENDPOINTS = [("GET", "/pgp/keys"), ("POST", "/pgp/keys"), ("GET", f"/pgp/keys/{BOB}"),
             ("GET", f"/pgp/keys/{BOB}.asc"), ("PATCH", f"/pgp/keys/{BOB}"),
             ("DELETE", f"/pgp/keys/{BOB}"), ("POST", "/pgp/keys/generate")]


def test_refused_as_the_certificates_are(api: AdminHarness) -> None:
    """
    Without credentials, with wrong ones, from another site's page: the
    same answer as the certificate API, and nothing changes.
    """
    call(api, "POST", "/pgp/keys", raw=key_file(BOB_FILE))
    before = call(api, "GET", "/pgp/keys").json()
    body = {"trusted": False, "email": "x@example.com"}
    cases: list[dict[str, Any]] = [
        {"auth": None},
        {"auth": ("admin", "wrong")},
        {"headers": {"Origin": "https://evil.example"}},
        {"headers": {"Sec-Fetch-Site": "cross-site"}},
    ]
    for case in cases:
        headers = case.get("headers", {})
        auth = case.get("auth", AUTH)
        reference = call(api, "GET", "/certificates", auth=auth, headers=headers)
        assert reference.code in (401, 403), case
        for method, path in ENDPOINTS:
            # Failed logins out of the lockout's reach: each answer as the first.
            api.clock.advance(LOCKOUT_WINDOW + LOCKOUT_DURATION)
            response = call(api, method, path, body, auth=auth, headers=headers)
            assert (response.code, response.json()) == (reference.code, reference.json()), (
                case, method, path)
            assert response.header("www-authenticate") == \
                reference.header("www-authenticate")
    assert call(api, "GET", "/pgp/keys").json() == before


def test_refused_until_the_default_password_is_changed(tmp_path: Path) -> None:
    harness = AdminHarness(tmp_path)
    try:
        reference = call(harness, "GET", "/certificates", auth=("admin", "admin"))
        assert reference.code == 403
        for method, path in ENDPOINTS:
            response = call(harness, method, path, {"email": "x@example.com"},
                            auth=("admin", "admin"))
            assert (response.code, response.json()) == (403, reference.json()), path
        assert result_of(harness.keyring.count()) == 0
    finally:
        harness.close()
