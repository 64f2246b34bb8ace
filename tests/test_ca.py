"""
The built-in CA (L{cipherd.pki.ca}): root and intermediate CAs, S/MIME
certificates for internal addresses in the RFC 8550 profile, revocation
with the CRL signed at once and on the schedule and used by our own trust
checks, renewal at the window's edge (with C{task.Clock}), requests issued
in the background, PKCS#12 export; checked by our trust code and by
C{openssl}.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from zope.interface.verify import verifyObject

from cipherd.pki.ca import (
    CA_TICK,
    DAY,
    MAX_REQUESTS,
    RENEWAL_INTERVAL,
    CAError,
    CertificateAuthority,
    ICertificateAuthority,
    Superseded,
    aia_url,
    proposed_crl_url,
    url_problem,
)
from cipherd.pki.certstore import CertificateStore
from cipherd.pki.trust import Purpose
from cipherd.settings import GLOBAL, Level, Scope
from cipherd.store import ca as q
from cipherd.store.certificates import CERTIFICATES, ROOTS
from cipherd.store.settings import SettingsRepository
from cipherd.testing import SynchronousRunner, migrated_store, result_of

START = 1_800_000_000.0
CRL_URL = "http://pki.example.com/crl/mail-ca.crl"


class World:
    def __init__(self, url: str | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.store = migrated_store(url)
        self.kek = os.urandom(32)
        self.settings = SettingsRepository(self.store, self.clock)
        self.certificates = CertificateStore(self.store, self.clock, self.kek,
                                             SynchronousRunner())
        self.ca = CertificateAuthority(
            self.store, self.certificates, self.settings, SynchronousRunner(), self.clock,
            self.kek, internal=lambda email: email.endswith("@example.com"))

    def root(self, **kw: Any) -> Any:
        values = {"subject": "CN=Example Mail CA, O=Example", "key_type": "ec-p256",
                  "validity_days": 3650, "crl_url": CRL_URL, **kw}
        return result_of(self.ca.create_root(**values))

    def set(self, **values: Any) -> None:
        result_of(self.settings.update(GLOBAL, values))

    def read(self, fn: Any, *args: Any) -> Any:
        async def reading() -> Any:
            return await self.store.read(fn, *args)

        return result_of(reading())


@pytest.fixture
def world() -> World:
    return World()


def test_the_authority_is_what_the_gateway_expects(world: World) -> None:
    assert verifyObject(ICertificateAuthority, world.ca)


def test_a_root_ca_is_trusted_and_publishes_its_crl(world: World) -> None:
    root = world.root()
    assert root.kind == "root" and not root.pending and root.crl_entries == 0
    assert result_of(world.certificates.get(root.thumbprint, ROOTS)) is not None
    usage = root.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    crl = result_of(world.ca.published("/crl/mail-ca.crl"))
    assert crl.media_type == b"application/pkix-crl"
    assert x509.load_der_x509_crl(crl.body).is_signature_valid(root.certificate.public_key())
    cer = result_of(world.ca.published("/crl/mail-ca.cer"))
    assert x509.load_der_x509_certificate(cer.body) == root.certificate
    assert result_of(world.ca.published("/crl/other.crl")) is None
    # Our own trust checks hold its CRL.
    assert [r.issuer for r in result_of(world.certificates.crls())] == [root.subject]


def test_an_issued_certificate_has_the_smime_profile(world: World) -> None:
    root = world.root(key_type="rsa2048")
    issued = result_of(world.ca.issue("Alice@Example.com"))
    cert = x509.load_der_x509_certificate(issued.der)
    assert issued.email == "alice@example.com"
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.RFC822Name) == ["alice@example.com"]
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and usage.value.key_encipherment
    assert not usage.value.key_agreement
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.EMAIL_PROTECTION]
    assert not ext.get_extension_for_class(x509.BasicConstraints).value.ca
    points = ext.get_extension_for_class(x509.CRLDistributionPoints).value
    assert points[0].full_name[0].value == CRL_URL
    aia = ext.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert aia[0].access_location.value == aia_url(CRL_URL)
    cert.verify_directly_issued_by(root.certificate)
    # In the certificate store with its key: selected for signing and
    # encryption like an imported certificate.
    identity = result_of(world.certificates.signing_identity("alice@example.com"))
    assert identity is not None and identity[0] == cert
    assert identity[2] == [root.certificate]
    assert result_of(world.certificates.encryption_certificates("alice@example.com")) == [cert]


def test_ec_certificates_agree_on_keys(world: World) -> None:
    world.root()
    world.set(ca_key_type="ec-p384")
    cert = x509.load_der_x509_certificate(result_of(world.ca.issue("bob@example.com")).der)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_agreement and not usage.key_encipherment


def test_the_default_ca_per_domain(world: World) -> None:
    first = world.root()
    world.clock.advance(1)
    second = world.root(subject="CN=Sales CA", crl_url="http://pki.example.com/sales.crl")
    assert result_of(world.ca.issue("a@example.com")).ca_id == first.id  # the oldest
    result_of(world.settings.update(Scope(Level.DOMAIN, "sales.example.com"),
                                    {"ca_default": second.thumbprint.upper()}))
    result_of(world.settings.update(Scope(Level.DOMAIN, "sales.example.com"),
                                    {"locality": "internal"}))
    assert result_of(world.ca.issue("b@sales.example.com")).ca_id == second.id
    result_of(world.settings.update(Scope(Level.DOMAIN, "sales.example.com"),
                                    {"ca_default": "0123456789abcdef"}))
    with pytest.raises(CAError, match="does not exist"):
        result_of(world.ca.issue("c@sales.example.com"))


def test_only_internal_addresses_get_certificates(world: World) -> None:
    world.root()
    with pytest.raises(CAError, match="not an internal address"):
        result_of(world.ca.issue("someone@elsewhere.org"))
    result_of(world.settings.update(Scope(Level.DOMAIN, "partner.org"),
                                    {"locality": "internal"}))
    assert result_of(world.ca.issue("someone@partner.org")).email == "someone@partner.org"
    with pytest.raises(CAError, match="not an email address"):
        result_of(world.ca.issue("no address"))


def test_without_a_ca_nothing_is_issued(world: World) -> None:
    with pytest.raises(CAError, match="no CA that can issue"):
        result_of(world.ca.issue("alice@example.com"))
    assert result_of(world.ca.auto_issue("alice@example.com")) is None


def test_revocation_is_in_the_crl_and_refused_by_our_trust_checks(world: World) -> None:
    root = world.root()
    issued = result_of(world.ca.issue("alice@example.com"))
    cert = x509.load_der_x509_certificate(issued.der)
    assert result_of(world.certificates.check(cert, Purpose.SIGNING)).valid
    with pytest.raises(CAError, match="reason must be one of"):
        result_of(world.ca.revoke(issued.thumbprint, "bored"))
    world.clock.advance(60)
    revoked = result_of(world.ca.revoke(issued.thumbprint, "key_compromise"))
    assert revoked.reason == "key_compromise" and revoked.revoked == START + 60
    with pytest.raises(CAError, match="revoked already"):
        result_of(world.ca.revoke(issued.thumbprint, "superseded"))
    crl = x509.load_der_x509_crl(result_of(world.ca.published("/crl/mail-ca.crl")).body)
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == \
        x509.ReasonFlags.key_compromise
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    verdict = result_of(world.certificates.check(cert, Purpose.SIGNING))
    assert not verdict.valid and "revoked" in verdict.reason
    assert result_of(world.certificates.signing_identity("alice@example.com")) is None
    assert result_of(world.ca.authority(root.id)).crl_entries == 1


def test_crls_are_signed_on_the_schedule(world: World) -> None:
    root = world.root()
    world.set(ca_crl_schedule="0 0 * * * ?", ca_crl_validity=2)
    result_of(world.ca.tick())  # the first look starts the schedule
    first = result_of(world.ca.authority(root.id)).crl_this_update
    world.clock.advance(3600 - START % 3600 + 1)  # just past the hour
    result_of(world.ca.tick())
    signed = result_of(world.ca.authority(root.id))
    assert signed.crl_this_update > first
    assert signed.crl_next_update == signed.crl_this_update + 2 * 3600
    world.clock.advance(60)
    result_of(world.ca.tick())  # not due again within the hour
    assert result_of(world.ca.authority(root.id)).crl_this_update == signed.crl_this_update


def test_renewal_at_the_window_edge(world: World) -> None:
    world.root()
    world.set(ca_certificate_validity=100, ca_renewal_window=10)
    old = result_of(world.ca.issue("alice@example.com"))
    edge = old.not_after - 10 * DAY
    # Due exactly from the edge of the window on, while still valid.
    assert [r.thumbprint for r in world.read(
        q.due_for_renewal, edge + 10 * DAY - 1, edge - 1)] == []
    assert [r.thumbprint for r in world.read(
        q.due_for_renewal, edge + 10 * DAY, edge)] == [old.thumbprint]
    assert world.read(q.due_for_renewal, old.not_after + 10 * DAY, old.not_after) == []
    world.clock.advance(edge - START - 1)
    result_of(world.ca.tick())  # a second before the edge: nothing
    assert result_of(world.ca.count_issued()) == 1
    world.clock.advance(RENEWAL_INTERVAL)
    result_of(world.ca.tick())  # renewal's next run, past the edge
    issued = result_of(world.ca.issued())
    assert len(issued) == 2
    new = next(i for i in issued if i.thumbprint != old.thumbprint)
    assert new.origin == "renewal"
    assert new.not_after == pytest.approx(edge - 1 + RENEWAL_INTERVAL + 100 * DAY)
    assert result_of(world.ca.issued_certificate(old.thumbprint)).renewed_by == new.thumbprint
    # The new key signs; the old one is kept to decrypt older mail.
    identity = result_of(world.certificates.signing_identity("alice@example.com"))
    assert identity[0] == x509.load_der_x509_certificate(new.der)
    decryption = {c for c, _ in result_of(world.certificates.decryption_keys())}
    assert x509.load_der_x509_certificate(old.der) in decryption
    new_key = identity[1].public_key().public_numbers()
    old_cert = x509.load_der_x509_certificate(old.der)
    assert old_cert.public_key().public_numbers() != new_key
    world.clock.advance(DAY)
    result_of(world.ca.tick())  # renewed once only
    assert result_of(world.ca.count_issued()) == 2


def test_two_nodes_do_each_thing_once(world: World) -> None:
    other = CertificateAuthority(
        world.store, CertificateStore(world.store, world.clock, world.kek,
                                      SynchronousRunner()),
        world.settings, SynchronousRunner(), world.clock, world.kek,
        internal=lambda email: email.endswith("@example.com"))
    world.root()
    result_of(world.ca.request(["a@example.com"], by="admin"))
    [request] = result_of(world.ca.requests())
    result_of(world.ca.issue("a@example.com", origin="csv", request=request.id))
    # The other node's try comes too late: nothing is stored twice.
    with pytest.raises(Superseded):
        result_of(other.issue("a@example.com", origin="csv", request=request.id))
    assert result_of(world.ca.count_issued()) == 1
    first = result_of(world.ca.auto_issue("b@example.com"))
    assert result_of(other.auto_issue("b@example.com")) == first
    # Revoked while its renewal was under way: no renewal.
    due = result_of(world.ca.issue("c@example.com"))
    result_of(world.ca.revoke(due.thumbprint, "privilege_withdrawn"))
    with pytest.raises(Superseded):
        result_of(other.issue("c@example.com", origin="renewal", replaces=due.thumbprint))
    assert result_of(world.ca.count_issued(text="c@")) == 1


def test_requests_that_keep_failing_do_not_hold_up_the_others(world: World) -> None:
    world.root()
    result_of(world.ca.request([f"u{n}@elsewhere.org" for n in range(30)], by="admin"))
    result_of(world.ca.request(["good@example.com"], by="admin"))
    for _ in range(6):
        result_of(world.ca.tick())
        world.clock.advance(CA_TICK)
    assert [i.email for i in result_of(world.ca.issued())] == ["good@example.com"]
    assert len(result_of(world.ca.requests())) == 30
    with pytest.raises(CAError, match="At most"):
        result_of(world.ca.request(["x@example.com"] * (MAX_REQUESTS + 1)))


def test_no_renewal_that_would_be_due_again_at_once(
        world: World, log_events: list[dict[str, Any]]) -> None:
    # A CA that expires within the renewal window of what it issues: a
    # renewal would end with the CA, inside the window, and be renewed again
    # at every tick. It is not issued, and said once.
    world.root(validity_days=40)
    world.set(ca_certificate_validity=365, ca_renewal_window=30)
    old = result_of(world.ca.issue("alice@example.com"))
    assert old.not_after == pytest.approx(START + 40 * DAY)
    world.clock.advance(11 * DAY)
    for _ in range(3):
        result_of(world.ca.tick())
        world.clock.advance(10)
    assert result_of(world.ca.count_issued()) == 1
    said = [formatEvent(e) for e in log_events if "was not renewed" in e.get("log_format", "")]
    assert len(said) == 1 and "renew the CA" in said[0]


def test_the_core_on_each_database(database_url: str) -> None:
    world = World(database_url)
    root = world.root()
    world.set(ca_certificate_validity=60, ca_renewal_window=10)
    issued = result_of(world.ca.issue("alice@example.com"))
    result_of(world.ca.request(["b@example.com", "c@example.com"], by="admin"))
    result_of(world.ca.tick())
    assert result_of(world.ca.count_issued(text="example.com")) == 3
    assert [i.email for i in result_of(world.ca.issued(text="ALICE"))] == ["alice@example.com"]
    result_of(world.ca.revoke(issued.thumbprint, "superseded"))
    assert result_of(world.ca.authority(root.thumbprint)).crl_entries == 1
    world.clock.advance(51 * DAY)
    result_of(world.ca.tick())  # b and c renewed; alice's is revoked
    assert result_of(world.ca.count_issued()) == 5
    assert {i.origin for i in result_of(world.ca.issued(limit=2))} == {"renewal"}


def test_automatic_issuing_once_per_address(world: World) -> None:
    root = world.root()
    first = result_of(world.ca.auto_issue("carol@example.com"))
    assert first is not None
    assert result_of(world.ca.auto_issue("Carol@example.com")) == first
    issued = result_of(world.ca.issued_certificate(first))
    assert issued.origin == "auto" and issued.ca_id == root.id


def test_requests_are_issued_in_the_background(world: World) -> None:
    world.root()
    with pytest.raises(CAError, match="Not email addresses"):
        result_of(world.ca.request(["ok@example.com", "bad"]))
    count = result_of(world.ca.request(
        ["a@example.com", "b@example.com", "A@example.com", "x@elsewhere.org"], by="admin"))
    assert count == 3
    result_of(world.ca.tick())
    left = result_of(world.ca.requests())
    assert [(r.email, r.attempts) for r in left] == [("x@elsewhere.org", 1)]
    assert "not an internal address" in left[0].error
    assert sorted(i.email for i in result_of(world.ca.issued())) == [
        "a@example.com", "b@example.com"]
    assert result_of(world.ca.cancel_request(left[0].id))
    assert result_of(world.ca.requests()) == []


def test_intermediate_under_an_outside_root(world: World, tmp_path: Path) -> None:
    pending = result_of(world.ca.create_intermediate(
        "CN=Example Issuing CA", "rsa2048", "http://pki.example.com/issuing.crl"))
    assert pending.pending and pending.csr.startswith(b"-----BEGIN CERTIFICATE REQUEST")
    with pytest.raises(CAError, match=r"no CA that can issue|cannot issue"):
        result_of(world.ca.issue("alice@example.com"))
    # An outside root signs the request, with openssl.
    root_key = tmp_path / "root.key"
    root_pem = tmp_path / "root.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(root_key), "-out", str(root_pem), "-subj", "/CN=Outside Root",
                    "-days", "3650"], check=True, capture_output=True)
    (tmp_path / "req.pem").write_bytes(pending.csr)
    (tmp_path / "ext").write_text("basicConstraints=critical,CA:TRUE,pathlen:0\n"
                                  "keyUsage=critical,keyCertSign,cRLSign,digitalSignature\n")
    subprocess.run(["openssl", "x509", "-req", "-in", str(tmp_path / "req.pem"), "-CA",
                    str(root_pem), "-CAkey", str(root_key), "-CAcreateserial", "-days", "1000",
                    "-extfile", str(tmp_path / "ext"), "-out", str(tmp_path / "ca.pem")],
                   check=True, capture_output=True)
    with pytest.raises(CAError, match="no certificate for this CA"):
        result_of(world.ca.install(pending.id, root_pem.read_bytes()))
    result_of(world.certificates.import_data(root_pem.read_bytes(), store=ROOTS))
    installed = result_of(world.ca.install(
        pending.id, (tmp_path / "ca.pem").read_bytes() + root_pem.read_bytes()))
    assert not installed.pending and installed.kind == "intermediate"
    with pytest.raises(CAError, match="has its certificate already"):
        result_of(world.ca.install(pending.id, (tmp_path / "ca.pem").read_bytes()))
    issued = result_of(world.ca.issue("alice@example.com"))
    identity = result_of(world.certificates.signing_identity("alice@example.com"))
    assert identity is not None and len(identity[2]) == 2
    assert result_of(world.certificates.get(installed.thumbprint, CERTIFICATES)) is not None
    result_of(world.ca.revoke(issued.thumbprint, "superseded"))
    assert result_of(world.certificates.signing_identity("alice@example.com")) is None


def test_pkcs12_export(world: World) -> None:
    root = world.root()
    issued = result_of(world.ca.issue("alice@example.com"))
    with pytest.raises(CAError, match="at least 8"):
        result_of(world.ca.pkcs12(issued.thumbprint, "short"))
    data = result_of(world.ca.pkcs12(issued.thumbprint, "correct horse"))
    loaded = pkcs12.load_pkcs12(data, b"correct horse")
    assert loaded.cert.certificate == x509.load_der_x509_certificate(issued.der)
    assert loaded.cert.friendly_name == b"alice@example.com"
    assert [c.certificate for c in loaded.additional_certs] == [root.certificate]
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12(data, b"wrong password")


def test_values_are_checked(world: World) -> None:
    assert url_problem("https://pki.example.com/ca.crl")
    assert url_problem("http://pki.example.com/ca.crl?x=1")
    assert url_problem("http://pki.example.com/ca")
    assert url_problem(CRL_URL) is None
    assert "ASCII" in url_problem("http://bücher.example/ca.crl")
    assert proposed_crl_url("http://h", ["http://h/crl/ca1.crl", "http://x/crl/ca3.crl"]) == \
        "http://h/crl/ca2.crl"
    for kw, message in (({"key_type": "dsa"}, "key type"), ({"subject": ""}, "subject"),
                        ({"subject": "O=No Common Name"}, "common name"),
                        ({"subject": "x" * 65}, "common name"),
                        ({"subject": "CN=" + "x" * 65}, "cipherd can read|encoded"),
                        ({"validity_days": 0}, "validity"),
                        ({"crl_url": "ftp://x/y.crl"}, "http://")):
        with pytest.raises(CAError, match=message):
            world.root(**kw)
    world.root()
    with pytest.raises(CAError, match="path of its own"):
        world.root(subject="Another CA")
    assert result_of(world.ca.authority("not an id")) is None


def test_openssl_verifies_and_refuses_after_revocation(world: World, tmp_path: Path) -> None:
    root = world.root(key_type="rsa3072")
    issued = result_of(world.ca.issue("alice@example.com"))
    (tmp_path / "root.pem").write_bytes(root.certificate.public_bytes(
        serialization.Encoding.PEM))
    (tmp_path / "alice.pem").write_bytes(x509.load_der_x509_certificate(
        issued.der).public_bytes(serialization.Encoding.PEM))

    def verify() -> subprocess.CompletedProcess[str]:
        (tmp_path / "crl.der").write_bytes(result_of(world.ca.published(
            "/crl/mail-ca.crl")).body)
        subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(tmp_path / "crl.der"),
                        "-out", str(tmp_path / "crl.pem")], check=True)
        return subprocess.run(
            ["openssl", "verify", "-attime", str(int(START) + 10), "-purpose", "smimesign",
             "-CAfile", str(tmp_path / "root.pem"), "-crl_check", "-CRLfile",
             str(tmp_path / "crl.pem"), str(tmp_path / "alice.pem")],
            capture_output=True, text=True)

    assert verify().returncode == 0
    result_of(world.ca.revoke(issued.thumbprint, "affiliation_changed"))
    refused = verify()
    assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr
