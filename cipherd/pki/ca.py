"""
The built-in certificate authority (Admin → CA): root CAs made here, or
intermediates whose key is made here and whose certificate an outside root
signs; S/MIME certificates for internal addresses (RFC 8550 §4.4 profile)
with keys made on the gateway, issued by hand, from a list of addresses in
the background, automatically for a sender who should sign, and again
before they expire; revocation with a reason, and a CRL signed on a
schedule and at every revocation, served at the CA's distribution point and
used by our own trust checks like an imported one.

What is issued goes into the certificate store with its key, like an
imported certificate, in the same transaction as the CA's record of it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID
from sqlalchemy import Connection
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from cipherd.core.clock import utc_from_seconds
from cipherd.cron import ScheduleError, parse_quartz
from cipherd.pki import certs
from cipherd.pki.certstore import CertificateStore
from cipherd.pki.cms import PrivateKey
from cipherd.pki.errors import CertificateImportError, PKIError
from cipherd.pki.keywrap import KeyUnsealError, seal_key, unseal_key
from cipherd.settings import IAddressSettings, email_problem
from cipherd.store import Store
from cipherd.store import ca as q
from cipherd.store.certificates import CERTIFICATES, ROOTS, get_certificate
from cipherd.store.jobs import claim
from cipherd.threads import IBlockingRunner

log = Logger(namespace="cipherd.pki")

DAY = 86400.0

# The key types of CAs and of the certificates they issue.
KEY_TYPES = {
    "rsa2048": "RSA 2048", "rsa3072": "RSA 3072", "rsa4096": "RSA 4096",
    "ec-p256": "ECDSA P-256", "ec-p384": "ECDSA P-384",
}

# RFC 5280 §5.3.1 reasons an administrator gives (not certificateHold: a
# revocation here is for good; not the CA- and AA-compromise reasons,
# which are about a CA's own key).
REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key_compromise": x509.ReasonFlags.key_compromise,
    "affiliation_changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
    "privilege_withdrawn": x509.ReasonFlags.privilege_withdrawn,
}
REASON_TITLES = {
    "unspecified": "Unspecified", "key_compromise": "Key compromise",
    "affiliation_changed": "Affiliation changed", "superseded": "Superseded",
    "cessation_of_operation": "Cessation of operation",
    "privilege_withdrawn": "Privilege withdrawn",
}

MAX_CA_VALIDITY_DAYS = 36500
MAX_VALIDITY_DAYS = 3650
MAX_SUBJECT = 400
MAX_URL = 2000
# A list of addresses asked for at once, at most (a CSV upload).
MAX_REQUESTS = 10000
# Requests issued in one tick (every CA_TICK seconds): keys take time.
REQUESTS_PER_TICK = 20
# A request that failed this often stays listed with its error, untried.
MAX_ATTEMPTS = 3
# How often the scheduled work (CRLs, renewal, requests) looks.
CA_TICK = 10.0
# Renewal runs on one node at a time, this often, renewing at most so many.
RENEWAL_INTERVAL = 60.0
RENEWALS_PER_RUN = 50
# A renewal that failed is tried (and said) again this much later.
RETRY_RENEWAL = 3600.0
# Clocks of clients slightly behind ours still accept a new certificate.
BACKDATE = timedelta(minutes=5)
# PKCS#12 passwords, at least.
MIN_PKCS12_PASSWORD = 8
_PATH_SAFE = re.compile(r"[A-Za-z0-9._~/-]+")


class CAError(PKIError):
    """
    A CA operation was refused: the message says why, for the admin.
    """


# Keys, names, certificates, CRLs: the CPU work, run in the crypto pool ----------

def generate_key(key_type: str) -> PrivateKey:
    if key_type.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
    curve = {"ec-p256": ec.SECP256R1(), "ec-p384": ec.SECP384R1()}[key_type]
    return ec.generate_private_key(curve)


def _hash_for(key: Any) -> hashes.HashAlgorithm:
    # The hash matched to the key's strength (RFC 5480 §4, RFC 8551 §2.1).
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def parse_subject(text: str) -> x509.Name:
    """
    A CA's subject from an admin: an RFC 4514 string (C{CN=Example CA,
    O=Example}) or a plain name, which becomes the common name.

    @raise CAError: why it is not a usable name.
    """
    text = text.strip()
    if not text:
        raise CAError("Enter the CA's subject, e.g. CN=Example Mail CA, O=Example.")
    if len(text) > MAX_SUBJECT or not text.isprintable():
        raise CAError(f"The subject must be one line of at most {MAX_SUBJECT} characters.")
    if re.match(r"^[A-Za-z][A-Za-z0-9.-]*=", text):
        try:
            # People write "CN=x, O=y"; RFC 4514 has no space after the comma.
            name = x509.Name.from_rfc4514_string(
                ",".join(part.strip() for part in re.split(r"(?<!\\),", text)))
        except ValueError as e:
            raise CAError("The subject is not a distinguished name cipherd can read"
                          + (f": {e}." if str(e) else " (write it as CN=Example CA, O=Example).")
                          ) from None
    else:
        try:
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])
        except ValueError as e:  # e.g. a common name over 64 characters
            raise CAError(f"The subject cannot be a common name: {e}.") from None
    if not name.get_attributes_for_oid(NameOID.COMMON_NAME):
        raise CAError("The subject needs a common name (CN=...).")
    try:
        name.public_bytes()
    except ValueError as e:  # e.g. a common name over 64 characters
        raise CAError(f"The subject cannot be encoded: {e}.") from None
    return name


def url_problem(url: str) -> str | None:
    """
    Why C{url} cannot be a CRL distribution point (plain HTTP, as RFC 5280
    §4.2.1.13 advises: a CRL is signed, and TLS to fetch one could need
    the CRL itself), or C{None}.
    """
    if len(url) > MAX_URL or not url.isprintable() or " " in url:
        return "must be one URL without spaces"
    if not url.isascii():
        return ("must be ASCII: write an internationalised host name in its xn-- form "
                "(IDNA)")
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return "must be an http:// URL with a host name, e.g. http://pki.example.com/ca.crl"
    if parts.query or parts.fragment or not _PATH_SAFE.fullmatch(parts.path or "/"):
        return "must be a plain path without a query (letters, digits, '.', '-', '_', '/')"
    if not parts.path.endswith(".crl"):
        return "must end in .crl (the certificate of the CA is then served beside it, .cer)"
    return None


def aia_url(crl_url: str) -> str:
    """
    Where the CA's certificate is served (RFC 5280 §4.2.2.1 caIssuers):
    beside its CRL.
    """
    return crl_url.removesuffix(".crl") + ".cer"


def proposed_crl_url(base: str, taken: Iterable[str]) -> str:
    """
    The distribution point a new CA is proposed: C{<base>/crl/caN.crl} for
    the first N whose path no CA publishes at.
    """
    paths = {urlsplit(url).path for url in taken}
    n = 1
    while f"/crl/ca{n}.crl" in paths:
        n += 1
    return f"{base}/crl/ca{n}.crl"


def authority_key_identifier(ca_cert: x509.Certificate,
                             ca_key: PrivateKey) -> x509.AuthorityKeyIdentifier:
    """
    What certificates and CRLs a CA signs name as its key: its own subject
    key identifier, however its issuer computed it (RFC 5280 §4.2.1.1), or
    the SHA-1 of its key when it has none.
    """
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except (x509.ExtensionNotFound, ValueError):
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _as_ca(builder: Any) -> Any:
    """
    C{builder} (of a certificate or a request) with the extensions of a CA
    that signs end-entity certificates and CRLs (path length 0: no CA
    below it).
    """
    return (builder
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True))


def _ca_extensions(builder: Any, key: PrivateKey, issuer_key: PrivateKey) -> Any:
    return (_as_ca(builder)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer_key.public_key()), critical=False))  # type: ignore[arg-type]


def make_root(name: x509.Name, key: PrivateKey, now: datetime, days: int) -> x509.Certificate:
    """
    A self-signed root CA certificate that may sign end-entity certificates
    and CRLs (path length 0: no CA below it).
    """
    builder = certs.self_signed_builder(name, key.public_key(), now, timedelta(days=days))
    return _ca_extensions(builder, key, key).sign(key, _hash_for(key))


def make_csr(name: x509.Name, key: PrivateKey) -> x509.CertificateSigningRequest:
    """
    The request an outside root signs for an intermediate CA here: it asks
    for the extensions of a CA that issues end-entity certificates.
    """
    return _as_ca(x509.CertificateSigningRequestBuilder().subject_name(name)).sign(
        key, _hash_for(key))


def intermediate_problem(cert: x509.Certificate, key: PrivateKey, now: datetime) -> str | None:
    """
    Why C{cert} cannot be the certificate of the intermediate CA whose key
    is C{key}, or C{None}.
    """
    if not certs.public_key_matches(cert, key):
        return "its public key is not the one of this CA's request (CSR)"
    if not certs.is_ca(cert):
        return "it is not a CA certificate (basic constraints cA is not set)"
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not (usage.key_cert_sign and usage.crl_sign):
            return "its key usage does not allow signing certificates and CRLs"
    except x509.ExtensionNotFound:
        pass
    if cert.not_valid_after_utc <= now:
        return f"it expired on {cert.not_valid_after_utc:%Y-%m-%d}"
    return None


def issue_certificate(ca_cert: x509.Certificate, ca_key: PrivateKey, email: str,
                      key: PrivateKey, now: datetime, days: int,
                      crl_url: str) -> x509.Certificate:
    """
    An S/MIME certificate for C{email} (RFC 8550 §4.4, RFC 8551): SAN
    rfc822Name, key usage digitalSignature with keyEncipherment (RSA) or
    keyAgreement (EC), extended key usage emailProtection, the CA's CRL
    distribution point and its certificate's address (AIA caIssuers).
    Valid from a moment ago for C{days}, but never beyond the CA.
    """
    not_after = min(now + timedelta(days=days), ca_cert.not_valid_after_utc)
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, email[:64]),
                                 x509.NameAttribute(NameOID.EMAIL_ADDRESS, email)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=is_rsa,
            data_encipherment=False, key_agreement=not is_rsa, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(
            key.public_key()), critical=False)
        .add_extension(authority_key_identifier(ca_cert, ca_key), critical=False)
        .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(crl_url)], relative_name=None,
            reasons=None, crl_issuer=None)]), critical=False)
        .add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
            AuthorityInformationAccessOID.CA_ISSUERS,
            x509.UniformResourceIdentifier(aia_url(crl_url)))]), critical=False)
        .sign(ca_key, _hash_for(ca_key))  # type: ignore[arg-type]
    )


def make_crl(ca_cert: x509.Certificate, ca_key: PrivateKey,
             revoked: Iterable[tuple[int, datetime, str]], number: int, now: datetime,
             next_update: datetime) -> x509.CertificateRevocationList:
    """
    A complete CRL (RFC 5280 §5): C{(serial, when, reason)} per revoked
    certificate; a reason code only when it is not "unspecified" (§5.3.1).
    """
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca_cert.subject)
               .last_update(now)
               .next_update(next_update)
               .add_extension(x509.CRLNumber(number), critical=False)
               .add_extension(authority_key_identifier(ca_cert, ca_key), critical=False))
    for serial, when, reason in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
        if reason != "unspecified":
            entry = entry.add_extension(x509.CRLReason(REASONS[reason]), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(ca_key, _hash_for(ca_key))  # type: ignore[arg-type]


def pkcs12_file(cert: x509.Certificate, key: PrivateKey, chain: Sequence[x509.Certificate],
                password: str) -> bytes:
    """
    C{cert} with its key and the CA certificates above it as a PKCS#12 file
    under C{password}: AES-256 (PBES2, PBKDF2-SHA256) and an HMAC-SHA256
    MAC, which Thunderbird/NSS, OpenSSL 3 and current Outlook read.
    """
    encryption = (serialization.PrivateFormat.PKCS12.encryption_builder()
                  .kdf_rounds(100_000)
                  .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
                  .hmac_hash(hashes.SHA256())
                  .build(password.encode()))
    name = certs.email_addresses(cert)[0].encode() if certs.email_addresses(cert) else None
    return pkcs12.serialize_key_and_certificates(
        name, key, cert, list(chain), encryption)  # type: ignore[arg-type]


def pkcs12_password_problem(password: str) -> str | None:
    if len(password) < MIN_PKCS12_PASSWORD:
        return f"must have at least {MIN_PKCS12_PASSWORD} characters"
    if len(password) > 256 or not password.isprintable():
        return "must be one line of at most 256 characters"
    return None


# What the pages and the API see -------------------------------------------------

@dataclass(frozen=True)
class Authority:
    """
    A CA, as the pages and the API show it.

    @ivar certificate: C{None} while an intermediate waits for it (pending).
    @ivar csr: the request to have signed (PEM), while pending.
    @ivar crl_entries: how many certificates its current CRL lists.
    """

    id: str
    subject: str
    key_type: str
    certificate: x509.Certificate | None
    csr: bytes | None
    thumbprint: str | None
    crl_url: str
    crl_this_update: float | None
    crl_next_update: float | None
    crl_entries: int
    created: float

    @property
    def pending(self) -> bool:
        return self.certificate is None

    @property
    def name(self) -> str:
        """
        Its common name, as lists show it.
        """
        found = re.search(r"(?:^|, )CN=(.*?)(?:, [A-Za-z.0-9]+=|$)", self.subject)
        return found.group(1) if found else self.subject

    @property
    def kind(self) -> str:
        if self.certificate is None:
            return "intermediate"
        return "root" if certs.is_self_signed(self.certificate) else "intermediate"

    @property
    def not_after(self) -> float | None:
        return None if self.certificate is None else \
            self.certificate.not_valid_after_utc.timestamp()

    def usable(self, now: float) -> bool:
        """
        It can issue now: it has its certificate and that is valid.
        """
        return self.certificate is not None and \
            self.certificate.not_valid_before_utc.timestamp() <= now < (self.not_after or 0)


def _usable(row: q.CARow, now: float) -> bool:
    """
    L{Authority.usable} of a row, without reading its CRL.
    """
    if row.certificate is None or row.not_after is None or row.not_after <= now:
        return False
    not_before = x509.load_der_x509_certificate(row.certificate).not_valid_before_utc
    return not_before.timestamp() <= now


def _authority(row: q.CARow) -> Authority:
    entries = 0
    if row.crl is not None:
        entries = len(x509.load_der_x509_crl(row.crl))
    return Authority(
        row.id, row.subject, row.key_type,
        None if row.certificate is None else x509.load_der_x509_certificate(row.certificate),
        None if row.csr is None else x509.load_der_x509_csr(row.csr).public_bytes(
            serialization.Encoding.PEM),
        row.thumbprint, row.crl_url, row.crl_this_update, row.crl_next_update, entries,
        row.created)


@dataclass(frozen=True)
class Published:
    """
    A file the CRL listener serves: a CRL or a CA certificate.
    """

    media_type: bytes
    body: bytes
    # Seconds a cache may keep it (until the CRL's next update).
    max_age: int


class ICertificateAuthority(Interface):
    """
    The built-in CA as the gateway (automatic issuing) needs it.
    """

    async def auto_issue(email: str) -> str | None:
        """
        Issue a certificate for C{email}, an internal sender without one who
        should sign, with the default CA of its domain; a second call for
        the same address while the first runs waits for it.

        @return: the new certificate's thumbprint, or C{None} when none can
            be issued (no usable CA, the address is not internal): logged.
        """


@implementer(ICertificateAuthority)
class CertificateAuthority:
    """
    The CAs of a deployment, in its database; what they issue goes into
    C{certificates} with its key.

    @param kek: the key-encryption key: the CAs' keys are sealed under it,
        and issued keys are opened with it for a PKCS#12 export.
    @param internal: whether an address is in a relay domain (the MTA
        config): such addresses, and those whose locality setting is
        internal, may be given certificates.
    @param crypto: where keys are made and things signed.
    """

    def __init__(self, store: Store, certificates: CertificateStore,
                 settings: IAddressSettings, crypto: IBlockingRunner, clock: IReactorTime,
                 kek: bytes, *, internal: Callable[[str], bool]) -> None:
        self._store = store
        self._certificates = certificates
        self._settings = settings
        self._crypto = crypto
        self._clock = clock
        self._kek = kek
        self._internal = internal
        # Certificates whose renewal failed: when to try (and say) again.
        self._not_renewed: dict[str, float] = {}
        # Automatic issuing under way, by address: who else waits for it.
        self._issuing: dict[str, list[Deferred[str | None]]] = {}

    def now(self) -> float:
        return self._clock.seconds()

    # CAs -----------------------------------------------------------------

    async def authorities(self) -> list[Authority]:
        return [_authority(r) for r in await self._store.read(q.list_cas)]

    async def authority(self, ref: str) -> Authority | None:
        row = await self._row(ref)
        return None if row is None else _authority(row)

    async def _row(self, ref: str) -> q.CARow | None:
        ref = ref.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{16}|[0-9a-f]{64}", ref):
            return None
        return await self._store.read(q.get_ca, ref)

    def _ca_key(self, row: q.CARow) -> PrivateKey:
        try:
            return unseal_key(self._kek, row.private_key, "ca:" + row.id)
        except KeyUnsealError as e:
            raise CAError(f"The key of the CA {row.subject} cannot be opened here: {e} Every "
                          "node sharing the database needs the same var/kek.") from None

    def _check_new(self, subject: str, key_type: str, crl_url: str) -> x509.Name:
        if key_type not in KEY_TYPES:
            raise CAError(f"The key type must be one of {', '.join(KEY_TYPES)}.")
        problem = url_problem(crl_url)
        if problem:
            raise CAError(f"The CRL distribution point {problem}.")
        return parse_subject(subject)

    async def _check_url_free(self, crl_url: str) -> None:
        path = urlsplit(crl_url).path
        for other in await self._store.read(q.list_cas):
            if urlsplit(other.crl_url).path == path:
                raise CAError(f"The CA {other.subject} publishes its CRL at that path "
                              "already: give each CA a path of its own.")

    async def create_root(self, subject: str, key_type: str, validity_days: int,
                          crl_url: str) -> Authority:
        """
        A new root CA: its key, its self-signed certificate (trusted: put in
        the roots), its first CRL.

        @raise CAError: a value is refused.
        """
        name = self._check_new(subject, key_type, crl_url)
        if not 1 <= validity_days <= MAX_CA_VALIDITY_DAYS:
            raise CAError(f"The validity must be 1 to {MAX_CA_VALIDITY_DAYS} days.")
        await self._check_url_free(crl_url)
        now = utc_from_seconds(self.now())
        ca_id = os.urandom(8).hex()

        def make() -> tuple[x509.Certificate, bytes]:
            key = generate_key(key_type)
            return make_root(name, key, now, validity_days), seal_key(
                self._kek, key, "ca:" + ca_id)

        cert, sealed = await self._crypto.run(make)
        thumbprint = certs.thumbprint(cert)
        row = q.CARow(ca_id, certs.describe_name(name), key_type, sealed, None, certs.der(cert),
                      thumbprint, cert.not_valid_after_utc.timestamp(), crl_url, 0, None, None,
                      None, self.now())
        await self._certificates.add_certificates_with(
            [(cert, None, ROOTS)], lambda conn: q.put_ca(conn, row))
        log.info("Created the root CA {subject} ({thumbprint})", subject=row.subject,
                 thumbprint=thumbprint)
        await self.sign_crl(ca_id)
        return await self._must(ca_id)

    async def create_intermediate(self, subject: str, key_type: str,
                                  crl_url: str) -> Authority:
        """
        A new intermediate CA, pending: its key and the request (CSR) for
        an outside root to sign.
        """
        name = self._check_new(subject, key_type, crl_url)
        await self._check_url_free(crl_url)
        ca_id = os.urandom(8).hex()

        def make() -> tuple[bytes, bytes]:
            key = generate_key(key_type)
            csr = make_csr(name, key)
            return csr.public_bytes(serialization.Encoding.DER), seal_key(
                self._kek, key, "ca:" + ca_id)

        csr, sealed = await self._crypto.run(make)
        row = q.CARow(ca_id, certs.describe_name(name), key_type, sealed, csr, None, None,
                      None, crl_url, 0, None, None, None, self.now())
        await self._store.run(q.put_ca, row)
        log.info("Created the intermediate CA {subject}: its request waits to be signed",
                 subject=row.subject)
        return await self._must(ca_id)

    async def install(self, ref: str, data: bytes) -> Authority:
        """
        Give a pending intermediate the certificate the outside root signed
        (PEM, DER or PKCS#7, with or without the certificates above it: the
        others go into the certificate store too, a root among them only as
        an intermediate: roots are trusted by importing them as roots).

        @raise CAError: it is not pending, or the file holds no certificate
            for its key.
        """
        row = await self._row(ref)
        if row is None:
            raise CAError("There is no such CA.")
        if not row.pending:
            raise CAError(f"The CA {row.subject} has its certificate already.")
        try:
            bundle = await self._crypto.run(certs.load_bundle, data, None)
        except CertificateImportError as e:
            raise CAError(str(e)) from None
        key = self._ca_key(row)
        now = utc_from_seconds(self.now())
        problems = [intermediate_problem(c, key, now) for c in bundle.certificates]
        mine = [c for c, p in zip(bundle.certificates, problems, strict=True) if p is None]
        if not mine:
            why = next((p for p in problems if p and "public key" not in p), None)
            raise CAError("The file has no certificate for this CA: " + (
                why or "none has the public key of its request (CSR)") + ".")
        cert = mine[0]
        others = [c for c in bundle.certificates if c is not cert]
        thumbprint = certs.thumbprint(cert)

        def write(conn: Connection) -> None:
            if not q.install_certificate(conn, row.id, certs.der(cert), thumbprint,
                                         cert.not_valid_after_utc.timestamp()):
                raise CAError(f"The CA {row.subject} has its certificate already.")

        await self._certificates.add_certificates_with(
            [(c, None, CERTIFICATES) for c in [cert, *others]], write)
        log.info("Installed the certificate of the intermediate CA {subject} ({thumbprint})",
                 subject=row.subject, thumbprint=thumbprint)
        await self.sign_crl(row.id)
        return await self._must(row.id)

    async def delete_pending(self, ref: str) -> bool:
        """
        Give up a pending intermediate (its key is deleted).

        @return: whether there was such a pending CA.
        """
        row = await self._row(ref)
        if row is None or not row.pending:
            return False
        return bool(await self._store.run(q.delete_ca, row.id))

    async def _must(self, ca_id: str) -> Authority:
        row = await self._store.read(q.get_ca, ca_id)
        assert row is not None
        return _authority(row)

    # Issuing -------------------------------------------------------------

    async def _address_settings(self, email: str) -> Any:
        return (await self._settings.by_address([email]))[email]

    async def _choose(self, email: str, ref: str | None, values: Any) -> q.CARow:
        now = self.now()
        if ref:
            row = await self._row(ref)
            if row is None:
                raise CAError(f"There is no CA {ref}.")
            chosen = [row]
        else:
            default = values["ca_default"].strip().lower()
            rows = await self._store.read(q.list_cas)
            chosen = [r for r in rows if r.id == default or r.thumbprint == default] \
                if default else rows
            if default and not chosen:
                raise CAError(f"The default CA for {email} ({default}, Settings → Certificate "
                              "authority) does not exist.")
        usable = [r for r in chosen if _usable(r, now)]
        if not usable:
            if ref or (chosen and values["ca_default"]):
                raise CAError(f"The CA {chosen[0].subject} cannot issue now: it is "
                              + ("waiting for its certificate." if chosen[0].pending
                                 else "not valid now."))
            raise CAError("There is no CA that can issue certificates: create one "
                          "(Admin → CA).")
        return usable[0]

    async def _internal_problem(self, email: str, values: Any) -> str | None:
        problem = email_problem(email)
        if problem:
            return f"{email!r} is not an email address: {problem}"
        if not (self._internal(email) or values["locality"] == "internal"):
            return (f"{email} is not an internal address: its domain is not a relay domain "
                    "and its locality is not internal (Settings → Encryption policy)")
        return None

    async def issue(self, email: str, *, ca: str | None = None,
                    validity_days: int | None = None, origin: str = "admin",
                    replaces: str | None = None, due_before: float | None = None,
                    request: int | None = None) -> q.IssuedRow:
        """
        A new key and certificate for the internal address C{email}, put
        into the certificate store.

        @param ca: the CA's id or thumbprint; C{None}: the address's default.
        @param validity_days: C{None}: the address's setting.
        @param replaces: the thumbprint of the certificate it renews.
        @param due_before: when renewing: the end of the renewal window; a
            certificate that would end before it (its CA expires first, or
            the validity is shorter than the window) is not issued, else it
            would be renewed again at once, and again.
        @param request: the waiting request it answers, taken in the same
            transaction (cancelled or issued by another node meanwhile:
            nothing is stored).
        @raise CAError: why none was issued (L{Superseded}: another node, or
            an admin, was first; for C{origin="auto"} it names the current
            certificate of the address).
        """
        email = email.strip().lower()
        values = await self._address_settings(email)
        problem = await self._internal_problem(email, values)
        if problem:
            raise CAError(problem[0].upper() + problem[1:] + ".")
        row = await self._choose(email, ca, values)
        days = validity_days if validity_days is not None else \
            int(values["ca_certificate_validity"])
        if not 1 <= days <= MAX_VALIDITY_DAYS:
            raise CAError(f"The validity must be 1 to {MAX_VALIDITY_DAYS} days.")
        assert row.certificate is not None
        ca_cert = x509.load_der_x509_certificate(row.certificate)
        now = utc_from_seconds(self.now())
        if due_before is not None and min(
                now + timedelta(days=days), ca_cert.not_valid_after_utc
        ).timestamp() <= due_before:
            raise CAError(
                f"a new certificate would expire within the renewal window too (its CA "
                f"{row.subject} expires on {ca_cert.not_valid_after_utc:%Y-%m-%d}, the "
                f"validity is {days} days): renew the CA, or shorten the renewal window")
        ca_key = self._ca_key(row)
        key_type = values["ca_key_type"]

        def make() -> tuple[PrivateKey, x509.Certificate]:
            key = generate_key(key_type)
            return key, issue_certificate(ca_cert, ca_key, email, key, now, days, row.crl_url)

        try:
            key, cert = await self._crypto.run(make)
        except ValueError as e:  # a value cryptography refuses to encode
            raise CAError(f"The certificate cannot be made: {e}.") from None
        issued = q.IssuedRow(
            certs.thumbprint(cert), row.id, format(cert.serial_number, "x"), email,
            certs.der(cert), cert.not_valid_before_utc.timestamp(),
            cert.not_valid_after_utc.timestamp(), self.now(), origin, None, None, None)

        def write(conn: Connection) -> None:
            if replaces is not None and not q.mark_renewed(conn, replaces, issued.thumbprint):
                raise Superseded("renewed or revoked meanwhile")
            if request is not None and not q.take_request(conn, request):
                raise Superseded("issued or cancelled meanwhile")
            if origin == "auto":
                current = q.current_for(conn, email, self.now())
                if current is not None:  # another process was first
                    raise Superseded(current.thumbprint)
            q.put_issued(conn, issued)

        await self._certificates.add_certificates_with([(cert, key, CERTIFICATES)], write)
        log.info("Issued a certificate for {email} by the CA {ca} ({origin}; serial {serial}, "
                 "valid until {until:%Y-%m-%d})", email=email, ca=row.subject, origin=origin,
                 serial=issued.serial, until=cert.not_valid_after_utc)
        return issued

    async def auto_issue(self, email: str) -> str | None:
        email = email.strip().lower()
        waiting = self._issuing.get(email)
        if waiting is not None:
            mine: Deferred[str | None] = Deferred()
            waiting.append(mine)
            return await mine
        self._issuing[email] = waiting = []
        thumbprint = None
        try:
            thumbprint = await self._auto_issue(email)
        finally:
            del self._issuing[email]
            for other in waiting:
                other.callback(thumbprint)
        return thumbprint

    async def _auto_issue(self, email: str) -> str | None:
        current = await self._store.read(q.current_for, email, self.now())
        if current is not None:
            return current.thumbprint
        try:
            return (await self.issue(email, origin="auto")).thumbprint
        except Superseded as e:
            return str(e)
        except CAError as e:
            log.warn("No certificate was issued automatically for {email}: {why}",
                     email=email, why=e)
            return None

    async def request(self, emails: Sequence[str], *, ca: str | None = None,
                      validity_days: int | None = None, by: str = "") -> int:
        """
        Ask for certificates for many addresses at once: they are issued in
        the background (L{tick}), a few at a time; those that fail stay in
        L{requests} with why.

        @raise CAError: an address or the CA is refused; nothing is asked for.
        """
        given = [e.strip().lower() for e in emails if e.strip()]
        if len(given) > MAX_REQUESTS:
            raise CAError(f"At most {MAX_REQUESTS} addresses at once ({len(given)} given).")
        wanted = list(dict.fromkeys(given))
        if not wanted:
            raise CAError("There are no addresses to issue certificates for.")
        bad = [f"{e}: {p}" for e in wanted if (p := email_problem(e))]
        if bad:
            raise CAError("Not email addresses: " + "; ".join(bad[:5]) + (
                f" (and {len(bad) - 5} more)" if len(bad) > 5 else "") + ".")
        ca_id = None
        if ca:
            row = await self._row(ca)
            if row is None:
                raise CAError(f"There is no CA {ca}.")
            ca_id = row.id
        if validity_days is not None and not 1 <= validity_days <= MAX_VALIDITY_DAYS:
            raise CAError(f"The validity must be 1 to {MAX_VALIDITY_DAYS} days.")
        return int(await self._store.run(q.add_requests, wanted, ca_id, validity_days,
                                         self.now(), by))

    async def requests(self) -> list[q.RequestRow]:
        return await self._store.read(q.list_requests)

    async def cancel_request(self, request_id: int) -> bool:
        """
        @return: whether there was such a request (an id no database row can
            have, beyond 64 bits, names none).
        """
        if not 0 < request_id < 2**63:
            return False
        return bool(await self._store.run(q.take_request, request_id))

    async def issued(self, *, text: str = "", ca: str = "", offset: int = 0,
                     limit: int = 100) -> list[q.IssuedRow]:
        return await self._store.read(lambda conn: q.list_issued(
            conn, text=text, ca_id=ca, offset=offset, limit=limit))

    async def count_issued(self, *, text: str = "", ca: str = "") -> int:
        return int(await self._store.read(lambda conn: q.count_issued(conn, text=text,
                                                                       ca_id=ca)))

    async def issued_certificate(self, thumbprint: str) -> q.IssuedRow | None:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", thumbprint):
            return None
        return await self._store.read(q.get_issued, thumbprint.lower())

    # Revocation and CRLs -------------------------------------------------

    async def revoke(self, thumbprint: str, reason: str) -> q.IssuedRow:
        """
        Revoke a certificate issued here and sign its CA's CRL again at once.

        @raise CAError: no such certificate, already revoked, or an unknown
            reason.
        """
        if reason not in REASONS:
            raise CAError(f"The reason must be one of {', '.join(REASONS)}.")
        issued = await self.issued_certificate(thumbprint)
        if issued is None:
            raise CAError("No CA here issued such a certificate.")
        if not await self._store.run(q.revoke, issued.thumbprint, self.now(), reason):
            raise CAError("The certificate was revoked already.")
        log.info("Revoked the certificate {thumbprint} of {email} ({reason})",
                 thumbprint=issued.thumbprint, email=issued.email, reason=reason)
        await self.sign_crl(issued.ca_id)
        revoked = await self.issued_certificate(issued.thumbprint)
        assert revoked is not None
        return revoked

    async def sign_crl(self, ref: str) -> bytes:
        """
        Sign the CA's CRL now: it is served at its distribution point and
        put into the certificate store's CRLs, which trust checks use.

        @return: the CRL (DER).
        @raise CAError: no such CA, or it is pending.
        """
        row = await self._row(ref)
        if row is None or row.certificate is None:
            raise CAError("There is no such CA with a certificate.")
        ca_key = self._ca_key(row)
        ca_cert = x509.load_der_x509_certificate(row.certificate)
        values = (await self._settings.by_address([""]))[""]
        hours = int(values["ca_crl_validity"])

        def take(conn: Connection) -> tuple[int, float | None, list[q.IssuedRow]]:
            number, last = q.next_crl_number(conn, row.id)
            return number, last, q.revoked_by(conn, row.id)

        number, last, revoked = await self._store.run(take)
        # Each CRL later than the one before it (its times are whole
        # seconds): a revocation within the second of the last CRL must
        # still replace it everywhere CRLs are kept newest first.
        now = utc_from_seconds(max(float(int(self.now())), (last or 0) + 1))
        next_update = now + timedelta(hours=hours)
        crl = await self._crypto.run(
            make_crl, ca_cert, ca_key,
            [(int(r.serial, 16), utc_from_seconds(r.revoked or 0), r.reason or "unspecified")
             for r in revoked], number, now, next_update)
        der = crl.public_bytes(serialization.Encoding.DER)
        if not await self._store.run(q.put_crl, row.id, der, number, now.timestamp(),
                                     next_update.timestamp()):
            return der  # another node signed a newer one meanwhile
        result = await self._certificates.import_data(der)
        for issuer, outcome in result.crls:
            if outcome.startswith("refused"):
                log.warn("The CRL of the CA {issuer} is served but not used by our own trust "
                         "checks: {outcome} (import the root it chains to as a trusted root)",
                         issuer=issuer, outcome=outcome)
        return der

    async def crl_of(self, ref: str) -> bytes | None:
        """
        @return: the CA's current CRL (DER), or C{None}: no such CA, or it
            has signed none yet.
        """
        row = await self._row(ref)
        return None if row is None else row.crl

    async def published(self, path: str) -> Published | None:
        """
        What the CRL listener serves at C{path}: a CA's CRL at the path of
        its distribution point, its certificate beside it (C{.cer}).
        """
        for row in await self._store.read(q.list_cas):
            crl_path = urlsplit(row.crl_url).path
            if path == crl_path and row.crl is not None:
                left = int((row.crl_next_update or 0) - self.now())
                return Published(b"application/pkix-crl", row.crl, max(0, min(left, 3600)))
            if path == aia_url(crl_path) and row.certificate is not None:
                return Published(b"application/pkix-cert", row.certificate, 3600)
        return None

    # PKCS#12 ---------------------------------------------------------------

    async def pkcs12(self, thumbprint: str, password: str) -> bytes:
        """
        A certificate issued here with its key and the CA certificates above
        it, as a PKCS#12 file under C{password}.

        @raise CAError: no such certificate, its key is gone, or the
            password is refused.
        """
        problem = pkcs12_password_problem(password)
        if problem:
            raise CAError(f"The password {problem}.")
        issued = await self.issued_certificate(thumbprint)
        if issued is None:
            raise CAError("No CA here issued such a certificate.")
        stored = await self._store.read(get_certificate, CERTIFICATES, issued.thumbprint)
        if stored is None or stored.sealed_key is None:
            raise CAError("The certificate or its private key is no longer in the "
                          "certificate store.")
        try:
            key = unseal_key(self._kek, stored.sealed_key, issued.thumbprint)
        except KeyUnsealError as e:
            raise CAError(str(e)) from None
        row = await self._store.read(q.get_ca, issued.ca_id)
        chain = [] if row is None or row.certificate is None else [
            x509.load_der_x509_certificate(row.certificate)]
        cert = x509.load_der_x509_certificate(issued.der)
        return bytes(await self._crypto.run(pkcs12_file, cert, key, chain, password))

    # Scheduled -------------------------------------------------------------

    async def tick(self) -> None:
        """
        What runs every L{CA_TICK} seconds on every node: the CRLs signed
        when the schedule says (on one node), a CA without a CRL at once;
        certificates renewed when they enter the renewal window; a few
        waiting requests issued.
        """
        values = (await self._settings.by_address([""]))[""]
        rows = await self._store.read(q.list_cas)
        if not rows:
            return
        now = self.now()
        try:
            schedule = parse_quartz(values["ca_crl_schedule"])
        except ScheduleError as e:
            log.error("The CRL schedule is not valid: {why}", why=e)
        else:
            if await claim(self._store, "ca-crl", schedule.next_after_seconds, now,
                           run_first=False):
                for row in rows:
                    if row.certificate is not None:
                        await self._sign_logged(row)
        for row in rows:
            if row.certificate is not None and (
                    row.crl is None or (row.crl_next_update or 0) <= now):
                await self._sign_logged(row)
        # One node renews, and works the requests, at a time (each
        # certificate is still taken in the transaction that stores its
        # successor): keys are not made twice over.
        if await claim(self._store, "ca-renewal", lambda last: last + RENEWAL_INTERVAL, now,
                       run_first=True):
            await self._renew(now, float(values["ca_renewal_window"]) * DAY)
        if await claim(self._store, "ca-requests", lambda last: last + CA_TICK / 2, now,
                       run_first=True):
            await self._work_requests()

    async def _sign_logged(self, row: q.CARow) -> None:
        try:
            await self.sign_crl(row.id)
        except CAError as e:
            log.error("The CRL of the CA {subject} was not signed: {why}", subject=row.subject,
                      why=e)

    async def _renew(self, now: float, window: float) -> None:
        due = [old for old in await self._store.read(q.due_for_renewal, now + window, now)
               if self._not_renewed.get(old.thumbprint, 0) <= now]
        for old in due[:RENEWALS_PER_RUN]:
            try:
                new = await self._renewal(old, now + window)
            except Superseded:
                continue
            except CAError as e:
                # Said once an hour, and tried again then (an admin may
                # have made a new CA or changed the settings meanwhile).
                self._not_renewed[old.thumbprint] = now + RETRY_RENEWAL
                log.error("The certificate {thumbprint} of {email} expires on {until} and was "
                          "not renewed: {why}", thumbprint=old.thumbprint, email=old.email,
                          until=f"{utc_from_seconds(old.not_after):%Y-%m-%d}", why=e)
                continue
            log.info("Renewed the certificate {old} of {email}: {new}", old=old.thumbprint,
                     email=old.email, new=new.thumbprint)

    async def _renewal(self, old: q.IssuedRow, due_before: float) -> q.IssuedRow:
        """
        C{old} issued again by its CA, or, when that CA cannot issue any
        more, by the address's default.
        """
        try:
            return await self.issue(old.email, ca=old.ca_id, origin="renewal",
                                    replaces=old.thumbprint, due_before=due_before)
        except Superseded:
            raise
        except CAError:
            return await self.issue(old.email, origin="renewal", replaces=old.thumbprint,
                                    due_before=due_before)

    async def _work_requests(self) -> None:
        waiting = await self._store.read(q.list_requests, REQUESTS_PER_TICK, MAX_ATTEMPTS)
        for request in waiting:
            try:
                issued = await self.issue(request.email, ca=request.ca_id,
                                          validity_days=request.validity_days, origin="csv",
                                          request=request.id)
            except Superseded:
                continue
            except CAError as e:
                await self._store.run(q.request_failed, request.id, str(e))
                continue
            log.info("Issued the requested certificate {thumbprint} for {email}",
                     thumbprint=issued.thumbprint, email=request.email)


class Superseded(CAError):
    """
    Another node or an admin was first (the certificate renewed or revoked,
    the request issued or cancelled, the address given a certificate):
    nothing was stored.
    """


def expiring_authorities(authorities: Iterable[Authority], before: float) -> list[Authority]:
    """
    The CAs whose certificate is not valid after C{before}, soonest first.
    """
    return sorted((a for a in authorities if a.not_after is not None and a.not_after < before),
                  key=lambda a: a.not_after or 0)


__all__ = ["CA_TICK", "KEY_TYPES", "REASONS", "Authority", "CAError", "CertificateAuthority",
           "ICertificateAuthority", "Published", "aia_url", "expiring_authorities",
           "issue_certificate", "make_crl", "make_root", "pkcs12_file", "url_problem"]
