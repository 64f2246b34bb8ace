"""
Queries for admin accounts, admin sessions and failed-login records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from cipherd.store.schema import admin_sessions, admins, api_tokens, login_failures

ADMINISTRATOR, OPERATOR, AUDITOR = "administrator", "operator", "auditor"


@dataclass(frozen=True)
class AdminRow:
    name: str
    password_hash: str
    must_change_password: bool
    role: str = ADMINISTRATOR
    has_totp: bool = False


@dataclass(frozen=True)
class SessionRow:
    admin_name: str
    csrf_token: str
    created: float
    last_seen: float


def _admin(row: Any) -> AdminRow:
    return AdminRow(row.name, row.password_hash, row.must_change_password, row.role,
                    row.totp_secret is not None)


def get_admin(conn: Connection, name: str) -> AdminRow | None:
    row = conn.execute(select(admins).where(admins.c.name == name)).first()
    return None if row is None else _admin(row)


def list_admins(conn: Connection) -> list[AdminRow]:
    return [_admin(row) for row in conn.execute(select(admins).order_by(admins.c.name))]


def ensure_admin(conn: Connection, name: str, password_hash: str,
                 role: str = ADMINISTRATOR) -> bool:
    """
    Create admin C{name} with a password that must be changed, unless the
    account exists.

    @return: whether it was created.
    """
    if get_admin(conn, name) is not None:
        return False
    conn.execute(insert(admins).values(name=name, password_hash=password_hash,
                                       must_change_password=True, role=role))
    return True


def set_role(conn: Connection, name: str, role: str) -> bool:
    return bool(conn.execute(update(admins).where(admins.c.name == name)
                             .values(role=role)).rowcount)


def administrators(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(admins)
                            .where(admins.c.role == ADMINISTRATOR)).scalar_one())


def delete_admin(conn: Connection, name: str) -> bool:
    """
    Remove admin C{name} with its sessions and API tokens.
    """
    conn.execute(delete(admin_sessions).where(admin_sessions.c.admin_name == name))
    conn.execute(delete(api_tokens).where(api_tokens.c.admin_name == name))
    return bool(conn.execute(delete(admins).where(admins.c.name == name)).rowcount)


def reset_password(conn: Connection, name: str, password_hash: str) -> bool:
    """
    Give admin C{name} a password that must be changed at the next login,
    and end its sessions.
    """
    changed = bool(conn.execute(update(admins).where(admins.c.name == name).values(
        password_hash=password_hash, must_change_password=True)).rowcount)
    conn.execute(delete(admin_sessions).where(admin_sessions.c.admin_name == name))
    return changed


# The second factor ---------------------------------------------------------------


def totp_secret(conn: Connection, name: str) -> bytes | None:
    found: bytes | None = conn.execute(select(admins.c.totp_secret)
                                       .where(admins.c.name == name)).scalar()
    return found


def set_totp_secret(conn: Connection, name: str, sealed: bytes | None) -> bool:
    return bool(conn.execute(update(admins).where(admins.c.name == name).values(
        totp_secret=sealed, totp_last_step=None)).rowcount)


def use_totp_step(conn: Connection, name: str, step: int) -> bool:
    """
    Record that the code of time step C{step} was used; C{False} if it (or
    a later one) was used before: no code works twice.
    """
    last = admins.c.totp_last_step
    return bool(conn.execute(update(admins).where(
        (admins.c.name == name) & (last.is_(None) | (last < step)))
        .values(totp_last_step=step)).rowcount)


# API tokens ----------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRow:
    id: str
    admin_name: str
    token_hash: str
    label: str
    created: float
    last_used: float | None


def add_token(conn: Connection, row: TokenRow) -> None:
    conn.execute(insert(api_tokens).values(
        id=row.id, admin_name=row.admin_name, token_hash=row.token_hash, label=row.label,
        created=row.created, last_used=row.last_used))


def get_token(conn: Connection, token_id: str) -> TokenRow | None:
    row = conn.execute(select(api_tokens).where(api_tokens.c.id == token_id)).first()
    return None if row is None else TokenRow(row.id, row.admin_name, row.token_hash,
                                             row.label, row.created, row.last_used)


def tokens_of(conn: Connection, name: str) -> list[TokenRow]:
    rows = conn.execute(select(api_tokens).where(api_tokens.c.admin_name == name)
                        .order_by(api_tokens.c.created))
    return [TokenRow(r.id, r.admin_name, r.token_hash, r.label, r.created, r.last_used)
            for r in rows]


def delete_token(conn: Connection, name: str, token_id: str) -> bool:
    return bool(conn.execute(delete(api_tokens).where(
        (api_tokens.c.id == token_id) & (api_tokens.c.admin_name == name))).rowcount)


def token_used(conn: Connection, token_id: str, now: float) -> None:
    conn.execute(update(api_tokens).where(api_tokens.c.id == token_id).values(last_used=now))


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
