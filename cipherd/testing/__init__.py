"""
Fakes for tests: synchronous stand-ins for the seams of cipherd.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from argon2 import PasswordHasher
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from cipherd.core.envelope import Envelope
from cipherd.settings import EffectiveValues, IAddressSettings, Scope, Values, scope_of_address
from cipherd.smtp.processing import IMessageProcessor, ProcessingResult
from cipherd.smtp.queue import ISubmission
from cipherd.smtp.spool import QueuedMessage
from cipherd.store import DatabaseUnavailable, Store, create_engine_for_url
from cipherd.store.migrations import migrate
from cipherd.threads import IBlockingRunner

__all__ = ["MemorySettings", "PassThrough", "RecordingSubmission", "SteeredRunner",
           "SynchronousRunner", "cheap_hasher", "migrated_store", "result_of"]

T = TypeVar("T")


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


@implementer(IBlockingRunner)
class SteeredRunner:
    """
    A database thread pool as a test steers it: each call runs at once
    (C{"open"}), waits until the test lets it run or fail (C{"held"}: a call
    waiting behind another process's lock), or fails at once as the store
    fails on a database it cannot use (C{"down"}, with L{DatabaseUnavailable}
    saying C{reason}).

    @ivar held: the calls waiting, oldest first.
    """

    def __init__(self, mode: str = "open",
                 reason: str = "(sqlite3.OperationalError) database is locked") -> None:
        self.mode = mode
        self.reason = reason
        self.held: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def run(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if self.mode == "held":
            d: Deferred[Any] = Deferred()
            self.held.append((d, fn, args))
            return d
        if self.mode == "down":
            return fail(DatabaseUnavailable(self.reason))
        return SynchronousRunner().run(fn, *args)

    def run_next(self) -> None:
        """
        Run the oldest waiting call now (unless it was cancelled meanwhile).
        """
        d, fn, args = self.held.pop(0)
        if not d.called:
            SynchronousRunner().run(fn, *args).chainDeferred(d)

    def release(self) -> None:
        """
        Open: run every waiting call, oldest first.
        """
        self.mode = "open"
        while self.held:
            self.run_next()

    def give_up(self) -> None:
        """
        Fail every waiting call as SQLite does when its busy timeout runs out.
        """
        while self.held:
            d = self.held.pop(0)[0]
            if not d.called:
                d.errback(DatabaseUnavailable(self.reason))


def migrated_store(url: str | None = None) -> Store:
    """
    A migrated L{Store} on C{url} (default: in memory) that runs queries
    synchronously.
    """
    engine = create_engine_for_url(url or "sqlite://")
    with engine.begin() as conn:
        migrate(conn)
    return Store(engine, SynchronousRunner())


def cheap_hasher() -> PasswordHasher:
    """
    Argon2id with the smallest parameters: fast tests, same code paths.
    """
    return PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)


def result_of(coroutine: Coroutine[Any, Any, T]) -> T:
    """
    The result of a coroutine that completes at once (all its I/O through
    L{SynchronousRunner}s); raises what it raised.

    @raise AssertionError: it is still waiting for something.
    """
    outcome: list[Any] = []
    Deferred.fromCoroutine(coroutine).addBoth(outcome.append)
    assert outcome, "the coroutine did not complete synchronously"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    result: T = outcome[0]
    return result


def deferred_result(d: Deferred[T]) -> T:
    """
    L{result_of} for a Deferred.
    """

    async def wait() -> T:
        return await d

    return result_of(wait())


@implementer(IMessageProcessor)
class PassThrough:
    """
    Processing that leaves every message as it came.
    """

    def process(self, envelope: Envelope, content: bytes) -> Deferred[ProcessingResult]:
        return succeed(ProcessingResult.unchanged(envelope, content))


@implementer(ISubmission)
class RecordingSubmission:
    """
    Outbound submission into a list: C{(sender, recipients, content)}.
    """

    def __init__(self) -> None:
        self.submitted: list[tuple[str, list[str], bytes]] = []

    def submit(self, sender: str, recipients: list[str], content: bytes, client: str, *,
               processed: bool = False) -> Deferred[QueuedMessage]:
        self.submitted.append((sender, list(recipients), content))
        envelope = Envelope(f"{len(self.submitted):012X}", sender, tuple(recipients), 0.0,
                            client=client)
        return succeed(QueuedMessage(envelope, "active", Path(), len(content)))


@implementer(IAddressSettings)
class MemorySettings:
    """
    Settings kept in memory, resolved with the same inheritance as the
    store's (global → domain → user): C{set(scope, name=value)}.
    """

    def __init__(self) -> None:
        self._values = Values()

    def set(self, scope: Scope, **values: Any) -> None:
        self._values.by_scope.setdefault(scope, {}).update(values)

    def by_address(self, addresses: Iterable[str]) -> Deferred[dict[str, Mapping[str, Any]]]:
        return succeed({address: EffectiveValues(self._values, scope_of_address(address))
                        for address in addresses})
