"""
Processing in worker processes (L{cipherd.workers}): the main process's
L{ProcessingWorkers} and a worker's L{_Serve} joined by an in-memory pipe,
with a L{Clock}; the real process is in C{test_gateway_appliance}.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import LogLevel, PredicateResult
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from cipherd.config import config_from_string
from cipherd.core.envelope import Envelope, Outcome
from cipherd.logs import mail_events
from cipherd.smtp.config import MTAConfig
from cipherd.smtp.processing import IMessageProcessor, Made, ProcessingResult, Results
from cipherd.store import DatabaseUnavailable
from cipherd.workers import (
    LARGE,
    MAX_FRAME,
    RESTART_DELAY,
    STOP_TIMEOUT,
    FrameError,
    Frames,
    ProcessingWorkers,
    WorkerEnded,
    _MailForward,
    _not_mail,
    _Serve,
    _Worker,
    frame,
    loads,
)

ENVELOPE = Envelope("Q1", "a@example.org", ("b@example.net", "c@example.net"), 1.0)
CONTENT = b"Subject: hello\r\n\r\nbody\r\n"
ENCRYPTED = b"Subject: hello\r\nContent-Type: application/pkcs7-mime\r\n\r\nMIAG\r\n"


@implementer(IMessageProcessor)
@dataclass
class Recording:
    """
    A processor that says where it ran and what it was asked; C{answer}
    decides what it makes (the message unchanged by default).
    """

    name: str
    calls: list[tuple[Envelope, bytes]] = field(default_factory=list)
    answer: Callable[[Envelope, bytes], Deferred[ProcessingResult]] | None = None

    def process(self, envelope: Envelope, content: bytes) -> Deferred[ProcessingResult]:
        self.calls.append((envelope, content))
        if self.answer is not None:
            return self.answer(envelope, content)
        return succeed(ProcessingResult.unchanged(envelope, content))


@dataclass
class Forgetting:
    forgotten: int = 0

    def forget(self) -> None:
        self.forgotten += 1


@dataclass
class MTA:
    current: Any = None


@dataclass
class Service:
    running: bool = False
    stopped: bool = False

    def startService(self) -> None:
        self.running = True

    def stopService(self) -> None:
        self.stopped = True


class Pipe:
    """
    One direction of the socket pair: what is written arrives at once
    (in pieces of C{piece} bytes, as a socket may cut it).
    """

    def __init__(self, deliver: Callable[[bytes], None], piece: int = 7000,
                 closed: Callable[[], None] = lambda: None) -> None:
        self._deliver = deliver
        self._piece = piece
        self._on_close = closed
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)
        for start in range(0, len(data), self._piece):
            self._deliver(data[start:start + self._piece])

    def loseConnection(self) -> None:
        if not self.closed:
            self.closed = True
            self._on_close()


@dataclass
class FakeProcess:
    pid: int
    signals: list[str] = field(default_factory=list)

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class Harness:
    """
    A pool of one worker whose "process" is a L{_Serve} in this process.
    """

    def __init__(self, clock: Clock, remote: Recording | None = None) -> None:
        self.clock = clock
        self.local = Recording("local")
        self.remote = remote or Recording("worker")
        self.settings = Forgetting()
        self.certificates = Forgetting()
        self.keyring = Forgetting()
        self.mta = MTA()
        self.service = Service()
        self.state: list[Any] = [0, 0, 0, "mta-1"]
        self.spawned: list[_Worker] = []
        self.serves: list[_Serve] = []
        self.stops = 0
        self.pool = ProcessingWorkers(self.local, {"config": True}, self.spawn, clock,
                                      lambda: tuple(self.state))  # type: ignore[arg-type]

    def build(self, config: Any, reactor: Any) -> tuple[Any, ...]:
        assert config == {"config": True}
        return (self.service, self.remote, self.settings, self.certificates, self.keyring,
                self.mta)

    def spawn(self, worker: _Worker) -> None:
        serve = _Serve(self, self.build)

        def closed_by_worker() -> None:  # both ends see the socket close
            serve.connectionLost(None)
            worker.channel.connectionLost(None)

        serve.makeConnection(Pipe(worker.channel.dataReceived,  # type: ignore[arg-type]
                                  closed=closed_by_worker))
        worker.channel.makeConnection(Pipe(serve.dataReceived))  # type: ignore[arg-type]
        worker.makeConnection(FakeProcess(1000 + len(self.spawned)))  # type: ignore[arg-type]
        self.spawned.append(worker)
        self.serves.append(serve)
        worker.send(("config", worker.pool.config))

    # What _Serve asks of its reactor.
    def seconds(self) -> float:
        return self.clock.seconds()

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any) -> Any:
        return self.clock.callLater(delay, f, *args)

    def stop(self) -> None:
        self.stops += 1

    def end(self, worker: _Worker, reason: Exception) -> None:
        """
        The worker's process ended (and with it its end of the socket).
        """
        worker.processEnded(Failure(reason))
        worker.channel.connectionLost(None)


@pytest.fixture
def harness() -> Harness:
    h = Harness(Clock())
    h.pool.startService()
    return h


def encrypting(
        written: Callable[[], Any]) -> Callable[[Envelope, bytes], Deferred[ProcessingResult]]:
    """
    A processor's answer: the message encrypted, with C{written} to run once
    that is written.
    """
    def answer(envelope: Envelope, content: bytes) -> Deferred[ProcessingResult]:
        made = Results()
        made.deliver(envelope.sender, envelope.recipients, ENCRYPTED)
        made.when_written(written)
        return succeed(made.result())
    return answer


def results(d: Deferred[ProcessingResult]) -> ProcessingResult:
    found: list[Any] = []
    d.addBoth(found.append)
    assert found, "not answered"
    if isinstance(found[0], Failure):
        found[0].raiseException()
    return found[0]  # type: ignore[no-any-return]


# Frames ------------------------------------------------------------------------


def test_frames_come_out_whole_however_the_stream_is_cut() -> None:
    messages = [("process", 1, ENVELOPE, CONTENT), ("logs", []), ("done", 2, (), (), False, ())]
    stream = b"".join(frame(m) for m in messages)
    for piece in (1, 3, 8, 9, len(stream)):
        frames = Frames()
        out = [m for start in range(0, len(stream), piece)
               for m in frames.feed(stream[start:start + piece])]
        assert out == messages


def test_a_frame_over_the_limit_is_refused_before_it_is_read() -> None:
    frames = Frames(limit=100)
    with pytest.raises(FrameError, match="a frame of 101 bytes"):
        list(frames.feed((101).to_bytes(8, "big")))
    assert MAX_FRAME > 2 * LARGE  # a message under LARGE and what is made of it fit


# The pool ----------------------------------------------------------------------


def test_the_pool_is_a_message_processor(harness: Harness) -> None:
    assert verifyObject(IMessageProcessor, harness.pool)


def test_messages_go_to_the_worker_once_it_is_ready_and_here_before() -> None:
    h = Harness(Clock())
    assert results(h.pool.process(ENVELOPE, CONTENT)).made[0].content == CONTENT
    assert len(h.local.calls) == 1  # not started: processed here
    h.pool.startService()
    assert h.service.running and h.spawned[0].ready
    result = results(h.pool.process(ENVELOPE, CONTENT))
    assert len(h.remote.calls) == 1 and len(h.local.calls) == 1
    assert result.is_unchanged(ENVELOPE, CONTENT)
    # The unchanged content is not sent back: the main process's own is used.
    assert result.made[0].content is CONTENT
    written = b"".join(h.serves[0].transport.written)  # type: ignore[union-attr]
    done = list(Frames().feed(written))
    assert ("done", 1, (("a@example.org", ENVELOPE.recipients, None),),
            result.dispositions, False, ()) in done


def test_a_large_message_is_processed_here(harness: Harness) -> None:
    big = CONTENT + b"x" * LARGE
    results(harness.pool.process(ENVELOPE, big))
    assert len(harness.local.calls) == 1 and not harness.remote.calls


def test_what_the_worker_made_arrives_as_made_with_its_callbacks_run_there() -> None:
    ran: list[str] = []

    def encrypt(envelope: Envelope, content: bytes) -> Deferred[ProcessingResult]:
        made = Results()
        made.deliver(envelope.sender, envelope.recipients[:1], ENCRYPTED, "S/MIME")
        made.settle(envelope.recipients[1:], Outcome("bounced", "5.7.1", "no certificate"))
        made.send(Made("", (envelope.sender,), b"Subject: notice\r\n\r\nnot sent\r\n"))

        async def written() -> None:
            ran.append("written")

        made.when_written(written)
        return succeed(made.result())

    h = Harness(Clock(), Recording("worker", answer=encrypt))
    h.pool.startService()
    result = results(h.pool.process(ENVELOPE, CONTENT))
    assert [m.content for m in result.made] == [ENCRYPTED,
                                                 b"Subject: notice\r\n\r\nnot sent\r\n"]
    assert [d.outcome.status for d in result.dispositions] == ["sent", "bounced"]
    assert len(result.written) == 1 and not ran
    Deferred.fromCoroutine(result.written[0]())  # type: ignore[arg-type]
    assert ran == ["written"]


def test_callbacks_of_a_result_never_written_are_dropped_after_an_hour() -> None:
    async def nothing() -> None:
        pass

    h = Harness(Clock(), Recording("worker", answer=encrypting(nothing)))
    h.pool.startService()
    results(h.pool.process(ENVELOPE, CONTENT))
    assert len(h.serves[0]._callbacks) == 1
    h.clock.advance(3601)
    results(h.pool.process(ENVELOPE, CONTENT))
    assert list(h.serves[0]._callbacks) == [2]


def test_an_unavailable_database_in_the_worker_is_one_here() -> None:
    h = Harness(Clock(), Recording(
        "worker", answer=lambda e, c: fail(DatabaseUnavailable("database is locked"))))
    h.pool.startService()
    with pytest.raises(DatabaseUnavailable, match="database is locked"):
        results(h.pool.process(ENVELOPE, CONTENT))


def test_an_error_that_cannot_cross_says_what_it_was() -> None:
    # json's error is not one the main process makes from a frame.
    error = json.JSONDecodeError("Expecting value", "x", 0)
    h = Harness(Clock(), Recording("worker", answer=lambda e, c: fail(error)))
    h.pool.startService()
    with pytest.raises(RuntimeError, match="JSONDecodeError: Expecting value"):
        results(h.pool.process(ENVELOPE, CONTENT))


def test_only_the_objects_the_two_ends_exchange_are_unpickled() -> None:
    config = config_from_string('data_dir = "var"\n', base=Path("/srv/cipherd"))
    mta = replace(MTAConfig(), transports=(("example.com", "[127.0.0.1]:2525"),))
    result = Results()
    result.settle(("b@example.net",), Outcome("bounced", "5.7.1", "refused"))
    for value in (config, mta, ENVELOPE, result.result().dispositions, ip_network("10.0.0.0/8"),
                  DatabaseUnavailable("locked"), KeyError("x"), {1, 2}):
        assert loads(pickle.dumps(value)) == value or repr(loads(pickle.dumps(value))) == repr(
            value)
    for hostile in (os.system, subprocess.Popen, pickle.loads):
        with pytest.raises(pickle.UnpicklingError, match="is not sent between cipherd"):
            loads(pickle.dumps(hostile))


def test_a_worker_that_sends_what_cannot_be_read_is_killed(harness: Harness) -> None:
    worker = harness.spawned[0]
    data = pickle.dumps(("logs", os.system))
    worker.channel.dataReceived(len(data).to_bytes(8, "big") + data)
    assert worker.transport.signals == ["KILL"]  # type: ignore[union-attr]


def test_a_result_too_large_to_send_is_made_here(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(Clock(), Recording("worker", answer=lambda e, c: succeed(
        ProcessingResult((Made(e.sender, e.recipients, b"x" * 500),), ()))))
    h.pool.startService()
    monkeypatch.setattr("cipherd.workers.MAX_FRAME", 400)
    result = results(h.pool.process(ENVELOPE, CONTENT))
    assert len(h.remote.calls) == 1 and len(h.local.calls) == 1
    assert result.made[0].content == CONTENT  # the local processor's answer


def test_the_worker_forgets_what_changed_here_before_the_next_message() -> None:
    seen: list[tuple[int, int, int, Any]] = []

    def look(envelope: Envelope, content: bytes) -> Deferred[ProcessingResult]:
        seen.append((h.settings.forgotten, h.certificates.forgotten, h.keyring.forgotten,
                     h.mta.current))
        return succeed(ProcessingResult.unchanged(envelope, content))

    h = Harness(Clock(), Recording("worker", answer=look))
    h.pool.startService()
    results(h.pool.process(ENVELOPE, CONTENT))
    results(h.pool.process(ENVELOPE, CONTENT))
    h.state[0] += 1  # a setting changed here
    results(h.pool.process(ENVELOPE, CONTENT))
    h.state[1] += 1  # a certificate imported here
    h.state[3] = "mta-2"  # the MTA config changed
    results(h.pool.process(ENVELOPE, CONTENT))
    h.state[2] += 1  # a PGP key imported here
    results(h.pool.process(ENVELOPE, CONTENT))
    # What each message saw while it was processed.
    assert seen == [(0, 0, 0, "mta-1"), (0, 0, 0, "mta-1"), (1, 0, 0, "mta-1"),
                    (1, 1, 0, "mta-2"), (1, 1, 1, "mta-2")]


def test_the_workers_log_lines_are_logged_here_before_its_answer() -> None:
    order: list[Any] = []

    def observe(event: dict[str, Any]) -> None:
        order.append((event["log_namespace"], event["log_level"], event.get("text", "")))

    def logging(envelope: Envelope, content: bytes) -> Deferred[ProcessingResult]:
        # What the worker's observer (_MailForward) passes on, in the same
        # turn of its reactor as the answer.
        h.serves[0].log({"log_namespace": "cipherd.mpa.gateway", "log_level": LogLevel.warn,
                         "log_time": 5.0, "log_format": "{q}: S/MIME {what}\nline",
                         "q": "Q1", "what": "failed"})
        return succeed(ProcessingResult.unchanged(envelope, content))

    h = Harness(Clock(), Recording("worker", answer=logging))
    h.pool.startService()
    mail_events.addObserver(observe)
    try:
        h.pool.process(ENVELOPE, CONTENT).addCallback(lambda _: order.append("answer"))
    finally:
        mail_events.removeObserver(observe)
    assert order == [("cipherd.mpa.gateway", LogLevel.warn, "Q1: S/MIME failed\\nline"),
                     "answer"]


def test_log_lines_without_an_answer_go_at_the_end_of_the_turn(harness: Harness) -> None:
    seen: list[str] = []
    mail_events.addObserver(lambda e: seen.append(e["text"]))  # type: ignore[arg-type]
    try:
        harness.serves[0].log({"log_namespace": "cipherd.mpa", "log_format": "swept",
                               "log_time": 1.0})
        assert not seen
        harness.clock.advance(0)
    finally:
        mail_events._observers.pop()  # type: ignore[attr-defined]
    assert seen == ["swept"]


def test_messages_of_a_worker_that_ended_stay_queued_and_it_is_started_again(
        harness: Harness) -> None:
    pending: Deferred[ProcessingResult] = Deferred()
    harness.remote.answer = lambda e, c: pending
    first = harness.pool.process(ENVELOPE, CONTENT)
    second = harness.pool.process(ENVELOPE, CONTENT + b"2")
    assert len(harness.remote.calls) == 2
    harness.end(harness.spawned[0], ProcessTerminated(signal=9))
    # Not processed here at once (a message that kills the worker must not
    # kill this process): the queue defers them, to be processed again.
    assert not harness.local.calls
    for d in (first, second):
        with pytest.raises(WorkerEnded, match="ended while it had the message"):
            results(d)
    # Nothing goes to the worker that ended; a new one after RESTART_DELAY.
    results(harness.pool.process(ENVELOPE, CONTENT))
    assert len(harness.local.calls) == 1 and len(harness.spawned) == 1
    harness.clock.advance(RESTART_DELAY)
    assert len(harness.spawned) == 2 and harness.spawned[1].ready


def test_a_worker_has_ended_only_once_its_answers_are_read(harness: Harness) -> None:
    pending: Deferred[ProcessingResult] = Deferred()
    harness.remote.answer = lambda e, c: pending
    d = harness.pool.process(ENVELOPE, CONTENT)
    worker = harness.spawned[0]
    worker.processEnded(Failure(ProcessDone(0)))  # before its last answer was read
    assert not worker.ended.called
    pending.callback(ProcessingResult.unchanged(ENVELOPE, CONTENT))
    assert results(d).is_unchanged(ENVELOPE, CONTENT)
    worker.channel.connectionLost(None)
    assert worker.ended.called


def test_a_worker_that_keeps_ending_before_it_is_ready_is_started_less_often() -> None:
    h = Harness(Clock())
    h.spawn = lambda worker: (h.spawned.append(worker),  # type: ignore[method-assign]
                              worker.makeConnection(FakeProcess(7)))
    h.pool = ProcessingWorkers(h.local, {}, h.spawn, h.clock, lambda: tuple(h.state))
    h.pool.startService()
    delays = []
    for _ in range(8):
        h.end(h.spawned[-1], ProcessTerminated(exitCode=1))
        before = h.clock.seconds()
        while len(h.spawned) == len(delays) + 1:
            h.clock.advance(0.5)
        delays.append(h.clock.seconds() - before)
    assert delays == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_a_worker_that_cannot_be_started_is_tried_again_later() -> None:
    h = Harness(Clock())
    tries: list[float] = []

    def spawn(worker: _Worker) -> None:
        tries.append(h.clock.seconds())
        if len(tries) < 3:
            raise OSError(24, "Too many open files")
        h.spawn(worker)

    h.pool = ProcessingWorkers(h.local, {"config": True}, spawn, h.clock,
                               lambda: tuple(h.state))
    h.pool.startService()
    for _ in range(20):
        h.clock.advance(0.5)
    assert tries == [0.0, 2.0, 6.0] and h.spawned[0].ready


def test_stopping_lets_the_worker_answer_and_run_what_it_has_then_it_stops(
        harness: Harness) -> None:
    ran: list[str] = []
    later: Deferred[None] = Deferred()

    async def written() -> None:
        await later
        ran.append("written")

    harness.remote.answer = encrypting(written)
    result = results(harness.pool.process(ENVELOPE, CONTENT))
    Deferred.fromCoroutine(result.written[0]())  # type: ignore[arg-type]
    # One more message under way when the stop comes.
    pending: Deferred[ProcessingResult] = Deferred()
    harness.remote.answer = lambda e, c: pending
    d = harness.pool.process(ENVELOPE, CONTENT)
    stopped = harness.pool.stopService()
    assert harness.stops == 0  # still has a message, and a callback running
    pending.callback(ProcessingResult.unchanged(ENVELOPE, CONTENT))
    assert results(d).is_unchanged(ENVELOPE, CONTENT)  # its answer was sent
    assert harness.stops == 0 and not ran
    later.callback(None)
    assert ran == ["written"] and harness.stops == 1 and harness.service.stopped
    harness.end(harness.spawned[0], ProcessDone(0))
    assert stopped.called  # type: ignore[union-attr]
    harness.clock.advance(RESTART_DELAY * 10)
    assert len(harness.spawned) == 1  # not started again


def test_a_worker_that_does_not_stop_in_time_is_killed(harness: Harness) -> None:
    harness.remote.answer = lambda e, c: Deferred()  # never answers
    d = harness.pool.process(ENVELOPE, CONTENT)
    stopped = harness.pool.stopService()
    harness.clock.advance(STOP_TIMEOUT)
    worker = harness.spawned[0]
    assert worker.transport.signals == ["KILL"]  # type: ignore[union-attr]
    harness.end(worker, ProcessTerminated(signal=9))
    assert stopped.called  # type: ignore[union-attr]
    # Stopping: the message stays queued as it was, for the next start.
    assert not d.called and not harness.local.calls


def test_callbacks_of_a_worker_that_ended_are_not_run_and_that_is_said(
        harness: Harness) -> None:
    async def nothing() -> None:
        pass

    harness.remote.answer = encrypting(nothing)
    result = results(harness.pool.process(ENVELOPE, CONTENT))
    worker = harness.spawned[0]
    harness.end(worker, ProcessTerminated(signal=9))
    sent = len(worker.channel.transport.written)  # type: ignore[union-attr]
    Deferred.fromCoroutine(result.written[0]())  # type: ignore[arg-type]
    assert len(worker.channel.transport.written) == sent  # type: ignore[union-attr]


def test_a_worker_whose_main_process_is_gone_exits_at_once(
        monkeypatch: pytest.MonkeyPatch, harness: Harness) -> None:
    exits: list[int] = []
    monkeypatch.setattr("cipherd.workers.os._exit", exits.append)
    harness.serves[0].connectionLost(Failure(ConnectionError()))
    assert exits == [0] and not harness.service.stopped


def test_only_mta_and_mpa_events_are_passed_on(harness: Harness) -> None:
    forward = _MailForward(harness.serves[0])
    forward({"log_namespace": "cipherd.mpa.relay", "log_format": "stored", "log_time": 1.0})
    forward({"log_namespace": "cipherd.store", "log_format": "not mail", "log_time": 1.0})
    forward({"log_namespace": "cipherd.mta", "log_format": "sent", "log_time": 1.0})
    assert [e[0] for e in harness.serves[0]._logs] == ["cipherd.mpa.relay", "cipherd.mta"]
    assert _not_mail({"log_namespace": "cipherd.mpa"}) == PredicateResult.no
    assert _not_mail({"log_namespace": "cipherd.workers"}) == PredicateResult.maybe
