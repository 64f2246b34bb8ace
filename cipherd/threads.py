"""
Running blocking work (database queries, password hashing) off the reactor
thread, behind one seam so that unit tests can run it synchronously.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import Interface, implementer

T = TypeVar("T")


class IBlockingRunner(Interface):
    """
    Runs a blocking callable somewhere it cannot stall the reactor.
    """

    def run(fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """
        Call C{fn(*args)}.

        @param fn: a blocking callable; it must not touch the reactor.
        @return: a Deferred firing with its result or failing with its
            exception, in the reactor thread.
        """


class PoolStopped(Exception):
    """
    The thread pool is stopped (the appliance is stopping): the work was not
    done.
    """


@implementer(IBlockingRunner)
class ThreadPoolRunner(Service):
    """
    An L{IBlockingRunner} over a thread pool that lives as long as the
    service: started with it, and stopped (waiting for running work) with it.
    Work asked of it once stopped fails with L{PoolStopped} (Twisted's pool
    would drop it without a word, and whoever waits for it would wait for
    ever: a scheduled job's next step, say, when the appliance stops
    between two of its steps, holding the stop up until killed).
    """

    def __init__(self, reactor: IReactorFromThreads, name: str, size: int) -> None:
        self._reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=size, name=name)

    def run(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        if self.pool.joined:
            return fail(PoolStopped(f"the {self.pool.name} thread pool is stopped"))
        return deferToThreadPool(self._reactor, self.pool, fn, *args)

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()
