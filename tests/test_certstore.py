"""
The certificate store: import of every format (detected from the bytes),
skip self-signed, duplicates, sealed private keys, lookups, selection,
tunnel certificates; on SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet.task import Clock

from cipherd.pki.certs import email_addresses, thumbprint
from cipherd.pki.certstore import POLL_INTERVAL, CertificateStore
from cipherd.pki.errors import CertificateImportError
from cipherd.pki.keywrap import KeyUnsealError, seal_key, unseal_key
from cipherd.pki.trust import CTLStatus, Purpose
from cipherd.store.certificates import CERTIFICATES, ROOTS
from cipherd.testing import SynchronousRunner, migrated_store, result_of
from tests.pki_factory import (
    EMAIL_EKU,
    SMIME_USAGE,
    START,
    make_ca,
    make_crl,
    make_user,
    new_rsa_key,
    pkcs7_bundle,
)

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
NOW = START + timedelta(days=100)


@pytest.fixture(scope="module")
def pki() -> dict:
    root = make_ca("Test Root")
    ca = make_ca("Test Intermediate", issuer=root)
    return {
        "root": root,
        "ca": ca,
        "alice": make_user("Alice@Example.com", ca, key_usage=SMIME_USAGE, eku=EMAIL_EKU),
        "bob": make_user("bob@example.com", ca),
        "self": make_user("webmail@example.com", None),
    }


def make_store(url: str | None = None) -> CertificateStore:
    clock = Clock()
    clock.advance(NOW.timestamp())
    return CertificateStore(migrated_store(url), clock, os.urandom(32), SynchronousRunner())


@pytest.fixture
def store() -> CertificateStore:
    return make_store()


def test_pem_with_many_certificates(store: CertificateStore, pki: dict) -> None:
    data = pki["alice"].pem() + b"\nsome text between\n" + pki["bob"].pem() + pki["ca"].pem()
    result = result_of(store.import_data(data))
    assert result.format == "PEM"
    assert sorted(result.imported) == sorted(
        thumbprint(pki[n].cert) for n in ("alice", "bob", "ca"))
    again = result_of(store.import_data(data))
    assert again.imported == [] and len(again.duplicates) == 3


def test_der_pkcs7_and_format_detection(store: CertificateStore, pki: dict) -> None:
    assert result_of(store.import_data(pki["alice"].der())).format == "DER"
    for encoding, name in ((serialization.Encoding.DER, "PKCS#7"),
                           (serialization.Encoding.PEM, "PEM")):
        bundle = pkcs7_bundle([pki["bob"].cert, pki["ca"].cert], encoding)
        result = result_of(make_store().import_data(bundle))
        assert result.format == name
        assert len(result.imported) == 2


def test_pkcs12_with_password_keeps_the_key_sealed(store: CertificateStore, pki: dict) -> None:
    data = pki["alice"].pkcs12(b"secret", [pki["ca"].cert])
    with pytest.raises(CertificateImportError, match="the password is missing or wrong"):
        result_of(store.import_data(data, password="wrong"))
    result = result_of(store.import_data(data, password="secret"))
    assert result.format == "PKCS#12"
    assert len(result.imported) == 2
    row = result_of(store.get(thumbprint(pki["alice"].cert)))
    assert row is not None and row.has_key
    assert pki["alice"].key_pem() not in row.sealed_key  # type: ignore[operator]
    keys = result_of(store.decryption_keys())
    assert [thumbprint(c) for c, _ in keys] == [thumbprint(pki["alice"].cert)]


def test_a_key_imported_later_is_attached(store: CertificateStore, pki: dict) -> None:
    result_of(store.import_data(pki["bob"].pem()))
    result = result_of(store.import_data(pki["bob"].pem() + pki["bob"].key_pem()))
    assert result.keys_added == [thumbprint(pki["bob"].cert)]


def test_garbage_is_refused_with_a_reason(store: CertificateStore) -> None:
    with pytest.raises(CertificateImportError,
                       match="not a certificate, PKCS#7, PKCS#12 or CRL file"):
        result_of(store.import_data(b"\x00\x01 definitely not a certificate"))
    with pytest.raises(CertificateImportError, match="contains no certificate or CRL"):
        result_of(store.import_data(b"-----BEGIN NOTHING-----\nAAAA\n-----END NOTHING-----\n"))
    with pytest.raises(CertificateImportError, match="could not be read"):
        result_of(store.import_data(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))


def test_skip_self_signed_is_on_by_default(store: CertificateStore, pki: dict) -> None:
    result = result_of(store.import_data(pki["self"].pem()))
    assert result.imported == []
    assert result.skipped == [(thumbprint(pki["self"].cert), "self-signed")]
    result = result_of(store.import_data(pki["self"].pem(), skip_self_signed=False))
    assert result.imported == [thumbprint(pki["self"].cert)]


def test_lookups(store: CertificateStore, pki: dict) -> None:
    result_of(store.import_data(pki["alice"].pem() + pki["bob"].pem()))
    alice = pki["alice"].cert
    assert email_addresses(alice) == ["alice@example.com"]
    assert result_of(store.find_by_email("ALICE@example.COM")) == [alice]
    assert result_of(store.find_by_issuer_serial(alice.issuer, alice.serial_number)) == [alice]
    ski = alice.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert result_of(store.find_by_subject_key_id(ski)) == [alice]
    assert result_of(store.find_by_email("nobody@example.com")) == []


def test_selection_needs_trust(store: CertificateStore, pki: dict) -> None:
    result_of(store.import_data(pki["alice"].pkcs12(b"pw"), password="pw"))
    result_of(store.import_data(pki["ca"].pem()))
    assert result_of(store.encryption_certificates("alice@example.com")) == []
    assert result_of(store.signing_identity("alice@example.com")) is None
    result_of(store.import_data(pki["root"].pem(), store=ROOTS))
    assert result_of(store.encryption_certificates("alice@example.com")) == [pki["alice"].cert]
    identity = result_of(store.signing_identity("alice@example.com"))
    assert identity is not None
    cert, key, chain = identity
    assert cert == pki["alice"].cert
    assert key.private_numbers() == pki["alice"].key.private_numbers()  # type: ignore[union-attr]
    assert chain == [pki["ca"].cert, pki["root"].cert]

    # Revoked by an imported CRL: no longer selected.
    crl = make_crl(pki["ca"], [(pki["alice"].cert, START)])
    result = result_of(store.import_data(crl.public_bytes(serialization.Encoding.DER)))
    assert result.crls == [("CN=Test Intermediate", "added")]
    assert result_of(store.encryption_certificates("alice@example.com")) == []


def test_a_crl_is_taken_only_from_its_trusted_issuer(store: CertificateStore,
                                                      pki: dict) -> None:
    """
    A forged CRL (same issuer name, another key) must not replace the real
    one and so lift a revocation.
    """
    from tests.pki_factory import CA_USAGE

    der = serialization.Encoding.DER
    orphan = make_crl(pki["ca"], [])
    refused = result_of(store.import_data(orphan.public_bytes(der))).crls
    assert refused == [("CN=Test Intermediate", "refused: there is no certificate of its issuer "
                        "CN=Test Intermediate to check its signature; import the CA "
                        "certificate first")]
    result_of(store.import_data(pki["root"].pem(), store=ROOTS))
    result_of(store.import_data(pki["ca"].pem() + pki["alice"].pem()))
    real = make_crl(pki["ca"], [(pki["alice"].cert, START)])
    assert result_of(store.import_data(real.public_bytes(der))).crls == [
        ("CN=Test Intermediate", "added")]

    impostor = make_ca("Test Intermediate")  # same name, its own key
    forged = make_crl(impostor, [], this_update=START + timedelta(days=1))
    # Even with the impostor's certificate in the same file.
    bundle = pkcs7_bundle([impostor.cert], serialization.Encoding.PEM) + forged.public_bytes(
        serialization.Encoding.PEM)
    assert result_of(store.import_data(bundle, skip_self_signed=False)).crls == [
        ("CN=Test Intermediate", "refused: its issuer is not trusted: The certificate is not "
         "trusted: the signature on the certificate does not verify with the certificate of "
         "its issuer CN=Test Intermediate.")]
    assert result_of(store.encryption_certificates("alice@example.com")) == []

    no_crl_sign = make_ca("No CRL Sign", issuer=pki["root"],
                          key_usage={**CA_USAGE, "crl_sign": False})
    result_of(store.import_data(no_crl_sign.pem()))
    assert result_of(store.import_data(make_crl(no_crl_sign, []).public_bytes(der))).crls == [
        ("CN=No CRL Sign", "refused: the key usage of its issuer's certificate does not allow "
         "signing CRLs (cRLSign)")]


def test_a_same_named_ca_elsewhere_keeps_its_own_crl(store: CertificateStore) -> None:
    """
    Two trusted hierarchies with a CA of the same name: each CA's CRL is
    kept beside the other's, and neither lifts nor adds revocations of the
    other's certificates.
    """
    der = serialization.Encoding.DER
    root_a, root_b = make_ca("Root A"), make_ca("Root B")
    ca_a, ca_b = (make_ca("Issuing CA", issuer=root, key=new_rsa_key())
                  for root in (root_a, root_b))
    alice = make_user("alice@example.com", ca_a, key_usage=SMIME_USAGE, eku=EMAIL_EKU)
    bob = make_user("bob@example.com", ca_b, key_usage=SMIME_USAGE, eku=EMAIL_EKU)
    result_of(store.import_data(root_a.pem() + root_b.pem(), store=ROOTS))
    result_of(store.import_data(ca_a.pem() + ca_b.pem() + alice.pem() + bob.pem()))
    assert result_of(store.import_data(
        make_crl(ca_a, [(alice.cert, START)]).public_bytes(der))).crls == [
        ("CN=Issuing CA", "added")]
    # B's newer CRL lists bob... and alice's serial, which B never issued.
    b_crl = make_crl(ca_b, [(bob.cert, START), (alice.cert, START)],
                     this_update=START + timedelta(days=1))
    assert result_of(store.import_data(b_crl.public_bytes(der))).crls == [
        ("CN=Issuing CA", "added")]
    assert len(result_of(store.crls())) == 2
    assert not result_of(store.check(alice.cert, Purpose.ENCRYPTION)).valid  # still revoked
    assert not result_of(store.check(bob.cert, Purpose.ENCRYPTION)).valid
    # A's CRL that no longer lists alice replaces A's only.
    result_of(store.import_data(make_crl(ca_a, [], this_update=START + timedelta(days=2))
                                .public_bytes(der)))
    assert len(result_of(store.crls())) == 2
    assert result_of(store.check(alice.cert, Purpose.ENCRYPTION)).valid


def test_a_whitelisted_certificate_cannot_sign_a_ca_crl(store: CertificateStore,
                                                        pki: dict) -> None:
    """
    The CTL vouches for one certificate: a whitelisted self-signed one that
    bears the CA's name does not get to speak for the CA's revocations.
    """
    der = serialization.Encoding.DER
    result_of(store.import_data(pki["root"].pem(), store=ROOTS))
    result_of(store.import_data(pki["ca"].pem() + pki["alice"].pem()))
    result_of(store.import_data(make_crl(pki["ca"], [(pki["alice"].cert, START)])
                                .public_bytes(der)))
    mallory = make_ca("Test Intermediate", key=new_rsa_key())  # self-signed, the CA's name
    result_of(store.import_data(mallory.pem(), skip_self_signed=False))
    result_of(store.set_ctl(thumbprint(mallory.cert), CTLStatus.WHITELISTED))
    forged = make_crl(mallory, [], this_update=START + timedelta(days=1))
    outcome = result_of(store.import_data(forged.public_bytes(der))).crls
    assert len(outcome) == 1 and outcome[0][1].startswith("refused: its issuer is not trusted")
    verdict = result_of(store.check(pki["alice"].cert, Purpose.ENCRYPTION))
    assert not verdict.valid and "revoked" in verdict.reason


def test_a_separate_crl_key_must_be_findable_again(store: CertificateStore,
                                                     pki: dict) -> None:
    """
    A CRL signed by a separate CRL-signing certificate (not a CA) is taken
    only when the CRL names that key (authority key identifier): otherwise
    the trust checks could not find its signer later and it would sit in
    the store unused.  When it names it, it revokes.
    """
    from cryptography.hazmat.primitives import hashes

    result_of(store.import_data(pki["root"].pem(), store=ROOTS))
    result_of(store.import_data(pki["ca"].pem() + pki["alice"].pem()))
    key = new_rsa_key()
    signer = (x509.CertificateBuilder()
              .subject_name(pki["ca"].cert.subject).issuer_name(pki["root"].cert.subject)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(START).not_valid_after(START + timedelta(days=365))
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                             critical=False)
              .add_extension(x509.KeyUsage(False, False, False, False, False, False, True,
                                           False, False), critical=True)
              .sign(pki["root"].key, hashes.SHA256()))
    signer_pem = signer.public_bytes(serialization.Encoding.PEM)

    def crl(*extensions: x509.ExtensionType) -> bytes:
        builder = (x509.CertificateRevocationListBuilder()
                   .issuer_name(pki["ca"].cert.subject)
                   .last_update(START).next_update(START + timedelta(days=30))
                   .add_revoked_certificate(x509.RevokedCertificateBuilder()
                                            .serial_number(pki["alice"].cert.serial_number)
                                            .revocation_date(START).build()))
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    assert result_of(store.import_data(signer_pem + crl())).crls == [
        ("CN=Test Intermediate", "refused: it is signed by a certificate that is not a CA "
         "certificate and it does not name that key (authority key identifier)")]
    assert result_of(store.check(pki["alice"].cert, Purpose.ENCRYPTION)).valid
    named = crl(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()))
    assert result_of(store.import_data(named)).crls == [("CN=Test Intermediate", "added")]
    verdict = result_of(store.check(pki["alice"].cert, Purpose.ENCRYPTION))
    assert not verdict.valid and "revoked" in verdict.reason


def test_ctl_and_listing(store: CertificateStore, pki: dict) -> None:
    result_of(store.import_data(pki["self"].pem(), skip_self_signed=False))
    print_ = thumbprint(pki["self"].cert)
    [entry] = result_of(store.listing())
    assert not entry.verdict.valid and entry.ctl_status is None
    result_of(store.set_ctl(print_, CTLStatus.WHITELISTED))
    [entry] = result_of(store.listing())
    assert entry.verdict.valid and entry.ctl_status is CTLStatus.WHITELISTED
    assert result_of(store.encryption_certificates("webmail@example.com")) == [pki["self"].cert]
    result_of(store.set_ctl(print_, CTLStatus.BLACKLISTED))
    assert result_of(store.encryption_certificates("webmail@example.com")) == []
    assert result_of(store.remove_ctl(print_)) is True
    assert result_of(store.ctl()) == {}


def test_tunnel_certificate_as_in_the_guide(store: CertificateStore) -> None:
    print_ = result_of(store.create_tunnel_certificate(
        "webmail@example.com", "Webmail sender tunnel certificate"))
    row = result_of(store.get(print_))
    assert row is not None and row.has_key and row.self_signed
    assert row.subject == "EMAILADDRESS=webmail@example.com, CN=Webmail sender tunnel certificate"
    assert row.emails == ("webmail@example.com",)
    # Self-signed: usable once whitelisted, as guide §3.3 says.
    assert result_of(store.signing_identity("webmail@example.com")) is None
    result_of(store.set_ctl(print_, CTLStatus.WHITELISTED))
    identity = result_of(store.signing_identity("webmail@example.com"))
    assert identity is not None and identity[2] == []
    verdict = result_of(store.check(identity[0], Purpose.ENCRYPTION))
    assert verdict.valid


def test_keys_are_bound_to_their_certificate_and_kek() -> None:
    key = make_user("x@example.com", None).key
    sealed = seal_key(b"k" * 32, key, "aa")
    assert unseal_key(b"k" * 32, sealed, "aa").private_numbers() == key.private_numbers()
    with pytest.raises(KeyUnsealError, match="cannot be opened"):
        unseal_key(b"k" * 32, sealed, "bb")
    with pytest.raises(KeyUnsealError, match="cannot be opened"):
        unseal_key(b"j" * 32, sealed, "aa")


def test_a_key_sealed_under_another_kek_is_left_out_and_logged(pki: dict) -> None:
    """
    Two nodes share the database but not var/kek: each still uses the keys
    it can open, and names the ones it cannot.
    """
    from twisted.logger import globalLogPublisher

    database = migrated_store()
    clock = Clock()
    clock.advance(NOW.timestamp())
    here = CertificateStore(database, clock, os.urandom(32), SynchronousRunner())
    there = CertificateStore(database, clock, os.urandom(32), SynchronousRunner())
    result_of(here.import_data(pki["alice"].pkcs12(b"pw", [pki["ca"].cert]), password="pw"))
    result_of(here.import_data(pki["root"].pem(), store=ROOTS))
    result_of(there.import_data(pki["bob"].pkcs12(b"pw"), password="pw"))
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        usable = result_of(here.decryption_keys())
        signer = result_of(here.signing_identity("bob@example.com"))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [c for c, _ in usable] == [pki["alice"].cert]
    assert signer is None
    errors = [e for e in events if e.get("log_namespace") == "cipherd.pki"]
    # Once for decryption, once for signing.
    assert [e["thumbprint"] for e in errors] == [thumbprint(pki["bob"].cert)] * 2
    assert "Every node sharing the database needs the same var/kek." in errors[0]["log_format"]


def test_store_works_on_both_databases(database_url: str, pki: dict) -> None:
    store = make_store(database_url)
    result_of(store.import_data(pki["alice"].pkcs12(b"pw", [pki["ca"].cert]), password="pw"))
    result_of(store.import_data(pki["root"].pem(), store=ROOTS))
    assert result_of(store.encryption_certificates("alice@example.com")) == [pki["alice"].cert]
    assert len(result_of(store.decryption_keys())) == 1


@pytest.mark.parametrize(
    ("path", "password", "email"),
    [
        ("smime-thunderbird/nss/Alice.p12", "nss", "alice@example.com"),
        ("smime-thunderbird/nss/Eve.p12", "nss", "eve@example.com"),
        ("smime-thunderbird/interop/Fran.p12", "nss", "fran@example.com"),
    ],
)
def test_real_client_pkcs12(store: CertificateStore, path: str, password: str,
                            email: str) -> None:
    data = (CORPUS / path).read_bytes()
    result = result_of(store.import_data(data, password=password))
    assert result.imported, result
    [row] = [r for r in (result_of(store.get(t)) for t in result.imported)
             if r is not None and email in r.emails]
    assert row.has_key
    assert f"EMAILADDRESS={email}".lower() in row.subject.lower()


def test_the_trust_context_is_read_again_only_when_the_database_changed(pki: dict) -> None:
    database = migrated_store()
    clock = Clock()
    clock.advance(NOW.timestamp())
    here = CertificateStore(database, clock, os.urandom(32), SynchronousRunner())
    # Another node on the same database.
    there = CertificateStore(database, clock, os.urandom(32), SynchronousRunner())
    result_of(here.import_data(pki["root"].pem(), store=ROOTS))
    result_of(here.import_data(pki["ca"].pem() + pki["alice"].pem()))
    first = result_of(here.trust_context())
    assert result_of(here.trust_context()) is first  # nothing changed: not read again
    assert result_of(here.check(pki["alice"].cert, Purpose.ENCRYPTION)).valid

    # The other node blacklists the CA, then turns the entry around: each
    # change is seen here once the change count is asked for again, at most
    # one poll interval later -- not on every check.
    ca = thumbprint(pki["ca"].cert)
    result_of(there.set_ctl(ca, CTLStatus.BLACKLISTED))
    clock.advance(POLL_INTERVAL - 0.5)
    assert result_of(here.check(pki["alice"].cert, Purpose.ENCRYPTION)).valid  # not asked yet
    clock.advance(0.5)
    assert not result_of(here.check(pki["alice"].cert, Purpose.ENCRYPTION)).valid
    result_of(there.set_ctl(ca, CTLStatus.WHITELISTED))
    clock.advance(POLL_INTERVAL)
    assert result_of(here.check(pki["alice"].cert, Purpose.ENCRYPTION)).valid
    result_of(there.import_data(make_crl(pki["ca"], [(pki["alice"].cert, START)]).public_bytes(
        serialization.Encoding.DER)))
    clock.advance(POLL_INTERVAL)
    assert "revoked" in result_of(here.check(pki["alice"].cert, Purpose.ENCRYPTION)).reason

    # A change undone within one clock tick here is not missed either.
    result_of(here.delete_crl(result_of(here.crls())[0].issuer_hash))
    before = result_of(here.trust_context())
    result_of(here.delete(thumbprint(pki["root"].cert), ROOTS))
    result_of(here.import_data(pki["root"].pem(), store=ROOTS))
    assert result_of(here.trust_context()) is not before
    assert result_of(here.check(pki["alice"].cert, Purpose.ENCRYPTION)).valid


def test_changes_that_leave_counts_and_times_alike_are_seen(pki: dict) -> None:
    """
    Two CTL entries turned opposite ways, or a certificate removed and
    another added with an older clock, leave every count and time as they
    were: another node must see the change all the same.
    """
    database = migrated_store()
    clock, behind = Clock(), Clock()
    clock.advance(NOW.timestamp())
    behind.advance(NOW.timestamp() - 3600)  # a node whose clock is an hour behind
    here = CertificateStore(database, clock, os.urandom(32), SynchronousRunner())
    there = CertificateStore(database, behind, os.urandom(32), SynchronousRunner())
    result_of(here.import_data(pki["root"].pem(), store=ROOTS))
    result_of(here.import_data(pki["ca"].pem() + pki["alice"].pem() + pki["bob"].pem()))
    ca, bob = thumbprint(pki["ca"].cert), thumbprint(pki["bob"].cert)
    result_of(there.set_ctl(ca, CTLStatus.BLACKLISTED))
    result_of(there.set_ctl(bob, CTLStatus.WHITELISTED))
    assert not result_of(here.check(pki["alice"].cert, Purpose.ENCRYPTION)).valid
    # Both turned around at once: one entry blacklisted, as before.
    result_of(there.set_ctl(ca, CTLStatus.WHITELISTED))
    result_of(there.set_ctl(bob, CTLStatus.BLACKLISTED))
    clock.advance(POLL_INTERVAL)
    assert result_of(here.check(pki["alice"].cert, Purpose.ENCRYPTION)).valid

    # A CA certificate removed and another added, stamped an hour earlier.
    other = make_ca("Other CA", issuer=pki["root"])
    result_of(there.delete(ca))
    result_of(there.import_data(other.pem()))
    clock.advance(POLL_INTERVAL)
    assert not result_of(here.check(pki["alice"].cert, Purpose.ENCRYPTION)).valid


def test_an_import_run_again_after_a_race_reports_each_certificate_once(
        store: CertificateStore, pki: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    When another node inserts a row between our look-up and our insert,
    the store runs the whole write again: the report must still name each
    certificate once.
    """
    from sqlalchemy.exc import IntegrityError

    from cipherd.pki import certstore

    real, calls = certstore.q.put_certificates, []

    def racing(*args: object) -> list[str]:
        calls.append(args)
        if len(calls) == 1:
            real(*args)  # type: ignore[arg-type]
            raise IntegrityError("INSERT", {}, Exception("duplicate key"))
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(certstore.q, "put_certificates", racing)
    result = result_of(store.import_data(pki["alice"].pem() + pki["bob"].pem()))
    assert len(calls) == 2  # the race, then the whole write again
    assert sorted(result.imported) == sorted(
        thumbprint(pki[name].cert) for name in ("alice", "bob"))
    assert result.duplicates == []


def test_concurrent_imports_sharing_a_certificate_do_not_deadlock(postgres_url: str,
                                                                    pki: dict) -> None:
    """
    Import A = [alice, bob] and import B = [bob] at once on PostgreSQL: B must
    not hold bob's row while it waits for the change counter that A holds
    (a deadlock, which the server breaks by failing one import).
    """
    import threading
    import time

    from sqlalchemy.engine import Connection

    from cipherd.pki.certstore import new_certificate
    from cipherd.store import certificates as q

    store = migrated_store(postgres_url)
    alice, bob = new_certificate(pki["alice"].cert), new_certificate(pki["bob"].cert)
    first_done = threading.Event()
    outcomes: dict[str, Any] = {}

    def import_a(conn: Connection) -> list[str]:
        added = [q.put_certificate(conn, CERTIFICATES, alice, None, 0.0)]
        first_done.set()
        time.sleep(0.5)  # B tries bob meanwhile
        return [*added, q.put_certificate(conn, CERTIFICATES, bob, None, 0.0)]

    def import_b(conn: Connection) -> str:
        return q.put_certificate(conn, CERTIFICATES, bob, None, 0.0)

    def call(name: str, fn: Any) -> None:
        try:
            outcomes[name] = store._transact(fn, (), False)
        except Exception as e:
            outcomes[name] = e

    a = threading.Thread(target=call, args=("A", import_a))
    a.start()
    first_done.wait(10)
    time.sleep(0.1)
    b = threading.Thread(target=call, args=("B", import_b))
    b.start()
    a.join(20)
    b.join(20)
    assert outcomes == {"A": ["added", "added"], "B": "duplicate"}
    store.close()


def test_a_crl_stored_by_issuer_name_alone_is_superseded_by_a_newer_one(
        store: CertificateStore, pki: dict) -> None:
    """
    Before 2026-11-28 a CRL was kept under its issuer's name alone: the
    issuer's next CRL (same key, newer) takes its place; an older one does
    not.
    """
    import hashlib

    from cipherd.store import certificates as q

    der = serialization.Encoding.DER
    result_of(store.import_data(pki["root"].pem(), store=ROOTS))
    result_of(store.import_data(pki["ca"].pem() + pki["alice"].pem()))
    legacy = make_crl(pki["ca"], [(pki["alice"].cert, START)],
                      this_update=START + timedelta(days=5))
    with store._store.engine.begin() as conn:
        q.put_crl(conn, q.CRLRow(hashlib.sha256(legacy.issuer.public_bytes()).hexdigest(),
                                 "CN=Test Intermediate", legacy.public_bytes(der),
                                 legacy.last_update_utc.timestamp(), None, 1), 0.0)
    assert not result_of(store.check(pki["alice"].cert, Purpose.ENCRYPTION)).valid
    older = make_crl(pki["ca"], [], this_update=START + timedelta(days=1))
    result_of(store.import_data(older.public_bytes(der)))
    assert len(result_of(store.crls())) == 2  # the newer legacy one stays
    assert not result_of(store.check(pki["alice"].cert, Purpose.ENCRYPTION)).valid
    newer = make_crl(pki["ca"], [], this_update=START + timedelta(days=9))
    result_of(store.import_data(newer.public_bytes(der)))
    assert [c.this_update for c in result_of(store.crls())] == [
        newer.last_update_utc.timestamp()]
    assert result_of(store.check(pki["alice"].cert, Purpose.ENCRYPTION)).valid


def test_lookups_answer_while_another_process_holds_the_write_lock(
        tmp_path: Path, pki: dict) -> None:
    """
    Issue 12: while another process held SQLite's write lock every message
    failed processing.  The look-ups processing makes (certificates by
    address, trust, keys, settings) only read: they answer under the lock
    (WAL), and only a write has to wait.
    """
    import sqlite3

    from cipherd.store import DatabaseUnavailable, Store, create_engine_for_url
    from cipherd.store.migrations import migrate
    from cipherd.store.settings import SettingsRepository

    path = tmp_path / "cipherd.db"
    engine = create_engine_for_url(f"sqlite:///{path}", sqlite_busy_timeout_ms=100)
    with engine.begin() as conn:
        migrate(conn)
    clock = Clock()
    clock.advance(NOW.timestamp())
    database = Store(engine, SynchronousRunner(), clock)
    certificates = CertificateStore(database, clock, os.urandom(32), SynchronousRunner())
    result_of(certificates.import_data(pki["root"].der(), store=ROOTS))
    result_of(certificates.import_data(pki["ca"].der()))
    result_of(certificates.import_data(pki["alice"].der()))
    settings = SettingsRepository(database, clock)

    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        assert [email_addresses(c) for c in result_of(
            certificates.encryption_certificates("alice@example.com"))] == [
                ["alice@example.com"]]
        assert result_of(certificates.find_by_email("alice@example.com"))
        assert result_of(certificates.ctl()) == {}
        assert "encrypt_mode" in result_of(settings.by_address(["alice@example.com"]))[
            "alice@example.com"]
        with pytest.raises(DatabaseUnavailable):
            result_of(certificates.import_data(pki["bob"].der()))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # The lock released, the write goes through.
    assert result_of(certificates.import_data(pki["bob"].der())).imported
    engine.dispose()
