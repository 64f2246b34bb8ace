"""
Admin → CA and /api/v1/ca through StubTreq: create a root and an
intermediate CA (its CSR signed outside, its certificate installed),
issue one address or a CSV of them (pending, issued in the background),
search what was issued, revoke with a reason (the CRL signed again),
PKCS#12 export; every change audited, refused to other roles, and bad
input answered with what is wrong.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, pkcs12

from cipherd.pki.ca import CAError
from cipherd.settings import GLOBAL, Level, scope_for
from cipherd.testing import RecordingSubmission, result_of
from cipherd.testing.sms import MemorySMSGateway
from cipherd.web.backend import send_pkcs12
from tests.harness import AdminHarness
from tests.test_admin_roles import ADMIN, NEW, api, log_in_as, make

CRL_URL = "http://pki.example.com:8081/crl/mail.crl"
SKI = bytes.fromhex("4e1f2a3b5c6d7e8f90a1b2c3d4e5f6a7")


def root(admin: AdminHarness, **kw: Any) -> dict[str, Any]:
    made = api(admin, "POST", "/ca", {"subject": "CN=Example Mail CA, O=Example",
                                      "key_type": "ec-p256", "validity_days": 3650,
                                      "crl_url": CRL_URL, **kw})
    assert made.code == 201, made.text
    return made.json()


def put_file(admin: AdminHarness, path: str, data: bytes) -> Any:
    return admin.request("PUT", "/api/v1" + path, auth=ADMIN, data=data,
                         headers={"Content-Type": "application/octet-stream"})


def audited(admin: AdminHarness) -> list[str]:
    return [e["action"] for e in api(admin, "GET", "/audit").json()["entries"]]


def test_a_root_ca_through_the_api(admin_in: AdminHarness) -> None:
    made = root(admin_in)
    assert made["kind"] == "root" and made["usable"] and not made["pending"]
    assert made["crl_entries"] == 0 and made["crl_this_update"]
    assert api(admin_in, "GET", "/ca").json()["authorities"] == [made]
    assert api(admin_in, "GET", f"/ca/{made['thumbprint']}").json()["id"] == made["id"]
    pem = api(admin_in, "GET", f"/ca/{made['id']}.pem")
    assert pem.header("content-type") == "application/x-pem-file"
    assert x509.load_pem_x509_certificate(pem.body).subject.rfc4514_string() == \
        "CN=Example Mail CA,O=Example"
    crl = api(admin_in, "GET", f"/ca/{made['id']}/crl")
    assert crl.header("content-type") == "application/pkix-crl"
    assert x509.load_der_x509_crl(crl.body).issuer.rfc4514_string() == \
        "CN=Example Mail CA,O=Example"
    # In the roots: trusted, listed like an imported root.
    roots = api(admin_in, "GET", "/certificates?store=roots").json()["certificates"]
    assert [r["thumbprint"] for r in roots] == [made["thumbprint"]]
    assert "ca.create" in audited(admin_in)


@pytest.mark.parametrize(("body", "error"), [
    ({"subject": "CN=x", "key_type": "dsa1024", "crl_url": CRL_URL}, "key type"),
    ({"subject": "CN=x", "crl_url": "https://pki.example.com/x.crl"}, "http://"),
    ({"subject": "", "crl_url": CRL_URL}, "subject"),
    ({"subject": "CN=x", "validity_days": "ten", "crl_url": CRL_URL}, "refused"),
    ({"subject": "CN=x", "kind": "sub", "crl_url": CRL_URL}, "refused"),
    ({"subject": "CN=x", "colour": "red"}, "refused"),
])
def test_a_ca_is_refused_with_why(admin_in: AdminHarness, body: dict[str, Any],
                                  error: str) -> None:
    refused = api(admin_in, "POST", "/ca", body)
    assert refused.code == 400 and error in refused.json()["error"], refused.text
    assert api(admin_in, "GET", "/ca").json()["authorities"] == []


def test_an_intermediate_under_an_outside_root(admin_in: AdminHarness) -> None:
    pending = api(admin_in, "POST", "/ca", {"subject": "CN=Issuing CA", "kind": "intermediate",
                                            "key_type": "ec-p384"}).json()
    assert pending["pending"] and pending["thumbprint"] is None
    assert pending["crl_url"] == "http://pki.example.com:8081/crl/ca1.crl"
    csr = x509.load_pem_x509_csr(api(admin_in, "GET", f"/ca/{pending['id']}.csr").body)
    assert csr.is_signature_valid
    assert api(admin_in, "GET", f"/ca/{pending['id']}/crl").code == 404
    refused = api(admin_in, "POST", "/ca/certificates", {"email": "alice@example.com",
                                                         "ca": pending["id"]})
    assert refused.code == 400 and "waiting for its certificate" in refused.json()["error"]
    # The organisation's root signs it.
    now = datetime.fromtimestamp(admin_in.clock.seconds(), UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name.from_rfc4514_string("CN=Organisation Root")
    root_cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                 .public_key(root_key.public_key()).serial_number(1)
                 .not_valid_before(now - timedelta(days=1))
                 .not_valid_after(now + timedelta(days=3650))
                 .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                 .sign(root_key, hashes.SHA256()))
    signed = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(name)
              .public_key(csr.public_key()).serial_number(2)
              .not_valid_before(now - timedelta(days=1))
              .not_valid_after(now + timedelta(days=1000))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              # A key identifier of another method than SHA-1 (RFC 7093).
              .add_extension(x509.SubjectKeyIdentifier(SKI), critical=False)
              .sign(root_key, hashes.SHA256()))
    wrong = put_file(admin_in, f"/ca/{pending['id']}/certificate",
                     root_cert.public_bytes(Encoding.PEM))
    assert wrong.code == 400 and "no certificate for this CA" in wrong.json()["error"]
    result_of(admin_in.certificates.import_data(root_cert.public_bytes(Encoding.PEM),
                                                store="roots"))
    installed = put_file(admin_in, f"/ca/{pending['id']}/certificate",
                         signed.public_bytes(Encoding.DER))
    assert installed.code == 200, installed.text
    assert installed.json()["kind"] == "intermediate" and installed.json()["usable"]
    again = put_file(admin_in, f"/ca/{pending['id']}/certificate",
                     signed.public_bytes(Encoding.DER))
    assert again.code == 409
    issued = api(admin_in, "POST", "/ca/certificates", {"email": "alice@example.com"}).json()
    assert issued["ca"] == pending["id"] and issued["status"] == "valid"
    # What it signs names its key as its certificate does.
    cert = x509.load_der_x509_certificate(result_of(admin_in.ca.issued_certificate(
        issued["thumbprint"])).der)
    crl = x509.load_der_x509_crl(api(admin_in, "GET", f"/ca/{pending['id']}/crl").body)
    for signed_here in (cert, crl):
        assert signed_here.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier).value.key_identifier == SKI
    assert api(admin_in, "DELETE", f"/ca/{pending['id']}").code == 409


def test_issue_search_revoke_and_export(admin_in: AdminHarness) -> None:
    made = root(admin_in, key_type="rsa2048")
    refused = api(admin_in, "POST", "/ca/certificates", {"email": "eve@elsewhere.org"})
    assert refused.code == 400 and "not an internal address" in refused.json()["error"]
    issued = api(admin_in, "POST", "/ca/certificates", {"email": "Alice@Example.com",
                                                        "validity_days": 30})
    assert issued.code == 201, issued.text
    alice = issued.json()
    assert alice["email"] == "alice@example.com" and alice["origin"] == "admin"
    assert alice["ca"] == made["id"]
    api(admin_in, "POST", "/ca/certificates", {"email": "bob@example.com"})
    listed = api(admin_in, "GET", "/ca/certificates?q=alice").json()
    assert listed["total"] == 1 and listed["certificates"][0]["thumbprint"] == alice["thumbprint"]
    assert api(admin_in, "GET", "/ca/certificates").json()["total"] == 2
    assert api(admin_in, "GET", f"/ca/certificates?q={alice['serial'][:8]}").json()["total"] == 1
    # In the certificate store with its key.
    stored = api(admin_in, "GET", f"/certificates/{alice['thumbprint']}").json()
    assert stored["has_private_key"] and stored["valid"]

    exported = api(admin_in, "POST", f"/ca/certificates/{alice['thumbprint']}/pkcs12",
                   {"password": "open sesame"})
    assert exported.code == 200 and exported.header("content-type") == "application/x-pkcs12"
    loaded = pkcs12.load_pkcs12(exported.body, b"open sesame")
    assert loaded.key is not None and loaded.cert is not None
    assert api(admin_in, "POST", f"/ca/certificates/{alice['thumbprint']}/pkcs12",
               {"password": "short"}).code == 400

    bad = api(admin_in, "POST", f"/ca/certificates/{alice['thumbprint']}/revoke",
              {"reason": "boredom"})
    assert bad.code == 400 and "key_compromise" in bad.json()["errors"]["reason"]
    revoked = api(admin_in, "POST", f"/ca/certificates/{alice['thumbprint']}/revoke",
                  {"reason": "key_compromise"})
    assert revoked.code == 200 and revoked.json()["status"] == "revoked"
    assert api(admin_in, "POST", f"/ca/certificates/{alice['thumbprint']}/revoke",
               {"reason": "superseded"}).code == 409
    crl = x509.load_der_x509_crl(api(admin_in, "GET", f"/ca/{made['id']}/crl").body)
    assert crl.get_revoked_certificate_by_serial_number(int(alice["serial"], 16))
    stored = api(admin_in, "GET", f"/certificates/{alice['thumbprint']}").json()
    assert not stored["valid"] and "revoked" in stored["purposes"]["signing"]["reason"]
    assert api(admin_in, "GET", "/ca/certificates/" + "0" * 64).code == 404
    # This harness delivers no mail: nothing is sent, and it says why.
    unsent = api(admin_in, "POST", f"/ca/certificates/{alice['thumbprint']}/send")
    assert unsent.code == 409 and "does not deliver mail" in unsent.json()["error"]
    assert {"ca.issue", "ca.export", "ca.revoke"} <= set(audited(admin_in))


def test_the_pkcs12_mailed_with_its_password_by_sms_or_to_the_admin(
        admin_in: AdminHarness) -> None:
    root(admin_in)
    sms, mailed = MemorySMSGateway(), RecordingSubmission()
    backend = dataclasses.replace(admin_in.site.backend, sms=sms,
                                  queue_runner=cast(Any, mailed))
    result_of(admin_in.settings.update(GLOBAL, {"notification_sender": "pki@example.com"}))
    alice = result_of(admin_in.ca.issue("alice@example.com"))
    shown = result_of(send_pkcs12(backend, alice))
    assert shown.password and shown.phone is None and not sms.sent
    # With a mobile number and an SMS gateway: the password goes by SMS, first.
    result_of(admin_in.settings.update(GLOBAL, {"sms_gateway_url":
                                                "https://sms.example/send?to={phone}"}))
    result_of(admin_in.settings.update(scope_for(Level.USER, "alice@example.com"),
                                       {"sms_phone": "+31 6 1234 5678"}))
    texted = result_of(send_pkcs12(backend, alice))
    assert texted.password is None and texted.phone == "+31612345678"
    [(_, phone, text)] = sms.sent
    assert phone == "+31612345678"
    password = text.rsplit(": ", 1)[1]
    sender, recipients, content = mailed.submitted[-1]
    assert (sender, recipients) == ("pki@example.com", ["alice@example.com"])
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert "text message" in message.get_body().get_content()
    assert password not in content.decode()
    [attachment] = list(message.iter_attachments())
    assert pkcs12.load_pkcs12(attachment.get_content(), password.encode()).cert is not None
    # The SMS cannot be sent: nothing is mailed.
    sms.refusal = "the gateway said 500"
    with pytest.raises(CAError, match="nothing was mailed"):
        result_of(send_pkcs12(backend, alice))
    assert len(mailed.submitted) == 2


def test_a_list_of_addresses_is_issued_in_the_background(admin_in: AdminHarness) -> None:
    root(admin_in)
    queued = api(admin_in, "POST", "/ca/certificates",
                 {"emails": ["a@example.com", "b@example.com", "x@elsewhere.org"]})
    assert queued.code == 202 and queued.json() == {"queued": 3}
    assert len(api(admin_in, "GET", "/ca/requests").json()["requests"]) == 3
    result_of(admin_in.ca.tick())
    [left] = api(admin_in, "GET", "/ca/requests").json()["requests"]
    assert left["email"] == "x@elsewhere.org" and "not an internal" in left["error"]
    assert api(admin_in, "DELETE", f"/ca/requests/{left['id']}").code == 204
    assert api(admin_in, "DELETE", f"/ca/requests/{left['id']}").code == 404
    # An id beyond what a database row can have (schemathesis found a 500).
    assert api(admin_in, "DELETE", "/ca/requests/118614113129737100460032").code == 404
    assert api(admin_in, "GET", "/ca/certificates").json()["total"] == 2
    assert api(admin_in, "POST", "/ca/certificates",
               {"email": "a@example.com", "emails": []}).code == 400


def test_the_pages(admin_in: AdminHarness) -> None:
    page = admin_in.get("/ca/")
    assert page.code == 200 and "There is no CA yet" in page.text
    assert 'href="/ca/"' in page.text and "http://pki.example.com:8081/crl/ca1.crl" in page.text
    refused = admin_in.post_form("/ca/create", {
        "kind": "root", "subject": "CN=Web CA", "key_type": "ec-p256", "validity_days": "x",
        "crl_url": CRL_URL}, csrf=admin_in.csrf_from(page))
    assert refused.code == 400 and "number of days" in refused.text
    made = admin_in.post_form("/ca/create", {
        "kind": "root", "subject": "CN=Web CA", "key_type": "ec-p256",
        "validity_days": "365", "crl_url": CRL_URL}, csrf=admin_in.csrf_from(page))
    assert made.code == 303, made.text
    details = admin_in.get(made.header("location"))
    assert "The CA was created" in details.text and "Sign CRL now" in details.text
    ca_id = made.header("location").split("/")[3].split("?")[0]
    assert admin_in.get(f"/ca/authorities/{ca_id}.crl").header("content-type") == \
        "application/pkix-crl"

    form = admin_in.get("/ca/issue")
    issued = admin_in.post_form("/ca/issue", {"email": "carol@example.com"},
                                csrf=admin_in.csrf_from(form))
    assert issued.code == 303, issued.text
    certificate = admin_in.get(issued.header("location"))
    assert "The certificate was issued" in certificate.text and "carol@example.com" in \
        certificate.text
    thumbprint = issued.header("location").split("/")[3].split("?")[0]
    listing = admin_in.get("/ca/issued?q=carol")
    assert thumbprint in listing.text and ">valid<" in listing.text

    csv_file = b"name,email\r\nDave,dave@example.com\r\nErin,erin@example.com\r\n"
    queued = admin_in.post_file("/ca/issue", csv_file, form_page="/ca/issue")
    assert queued.code == 303 and queued.header("location") == "/ca/pending?queued=2"
    assert "dave@example.com" in admin_in.get("/ca/pending").text

    token = admin_in.csrf_from(certificate)
    revoke = admin_in.post_form(f"/ca/issued/{thumbprint}/revoke", {"reason": "superseded"},
                                csrf=token)
    assert revoke.code == 303
    after = admin_in.get(f"/ca/issued/{thumbprint}")
    assert "revoked: Superseded" in after.text and "Revoke</button>" not in after.text
    # A form without the page's token is refused, and changes nothing.
    forged = admin_in.post_form("/ca/create", {"kind": "root", "subject": "CN=Forged",
                                               "crl_url": CRL_URL}, csrf=None)
    assert forged.code == 403
    assert len(result_of(admin_in.ca.authorities())) == 1
    download = admin_in.post_form(f"/ca/issued/{thumbprint}/pkcs12", {"password": "12345678"},
                                  csrf=token)
    assert download.header("content-type") == "application/x-pkcs12"


def test_other_roles_read_but_change_nothing(admin_in: AdminHarness) -> None:
    made = root(admin_in)
    make(admin_in, "audrey", "auditor")
    assert api(admin_in, "GET", "/ca", auth=("audrey", NEW)).code == 200
    refused = api(admin_in, "POST", "/ca/certificates", {"email": "a@example.com"},
                  auth=("audrey", NEW))
    assert refused.code == 403
    log_in_as(admin_in, "audrey")
    page = admin_in.get(f"/ca/authorities/{made['id']}")
    assert page.code == 200 and "Sign CRL now" not in page.text
    assert "Request certificate" not in admin_in.get("/ca/").text
