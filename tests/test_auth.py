"""
Admin authentication under concurrency: parallel guesses cannot get
around the lockout (each attempt takes a place in the count before its
password is checked).  On a database that takes no writes (a full disk) a
correct login still works, and failures are still counted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from cipherd.store import DatabaseUnavailable, Store
from cipherd.store import admins as q
from cipherd.testing import (
    SteeredRunner,
    SynchronousRunner,
    cheap_hasher,
    migrated_store,
    result_of,
)
from cipherd.threads import IBlockingRunner
from cipherd.web.auth import MAX_PENDING_CHECKS, AdminAuthority, LoginRefused, ServerBusy


@implementer(IBlockingRunner)
class HeldRunner:
    """
    Holds every call until released: the password checks of parallel
    logins are all in flight at once.
    """

    def __init__(self) -> None:
        self.held: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def run(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.held.append((d, fn, args))
        return d

    def release_all(self) -> None:
        while self.held:
            d, fn, args = self.held.pop(0)
            d.callback(fn(*args))


def _authority(runner: Any, store: Any = None, clock: Clock | None = None) -> AdminAuthority:
    return AdminAuthority(store or migrated_store(), runner, clock or Clock(), idle_timeout=60,
                          max_age=60, lockout_threshold=5, lockout_window=900,
                          lockout_duration=900, hasher=HASHER,
                          totp_key=bytes(32))


HASHER = cheap_hasher()


def _held_authority() -> tuple[AdminAuthority, HeldRunner]:
    store = migrated_store()
    result_of(_authority(SynchronousRunner(), store).ensure_default_admin())
    held = HeldRunner()
    return _authority(held, store), held


def test_parallel_guesses_are_counted_before_they_are_checked() -> None:
    authority, held = _held_authority()
    outcomes: list[Any] = []
    for guess in [*(f"wrong-{n}" for n in range(59)), "admin"]:
        Deferred.fromCoroutine(authority.check_password("admin", guess, "10.0.0.1")).addBoth(
            outcomes.append)
    # Only the first five attempts reached a password check; the rest were
    # refused at once, the right password (last) among them.
    assert len(held.held) == 5
    refused = [o for o in outcomes if "Too many login attempts at once" in str(o.value)]
    assert len(refused) == 55
    held.release_all()
    assert len(outcomes) == 60
    assert all(o.check(LoginRefused) for o in outcomes)
    # The five wrong guesses that were checked locked the login.
    later: list[Any] = []
    Deferred.fromCoroutine(authority.check_password("admin", "admin", "10.0.0.1")).addBoth(
        later.append)
    assert str(later[0].value).startswith("Too many failed logins. Login is locked for 15")


def test_a_flood_of_logins_is_refused_instead_of_queueing_password_checks() -> None:
    authority, held = _held_authority()
    outcomes: list[Any] = []
    for n in range(MAX_PENDING_CHECKS + 3):
        # Each from its own address: no lockout applies.
        Deferred.fromCoroutine(authority.check_password("admin", "wrong", f"10.0.1.{n}")
                               ).addBoth(outcomes.append)
    assert len(held.held) == MAX_PENDING_CHECKS
    assert [str(o.value) for o in outcomes] == [
        "The server is busy checking other logins; try again in a moment."] * 3
    held.release_all()
    assert all(o.check(LoginRefused) for o in outcomes)


class CountingRunner(SynchronousRunner):
    def __init__(self) -> None:
        self.calls = 0

    def run(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        self.calls += 1
        return super().run(fn, *args)


def test_correct_credentials_are_checked_once_then_remembered_until_the_password_changes(
) -> None:
    runner = CountingRunner()
    clock = Clock()
    authority = _authority(runner, clock=clock)
    result_of(authority.ensure_default_admin())
    runner.calls = 0
    # An API client sends Basic credentials on every call, several at once.
    for _ in range(10):
        assert result_of(authority.check_password("admin", "admin", "10.0.0.2")).name == "admin"
    assert runner.calls == 1
    # A wrong password is still checked, and counted.
    try:
        result_of(authority.check_password("admin", "admin ", "10.0.0.2"))
    except LoginRefused:
        pass
    assert runner.calls == 2
    # After a password change the old one is worthless at once.
    result_of(authority.change_password("admin", "purple-otter-canvas-91", keep_session=None))
    try:
        result_of(authority.check_password("admin", "admin", "10.0.0.2"))
        raise AssertionError("the old password still works")
    except LoginRefused as e:
        assert str(e) == "Wrong user name or password."
    # And the memory runs out.
    result_of(authority.check_password("admin", "purple-otter-canvas-91", "10.0.0.2"))
    runner.calls = 0
    clock.advance(301)
    result_of(authority.check_password("admin", "purple-otter-canvas-91", "10.0.0.2"))
    assert runner.calls == 1


def test_parallel_correct_logins_do_not_lock_the_account() -> None:
    authority, held = _held_authority()
    outcomes: list[Any] = []
    for _ in range(8):
        Deferred.fromCoroutine(authority.check_password("admin", "admin", "10.0.0.3")
                               ).addBoth(outcomes.append)
    held.release_all()
    assert sum(1 for o in outcomes if not isinstance(o, Failure)) == 5
    # The three past the threshold were turned away, not locked out.
    assert {str(o.value) for o in outcomes if isinstance(o, Failure)} == {
        "Too many login attempts at once; try again in a moment."}
    assert result_of(authority.check_password("admin", "admin", "10.0.0.3")).name == "admin"


def test_the_sweep_forgets_failures_outside_the_window_but_not_running_locks() -> None:
    store = migrated_store()
    clock = Clock()
    clock.advance(10_000)
    authority = _authority(SynchronousRunner(), store, clock)

    def put(conn: Any) -> None:
        q.put_failures(conn, "admin", "old", q.FailureRow(2, 10_000 - 901, None))
        q.put_failures(conn, "admin", "recent", q.FailureRow(2, 10_000 - 100, None))
        q.put_failures(conn, "admin", "locked", q.FailureRow(6, 10_000 - 901, 10_500))

    def clients(conn: Any) -> set[str]:
        return {c for c in ("old", "recent", "locked") if q.get_failures(conn, "admin", c)}

    async def run(fn: Any) -> Any:
        return await store.run(fn)

    result_of(run(put))
    result_of(authority.expire_sessions())
    assert result_of(run(clients)) == {"recent", "locked"}


def test_logins_refused_as_busy_are_not_counted() -> None:
    """
    A flood of logins from many addresses fills the places for password
    checks; the administrator's own attempts meanwhile are refused as busy,
    not counted, so they do not lock the account once the flood is over.
    """
    authority, held = _held_authority()
    for n in range(MAX_PENDING_CHECKS):
        Deferred.fromCoroutine(authority.check_password(f"x{n}", "guess", f"203.0.113.{n}")
                               ).addBoth(lambda _: None)
    during: list[Any] = []
    for _ in range(6):
        Deferred.fromCoroutine(authority.check_password("admin", "admin", "10.0.0.1")
                               ).addBoth(during.append)
    assert all(o.check(ServerBusy) for o in during)
    changed: list[Any] = []
    Deferred.fromCoroutine(authority.change_password("admin", "purple-otter-canvas-91", None)
                           ).addBoth(changed.append)
    held.release_all()  # the password-strength check, then the refusal
    assert changed[0].check(ServerBusy)
    after: list[Any] = []
    Deferred.fromCoroutine(authority.check_password("admin", "admin", "10.0.0.1")
                           ).addBoth(after.append)
    held.release_all()
    assert after[0].name == "admin"


def test_a_lock_that_ran_out_starts_the_count_afresh() -> None:
    clock = Clock()
    store = migrated_store()
    authority = _authority(SynchronousRunner(), store, clock)
    result_of(authority.ensure_default_admin())
    for _ in range(5):
        try:
            result_of(authority.check_password("admin", "wrong", "192.0.2.7"))
        except LoginRefused:
            pass
    clock.advance(900)  # the lock (900 s) ran out, inside the 900 s window
    # The right password works at once: neither "locked" nor "too many".
    assert result_of(authority.check_password("admin", "admin", "192.0.2.7")).name == "admin"


def _read_only(store: Any) -> None:
    """
    From now on the database refuses every write, as SQLite does on a full
    disk (the in-memory test database is one shared connection).
    """
    with store.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA query_only = ON")


def _attempt(authority: AdminAuthority, password: str, client: str = "10.0.0.9") -> Any:
    outcome: list[Any] = []
    Deferred.fromCoroutine(authority.check_password("admin", password, client)).addBoth(
        outcome.append)
    assert outcome, "the attempt is still waiting (for a password check, say)"
    return outcome[0]


def _warnings(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events
            if e.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical)]


def test_a_correct_login_writes_nothing_so_it_works_on_a_full_disk() -> None:
    store = migrated_store()
    clock = Clock()
    result_of(_authority(SynchronousRunner(), store, clock).ensure_default_admin())
    _read_only(store)
    # A fresh authority (after a restart): the password is checked, not remembered.
    authority = _authority(SynchronousRunner(), store, clock)
    for _ in range(3):
        assert _attempt(authority, "admin").name == "admin"


def test_failures_the_database_cannot_take_are_counted_in_memory_and_still_lock() -> None:
    store = migrated_store()
    clock = Clock()
    authority = _authority(SynchronousRunner(), store, clock)
    result_of(authority.ensure_default_admin())
    _read_only(store)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        outcomes = [_attempt(authority, "guess") for _ in range(5)]
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [str(o.value).split(" Too")[0] for o in outcomes] == [
        "Wrong user name or password."] * 5
    assert str(outcomes[-1].value).endswith("Login is locked for 15 more minute(s).")
    # Locked: not even the right password is checked now.
    assert str(_attempt(authority, "admin").value).startswith("Too many failed logins.")
    assert any("counted in memory" in line for line in _warnings(events))
    assert not any("Traceback" in line for line in _warnings(events))
    # Another client is not locked; the lock ends on time.
    assert _attempt(authority, "admin", "10.0.0.10").name == "admin"
    clock.advance(900)
    assert _attempt(authority, "admin").name == "admin"


def test_a_count_that_cannot_be_cleared_does_not_refuse_a_correct_login() -> None:
    store = migrated_store()
    authority = _authority(SynchronousRunner(), store)
    result_of(authority.ensure_default_admin())
    assert _attempt(authority, "guess").check(LoginRefused)

    async def failures() -> Any:
        return await store.read(q.get_failures, "admin", "10.0.0.9")

    assert result_of(failures()).count == 1
    _read_only(store)
    assert _attempt(authority, "admin").name == "admin"
    assert result_of(failures()).count == 1  # still there; the sweep ends it


def test_a_correct_login_clears_a_count_it_finds() -> None:
    store = migrated_store()
    authority = _authority(SynchronousRunner(), store)
    result_of(authority.ensure_default_admin())
    for _ in range(4):
        _attempt(authority, "guess")
    assert _attempt(authority, "admin").name == "admin"

    async def failures() -> Any:
        return await store.read(q.get_failures, "admin", "10.0.0.9")

    assert result_of(failures()) is None
    # Four more failures do not lock: the count started afresh.
    for _ in range(4):
        assert str(_attempt(authority, "guess").value) == "Wrong user name or password."


def test_a_session_is_read_without_a_write_and_its_idle_time_restarts_once_a_minute() -> None:
    store = migrated_store()
    clock = Clock()
    clock.advance(1_000_000)
    authority = AdminAuthority(store, SynchronousRunner(), clock, idle_timeout=1800,
                               max_age=43200, lockout_threshold=5, lockout_window=900,
                               lockout_duration=900, hasher=HASHER, totp_key=bytes(32))
    result_of(authority.ensure_default_admin())
    token = result_of(authority.open_session("admin"))

    async def last_seen() -> float:
        row = await store.read(q.get_session, hashlib.sha256(token.encode()).hexdigest())
        return float(row.last_seen)

    clock.advance(30)
    assert result_of(authority.session(token)) is not None
    assert result_of(last_seen()) == 1_000_000  # not written within the minute
    clock.advance(30)
    assert result_of(authority.session(token)) is not None
    assert result_of(last_seen()) == 1_000_060
    # On a database that takes no writes the session still works; its idle
    # time just does not restart.
    _read_only(store)
    clock.advance(59)
    assert result_of(authority.session(token)) is not None
    clock.advance(59)
    assert result_of(authority.session(token)) is not None
    assert result_of(last_seen()) == 1_000_060


LOCKED = "(sqlite3.OperationalError) database is locked"


def _slow_database() -> tuple[AdminAuthority, Store, SteeredRunner, CountingRunner]:
    """
    An authority on a store whose writes the test steers (reads go on at
    once, as they do beside a writer's lock), counting password checks.
    """
    base = migrated_store()
    result_of(_authority(SynchronousRunner(), base).ensure_default_admin())
    writes = SteeredRunner()
    store = Store(base.engine, writes, read_runner=SynchronousRunner())
    checks = CountingRunner()
    return _authority(checks, store), store, writes, checks


def _guesses(authority: AdminAuthority, count: int, client: str = "10.0.0.1") -> list[Any]:
    outcomes: list[Any] = []
    for n in range(count):
        Deferred.fromCoroutine(authority.check_password("admin", f"wrong-{n}", client)
                               ).addBoth(outcomes.append)
    return outcomes


def _locked(authority: AdminAuthority, client: str = "10.0.0.1") -> bool:
    # The right password itself is refused unchecked.
    outcome = _attempt(authority, "admin", client)
    return isinstance(outcome, Failure) and str(outcome.value).startswith(
        "Too many failed logins. Login is locked for 15")


def test_parallel_guesses_while_failure_writes_are_slow_get_no_more_checks_than_the_threshold(
) -> None:
    """
    Review of issue 12 (M2b): a guess gave its place in the count back
    before its failure was written, so while the writes waited (another
    process holding SQLite's lock, or a slow fsync) each new guess saw
    neither: 16 password checks with a threshold of 5.
    """
    authority, _, writes, checks = _slow_database()
    writes.mode = "held"
    outcomes = _guesses(authority, 200)
    assert checks.calls == 5
    assert len(writes.held) == 5
    assert {str(o.value) for o in outcomes} == {
        "Too many login attempts at once; try again in a moment."}
    writes.release()
    assert len(outcomes) == 200
    assert all(o.check(LoginRefused) for o in outcomes)
    assert _locked(authority)
    assert checks.calls == 5


def test_a_failure_write_that_fails_late_cannot_undo_the_lockout(
        log_events: list[dict[str, Any]]) -> None:
    """
    Review of issue 12 (M2a): during a database episode one write probes
    the database (waiting seconds for its lock) while the others are
    refused at once and counted in memory.  When the probe failed it stored
    a count made from what it knew before its wait -- count 1, unlocked --
    over the lock reached meanwhile.
    """
    authority, store, writes, checks = _slow_database()
    writes.mode = "down"
    with pytest.raises(DatabaseUnavailable):
        result_of(_write_nothing(store))  # the episode begins
    writes.mode = "held"
    outcomes = _guesses(authority, 6)
    assert len(writes.held) == 1  # the first guess's failure probes the database
    # The guesses counted in memory, and the probe's own, are five.
    assert checks.calls == 5
    assert str(outcomes[-1].value) == "Too many login attempts at once; try again in a moment."
    writes.give_up()
    assert len(outcomes) == 6
    assert str(outcomes[-1].value).endswith("Login is locked for 15 more minute(s).")
    assert _locked(authority)
    assert checks.calls == 5
    assert not [e for e in log_events if "log_failure" in e]


def test_a_failure_write_that_succeeds_late_counts_what_was_counted_meanwhile() -> None:
    authority, store, writes, checks = _slow_database()
    writes.mode = "down"
    with pytest.raises(DatabaseUnavailable):
        result_of(_write_nothing(store))
    writes.mode = "held"
    _guesses(authority, 5)
    assert checks.calls == 5
    writes.release()  # the probe's write succeeds: it knew none of the other four
    assert _locked(authority)
    # The lock is stored, and so outlasts a restart (nothing in memory).
    assert _locked(_authority(SynchronousRunner(), store))


def test_guesses_while_the_database_takes_no_writes_cannot_double_the_threshold() -> None:
    """
    Review of issue 12 (M2a): failures counted in memory began at zero
    beside a stored count, so four stored failures and five in memory --
    nine guesses -- passed before the lock.
    """
    authority, _, writes, checks = _slow_database()
    for outcome in _guesses(authority, 4):
        assert str(outcome.value) == "Wrong user name or password."
    writes.mode = "down"  # a full disk, say
    last = _guesses(authority, 1)[0]
    assert str(last.value).endswith("Login is locked for 15 more minute(s).")
    assert _locked(authority)
    assert checks.calls == 5


def test_connect_send_close_cannot_queue_unlimited_password_hashing() -> None:
    """
    Review of issue 12 (m9): a login cancelled during its Argon2 check (its
    client went away) gave its place back while the thread went on
    hashing: a loop of connect, send, close queued hashes without limit.
    """
    authority, held = _held_authority()
    waiting = [Deferred.fromCoroutine(authority.check_password("admin", "guess", f"10.0.2.{n}"))
               for n in range(MAX_PENDING_CHECKS)]
    for d in waiting:
        d.addErrback(lambda f: f.trap(CancelledError))
        d.cancel()
    assert len(held.held) == MAX_PENDING_CHECKS  # still hashing
    busy = _attempt(authority, "admin", "10.0.0.1")
    assert busy.check(ServerBusy)
    assert len(held.held) == MAX_PENDING_CHECKS
    # One hash done: one place free again.
    d, fn, args = held.held.pop(0)
    d.callback(fn(*args))
    Deferred.fromCoroutine(authority.check_password("admin", "admin", "10.0.0.1"))
    assert len(held.held) == MAX_PENDING_CHECKS
    assert _attempt(authority, "admin", "10.0.0.2").check(ServerBusy)
    held.release_all()
    assert authority._pending == 0
    assert _attempt(authority, "admin", "10.0.0.3").name == "admin"


async def _write_nothing(store: Store) -> None:
    await store.run(lambda conn: None)


