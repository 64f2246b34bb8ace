"""
Admin authentication under concurrency: parallel guesses cannot get
around the lockout (each attempt is counted before its password is checked).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface import implementer

from cipherd.testing import SynchronousRunner, cheap_hasher, migrated_store, result_of
from cipherd.threads import IBlockingRunner
from cipherd.web.auth import AdminAuthority, LoginRefused


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


def test_parallel_guesses_are_counted_before_they_are_checked() -> None:
    store = migrated_store()
    hasher = cheap_hasher()
    result_of(AdminAuthority(store, SynchronousRunner(), Clock(), idle_timeout=60, max_age=60,
                             lockout_threshold=5, lockout_window=900, lockout_duration=900,
                             hasher=hasher).ensure_default_admin())
    held = HeldRunner()
    authority = AdminAuthority(store, held, Clock(), idle_timeout=60, max_age=60,
                               lockout_threshold=5, lockout_window=900, lockout_duration=900,
                               hasher=hasher)
    outcomes: list[Any] = []
    for guess in [*(f"wrong-{n}" for n in range(59)), "admin"]:
        Deferred.fromCoroutine(authority.check_password("admin", guess, "10.0.0.1")).addBoth(
            outcomes.append)
    # Only the first five attempts reached a password check; the rest were
    # refused at once, the right password (last) among them.
    assert len(held.held) == 5
    refused = [o for o in outcomes if "Too many failed logins" in str(o.value)]
    assert len(refused) == 55
    held.release_all()
    assert len(outcomes) == 60
    assert all(o.check(LoginRefused) for o in outcomes)
