"""
Admin authentication under concurrency: parallel guesses cannot get
around the lockout (each attempt is counted before its password is checked).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from cipherd.store import admins as q
from cipherd.testing import SynchronousRunner, cheap_hasher, migrated_store, result_of
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
                          lockout_duration=900, hasher=HASHER)


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
