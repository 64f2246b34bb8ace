"""
C{CertificateStore.decryption_identity}: a valid encryption certificate for
an address whose private key is stored -- what the webmail side's relay
recipient needs (guide §2.3.11) and what its "create webmail relay
recipient certificate" page looks for.
"""

from __future__ import annotations

from cipherd.pki.certs import thumbprint
from cipherd.pki.certstore import CertificateStore
from cipherd.pki.trust import CTLStatus
from cipherd.store.certificates import ROOTS
from cipherd.testing import result_of
from tests.pki_factory import EMAIL_EKU, SMIME_USAGE, make_user
from tests.test_certstore import pki, store  # noqa: F401 -- fixtures

RELAY = "webmail@webmail.local"


def test_a_trusted_encryption_certificate_with_its_key(store: CertificateStore,  # noqa: F811
                                                       pki: dict) -> None:  # noqa: F811
    result_of(store.import_data(pki["alice"].pkcs12(b"pw", [pki["ca"].cert]), password="pw"))
    # Not trusted yet: no root.
    assert result_of(store.decryption_identity("alice@example.com")) is None
    result_of(store.import_data(pki["root"].pem(), store=ROOTS))
    identity = result_of(store.decryption_identity("ALICE@example.com"))
    assert identity is not None
    cert, key = identity
    assert cert == pki["alice"].cert
    assert key.private_numbers() == pki["alice"].key.private_numbers()  # type: ignore[union-attr]


def test_without_a_private_key_there_is_none(store: CertificateStore,  # noqa: F811
                                             pki: dict) -> None:  # noqa: F811
    # bob's certificate alone: the gateway could encrypt to it, nobody here open it.
    result_of(store.import_data(pki["bob"].pem()))
    result_of(store.import_data(pki["ca"].pem()))
    result_of(store.import_data(pki["root"].pem(), store=ROOTS))
    assert result_of(store.encryption_certificates("bob@example.com")) == [pki["bob"].cert]
    assert result_of(store.decryption_identity("bob@example.com")) is None


def test_a_signing_only_certificate_is_not_one(store: CertificateStore) -> None:  # noqa: F811
    signer = make_user(RELAY, None, key_usage={"digital_signature": True}, eku=EMAIL_EKU)
    result_of(store.add_certificate(signer.cert, signer.key))
    result_of(store.set_ctl(thumbprint(signer.cert), CTLStatus.WHITELISTED))
    assert result_of(store.signing_identity(RELAY)) is not None
    assert result_of(store.decryption_identity(RELAY)) is None
    both = make_user(RELAY, None, key_usage=SMIME_USAGE, eku=EMAIL_EKU)
    result_of(store.add_certificate(both.cert, both.key))
    result_of(store.set_ctl(thumbprint(both.cert), CTLStatus.WHITELISTED))
    identity = result_of(store.decryption_identity(RELAY))
    assert identity is not None and identity[0] == both.cert


def test_the_relay_recipients_tunnel_certificate_once_whitelisted(
        store: CertificateStore) -> None:  # noqa: F811
    made = result_of(store.create_tunnel_certificate(
        RELAY, "Webmail relay recipient certificate"))
    # Self-signed: guide §2.3.11's certificate counts once it is trusted.
    assert result_of(store.decryption_identity(RELAY)) is None
    result_of(store.set_ctl(made, CTLStatus.WHITELISTED))
    identity = result_of(store.decryption_identity(RELAY))
    assert identity is not None and thumbprint(identity[0]) == made
    result_of(store.set_ctl(made, CTLStatus.BLACKLISTED))
    assert result_of(store.decryption_identity(RELAY)) is None
