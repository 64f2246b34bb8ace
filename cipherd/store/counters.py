"""
Queries for the counters, marks and recent errors of every node (tables
C{counters}, C{node_marks}, C{recent_errors}), and L{CounterStore}, which
stores a process's L{Counters} now and then.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from cipherd.core.counters import HOUR, Counters, Tally
from cipherd.store import Store
from cipherd.store.schema import counters, node_marks, recent_errors

# Errors kept in the table (all nodes).
KEEP_ERRORS = 200
# Hours of counts kept.
KEEP_HOURS = 90 * 24


@dataclass(frozen=True)
class StoredMark:
    node: str
    at: float
    detail: str


@dataclass(frozen=True)
class StoredError:
    node: str
    at: float
    source: str
    message: str


def _upsert(conn: Connection, table: Table, keys: Sequence[str], values: dict[str, Any],
            add: str | None = None) -> None:
    """
    Insert C{values}, or on a row with the same C{keys}: add to column
    C{add}, or replace the other columns.
    """
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).values(values)
    if add is not None:
        update = {add: table.c[add] + statement.excluded[add]}
    else:
        update = {name: statement.excluded[name] for name in values if name not in keys}
    conn.execute(statement.on_conflict_do_update(index_elements=list(keys), set_=update))


def store_tally(conn: Connection, node: str, tally: Tally) -> None:
    for (hour, name), amount in sorted(tally.counts.items()):
        _upsert(conn, counters, ("node", "hour", "name"),
                {"node": node, "hour": hour, "name": name, "value": amount}, add="value")
    for name, mark in sorted(tally.marks.items()):
        _upsert(conn, node_marks, ("node", "name"),
                {"node": node, "name": name, "at": mark.at, "detail": mark.detail})
    if tally.errors:
        conn.execute(recent_errors.insert(), [
            {"node": node, "at": e.at, "source": e.source, "message": e.message}
            for e in tally.errors])
        oldest_kept = conn.execute(
            select(recent_errors.c.id).order_by(recent_errors.c.id.desc())
            .offset(KEEP_ERRORS - 1).limit(1)).scalar()
        if oldest_kept is not None:
            conn.execute(delete(recent_errors).where(recent_errors.c.id < oldest_kept))


def hourly(conn: Connection, since_hour: int) -> dict[tuple[int, str], int]:
    """
    C{{(hour, name): value}} from C{since_hour} on, all nodes summed.
    """
    rows = conn.execute(
        select(counters.c.hour, counters.c.name, func.sum(counters.c.value))
        .where(counters.c.hour >= since_hour)
        .group_by(counters.c.hour, counters.c.name))
    return {(int(hour), name): int(total) for hour, name, total in rows}


def latest_marks(conn: Connection) -> dict[str, StoredMark]:
    """
    The latest of each mark, whichever node made it.
    """
    found: dict[str, StoredMark] = {}
    for row in conn.execute(select(node_marks).order_by(node_marks.c.at)):
        found[row.name] = StoredMark(row.node, row.at, row.detail)
    return found


def latest_errors(conn: Connection, limit: int) -> list[StoredError]:
    rows = conn.execute(select(recent_errors).order_by(recent_errors.c.id.desc()).limit(limit))
    return [StoredError(row.node, row.at, row.source, row.message) for row in rows]


def delete_counts_before(conn: Connection, hour: int) -> int:
    return conn.execute(delete(counters).where(counters.c.hour < hour)).rowcount


class CounterStore:
    """
    Stores a process's counts as its node's rows (L{store}, called every
    few seconds and at stop); counts that cannot be stored are kept for the
    next time.
    """

    def __init__(self, store: Store, counts: Counters, node: str) -> None:
        self._store = store
        self._counts = counts
        self._node = node

    @property
    def counts(self) -> Counters:
        """
        This process's counts (the metrics read their totals).
        """
        return self._counts

    async def store(self) -> None:
        tally = self._counts.take()
        if not tally:
            return
        try:
            await self._store.run(store_tally, self._node, tally)
        except BaseException:
            self._counts.restore(tally)
            raise

    async def expire(self, now: float) -> int:
        deleted: int = await self._store.run(delete_counts_before,
                                             int(now // HOUR) - KEEP_HOURS)
        return deleted

    async def hourly(self, since_hour: int) -> dict[tuple[int, str], int]:
        return await self._store.read(hourly, since_hour)

    async def marks(self) -> dict[str, StoredMark]:
        return await self._store.read(latest_marks)

    async def errors(self, limit: int = 10) -> list[StoredError]:
        return await self._store.read(latest_errors, limit)
