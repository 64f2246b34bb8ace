"""
A queue that is killed (SIGKILL, as C{kill -9}) at the moment processing's
results are settled: run as C{python -m tests.crash_at_commit SPOOL WHEN}
with WHEN C{before} (the results are written, the original not yet
settled: the commit's rename has not happened) or C{after} (the rename
happened, the results are not yet queued in active/).

L{Splitting} is the processing both this process and the test's restarted
queue use: it makes the same three messages every time.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from twisted.internet import error
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from cipherd.core.counters import Counters
from cipherd.core.envelope import Envelope, Outcome
from cipherd.smtp.config import MTAConfig, apply_changes
from cipherd.smtp.processing import IMessageProcessor, Made, ProcessingResult, Results
from cipherd.smtp.queue import MailQueue, QueueRunner
from cipherd.smtp.routing import IHopResolver, NextHop
from cipherd.smtp.spool import DirectorySpool
from cipherd.testing import SynchronousRunner, result_of

PROCESSED = b"Subject: processed\r\n\r\nthe original, as processing left it\r\n"
TUNNEL = b"Subject: tunnel\r\n\r\na tunnel message\r\n"
NOTICE = b"Subject: notice\r\n\r\nnot sent to c@example.com\r\n"


@implementer(IMessageProcessor)
class Splitting:
    """
    For a message to a, b and c: a gets it processed, b goes into a tunnel
    message to t, c is refused with a notice to the sender.
    """

    def __init__(self) -> None:
        self.calls = 0

    def process(self, envelope: Envelope, content: bytes) -> Deferred[ProcessingResult]:
        self.calls += 1
        results = Results()
        results.deliver(envelope.sender, ["a@example.com"], PROCESSED, "S/MIME encrypted")
        results.hand_on(["b@example.com"], Made("tunnel@example.org", ("t@example.com",),
                                                TUNNEL),
                        Outcome("sent", "2.0.0", "webmail tunnel message 1"), "webmail")
        results.settle(["c@example.com"], Outcome("bounced", "5.7.1", "not encrypted",
                                                  notified=True))
        results.send(Made("", (envelope.sender,), NOTICE))
        return succeed(results.result())


@implementer(IHopResolver)
class Nowhere:
    def resolve(self, hop: NextHop) -> Deferred[list[tuple[str, str]]]:
        return succeed([(hop.host, "192.0.2.1")])


def config() -> MTAConfig:
    changes = {"my_hostname": "gw.example.org", "external_relay_host": "[relay.example.net]"}
    value, errors = apply_changes(MTAConfig(), changes)
    assert not errors
    return value


def main(spool: Path, when: str) -> None:
    def rename(source: Path, target: Path) -> None:
        # The commit's one rename: incoming/<id>.commit over the message.
        commit = source.parent.name == "incoming" and source.name == f"{target.name}.commit"
        if commit and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        os.rename(source, target)
        if commit and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)

    clock = Clock()
    clock.advance(1_800_000_000)
    queue = MailQueue(DirectorySpool(spool, rename=rename), SynchronousRunner(), clock)
    runner = QueueRunner(queue, config, Nowhere(),
                         lambda *_: fail(error.ConnectionRefusedError()), clock, Splitting(),
                         counters=Counters(clock))
    result_of(runner.scan())
    sys.exit("the queue was not killed at the commit")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
