"""
The TLS certificate of the admin site, the portal and STARTTLS: the one
made at first start (self-signed), or one the administrator uploads in
Admin → TLS certificate (PEM with its key, or PKCS#12), taken by new
connections at once -- no restart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL.SSL import Connection, Context
from twisted.internet.interfaces import IOpenSSLContextFactory, IOpenSSLServerConnectionCreator
from twisted.internet.ssl import (
    AcceptableCiphers,
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    TLSVersion,
)
from zope.interface import Attribute, Interface, implementer

# TLS 1.2 with forward secrecy and AEAD only (Mozilla's "intermediate"
# profile, RFC 9325 §4.2); TLS 1.3's suites are all AEAD.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
MIN_RSA_BITS = 2048
_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
# Where the certificate in use comes from: made by cipherd at first start,
# uploaded in Admin → TLS certificate (or the API), or named in the
# bootstrap file.
GENERATED, UPLOADED, BOOTSTRAP_FILE = "generated", "uploaded", "bootstrap file"
# The organisation of the one cipherd makes (cipherd.datadir), by which a
# self-signed certificate is told to be that one.
GENERATED_ORGANISATION = "cipherd"


class SiteCertificateError(ValueError):
    """
    An uploaded certificate that cannot serve the sites; the message says
    why, in words for the administrator.
    """


def tls_options(certificate_pem: bytes, key_pem: bytes) -> CertificateOptions:
    """
    Server TLS options from a PEM certificate (followed by its chain) and
    key: TLS 1.2 with AEAD suites only, and TLS 1.3.
    """
    blocks = [_PEM_CERTIFICATE + block
              for block in certificate_pem.split(_PEM_CERTIFICATE)[1:]]
    leaf = PrivateCertificate.loadPEM(key_pem + b"\n" + blocks[0])
    chain = [Certificate.loadPEM(block).original for block in blocks[1:]]
    return CertificateOptions(
        privateKey=leaf.privateKey.original,
        certificate=leaf.original,
        extraCertChain=chain,
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(TLS12_CIPHERS),
    )


@dataclass(frozen=True)
class SiteCertificateInfo:
    """
    What Admin → TLS certificate shows of the certificate in use.
    """

    subject: str
    names: tuple[str, ...]  # DNS names and IP addresses it is valid for
    issuer: str
    not_before: datetime
    not_after: datetime
    sha256: str
    self_signed: bool
    chain: int  # certificates sent after it
    key: str  # "RSA 2048", "EC secp256r1"
    origin: str  # GENERATED, UPLOADED or BOOTSTRAP_FILE

    @classmethod
    def of(cls, certificates: list[x509.Certificate], origin: str) -> SiteCertificateInfo:
        leaf = certificates[0]
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = tuple([*san.get_values_for_type(x509.DNSName),
                           *(str(a) for a in san.get_values_for_type(x509.IPAddress))])
        except x509.ExtensionNotFound:
            names = tuple(str(a.value) for a in leaf.subject.get_attributes_for_oid(
                NameOID.COMMON_NAME))
        public = leaf.public_key()
        key = (f"RSA {public.key_size}" if isinstance(public, rsa.RSAPublicKey)
               else f"EC {public.curve.name}" if isinstance(public, ec.EllipticCurvePublicKey)
               else type(public).__name__)
        return cls(leaf.subject.rfc4514_string(), names, leaf.issuer.rfc4514_string(),
                   leaf.not_valid_before_utc, leaf.not_valid_after_utc,
                   leaf.fingerprint(hashes.SHA256()).hex(), leaf.issuer == leaf.subject,
                   len(certificates) - 1, key, origin)


class ISiteCertificate(Interface):
    """
    The sites' TLS certificate: what it is, and replacing it.
    """

    replaceable = Attribute(
        "C{None} when an upload can replace the certificate, else why not (it "
        "is named in the bootstrap file, which a restart would read again).")

    def info() -> SiteCertificateInfo:
        """
        The certificate in use.
        """

    def replace(data: bytes, password: bytes | None, now: datetime) -> SiteCertificateInfo:
        """
        Use the certificate and key in C{data} (PEM or PKCS#12) from the next
        connection on, and keep them for the next start.  Blocks (writes
        files): call it from a thread.

        @raise SiteCertificateError: why C{data} cannot be used; nothing
            changed.
        """


def _load_bundle(data: bytes, password: bytes | None
                 ) -> tuple[list[x509.Certificate], object]:
    if _PEM_CERTIFICATE in data or b"PRIVATE KEY-----" in data:
        try:
            certificates = x509.load_pem_x509_certificates(data) if (
                _PEM_CERTIFICATE in data) else []
        except ValueError:
            raise SiteCertificateError("A certificate in the PEM file cannot be read.") from None
        if b"PRIVATE KEY-----" not in data:
            raise SiteCertificateError(
                "The file has no private key. Put the key in the same PEM file as the "
                "certificate, or upload a PKCS#12 file.")
        # The key's own BEGIN line (PRIVATE, RSA PRIVATE, ENCRYPTED PRIVATE ...).
        start = data.rfind(b"-----BEGIN", 0, data.index(b"PRIVATE KEY-----"))
        try:
            key = serialization.load_pem_private_key(data[start:], password)
        except TypeError:
            raise SiteCertificateError(
                "The private key is encrypted: enter its password." if password is None
                else "The private key is not encrypted: leave the password empty.") from None
        except ValueError:
            raise SiteCertificateError(
                "The private key cannot be read; if it is encrypted, the password is "
                "wrong.") from None
        return certificates, key
    try:
        loaded, leaf, extra = pkcs12.load_key_and_certificates(data, password)
    except ValueError:
        raise SiteCertificateError(
            "The file is neither PEM nor PKCS#12, or the PKCS#12 password is wrong.") from None
    if loaded is None:
        raise SiteCertificateError("The PKCS#12 file has no private key.")
    return ([leaf] if leaf is not None else []) + list(extra), loaded


def check_bundle(data: bytes, password: bytes | None, now: datetime
                 ) -> tuple[list[x509.Certificate], bytes]:
    """
    The certificates (the one for the key first, then the rest as given)
    and the key as PKCS#8 PEM from an uploaded file.

    @raise SiteCertificateError: why it cannot serve the sites.
    """
    certificates, key = _load_bundle(data, password)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise SiteCertificateError("The key must be RSA or elliptic-curve (ECDSA), which "
                                   "every browser accepts.")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise SiteCertificateError(f"The RSA key has {key.key_size} bits; at least "
                                   f"{MIN_RSA_BITS} are needed.")
    mine = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    leaves = [c for c in certificates if c.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == mine]
    if not leaves:
        raise SiteCertificateError("No certificate in the file belongs to the private key."
                                   if certificates else "The file has no certificate.")
    leaf = leaves[0]
    if now < leaf.not_valid_before_utc:
        raise SiteCertificateError(
            f"The certificate is valid only from {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} "
            "UTC.")
    if now > leaf.not_valid_after_utc:
        raise SiteCertificateError(
            f"The certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC.")
    try:
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.SERVER_AUTH not in usage and (
                ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in usage):
            raise SiteCertificateError("The certificate is not for TLS servers (its extended "
                                       "key usage lacks serverAuth).")
    except x509.ExtensionNotFound:
        pass
    ordered = [leaf, *(c for c in certificates if c is not leaf)]
    return ordered, key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


def _origin(leaf: x509.Certificate, replaceable: str | None) -> str:
    """
    Where the certificate read at start came from.
    """
    if replaceable is not None:
        return BOOTSTRAP_FILE
    organisations = [a.value for a in leaf.subject.get_attributes_for_oid(
        NameOID.ORGANIZATION_NAME)]
    made_here = leaf.issuer == leaf.subject and organisations == [GENERATED_ORGANISATION]
    return GENERATED if made_here else UPLOADED


def _new(path: Path) -> Path:
    return path.with_name(path.name + ".new")


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """
    C{data} in C{path}'s C{.new} file, on disk.
    """
    fd = os.open(_new(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(_new(path), mode)


def _put_in_place(*paths: Path) -> None:
    """
    Each path's C{.new} file renamed over it, where one is left, and the
    directory synced.  Both files are on disk before either is renamed, so
    finishing what a crash interrupted is always right.
    """
    for path in paths:
        if _new(path).exists():
            os.replace(_new(path), path)
    fd = os.open(paths[0].parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@implementer(ISiteCertificate, IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class SiteTLS:
    """
    The sites' TLS context, from C{certificate} and C{key} (PEM files);
    each new connection takes the one in force.
    """

    def __init__(self, certificate: Path, key: Path, replaceable: str | None = None) -> None:
        self._certificate = certificate
        self._key = key
        self.replaceable = replaceable
        if replaceable is None:  # a replacement a crash interrupted
            _put_in_place(key, certificate)
        pem = certificate.read_bytes()
        self._options = tls_options(pem, key.read_bytes())
        certificates = x509.load_pem_x509_certificates(pem)
        self._info = SiteCertificateInfo.of(certificates, _origin(certificates[0], replaceable))

    def getContext(self) -> Context:
        context: Context = self._options.getContext()
        return context

    def serverConnectionForTLS(self, tlsProtocol: object) -> Connection:
        return Connection(self.getContext(), None)

    def info(self) -> SiteCertificateInfo:
        return self._info

    def replace(self, data: bytes, password: bytes | None, now: datetime
                ) -> SiteCertificateInfo:
        if self.replaceable is not None:
            raise SiteCertificateError(self.replaceable)
        certificates, key_pem = check_bundle(data, password, now)
        certificate_pem = b"".join(c.public_bytes(serialization.Encoding.PEM)
                                   for c in certificates)
        options = tls_options(certificate_pem, key_pem)
        _write_new(self._key, key_pem, 0o600)
        _write_new(self._certificate, certificate_pem, 0o644)
        _put_in_place(self._key, self._certificate)
        self._options = options
        self._info = SiteCertificateInfo.of(certificates, UPLOADED)
        return self._info
