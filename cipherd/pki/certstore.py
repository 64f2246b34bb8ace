"""
The certificate store as the rest of cipherd uses it: import, find, trust,
select, create.  One instance is shared in-process by SMTP, MPA and web;
its data lives in the database, so every node sees the same store.

What processing asks for every message -- a recipient's encryption
certificates, a sender's signing identity, trust verdicts, the keys to
decrypt with, signers by issuer and serial or key identifier -- is answered
from memory while nothing changed: parsed certificates, the certificates of
each address (with their unsealed keys) and verdicts are kept, so a message
costs no parse, trust check, unsealing or database query of its own.  See
L{CertificateStore} for what makes them be read again.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Connection
from twisted.internet.defer import gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from cipherd.core.clock import utc_from_seconds
from cipherd.pki import certs
from cipherd.pki.cms import PrivateKey
from cipherd.pki.keywrap import KeyUnsealError, seal_key, unseal_key
from cipherd.pki.ocsp import IOCSPClient
from cipherd.pki.trust import (
    CTLStatus,
    Purpose,
    TrustContext,
    Verdict,
    check,
    crl_check,
    ocsp_key,
    steady_interval,
)
from cipherd.store import Store
from cipherd.store import certificates as q
from cipherd.store.certificates import CERTIFICATES, ROOTS
from cipherd.threads import IBlockingRunner

log = Logger(namespace="cipherd.pki")

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


@dataclass
class ImportResult:
    """
    @ivar imported: thumbprints added.
    @ivar keys_added: thumbprints that got their private key.
    @ivar duplicates: thumbprints already present.
    @ivar skipped: C{(thumbprint, reason)} not imported on purpose.
    @ivar crls: C{(issuer, outcome)} per CRL.
    """

    format: str = ""
    imported: list[str] = field(default_factory=list)
    keys_added: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    crls: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class StoredCertificate:
    """
    A certificate from the store with its trust verdict for display.
    """

    row: q.CertificateRow
    certificate: x509.Certificate
    verdict: Verdict
    ctl_status: CTLStatus | None


def new_certificate(cert: x509.Certificate) -> q.NewCertificate:
    """
    What the database keeps of C{cert}: its DER and the keys it is found by.
    """
    return q.NewCertificate(
        thumbprint=certs.thumbprint(cert),
        der=certs.der(cert),
        subject=certs.describe_name(cert.subject),
        issuer=certs.describe_name(cert.issuer),
        serial=format(cert.serial_number, "x"),
        issuer_serial=certs.issuer_serial_key(cert.issuer.public_bytes(), cert.serial_number),
        subject_key_id=certs.subject_key_identifier(cert),
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        is_ca=certs.is_ca(cert),
        self_signed=certs.is_self_signed(cert),
        emails=certs.email_addresses(cert),
    )


def crl_row(crl: x509.CertificateRevocationList, signer: x509.Certificate) -> q.CRLRow:
    # One CRL per issuer name *and signing key*: a CA of the same name in
    # another hierarchy keeps its own CRL instead of replacing this one.
    key = crl.issuer.public_bytes() + b"\0" + signer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return q.CRLRow(
        issuer_hash=hashlib.sha256(key).hexdigest(),
        issuer=certs.describe_name(crl.issuer),
        der=crl.public_bytes(serialization.Encoding.DER),
        this_update=crl.last_update_utc.timestamp(),
        next_update=crl.next_update_utc.timestamp() if crl.next_update_utc else None,
        entries=len(crl),
    )


def crl_signer_problem(
    crl: x509.CertificateRevocationList, signer: x509.Certificate | None
) -> str | None:
    """
    Why the trust checks would not find C{signer} again to use C{crl}, or
    C{None}: they read roots, CA certificates and the certificates whose
    key a CRL names (authority key identifier).
    """
    if signer is None or certs.is_ca(signer) or certs.is_self_signed(signer):
        return None
    try:
        subject_key = signer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except (x509.ExtensionNotFound, ValueError):
        subject_key = None
    if (subject_key is not None
            and subject_key.value.key_identifier.hex() in crl_signer_key_ids([crl])):
        return None
    return ("it is signed by a certificate that is not a CA certificate and it does not "
            "name that key (authority key identifier)")


def judge_crls(
    crls: Iterable[x509.CertificateRevocationList], now: datetime, context: TrustContext,
) -> tuple[list[tuple[x509.CertificateRevocationList, x509.Certificate]],
           list[tuple[str, str]]]:
    """
    Which of C{crls} may be stored (L{crl_check}, and a signer the trust
    checks will find again), with the certificate that signed each; and
    C{(issuer, "refused: <why>")} for the others.
    """
    taken = []
    refused = []
    for crl in crls:
        checked = crl_check(crl, now, context)
        problem = checked.problem or crl_signer_problem(crl, checked.signer)
        if problem or checked.signer is None:
            refused.append((certs.describe_name(crl.issuer), f"refused: {problem}"))
        else:
            taken.append((crl, checked.signer))
    return taken, refused


def crl_signer_key_ids(crls: Iterable[x509.CertificateRevocationList]) -> set[str]:
    """
    The subject key identifiers of the keys C{crls} name as their signers
    (authority key identifier): a CA may sign its CRLs with a key of its own.
    """
    found = set()
    for crl in crls:
        try:
            aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        except (x509.ExtensionNotFound, ValueError):
            continue
        if aki.key_identifier:
            found.add(aki.key_identifier.hex())
    return found


class ICertificateStore(Interface):
    """
    The certificates, private keys, CRLs and certificate trust list (CTL)
    of a deployment, and the trust decisions over them (L{cipherd.pki.trust}).

    Certificates live in one of two stores: C{"certificates"} (end-entity
    and intermediate CA certificates) and C{"roots"} (trusted roots); a
    certificate is identified by its thumbprint (SHA-256 of its DER,
    lower-case hex).  Addresses are compared as
    L{cipherd.pki.certs.email_addresses} gives them: stripped, lower-cased.

    Every method except L{now} is a coroutine function: call it from the
    reactor thread and await it, or wrap it in C{Deferred.fromCoroutine}.
    Any of them may raise L{cipherd.store.DatabaseUnavailable} when the
    store is kept in a database that cannot be used just now.

    Every answer is what the store holds at the moment it is asked, and a
    verdict is what L{cipherd.pki.trust.check} says at L{now}; an
    implementation may serve both from memory only as long as that stays
    exactly true (a change made by another node sharing the database may be
    seen up to one second late).
    """

    def now() -> datetime:
        """
        @return: the time trust decisions are made for (from the injected
            clock), timezone-aware UTC.
        """

    # Changes -----------------------------------------------------------------

    async def import_data(data: bytes, *, password: str | None = None,
                          skip_self_signed: bool = True,
                          store: str = CERTIFICATES) -> ImportResult:
        """
        Import a file of any supported format (PEM, DER, PKCS#7, PKCS#12,
        CRL; detected from the bytes): its certificates into C{store}, its
        private keys beside their certificates, its CRLs when a trusted
        certificate of their issuer that may sign CRLs verifies them.

        @param password: for PKCS#12 files and encrypted PEM keys.
        @param skip_self_signed: leave out self-signed certificates (as the
            guide's import page does by default); ignored for roots.
        @return: what was added, what was there already, what was left out
            and why, and each CRL's outcome.
        @raise cipherd.pki.errors.CertificateImportError: the file cannot be
            read (with the reason, e.g. a wrong password); nothing stored.
        """

    async def add_certificates(
        certificates: Iterable[tuple[x509.Certificate, PrivateKey | None]],
        store: str = CERTIFICATES,
    ) -> list[str]:
        """
        Store certificates, each with its private key or C{None}, in one
        change: many thousands at a time.  A certificate already stored is
        left as it is, except that it gets its key if it had none.

        @return: their thumbprints, in order.
        """

    async def add_certificate(cert: x509.Certificate, key: PrivateKey | None = None,
                              store: str = CERTIFICATES) -> str:
        """
        L{add_certificates} for one.

        @return: its thumbprint.
        """

    async def create_tunnel_certificate(email: str, subject: str) -> str:
        """
        Create and store a self-signed webmail tunnel certificate with its key
        (guide §2.3.11, §3.8), valid from L{now}.  It is trusted only once
        whitelisted in the CTL.

        @return: its thumbprint.
        """

    async def delete(thumbprint: str, store: str = CERTIFICATES) -> bool:
        """
        Remove a certificate (and its key) from C{store}.

        @param thumbprint: case ignored.
        @return: whether it was there.
        """

    async def set_ctl(thumbprint: str, status: CTLStatus) -> None:
        """
        Whitelist or blacklist a thumbprint in the CTL (whether or not a
        certificate with it is stored).

        @param thumbprint: case ignored.
        """

    async def remove_ctl(thumbprint: str) -> bool:
        """
        @return: whether the CTL had an entry for C{thumbprint}.
        """

    async def delete_crl(issuer_hash: str) -> bool:
        """
        @param issuer_hash: as L{crls} names it.
        @return: whether there was such a CRL.
        """

    # Look-ups ----------------------------------------------------------------

    async def get(thumbprint: str, store: str = CERTIFICATES) -> q.CertificateRow | None:
        """
        @param thumbprint: case ignored.
        @return: the stored certificate with its facts and sealed key, or
            C{None}.
        """

    async def find_by_email(email: str) -> list[x509.Certificate]:
        """
        @return: the certificates (store C{"certificates"}) for C{email}
            whatever their validity, latest expiry first.
        """

    async def find_by_issuer_serial(issuer: x509.Name | bytes,
                                    serial: int) -> list[x509.Certificate]:
        """
        Certificates of either store by issuer name and serial number, as a
        CMS signer or recipient identifies its certificate.

        @param issuer: a name, or the DER of one.
        @return: those found (usually none or one).
        """

    async def find_by_subject_key_id(ski: bytes) -> list[x509.Certificate]:
        """
        @param ski: a subject key identifier (the extension's value).
        @return: the certificates of either store with it.
        """

    async def listing(store: str = CERTIFICATES, *, text: str = "", email: str = "",
                      offset: int = 0, limit: int = 100) -> list[StoredCertificate]:
        """
        One page of C{store} in subject order, each certificate with its
        verdict for any purpose (L{Purpose.ANY}) and CTL status.

        @param text: only certificates whose subject or one of whose
            addresses contains it, or whose thumbprint starts with it (case
            ignored); C{""}: all.
        @param email: only the certificates for this address (exact, case
            ignored); C{""}: all.
        @param offset: how many matching certificates to pass over.
        @param limit: the most to return.
        """

    async def count(store: str = CERTIFICATES, *, text: str = "", email: str = "") -> int:
        """
        @return: how many certificates L{listing} pages through with these
            filters.
        """

    async def crls() -> list[q.CRLRow]:
        """
        @return: the stored CRLs (one per issuer and signing key), by issuer.
        """

    async def ctl() -> dict[str, CTLStatus]:
        """
        @return: the CTL, C{{thumbprint: status}}.
        """

    # Trust -------------------------------------------------------------------

    async def trust_context(
        extra: Iterable[x509.Certificate] = (),
        extra_crls: Iterable[x509.CertificateRevocationList] = (),
    ) -> TrustContext:
        """
        What trust decisions use: the roots, the CA certificates (and the
        certificates whose keys sign stored CRLs), the CTL and the CRLs --
        never every stored certificate.

        @param extra: more certificates to build paths through (those a
            message carries).
        @param extra_crls: CRLs about to be imported; their signers (by
            authority key identifier) are looked up too.
        """

    async def check(cert: x509.Certificate, purpose: Purpose,
                    extra: Iterable[x509.Certificate] = (), *,
                    fail_closed: bool = False) -> Verdict:
        """
        @param extra: as for L{trust_context}.
        @param fail_closed: refuse a certificate on the path whose
            revocation status is unknown (no current CRL, no OCSP answer).
        @return: L{cipherd.pki.trust.check} of C{cert} for C{purpose} at
            L{now} against L{trust_context}, with its reason; with the OCSP
            answers of the responders the path's certificates name.
        """

    # Selection: what processing asks for every message -------------------------

    async def encryption_certificates(email: str, *, fail_closed: bool = False
                                      ) -> list[x509.Certificate]:
        """
        @param fail_closed: as for L{check}.
        @return: the certificates for C{email} valid and trusted for
            encryption now, latest expiry first (empty: none).
        """

    async def signing_identity(
        email: str, *, fail_closed: bool = False,
    ) -> tuple[x509.Certificate, PrivateKey, list[x509.Certificate]] | None:
        """
        @param fail_closed: as for L{check}.
        @return: the first certificate for C{email}, latest expiry first,
            that is valid and trusted for signing and whose private key this
            node can open: C{(certificate, key, chain above it up to its
            root)}; C{None} when there is none.  A key that cannot be opened
            (another node's key-encryption key) is logged and passed over.
        """

    async def decryption_identity(email: str) -> tuple[x509.Certificate, PrivateKey] | None:
        """
        As L{signing_identity}, for encryption: what mail encrypted to
        C{email} is opened with (the webmail relay recipient, guide §2.3.11).

        @return: C{(certificate, key)} or C{None}.
        """

    async def decryption_keys() -> list[tuple[x509.Certificate, PrivateKey]]:
        """
        @return: every stored certificate whose private key this node can
            open, with that key, whatever its validity (an old message may
            be for an expired certificate).
        """


def _load(row: q.CertificateRow) -> x509.Certificate:
    return x509.load_der_x509_certificate(row.der)


def _prepare(
    certificates: Iterable[x509.Certificate], keys: dict[str, PrivateKey], kek: bytes,
    skip_self_signed: bool,
) -> tuple[list[tuple[q.NewCertificate, bytes | None]], list[tuple[str, str]]]:
    """
    The rows to store for C{certificates} with their sealed keys, and those
    skipped with the reason (CPU work: run in the crypto pool).
    """
    entries: list[tuple[q.NewCertificate, bytes | None]] = []
    skipped: list[tuple[str, str]] = []
    for cert in certificates:
        new = new_certificate(cert)
        if skip_self_signed and new.self_signed:
            skipped.append((new.thumbprint, "self-signed"))
            continue
        key = keys.get(new.thumbprint)
        entries.append((new, seal_key(kek, key, new.thumbprint) if key is not None else None))
    return entries, skipped


def _read_trust(conn: Connection, more_crls: list[x509.CertificateRevocationList]
                ) -> TrustContext:
    crls = [x509.load_der_x509_crl(c.der) for c in q.list_crls(conn)]
    signers = q.find_by_subject_key_ids(conn, crl_signer_key_ids([*crls, *more_crls]))
    roots = q.list_certificates(conn, ROOTS)
    cas = q.list_certificates(conn, CERTIFICATES, ca_only=True)
    loaded = {r.thumbprint for r in (*roots, *cas)}
    return TrustContext(
        roots=[_load(r) for r in roots],
        intermediates=[*(_load(r) for r in cas),
                       *(_load(r) for r in signers if r.thumbprint not in loaded)],
        ctl={t: CTLStatus(s) for t, s in q.list_ctl(conn).items()},
        crls=crls,
    )


def _with_generation(conn: Connection, fn: Callable[..., T], *args: Any) -> tuple[int, T]:
    # The count first: on PostgreSQL (read committed) each statement sees
    # the latest commits, so what fn reads is at least as new as the count.
    return q.trust_version(conn), fn(conn, *args)


# How often a node asks the database whether another node changed the
# certificates, CRLs or CTL, at most: a change made elsewhere is seen up to
# this late (one made through this store at once).
POLL_INTERVAL = 1.0

# What is remembered, at most (least recently used out first): about 2 KB
# per certificate, so some tens of MB at worst.
ADDRESSES_KEPT = 8192
VERDICTS_KEPT = 16384
CERTIFICATES_KEPT = 8192
LOOKUPS_KEPT = 4096
KEYS_KEPT = 4096


class _Recent(Generic[K, V]):
    """
    A mapping that keeps its C{size} most recently used entries.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class _Held:
    """
    A certificate for an address, as selection needs it.
    """

    thumbprint: str
    certificate: x509.Certificate
    sealed_key: bytes | None


@dataclass(frozen=True)
class _Remembered:
    """
    A verdict and the span of time C{[since, until)} it holds for
    (L{cipherd.pki.trust.steady_interval}).
    """

    verdict: Verdict
    since: datetime | None
    until: datetime | None

    def holds_at(self, now: datetime) -> bool:
        return ((self.since is None or self.since <= now)
                and (self.until is None or now < self.until))


@implementer(ICertificateStore)
class CertificateStore:
    """
    The L{ICertificateStore} of a deployment, in its database.

    What is read for trust decisions and selection is kept in memory --
    parsed certificates by thumbprint, the trust context, each address's
    certificates with their unsealed keys, verdicts by thumbprint and
    purpose, the decryption keys, signers found by issuer and serial or key
    identifier -- and used again until one of these says it may be wrong:

      - a change made through this store (import, delete, CTL, CRL): all of
        it is forgotten as soon as the change is written;
      - the database's change count (C{trust_generation}, bumped by every
        node's change in the same transaction) differs from the one it was
        read under: the count is asked for at most once per
        L{POLL_INTERVAL} (one second), so another node's change is seen up
        to a second late;
      - time: a verdict holds only for the span in which a fresh check
        could not answer differently (until a certificate its path may use
        reaches its notBefore or passes its notAfter), so a kept verdict is
        always exactly what L{cipherd.pki.trust.check} says at L{now}.

    Parsed certificates never go stale (a thumbprint names its DER).  What a
    read returns is kept only if nothing changed while it was being read.

    OCSP answers are asked for, after a path is found, for each certificate
    on it that names a responder (L{IOCSPClient} keeps them until their
    nextUpdate); a verdict made with answers is kept under those answers.

    @param kek: the key-encryption key for private keys at rest.
    @param crypto: where key generation and other CPU-heavy work runs.
    @param ocsp: where OCSP answers come from (C{None}: revocation by CRLs
        only).
    """

    def __init__(
        self, store: Store, clock: IReactorTime, kek: bytes, crypto: IBlockingRunner,
        ocsp: IOCSPClient | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._kek = kek
        self._crypto = crypto
        self._ocsp = ocsp
        # What is kept belongs to one epoch; every forgetting starts another,
        # and a read begun in an earlier epoch is not kept.
        self._epoch = 0
        self._generation: int | None = None
        self._polled_at: float | None = None
        self._trust: TrustContext | None = None
        self._addresses: _Recent[str, list[_Held]] = _Recent(ADDRESSES_KEPT)
        self._verdicts: _Recent[tuple[Any, ...], _Remembered] = _Recent(VERDICTS_KEPT)
        self._lookups: _Recent[tuple[str, str], list[x509.Certificate]] = _Recent(
            LOOKUPS_KEPT)
        self._keys: _Recent[str, PrivateKey] = _Recent(KEYS_KEPT)
        self._decryption: list[tuple[x509.Certificate, PrivateKey]] | None = None
        self._parsed: _Recent[str, x509.Certificate] = _Recent(CERTIFICATES_KEPT)
        # Changes written through this store: a processing worker (another
        # process, see L{cipherd.workers}) forgets what it kept when this moves.
        self.changes = 0

    def now(self) -> datetime:
        return utc_from_seconds(self._clock.seconds())

    # Keeping and forgetting --------------------------------------------------

    def _forget(self) -> None:
        self._epoch += 1
        self._trust = None
        self._addresses.clear()
        self._verdicts.clear()
        self._lookups.clear()
        self._keys.clear()
        self._decryption = None

    def _changed(self) -> None:
        """
        A change was written here: forget at once (the count would say so
        only at the next poll), and ask for the new count next time.
        """
        self.forget()
        self.changes += 1

    def forget(self) -> None:
        """
        Forget what is kept, and ask for the change count next time (a
        change was written elsewhere a moment ago).
        """
        self._forget()
        self._polled_at = None

    def _adopt(self, generation: int) -> None:
        if generation != self._generation:
            self._forget()
            self._generation = generation

    async def _fresh(self) -> None:
        """
        Forget what the database no longer says: its change count is asked
        for at most once per L{POLL_INTERVAL}.
        """
        now = self._clock.seconds()
        polled = self._polled_at
        if polled is not None and polled <= now < polled + POLL_INTERVAL:
            return
        epoch = self._epoch
        generation = await self._store.read(q.trust_version)
        if epoch == self._epoch:  # else a change here meanwhile: ask again next time
            self._adopt(generation)
            self._polled_at = now

    async def _read(self, fn: Callable[..., T], *args: Any) -> tuple[T, bool]:
        """
        C{fn(connection, *args)} read from the database once L{_fresh}.

        @return: its result, and whether it may be kept (nothing changed
            here while it was read).
        """
        await self._fresh()
        epoch = self._epoch
        generation, result = await self._store.read(_with_generation, fn, *args)
        if epoch != self._epoch:
            return result, False
        self._adopt(generation)
        return result, True

    def _parse(self, row: q.CertificateRow) -> x509.Certificate:
        cert = self._parsed.get(row.thumbprint)
        if cert is None:
            cert = _load(row)
            self._parsed.put(row.thumbprint, cert)
        return cert

    # Import ------------------------------------------------------------------

    async def import_data(
        self, data: bytes, *, password: str | None = None, skip_self_signed: bool = True,
        store: str = CERTIFICATES,
    ) -> ImportResult:
        bundle = await self._crypto.run(certs.load_bundle, data, password)
        result = ImportResult(format=bundle.format)
        entries, result.skipped = await self._crypto.run(
            _prepare, bundle.certificates, bundle.keys, self._kek,
            store == CERTIFICATES and skip_self_signed)
        crl_rows = []
        superseded: list[str] = []
        if bundle.crls:
            context = await self.trust_context(bundle.certificates, bundle.crls)
            taken, result.crls = judge_crls(bundle.crls, self.now(), context)
            for crl, signer in taken:
                crl_rows.append(crl_row(crl, signer))
                superseded += await self._legacy_crl_of(crl, signer)
        now = self._clock.seconds()

        def write(conn: Connection) -> tuple[list[str], list[str]]:
            # Outcomes returned, not appended to the result: after a
            # unique-key race the store runs this a second time.
            for old in superseded:
                q.delete_crl(conn, old)
            return (q.put_certificates(conn, store, entries, now) if entries else [],
                    [q.put_crl(conn, row, now) for row in crl_rows])

        try:
            outcomes, crl_outcomes = await self._store.run(write)
        finally:
            self._changed()
        for (new, _), outcome in zip(entries, outcomes, strict=True):
            {"added": result.imported, "key added": result.keys_added,
             "duplicate": result.duplicates}[outcome].append(new.thumbprint)
        result.crls.extend((row.issuer, outcome)
                           for row, outcome in zip(crl_rows, crl_outcomes, strict=True))
        return result

    async def _legacy_crl_of(self, crl: x509.CertificateRevocationList,
                             signer: x509.Certificate) -> list[str]:
        """
        The row a version before 2026-11-28 stored this issuer's CRL under
        (its name alone), when the same key signed it: the new CRL takes
        its place instead of standing beside it for good.
        """
        legacy = hashlib.sha256(crl.issuer.public_bytes()).hexdigest()
        row = await self._store.read(q.get_crl, legacy)
        if row is None or row.this_update >= crl.last_update_utc.timestamp():
            return []  # none, or newer than this one: it stays
        try:
            old = x509.load_der_x509_crl(row.der)
            signed = old.is_signature_valid(signer.public_key())  # type: ignore[arg-type]
        except (ValueError, TypeError):
            return []
        return [legacy] if signed else []

    async def add_certificates(
        self, certificates: Iterable[tuple[x509.Certificate, PrivateKey | None]],
        store: str = CERTIFICATES,
    ) -> list[str]:
        pairs = list(certificates)
        keys = {certs.thumbprint(cert): key for cert, key in pairs if key is not None}
        entries, _ = await self._crypto.run(_prepare, [cert for cert, _ in pairs], keys,
                                            self._kek, False)
        try:
            await self._store.run(q.put_certificates, store, entries, self._clock.seconds())
        finally:
            self._changed()
        return [new.thumbprint for new, _ in entries]

    async def add_certificate(
        self, cert: x509.Certificate, key: PrivateKey | None = None, store: str = CERTIFICATES
    ) -> str:
        return (await self.add_certificates([(cert, key)], store))[0]

    async def add_certificates_with(
        self, certificates: Iterable[tuple[x509.Certificate, PrivateKey | None, str]],
        write: Callable[[Connection], T],
    ) -> T:
        """
        L{add_certificates} to the stores named with each, and C{write}
        (the records of whoever made them: the CA's of what it issued) in
        the same transaction: when C{write} raises, nothing is stored.
        Beside the interface: only parts that keep their own tables in this
        store's database use it.

        @return: what C{write} returns.
        """
        triples = list(certificates)
        keys = {certs.thumbprint(cert): key for cert, key, _ in triples if key is not None}
        entries, _ = await self._crypto.run(_prepare, [cert for cert, _, _ in triples], keys,
                                            self._kek, False)
        now = self._clock.seconds()

        def transaction(conn: Connection) -> T:
            for (entry, (_, _, store)) in zip(entries, triples, strict=True):
                q.put_certificates(conn, store, [entry], now)
            return write(conn)

        try:
            return await self._store.run(transaction)
        finally:
            self._changed()

    async def create_tunnel_certificate(self, email: str, subject: str) -> str:
        cert, key = await self._crypto.run(certs.create_tunnel_certificate, email, subject,
                                           self.now())
        return await self.add_certificate(cert, key)

    async def delete(self, thumbprint: str, store: str = CERTIFICATES) -> bool:
        try:
            return await self._store.run(q.delete_certificate, store, thumbprint.lower())
        finally:
            self._changed()

    # Lookup ------------------------------------------------------------------

    async def get(self, thumbprint: str, store: str = CERTIFICATES) -> q.CertificateRow | None:
        return await self._store.read(q.get_certificate, store, thumbprint.lower())

    async def _held(self, email: str) -> list[_Held]:
        """
        The certificates for C{email}, latest expiry first, as last read.
        """
        await self._fresh()
        address = q.normalised_address(email)
        held = self._addresses.get(address)
        if held is None:
            rows, keep = await self._read(q.find_by_email, address)
            held = [_Held(row.thumbprint, self._parse(row), row.sealed_key) for row in rows]
            if keep:
                self._addresses.put(address, held)
        return held

    async def find_by_email(self, email: str) -> list[x509.Certificate]:
        return [held.certificate for held in await self._held(email)]

    async def _lookup(self, kind: str, key: str,
                      fn: Callable[[Connection, str], list[q.CertificateRow]]
                      ) -> list[x509.Certificate]:
        await self._fresh()
        found = self._lookups.get((kind, key))
        if found is None:
            rows, keep = await self._read(fn, key)
            found = [self._parse(row) for row in rows]
            if keep:
                self._lookups.put((kind, key), found)
        return list(found)

    async def find_by_issuer_serial(
        self, issuer: x509.Name | bytes, serial: int
    ) -> list[x509.Certificate]:
        issuer_der = issuer if isinstance(issuer, bytes) else issuer.public_bytes()
        return await self._lookup("issuer_serial", certs.issuer_serial_key(issuer_der, serial),
                                  q.find_by_issuer_serial)

    async def find_by_subject_key_id(self, ski: bytes) -> list[x509.Certificate]:
        return await self._lookup("subject_key_id", ski.hex(), q.find_by_subject_key_id)

    # Trust -------------------------------------------------------------------

    async def _context(self) -> tuple[TrustContext, bool]:
        """
        The trust context as stored, and whether verdicts made with it may
        be kept (it is the one kept).
        """
        await self._fresh()
        if self._trust is not None:
            return self._trust, True
        context, keep = await self._read(_read_trust, [])
        if keep:
            self._trust = context
        return context, keep

    async def trust_context(
        self, extra: Iterable[x509.Certificate] = (),
        extra_crls: Iterable[x509.CertificateRevocationList] = (),
    ) -> TrustContext:
        more_crls = list(extra_crls)
        if more_crls:
            # An import's CRLs: their signers are looked up too, this once.
            context = await self._store.read(_read_trust, more_crls)
        else:
            context, _ = await self._context()
        extra = list(extra)
        return context.with_certificates(extra) if extra else context

    def _verdict(self, cert: x509.Certificate, purpose: Purpose, context: TrustContext,
                 keep: bool, thumbprint: str | None = None,
                 extra: list[x509.Certificate] | None = None) -> Verdict:
        """
        The verdict on C{cert} for C{purpose} now, as kept while it holds.

        @param keep: whether C{context} is the one kept (L{_context}).
        @param extra: certificates the path may also use (in the key).
        """
        now = self.now()
        key: tuple[Any, ...] = (thumbprint or certs.thumbprint(cert), purpose)
        if extra:
            key += tuple(sorted({certs.thumbprint(c) for c in extra}))
        if context.fail_closed or context.ocsp:
            key += (context.fail_closed, *sorted(context.ocsp.items(), key=lambda kv: kv[0]))
        remembered = self._verdicts.get(key)
        if remembered is not None and remembered.holds_at(now):
            return remembered.verdict
        if extra:
            context = context.with_certificates(extra)
        verdict = check(cert, purpose, now, context)
        if keep:
            self._verdicts.put(key, _Remembered(verdict, *steady_interval(cert, now, context)))
        return verdict

    async def _judged(self, cert: x509.Certificate, purpose: Purpose, context: TrustContext,
                      keep: bool, epoch: int, thumbprint: str | None = None,
                      extra: list[x509.Certificate] | None = None,
                      fail_closed: bool = False) -> Verdict:
        """
        L{_verdict}, with the OCSP answers for the path and C{fail_closed}.

        The path is found first without them: an answer can only refuse a
        path, never make another one, and failing closed only refuses more.
        The answers are asked for all at once.

        @param epoch: the epoch C{context} was read in: a verdict made with
            it after something was forgotten (while waiting for a
            responder) is not kept.
        """
        verdict = self._verdict(cert, purpose, context, keep and self._epoch == epoch,
                                thumbprint, extra)
        if not verdict.valid or len(verdict.chain) < 2 or (self._ocsp is None
                                                           and not fail_closed):
            return verdict
        answers = {}
        if self._ocsp is not None:
            links = list(zip(verdict.chain, verdict.chain[1:], strict=False))
            asked = await gatherResults([self._ocsp.status(below, above)
                                         for below, above in links])
            answers = {ocsp_key(below, above): answer
                       for (below, above), answer in zip(links, asked, strict=True)
                       if answer is not None}
        if not answers and not fail_closed:
            return verdict
        return self._verdict(cert, purpose, context.with_revocation(answers, fail_closed),
                             keep and self._epoch == epoch, thumbprint, extra)

    async def check(
        self, cert: x509.Certificate, purpose: Purpose,
        extra: Iterable[x509.Certificate] = (), *, fail_closed: bool = False,
    ) -> Verdict:
        context, keep = await self._context()
        return await self._judged(cert, purpose, context, keep, self._epoch, extra=list(extra),
                                  fail_closed=fail_closed)

    # Selection ---------------------------------------------------------------

    async def encryption_certificates(self, email: str, *, fail_closed: bool = False
                                      ) -> list[x509.Certificate]:
        held = await self._held(email)
        context, keep = await self._context()
        epoch = self._epoch
        return [h.certificate for h in held
                if (await self._judged(h.certificate, Purpose.ENCRYPTION, context, keep, epoch,
                                       h.thumbprint, fail_closed=fail_closed)).valid]

    async def signing_identity(
        self, email: str, *, fail_closed: bool = False,
    ) -> tuple[x509.Certificate, PrivateKey, list[x509.Certificate]] | None:
        return await self._identity(email, Purpose.SIGNING, fail_closed)

    async def decryption_identity(
        self, email: str
    ) -> tuple[x509.Certificate, PrivateKey] | None:
        identity = await self._identity(email, Purpose.ENCRYPTION)
        return None if identity is None else identity[:2]

    async def _identity(
        self, email: str, purpose: Purpose, fail_closed: bool = False,
    ) -> tuple[x509.Certificate, PrivateKey, list[x509.Certificate]] | None:
        held = [h for h in await self._held(email) if h.sealed_key is not None]
        if not held:
            return None
        context, keep = await self._context()
        epoch = self._epoch
        for h in held:
            verdict = await self._judged(h.certificate, purpose, context, keep, epoch,
                                         h.thumbprint, fail_closed=fail_closed)
            if verdict.valid:
                key = self._key(h.thumbprint, h.sealed_key)
                if key is not None:
                    return h.certificate, key, verdict.chain[1:]
        return None

    async def decryption_keys(self) -> list[tuple[x509.Certificate, PrivateKey]]:
        await self._fresh()
        if self._decryption is None:
            rows, keep = await self._read(q.certificates_with_keys)
            keys = [(self._parse(r), self._key(r.thumbprint, r.sealed_key)) for r in rows]
            found = [(cert, key) for cert, key in keys if key is not None]
            if not keep:
                return found
            self._decryption = found
        return list(self._decryption)

    def _key(self, thumbprint: str, sealed_key: bytes | None) -> PrivateKey | None:
        """
        The private key of certificate C{thumbprint}, or C{None} (logged)
        when this node cannot open it: the other keys still work.
        """
        if sealed_key is None:
            return None
        key = self._keys.get(thumbprint)
        if key is not None:
            return key
        try:
            key = unseal_key(self._kek, sealed_key, thumbprint)
        except KeyUnsealError as e:
            log.error("The private key of certificate {thumbprint} is unusable here: {why} "
                      "Every node sharing the database needs the same var/kek.",
                      thumbprint=thumbprint, why=e)
            return None
        self._keys.put(thumbprint, key)
        return key

    # Listing -----------------------------------------------------------------

    async def listing(self, store: str = CERTIFICATES, *, text: str = "", email: str = "",
                      offset: int = 0, limit: int = 100) -> list[StoredCertificate]:
        rows = await self._store.read(functools.partial(
            q.search_certificates, store=store, text=text, email=email, offset=offset,
            limit=limit))
        context, keep = await self._context()
        return [StoredCertificate(row, cert, self._verdict(cert, Purpose.ANY, context, keep,
                                                           row.thumbprint),
                                  context.ctl.get(row.thumbprint))
                for row, cert in ((row, self._parse(row)) for row in rows)]

    async def count(self, store: str = CERTIFICATES, *, text: str = "",
                    email: str = "") -> int:
        return await self._store.read(functools.partial(
            q.count_certificates, store=store, text=text, email=email))

    # CRLs --------------------------------------------------------------------

    async def crls(self) -> list[q.CRLRow]:
        return await self._store.read(q.list_crls)

    async def delete_crl(self, issuer_hash: str) -> bool:
        try:
            return await self._store.run(q.delete_crl, issuer_hash)
        finally:
            self._changed()

    # CTL ---------------------------------------------------------------------

    async def set_ctl(self, thumbprint: str, status: CTLStatus) -> None:
        try:
            await self._store.run(q.set_ctl, thumbprint.lower(), status.value,
                                  self._clock.seconds())
        finally:
            self._changed()

    async def remove_ctl(self, thumbprint: str) -> bool:
        try:
            return await self._store.run(q.delete_ctl, thumbprint.lower())
        finally:
            self._changed()

    async def ctl(self) -> dict[str, CTLStatus]:
        context, _ = await self._context()
        return dict(context.ctl)


__all__ = ["CertificateStore", "ICertificateStore", "ImportResult", "StoredCertificate",
           "judge_crls"]
