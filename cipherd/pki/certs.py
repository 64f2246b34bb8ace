"""
Certificates, keys and CRLs as files: reading every format an administrator
may import (the format is detected from the bytes, never from a file name),
the facts the store indexes, and making the self-signed tunnel certificates
of the guide (figures 10 and 15).
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cipherd.pki.cms import PrivateKey
from cipherd.pki.errors import CertificateImportError
from cipherd.pki.memo import PARSED_OVERHEAD, small_lru

TUNNEL_KEY_SIZE = 2048
TUNNEL_VALIDITY = timedelta(days=3650)
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.S)


def thumbprint(cert: x509.Certificate) -> str:
    """
    The SHA-256 thumbprint, lower-case hex: the certificate's identity here.
    """
    return cert.fingerprint(hashes.SHA256()).hex()


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def email_addresses(cert: x509.Certificate) -> list[str]:
    """
    The addresses a certificate is for: SAN rfc822Name entries and subject
    emailAddress attributes, lower-cased, without duplicates, in that order.
    """
    found: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found.extend(san.get_values_for_type(x509.RFC822Name))
    except (x509.ExtensionNotFound, ValueError):
        pass
    for attribute in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
        if isinstance(attribute.value, str):
            found.append(attribute.value)
    result: list[str] = []
    for address in (a.strip().lower() for a in found):
        if address and address not in result:
            result.append(address)
    return result


# Remembered by the name's DER, not the Name object: a Name taken from a
# certificate keeps the whole certificate alive, whatever the name weighs.
@small_lru(4096, lambda name, result: len(name.public_bytes()) + PARSED_OVERHEAD // 4 * sum(
    len(rdn) for rdn in result), key=lambda name: name.public_bytes())
def name_key(name: x509.Name) -> tuple[frozenset[tuple[str, Any]], ...]:
    """
    A key under which names that RFC 5280 §7.1 holds equal are equal: string
    values compared without regard to case, string type or runs of white
    space (RFC 4518, simplified to the cases real CAs produce).
    """
    return tuple(
        frozenset((attribute.oid.dotted_string,
                   " ".join(attribute.value.split()).casefold()
                   if isinstance(attribute.value, str) else attribute.value)
                  for attribute in rdn)
        for rdn in name.rdns
    )


def same_name(a: x509.Name, b: x509.Name) -> bool:
    return a == b or name_key(a) == name_key(b)


def _signature_verifies(cert: x509.Certificate, key: Any) -> bool:
    """
    C{cert}'s signature verifies with public key C{key}, whatever the names.
    """
    try:
        parameters = cert.signature_algorithm_parameters
    except (ValueError, UnsupportedAlgorithm):
        return False
    return signature_verifies(key, cert.signature, cert.tbs_certificate_bytes, parameters,
                              cert.signature_hash_algorithm)


def signature_verifies(key: Any, signature: bytes, data: bytes, parameters: Any,
                       hash_algorithm: Any) -> bool:
    """
    C{signature} over C{data} verifies with public key C{key}.

    @param parameters: as cryptography's C{signature_algorithm_parameters}
        give them (the RSA padding, or the ECDSA algorithm).
    """
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, parameters, hash_algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, parameters)
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(signature, data)
        elif isinstance(key, dsa.DSAPublicKey):
            key.verify(signature, data, hash_algorithm)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """
    C{cert} names C{issuer} as its issuer (RFC 5280 name matching) and
    C{issuer}'s key signed it.
    """
    if not same_name(cert.issuer, issuer.subject):
        return False
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (InvalidSignature, TypeError, UnsupportedAlgorithm):
        return False
    except ValueError:
        # cryptography compares the names byte for byte: equal names in
        # another string type or case land here.
        pass
    try:
        key = issuer.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return False
    return _signature_verifies(cert, key)


def is_self_signed(cert: x509.Certificate) -> bool:
    """
    Issuer equals subject and the certificate's own key verifies it.
    """
    return issued_by(cert, cert)


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def subject_key_identifier(cert: x509.Certificate) -> str | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    except (x509.ExtensionNotFound, ValueError):
        return None


def issuer_serial_key(issuer_der: bytes, serial: int) -> str:
    """
    One string for an (issuer name DER, serial number) pair, to index and
    look up by.
    """
    return hashlib.sha256(issuer_der + b"|" + str(serial).encode()).hexdigest()


def public_key_matches(cert: x509.Certificate, key: PrivateKey) -> bool:
    der_public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(cert.public_key().public_bytes(*der_public) == key.public_key().public_bytes(
        *der_public))


@dataclass
class ImportBundle:
    """
    What one imported file holds.

    @ivar keys: private keys by the thumbprint of their certificate.
    """

    certificates: list[x509.Certificate] = field(default_factory=list)
    keys: dict[str, PrivateKey] = field(default_factory=dict)
    crls: list[x509.CertificateRevocationList] = field(default_factory=list)
    format: str = ""


def _usable_key(key: object) -> PrivateKey | None:
    # RSA, EC, Ed25519 (RFC 8419 signing), X25519 and X448 (RFC 8418
    # decryption); not Ed448 (its SHAKE256 digest is not supported) nor DSA.
    if isinstance(key, PrivateKey):
        return key
    return None


def _attach_keys(bundle: ImportBundle, keys: Sequence[object]) -> None:
    for key in keys:
        usable = _usable_key(key)
        if usable is None:
            continue
        for cert in bundle.certificates:
            if public_key_matches(cert, usable):
                bundle.keys[thumbprint(cert)] = usable


def _load_pem(data: bytes, password: bytes | None) -> ImportBundle:
    bundle = ImportBundle(format="PEM")
    keys: list[object] = []
    for match in _PEM_BLOCK.finditer(data):
        kind, block = match.group(1), match.group(0)
        try:
            if kind in (b"CERTIFICATE", b"X509 CERTIFICATE", b"TRUSTED CERTIFICATE"):
                bundle.certificates.append(x509.load_pem_x509_certificate(
                    block.replace(b"TRUSTED CERTIFICATE", b"CERTIFICATE")))
            elif kind in (b"PKCS7", b"CMS"):
                bundle.certificates.extend(pkcs7.load_pem_pkcs7_certificates(
                    block.replace(b"BEGIN CMS", b"BEGIN PKCS7").replace(b"END CMS", b"END PKCS7")))
            elif kind == b"X509 CRL":
                bundle.crls.append(x509.load_pem_x509_crl(block))
            elif kind.endswith(b"PRIVATE KEY"):
                keys.append(serialization.load_pem_private_key(block, password))
        except (ValueError, TypeError) as e:
            raise CertificateImportError(
                f"The PEM block {kind.decode()} could not be read: {e}") from None
    _attach_keys(bundle, keys)
    return bundle


def load_bundle(data: bytes, password: str | None = None) -> ImportBundle:
    """
    Read a certificate file of any supported format, detected from its
    bytes: PEM (any number of certificates, PKCS#7 blocks, CRLs and private
    keys), DER certificate, DER PKCS#7 (.p7b/.p7c), PKCS#12 (.p12/.pfx), DER
    CRL.

    @param password: for PKCS#12 files and encrypted PEM keys.
    @raise CertificateImportError: with what is wrong, e.g. a wrong password.
    """
    secret = password.encode() if password is not None else None
    if b"-----BEGIN " in data:
        bundle = _load_pem(data, secret)
        if bundle.certificates or bundle.crls:
            return bundle
        raise CertificateImportError("The PEM file contains no certificate or CRL.")
    try:
        return ImportBundle([x509.load_der_x509_certificate(data)], format="DER")
    except ValueError:
        pass
    try:
        return ImportBundle(pkcs7.load_der_pkcs7_certificates(data), format="PKCS#7")
    except ValueError:
        pass
    try:
        return ImportBundle(crls=[x509.load_der_x509_crl(data)], format="CRL")
    except ValueError:
        pass
    return _load_pkcs12(data, secret)


def _load_pkcs12(data: bytes, password: bytes | None) -> ImportBundle:
    try:
        with warnings.catch_warnings():
            # Old PKCS#12 files (RC2-40, 3DES) load with a BER warning: fine.
            warnings.simplefilter("ignore")
            loaded = pkcs12.load_pkcs12(data, password)
    except ValueError as e:
        text = str(e)
        if "password" in text.lower() or "mac" in text.lower():
            raise CertificateImportError(
                "The PKCS#12 file could not be opened: the password is missing or wrong."
            ) from None
        raise CertificateImportError(
            "The file is not a certificate, PKCS#7, PKCS#12 or CRL file we can read."
        ) from None
    bundle = ImportBundle(format="PKCS#12")
    if loaded.cert is not None:
        bundle.certificates.append(loaded.cert.certificate)
    bundle.certificates.extend(c.certificate for c in loaded.additional_certs)
    if loaded.key is not None:
        _attach_keys(bundle, [loaded.key])
    return bundle


def self_signed_builder(
    name: x509.Name, public_key: Any, now: datetime, validity: timedelta
) -> x509.CertificateBuilder:
    """
    A builder for a self-signed certificate valid from five minutes ago (for
    clocks slightly behind ours) for C{validity}.
    """
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + validity)
    )


def create_tunnel_certificate(
    email: str, subject: str, now: datetime, *, key_size: int = TUNNEL_KEY_SIZE
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """
    A self-signed S/MIME certificate and key for the webmail tunnel
    (guide §2.3.11 and §3.8): subject C{EMAILADDRESS=email, CN=subject},
    SAN rfc822Name C{email}, usable for signing and encryption.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name([
        x509.NameAttribute(NameOID.EMAIL_ADDRESS, email),
        x509.NameAttribute(NameOID.COMMON_NAME, subject),
    ])
    cert = (
        self_signed_builder(name, key.public_key(), now, TUNNEL_VALIDITY)
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=True, key_encipherment=True,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def describe_name(name: x509.Name) -> str:
    """
    A name as the guide's log lines show it: C{EMAILADDRESS=..., CN=...}.
    """
    labels = {NameOID.EMAIL_ADDRESS: "EMAILADDRESS"}
    parts = []
    for attribute in name:
        label = labels.get(attribute.oid) or attribute.rfc4514_attribute_name
        parts.append(f"{label}={attribute.value!s}")
    return ", ".join(parts)
