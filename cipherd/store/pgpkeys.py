"""
Queries for the OpenPGP keyring (L{cipherd.pki.keyring}).

Every change takes the change counter the certificate store uses
(C{trust_generation}) first and counts itself in the same transaction, so
each node forgets the keys it kept when any node changes one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Connection, delete, func, insert, or_, select, update

from cipherd.store.certificates import count_change, lock_counter
from cipherd.store.schema import pgp_key_emails, pgp_key_ids, pgp_keys


@dataclass(frozen=True)
class PGPKeyRow:
    fingerprint: str
    public: bytes
    secret: bytes | None
    user_ids: tuple[str, ...]
    created: float
    expires: float | None
    revoked: bool
    trusted: bool
    source: str
    imported: float
    introducer: bool = False


@dataclass(frozen=True)
class NewPGPKey:
    """
    What L{put_key} stores: the row, and its look-up keys.

    @ivar trusted: C{None} keeps a stored key's decision (a new key is
        then untrusted).
    @ivar secret: C{None} keeps a stored key's secret.
    """

    fingerprint: str
    public: bytes
    secret: bytes | None
    user_ids: Sequence[str]
    emails: Sequence[str]
    key_ids: Sequence[str]
    created: float
    expires: float | None
    revoked: bool
    trusted: bool | None
    source: str


def _row(r: object) -> PGPKeyRow:
    return PGPKeyRow(
        fingerprint=r.fingerprint, public=r.public, secret=r.secret,  # type: ignore[attr-defined]
        user_ids=tuple(json.loads(r.user_ids)), created=r.created,  # type: ignore[attr-defined]
        expires=r.expires, revoked=bool(r.revoked),  # type: ignore[attr-defined]
        trusted=bool(r.trusted), source=r.source, imported=r.imported,  # type: ignore[attr-defined]
        introducer=bool(r.introducer))  # type: ignore[attr-defined]


def put_key(conn: Connection, key: NewPGPKey, now: float) -> bool:
    """
    Store C{key}, or update the stored key with its fingerprint.

    @return: whether it is new.
    """
    lock_counter(conn)
    old = conn.execute(select(pgp_keys.c.trusted, pgp_keys.c.secret, pgp_keys.c.source)
                       .where(pgp_keys.c.fingerprint == key.fingerprint)).first()
    values = dict(public=key.public, user_ids=json.dumps(list(key.user_ids)),
                  created=key.created, expires=key.expires, revoked=key.revoked)
    if old is None:
        conn.execute(insert(pgp_keys).values(
            fingerprint=key.fingerprint, secret=key.secret, trusted=bool(key.trusted),
            source=key.source, imported=now, **values))
    else:
        if key.secret is not None:
            values["secret"] = key.secret
        if key.trusted is not None:
            values["trusted"] = key.trusted
        conn.execute(update(pgp_keys).where(pgp_keys.c.fingerprint == key.fingerprint)
                     .values(**values))
        conn.execute(delete(pgp_key_emails).where(pgp_key_emails.c.fingerprint ==
                                                  key.fingerprint))
        conn.execute(delete(pgp_key_ids).where(pgp_key_ids.c.fingerprint == key.fingerprint))
    if key.emails:
        conn.execute(insert(pgp_key_emails), [
            {"fingerprint": key.fingerprint, "email": e} for e in dict.fromkeys(key.emails)])
    conn.execute(insert(pgp_key_ids), [
        {"fingerprint": key.fingerprint, "key_id": k} for k in dict.fromkeys(key.key_ids)])
    count_change(conn)
    return old is None


def get_key(conn: Connection, fingerprint: str) -> PGPKeyRow | None:
    r = conn.execute(select(pgp_keys).where(pgp_keys.c.fingerprint == fingerprint)).first()
    return None if r is None else _row(r)


def find_by_email(conn: Connection, email: str) -> list[PGPKeyRow]:
    """
    The keys with a user ID for C{email} (canonical, lower case).
    """
    fingerprints = select(pgp_key_emails.c.fingerprint).where(pgp_key_emails.c.email == email)
    return [_row(r) for r in conn.execute(
        select(pgp_keys).where(pgp_keys.c.fingerprint.in_(fingerprints))
        .order_by(pgp_keys.c.created.desc(), pgp_keys.c.fingerprint))]


def find_by_key_id(conn: Connection, key_id: str) -> list[PGPKeyRow]:
    """
    The keys whose primary key or a subkey has C{key_id} (16 hex digits,
    lower case).
    """
    fingerprints = select(pgp_key_ids.c.fingerprint).where(pgp_key_ids.c.key_id == key_id)
    return [_row(r) for r in conn.execute(
        select(pgp_keys).where(pgp_keys.c.fingerprint.in_(fingerprints))
        .order_by(pgp_keys.c.fingerprint))]


def _matching(text: str) -> ColumnElement[bool] | None:
    if not text:
        return None
    # What was typed is searched for as it is: % and _ are not wildcards.
    needle = text.lower()
    by_email = select(pgp_key_emails.c.fingerprint).where(
        pgp_key_emails.c.email.contains(needle, autoescape=True))
    return or_(pgp_keys.c.fingerprint.contains(needle, autoescape=True),
               pgp_keys.c.fingerprint.in_(by_email),
               pgp_keys.c.user_ids.icontains(needle, autoescape=True))


def list_keys(conn: Connection, *, text: str = "", email: str = "", offset: int = 0,
              limit: int | None = None) -> list[PGPKeyRow]:
    """
    Keys in the order lists show them (newest import first), those matching
    C{text} (in a fingerprint, address or user ID) or having a user ID for
    C{email}.
    """
    query = select(pgp_keys).order_by(pgp_keys.c.imported.desc(), pgp_keys.c.fingerprint)
    if email:
        query = query.where(pgp_keys.c.fingerprint.in_(
            select(pgp_key_emails.c.fingerprint).where(pgp_key_emails.c.email == email)))
    if (where := _matching(text)) is not None:
        query = query.where(where)
    return [_row(r) for r in conn.execute(query.offset(offset).limit(limit))]


def count_keys(conn: Connection, *, text: str = "", email: str = "") -> int:
    query = select(func.count()).select_from(pgp_keys)
    if email:
        query = query.where(pgp_keys.c.fingerprint.in_(
            select(pgp_key_emails.c.fingerprint).where(pgp_key_emails.c.email == email)))
    if (where := _matching(text)) is not None:
        query = query.where(where)
    return int(conn.execute(query).scalar() or 0)


def _mark(conn: Connection, fingerprint: str, **values: bool) -> bool:
    lock_counter(conn)
    changed = conn.execute(update(pgp_keys).where(pgp_keys.c.fingerprint == fingerprint)
                           .values(**values)).rowcount > 0
    if changed:
        count_change(conn)
    return changed


def set_trusted(conn: Connection, fingerprint: str, trusted: bool) -> bool:
    return _mark(conn, fingerprint, trusted=trusted)


def set_introducer(conn: Connection, fingerprint: str, introducer: bool) -> bool:
    return _mark(conn, fingerprint, introducer=introducer)


def introducers(conn: Connection) -> list[PGPKeyRow]:
    """
    The keys marked as trusted introducers that are trusted themselves.
    """
    return [_row(r) for r in conn.execute(
        select(pgp_keys).where(pgp_keys.c.introducer.is_(True), pgp_keys.c.trusted.is_(True))
        .order_by(pgp_keys.c.fingerprint))]


def expiring_keys(conn: Connection, before: float) -> list[PGPKeyRow]:
    """
    The keys with a secret key (ours) or trusted for encryption, not
    revoked, that expire before C{before}, soonest first.
    """
    query = select(pgp_keys).where(
        pgp_keys.c.expires.is_not(None) & (pgp_keys.c.expires < before)
        & ~pgp_keys.c.revoked & (pgp_keys.c.secret.is_not(None) | pgp_keys.c.trusted)
    ).order_by(pgp_keys.c.expires)
    return [_row(r) for r in conn.execute(query)]


def delete_key(conn: Connection, fingerprint: str) -> bool:
    lock_counter(conn)
    conn.execute(delete(pgp_key_emails).where(pgp_key_emails.c.fingerprint == fingerprint))
    conn.execute(delete(pgp_key_ids).where(pgp_key_ids.c.fingerprint == fingerprint))
    deleted = conn.execute(delete(pgp_keys).where(pgp_keys.c.fingerprint == fingerprint)
                           ).rowcount > 0
    if deleted:
        count_change(conn)
    return deleted
