"""
The built-in CA in a running appliance, checked by independent tools: a
root CA made through the API, a certificate issued for an internal user and
exported as PKCS#12;

    - C{curl} fetches the CRL from the distribution point URL written in the
      certificate (the CRL listener, plain HTTP) and the CA certificate from
      its caIssuers URL, C{openssl crl} parses it, and C{openssl verify
      -crl_check} accepts the certificate, then refuses it once revoked;
    - NSS, Thunderbird's library, imports the PKCS#12 file (C{pk12util}) and
      lists the certificate (C{certutil});
    - C{openssl cms} signs and encrypts with the exported key and
      certificate, and the gateway decrypts and verifies that mail for the
      internal user, and no longer trusts the signer after the revocation.
"""

from __future__ import annotations

import base64
import email
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.conftest import Appliance, free_port, insecure_tls, write_appliance_config
from tests.peers import require_tool, run
from tests.sink import Sink
from tests.test_mta_appliance import NEW_PASSWORD, api

pytestmark = pytest.mark.e2e

P12_PASSWORD = "nss-and-openssl-read-this"


@pytest.fixture
def pki_appliance(tmp_path: Path) -> Iterator[tuple[Appliance, int]]:
    admin, smtp, portal, crl = free_port(), free_port(), free_port(), free_port()
    app = Appliance(tmp_path, write_appliance_config(tmp_path, admin, smtp, portal_port=portal,
                                                     crl_port=crl),
                    admin, smtp, portal_port=portal)
    app.start()
    try:
        yield app, crl
    finally:
        app.stop()


def download(appliance: Appliance, path: str, body: bytes) -> bytes:
    credentials = base64.b64encode(f"admin:{NEW_PASSWORD}".encode()).decode()
    request = urllib.request.Request(
        f"{appliance.admin_url}/api/v1{path}", method="POST", data=body,
        headers={"Authorization": f"Basic {credentials}", "Content-Type": "application/json"})
    context: ssl.SSLContext = insecure_tls()
    with urllib.request.urlopen(request, context=context) as response:
        assert response.headers["Content-Type"] == "application/x-pkcs12"
        data: bytes = response.read()
        return data


def curl(url: str, out: Path) -> None:
    run([require_tool("curl"), "--fail", "--silent", "--show-error", "--max-time", "10",
         "-o", out, url])


def test_issued_certificates_work_with_openssl_nss_and_the_gateway(
        pki_appliance: tuple[Appliance, int], tmp_path: Path) -> None:
    appliance, crl_port = pki_appliance
    openssl = require_tool("openssl")
    sink = Sink()
    try:
        api(appliance, "POST", "/admin/password", {"password": NEW_PASSWORD},
            password="admin")
        api(appliance, "PATCH", "/mta", {"relay_domains": ["example.org"], "transports": [
            {"domain": "example.org", "host": "[127.0.0.1]", "port": sink.port}]})
        crl_url = f"http://127.0.0.1:{crl_port}/pki/mail-ca.crl"
        ca = api(appliance, "POST", "/ca", {"subject": "CN=Example Mail CA, O=Example",
                                            "key_type": "rsa3072", "validity_days": 3650,
                                            "crl_url": crl_url})
        issued = api(appliance, "POST", "/ca/certificates", {"email": "alice@example.org"})
        p12 = tmp_path / "alice.p12"
        p12.write_bytes(download(appliance, f"/ca/certificates/{issued['thumbprint']}/pkcs12",
                                 f'{{"password": "{P12_PASSWORD}"}}'.encode()))

        # OpenSSL reads the file; the certificate names where its CRL and
        # its CA's certificate are.
        alice_pem, alice_key = tmp_path / "alice.pem", tmp_path / "alice.key"
        run([openssl, "pkcs12", "-in", p12, "-passin", f"pass:{P12_PASSWORD}", "-clcerts",
             "-nokeys", "-out", alice_pem])
        run([openssl, "pkcs12", "-in", p12, "-passin", f"pass:{P12_PASSWORD}", "-nocerts",
             "-nodes", "-out", alice_key])
        cert = x509.load_pem_x509_certificate(alice_pem.read_bytes())
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        assert points[0].full_name[0].value == crl_url
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        root_der, root_pem = tmp_path / "root.cer", tmp_path / "root.pem"
        curl(aia[0].access_location.value, root_der)
        run([openssl, "x509", "-inform", "DER", "-in", root_der, "-out", root_pem])
        assert x509.load_pem_x509_certificate(root_pem.read_bytes()).subject == cert.issuer

        def verify() -> tuple[int, str]:
            crl_der, crl_pem = tmp_path / "ca.crl", tmp_path / "ca-crl.pem"
            curl(crl_url, crl_der)
            text = run([openssl, "crl", "-inform", "DER", "-in", crl_der, "-noout", "-text"])
            assert b"Certificate Revocation List (CRL):" in text.stdout
            assert b"Example Mail CA" in text.stdout
            run([openssl, "crl", "-inform", "DER", "-in", crl_der, "-out", crl_pem])
            done = run([openssl, "verify", "-CAfile", root_pem, "-crl_check", "-CRLfile",
                        crl_pem, "-purpose", "smimesign", alice_pem], check=False)
            return done.returncode, (done.stdout + done.stderr).decode()

        status, said = verify()
        assert status == 0, said

        # NSS (Thunderbird) imports the PKCS#12 file.
        nss = tmp_path / "nss"
        nss.mkdir()
        run([require_tool("certutil"), "-N", "-d", f"sql:{nss}", "--empty-password"])
        run([require_tool("pk12util"), "-i", p12, "-d", f"sql:{nss}", "-W", P12_PASSWORD])
        listed = run([require_tool("certutil"), "-L", "-d", f"sql:{nss}"]).stdout.decode()
        assert "alice@example.org" in listed, listed
        keys = run([require_tool("certutil"), "-K", "-d", f"sql:{nss}"]).stdout.decode()
        assert "alice@example.org" in keys, keys

        # Mail signed and encrypted with the exported key and certificate.
        entity = (b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
                  b"Signed with a certificate of our own CA.\r\n")
        (tmp_path / "entity.txt").write_bytes(entity)
        signed, encrypted = tmp_path / "signed.eml", tmp_path / "encrypted.eml"
        run([openssl, "cms", "-sign", "-in", tmp_path / "entity.txt", "-signer", alice_pem,
             "-inkey", alice_key, "-out", signed, "-crlfeol"])
        run([openssl, "cms", "-encrypt", "-in", signed, "-out", encrypted, "-aes256",
             "-from", "alice@example.org", "-to", "alice@example.org",
             "-subject", "Our own CA", alice_pem])

        def send_and_read(count: int) -> str:
            run([require_tool("swaks"), "--server", f"127.0.0.1:{appliance.smtp_port}",
                 "--from", "alice@example.org", "--to", "alice@example.org",
                 "--helo", "client.example.org", "--data", "-"],
                stdin=encrypted.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
            content = sink.wait_for(count)[-1].content
            return content[:content.index(b"\r\n\r\n")].decode()

        header = send_and_read(1)
        assert "X-Cipherd-Info-Encrypted: True\r\n" in header, header
        assert "X-Cipherd-Info-Signer-Verified-0: True\r\n" in header, header
        assert "X-Cipherd-Info-Signer-Trusted-0: True\r\n" in header, header
        assert "X-Cipherd-Info-Signer-Email-0: alice@example.org" in header

        # Revoked: the CRL at the distribution point says so at once.
        api(appliance, "POST", f"/ca/certificates/{issued['thumbprint']}/revoke",
            {"reason": "key_compromise"})
        status, said = verify()
        assert status != 0 and "certificate revoked" in said, said
        header = send_and_read(2)
        assert "X-Cipherd-Info-Signer-Verified-0: True\r\n" in header, header
        assert "X-Cipherd-Info-Signer-Trusted-0: False\r\n" in header, header
        assert api(appliance, "GET", f"/ca/{ca['id']}")["crl_entries"] == 1

        # The PKCS#12 file mailed to its owner; the password only in the answer.
        api(appliance, "PATCH", "/settings/global", {"notification_sender":
                                                     "pki@example.org"})
        sent = api(appliance, "POST", f"/ca/certificates/{issued['thumbprint']}/send")
        assert sent["sent_to"] == "alice@example.org" and len(sent["password"]) == 20
        mailed = email.message_from_bytes(sink.wait_for(3)[-1].content)
        assert mailed["From"] == "pki@example.org" and mailed["To"] == "alice@example.org"
        assert sent["password"] not in mailed.as_string()
        attachment = next(part for part in mailed.walk()
                          if part.get_content_type() == "application/x-pkcs12")
        assert attachment.get_filename() == "alice@example.org.p12"
        opened = pkcs12.load_pkcs12(attachment.get_payload(decode=True),
                                    sent["password"].encode())
        assert opened.cert is not None and opened.cert.certificate == cert
    finally:
        sink.close()
