"""
The database: SQLAlchemy Core over SQLite (embedded default) or PostgreSQL,
every query run off the reactor thread through an L{IBlockingRunner}.

Query modules (``settings``, ``admins``) hold plain functions taking a
C{Connection}; L{Store.run} calls one inside a transaction.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import StaticPool
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cipherd.store.migrations import MigrationError, migrate
from cipherd.threads import IBlockingRunner

__all__ = ["DatabaseUnavailable", "MigrationError", "Store", "create_engine_for_url",
           "read_transaction"]

T = TypeVar("T")

log = Logger(namespace="cipherd.store")

# How long an SQLite transaction waits for another writer (another process,
# or a thread of ours) before it fails with "database is locked": long
# enough for any transaction of ours, short enough that a database held by
# someone else is reported within seconds instead of stalling every caller.
SQLITE_BUSY_TIMEOUT_MS = 5000


class DatabaseUnavailable(Exception):
    """
    The database could not be used just now: locked by another writer,
    full, or unreachable.  Nothing was changed; the same call may work
    later.  Callers translate it once at their boundary (an HTTP 503 with
    C{Retry-After}, a short deferral of the message being processed).

    @ivar reason: what the database said, for logs.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _sqlite_pragmas(busy_timeout_ms: int, dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the sqlite3 module, decide where transactions
    # begin: otherwise DDL in a migration commits on its own and a failed
    # migration leaves a half-changed schema.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the writer; busy_timeout waits for a
    # writer in another thread instead of failing at once.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


# The execution option that marks a read-only transaction (L{Store.read}).
_READ_ONLY = "cipherd_read_only"


def _sqlite_begin(conn: Connection) -> None:
    if conn.get_execution_options().get(_READ_ONLY):
        # A reader takes no lock: under WAL it reads the last committed
        # state even while another connection (or process) holds the
        # write lock.
        conn.exec_driver_sql("BEGIN DEFERRED")
        return
    # IMMEDIATE takes the write lock at once, so two writers queue on
    # busy_timeout instead of failing with "database is locked" mid-way.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine_for_url(url: str, pool_size: int = 4, *,
                          sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> Engine:
    """
    An engine for C{url}, set up for use from a thread pool.

    @param sqlite_busy_timeout_ms: how long an SQLite writer waits for the
        write lock before the call fails with L{DatabaseUnavailable}.
    """
    if url.startswith("postgresql:"):
        # Use psycopg 3, not the psycopg2 SQLAlchemy defaults to.
        url = "postgresql+psycopg:" + url[len("postgresql:") :]
    if url.startswith("sqlite"):
        # An in-memory database exists once per connection: share one.
        pool: dict[str, Any] = ({"poolclass": StaticPool}
                                if url in ("sqlite://", "sqlite:///:memory:")
                                else {"pool_size": pool_size})
        engine = create_engine(url, connect_args={"check_same_thread": False}, **pool)
        event.listen(engine, "connect", partial(_sqlite_pragmas, sqlite_busy_timeout_ms))
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    # A server that does not answer a connect is unavailable after 10 s,
    # not after the operating system's TCP time-out of minutes.
    return create_engine(url, pool_size=pool_size, pool_pre_ping=True,
                         connect_args={"connect_timeout": 10})


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """
    A read-only transaction on a connection of C{engine}, outside a
    L{Store}: on SQLite it takes no lock (see L{Store.read}).
    """
    with engine.connect() as conn:
        conn.execution_options(**{_READ_ONLY: True})
        with conn.begin():
            yield conn


# PostgreSQL's deadlock_detected and serialization_failure: the transaction
# was rolled back and may simply run again.
_RETRYABLE_SQLSTATES = {"40P01", "40001"}


# SQLite's primary result codes that say the database, not the query, is
# the trouble: BUSY, LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN, PROTOCOL.
_SQLITE_UNAVAILABLE = {5, 6, 7, 8, 10, 13, 14, 15}
# PostgreSQL's SQLSTATE classes of the same kind: connection exceptions,
# insufficient resources (disk full, out of memory, too many connections),
# object not in prerequisite state (lock not available), operator
# intervention (query canceled, shutting down), system errors (I/O).
_POSTGRES_UNAVAILABLE = {"08", "53", "55", "57", "58"}


def _unavailable(error: Exception) -> DatabaseUnavailable | None:
    """
    The L{DatabaseUnavailable} that C{error} means, or C{None} when it is
    a fault of the query (a bug, a constraint) rather than of the database:
    a bug must stay a bug (logged with its traceback, a message bounced in
    the end), not pass for an outage.

    Also unavailable: a connection lost or refused (no SQLSTATE at all), and
    a pool with no connection left to lend.
    """
    if isinstance(error, PoolTimeoutError):
        return DatabaseUnavailable("no database connection became free in time")
    if not isinstance(error, DBAPIError):
        return None
    orig = error.orig
    code = getattr(orig, "sqlite_errorcode", None)
    sqlstate = getattr(orig, "sqlstate", None)
    if error.connection_invalidated:
        unavailable = True
    elif code is not None:
        unavailable = (code & 0xFF) in _SQLITE_UNAVAILABLE
    elif isinstance(error, OperationalError):
        unavailable = sqlstate is None or str(sqlstate)[:2] in _POSTGRES_UNAVAILABLE
    else:
        unavailable = False
    if not unavailable:
        return None
    return DatabaseUnavailable(" ".join(str(orig or error).split())[:300])


# The most writes one SQLite commit carries (L{Store}'s group commit), and
# how long a group goes on taking writes.
MAX_GROUP = 64
GROUP_SECONDS = 0.2


class _Write:
    """
    A write waiting for group commit, and what became of it.
    """

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.done = threading.Event()
        self.tried = False  # it ran in a group
        self.conflict = False  # it lost a unique-key race in its group
        self.ok = False  # the outcome is its result, not its exception
        self.outcome: Any = None

    def attempt(self, conn: Connection) -> None:
        """
        Run in a savepoint of C{conn}'s transaction: kept, or rolled back
        to the savepoint with its exception kept (a unique-key conflict to
        run again alone).  The database's own trouble propagates: the
        group fails.
        """
        self.tried = True
        savepoint = conn.begin_nested()
        try:
            result = self.fn(conn, *self.args)
        except IntegrityError:
            savepoint.rollback()
            self.conflict = True
        except DBAPIError as e:
            if _unavailable(e) is not None:
                raise
            savepoint.rollback()
            self.ok, self.outcome = False, e
        except Exception as e:  # this write's own fault: it alone fails
            savepoint.rollback()
            self.ok, self.outcome = False, e
        else:
            savepoint.commit()
            self.ok, self.outcome = True, result

    def settle(self, transact: Callable[..., Any], *args: Any) -> None:
        try:
            self.finish(True, transact(*args))
        except Exception as e:
            self.finish(False, e)

    def finish(self, ok: bool, outcome: Any) -> None:
        self.ok, self.outcome = ok, outcome
        self.done.set()


class Store:
    """
    The shared database of one deployment.

    On SQLite, writes are committed in groups: one writer transaction at a
    time per process (SQLite lets one writer in anyway; a second would only
    sleep in the busy handler), and the writes asked for while it runs go
    together in the next one, each inside a savepoint of its own, so one
    commit -- one fsync of the write-ahead log -- makes many durable.  A
    write that fails rolls back to its savepoint and fails alone (one that
    lost a unique-key race runs again on its own); a group that fails
    after it began is written again one write at a time, so only the write
    at fault fails; one that cannot begin (the database locked, full or
    gone) fails all its writes, none written.  Each write's Deferred fires
    only after the commit that made it durable.  See L{_commit_group}.

    While the database is unavailable (an episode: from a call failing with
    L{DatabaseUnavailable} to the next write that succeeds) one write at a
    time tries it; the others fail at once instead of each holding a thread
    for the busy timeout, so the threads stay free for what can still work.

    @param runner: where transactions run.
    @param clock: when given, how long the database was unavailable is
        logged when it comes back.
    @param read_runner: where read-only transactions (L{read}) run, when
        not on C{runner}: reads then never wait for a thread behind writes
        blocked on a lock.
    """

    def __init__(self, engine: Engine, runner: IBlockingRunner,
                 clock: IReactorTime | None = None, *,
                 read_runner: IBlockingRunner | None = None) -> None:
        self.engine = engine
        self._runner = runner
        self._read_runner = read_runner or runner
        self._clock = clock
        # An episode of unavailability: logged when it starts and ends,
        # not once per failed call (a locked database fails every query).
        self._down_since: float | None = None
        self._down_failures = 0
        self._down_reason = ""
        self._probing = False  # a write is trying the database during an episode
        # Group commit (SQLite): the writes waiting for a commit, and the
        # lock that lets one group at a time be written.
        self._grouped = engine.dialect.name == "sqlite"
        self._queue: deque[_Write] = deque()
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()

    def _transact(self, fn: Callable[..., T], args: tuple[Any, ...], read_only: bool) -> T:
        try:
            return self._transact_once(fn, args, read_only)
        except (IntegrityError, OperationalError):
            # Query functions look a row up, then update or insert it.  On
            # PostgreSQL (read committed) two transactions can both miss the
            # row and both insert; the loser runs once more and now finds
            # the winner's row.  A deadlock or serialization failure the
            # server broke the same way.  (SQLite serializes writers.)
            # Other OperationalErrors arrive here as DatabaseUnavailable.
            return self._transact_once(fn, args, read_only)

    def _transact_once(self, fn: Callable[..., T], args: tuple[Any, ...],
                       read_only: bool) -> T:
        try:
            with self.engine.connect() as conn:
                if read_only:
                    conn.execution_options(**{_READ_ONLY: True})
                with conn.begin():
                    return fn(conn, *args)
        except (DBAPIError, PoolTimeoutError) as e:
            if isinstance(e, OperationalError) and getattr(
                    e.orig, "sqlstate", None) in _RETRYABLE_SQLSTATES:
                raise  # L{_transact} runs it again
            unavailable = _unavailable(e)
            if unavailable is None:
                raise
            raise unavailable from e

    def _settle(self, write: _Write) -> Any:
        """
        In a database thread: commit the writes waiting, oldest first, in
        groups, until C{write} is among those committed; its result.

        Every write is a task of the runner of its own, so stopping the
        runner (which runs the tasks already queued) commits every write
        asked for; a task whose write an earlier group took only waits for
        it.
        """
        while not write.done.is_set():
            with self._commit_lock:
                if not write.done.is_set():
                    self._commit_group()
        if not write.ok:
            raise write.outcome
        return write.outcome

    def _take(self) -> _Write | None:
        with self._queue_lock:
            return self._queue.popleft() if self._queue else None

    def _commit_group(self) -> None:
        """
        One transaction: the oldest waiting write, and those behind it,
        while the group has fewer than L{MAX_GROUP} and has run less than
        L{GROUP_SECONDS} (the write lock is held meanwhile, and another
        process may be waiting for it), each in a savepoint.  When the
        group fails after it began -- a write ran into the database's
        trouble (a full disk), or the commit failed -- none of it was
        written, and each of its writes runs again on its own, so one
        write's trouble is its own.
        """
        first = self._take()
        if first is None:
            return
        group = [first]
        try:
            self._write_group(group)
        except BaseException as e:
            # Whatever else went wrong: no write taken is left waiting.
            for w in group:
                if not w.done.is_set():
                    w.finish(False, e)
            raise

    def _write_group(self, group: list[_Write]) -> None:
        first = group[0]
        if not self._queue:
            first.settle(self._transact, first.fn, first.args, False)
            return
        began = time.monotonic()
        try:
            with self.engine.connect() as conn:
                transaction = conn.begin()
                try:
                    write: _Write | None = first
                    while write is not None:
                        write.attempt(conn)
                        if (len(group) == MAX_GROUP
                                or time.monotonic() - began > GROUP_SECONDS):
                            break
                        write = self._take()
                        if write is not None:
                            group.append(write)
                    transaction.commit()
                except BaseException:
                    transaction.rollback()
                    raise
        except (DBAPIError, PoolTimeoutError) as e:
            if not any(w.tried for w in group):
                # It could not begin (locked by another process, full, gone):
                # each of them would fail the same.
                unavailable = _unavailable(e)
                for w in group:
                    w.finish(False, unavailable or e)
                return
            for w in group:
                w.settle(self._transact, w.fn, w.args, False)
            return
        for w in group:
            if w.conflict:
                # A unique-key conflict: once more on its own (as L{_transact}).
                w.settle(self._transact_once, w.fn, w.args, False)
            else:
                w.done.set()  # as its savepoint left it

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...],
              read_only: bool) -> Deferred[T]:
        if read_only:
            # Reads go on under a writer's lock: they neither end an
            # episode nor wait for the one write that probes it.
            d: Deferred[T] = self._read_runner.run(self._transact, fn, args, True)
            return d.addErrback(self._note_failure)
        probe = False
        if self._down_since is not None:
            if self._probing:
                self._down_failures += 1
                return fail(DatabaseUnavailable(self._down_reason))
            self._probing = probe = True
        if self._grouped:
            write = _Write(fn, args)
            with self._queue_lock:
                self._queue.append(write)
            d = self._runner.run(self._settle, write)
        else:
            d = self._runner.run(self._transact, fn, args, False)
        return d.addCallbacks(self._available, self._write_failed, callbackArgs=(probe,),
                              errbackArgs=(probe,))

    def _now(self) -> float:
        return self._clock.seconds() if self._clock is not None else 0.0

    def _available(self, result: T, probe: bool) -> T:
        if probe:
            self._probing = False
        if self._down_since is not None:
            log.info("The database is available again (unavailable for {seconds:.0f} s, "
                     "{failures} calls failed)", seconds=self._now() - self._down_since,
                     failures=self._down_failures)
            self._down_since = None
        return result

    def _write_failed(self, failure: Failure, probe: bool) -> Failure:
        if probe:
            self._probing = False
        return self._note_failure(failure)

    def _note_failure(self, failure: Failure) -> Failure:
        if failure.check(DatabaseUnavailable):
            self._down_reason = getattr(failure.value, "reason", "")
            if self._down_since is None:
                self._down_since = self._now()
                self._down_failures = 0
                log.error("The database is unavailable: {reason}; calls are refused or "
                          "retried until it answers again (logged once until then)",
                          reason=self._down_reason)
            self._down_failures += 1
        return failure

    def run(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """
        Call C{fn(connection, *args)} in one transaction, off the reactor.

        @return: a Deferred with C{fn}'s result; the transaction is rolled
            back if C{fn} raises.  C{fn} must touch nothing but C{connection}:
            after a unique-key race it is run a second time.  It fails with
            L{DatabaseUnavailable} when the database is locked by another
            writer for longer than a few seconds, full or unreachable.
        """
        return self._call(fn, args, False)

    def read(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """
        Like L{run} for a C{fn} that only reads: on SQLite it takes no lock,
        so it answers even while another process holds the write lock.

        @return: a Deferred with C{fn}'s result.  C{fn} must not write.
        @raise DatabaseUnavailable: (in the Deferred) as for L{run}.
        """
        return self._call(fn, args, True)

    def migrate(self) -> Deferred[tuple[int | None, int]]:
        """
        Apply pending schema migrations; see L{cipherd.store.migrations}.
        """
        return self.run(migrate)

    def close(self) -> None:
        self.engine.dispose()
