"""
One conformance suite for every L{ICertificateStore}: the real store on
SQLite and the memory fake run the same tests (as txacme runs its
C{_StoreTestsMixin} against both of its stores), so a test that uses the
fake relies on nothing the real store does differently.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from cipherd.pki.certs import thumbprint
from cipherd.pki.certstore import CertificateStore, ICertificateStore
from cipherd.pki.errors import CertificateImportError
from cipherd.pki.trust import CTLStatus, Purpose
from cipherd.store.certificates import ROOTS
from cipherd.testing import SynchronousRunner, migrated_store, result_of
from cipherd.testing.certificates import MemoryCertificateStore
from tests.pki_factory import (
    EMAIL_EKU,
    SMIME_USAGE,
    START,
    make_ca,
    make_crl,
    make_user,
    new_rsa_key,
)

NOW = START + timedelta(days=100)
DER = serialization.Encoding.DER


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    root = make_ca("Conformance Root", key=new_rsa_key())
    ca = make_ca("Conformance CA", issuer=root, key=new_rsa_key())
    return {
        "root": root, "ca": ca,
        "alice": make_user("Alice@Example.com", ca, key_usage=SMIME_USAGE, eku=EMAIL_EKU,
                           key=new_rsa_key()),
        "alice_old": make_user("alice@example.com", ca, not_after=NOW + timedelta(days=5),
                               key=new_rsa_key()),
        "bob": make_user("bob@example.com", ca, key=new_rsa_key()),
        "signer_only": make_user("carol@example.com", ca, key=new_rsa_key(),
                                 key_usage={"digital_signature": True}),
        "self": make_user("webmail@example.com", None, key=new_rsa_key()),
    }


class _StoreTestsMixin:
    """
    The behaviour every L{ICertificateStore} has.  A subclass names the
    store to test: C{factory(clock)} gives an empty one whose time is
    C{clock}'s.
    """

    factory: Callable[[Clock], Any]

    @pytest.fixture
    def clock(self) -> Clock:
        clock = Clock()
        clock.advance(NOW.timestamp())
        return clock

    @pytest.fixture
    def store(self, clock: Clock) -> Any:
        return type(self).factory(clock)

    def trusted(self, store: Any, pki: dict[str, Any], *names: str) -> None:
        result_of(store.import_data(pki["root"].pem(), store=ROOTS))
        result_of(store.import_data(pki["ca"].pem()))
        for name in names:
            result_of(store.import_data(pki[name].pkcs12(b"pw"), password="pw"))

    def test_provides_the_interface(self, store: Any) -> None:
        assert verifyObject(ICertificateStore, store)

    def test_import_reports_each_certificate(self, store: Any, pki: dict[str, Any]) -> None:
        data = pki["alice"].pem() + pki["bob"].pem() + pki["self"].pem()
        result = result_of(store.import_data(data))
        assert result.format == "PEM"
        assert sorted(result.imported) == sorted(
            thumbprint(pki[n].cert) for n in ("alice", "bob"))
        assert result.skipped == [(thumbprint(pki["self"].cert), "self-signed")]
        again = result_of(store.import_data(pki["alice"].pem() + pki["alice"].key_pem()))
        assert (again.imported, again.keys_added) == ([], [thumbprint(pki["alice"].cert)])
        assert result_of(store.import_data(pki["alice"].pem())).duplicates == [
            thumbprint(pki["alice"].cert)]
        with pytest.raises(CertificateImportError, match="password is missing or wrong"):
            result_of(store.import_data(pki["bob"].pkcs12(b"pw"), password="nope"))

    def test_get_and_delete(self, store: Any, pki: dict[str, Any]) -> None:
        alice = thumbprint(pki["alice"].cert)
        result_of(store.import_data(pki["alice"].pkcs12(b"pw"), password="pw"))
        row = result_of(store.get(alice.upper()))
        assert row is not None and row.has_key and row.emails == ("alice@example.com",)
        assert row.subject == "CN=Alice, EMAILADDRESS=Alice@Example.com"
        assert result_of(store.get(alice, ROOTS)) is None
        assert result_of(store.delete(alice)) is True
        assert result_of(store.delete(alice)) is False
        assert result_of(store.get(alice)) is None
        assert result_of(store.find_by_email("alice@example.com")) == []

    def test_look_ups(self, store: Any, pki: dict[str, Any]) -> None:
        result_of(store.add_certificates([(pki["alice"].cert, None), (pki["bob"].cert, None),
                                          (pki["alice_old"].cert, None)]))
        alice = pki["alice"].cert
        # Latest expiry first, the address matched whatever its case.
        assert result_of(store.find_by_email(" ALICE@example.COM")) == [
            alice, pki["alice_old"].cert]
        assert result_of(store.find_by_email("nobody@example.com")) == []
        assert result_of(store.find_by_issuer_serial(alice.issuer, alice.serial_number)) == [
            alice]
        assert result_of(store.find_by_issuer_serial(alice.issuer.public_bytes(),
                                                     alice.serial_number)) == [alice]
        ski = alice.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        assert result_of(store.find_by_subject_key_id(ski)) == [alice]
        assert result_of(store.find_by_subject_key_id(b"\x01" * 20)) == []

    def test_selection_needs_trust_validity_usage_and_a_key(
            self, store: Any, clock: Clock, pki: dict[str, Any]) -> None:
        result_of(store.import_data(pki["alice"].pkcs12(b"pw"), password="pw"))
        result_of(store.import_data(pki["ca"].pem() + pki["alice_old"].pem()))
        assert result_of(store.encryption_certificates("alice@example.com")) == []
        assert result_of(store.signing_identity("alice@example.com")) is None
        result_of(store.import_data(pki["root"].pem(), store=ROOTS))
        assert result_of(store.encryption_certificates("alice@example.com")) == [
            pki["alice"].cert, pki["alice_old"].cert]
        cert, key, chain = result_of(store.signing_identity("Alice@example.com"))
        assert cert == pki["alice"].cert and chain == [pki["ca"].cert, pki["root"].cert]
        assert key.private_numbers() == pki["alice"].key.private_numbers()
        decrypting = result_of(store.decryption_identity("alice@example.com"))
        assert decrypting is not None and decrypting[0] == pki["alice"].cert
        clock.advance(timedelta(days=6).total_seconds())  # alice_old expired
        assert result_of(store.encryption_certificates("alice@example.com")) == [
            pki["alice"].cert]

        result_of(store.import_data(pki["signer_only"].pkcs12(b"pw"), password="pw"))
        assert result_of(store.encryption_certificates("carol@example.com")) == []
        assert result_of(store.decryption_identity("carol@example.com")) is None
        assert result_of(store.signing_identity("carol@example.com")) is not None

    def test_ctl_whitelists_and_blacklists(self, store: Any, pki: dict[str, Any]) -> None:
        self.trusted(store, pki, "alice")
        tunnel = result_of(store.create_tunnel_certificate("webmail@example.com",
                                                           "Webmail tunnel certificate"))
        assert result_of(store.signing_identity("webmail@example.com")) is None
        result_of(store.set_ctl(tunnel.upper(), CTLStatus.WHITELISTED))
        identity = result_of(store.signing_identity("webmail@example.com"))
        assert identity is not None and identity[2] == []
        assert result_of(store.ctl()) == {tunnel: CTLStatus.WHITELISTED}
        ca = thumbprint(pki["ca"].cert)
        result_of(store.set_ctl(ca, CTLStatus.BLACKLISTED))
        verdict = result_of(store.check(pki["alice"].cert, Purpose.ENCRYPTION))
        assert verdict.reason == ("The CA certificate CN=Conformance CA is blacklisted in the "
                                  "certificate trust list.")
        assert result_of(store.encryption_certificates("alice@example.com")) == []
        assert result_of(store.remove_ctl(ca)) is True
        assert result_of(store.remove_ctl(ca)) is False
        assert result_of(store.encryption_certificates("alice@example.com")) == [
            pki["alice"].cert]

    def test_crls_revoke_and_are_kept_newest_first(self, store: Any,
                                                   pki: dict[str, Any]) -> None:
        self.trusted(store, pki, "alice")
        revoking = make_crl(pki["ca"], [(pki["alice"].cert, START)],
                            this_update=START + timedelta(days=2))
        assert result_of(store.import_data(revoking.public_bytes(DER))).crls == [
            ("CN=Conformance CA", "added")]
        assert result_of(store.encryption_certificates("alice@example.com")) == []
        assert result_of(store.signing_identity("alice@example.com")) is None
        verdict = result_of(store.check(pki["alice"].cert, Purpose.SIGNING))
        assert verdict.reason == "The certificate was revoked on 2026-01-01 00:00:00 UTC."
        older = make_crl(pki["ca"], [], this_update=START + timedelta(days=1))
        assert result_of(store.import_data(older.public_bytes(DER))).crls == [
            ("CN=Conformance CA", "older")]
        forged = make_crl(make_ca("Conformance CA", key=new_rsa_key()), [])
        [(_, outcome)] = result_of(store.import_data(forged.public_bytes(DER))).crls
        assert outcome.startswith("refused: its signature does not verify")
        [row] = result_of(store.crls())
        assert row.entries == 1
        assert result_of(store.delete_crl(row.issuer_hash)) is True
        assert result_of(store.crls()) == []
        assert result_of(store.encryption_certificates("alice@example.com")) == [
            pki["alice"].cert]

    def test_a_certificate_imported_for_an_address_is_selected_at_once(
            self, store: Any, pki: dict[str, Any]) -> None:
        self.trusted(store, pki)
        result_of(store.import_data(pki["alice_old"].pem()))
        assert result_of(store.encryption_certificates("alice@example.com")) == [
            pki["alice_old"].cert]
        assert result_of(store.signing_identity("alice@example.com")) is None
        result_of(store.import_data(pki["alice"].pem()))
        assert result_of(store.encryption_certificates("alice@example.com")) == [
            pki["alice"].cert, pki["alice_old"].cert]
        # Its key, imported later, makes it a signing identity.
        result_of(store.import_data(pki["alice"].key_pem() + pki["alice"].pem()))
        identity = result_of(store.signing_identity("alice@example.com"))
        assert identity is not None and identity[0] == pki["alice"].cert

    def test_decryption_keys_whatever_the_validity(self, store: Any, clock: Clock,
                                                   pki: dict[str, Any]) -> None:
        result_of(store.import_data(pki["alice"].pkcs12(b"pw"), password="pw"))
        result_of(store.import_data(pki["bob"].pem()))
        clock.advance(timedelta(days=1000).total_seconds())
        [(cert, key)] = result_of(store.decryption_keys())
        assert cert == pki["alice"].cert
        assert key.private_numbers() == pki["alice"].key.private_numbers()

    def test_check_builds_paths_through_extra_certificates(self, store: Any,
                                                           pki: dict[str, Any]) -> None:
        result_of(store.import_data(pki["root"].pem(), store=ROOTS))
        alone = result_of(store.check(pki["bob"].cert, Purpose.SIGNING))
        assert alone.reason == ("The certificate is not trusted: there is no path to a "
                                "trusted root (no certificate of the issuer CN=Conformance "
                                "CA).")
        with_chain = result_of(store.check(pki["bob"].cert, Purpose.SIGNING, [pki["ca"].cert]))
        assert with_chain.valid and with_chain.chain[1:] == [pki["ca"].cert, pki["root"].cert]
        context = result_of(store.trust_context([pki["ca"].cert]))
        assert context.root_prints == {thumbprint(pki["root"].cert)}
        assert pki["ca"].cert in context.intermediates

    def test_listing_pages_and_searches(self, store: Any, pki: dict[str, Any]) -> None:
        self.trusted(store, pki)
        result_of(store.import_data(pki["alice"].pem() + pki["alice_old"].pem()
                                    + pki["bob"].pem() + pki["signer_only"].pem()))
        subjects = [e.row.subject for e in result_of(store.listing())]
        assert subjects == sorted(subjects) and len(subjects) == 5  # with the CA
        assert result_of(store.count()) == 5
        assert result_of(store.count(ROOTS)) == 1
        first, second = (result_of(store.listing(offset=o, limit=3)) for o in (0, 3))
        assert [e.row.subject for e in first + second] == subjects
        assert len(second) == 2

        def found(**filters: Any) -> list[str]:
            entries = result_of(store.listing(**filters))
            assert result_of(store.count(**{k: v for k, v in filters.items()
                                             if k in ("text", "email")})) == len(entries)
            return sorted(e.row.emails[0] if e.row.emails else e.row.subject for e in entries)

        assert found(email="ALICE@example.com") == ["alice@example.com"] * 2
        assert found(email="alice@") == []  # exact
        assert found(text="CAROL") == ["carol@example.com"]  # in the subject
        assert found(text="@example.c") == [
            "alice@example.com", "alice@example.com", "bob@example.com", "carol@example.com"]
        bob = thumbprint(pki["bob"].cert)
        assert found(text=bob[:12].upper()) == ["bob@example.com"]  # thumbprint prefix
        assert found(text="100%_") == []  # wildcards are text
        assert found(text="Conformance") == ["CN=Conformance CA"]
        assert found(text="alice", email="bob@example.com") == []
        [entry] = result_of(store.listing(email="bob@example.com"))
        assert entry.certificate == pki["bob"].cert and entry.ctl_status is None
        assert entry.verdict.valid


def _on_sqlite(clock: Clock) -> CertificateStore:
    return CertificateStore(migrated_store(), clock, os.urandom(32), SynchronousRunner())


class TestCertificateStoreOnSQLite(_StoreTestsMixin):
    factory = staticmethod(_on_sqlite)


class TestMemoryCertificateStore(_StoreTestsMixin):
    factory = staticmethod(MemoryCertificateStore)
