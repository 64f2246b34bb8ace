"""
The thread pools' runner: work asked of a stopped pool fails at once,
instead of being dropped by Twisted's pool (whoever waited for it would wait
for ever, and hold the appliance's stop up until it was killed).
"""

from __future__ import annotations

from twisted.internet import reactor

from cipherd.threads import PoolStopped, ThreadPoolRunner


def test_work_asked_of_a_stopped_pool_fails() -> None:
    runner = ThreadPoolRunner(reactor, "test-pool", 2)
    runner.startService()
    runner.stopService()
    failures: list[BaseException] = []
    runner.run(lambda: 1).addErrback(lambda f: failures.append(f.value))
    assert len(failures) == 1 and isinstance(failures[0], PoolStopped)
    assert "test-pool" in str(failures[0])

