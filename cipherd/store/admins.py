"""
Queries for admin accounts, admin sessions and failed-login records.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, delete, insert, select, update

from cipherd.store.schema import admin_sessions, admins, login_failures


@dataclass(frozen=True)
class AdminRow:
    name: str
    password_hash: str
    must_change_password: bool


@dataclass(frozen=True)
class SessionRow:
    admin_name: str
    csrf_token: str
    created: float
    last_seen: float


def get_admin(conn: Connection, name: str) -> AdminRow | None:
    row = conn.execute(select(admins).where(admins.c.name == name)).first()
    if row is None:
        return None
    return AdminRow(row.name, row.password_hash, row.must_change_password)


def ensure_admin(conn: Connection, name: str, password_hash: str) -> bool:
    """
    Create admin C{name} with a password that must be changed, unless the
    account exists.

    @return: whether it was created.
    """
    if get_admin(conn, name) is not None:
        return False
    conn.execute(
        insert(admins).values(name=name, password_hash=password_hash, must_change_password=True)
    )
    return True


def set_admin_password(conn: Connection, name: str, password_hash: str, now: float) -> None:
    """
    Store a new password hash; it no longer needs changing.  Every session
    Sessions are ended by the caller (L{delete_sessions_of}).
    """
    conn.execute(
        update(admins)
        .where(admins.c.name == name)
        .values(password_hash=password_hash, must_change_password=False, password_changed=now)
    )


def create_session(conn: Connection, token_hash: str, name: str, csrf: str, now: float) -> None:
    conn.execute(
        insert(admin_sessions).values(
            token_hash=token_hash, admin_name=name, csrf_token=csrf, created=now, last_seen=now
        )
    )


def get_session(conn: Connection, token_hash: str) -> SessionRow | None:
    row = conn.execute(
        select(admin_sessions).where(admin_sessions.c.token_hash == token_hash)
    ).first()
    if row is None:
        return None
    return SessionRow(row.admin_name, row.csrf_token, row.created, row.last_seen)


def touch_session(conn: Connection, token_hash: str, now: float) -> None:
    conn.execute(
        update(admin_sessions)
        .where(admin_sessions.c.token_hash == token_hash)
        .values(last_seen=now)
    )


def delete_session(conn: Connection, token_hash: str) -> None:
    conn.execute(delete(admin_sessions).where(admin_sessions.c.token_hash == token_hash))


def delete_sessions_of(conn: Connection, name: str, keep: str | None = None) -> None:
    """
    End every session of admin C{name}, except the one hashed C{keep}.
    """
    condition = admin_sessions.c.admin_name == name
    if keep is not None:
        condition &= admin_sessions.c.token_hash != keep
    conn.execute(delete(admin_sessions).where(condition))


def delete_expired_sessions(conn: Connection, idle_before: float, created_before: float) -> int:
    result = conn.execute(
        delete(admin_sessions).where(
            (admin_sessions.c.last_seen < idle_before) | (admin_sessions.c.created < created_before)
        )
    )
    return result.rowcount


@dataclass(frozen=True)
class FailureRow:
    count: int
    first_failure: float
    locked_until: float | None


def get_failures(
    conn: Connection, account: str, client: str, *, for_update: bool = False
) -> FailureRow | None:
    """
    @param for_update: lock the row until the transaction ends (PostgreSQL;
        SQLite transactions here take the write lock at BEGIN anyway).
    """
    query = select(login_failures).where(
        (login_failures.c.account == account) & (login_failures.c.client == client)
    )
    if for_update:
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        return None
    return FailureRow(row.failure_count, row.first_failure, row.locked_until)


def put_failures(conn: Connection, account: str, client: str, row: FailureRow) -> None:
    key = (login_failures.c.account == account) & (login_failures.c.client == client)
    values = {
        "failure_count": row.count,
        "first_failure": row.first_failure,
        "locked_until": row.locked_until,
    }
    if conn.execute(update(login_failures).where(key).values(values)).rowcount == 0:
        conn.execute(insert(login_failures).values(account=account, client=client, **values))


def clear_failures(conn: Connection, account: str, client: str) -> None:
    conn.execute(
        delete(login_failures).where(
            (login_failures.c.account == account) & (login_failures.c.client == client)
        )
    )


def delete_stale_failures(conn: Connection, counted_since: float, now: float) -> int:
    """
    Forget failure records that started before C{counted_since} (outside
    the lockout window) and hold no running lock.
    """
    c = login_failures.c
    result = conn.execute(delete(login_failures).where(
        (c.first_failure < counted_since)
        & (c.locked_until.is_(None) | (c.locked_until < now))
    ))
    return result.rowcount
