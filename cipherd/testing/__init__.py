"""
Fakes for tests: synchronous stand-ins for the seams of cipherd.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from argon2 import PasswordHasher
from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import StaticPool
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from cipherd.store import Store, create_engine_for_url
from cipherd.store.migrations import migrate
from cipherd.threads import IBlockingRunner


@implementer(IBlockingRunner)
class SynchronousRunner:
    """
    Runs the callable at once, in the calling thread: every Deferred it
    returns has already fired.
    """

    def run(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        try:
            return succeed(fn(*args))
        except BaseException:
            return fail()


def memory_engine() -> Engine:
    """
    A private in-memory SQLite database (one connection, shared).
    """
    return create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )


def migrated_store(url: str | None = None) -> Store:
    """
    A migrated L{Store} on C{url} (default: in memory) that runs queries
    synchronously.
    """
    engine = memory_engine() if url is None else create_engine_for_url(url)
    with engine.begin() as conn:
        migrate(conn)
    return Store(engine, SynchronousRunner())


def cheap_hasher() -> PasswordHasher:
    """
    Argon2id with the smallest parameters: fast tests, same code paths.
    """
    return PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)


def clock_at(clock: IReactorTime, seconds: float) -> IReactorTime:
    """
    Advance a fresh C{task.Clock} to a realistic epoch time.
    """
    clock.advance(seconds - clock.seconds())  # type: ignore[attr-defined]
    return clock
