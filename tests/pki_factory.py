"""
Certificates made at test time: a CA, intermediates, users, CRLs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

START = datetime(2026, 1, 1, tzinfo=UTC)
END = datetime(2027, 1, 1, tzinfo=UTC)

_KEYS: list[rsa.RSAPrivateKey] = []


def rsa_key() -> rsa.RSAPrivateKey:
    """
    RSA-2048 keys are slow to make: reuse a few across tests.
    """
    if len(_KEYS) < 6:
        _KEYS.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return _KEYS[-1]
    _KEYS.append(_KEYS.pop(0))
    return _KEYS[-1]


def new_rsa_key() -> rsa.RSAPrivateKey:
    """
    An RSA-2048 key no other test identity has.
    """
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Identity:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def pkcs12(self, password: bytes, chain: list[x509.Certificate] | None = None) -> bytes:
        return pkcs12.serialize_key_and_certificates(
            b"test", self.key, self.cert, chain,
            serialization.BestAvailableEncryption(password),
        )


def _name(common_name: str, email: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if email:
        attributes.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    return x509.Name(attributes)


CA_USAGE = dict(digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False)


def make_ca(common_name: str = "Test CA", issuer: Identity | None = None,
            not_before: datetime = START, not_after: datetime = END, *,
            path_length: int | None = None, key_usage: dict[str, bool] | None = None,
            extra: list[tuple[x509.ExtensionType, bool]] = (),
            key: rsa.RSAPrivateKey | None = None) -> Identity:
    """
    @param key: the CA's key; by default one of the shared test keys, which
        another identity may have too: pass a new one where it matters.
    """
    key = key or rsa_key()
    subject = _name(common_name)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
    )
    if key_usage is not None:
        builder = builder.add_extension(x509.KeyUsage(**key_usage), critical=True)
    for extension, critical in extra:
        builder = builder.add_extension(extension, critical=critical)
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    return Identity(cert, key)


def make_user(
    email: str, issuer: Identity | None, *,
    not_before: datetime = START, not_after: datetime = END,
    key_usage: dict[str, bool] | None = None, eku: list[x509.ObjectIdentifier] | None = None,
    san: bool = True, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None,
    extra: list[tuple[x509.ExtensionType, bool]] = (),
) -> Identity:
    key = key or rsa_key()
    subject = _name(email.split("@")[0].title(), email)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
    if key_usage is not None:
        flags = dict.fromkeys(
            ("digital_signature", "content_commitment", "key_encipherment",
             "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
             "encipher_only", "decipher_only"), False)
        flags.update(key_usage)
        builder = builder.add_extension(x509.KeyUsage(**flags), critical=True)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    for extension, critical in extra:
        builder = builder.add_extension(extension, critical=critical)
    signer = issuer.key if issuer else key
    return Identity(builder.sign(signer, hashes.SHA256()), key)


SMIME_USAGE = {"digital_signature": True, "key_encipherment": True}
EMAIL_EKU = [ExtendedKeyUsageOID.EMAIL_PROTECTION]


def make_crl(ca: Identity, revoked: list[tuple[x509.Certificate, datetime]],
             this_update: datetime = START) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(this_update)
        .next_update(this_update + timedelta(days=30))
    )
    for cert, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(when)
            .build()
        )
    return builder.sign(ca.key, hashes.SHA256())


def pkcs7_bundle(certs: list[x509.Certificate], encoding: serialization.Encoding) -> bytes:
    return pkcs7.serialize_certificates(certs, encoding)
