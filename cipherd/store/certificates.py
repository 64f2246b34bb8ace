"""
Queries for the certificate store, CRLs and the certificate trust list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, delete, func, insert, or_, select, true, update

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


# How many values one IN (...) carries: well under SQLite's 999 parameters.
_CHUNK = 500


def _chunks(values: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start:start + _CHUNK]


def _rows(conn: Connection, query: Any) -> list[CertificateRow]:
    """
    The certificates C{query} selects, with their addresses (one more
    query for all of them, not one each).
    """
    rows = list(conn.execute(query))
    emails: dict[str, list[str]] = {}
    for chunk in _chunks(sorted({row.thumbprint for row in rows})):
        for thumbprint, email in conn.execute(
            select(certificate_emails.c.thumbprint, certificate_emails.c.email)
            .where(certificate_emails.c.thumbprint.in_(chunk))
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
    return put_certificates(conn, store, [(new, sealed_key)], now)[0]


def put_certificates(
    conn: Connection, store: str, entries: Sequence[tuple[NewCertificate, bytes | None]],
    now: float,
) -> list[str]:
    """
    Add certificates to C{store}, or private keys to those that have none:
    what is there already is looked up once for all of them, and the new
    rows go in with one statement each for certificates and addresses (an
    import of many thousands in seconds).

    @param entries: C{(certificate, sealed key or None)}; a certificate
        given twice is added once (the second time it may bring its key).
    @return: per entry, C{"added"}, C{"key added"} or C{"duplicate"}.
    """
    _lock_counter(conn)
    prints = sorted({new.thumbprint for new, _ in entries})
    has_key: dict[str, bool] = {}
    known: set[tuple[str, str]] = set()
    for chunk in _chunks(prints):
        for thumbprint, with_key in conn.execute(
            select(certificates.c.thumbprint, certificates.c.private_key.is_not(None))
            .where((certificates.c.store == store) & certificates.c.thumbprint.in_(chunk))
        ):
            has_key[thumbprint] = bool(with_key)
        # The addresses of a certificate also in the other store are there.
        known.update((row.thumbprint, row.email) for row in conn.execute(
            select(certificate_emails.c.thumbprint, certificate_emails.c.email)
            .where(certificate_emails.c.thumbprint.in_(chunk))))
    outcomes: list[str] = []
    rows: list[dict[str, Any]] = []
    addresses: list[dict[str, str]] = []
    keys: dict[str, bytes] = {}
    for new, sealed_key in entries:
        if new.thumbprint in has_key:
            if sealed_key is not None and not has_key[new.thumbprint]:
                has_key[new.thumbprint] = True
                keys[new.thumbprint] = sealed_key
                outcomes.append("key added")
            else:
                outcomes.append("duplicate")
            continue
        has_key[new.thumbprint] = sealed_key is not None
        rows.append(dict(
            store=store, thumbprint=new.thumbprint, der=new.der, subject=new.subject,
            issuer=new.issuer, serial=new.serial, issuer_serial=new.issuer_serial,
            subject_key_id=new.subject_key_id, not_before=new.not_before,
            not_after=new.not_after, is_ca=new.is_ca, self_signed=new.self_signed,
            private_key=sealed_key, created=now,
        ))
        for email in new.emails:
            if (new.thumbprint, email) not in known:
                known.add((new.thumbprint, email))
                addresses.append({"thumbprint": new.thumbprint, "email": email})
        outcomes.append("added")
    if rows:
        conn.execute(insert(certificates), rows)
    if addresses:
        conn.execute(insert(certificate_emails), addresses)
    for thumbprint, sealed_key in keys.items():
        # Only into a row still without one (a key is sealed to its certificate).
        conn.execute(update(certificates).where(
            (certificates.c.store == store) & (certificates.c.thumbprint == thumbprint)
            & certificates.c.private_key.is_(None)).values(private_key=sealed_key))
    if rows or keys:
        # A key added changes what a node may sign and decrypt with: other
        # nodes drop what they remember of it too.
        _changed(conn)
    return outcomes


def get_certificate(conn: Connection, store: str, thumbprint: str) -> CertificateRow | None:
    rows = _rows(conn, select(certificates).where(
        (certificates.c.store == store) & (certificates.c.thumbprint == thumbprint)))
    return rows[0] if rows else None


def list_certificates(
    conn: Connection, store: str, *, offset: int = 0, limit: int | None = None,
    ca_only: bool = False,
) -> list[CertificateRow]:
    """
    The certificates of C{store} in subject order; C{ca_only}: only the CA
    certificates, through their own index (ordered here: an ORDER BY would
    lead SQLite to walk every certificate of the store in subject order).
    """
    query = select(certificates).where(certificates.c.store == store)
    if ca_only:
        # "= true", which ix_certificates_ca answers ("IS true" it does not).
        rows = _rows(conn, query.where(certificates.c.is_ca == true()))
        rows.sort(key=lambda row: (row.subject, row.thumbprint))
        return rows[offset:None if limit is None else offset + limit]
    query = query.order_by(certificates.c.subject, certificates.c.thumbprint).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return _rows(conn, query)


def normalised_address(email: str) -> str:
    """
    An address as certificate_emails holds it (and
    L{cipherd.pki.certs.email_addresses} gives it).
    """
    return email.strip().lower()


def _prints_for(conn: Connection, email: str) -> list[str]:
    """
    The thumbprints of the certificates for C{email}, through the address
    index; the certificates themselves are then found by primary key.  (Two
    queries, not a join: without statistics SQLite may drive such a join
    from the certificates table and read all of them.)
    """
    return list(conn.execute(select(certificate_emails.c.thumbprint).where(
        certificate_emails.c.email == normalised_address(email))).scalars())


_HEX = re.compile(r"[0-9a-f]+")


def _containing(conn: Connection, text: str,
                among: Sequence[str] | None = None) -> ColumnElement[bool]:
    """
    The certificates whose subject or one of whose addresses contains
    C{text}, or whose thumbprint starts with it (colons aside), case ignored
    (C{""}: all).  A search reads the (store, subject, thumbprint) index and
    the address table through, not the certificates themselves.

    @param among: the thumbprints the certificates are among, when they
        are few: their addresses are then found by thumbprint.
    """
    needle = text.strip().lower()
    if not needle:
        return true()
    if conn.dialect.name == "sqlite":
        # SQLite's LIKE ignores the case of ASCII letters -- as far as its
        # lower() goes, and three times as fast as lower(subject) LIKE.
        def contains(column: Any) -> ColumnElement[bool]:
            return column.contains(needle, autoescape=True)
    else:
        def contains(column: Any) -> ColumnElement[bool]:
            return column.icontains(needle, autoescape=True)
    addresses = contains(certificate_emails.c.email)
    if among is not None:
        addresses &= certificate_emails.c.thumbprint.in_(among)
    found = [contains(certificates.c.subject),
             certificates.c.thumbprint.in_(select(certificate_emails.c.thumbprint)
                                           .where(addresses))]
    hexadecimal = needle.replace(":", "")
    if _HEX.fullmatch(hexadecimal):
        found.append(certificates.c.thumbprint.startswith(hexadecimal, autoescape=True))
    return or_(*found)


def _keys_for(conn: Connection, store: str, text: str, email: str) -> list[str]:
    """
    The thumbprints of C{store}'s certificates for C{email} that contain
    C{text}, in subject order (few: the certificates of one address).
    """
    keys: list[tuple[str, str]] = []
    for chunk in _chunks(_prints_for(conn, email)):
        keys += ((row.subject, row.thumbprint) for row in conn.execute(
            select(certificates.c.subject, certificates.c.thumbprint).where(
                (certificates.c.store == store) & certificates.c.thumbprint.in_(chunk)
                & _containing(conn, text, chunk))))
    return [thumbprint for _, thumbprint in sorted(keys)]


def search_certificates(
    conn: Connection, store: str, *, text: str = "", email: str = "", offset: int = 0,
    limit: int | None = None,
) -> list[CertificateRow]:
    """
    One page of C{store}'s certificates in subject order: those for the
    address C{email} (C{""}: any) that contain C{text} (L{_containing}).
    The page is chosen on indexes alone, and only its rows are read whole:
    a page deep into 100,000 certificates does not read those before it.
    """
    if email:
        prints = _keys_for(conn, store, text, email)[
            offset:None if limit is None else offset + limit]
    else:
        page = (select(certificates.c.thumbprint)
                .where((certificates.c.store == store) & _containing(conn, text))
                .order_by(certificates.c.subject, certificates.c.thumbprint).offset(offset))
        if limit is not None:
            page = page.limit(limit)
        prints = list(conn.execute(page).scalars())
    found: dict[str, CertificateRow] = {}
    for chunk in _chunks(prints):
        found.update((row.thumbprint, row) for row in _rows(conn, select(certificates).where(
            (certificates.c.store == store) & certificates.c.thumbprint.in_(chunk))))
    return [found[t] for t in prints if t in found]


def count_certificates(conn: Connection, store: str, *, text: str = "",
                       email: str = "") -> int:
    """
    How many certificates L{search_certificates} pages through.
    """
    if email:
        return len(_keys_for(conn, store, text, email))
    return int(conn.execute(
        select(func.count()).select_from(certificates)
        .where((certificates.c.store == store) & _containing(conn, text))).scalar_one())


def find_by_email(conn: Connection, email: str, store: str = CERTIFICATES) -> list[CertificateRow]:
    """
    The certificates of C{store} for C{email} (case ignored), latest expiry
    first.
    """
    rows: list[CertificateRow] = []
    for chunk in _chunks(_prints_for(conn, email)):
        rows += _rows(conn, select(certificates).where(
            (certificates.c.store == store) & certificates.c.thumbprint.in_(chunk)))
    rows.sort(key=lambda row: (-row.not_after, row.thumbprint))
    return rows


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
    # The condition of the partial index certificates_with_key (schema).
    query = select(certificates).where(certificates.c.private_key.is_not(None))
    return _rows(conn, query)


def expiring_certificates(conn: Connection, before: float) -> list[CertificateRow]:
    """
    The certificates with a private key (the gateway's identities: signing,
    decryption, the tunnel) and the trusted roots that are not valid after
    C{before}, soonest first.
    """
    query = select(certificates).where(
        (certificates.c.not_after < before)
        & (certificates.c.private_key.is_not(None) | (certificates.c.store == ROOTS))
    ).order_by(certificates.c.not_after)
    return _rows(conn, query)


def addresses_with_valid_keys(conn: Connection, now: float) -> set[str]:
    """
    The addresses that have a certificate with a private key valid at
    C{now}.
    """
    query = select(certificates).where(
        certificates.c.private_key.is_not(None) & (certificates.c.not_before <= now)
        & (certificates.c.not_after >= now))
    return {email for row in _rows(conn, query) for email in row.emails}


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


# For the other trust stores that share the change count (the OpenPGP
# keyring): take the counter first, count the change last.
lock_counter = _lock_counter
count_change = _changed
