"""
Sign-then-encrypt and decrypt-then-verify with the certificate store
behind them: every kind of failure named, none escaping as a crash.
"""

from __future__ import annotations

import email
import os
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from twisted.internet.task import Clock

from cipherd.pki.certs import thumbprint
from cipherd.pki.certstore import CertificateStore
from cipherd.pki.engine import SmimeEngine
from cipherd.pki.errors import DecryptionKeyNotFound
from cipherd.pki.trust import CTLStatus
from cipherd.store.certificates import ROOTS
from cipherd.testing import SynchronousRunner, migrated_store, result_of
from tests.pki_factory import START, make_ca, make_crl, make_user

NOW = START + timedelta(days=10)
MESSAGE = (b"From: alice@example.com\r\nTo: bob@example.com\r\nSubject: test\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
           b"\r\nGr\xc3\xbc\xc3\x9fe\r\n")


@pytest.fixture(scope="module")
def pki() -> dict:
    root = make_ca("Engine Root")
    return {"root": root,
            "alice": make_user("alice@example.com", root),
            "bob": make_user("bob@example.com", root),
            "carol": make_user("carol@example.com", root)}


class Setup:
    def __init__(self, pki: dict) -> None:
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.store = CertificateStore(migrated_store(), self.clock, os.urandom(32),
                                      SynchronousRunner())
        self.engine = SmimeEngine(self.store, SynchronousRunner())
        result_of(self.store.import_data(pki["root"].pem(), store=ROOTS))
        for name in ("alice", "bob"):
            result_of(self.store.import_data(pki[name].pkcs12(b"pw"), password="pw"))
        self.pki = pki

    def protected(self) -> bytes:
        signer = result_of(self.store.signing_identity("alice@example.com"))
        recipients = result_of(self.store.encryption_certificates("bob@example.com"))
        assert signer is not None and recipients
        return result_of(self.engine.protect(MESSAGE, signer=signer, recipients=recipients))


@pytest.fixture
def setup(pki: dict) -> Setup:
    return Setup(pki)


def test_round_trip_names_the_trusted_signer(setup: Setup) -> None:
    opened = result_of(setup.engine.open(setup.protected()))
    assert opened.decrypted is not None
    assert opened.decrypted.result.cipher == "aes256_cbc"
    assert opened.signature_valid
    [signer] = opened.signers
    assert signer.signer == "CN=Alice, EMAILADDRESS=alice@example.com"
    assert signer.emails == ["alice@example.com"]
    assert signer.reason == "The certificate chains to the trusted root CN=Engine Root."
    parsed = email.message_from_bytes(opened.message)
    assert parsed["Subject"] == "test"
    assert parsed.get_payload(decode=True) == b"Gr\xc3\xbc\xc3\x9fe\r\n"


def test_an_unsigned_plain_message_passes_through(setup: Setup) -> None:
    opened = result_of(setup.engine.open(MESSAGE))
    assert (opened.message, opened.signed, opened.decrypted) == (MESSAGE, False, None)


def test_no_key_for_the_recipient(setup: Setup, pki: dict) -> None:
    signer = result_of(setup.store.signing_identity("alice@example.com"))
    sealed = result_of(setup.engine.protect(MESSAGE, signer=signer,
                                            recipients=[pki["carol"].cert]))
    with pytest.raises(DecryptionKeyNotFound,
                       match=r"A suitable decryption key could not be found\."):
        result_of(setup.engine.open(sealed))


def test_expired_signer(setup: Setup) -> None:
    message = setup.protected()
    setup.clock.advance((START + timedelta(days=400) - NOW).total_seconds())
    [signer] = result_of(setup.engine.open(message)).signers
    assert not signer.valid and signer.check.valid
    assert signer.reason == "The certificate expired on 2027-01-01 00:00:00 UTC."


def test_revoked_signer(setup: Setup, pki: dict) -> None:
    message = setup.protected()
    crl = make_crl(pki["root"], [(pki["alice"].cert, START + timedelta(days=5))])
    result_of(setup.store.import_data(crl.public_bytes(serialization.Encoding.DER)))
    [signer] = result_of(setup.engine.open(message)).signers
    assert signer.reason == "The certificate was revoked on 2026-01-06 00:00:00 UTC."


def test_blacklisted_signer(setup: Setup, pki: dict) -> None:
    message = setup.protected()
    result_of(setup.store.set_ctl(thumbprint(pki["alice"].cert), CTLStatus.BLACKLISTED))
    [signer] = result_of(setup.engine.open(message)).signers
    assert signer.reason == "The certificate is blacklisted in the certificate trust list."


def test_untrusted_signer(setup: Setup, pki: dict) -> None:
    message = setup.protected()
    result_of(setup.store.delete(thumbprint(pki["root"].cert), ROOTS))
    opened = result_of(setup.engine.open(message))
    assert not opened.signature_valid
    assert opened.signers[0].reason.startswith(
        "The certificate is not trusted: there is no path to a trusted root")


def test_tampered_content(setup: Setup) -> None:
    signer = result_of(setup.store.signing_identity("alice@example.com"))
    signed = result_of(setup.engine.protect(MESSAGE, signer=signer, recipients=[]))
    # The 8-bit body was signed as base64 (RFC 8551 §3.1.2); change one letter.
    tampered = signed.replace(b"R3LDvMOfZQ", b"R3LDvMOfZa")
    assert tampered != signed
    [signer_report] = result_of(setup.engine.open(tampered)).signers
    assert not signer_report.valid
    assert signer_report.reason == ("The message was changed after it was signed: the "
                                    "content does not match the message digest.")


def test_signer_certificate_found_in_the_store(setup: Setup, pki: dict,
                                               tmp_path: Path) -> None:
    (tmp_path / "alice.pem").write_bytes(pki["alice"].pem())
    (tmp_path / "alice.key").write_bytes(pki["alice"].key_pem())
    (tmp_path / "msg").write_bytes(MESSAGE)
    subprocess.run(
        ["openssl", "smime", "-sign", "-nocerts", "-in", "msg", "-signer", "alice.pem",
         "-inkey", "alice.key", "-out", "signed"], cwd=tmp_path, check=True,
        capture_output=True)
    opened = result_of(setup.engine.open((tmp_path / "signed").read_bytes()))
    assert opened.signature_valid, opened.signers[0].reason
