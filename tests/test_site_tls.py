"""
Admin → TLS certificate: the sites' certificate replaced by an uploaded
one (PEM with chain and key, or PKCS#12), checked first (key belongs to
it, valid now, for TLS servers, a strong key), written so a crash cannot
leave a half-replaced pair, and presented by the next connection -- of
the admin site and of STARTTLS -- without a restart.
"""

from __future__ import annotations

import html
import ipaddress
import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL.SSL import Context
from playwright.sync_api import BrowserContext, expect
from zope.interface.verify import verifyObject

from cipherd.datadir import make_self_signed_tls
from cipherd.pki.sitetls import ISiteCertificate, SiteCertificateError, SiteTLS, check_bundle
from tests.conftest import Appliance
from tests.harness import GOOD_PASSWORD
from tests.pki_factory import Identity, make_ca, new_rsa_key
from tests.test_browser_admin import (  # noqa: F401
    browser,
    context,
    log_in_and_change_default_password,
    shoot,
)

NOW = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)  # the harness's clock
HOST = "mail.example.com"


def server(issuer: Identity | None, *, name: str = HOST, days: tuple[int, int] = (-30, 365),
           eku: list[x509.ObjectIdentifier] | None = None,
           key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None,
           now: datetime = NOW) -> Identity:
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder().subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now + timedelta(days=days[0]))
        .not_valid_after(now + timedelta(days=days[1]))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.ExtendedKeyUsage(eku or [ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False))
    return Identity(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


@pytest.fixture(scope="module")
def ca() -> Identity:
    return make_ca("Example Issuing CA", not_before=NOW - timedelta(days=3650),
                   not_after=NOW + timedelta(days=3650), key=new_rsa_key())


def site_tls(tmp_path: Path, **kwargs: Any) -> SiteTLS:
    cert_pem, key_pem = make_self_signed_tls("localhost", NOW - timedelta(days=1))
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    return SiteTLS(tmp_path / "cert.pem", tmp_path / "key.pem", **kwargs)


def test_a_pem_bundle_in_any_order_gives_the_leaf_first(ca: Identity) -> None:
    leaf = server(ca)
    bundle = ca.pem() + leaf.key_pem() + leaf.pem()
    certificates, key_pem = check_bundle(bundle, None, NOW)
    assert [c.subject for c in certificates] == [leaf.cert.subject, ca.cert.subject]
    assert key_pem == leaf.key_pem()


def test_a_pkcs12_file_and_an_encrypted_pem_key_with_their_passwords(ca: Identity) -> None:
    leaf = server(ca, key=new_rsa_key())
    certificates, _ = check_bundle(leaf.pkcs12(b"secret", [ca.cert]), b"secret", NOW)
    assert [c.subject for c in certificates] == [leaf.cert.subject, ca.cert.subject]
    encrypted = leaf.key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"secret"))
    assert check_bundle(leaf.pem() + encrypted, b"secret", NOW)[0][0] == leaf.cert


@pytest.mark.parametrize(("what", "message"), [
    ("no key", "The file has no private key."),
    ("another key", "No certificate in the file belongs to the private key."),
    ("expired", "The certificate expired on 2027-01-05 08:00 UTC."),
    ("not yet", "The certificate is valid only from 2027-01-25 08:00 UTC."),
    ("client only", "The certificate is not for TLS servers"),
    ("weak", "The RSA key has 1024 bits; at least 2048 are needed."),
    ("pkcs12 wrong password", "the PKCS#12 password is wrong"),
    ("encrypted key, no password", "The private key is encrypted: enter its password."),
    ("garbage", "The file is neither PEM nor PKCS#12"),
])
def test_what_cannot_serve_the_sites_is_refused_with_its_reason(
        ca: Identity, what: str, message: str) -> None:
    leaf = server(ca)
    password: bytes | None = None
    if what == "no key":
        data = leaf.pem()
    elif what == "another key":
        data = leaf.pem() + server(ca).key_pem()
    elif what in ("expired", "not yet"):
        other = server(ca, days=(-40, -10) if what == "expired" else (10, 40))
        data = other.pem() + other.key_pem()
    elif what == "client only":
        other = server(ca, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
        data = other.pem() + other.key_pem()
    elif what == "weak":
        other = server(ca, key=rsa.generate_private_key(
            public_exponent=65537, key_size=1024))  # noqa: S505 -- refused, as it must be
        data = other.pem() + other.key_pem()
    elif what == "pkcs12 wrong password":
        data, password = leaf.pkcs12(b"secret"), b"wrong"
    elif what == "encrypted key, no password":
        data = leaf.pem() + leaf.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"))
    else:
        data = b"\x00\x01 not a certificate"
    with pytest.raises(SiteCertificateError) as refused:
        check_bundle(data, password, NOW)
    assert message in str(refused.value)


def test_a_replacement_is_written_and_taken_by_the_next_context(
        tmp_path: Path, ca: Identity) -> None:
    tls = site_tls(tmp_path)
    assert verifyObject(ISiteCertificate, tls)
    before = tls.info()
    assert before.self_signed and before.names == ("localhost", "127.0.0.1", "::1")
    old_context = tls.getContext()
    leaf = server(ca)
    info = tls.replace(leaf.pem() + ca.pem() + leaf.key_pem(), None, NOW)
    assert not info.self_signed and info.names == (HOST, "127.0.0.1") and info.chain == 1
    assert info.issuer == "CN=Example Issuing CA" and info.key == "EC secp256r1"
    assert tls.info() == info
    new_context = tls.getContext()
    assert isinstance(new_context, Context) and new_context is not old_context
    assert (tmp_path / "cert.pem").read_bytes() == leaf.pem() + ca.pem()
    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob("*.new"))
    # The next start reads what was uploaded.
    assert SiteTLS(tmp_path / "cert.pem", tmp_path / "key.pem").info() == info


def test_a_refused_upload_changes_nothing(tmp_path: Path, ca: Identity) -> None:
    tls = site_tls(tmp_path)
    before, files = tls.info(), (tmp_path / "cert.pem").read_bytes()
    with pytest.raises(SiteCertificateError):
        tls.replace(server(ca).pem(), None, NOW)
    assert tls.info() == before and (tmp_path / "cert.pem").read_bytes() == files


def test_a_replacement_a_crash_interrupted_is_finished_at_the_next_start(
        tmp_path: Path, ca: Identity) -> None:
    site_tls(tmp_path)
    leaf = server(ca)
    # Both new files on disk, the key renamed, the certificate not yet.
    (tmp_path / "key.pem").write_bytes(leaf.key_pem())
    (tmp_path / "cert.pem.new").write_bytes(leaf.pem())
    tls = SiteTLS(tmp_path / "cert.pem", tmp_path / "key.pem")
    assert tls.info().names[0] == HOST
    assert not (tmp_path / "cert.pem.new").exists()


def test_a_certificate_named_in_the_bootstrap_file_is_not_replaced(
        tmp_path: Path, ca: Identity) -> None:
    tls = site_tls(tmp_path, replaceable="named in the bootstrap file")
    leaf = server(ca)
    with pytest.raises(SiteCertificateError, match="named in the bootstrap file"):
        tls.replace(leaf.pem() + leaf.key_pem(), None, NOW)


# The page -------------------------------------------------------------------

def test_the_page_shows_the_certificate_and_takes_an_upload(
        signed_in_admin: Any, ca: Identity) -> None:
    page = signed_in_admin.get("/admin/tls")
    assert page.code == 200
    assert "itself (self-signed: browsers warn)" in page.text
    assert 'href="/admin/tls" aria-current="page"' in page.text

    refused = signed_in_admin.post_file("/admin/tls", server(ca).pem(), form_page="/admin/tls")
    assert refused.code == 400
    assert "The file has no private key." in html.unescape(refused.text)

    leaf = server(ca)
    p12 = leaf.pkcs12(b"pw", [ca.cert])
    unopened = signed_in_admin.post_file("/admin/tls", p12, form_page="/admin/tls")
    assert unopened.code == 400  # the PKCS#12 password was not given
    assert "the PKCS#12 password is wrong" in html.unescape(unopened.text)
    saved = signed_in_admin.post_file("/admin/tls", p12, form_page="/admin/tls", password="pw")
    assert saved.code == 303 and saved.header("location") == "/admin/tls?saved=1"
    page = signed_in_admin.get("/admin/tls?saved=1")
    assert "The new TLS certificate is in use." in page.text
    assert "CN=Example Issuing CA" in page.text and HOST in page.text


def test_an_upload_needs_the_csrf_token(signed_in_admin: Any, ca: Identity) -> None:
    leaf = server(ca)
    refused = signed_in_admin.post_file("/admin/tls", leaf.pem() + leaf.key_pem(),
                                        form_page="/admin/tls", csrf=None)
    assert refused.code == 403
    assert "self-signed" in signed_in_admin.get("/admin/tls").text


# The API -----------------------------------------------------------------------

def tls_api(harness: Any, method: str, data: bytes | None = None,
            media: str = "application/octet-stream", **headers: str) -> Any:
    return harness.request(method, "/api/v1/tls-certificate", auth=("admin", GOOD_PASSWORD),
                           data=data, headers={"Content-Type": media, **headers})


def test_the_api_shows_the_certificate_and_replaces_it_as_the_page_does(
        signed_in_admin: Any, ca: Identity) -> None:
    shown = tls_api(signed_in_admin, "GET")
    assert shown.code == 200
    generated = shown.json()
    assert generated == {
        "subject": "O=cipherd,CN=localhost", "names": ["localhost", "127.0.0.1", "::1"],
        "issuer": "O=cipherd,CN=localhost", "self_signed": True,
        "not_before": generated["not_before"], "not_after": generated["not_after"],
        "thumbprint": signed_in_admin.site_tls.info().sha256, "key": "EC secp256r1",
        "chain": 0, "origin": "generated", "replaceable": True}
    assert generated["not_before"].endswith(" UTC")

    # Refused with the page's reasons; the certificate in use stays.
    leaf = server(ca)
    no_key = tls_api(signed_in_admin, "PUT", leaf.pem())
    assert (no_key.code, no_key.json()["error"]) == (400, (
        "The file has no private key. Put the key in the same PEM file as the certificate, "
        "or upload a PKCS#12 file."))
    p12 = leaf.pkcs12(b"pw", [ca.cert])
    assert "the PKCS#12 password is wrong" in tls_api(signed_in_admin, "PUT", p12).json()[
        "error"]
    form = tls_api(signed_in_admin, "PUT", leaf.pem(), media="multipart/form-data")
    assert form.code == 415
    assert tls_api(signed_in_admin, "GET").json() == generated

    # PKCS#12 with its password: in use at once, on the page too.
    replaced = tls_api(signed_in_admin, "PUT", p12, **{"X-Password": "pw"})
    assert replaced.code == 200, replaced.text
    uploaded = replaced.json()
    assert (uploaded["subject"], uploaded["issuer"], uploaded["names"]) == (
        f"CN={HOST}", "CN=Example Issuing CA", [HOST, "127.0.0.1"])
    assert (uploaded["origin"], uploaded["chain"], uploaded["self_signed"]) == (
        "uploaded", 1, False)
    assert uploaded["thumbprint"] == leaf.cert.fingerprint(hashes.SHA256()).hex()
    assert (uploaded["not_before"], uploaded["not_after"]) == (
        "2026-12-16 08:00:00 UTC", "2028-01-15 08:00:00 UTC")
    assert tls_api(signed_in_admin, "GET").json() == uploaded
    assert signed_in_admin.site_tls.info().sha256 == uploaded["thumbprint"]
    assert "Origin</dt><dd>uploaded" in signed_in_admin.get("/admin/tls").text
    # POST as well as PUT, PEM with its chain and key.
    other = server(ca, name="webmail.example.com")
    posted = tls_api(signed_in_admin, "POST", other.pem() + ca.pem() + other.key_pem())
    assert posted.json()["names"] == ["webmail.example.com", "127.0.0.1"]


def test_the_api_says_a_certificate_of_the_bootstrap_file_stays(
        tmp_path: Path, ca: Identity) -> None:
    from tests.harness import AdminHarness

    harness = AdminHarness(tmp_path, site_tls_replaceable="Named in the bootstrap file.")
    harness.login_with_new_password()
    try:
        shown = tls_api(harness, "GET").json()
        assert (shown["origin"], shown["replaceable"], shown["why_not_replaceable"]) == (
            "bootstrap file", False, "Named in the bootstrap file.")
        leaf = server(ca)
        refused = tls_api(harness, "PUT", leaf.pem() + leaf.key_pem())
        assert (refused.code, refused.json()) == (409, {"error": "Named in the bootstrap file."})
        assert "Origin</dt><dd>named in the bootstrap file" in harness.get("/admin/tls").text
    finally:
        harness.close()


def test_an_uploaded_self_signed_certificate_is_not_taken_for_the_generated_one(
        tmp_path: Path) -> None:
    tls = site_tls(tmp_path)
    assert tls.info().origin == "generated"
    mine = server(None)
    assert tls.replace(mine.pem() + mine.key_pem(), None, NOW).origin == "uploaded"
    # And after a restart.
    assert SiteTLS(tmp_path / "cert.pem", tmp_path / "key.pem").info().origin == "uploaded"


# A running appliance ----------------------------------------------------------

def presented(port: int, starttls: bool = False) -> x509.Certificate:
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        if starttls:
            reader = raw.makefile("rb")
            reader.readline()
            raw.sendall(b"EHLO client.test\r\n")
            while not reader.readline().startswith(b"250 "):
                pass
            raw.sendall(b"STARTTLS\r\n")
            assert reader.readline().startswith(b"220")
        with client.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


@pytest.mark.e2e
@pytest.mark.browser
def test_an_uploaded_certificate_is_presented_without_a_restart(
        context: BrowserContext, appliance: Appliance,  # noqa: F811
        tmp_path: Path, artifacts: Path) -> None:
    now = datetime.now(UTC)
    issuer = make_ca("Example Issuing CA", not_before=now - timedelta(days=1),
                     not_after=now + timedelta(days=30), key=new_rsa_key())
    leaf = server(issuer, now=now)
    bundle = tmp_path / "site.pem"
    bundle.write_bytes(leaf.pem() + issuer.pem() + leaf.key_pem())
    assert presented(appliance.admin_port).issuer != issuer.cert.subject

    page = context.new_page()
    log_in_and_change_default_password(page)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin").click()
    page.get_by_role("link", name="TLS certificate").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("TLS certificate")
    expect(page.locator("dl.facts")).to_contain_text("self-signed")
    shoot(page, artifacts, "tls-certificate")
    page.get_by_label("Certificate file").set_input_files(str(bundle))
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("status")).to_contain_text("The new TLS certificate is in use.")
    expect(page.locator("dl.facts")).to_contain_text("CN=Example Issuing CA")
    shoot(page, artifacts, "tls-certificate-uploaded")

    # The same process, new connections: the admin site, the portal and
    # STARTTLS present the uploaded certificate.
    for port, starttls in ((appliance.admin_port, False), (appliance.portal_port, False),
                           (appliance.smtp_port, True)):
        assert presented(port, starttls) == leaf.cert, port
    # And after a restart too.
    appliance.restart()
    assert presented(appliance.admin_port) == leaf.cert
