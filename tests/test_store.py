"""
The store on SQLite and PostgreSQL: migrations, first-start secrets and
the default admin, persistence across a restart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Column, Connection, Integer, MetaData, Table, inspect, select, text
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from cipherd.service import first_start
from cipherd.settings import GLOBAL, Level, Scope
from cipherd.store import Store, create_engine_for_url
from cipherd.store.migrations import (
    BASELINE_VERSION,
    MIGRATIONS,
    Migration,
    MigrationError,
    current_version,
    latest_version,
    migrate,
)
from cipherd.store.schema import admins, metadata
from cipherd.store.settings import SettingsRepository
from cipherd.testing import SteeredRunner, SynchronousRunner, cheap_hasher, result_of
from cipherd.web.auth import AdminAuthority


def _engine(url: str) -> Any:
    return create_engine_for_url(url)


LATEST = latest_version(MIGRATIONS)


def test_new_database_gets_the_schema_and_is_stamped(database_url: str) -> None:
    engine = _engine(database_url)
    with engine.begin() as conn:
        assert migrate(conn) == (None, LATEST)
    with engine.begin() as conn:
        assert current_version(conn) == LATEST
        assert set(metadata.tables) <= set(inspect(conn).get_table_names())
        # A second start finds nothing to do.
        assert migrate(conn) == (LATEST, LATEST)
    engine.dispose()


def test_a_version_1_database_gets_the_certificate_store(database_url: str) -> None:
    new_since_1 = {"certificates", "certificate_emails", "crls", "ctl", "trust_generation",
                   "mta_config", "webmail_accounts", "webmail_messages", "webmail_tunnels",
                   "webmail_sessions", "webmail_login_failures", "job_runs"}
    engine = _engine(database_url)
    with engine.begin() as conn:
        metadata.create_all(
            conn, tables=[t for t in metadata.sorted_tables if t.name not in new_since_1]
        )
        conn.execute(text("INSERT INTO schema_version (version) VALUES (1)"))
        conn.execute(text("INSERT INTO domains (name, created) VALUES ('example.com', 1)"))
    with engine.begin() as conn:
        assert migrate(conn) == (BASELINE_VERSION, LATEST)
    with engine.begin() as conn:
        assert new_since_1 <= set(inspect(conn).get_table_names())
        assert conn.execute(text("SELECT name FROM domains")).scalar_one() == "example.com"
    engine.dispose()


def _add_column(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE widgets ADD COLUMN size INTEGER DEFAULT 0"))


def _fill(conn: Connection) -> None:
    conn.execute(text("INSERT INTO widgets (id, size) VALUES (1, 42)"))


def test_pending_steps_run_in_order(database_url: str) -> None:
    old = MetaData()
    Table("schema_version", old, Column("version", Integer))
    Table("widgets", old, Column("id", Integer, primary_key=True))
    steps = [Migration(2, "add size", _add_column),
             Migration(3, "fill", _fill)]
    engine = _engine(database_url)
    with engine.begin() as conn:
        migrate(conn, migrations=(), metadata=old)
    with engine.begin() as conn:
        assert migrate(conn, migrations=steps, metadata=old) == (1, 3)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT size FROM widgets")).scalar_one() == 42
        assert current_version(conn) == 3
    engine.dispose()


def test_a_failing_step_leaves_the_database_as_it_was(database_url: str) -> None:
    def broken(conn: Connection) -> None:
        conn.execute(text("ALTER TABLE widgets ADD COLUMN colour TEXT"))
        raise RuntimeError("step failed")

    old = MetaData()
    Table("schema_version", old, Column("version", Integer))
    Table("widgets", old, Column("id", Integer, primary_key=True))
    engine = _engine(database_url)
    with engine.begin() as conn:
        migrate(conn, migrations=(), metadata=old)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        migrate(conn, migrations=[Migration(2, "broken", broken)], metadata=old)
    with engine.begin() as conn:
        assert current_version(conn) == 1
        assert "colour" not in {c["name"] for c in inspect(conn).get_columns("widgets")}
    engine.dispose()


def test_a_newer_database_is_refused(database_url: str) -> None:
    engine = _engine(database_url)
    with engine.begin() as conn:
        migrate(conn)
        conn.execute(text("UPDATE schema_version SET version = 99"))
    with pytest.raises(MigrationError, match="schema version 99, newer than this cipherd"), \
            engine.begin() as conn:
        migrate(conn)
    engine.dispose()


def test_steps_must_be_consecutive() -> None:
    engine = _engine("sqlite://")
    with pytest.raises(MigrationError, match="migration 3 out of order; expected 2"), \
            engine.begin() as conn:
        migrate(conn, migrations=[Migration(3, "skip", _fill)])


def _first_start(url: str) -> tuple[Store, AdminAuthority]:
    store = Store(_engine(url), SynchronousRunner())
    authority = AdminAuthority(
        store, SynchronousRunner(), Clock(), idle_timeout=60, max_age=600,
        lockout_threshold=3, lockout_window=60, lockout_duration=60, hasher=cheap_hasher(),
        totp_key=bytes(32),
    )
    result_of(first_start(store, authority))
    return store, authority


def test_first_start_and_restart_keep_secrets_settings_and_admin(database_url: str) -> None:
    store, _ = _first_start(database_url)
    repo = SettingsRepository(store, Clock())
    first = result_of(repo.effective(GLOBAL))
    secrets = {name: first[name].value for name in ("server_secret", "system_mail_secret")}
    assert all(len(v) >= 32 for v in secrets.values())
    assert secrets["server_secret"] != secrets["system_mail_secret"]
    user = Scope(Level.USER, "alice@example.com")
    assert result_of(
        repo.update(user, {"notification_sender": "n@example.com"})) == {}
    with store.engine.begin() as conn:
        admin_hash = conn.execute(select(admins.c.password_hash)).scalar_one()
    store.close()

    # "Restart": a new engine on the same database runs first start again.
    store, _ = _first_start(database_url)
    repo = SettingsRepository(store, Clock())
    again = result_of(repo.effective(GLOBAL))
    assert {name: again[name].value for name in secrets} == secrets
    resolved = result_of(repo.effective(user))
    assert resolved["notification_sender"].value == "n@example.com"
    with store.engine.begin() as conn:
        assert conn.execute(select(admins.c.password_hash)).scalars().all() == [admin_hash]
    store.close()


def test_a_lost_insert_race_runs_the_transaction_again(postgres_url: str) -> None:
    """
    Two nodes create the same row at the same moment: both look it up,
    find none and insert.  The loser's transaction is run again and finds
    the winner's row instead of failing.
    """
    from cipherd.store import admins as q

    store, _ = _first_start(postgres_url)
    rival = _engine(postgres_url)
    calls: list[int] = []

    def create(conn: Connection) -> bool:
        calls.append(1)
        if q.get_admin(conn, "ops") is not None:
            return False
        if len(calls) == 1:
            # The other node commits its insert between our look-up and ours.
            with rival.begin() as other:
                q.ensure_admin(other, "ops", "hash-of-the-rival")
        conn.execute(admins.insert().values(name="ops", password_hash="our-hash",
                                            must_change_password=True))
        return True

    async def run() -> bool:
        return await store.run(create)

    assert result_of(run()) is False
    assert len(calls) == 2
    with store.engine.begin() as conn:
        assert q.get_admin(conn, "ops").password_hash == "hash-of-the-rival"
    rival.dispose()
    store.close()


def _now(d: Any) -> Any:
    """
    The result of a Deferred that fired already.
    """
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def test_a_database_locked_by_another_process_is_reported_as_unavailable_and_read_anyway(
        tmp_path: Any) -> None:
    """
    Another process holds SQLite's write lock (BEGIN EXCLUSIVE): a write
    fails with DatabaseUnavailable after the busy timeout instead of an
    OperationalError; a read-only transaction still answers (WAL); the
    episode is logged once, and its end once.
    """
    import sqlite3

    from twisted.logger import formatEvent, globalLogPublisher

    from cipherd.store import DatabaseUnavailable

    log_lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "cipherd.store":
            log_lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    clock = Clock()
    # This test need not wait the default 5 s for the lock each time.
    store = Store(create_engine_for_url(url, sqlite_busy_timeout_ms=50),
                  SynchronousRunner(), clock)
    _now(store.migrate())
    holder = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None, timeout=0)
    holder.execute("PRAGMA busy_timeout=0")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for _ in range(3):
            failure = store.run(lambda conn: conn.execute(
                text("DELETE FROM schema_version WHERE version < 0")))
            error: list[Any] = []
            failure.addErrback(error.append)
            assert error and error[0].check(DatabaseUnavailable), error
            assert "database is locked" in error[0].value.reason
        assert _now(store.read(current_version)) == LATEST
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    clock.advance(42)
    _now(store.run(lambda conn: conn.execute(
        text("DELETE FROM schema_version WHERE version < 0"))))
    unavailable = [line for line in log_lines if "database is unavailable" in line]
    assert len(unavailable) == 1, log_lines
    assert [line for line in log_lines if "available again" in line] == [
        "The database is available again (unavailable for 42 s, 3 calls failed)"]
    globalLogPublisher.removeObserver(observe)
    store.close()


def test_while_the_database_is_locked_one_write_probes_and_reads_have_threads_of_their_own(
        tmp_path: Any) -> None:
    """
    During an episode of unavailability the writes after the first fail at
    once (each would hold a database thread for the busy timeout, and the
    API's reads queued behind them), and reads run on their own runner.
    """
    import sqlite3

    from cipherd.store import DatabaseUnavailable

    store, writes = _steered_store(tmp_path)

    def write(conn: Connection) -> None:
        conn.execute(text("DELETE FROM schema_version WHERE version < 0"))

    holder = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        first = store.run(write)
        writes.run_next()
        with pytest.raises(DatabaseUnavailable):
            _now(first)
        probe = store.run(write)
        refused = store.run(write)
        assert len(writes.held) == 1  # only the probe waits for a thread
        with pytest.raises(DatabaseUnavailable, match="database is locked"):
            _now(refused)
        # A read meanwhile, on its own runner.
        assert _now(store.read(current_version)) == LATEST
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    writes.run_next()
    _now(probe)  # the lock is gone: the probe ends the episode
    after = [store.run(write), store.run(write)]
    assert len(writes.held) == 2
    writes.run_next()
    writes.run_next()
    for d in after:
        _now(d)
    store.close()


def _steered_store(tmp_path: Any, table: str | None = None
                   ) -> tuple[Store, SteeredRunner]:
    """
    A migrated SQLite store (busy timeout 50 ms) whose writes wait to be
    let through, with C{table} created.
    """
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    writes = SteeredRunner("held")
    store = Store(create_engine_for_url(url, sqlite_busy_timeout_ms=50), writes, Clock(),
                  read_runner=SynchronousRunner())
    steps: list[Callable[[Connection], Any]] = [migrate]
    if table:
        steps.append(lambda conn: conn.execute(text(f"CREATE TABLE {table}")))
    for step in steps:
        done = store.run(step)
        writes.run_next()
        _now(done)
    return store, writes


def _grouped_store(tmp_path: Any) -> tuple[Store, SteeredRunner, list[str]]:
    """
    L{_steered_store} with a table t, and the commits of its connections.
    """
    from sqlalchemy import event

    store, writes = _steered_store(tmp_path, "t (k TEXT PRIMARY KEY, v INTEGER)")
    ended: list[str] = []
    event.listen(store.engine, "commit", lambda conn: ended.append("COMMIT"))
    return store, writes, ended


def _put(key: str, value: int) -> Callable[[Connection], int]:
    def write(conn: Connection) -> int:
        conn.execute(text("INSERT INTO t (k, v) VALUES (:k, :v)"), {"k": key, "v": value})
        return value
    return write


def _rows(store: Store) -> dict[str, int]:
    return dict(_now(store.read(lambda conn: [tuple(r) for r in conn.execute(
        text("SELECT k, v FROM t"))])))


def test_writes_waiting_share_one_commit(tmp_path: Any) -> None:
    """
    Group commit: the writes waiting when a database thread gets to them
    go in one transaction -- one commit -- each in its savepoint; the
    tasks whose write was taken only hand on its result.
    """
    store, writes, ended = _grouped_store(tmp_path)
    waiting = [store.run(_put(k, n)) for n, k in enumerate("abcdef", start=1)]
    assert len(writes.held) == 6  # a task each: stopping the runner runs them all
    writes.run_next()
    assert ended == ["COMMIT"]
    assert waiting[0].called and not any(d.called for d in waiting[1:])
    for _ in range(5):
        writes.run_next()
    assert [_now(d) for d in waiting] == [1, 2, 3, 4, 5, 6]
    assert ended == ["COMMIT"]  # six writes, one commit
    assert _rows(store) == {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6}
    store.close()


def test_a_write_that_fails_in_a_group_fails_alone(tmp_path: Any) -> None:
    """
    Each write of a group runs in a savepoint: one that raises leaves no
    trace and fails with its own error; a duplicate key runs again on its
    own (and fails again, as a constraint it breaks); the others are kept.
    """
    from sqlalchemy.exc import IntegrityError

    store, writes, _ = _grouped_store(tmp_path)

    def half_then_bug(conn: Connection) -> None:
        _put("half", 9)(conn)
        raise ValueError("a bug after writing")

    group = [store.run(_put("a", 1)), store.run(half_then_bug), store.run(_put("a", 2)),
             store.run(_put("b", 3))]
    for _ in group:
        writes.run_next()
    assert _now(group[0]) == 1 and _now(group[3]) == 3
    with pytest.raises(ValueError, match="a bug after writing"):
        _now(group[1])
    with pytest.raises(IntegrityError):
        _now(group[2])
    assert _rows(store) == {"a": 1, "b": 3}
    store.close()


def test_a_group_that_fails_once_begun_is_written_one_write_at_a_time(
        tmp_path: Any) -> None:
    """
    A write that runs into the database's trouble (a full disk) fails the
    group's transaction; the others are written again on their own, so
    only that write fails.
    """
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from cipherd.store import DatabaseUnavailable

    store, writes, ended = _grouped_store(tmp_path)

    def too_big(conn: Connection) -> None:
        full = sqlite3.OperationalError("database or disk is full")
        full.sqlite_errorcode = 13  # type: ignore[attr-defined]
        raise OperationalError("INSERT INTO t", {}, full)

    group = [store.run(_put("a", 1)), store.run(too_big), store.run(_put("b", 2))]
    for _ in group:
        writes.run_next()
    assert _now(group[0]) == 1 and _now(group[2]) == 2
    with pytest.raises(DatabaseUnavailable, match="database or disk is full"):
        _now(group[1])
    # The group (a, too_big) rolled back; a again alone, then b alone.
    assert ended == ["COMMIT", "COMMIT"]
    assert _rows(store) == {"a": 1, "b": 2}
    store.close()


def test_stopping_the_database_threads_commits_every_write_asked_for(tmp_path: Any) -> None:
    """
    At shutdown the runner runs the tasks already queued: with a write each,
    none of the writes waiting behind a slow one is lost.
    """
    import threading

    from twisted.internet import reactor

    from cipherd.threads import ThreadPoolRunner

    engine = create_engine_for_url(f"sqlite:///{tmp_path / 'db.sqlite'}")
    runner = ThreadPoolRunner(reactor, "test-db", 4)
    runner.startService()
    store = Store(engine, runner, Clock(), read_runner=SynchronousRunner())
    release = threading.Event()

    def slow(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)"))
        release.wait(10)

    store.run(slow)
    for n, key in enumerate("abc"):
        store.run(_put(key, n))
    release.set()
    runner.stopService()  # joins the threads once the queued tasks ran
    with engine.connect() as conn:
        assert dict(conn.execute(text("SELECT k, v FROM t")).all()) == {"a": 0, "b": 1,
                                                                         "c": 2}
    store.close()


def test_writes_that_cannot_begin_fail_as_unavailable(tmp_path: Any) -> None:
    """
    The database locked by another process: no transaction can begin,
    every write fails as unavailable and none is written.
    """
    import sqlite3

    from cipherd.store import DatabaseUnavailable

    store, writes = _steered_store(tmp_path, "t (k TEXT, v INTEGER)")
    blocker = store.run(_put("z", 0))
    writes.run_next()
    _now(blocker)
    group = [store.run(_put("a", 1)), store.run(_put("b", 2))]
    holder = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        writes.run_next()
        writes.run_next()
        for d in group:
            with pytest.raises(DatabaseUnavailable, match="database is locked"):
                _now(d)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert _rows(store) == {"z": 0}
    store.close()


def test_a_bug_in_a_query_is_a_bug_not_an_unavailable_database(tmp_path: Any) -> None:
    """
    SQLite raises OperationalError for a missing table too: that is our
    fault (logged, in the end bounced), not an outage (503, retried for
    ever), and it starts no episode.
    """
    from sqlalchemy.exc import OperationalError

    from cipherd.store import DatabaseUnavailable

    store = Store(create_engine_for_url(f"sqlite:///{tmp_path / 'db.sqlite'}"),
                  SynchronousRunner(), Clock())
    failure: list[Any] = []
    store.run(lambda conn: conn.execute(text("SELECT * FROM no_such_table"))).addErrback(
        failure.append)
    assert failure[0].check(OperationalError) and not failure[0].check(DatabaseUnavailable)
    failure.clear()
    store.read(lambda conn: conn.execute(text("SELEKT 1"))).addErrback(failure.append)
    assert failure[0].check(OperationalError) and not failure[0].check(DatabaseUnavailable)
    # The next write is tried, not refused as during an outage.
    _now(store.run(lambda conn: conn.execute(text("CREATE TABLE t (x INTEGER)"))))
    store.close()


def test_a_postgresql_server_that_is_down_is_an_unavailable_database() -> None:
    import socket

    from cipherd.store import DatabaseUnavailable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    store = Store(create_engine_for_url(f"postgresql+psycopg://cipherd@127.0.0.1:{port}/x"),
                  SynchronousRunner(), Clock())
    failure: list[Any] = []
    store.read(lambda conn: conn.execute(text("SELECT 1"))).addErrback(failure.append)
    assert failure[0].check(DatabaseUnavailable), failure
    assert "refused" in failure[0].value.reason.lower()
    store.close()


def test_a_version_7_keyring_gets_its_introducer_column(database_url: str) -> None:
    engine = _engine(database_url)
    with engine.begin() as conn:
        migrate(conn, migrations=MIGRATIONS[:6])  # a database of version 7
        # The keyring's table as version 7 made it: no introducer column.
        conn.execute(text("DROP TABLE pgp_keys"))
        binary = "BYTEA" if "postgresql" in database_url else "BLOB"
        conn.execute(text(
            f"CREATE TABLE pgp_keys (fingerprint VARCHAR(64) PRIMARY KEY, public {binary}, "
            f"secret {binary}, user_ids TEXT NOT NULL, created FLOAT NOT NULL, expires FLOAT, "
            "revoked BOOLEAN NOT NULL, trusted BOOLEAN NOT NULL, source VARCHAR(16) NOT NULL, "
            "imported FLOAT NOT NULL)"))
        conn.execute(text("INSERT INTO pgp_keys VALUES ('ab', NULL, NULL, '[]', 1, NULL, "
                          "FALSE, TRUE, 'admin', 1)"))
    with engine.begin() as conn:
        assert migrate(conn) == (7, LATEST)
        assert tuple(conn.execute(text("SELECT trusted, introducer FROM pgp_keys")).one()) == (
            True, False)
    engine.dispose()
