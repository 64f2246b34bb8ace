"""
Queries for the certificate store, CRLs and the certificate trust list.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from cipherd.store.schema import certificate_emails, certificates, crls, ctl, trust_generation

CERTIFICATES = "certificates"
ROOTS = "roots"


@dataclass(frozen=True)
class CertificateRow:
    store: str
    thumbprint: str
    der: bytes
    subject: str
    issuer: str
    serial: str
    not_before: float
    not_after: float
    is_ca: bool
    self_signed: bool
    sealed_key: bytes | None
    emails: tuple[str, ...] = ()

    @property
    def has_key(self) -> bool:
        return self.sealed_key is not None


@dataclass(frozen=True)
class NewCertificate:
    """
    What L{put_certificate} stores; C{issuer_serial} and C{subject_key_id}
    are lookup keys.
    """

    thumbprint: str
    der: bytes
    subject: str
    issuer: str
    serial: str
    issuer_serial: str
    subject_key_id: str | None
    not_before: float
    not_after: float
    is_ca: bool
    self_signed: bool
    emails: Sequence[str]


def _rows(conn: Connection, query: Any) -> list[CertificateRow]:
    """
    The certificates C{query} selects, with their addresses (one more
    query for all of them, not one each).
    """
    rows = list(conn.execute(query))
    emails: dict[str, list[str]] = {}
    prints = sorted({row.thumbprint for row in rows})
    for start in range(0, len(prints), 500):
        for thumbprint, email in conn.execute(
            select(certificate_emails.c.thumbprint, certificate_emails.c.email)
            .where(certificate_emails.c.thumbprint.in_(prints[start:start + 500]))
            .order_by(certificate_emails.c.email)
        ):
            emails.setdefault(thumbprint, []).append(email)
    return [
        CertificateRow(
            row.store, row.thumbprint, row.der, row.subject, row.issuer, row.serial,
            row.not_before, row.not_after, row.is_ca, row.self_signed, row.private_key,
            tuple(emails.get(row.thumbprint, ())),
        )
        for row in rows
    ]


def put_certificate(
    conn: Connection, store: str, new: NewCertificate, sealed_key: bytes | None, now: float
) -> str:
    """
    Add a certificate to C{store}, or a private key to one that has none.

    @return: C{"added"}, C{"key added"} or C{"duplicate"}.
    """
    _lock_counter(conn)
    key = (certificates.c.store == store) & (certificates.c.thumbprint == new.thumbprint)
    existing = conn.execute(select(certificates.c.private_key).where(key)).first()
    if existing is not None:
        if sealed_key is not None and existing.private_key is None:
            conn.execute(update(certificates).where(key).values(private_key=sealed_key))
            return "key added"
        return "duplicate"
    conn.execute(insert(certificates).values(
        store=store, thumbprint=new.thumbprint, der=new.der, subject=new.subject,
        issuer=new.issuer, serial=new.serial, issuer_serial=new.issuer_serial,
        subject_key_id=new.subject_key_id, not_before=new.not_before, not_after=new.not_after,
        is_ca=new.is_ca, self_signed=new.self_signed, private_key=sealed_key, created=now,
    ))
    _changed(conn)
    known = set(conn.execute(select(certificate_emails.c.email).where(
        certificate_emails.c.thumbprint == new.thumbprint)).scalars())
    for email in new.emails:
        if email not in known:
            conn.execute(insert(certificate_emails).values(thumbprint=new.thumbprint,
                                                           email=email))
    return "added"


def get_certificate(conn: Connection, store: str, thumbprint: str) -> CertificateRow | None:
    rows = _rows(conn, select(certificates).where(
        (certificates.c.store == store) & (certificates.c.thumbprint == thumbprint)))
    return rows[0] if rows else None


def list_certificates(
    conn: Connection, store: str, *, offset: int = 0, limit: int | None = None,
    ca_only: bool = False,
) -> list[CertificateRow]:
    query = select(certificates).where(certificates.c.store == store)
    if ca_only:
        query = query.where(certificates.c.is_ca.is_(True))
    query = query.order_by(certificates.c.subject, certificates.c.thumbprint).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return _rows(conn, query)


def count_certificates(conn: Connection, store: str) -> int:
    return int(conn.execute(
        select(func.count()).select_from(certificates).where(certificates.c.store == store)
    ).scalar_one())


def find_by_email(conn: Connection, email: str, store: str = CERTIFICATES) -> list[CertificateRow]:
    query = (
        select(certificates)
        .join(certificate_emails, certificate_emails.c.thumbprint == certificates.c.thumbprint)
        .where((certificate_emails.c.email == email.lower()) & (certificates.c.store == store))
        .order_by(certificates.c.not_after.desc())
    )
    return _rows(conn, query)


def find_by_issuer_serial(conn: Connection, issuer_serial: str) -> list[CertificateRow]:
    query = select(certificates).where(certificates.c.issuer_serial == issuer_serial)
    return _rows(conn, query)


def find_by_subject_key_id(conn: Connection, ski: str) -> list[CertificateRow]:
    query = select(certificates).where(certificates.c.subject_key_id == ski.lower())
    return _rows(conn, query)


def find_by_subject_key_ids(conn: Connection, skis: Iterable[str]) -> list[CertificateRow]:
    """
    Certificates of any store with one of these subject key identifiers
    (e.g. the keys CRLs name as their signers).
    """
    wanted = sorted({ski.lower() for ski in skis})
    if not wanted:
        return []
    query = select(certificates).where(certificates.c.subject_key_id.in_(wanted))
    return _rows(conn, query)


def certificates_with_keys(conn: Connection) -> list[CertificateRow]:
    query = select(certificates).where(certificates.c.private_key.is_not(None))
    return _rows(conn, query)


def delete_certificate(conn: Connection, store: str, thumbprint: str) -> bool:
    _lock_counter(conn)
    deleted = conn.execute(delete(certificates).where(
        (certificates.c.store == store) & (certificates.c.thumbprint == thumbprint))).rowcount
    still_stored = conn.execute(select(certificates.c.thumbprint).where(
        certificates.c.thumbprint == thumbprint)).first()
    if still_stored is None:
        conn.execute(delete(certificate_emails).where(
            certificate_emails.c.thumbprint == thumbprint))
    if deleted:
        _changed(conn)
    return deleted > 0


# CRLs --------------------------------------------------------------------------


@dataclass(frozen=True)
class CRLRow:
    issuer_hash: str
    issuer: str
    der: bytes
    this_update: float
    next_update: float | None
    entries: int


def put_crl(conn: Connection, row: CRLRow, now: float) -> str:
    """
    Keep the newest CRL of each issuer.

    @return: C{"added"}, C{"replaced"} or C{"older"} (not stored).
    """
    _lock_counter(conn)
    key = crls.c.issuer_hash == row.issuer_hash
    existing = conn.execute(select(crls.c.this_update).where(key)).first()
    values = {"issuer": row.issuer, "der": row.der, "this_update": row.this_update,
              "next_update": row.next_update, "entries": row.entries, "created": now}
    if existing is None:
        conn.execute(insert(crls).values(issuer_hash=row.issuer_hash, **values))
        _changed(conn)
        return "added"
    if existing.this_update >= row.this_update:
        return "older"
    conn.execute(update(crls).where(key).values(values))
    _changed(conn)
    return "replaced"


def list_crls(conn: Connection) -> list[CRLRow]:
    return [
        CRLRow(r.issuer_hash, r.issuer, r.der, r.this_update, r.next_update, r.entries)
        for r in conn.execute(select(crls).order_by(crls.c.issuer))
    ]


def get_crl(conn: Connection, issuer_hash: str) -> CRLRow | None:
    r = conn.execute(select(crls).where(crls.c.issuer_hash == issuer_hash)).first()
    return None if r is None else CRLRow(r.issuer_hash, r.issuer, r.der, r.this_update,
                                         r.next_update, r.entries)


def delete_crl(conn: Connection, issuer_hash: str) -> bool:
    _lock_counter(conn)
    return _changed_if(conn, conn.execute(
        delete(crls).where(crls.c.issuer_hash == issuer_hash)).rowcount > 0)


# The certificate trust list ----------------------------------------------------


def set_ctl(conn: Connection, thumbprint: str, status: str, now: float) -> None:
    _lock_counter(conn)
    key = ctl.c.thumbprint == thumbprint
    if conn.execute(update(ctl).where(key).values(status=status)).rowcount == 0:
        conn.execute(insert(ctl).values(thumbprint=thumbprint, status=status, created=now))
    _changed(conn)


def delete_ctl(conn: Connection, thumbprint: str) -> bool:
    _lock_counter(conn)
    return _changed_if(conn, conn.execute(
        delete(ctl).where(ctl.c.thumbprint == thumbprint)).rowcount > 0)


def list_ctl(conn: Connection) -> dict[str, str]:
    return {r.thumbprint: r.status for r in conn.execute(select(ctl))}


def trust_version(conn: Connection) -> int:
    """
    The count of changes to the certificates, CRLs and CTL (any node's), so
    a node can keep its trust context until another node alters them.
    """
    return conn.execute(select(trust_generation.c.generation)).scalar() or 0


def _lock_counter(conn: Connection) -> None:
    """
    Take the counter row before anything else a write touches: every writer
    of certificates, CRLs and the CTL then waits its turn at the same place,
    and none can hold a row another needs while it waits for the counter
    (which deadlocked two imports sharing a certificate on PostgreSQL).
    """
    found = conn.execute(select(trust_generation.c.id).where(trust_generation.c.id == 1)
                         .with_for_update()).first()
    if found is None:
        # The first write ever: a concurrent one loses the insert and runs
        # again (Store retries an IntegrityError).
        conn.execute(insert(trust_generation).values(id=1, generation=0))


def _changed(conn: Connection) -> None:
    # In the writer's transaction, under the lock: a rolled-back change
    # leaves the count as it was.
    conn.execute(update(trust_generation).where(trust_generation.c.id == 1).values(
        generation=trust_generation.c.generation + 1))


def _changed_if(conn: Connection, changed: bool) -> bool:
    if changed:
        _changed(conn)
    return changed
