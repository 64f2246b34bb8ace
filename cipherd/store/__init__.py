"""
The database: SQLAlchemy Core over SQLite (embedded default) or PostgreSQL,
every query run off the reactor thread through an L{IBlockingRunner}.

Query modules (``settings``, ``admins``) hold plain functions taking a
C{Connection}; L{Store.run} calls one inside a transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool
from twisted.internet.defer import Deferred

from cipherd.store.migrations import MigrationError, migrate
from cipherd.threads import IBlockingRunner

__all__ = ["MigrationError", "Store", "create_engine_for_url"]

T = TypeVar("T")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the sqlite3 module, decide where transactions
    # begin: otherwise DDL in a migration commits on its own and a failed
    # migration leaves a half-changed schema.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the writer; busy_timeout waits for a
    # writer in another thread instead of failing at once.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # IMMEDIATE takes the write lock at once, so two writers queue on
    # busy_timeout instead of failing with "database is locked" mid-way.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine_for_url(url: str, pool_size: int = 4) -> Engine:
    """
    An engine for C{url}, set up for use from a thread pool.
    """
    if url.startswith("postgresql:"):
        # Use psycopg 3, not the psycopg2 SQLAlchemy defaults to.
        url = "postgresql+psycopg:" + url[len("postgresql:") :]
    if url.startswith("sqlite"):
        # An in-memory database exists once per connection: share one.
        pool = {"poolclass": StaticPool} if url in ("sqlite://", "sqlite:///:memory:") else {}
        engine = create_engine(url, connect_args={"check_same_thread": False}, **pool)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_size=pool_size, pool_pre_ping=True)


# PostgreSQL's deadlock_detected and serialization_failure: the transaction
# was rolled back and may simply run again.
_RETRYABLE_SQLSTATES = {"40P01", "40001"}


class Store:
    """
    The shared database of one deployment.
    """

    def __init__(self, engine: Engine, runner: IBlockingRunner) -> None:
        self.engine = engine
        self._runner = runner

    def _transact(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            with self.engine.begin() as conn:
                return fn(conn, *args)
        except (IntegrityError, OperationalError) as e:
            # Query functions look a row up, then update or insert it.  On
            # PostgreSQL (read committed) two transactions can both miss the
            # row and both insert; the loser runs once more and now finds
            # the winner's row.  A deadlock or serialization failure the
            # server broke the same way.  (SQLite serializes writers.)
            if isinstance(e, OperationalError) and getattr(
                    e.orig, "sqlstate", None) not in _RETRYABLE_SQLSTATES:
                raise
            with self.engine.begin() as conn:
                return fn(conn, *args)

    def run(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """
        Call C{fn(connection, *args)} in one transaction, off the reactor.

        @return: a Deferred with C{fn}'s result; the transaction is rolled
            back if C{fn} raises.  C{fn} must touch nothing but C{connection}:
            after a unique-key race it is run a second time.
        """
        return self._runner.run(self._transact, fn, *args)

    def migrate(self) -> Deferred[tuple[int | None, int]]:
        """
        Apply pending schema migrations; see L{cipherd.store.migrations}.
        """
        return self.run(migrate)

    def close(self) -> None:
        self.engine.dispose()
