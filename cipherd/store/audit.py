"""
Queries for the audit log of admin changes (table C{audit_log}).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select

from cipherd.store.schema import audit_log

# The most entries one query returns (a page of the audit page or the API).
MAX_PAGE = 500


@dataclass(frozen=True)
class AuditEntry:
    """
    One change: who made it, when, from where and how, and what it was.

    @ivar details: what changed, as JSON-ready values; secrets appear only
        as C{"changed"}.
    @ivar id: assigned when stored; newer entries have larger ids.
    """

    at: float
    actor: str
    via: str
    client: str
    action: str
    target: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    id: int | None = None


@dataclass(frozen=True)
class AuditQuery:
    """
    Which entries to list, newest first.

    @ivar text: found in the summary or the target, any case.
    @ivar action: the action's name, or its group before the dot
        (C{"settings"} for C{"settings.change"}).
    @ivar before_id: only entries older than this one (the next page).
    """

    actor: str = ""
    action: str = ""
    text: str = ""
    since: float | None = None
    until: float | None = None
    before_id: int | None = None
    limit: int = 100


def _clip(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def add_entry(conn: Connection, entry: AuditEntry) -> int:
    result = conn.execute(insert(audit_log).values(
        at=entry.at, actor=_clip(entry.actor, 64), via=entry.via,
        client=_clip(entry.client, 64), action=entry.action,
        target=_clip(entry.target, 400), summary=entry.summary,
        details=json.dumps(entry.details, sort_keys=True, default=str),
    ))
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def find_entries(conn: Connection, query: AuditQuery) -> list[AuditEntry]:
    statement = select(audit_log)
    if query.actor:
        statement = statement.where(audit_log.c.actor == query.actor)
    if query.action:
        statement = statement.where(
            (audit_log.c.action == query.action)
            | audit_log.c.action.startswith(query.action + ".", autoescape=True))
    if query.text:
        pattern = _like(query.text.lower())
        statement = statement.where(
            func.lower(audit_log.c.summary).like(pattern, escape="\\")
            | func.lower(audit_log.c.target).like(pattern, escape="\\"))
    if query.since is not None:
        statement = statement.where(audit_log.c.at >= query.since)
    if query.until is not None:
        statement = statement.where(audit_log.c.at < query.until)
    if query.before_id is not None:
        statement = statement.where(audit_log.c.id < query.before_id)
    limit = max(1, min(query.limit, MAX_PAGE))
    rows = conn.execute(statement.order_by(audit_log.c.id.desc()).limit(limit))
    return [
        AuditEntry(row.at, row.actor, row.via, row.client, row.action, row.target,
                   row.summary, json.loads(row.details), row.id)
        for row in rows
    ]


def actors(conn: Connection) -> list[str]:
    """
    Everyone with an entry, for the page's filter.
    """
    return list(conn.execute(select(audit_log.c.actor).distinct().order_by(audit_log.c.actor))
                .scalars())


def delete_before(conn: Connection, at: float) -> int:
    return conn.execute(delete(audit_log).where(audit_log.c.at < at)).rowcount
