"""
The portal's login lockout while the database is slow or refuses writes,
and while clients go away mid-check (the admin's faults, issue 12, looked
for in L{cipherd.webmail.sessions}): writes the test steers
(L{SteeredRunner}), Argon2 checks it holds, C{task.Clock}.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from cipherd.store import DatabaseUnavailable, Store
from cipherd.testing import (
    SteeredRunner,
    SynchronousRunner,
    cheap_hasher,
    migrated_store,
    result_of,
)
from cipherd.webmail.accounts import Accounts
from cipherd.webmail.sessions import (
    BUSY,
    LOCKED,
    MAX_PENDING_CHECKS,
    WRONG,
    LoginRefused,
    PortalSessions,
)

ADDRESS = "dave@partner.example"
PASSWORD = "correct horse battery staple"
CLIENT = "192.0.2.7"
HASHER = cheap_hasher()


def _sessions(clock: Clock) -> tuple[PortalSessions, SteeredRunner, SteeredRunner]:
    """
    Portal sessions whose database writes and Argon2 checks the test
    steers (reads go on at once, as they do beside a writer's lock).
    """
    base = migrated_store()
    setup = Accounts(base, clock, SynchronousRunner(), HASHER)
    account, _ = result_of(setup.invite(ADDRESS))
    assert result_of(setup.set_password(account, PASSWORD))
    writes, hashing = SteeredRunner(), SteeredRunner()
    store = Store(base.engine, writes, read_runner=SynchronousRunner())
    accounts = Accounts(store, clock, hashing, HASHER)
    return PortalSessions(store, clock, accounts.verify_password), writes, hashing


def _start(sessions: PortalSessions, password: str, client: str = CLIENT) -> list[Any]:
    outcome: list[Any] = []
    Deferred.fromCoroutine(sessions.check_password(ADDRESS, password, client)).addBoth(
        outcome.append)
    return outcome


def _abandon(sessions: PortalSessions, password: str, client: str = CLIENT) -> None:
    # The client sends its login and hangs up: the request is cancelled.
    d = Deferred.fromCoroutine(sessions.check_password(ADDRESS, password, client))
    d.addErrback(lambda f: f.trap(CancelledError))
    d.cancel()


def _refusal(sessions: PortalSessions, password: str, client: str = CLIENT) -> str:
    with pytest.raises(LoginRefused) as refused:
        result_of(sessions.check_password(ADDRESS, password, client))
    return refused.value.reason


def _four_wrong_the_first_ten_minutes_ago(clock: Clock, sessions: PortalSessions) -> None:
    # The window (15 min) counts from the first failure; the lock (15 min)
    # from the fifth.
    assert _refusal(sessions, "wrong-0") == WRONG
    clock.advance(600)
    for n in range(1, 4):
        assert _refusal(sessions, f"wrong-{n}") == WRONG


def test_connect_send_close_cannot_queue_unlimited_password_hashing(clock: Clock) -> None:
    """
    m9: a login cancelled during its Argon2 check (its client went away)
    gave its place back while the thread went on hashing: a loop of
    connect, send, close queued hashes without limit.
    """
    sessions, _, hashing = _sessions(clock)
    hashing.mode = "held"
    for n in range(MAX_PENDING_CHECKS):
        _abandon(sessions, "guess", f"10.0.2.{n}")
    assert len(hashing.held) == MAX_PENDING_CHECKS  # still hashing
    assert _refusal(sessions, PASSWORD, "10.0.0.1") == BUSY
    assert len(hashing.held) == MAX_PENDING_CHECKS
    # One hash done: one place free again.
    hashing.run_next()
    late = _start(sessions, PASSWORD, "10.0.0.1")
    assert len(hashing.held) == MAX_PENDING_CHECKS
    assert _refusal(sessions, PASSWORD, "10.0.0.2") == BUSY
    hashing.release()
    assert late[0].address == ADDRESS
    # Every place is free again.
    for n in range(MAX_PENDING_CHECKS):
        assert result_of(sessions.check_password(ADDRESS, PASSWORD, f"10.0.3.{n}"))


def test_a_fifth_guess_abandoned_during_its_check_still_locks_the_pair(clock: Clock) -> None:
    """
    m9: the failure of a login cancelled during its check was never
    recorded, so its pair was not locked: hanging up on the fifth guess
    left only the rest of the window (here five minutes) to wait instead of
    the fifteen-minute lock.
    """
    sessions, _, hashing = _sessions(clock)
    _four_wrong_the_first_ten_minutes_ago(clock, sessions)
    hashing.mode = "held"
    _abandon(sessions, "wrong-4")
    hashing.release()
    clock.advance(301)  # the window is over; the lock is not
    assert _refusal(sessions, PASSWORD) == LOCKED
    clock.advance(15 * 60 - 301 - 1)
    assert _refusal(sessions, PASSWORD) == LOCKED
    clock.advance(1)
    assert result_of(sessions.check_password(ADDRESS, PASSWORD, CLIENT)).address == ADDRESS


def test_a_lock_whose_write_is_refused_still_holds_for_fifteen_minutes(clock: Clock) -> None:
    """
    (a): the lock was written only after the fifth password check, so a
    database that refused that write (locked by another process, full)
    left the pair unlocked once the window was over.
    """
    sessions, writes, hashing = _sessions(clock)
    _four_wrong_the_first_ten_minutes_ago(clock, sessions)
    hashing.mode = "held"
    fifth = _start(sessions, "wrong-4")
    writes.mode = "down"  # the database goes away during the check
    hashing.release()
    assert fifth[0].check(DatabaseUnavailable)
    writes.mode = "open"
    clock.advance(301)
    assert _refusal(sessions, PASSWORD) == LOCKED
    clock.advance(15 * 60 - 301)
    assert result_of(sessions.check_password(ADDRESS, PASSWORD, CLIENT)).address == ADDRESS


def test_guesses_while_the_database_takes_no_writes_are_not_checked(clock: Clock) -> None:
    """
    (a): an attempt is counted in the database before its password is
    checked, and not checked at all when the count cannot be written: no
    failure goes uncounted, in memory or anywhere.
    """
    sessions, writes, hashing = _sessions(clock)
    hashing.mode = "held"
    writes.mode = "down"
    for n in range(12):
        assert _start(sessions, f"wrong-{n}")[0].check(DatabaseUnavailable)
    assert _start(sessions, PASSWORD)[0].check(DatabaseUnavailable)
    assert hashing.held == []


def test_parallel_guesses_while_writes_are_slow_get_no_more_checks_than_the_threshold(
        clock: Clock) -> None:
    """
    (b): the count is taken before the check in the same write, so guesses
    waiting for a slow write wait unchecked, and those past the threshold
    are refused unchecked.
    """
    sessions, writes, hashing = _sessions(clock)
    writes.mode, hashing.mode = "held", "held"
    outcomes = [_start(sessions, f"wrong-{n}") for n in range(MAX_PENDING_CHECKS)]
    assert hashing.held == []
    writes.release()
    assert len(hashing.held) == 5
    assert all(o[0].check(LoginRefused) for o in outcomes[5:])
    hashing.release()
    assert all(o[0].check(LoginRefused) for o in outcomes)
    assert outcomes[4][0].value.reason == LOCKED
    assert _refusal(sessions, PASSWORD) == LOCKED


@pytest.mark.parametrize("password", [PASSWORD, "wrong"])
def test_during_an_outage_a_right_password_is_answered_like_a_wrong_one(
        clock: Clock, password: str) -> None:
    """
    A password checked just before the database went away: the right one
    needs a write to log in (a session), so the wrong one is answered the
    same (503), not "wrong" -- else the answer would tell which is right.
    """
    sessions, writes, hashing = _sessions(clock)
    hashing.mode = "held"
    outcome = _start(sessions, password)
    writes.mode = "down"
    hashing.release()
    assert isinstance(outcome[0], Failure) and outcome[0].check(DatabaseUnavailable)


def test_an_abandoned_check_logs_its_bug_but_not_its_answer(
        clock: Clock, log_events: list[dict[str, Any]]) -> None:
    """
    A check whose client went away ends unheard: a refusal or an outage
    is no news, a bug still is (not an "Unhandled error in Deferred").
    """
    gates: list[Deferred[None]] = []

    async def verify(address: str, password: str) -> None:
        gate: Deferred[None] = Deferred()
        gates.append(gate)
        await gate
        if password == "bug":
            raise RuntimeError("a bug in the check")

    sessions = PortalSessions(migrated_store(), clock, verify)
    _abandon(sessions, "wrong")
    _abandon(sessions, "bug", "10.0.0.9")
    for gate in gates:
        gate.callback(None)
    failures = [e for e in log_events if "log_failure" in e]
    assert [e["log_failure"].value.args for e in failures] == [("a bug in the check",)]
    assert failures[0]["log_level"] == LogLevel.critical
