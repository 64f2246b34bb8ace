"""
The certificate and CTL JSON API (contract: /certificates,
/certificates/{sha256}, /ctl).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7
from twisted.web.test.requesthelper import DummyRequest

from cipherd.pki.certs import thumbprint
from cipherd.web.common import access_log_formatter
from tests.harness import GOOD_PASSWORD, AdminHarness
from tests.pki_factory import START, make_ca, make_user

AUTH = ("admin", GOOD_PASSWORD)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[AdminHarness]:
    harness = AdminHarness(tmp_path)
    harness.clock.advance(START.timestamp() + 86400 - harness.clock.seconds())
    response = harness.request("POST", "/api/v1/admin/password", auth=("admin", "admin"),
                               data=json.dumps({"password": GOOD_PASSWORD}).encode(),
                               headers={"Content-Type": "application/json"})
    assert response.code == 200
    yield harness
    harness.close()


@pytest.fixture(scope="module")
def pki() -> dict:
    root = make_ca("API Root")
    return {"root": root, "alice": make_user("alice@example.com", root),
            "tunnel": make_user("webmail@example.com", None)}


def call(api: AdminHarness, method: str, path: str, body: Any = None,
         raw: bytes | None = None, **kw: Any) -> Any:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    media = "application/octet-stream" if raw is not None else "application/json"
    kw["headers"] = {"Content-Type": media, **kw.get("headers", {})}
    return api.request(method, "/api/v1" + path, auth=AUTH, data=data, **kw)


def test_import_list_details_download_delete(api: AdminHarness, pki: dict) -> None:
    skipped = call(api, "POST", "/certificates", raw=pki["tunnel"].der()).json()
    assert skipped["format"] == "DER"
    assert skipped["skipped"] == [{"thumbprint": thumbprint(pki["tunnel"].cert),
                                   "reason": "self-signed"}]
    done = call(api, "POST", "/certificates?skip_self_signed=false",
                raw=pki["tunnel"].pem()).json()
    assert done["imported"] == [thumbprint(pki["tunnel"].cert)]
    p12 = call(api, "POST", "/certificates", raw=pki["alice"].pkcs12(b"pw"),
               headers={"X-Password": "pw"}).json()
    assert p12["format"] == "PKCS#12" and len(p12["imported"]) == 1
    roots = call(api, "POST", "/certificates?store=roots", raw=pki["root"].pem()).json()
    assert roots["imported"] == [thumbprint(pki["root"].cert)]

    listing = call(api, "GET", "/certificates").json()["certificates"]
    by_email = {c["emails"][0]: c for c in listing}
    assert by_email["alice@example.com"]["valid"] is True
    assert by_email["alice@example.com"]["has_private_key"] is True
    assert by_email["webmail@example.com"]["valid"] is False
    assert by_email["webmail@example.com"]["reason"].startswith("The certificate is not trusted")
    only = call(api, "GET", "/certificates?email=ALICE@example.com").json()["certificates"]
    assert [c["emails"] for c in only] == [["alice@example.com"]]

    t = thumbprint(pki["alice"].cert)
    details = call(api, "GET", f"/certificates/{t}").json()
    assert details["purposes"]["encryption"] == {
        "valid": True, "reason": "The certificate chains to the trusted root CN=API Root."}
    assert x509.load_pem_x509_certificate(details["pem"].encode()) == pki["alice"].cert
    assert x509.load_der_x509_certificate(call(api, "GET", f"/certificates/{t}.cer").body) \
        == pki["alice"].cert
    assert call(api, "GET", "/certificates/" + "ab" * 32).code == 404
    assert call(api, "DELETE", f"/certificates/{t}").code == 200
    assert call(api, "DELETE", f"/certificates/{t}").code == 404


def test_several_certificates_download_as_one_file(api: AdminHarness, pki: dict) -> None:
    """
    The list page's *download certificates*: a PEM bundle or PKCS#7, by GET
    with the thumbprints in the query or by POST with them in JSON.
    """
    call(api, "POST", "/certificates?skip_self_signed=false",
         raw=pki["tunnel"].pem() + pki["alice"].pem())
    call(api, "POST", "/certificates?store=roots", raw=pki["root"].pem())
    alice, tunnel = thumbprint(pki["alice"].cert), thumbprint(pki["tunnel"].cert)
    wanted = [pki["alice"].cert, pki["tunnel"].cert]

    pem = call(api, "GET", f"/certificates/download?thumbprint={alice}"
                           f"&thumbprint={tunnel.upper()}&thumbprint={alice}")
    assert pem.code == 200 and pem.header("content-type") == "application/x-pem-file"
    assert pem.header("content-disposition") == 'attachment; filename="certificates-2.pem"'
    assert x509.load_pem_x509_certificates(pem.body) == wanted
    p7b = call(api, "GET", f"/certificates/download?thumbprint={alice}&thumbprint={tunnel}"
                           "&format=p7b")
    assert p7b.header("content-type") == "application/x-pkcs7-certificates"
    assert pkcs7.load_der_pkcs7_certificates(p7b.body) == wanted
    posted = call(api, "POST", "/certificates/download",
                  {"thumbprints": [alice, tunnel], "format": "p7b"})
    assert pkcs7.load_der_pkcs7_certificates(posted.body) == wanted
    root = call(api, "POST", "/certificates/download?store=roots",
                {"thumbprints": [thumbprint(pki["root"].cert)]})
    assert x509.load_pem_x509_certificates(root.body) == [pki["root"].cert]

    # Nothing, or not all, of what was asked: said, and no file.
    missing = call(api, "GET", f"/certificates/download?thumbprint={alice}"
                               f"&thumbprint={'ab' * 32}")
    assert (missing.code, missing.json()) == (404, {
        "error": f"There is no such certificate in certificates: {'ab' * 32}.",
        "missing": ["ab" * 32]})
    refused = call(api, "GET", "/certificates/download?format=zip")
    assert (refused.code, refused.json()) == (400, {
        "error": "Nothing was downloaded.",
        "errors": {"thumbprint": "must be one SHA-256 thumbprint (64 hexadecimal digits) or "
                                 "more",
                   "format": "must be pem or p7b"}})
    assert call(api, "POST", "/certificates/download", {"thumbprints": alice}).json()[
        "errors"] == {"thumbprints": "must be one SHA-256 thumbprint (64 hexadecimal digits) "
                                     "or more"}
    too_many = call(api, "POST", "/certificates/download", {"thumbprints": [alice] * 1001})
    assert too_many.json()["errors"] == {"thumbprints": "must be at most 1000 thumbprints"}


def test_import_errors(api: AdminHarness, pki: dict) -> None:
    wrong = call(api, "POST", "/certificates?password=nope", raw=pki["alice"].pkcs12(b"pw"))
    assert (wrong.code, wrong.json()["error"]) == (
        400, "The PKCS#12 file could not be opened: the password is missing or wrong.")
    bad_store = call(api, "POST", "/certificates?store=elsewhere", raw=b"x")
    assert bad_store.json()["errors"] == {"store": "'elsewhere' is not a store"}
    assert call(api, "POST", "/certificates", raw=b"x" * 10_000_001).code == 400
    form = call(api, "POST", "/certificates", raw=pki["root"].pem(),
                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (form.code, form.json()["error"]) == (415, "Send the file as the request body with "
                                                 "a Content-Type such as application/octet-stream.")


def test_ctl(api: AdminHarness, pki: dict) -> None:
    call(api, "POST", "/certificates?skip_self_signed=false", raw=pki["tunnel"].pem())
    t = thumbprint(pki["tunnel"].cert)
    added = call(api, "POST", "/ctl", {"thumbprint": t.upper(), "status": "whitelisted"})
    assert added.json() == {"thumbprint": t, "status": "whitelisted"}
    assert call(api, "GET", "/ctl").json() == {"ctl": [{"thumbprint": t,
                                                        "status": "whitelisted"}]}
    [entry] = call(api, "GET", "/certificates").json()["certificates"]
    assert entry["valid"] is True and entry["ctl"] == "whitelisted"
    bad = call(api, "POST", "/ctl", {"thumbprint": t, "status": "maybe"})
    assert bad.json()["errors"] == {"status": "must be whitelisted or blacklisted"}
    assert call(api, "POST", "/ctl", {"thumbprint": "xyz"}).json()["errors"] == {
        "thumbprint": "must be 64 hexadecimal digits"}
    assert call(api, "DELETE", "/ctl", {"thumbprint": t}).code == 200
    assert call(api, "DELETE", "/ctl", {"thumbprint": t}).code == 404


def test_passwords_in_query_strings_stay_out_of_the_access_log() -> None:
    request = DummyRequest([b"api"])
    request.uri = b"/api/v1/certificates?password=hunter2&skip_self_signed=false"
    request.method = b"POST"
    request.code = 200
    request.sentLength = 10
    line = access_log_formatter("[28/Nov/2026:03:00:00 +0000]", request)
    assert "hunter2" not in line
    assert "?password=***&skip_self_signed=false" in line
