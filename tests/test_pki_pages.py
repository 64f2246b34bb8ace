"""
Admin → PKI pages through StubTreq: import with skip self-signed, list
(greyed invalid, whitelisted marked), details, download, Add to CTL,
delete, roots, CRLs.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cipherd.pki.certs import thumbprint
from tests.harness import AdminHarness, Response
from tests.peers import require_tool
from tests.pki_factory import START, make_ca, make_crl, make_user


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[AdminHarness]:
    harness = AdminHarness(tmp_path)
    harness.clock.advance(START.timestamp() + 86400 * 30 - harness.clock.seconds())
    harness.login_with_new_password()
    yield harness
    harness.close()


@pytest.fixture(scope="module")
def pki() -> dict:
    root = make_ca("Page Root")
    return {"root": root, "alice": make_user("alice@example.com", root),
            "tunnel": make_user("webmail@example.com", None),
            "expired": make_user("old@example.com", root, not_after=START + timedelta(days=1))}


def upload(admin: AdminHarness, path: str, data: bytes, csrf: str | None = "page",
           **fields: str) -> Response:
    return admin.post_file(path, data, csrf=csrf, form_page=(
        "/pki/certificates/import" if "crls" not in path else "/pki/crls"), **fields)


def test_import_skips_self_signed_unless_unticked(admin: AdminHarness, pki: dict) -> None:
    skipped = upload(admin, "/pki/certificates/import", pki["tunnel"].pem(),
                     skip_self_signed="on")
    assert skipped.code == 200
    assert ('<p role="status" class="warning">0 certificate(s) imported from a PEM file'
            in skipped.text)  # not in green
    assert "skipped (self-signed)" in skipped.text
    assert ("1 self-signed certificate(s) were skipped because “skip self-signed” was ticked"
            in skipped.text)
    imported = upload(admin, "/pki/certificates/import", pki["tunnel"].pem())
    assert ('<p role="status" class="notice">1 certificate(s) imported from a PEM file'
            in imported.text)
    assert "were skipped" not in imported.text


def test_ticked_certificates_download_as_pem_or_pkcs7(admin: AdminHarness, pki: dict,
                                                      tmp_path: Path) -> None:
    for name in ("alice", "expired"):
        upload(admin, "/pki/certificates/import", pki[name].pem())
    listing = admin.get("/pki/certificates").text
    ticks = re.findall(r'<input type="checkbox" form="download" name="thumbprint" '
                       r'value="([0-9a-f]{64})"', listing)
    wanted = sorted(thumbprint(pki[name].cert) for name in ("alice", "expired"))
    assert sorted(ticks) == wanted
    query = "&".join(f"thumbprint={t}" for t in wanted)
    pem = admin.get(f"/pki/certificates/download?{query}&format=pem")
    assert pem.code == 200
    assert pem.header("content-disposition") == 'attachment; filename="certificates-2.pem"'
    assert sorted(thumbprint(c) for c in x509.load_pem_x509_certificates(pem.body)) == wanted
    p7b = admin.get(f"/pki/certificates/download?{query}&format=p7b")
    assert p7b.header("content-disposition") == 'attachment; filename="certificates-2.p7b"'
    (tmp_path / "chosen.p7b").write_bytes(p7b.body)
    # What openssl reads from it, as a mail client's import would.
    printed = subprocess.run(
        [require_tool("openssl"), "pkcs7", "-inform", "DER", "-print_certs", "-in",
         str(tmp_path / "chosen.p7b")], capture_output=True, check=True).stdout
    assert sorted(thumbprint(c) for c in x509.load_pem_x509_certificates(printed)) == wanted
    none = admin.get("/pki/certificates/download?format=pem")
    assert none.code == 400 and "Tick one certificate or more" in none.text
    unknown = admin.get(f"/pki/certificates/download?thumbprint={'0' * 64}")
    assert unknown.code == 400


def test_import_refusals(admin: AdminHarness, pki: dict) -> None:
    bad = upload(admin, "/pki/certificates/import", b"not a certificate")
    assert bad.code == 400
    assert "not a certificate, PKCS#7, PKCS#12 or CRL file" in bad.text
    p12 = pki["alice"].pkcs12(b"right")
    wrong = upload(admin, "/pki/certificates/import", p12, password="wrong")
    assert "the password is missing or wrong" in wrong.text
    forged = upload(admin, "/pki/certificates/import", pki["alice"].pem(), csrf=None)
    assert forged.code == 403


def test_list_greys_invalid_and_marks_whitelisted(admin: AdminHarness, pki: dict) -> None:
    for name in ("alice", "tunnel", "expired"):
        upload(admin, "/pki/certificates/import", pki[name].pem())
    upload(admin, "/pki/roots/import", pki["root"].pem())
    tunnel = thumbprint(pki["tunnel"].cert)
    details = admin.get(f"/pki/certificates/{tunnel}")
    assert "The certificate is not trusted" in details.text
    assert f'<a href="/pki/certificates/{tunnel}/ctl">add to CTL</a>' in details.text
    entry = admin.get(f"/pki/certificates/{tunnel}/ctl")
    assert "<h1>Add new Certificate Trust List entry</h1>" in entry.text
    assert '<option value="whitelisted" >Whitelisted</option>' in entry.text
    added = admin.post_form(f"/pki/certificates/{tunnel}/ctl", {"status": "whitelisted"},
                            csrf=admin.csrf_from(entry))
    assert added.header("location") == f"/pki/certificates/{tunnel}?changed=ctl"
    listing = admin.get("/pki/certificates").text
    rows = {row.split("</tr>")[0] for row in listing.split("<tr class=")[1:]}
    by_email = {e: next(r for r in rows if e in r) for e in
                ("alice@example.com", "webmail@example.com", "old@example.com")}
    assert by_email["alice@example.com"].startswith('"valid"')
    assert by_email["webmail@example.com"].startswith('"valid"')
    assert "whitelisted</span>" in by_email["webmail@example.com"]
    assert by_email["old@example.com"].startswith('"invalid"')
    assert "The certificate expired on" in by_email["old@example.com"]
    assert "Page Root" in admin.get("/pki/roots").text


def test_details_download_and_delete(admin: AdminHarness, pki: dict) -> None:
    upload(admin, "/pki/certificates/import", pki["alice"].pkcs12(b"pw"), password="pw")
    t = thumbprint(pki["alice"].cert)
    page = admin.get(f"/pki/certificates/{t}")
    assert "stored (encrypted)" in page.text
    assert "alice@example.com" in page.text
    pem = admin.get(f"/pki/certificates/{t}.pem")
    assert pem.header("content-disposition") == f'attachment; filename="{t[:16]}.pem"'
    assert x509.load_pem_x509_certificate(pem.body) == pki["alice"].cert
    der = admin.get(f"/pki/certificates/{t}.cer")
    assert x509.load_der_x509_certificate(der.body) == pki["alice"].cert
    assert admin.get("/pki/certificates/" + "0" * 64).code == 404
    gone = admin.post_form(f"/pki/certificates/{t}/delete", {}, csrf=admin.csrf_from(page))
    assert gone.header("location") == "/pki/certificates"
    assert admin.get(f"/pki/certificates/{t}").code == 404


def test_crls_page(admin: AdminHarness, pki: dict) -> None:
    upload(admin, "/pki/roots/import", pki["root"].pem())
    upload(admin, "/pki/certificates/import", pki["alice"].pem())
    crl = make_crl(pki["root"], [(pki["alice"].cert, START)])
    page = upload(admin, "/pki/crls/import", crl.public_bytes(serialization.Encoding.PEM))
    assert "CRL of CN=Page Root: added." in page.text
    assert "<td>1</td>" in page.text
    details = admin.get(f"/pki/certificates/{thumbprint(pki['alice'].cert)}")
    assert "The certificate was revoked on 2026-01-01 00:00:00 UTC." in details.text
    no_crl = upload(admin, "/pki/crls/import", pki["alice"].pem())
    assert "The file contains no CRL." in no_crl.text
