"""
The certificate store as the rest of cipherd uses it: import, find, trust,
select, create.  One instance is shared in-process by SMTP, MPA and web;
its data lives in the database, so every node sees the same store.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Connection
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cipherd.core.clock import utc_from_seconds
from cipherd.pki import certs
from cipherd.pki.cms import PrivateKey
from cipherd.pki.keywrap import KeyUnsealError, seal_key, unseal_key
from cipherd.pki.trust import CTLStatus, Purpose, TrustContext, Verdict, check, crl_check
from cipherd.store import Store
from cipherd.store import certificates as q
from cipherd.store.certificates import CERTIFICATES, ROOTS
from cipherd.threads import IBlockingRunner

log = Logger(namespace="cipherd.pki")


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


def _new_certificate(cert: x509.Certificate) -> q.NewCertificate:
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


def _crl_row(crl: x509.CertificateRevocationList, signer: x509.Certificate) -> q.CRLRow:
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


def _signer_not_found_later(
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
    if subject_key is not None and subject_key.value.key_identifier.hex() in _signer_key_ids([crl]):
        return None
    return ("it is signed by a certificate that is not a CA certificate and it does not "
            "name that key (authority key identifier)")


def _signer_key_ids(crls: Iterable[x509.CertificateRevocationList]) -> set[str]:
    found = set()
    for crl in crls:
        try:
            aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        except (x509.ExtensionNotFound, ValueError):
            continue
        if aki.key_identifier:
            found.add(aki.key_identifier.hex())
    return found


def _load(row: q.CertificateRow) -> x509.Certificate:
    return x509.load_der_x509_certificate(row.der)


class CertificateStore:
    """
    @param kek: the key-encryption key for private keys at rest.
    @param crypto: where key generation and other CPU-heavy work runs.
    """

    def __init__(
        self, store: Store, clock: IReactorTime, kek: bytes, crypto: IBlockingRunner
    ) -> None:
        self._store = store
        self._clock = clock
        self._kek = kek
        self._crypto = crypto
        # The trust context and the database state it was read from.
        self._trust: tuple[int, TrustContext] | None = None

    def now(self) -> datetime:
        return utc_from_seconds(self._clock.seconds())

    # Import ------------------------------------------------------------------

    async def import_data(
        self, data: bytes, *, password: str | None = None, skip_self_signed: bool = True,
        store: str = CERTIFICATES,
    ) -> ImportResult:
        """
        Import a file of any supported format into C{store}.

        @param skip_self_signed: leave out self-signed certificates (on by
            default, as on the guide's import page); ignored for roots.
        @raise CertificateImportError: the file cannot be read.
        """
        bundle = await self._crypto.run(certs.load_bundle, data, password)
        result = ImportResult(format=bundle.format)
        entries: list[tuple[q.NewCertificate, bytes | None]] = []
        for cert in bundle.certificates:
            new = _new_certificate(cert)
            if store == CERTIFICATES and skip_self_signed and new.self_signed:
                result.skipped.append((new.thumbprint, "self-signed"))
                continue
            key = bundle.keys.get(new.thumbprint)
            sealed = seal_key(self._kek, key, new.thumbprint) if key is not None else None
            entries.append((new, sealed))
        crl_rows = []
        superseded: list[str] = []
        if bundle.crls:
            context = await self.trust_context(bundle.certificates, bundle.crls)
            for crl in bundle.crls:
                checked = crl_check(crl, self.now(), context)
                problem = checked.problem or _signer_not_found_later(crl, checked.signer)
                if problem or checked.signer is None:
                    result.crls.append((certs.describe_name(crl.issuer), f"refused: {problem}"))
                else:
                    crl_rows.append(_crl_row(crl, checked.signer))
                    superseded += await self._legacy_crl_of(crl, checked.signer)
        now = self._clock.seconds()

        def write(conn: Connection) -> tuple[list[str], list[str]]:
            # Outcomes returned, not appended to the result: after a
            # unique-key race the store runs this a second time.
            for old in superseded:
                q.delete_crl(conn, old)
            return ([q.put_certificate(conn, store, new, sealed, now) for new, sealed in entries],
                    [q.put_crl(conn, row, now) for row in crl_rows])

        outcomes, crl_outcomes = await self._store.run(write)
        for (new, _), outcome in zip(entries, outcomes, strict=True):
            {"added": result.imported, "key added": result.keys_added,
             "duplicate": result.duplicates}[outcome].append(new.thumbprint)
        result.crls.extend((row.issuer, outcome)
                           for row, outcome in zip(crl_rows, crl_outcomes, strict=True))
        self._changed()
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

    async def add_certificate(
        self, cert: x509.Certificate, key: PrivateKey | None = None, store: str = CERTIFICATES
    ) -> str:
        """
        Store one certificate (and its key).

        @return: its thumbprint.
        """
        new = _new_certificate(cert)
        sealed = seal_key(self._kek, key, new.thumbprint) if key is not None else None
        await self._store.run(q.put_certificate, store, new, sealed, self._clock.seconds())
        self._changed()
        return new.thumbprint

    async def create_tunnel_certificate(self, email: str, subject: str) -> str:
        """
        Create and store a self-signed webmail tunnel certificate with key.

        @return: its thumbprint.
        """
        cert, key = await self._crypto.run(certs.create_tunnel_certificate, email, subject,
                                           self.now())
        return await self.add_certificate(cert, key)

    # Lookup ------------------------------------------------------------------

    async def get(self, thumbprint: str, store: str = CERTIFICATES) -> q.CertificateRow | None:
        return await self._store.read(q.get_certificate, store, thumbprint.lower())

    async def find_by_email(self, email: str) -> list[x509.Certificate]:
        rows = await self._store.read(q.find_by_email, email)
        return [_load(r) for r in rows]

    async def find_by_issuer_serial(
        self, issuer: x509.Name | bytes, serial: int
    ) -> list[x509.Certificate]:
        """
        @param issuer: a name, or the DER of one (as a CMS identifier has it).
        """
        issuer_der = issuer if isinstance(issuer, bytes) else issuer.public_bytes()
        rows = await self._store.read(q.find_by_issuer_serial,
                                      certs.issuer_serial_key(issuer_der, serial))
        return [_load(r) for r in rows]

    async def find_by_subject_key_id(self, ski: bytes) -> list[x509.Certificate]:
        rows = await self._store.read(q.find_by_subject_key_id, ski.hex())
        return [_load(r) for r in rows]

    async def delete(self, thumbprint: str, store: str = CERTIFICATES) -> bool:
        self._changed()
        return await self._store.run(q.delete_certificate, store, thumbprint.lower())

    # Trust -------------------------------------------------------------------

    async def trust_context(
        self, extra: Iterable[x509.Certificate] = (),
        extra_crls: Iterable[x509.CertificateRevocationList] = (),
    ) -> TrustContext:
        """
        Roots, CA certificates, the CTL and CRLs as they are now, plus
        C{extra} certificates (e.g. embedded in a message) for path building.
        The certificates that signed the CRLs (and C{extra_crls}) come too,
        found by the key identifier each CRL names: a CA may sign its CRLs
        with a key of their own.

        The stored part is read again only when the database says it
        changed (one small query per call), not on every message.
        """
        more_crls = list(extra_crls)
        cached = self._trust

        def read(conn: Connection) -> tuple[int, tuple[Any, ...] | None]:
            version = q.trust_version(conn)
            if cached is not None and cached[0] == version and not more_crls:
                return version, None
            crls = [x509.load_der_x509_crl(c.der) for c in q.list_crls(conn)]
            signers = q.find_by_subject_key_ids(conn, _signer_key_ids([*crls, *more_crls]))
            return version, (q.list_certificates(conn, ROOTS),
                             q.list_certificates(conn, CERTIFICATES, ca_only=True),
                             q.list_ctl(conn), crls, signers)

        version, rows = await self._store.read(read)
        if rows is None:
            assert cached is not None
            context = cached[1]
        else:
            roots, cas, ctl, crls, signers = rows
            loaded = {r.thumbprint for r in (*roots, *cas)}
            context = TrustContext(
                roots=[_load(r) for r in roots],
                intermediates=[*(_load(r) for r in cas),
                               *(_load(r) for r in signers if r.thumbprint not in loaded)],
                ctl={t: CTLStatus(s) for t, s in ctl.items()},
                crls=crls,
            )
            if not more_crls:
                self._trust = (version, context)
        extra = list(extra)
        return context.with_certificates(extra) if extra else context

    def _changed(self) -> None:
        # Written here: forget the trust context at once (the version query
        # would notice, but not a change undone within one clock tick).
        self._trust = None

    async def check(
        self, cert: x509.Certificate, purpose: Purpose,
        extra: Iterable[x509.Certificate] = (),
    ) -> Verdict:
        context = await self.trust_context(extra)
        return check(cert, purpose, self.now(), context)

    # Selection ---------------------------------------------------------------

    async def encryption_certificates(self, email: str) -> list[x509.Certificate]:
        """
        The valid, trusted encryption certificates for a recipient address,
        latest expiry first.
        """
        rows = await self._store.read(q.find_by_email, email)
        context = await self.trust_context()
        now = self.now()
        loaded = [_load(r) for r in rows]
        return [c for c in loaded if check(c, Purpose.ENCRYPTION, now, context).valid]

    async def signing_identity(
        self, email: str
    ) -> tuple[x509.Certificate, PrivateKey, list[x509.Certificate]] | None:
        """
        The valid signing certificate with its key and chain for a sender
        address, latest expiry first; C{None} when there is none.
        """
        return await self._identity(email, Purpose.SIGNING)

    async def decryption_identity(
        self, email: str
    ) -> tuple[x509.Certificate, PrivateKey] | None:
        """
        The valid encryption certificate for C{email} whose private key is
        stored here, latest expiry first; C{None} when there is none.  What
        mail encrypted to C{email} can be opened with -- the webmail relay
        recipient's tunnel certificate (guide §2.3.11).
        """
        identity = await self._identity(email, Purpose.ENCRYPTION)
        return None if identity is None else identity[:2]

    async def _identity(
        self, email: str, purpose: Purpose
    ) -> tuple[x509.Certificate, PrivateKey, list[x509.Certificate]] | None:
        rows = [r for r in await self._store.read(q.find_by_email, email) if r.has_key]
        if not rows:
            return None
        context = await self.trust_context()
        now = self.now()
        for row in rows:
            cert = _load(row)
            verdict = check(cert, purpose, now, context)
            if verdict.valid and row.sealed_key is not None:
                key = self._unseal(row)
                if key is not None:
                    return cert, key, verdict.chain[1:]
        return None

    async def decryption_keys(self) -> list[tuple[x509.Certificate, PrivateKey]]:
        """
        Every certificate with a private key, for finding the recipient of
        an encrypted message (validity does not matter for decryption).
        """
        rows = await self._store.read(q.certificates_with_keys)
        keys = [(_load(r), self._unseal(r)) for r in rows]
        return [(cert, key) for cert, key in keys if key is not None]

    def _unseal(self, row: q.CertificateRow) -> PrivateKey | None:
        """
        The private key of C{row}, or C{None} (logged) when this node cannot
        open it: the other keys still work.
        """
        if row.sealed_key is None:
            return None
        try:
            return unseal_key(self._kek, row.sealed_key, row.thumbprint)
        except KeyUnsealError as e:
            log.error("The private key of certificate {thumbprint} is unusable here: {why} "
                      "Every node sharing the database needs the same var/kek.",
                      thumbprint=row.thumbprint, why=e)
            return None

    # Listing -----------------------------------------------------------------

    async def listing(self, store: str = CERTIFICATES, *, offset: int = 0,
                      limit: int = 100) -> list[StoredCertificate]:
        rows = await self._store.read(
            functools.partial(q.list_certificates, store=store, offset=offset, limit=limit)
        )
        context = await self.trust_context()
        now = self.now()
        result = []
        for row in rows:
            cert = _load(row)
            verdict = check(cert, Purpose.ANY, now, context)
            result.append(StoredCertificate(row, cert, verdict, context.ctl.get(row.thumbprint)))
        return result

    # CRLs --------------------------------------------------------------------

    async def crls(self) -> list[q.CRLRow]:
        return await self._store.read(q.list_crls)

    async def delete_crl(self, issuer_hash: str) -> bool:
        self._changed()
        return await self._store.run(q.delete_crl, issuer_hash)

    # CTL ---------------------------------------------------------------------

    async def set_ctl(self, thumbprint: str, status: CTLStatus) -> None:
        await self._store.run(q.set_ctl, thumbprint.lower(), status.value, self._clock.seconds())
        self._changed()

    async def remove_ctl(self, thumbprint: str) -> bool:
        self._changed()
        return await self._store.run(q.delete_ctl, thumbprint.lower())

    async def ctl(self) -> dict[str, CTLStatus]:
        return {t: CTLStatus(s) for t, s in (await self._store.read(q.list_ctl)).items()}
