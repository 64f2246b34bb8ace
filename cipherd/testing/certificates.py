"""
A certificate store in memory: the L{ICertificateStore} fake for tests of
what uses one (processing, the engine, the admin), and the plain reference
the real store's caches are held to.

It keeps nothing but the certificates, keys, CTL and CRLs themselves and
works every answer out afresh with the pure functions of
L{cipherd.pki.trust}, so it makes the same trust decisions as the real
store with none of its database or memory of past answers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from cipherd.core.clock import utc_from_seconds
from cipherd.pki import certs
from cipherd.pki.certstore import (
    ICertificateStore,
    ImportResult,
    StoredCertificate,
    crl_row,
    crl_signer_key_ids,
    judge_crls,
    new_certificate,
)
from cipherd.pki.cms import PrivateKey
from cipherd.pki.keywrap import seal_key, unseal_key
from cipherd.pki.ocsp import IOCSPClient
from cipherd.pki.trust import (
    CTLStatus,
    OCSPAnswer,
    Purpose,
    TrustContext,
    Verdict,
    check,
    ocsp_key,
)
from cipherd.store.certificates import CERTIFICATES, ROOTS, CertificateRow, CRLRow

__all__ = ["MemoryCertificateStore", "MemoryOCSPClient", "ec_ca", "many_certificates"]


@dataclass(frozen=True)
class _Stored:
    row: CertificateRow
    issuer_serial: str
    subject_key_id: str | None
    certificate: x509.Certificate


def _normalised(address: str) -> str:
    return address.strip().lower()


@implementer(ICertificateStore)
class MemoryCertificateStore:
    """
    An L{ICertificateStore} in memory.  Its coroutines complete at once;
    private keys are sealed under C{kek} as the real store seals them.

    @param clock: what L{now} reads.
    """

    def __init__(self, clock: IReactorTime, kek: bytes | None = None,
                 ocsp: Mapping[tuple[str, int], OCSPAnswer] | None = None) -> None:
        """
        @param ocsp: what OCSP responders answer, by
            L{cipherd.pki.trust.ocsp_key}.
        """
        self._clock = clock
        self._kek = kek if kek is not None else os.urandom(32)
        self._ocsp = dict(ocsp or {})
        self._stored: dict[tuple[str, str], _Stored] = {}
        self._ctl: dict[str, CTLStatus] = {}
        self._crls: dict[str, tuple[CRLRow, x509.CertificateRevocationList]] = {}

    def now(self) -> datetime:
        return utc_from_seconds(self._clock.seconds())

    # Changes -----------------------------------------------------------------

    def _put(self, store: str, cert: x509.Certificate, key: PrivateKey | None) -> str:
        new = new_certificate(cert)
        sealed = None if key is None else seal_key(self._kek, key, new.thumbprint)
        there = self._stored.get((store, new.thumbprint))
        if there is not None:
            if sealed is None or there.row.sealed_key is not None:
                return "duplicate"
            self._stored[store, new.thumbprint] = replace(
                there, row=replace(there.row, sealed_key=sealed))
            return "key added"
        row = CertificateRow(store, new.thumbprint, new.der, new.subject, new.issuer,
                             new.serial, new.not_before, new.not_after, new.is_ca,
                             new.self_signed, sealed, tuple(sorted(new.emails)))
        self._stored[store, new.thumbprint] = _Stored(row, new.issuer_serial,
                                                      new.subject_key_id, cert)
        return "added"

    async def import_data(self, data: bytes, *, password: str | None = None,
                          skip_self_signed: bool = True,
                          store: str = CERTIFICATES) -> ImportResult:
        bundle = certs.load_bundle(data, password)
        result = ImportResult(format=bundle.format)
        # CRLs are checked against what was stored before, and the file's
        # certificates only as a path to build through.
        taken, result.crls = judge_crls(
            bundle.crls, self.now(), self._context(bundle.certificates, bundle.crls))
        for cert in bundle.certificates:
            thumbprint = certs.thumbprint(cert)
            if store == CERTIFICATES and skip_self_signed and certs.is_self_signed(cert):
                result.skipped.append((thumbprint, "self-signed"))
                continue
            outcome = self._put(store, cert, bundle.keys.get(thumbprint))
            {"added": result.imported, "key added": result.keys_added,
             "duplicate": result.duplicates}[outcome].append(thumbprint)
        for crl, signer in taken:
            row = crl_row(crl, signer)
            there = self._crls.get(row.issuer_hash)
            if there is not None and there[0].this_update >= row.this_update:
                result.crls.append((row.issuer, "older"))
                continue
            self._crls[row.issuer_hash] = (row, crl)
            result.crls.append((row.issuer, "added" if there is None else "replaced"))
        return result

    async def add_certificates(
        self, certificates: Iterable[tuple[x509.Certificate, PrivateKey | None]],
        store: str = CERTIFICATES,
    ) -> list[str]:
        added = []
        for cert, key in certificates:
            self._put(store, cert, key)
            added.append(certs.thumbprint(cert))
        return added

    async def add_certificate(self, cert: x509.Certificate, key: PrivateKey | None = None,
                              store: str = CERTIFICATES) -> str:
        return (await self.add_certificates([(cert, key)], store))[0]

    async def create_tunnel_certificate(self, email: str, subject: str) -> str:
        cert, key = certs.create_tunnel_certificate(email, subject, self.now())
        return await self.add_certificate(cert, key)

    async def delete(self, thumbprint: str, store: str = CERTIFICATES) -> bool:
        return self._stored.pop((store, thumbprint.lower()), None) is not None

    async def set_ctl(self, thumbprint: str, status: CTLStatus) -> None:
        self._ctl[thumbprint.lower()] = status

    async def remove_ctl(self, thumbprint: str) -> bool:
        return self._ctl.pop(thumbprint.lower(), None) is not None

    async def delete_crl(self, issuer_hash: str) -> bool:
        return self._crls.pop(issuer_hash, None) is not None

    # Look-ups ----------------------------------------------------------------

    def _all(self, store: str | None = None) -> list[_Stored]:
        return sorted((s for s in self._stored.values() if store in (None, s.row.store)),
                      key=lambda s: (s.row.subject, s.row.thumbprint))

    def _for(self, email: str) -> list[_Stored]:
        address = _normalised(email)
        return sorted((s for s in self._all(CERTIFICATES) if address in s.row.emails),
                      key=lambda s: (-s.row.not_after, s.row.thumbprint))

    async def get(self, thumbprint: str, store: str = CERTIFICATES) -> CertificateRow | None:
        found = self._stored.get((store, thumbprint.lower()))
        return None if found is None else found.row

    async def find_by_email(self, email: str) -> list[x509.Certificate]:
        return [s.certificate for s in self._for(email)]

    async def find_by_issuer_serial(self, issuer: x509.Name | bytes,
                                    serial: int) -> list[x509.Certificate]:
        issuer_der = issuer if isinstance(issuer, bytes) else issuer.public_bytes()
        wanted = certs.issuer_serial_key(issuer_der, serial)
        return [s.certificate for s in self._all() if s.issuer_serial == wanted]

    async def find_by_subject_key_id(self, ski: bytes) -> list[x509.Certificate]:
        return [s.certificate for s in self._all() if s.subject_key_id == ski.hex()]

    def _matching(self, store: str, text: str, email: str) -> list[_Stored]:
        needle, address = text.strip().lower(), _normalised(email)
        return [s for s in self._all(store)
                if (not address or address in s.row.emails)
                and (not needle or needle in s.row.subject.lower()
                     or s.row.thumbprint.startswith(needle.replace(":", ""))
                     or any(needle in e for e in s.row.emails))]

    async def listing(self, store: str = CERTIFICATES, *, text: str = "", email: str = "",
                      offset: int = 0, limit: int = 100) -> list[StoredCertificate]:
        context = self._context()
        return [StoredCertificate(s.row, s.certificate,
                                  check(s.certificate, Purpose.ANY, self.now(), context),
                                  self._ctl.get(s.row.thumbprint))
                for s in self._matching(store, text, email)[offset:offset + limit]]

    async def count(self, store: str = CERTIFICATES, *, text: str = "", email: str = "") -> int:
        return len(self._matching(store, text, email))

    async def crls(self) -> list[CRLRow]:
        return sorted((row for row, _ in self._crls.values()), key=lambda r: r.issuer)

    async def ctl(self) -> dict[str, CTLStatus]:
        return dict(self._ctl)

    # Trust -------------------------------------------------------------------

    def _context(self, extra: Iterable[x509.Certificate] = (),
                 extra_crls: Iterable[x509.CertificateRevocationList] = ()) -> TrustContext:
        crls = [crl for _, crl in sorted(self._crls.values(), key=lambda c: c[0].issuer)]
        signer_keys = crl_signer_key_ids([*crls, *extra_crls])
        roots = [s.certificate for s in self._all(ROOTS)]
        cas = [s for s in self._all(CERTIFICATES) if s.row.is_ca]
        loaded = {certs.thumbprint(c) for c in roots} | {s.row.thumbprint for s in cas}
        signers = [s for s in self._all() if s.subject_key_id in signer_keys
                   and s.row.thumbprint not in loaded]
        return TrustContext(roots=roots,
                            intermediates=[s.certificate for s in (*cas, *signers)]
                            + list(extra),
                            ctl=dict(self._ctl), crls=crls)

    async def trust_context(
        self, extra: Iterable[x509.Certificate] = (),
        extra_crls: Iterable[x509.CertificateRevocationList] = (),
    ) -> TrustContext:
        return self._context(extra, extra_crls)

    async def check(self, cert: x509.Certificate, purpose: Purpose,
                    extra: Iterable[x509.Certificate] = (), *,
                    fail_closed: bool = False) -> Verdict:
        context = self._context(extra).with_revocation(self._ocsp, fail_closed)
        return check(cert, purpose, self.now(), context)

    # Selection ---------------------------------------------------------------

    async def encryption_certificates(self, email: str, *, fail_closed: bool = False
                                      ) -> list[x509.Certificate]:
        context = self._context().with_revocation(self._ocsp, fail_closed)
        return [s.certificate for s in self._for(email)
                if check(s.certificate, Purpose.ENCRYPTION, self.now(), context).valid]

    def _first_usable(
        self, email: str, purpose: Purpose, fail_closed: bool = False,
    ) -> tuple[x509.Certificate, PrivateKey, list[x509.Certificate]] | None:
        context = self._context().with_revocation(self._ocsp, fail_closed)
        for candidate in self._for(email):
            if candidate.row.sealed_key is None:
                continue
            verdict = check(candidate.certificate, purpose, self.now(), context)
            if verdict.valid:
                key = unseal_key(self._kek, candidate.row.sealed_key, candidate.row.thumbprint)
                return candidate.certificate, key, verdict.chain[1:]
        return None

    async def signing_identity(
        self, email: str, *, fail_closed: bool = False,
    ) -> tuple[x509.Certificate, PrivateKey, list[x509.Certificate]] | None:
        return self._first_usable(email, Purpose.SIGNING, fail_closed)

    async def decryption_identity(self,
                                  email: str) -> tuple[x509.Certificate, PrivateKey] | None:
        found = self._first_usable(email, Purpose.ENCRYPTION)
        return None if found is None else (found[0], found[1])

    async def decryption_keys(self) -> list[tuple[x509.Certificate, PrivateKey]]:
        return [(s.certificate, unseal_key(self._kek, s.row.sealed_key, s.row.thumbprint))
                for s in self._all() if s.row.sealed_key is not None]


@implementer(IOCSPClient)
class MemoryOCSPClient:
    """
    OCSP responders that answer as told, by L{cipherd.pki.trust.ocsp_key};
    what they were asked about is in C{asked}.
    """

    def __init__(self, answers: Mapping[tuple[str, int], OCSPAnswer]) -> None:
        self._answers = dict(answers)
        self.asked: list[tuple[str, int]] = []

    def status(self, cert: x509.Certificate, issuer: x509.Certificate
               ) -> Deferred[OCSPAnswer | None]:
        key = ocsp_key(cert, issuer)
        self.asked.append(key)
        return succeed(self._answers.get(key))


def many_certificates(
    issuer: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey, count: int,
    not_before: datetime, not_after: datetime, *, domain: str = "many.example",
    first: int = 0,
) -> list[x509.Certificate]:
    """
    C{count} S/MIME certificates for C{user<n>@domain}, C{n} from C{first},
    issued by C{issuer}, quickly: they share one P-256 key and the issuer
    signs with ECDSA (about 0.5 ms each), for stores of 100,000
    certificates.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    key_id = x509.SubjectKeyIdentifier.from_public_key(public)
    authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
    # digitalSignature and keyAgreement: an EC key encrypts by ECDH (RFC 8550).
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=True,
                          key_cert_sign=False, crl_sign=False, encipher_only=False,
                          decipher_only=False)
    made = []
    for n in range(first, first + count):
        address = f"user{n}@{domain}"
        made.append(
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"User {n}"),
                                     x509.NameAttribute(NameOID.EMAIL_ADDRESS, address)]))
            .issuer_name(issuer.subject).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(address)]),
                           critical=False)
            .add_extension(usage, critical=True)
            .add_extension(key_id, critical=False)
            .add_extension(authority, critical=False)
            .sign(issuer_key, hashes.SHA256()))
    return made


def ec_ca(name: str, not_before: datetime,
          not_after: datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """
    A self-signed P-256 root CA to issue L{many_certificates} with.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    return root_ca(name, key, not_before, not_after), key


def root_ca(name: str, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
            not_before: datetime, not_after: datetime) -> x509.Certificate:
    """
    A self-signed root CA certificate for C{key} (certificate and CRL
    signing, SHA-256).
    """
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
