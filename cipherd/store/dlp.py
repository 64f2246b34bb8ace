"""
Queries for data loss prevention (L{cipherd.mpa.dlp}): the patterns, and
the messages in quarantine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from cipherd.store.schema import dlp_patterns, dlp_quarantine


@dataclass(frozen=True)
class PatternRow:
    name: str
    regex: str
    words: tuple[str, ...]
    threshold: int
    validator: str
    action: str
    description: str
    created: float


@dataclass(frozen=True)
class QuarantinedRow:
    id: str
    at: float
    sender: str
    recipients: tuple[str, ...]
    subject: str
    size: int
    findings: Any  # JSON
    content: bytes | None  # sealed; None when listed


def _pattern(row: Any) -> PatternRow:
    return PatternRow(row.name, row.regex, tuple(json.loads(row.words)), row.threshold,
                      row.validator, row.action, row.description, row.created)


def list_patterns(conn: Connection) -> list[PatternRow]:
    return [_pattern(r) for r in conn.execute(select(dlp_patterns).order_by(dlp_patterns.c.name))]


def put_pattern(conn: Connection, row: PatternRow) -> bool:
    """
    Add or replace a pattern.

    @return: whether it is new.
    """
    values = {"regex": row.regex, "words": json.dumps(list(row.words)),
              "threshold": row.threshold, "validator": row.validator, "action": row.action,
              "description": row.description}
    done = conn.execute(update(dlp_patterns).where(dlp_patterns.c.name == row.name)
                        .values(**values))
    if done.rowcount:
        return False
    conn.execute(insert(dlp_patterns).values(name=row.name, created=row.created, **values))
    return True


def delete_pattern(conn: Connection, name: str) -> bool:
    return bool(conn.execute(delete(dlp_patterns).where(dlp_patterns.c.name == name)).rowcount)


def put_quarantined(conn: Connection, row: QuarantinedRow) -> None:
    assert row.content is not None
    conn.execute(insert(dlp_quarantine).values(
        id=row.id, at=row.at, sender=row.sender, recipients=json.dumps(list(row.recipients)),
        subject=row.subject, size=row.size, findings=json.dumps(row.findings),
        content=row.content))


def _quarantined(row: Any, with_content: bool) -> QuarantinedRow:
    return QuarantinedRow(row.id, row.at, row.sender, tuple(json.loads(row.recipients)),
                          row.subject, row.size, json.loads(row.findings),
                          row.content if with_content else None)


def list_quarantined(conn: Connection, offset: int = 0, limit: int = 100
                     ) -> list[QuarantinedRow]:
    """
    One page of the quarantine, newest first, without the messages.
    """
    columns = [c for c in dlp_quarantine.c if c.name != "content"]
    return [_quarantined(r, False) for r in conn.execute(
        select(*columns).order_by(dlp_quarantine.c.at.desc(), dlp_quarantine.c.id)
        .offset(offset).limit(limit))]


def count_quarantined(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(dlp_quarantine)).scalar_one())


def get_quarantined(conn: Connection, quarantine_id: str) -> QuarantinedRow | None:
    row = conn.execute(select(dlp_quarantine).where(
        dlp_quarantine.c.id == quarantine_id)).first()
    return None if row is None else _quarantined(row, True)


def take_quarantined(conn: Connection, quarantine_id: str) -> QuarantinedRow | None:
    """
    Remove a message from the quarantine (released or deleted), in the
    transaction that does so: another admin cannot release it twice.
    """
    row = get_quarantined(conn, quarantine_id)
    if row is None:
        return None
    if not conn.execute(delete(dlp_quarantine).where(
            dlp_quarantine.c.id == quarantine_id)).rowcount:
        return None
    return row
