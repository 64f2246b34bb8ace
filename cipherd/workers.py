"""
Mail processing in worker processes, as Postfix runs a content filter
beside the processes that receive and deliver.

Python runs one thread at a time in a process.  With processing (S/MIME,
the webmail tunnel and relay: parsing, policy, certificate choice and
cryptography) in the process that also speaks SMTP in and out and writes
the queue, an encrypting path runs at about half of pass-through however
many cores the machine has (measured: C{bench/README.md}).  Here the main
process hands each message to a worker process over a socket pair and gets
back what processing made; the queue writes and delivers it as before
(L{cipherd.smtp.processing}).  Each message of the pair is a frame
(L{frame}):

    main process                                worker process
    ── ("config", bootstrap config) ──▶         builds processing (L{run})
    ◀── ("ready",)
    ProcessingWorkers.process(envelope, content)
    ── ("state", changes here, MTA config) ──▶  forgets what changed
    ── ("process", job, envelope, content) ──▶  Composite.process
    ◀── ("logs", [(namespace, level, time, text), ...])   MTA and MPA lines
    ◀── ("done", job, made, dispositions, callbacks?, events)
        or ("failed", job, error), or ("local", job): too large to send
    ── ("written", job) ──▶                     runs the result's callbacks
    ── ("stop",) ──▶                            answers what it has, closes

A worker is another reader of the same database, as a second node is: what
it reads it keeps as the main process does, and the main process tells it
before each message whether a change was made here since (settings,
certificates, the MTA config), so a worker never uses what the main process
would no longer use.  Changes made on other nodes reach it as they reach
the main process (the certificate store's change count, the settings'
one-second cache).

Nothing is lost with a worker.  A message whose worker ends before it
answered (a crash, C{kill -9}) stays queued as it was: the queue defers it
as a failed processing, and the next attempt processes it afresh (the same
messages are made, see L{IMessageProcessor}).  It is not processed at once
in the main process: a message that crashes the worker must not crash the
main process too.  A new worker is started.  While no worker is ready, and
for messages over L{LARGE}, the main process processes itself.  A worker
ends when the main process asks (after answering what it has) and at once
when the main process is gone, as if killed with it.
"""

from __future__ import annotations

import builtins
import functools
import io
import os
import pickle
import signal
import socket
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    PredicateResult,
    globalLogBeginner,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from cipherd.core.envelope import Envelope
from cipherd.logs import emit_mail_event, event_text, mail_events
from cipherd.smtp.processing import IMessageProcessor, Made, ProcessingResult

log = Logger(namespace="cipherd.workers")

# Messages larger than this are processed in the main process: copying
# them to a worker and back would cost more memory than the work saves
# time (a 25 MB message stays under 4 times its size in RSS, issue 13).
LARGE = 1024 * 1024
# A worker that ended is started again after RESTART_DELAY seconds; one
# that ended before it was ready, after twice the wait before it, up to
# RESTART_MAX (a worker that cannot start is not started in a tight loop).
RESTART_DELAY = 1.0
RESTART_MAX = 60.0
# How long a stopping worker may take to answer what it has.
STOP_TIMEOUT = 10.0
# A worker keeps a result's callbacks this long for the main process to
# say the result was written (a result that could not be written never is).
WRITTEN_KEPT = 3600.0
# The worker's end of the socket pair: not standard input or output, which
# a library or a child process might write to.
CHANNEL_FD = 3

_HEADER = struct.Struct("!Q")
# Longest frame either end sends or accepts: a message under LARGE and what
# processing makes of it (base64, a tunnel, notices).  A larger result is
# not sent: the main process processes that message itself.
MAX_FRAME = 64 * LARGE


def frame(message: tuple[Any, ...]) -> bytes:
    """
    One message of the pair: its length, then its pickle.  Both ends are
    cipherd processes of one installation, on a socket pair no one else
    holds; what strangers send (envelopes, contents) travels as values, and
    L{loads} makes only the kinds of object the two ends exchange.
    """
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


class _Unpickler(pickle.Unpickler):
    """
    Makes cipherd's own objects, paths, addresses and built-in exceptions;
    refuses every other global (a frame that names one is not ours).
    """

    _MODULES = ("pathlib", "ipaddress", "datetime")

    def find_class(self, module: str, name: str) -> Any:
        if module == "cipherd" or module.startswith("cipherd.") or module in self._MODULES:
            return super().find_class(module, name)
        if module == "builtins":
            found = getattr(builtins, name, None)
            if isinstance(found, type) and (issubclass(found, BaseException)
                                            or found in (set, frozenset, bytearray)):
                return found
        raise pickle.UnpicklingError(f"{module}.{name} is not sent between cipherd processes")


def loads(data: bytes | memoryview) -> Any:
    """
    What L{frame} pickled (its objects as L{_Unpickler} allows them).
    """
    return _Unpickler(io.BytesIO(data)).load()


class FrameError(Exception):
    """
    The other end sent a frame longer than L{MAX_FRAME}.
    """


class Frames:
    """
    Splits a byte stream into the messages L{frame} made.
    """

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._limit = limit

    def feed(self, data: bytes) -> Iterator[tuple[Any, ...]]:
        self._buffer += data
        while len(self._buffer) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buffer)
            if length > self._limit:
                raise FrameError(f"a frame of {length} bytes (at most {self._limit})")
            end = _HEADER.size + length
            if len(self._buffer) < end:
                return
            with memoryview(self._buffer) as view:
                message = loads(view[_HEADER.size:end])
            del self._buffer[:end]
            yield message


class WorkerEnded(Exception):
    """
    The processing worker ended before it answered: the message stays
    queued as it was and is processed again at its next attempt.
    """


# The main process ------------------------------------------------------------


@dataclass
class _Job:
    envelope: Envelope
    content: bytes
    result: Deferred[ProcessingResult]


class _Channel(Protocol):
    """
    One end of the socket pair between the main process and a worker.

    A socket, not the process's pipes: Twisted reads a pipe 8 KB at a time,
    once per turn of a busy reactor, which held results back (a 10 KB
    message signed and encrypted is about 15 KB); it reads a socket 64 KB
    at a time.
    """

    def __init__(self, received: Callable[[tuple[Any, ...]], None],
                 lost: Callable[[], None], broken: Callable[[], None]) -> None:
        self._received = received
        self._lost = lost
        self._broken = broken
        self._frames = Frames()

    def send(self, message: tuple[Any, ...]) -> None:
        if self.transport is not None:
            self.transport.write(frame(message))

    def dataReceived(self, data: bytes) -> None:
        try:
            for message in self._frames.feed(data):
                self._received(message)
        except Exception:
            log.failure("A processing worker sent what cannot be used; it is stopped")
            self._broken()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._lost()


class _Worker(ProcessProtocol):
    """
    The main process's view of one worker: its process, its channel, the
    messages it has.  It has ended once both its process has ended and its
    channel is closed (every answer it sent has been read).

    @ivar delay: how long the pool waited before starting this one.
    """

    def __init__(self, pool: ProcessingWorkers, delay: float) -> None:
        self.pool = pool
        self.delay = delay
        self.channel = _Channel(self._received, self._channel_closed, self.kill)
        self.jobs: dict[int, _Job] = {}
        self.ready = False
        self.stopping = False
        self.state: tuple[Any, ...] | None = None
        self.ended: Deferred[None] = Deferred()
        self.pid: int | None = None
        self._errors = b""
        self._closed = False
        self._reason: Failure | None = None

    def send(self, message: tuple[Any, ...]) -> None:
        self.channel.send(message)

    def _received(self, message: tuple[Any, ...]) -> None:
        self.pool.received(self, message)

    def makeConnection(self, transport: Any) -> None:
        self.pid = transport.pid
        super().makeConnection(transport)

    def errReceived(self, data: bytes) -> None:
        # The worker's service log (its own failures and start-up errors),
        # one event a line: "level|namespace|text".
        lines = (self._errors + data).split(b"\n")
        self._errors = lines.pop()
        for line in lines:
            self._log_line(line)

    def _log_line(self, line: bytes) -> None:
        level, _, rest = line.decode("utf-8", "replace").partition("|")
        namespace, _, text = rest.partition("|")
        try:
            found = LogLevel.levelWithName(level)
        except Exception:
            found, namespace, text = LogLevel.info, "-", line.decode("utf-8", "replace")
        if text.strip():
            log.emit(found, "processing worker {pid}: [{namespace}] {text}", pid=self.pid,
                     namespace=namespace, text=text)

    def processEnded(self, reason: Failure) -> None:
        if self._errors:
            self._log_line(self._errors)
            self._errors = b""
        self._reason = reason
        self._end()

    def _channel_closed(self) -> None:
        self._closed = True
        self._end()

    def _end(self) -> None:
        if self._reason is not None and self._closed and not self.ended.called:
            self.pool.ended(self, self._reason)
            self.ended.callback(None)

    def kill(self) -> None:
        try:
            if self.transport is not None:
                self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass
        if self.channel.transport is not None:
            self.channel.transport.loseConnection()


@implementer(IMessageProcessor)
class ProcessingWorkers(Service):
    """
    An L{IMessageProcessor} that has worker processes do the processing.

    @param local: processes here, while no worker is ready and for large
        messages (each worker builds its own from C{config}).
    @param config: the bootstrap config, sent to each worker.
    @param spawn: starts a worker process for a L{_Worker} (L{spawn_worker}
        with the reactor).
    @param state: what a worker must know before it processes the next
        message: C{(settings changes, certificate changes, keyring changes,
        MTA config)} of this process.
    @param count: how many workers.
    """

    def __init__(self, local: IMessageProcessor, config: Any,
                 spawn: Callable[[_Worker], Any], reactor: IReactorTime,
                 state: Callable[[], tuple[int, int, int, Any]], count: int = 1) -> None:
        self._local = local
        self.config = config
        self._spawn = spawn
        self._reactor = reactor
        self._state = state
        self._count = count
        self._workers: list[_Worker] = []
        self._next_job = 0

    # IMessageProcessor --------------------------------------------------------

    def process(self, envelope: Envelope, content: bytes) -> Deferred[ProcessingResult]:
        ready = [w for w in self._workers if w.ready and not w.stopping]
        if not ready or len(content) > LARGE:
            return self._local.process(envelope, content)
        worker = min(ready, key=lambda w: len(w.jobs))
        self._next_job += 1
        job = _Job(envelope, content, Deferred())
        worker.jobs[self._next_job] = job
        state = self._state()
        if worker.state is None or any(
                a is not b and a != b for a, b in zip(worker.state, state, strict=True)):
            worker.send(("state", *state))
            worker.state = state
        worker.send(("process", self._next_job, envelope, content))
        return job.result

    # The workers' answers -----------------------------------------------------

    def received(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "logs":
            for namespace, level, when, text in message[1]:
                emit_mail_event({"log_namespace": namespace,
                                 "log_level": LogLevel.levelWithName(level),
                                 "log_time": when, "log_format": "{text}", "text": text})
        elif kind == "done":
            _, number, made, dispositions, callbacks, events = message
            job = worker.jobs.pop(number)
            result = ProcessingResult(
                tuple(Made(sender, recipients, job.content if content is None else content)
                      for sender, recipients, content in made),
                dispositions,
                (functools.partial(self._written, worker, number),) if callbacks else (),
                events)
            job.result.callback(result)
        elif kind == "failed":
            _, number, error = message
            worker.jobs.pop(number).result.errback(Failure(error))
        elif kind == "local":
            job = worker.jobs.pop(message[1])
            self._local.process(job.envelope, job.content).chainDeferred(job.result)
        elif kind == "ready":
            worker.ready = True
            log.info("Processing worker {pid} is ready", pid=worker.pid)
        else:
            raise ValueError(f"unknown message {kind!r}")

    async def _written(self, worker: _Worker, number: int) -> None:
        if worker.ended.called:
            # As when the whole appliance stops before the callbacks ran.
            log.info("Processing worker {pid} ended before the results of its message "
                     "{job} were written: what it was to do then is not done",
                     pid=worker.pid, job=number)
        else:
            worker.send(("written", number))

    def ended(self, worker: _Worker, reason: Failure) -> None:
        if worker in self._workers:
            self._workers.remove(worker)
        jobs = list(worker.jobs.values())
        worker.jobs.clear()
        if worker.stopping:
            if jobs or not reason.check(ProcessDone):
                log.info("Processing worker {pid} stopped ({why}); {count} message(s) it had "
                         "stay queued", pid=worker.pid, why=reason.getErrorMessage(),
                         count=len(jobs))
            return
        log.warn("Processing worker {pid} ended ({why}); {count} message(s) it had stay "
                 "queued, to be processed at their next attempt", pid=worker.pid,
                 why=reason.getErrorMessage(), count=len(jobs))
        for job in jobs:
            job.result.errback(WorkerEnded(
                f"the processing worker ended while it had the message "
                f"({reason.getErrorMessage()})"))
        if self.running:
            delay = RESTART_DELAY if worker.ready else min(RESTART_MAX, 2 * worker.delay)
            self._reactor.callLater(delay, self._start_one, delay)

    # Service -----------------------------------------------------------------

    def _start_one(self, delay: float = RESTART_DELAY) -> None:
        if not self.running or len(self._workers) >= self._count:
            return
        worker = _Worker(self, delay)
        self._workers.append(worker)
        try:
            self._spawn(worker)
        except Exception:
            self._workers.remove(worker)
            later = min(RESTART_MAX, 2 * delay)
            log.failure("A processing worker could not be started; trying again in {later} s",
                        later=later)
            self._reactor.callLater(later, self._start_one, later)

    def startService(self) -> None:
        super().startService()
        for _ in range(self._count):
            self._start_one()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        waits = []
        for worker in list(self._workers):
            worker.stopping = True
            worker.send(("stop",))
            timeout = self._reactor.callLater(STOP_TIMEOUT, worker.kill)
            worker.ended.addBoth(_cancel, timeout)
            waits.append(worker.ended)
        return gatherResults(waits).addCallback(lambda _: None)


def _cancel(value: Any, call: IDelayedCall) -> Any:
    if call.active():
        call.cancel()
    return value


class _One(Factory):
    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._protocol


def spawn_worker(reactor: Any) -> Callable[[_Worker], Any]:
    """
    How the main process starts a worker: this Python running L{run} from
    this installation (not from the current directory), the worker's end of
    a socket pair as its file descriptor L{CHANNEL_FD}, standard input and
    output C{/dev/null}, standard error its log.
    """
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-P", "-c", "from cipherd.workers import run; run()"]

    def spawn(worker: _Worker) -> Any:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        null = os.open(os.devnull, os.O_RDWR)
        try:
            process = reactor.spawnProcess(
                worker, sys.executable, argv, env=env,
                childFDs={0: null, 1: null, 2: "r", CHANNEL_FD: theirs.fileno()})
            reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, _One(worker.channel))
        finally:
            os.close(null)
            ours.close()
            theirs.close()
        worker.send(("config", worker.pool.config))
        return process

    return spawn


# The worker process ------------------------------------------------------------


def _portable(error: BaseException) -> BaseException:
    """
    C{error} if the main process can make it again (one of cipherd's, or a
    built-in exception), else a L{RuntimeError} that says what it was.
    """
    try:
        loads(pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


class _Serve(Protocol):
    """
    The worker's end of the socket pair: builds processing from the config
    the main process sends, then answers its messages.

    @param build: C{build(config, reactor)} returns the services to run
        (thread pools), the processor, and what a state message may make
        forget: C{(service, processor, settings, certificates, keyring, mta)}.
    """

    def __init__(self, reactor: Any, build: Callable[..., Any]) -> None:
        self._reactor = reactor
        self._build = build
        self._frames = Frames()
        self._service: Any = None
        self._processor: IMessageProcessor | None = None
        self._settings: Any = None
        self._certificates: Any = None
        self._keyring: Any = None
        self._mta: Any = None
        self._state: tuple[int, int, int] | None = None
        self._jobs = 0
        self._stopping = False
        self._callbacks: dict[int, tuple[float, tuple[Any, ...]]] = {}
        self._running: set[Deferred[None]] = set()
        self._logs: list[tuple[str, str, float, str]] = []
        self._flush: IDelayedCall | None = None

    def log(self, event: LogEvent) -> None:
        """
        Pass an MTA or MPA log event on to the main process: with the next
        answer, or at the end of this turn of the reactor.
        """
        self._logs.append((event["log_namespace"], event.get("log_level", LogLevel.info).name,
                           event.get("log_time", 0.0), event_text(event)))
        if self._flush is None:
            self._flush = self._reactor.callLater(0, self._send_logs)

    def _send_logs(self) -> None:
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        if self._logs and self.transport is not None:
            logs, self._logs = self._logs, []
            self.transport.write(frame(("logs", logs)))

    def send(self, message: tuple[Any, ...]) -> None:
        self._send_logs()  # a message's log lines before its answer
        if self.transport is not None:
            self.transport.write(frame(message))

    def dataReceived(self, data: bytes) -> None:
        for message in self._frames.feed(data):
            self._handle(message)

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "process":
            _, number, envelope, content = message
            assert self._processor is not None
            self._jobs += 1
            d = self._processor.process(envelope, content)
            d.addCallback(self._done, number, content)
            d.addErrback(self._failed, number)
            d.addBoth(self._job_finished)
        elif kind == "state":
            _, settings, certificates, keyring, mta = message
            if self._state is not None and self._state[0] != settings:
                self._settings.forget()
            if self._state is not None and self._state[1] != certificates:
                self._certificates.forget()
            if self._state is not None and self._state[2] != keyring:
                self._keyring.forget()
            self._state = (settings, certificates, keyring)
            self._mta.current = mta
        elif kind == "written":
            self._run_written(message[1])
        elif kind == "config":
            (self._service, self._processor, self._settings, self._certificates,
             self._keyring, self._mta) = self._build(message[1], self._reactor)
            self._service.startService()
            self.send(("ready",))
        elif kind == "stop":
            self._stopping = True
            self._close_when_done()

    def _done(self, result: ProcessingResult, number: int, content: bytes) -> None:
        # What is the message as it came is not sent back: the main process has it.
        made = tuple((m.sender, m.recipients,
                      None if m.content is content or m.content == content else m.content)
                     for m in result.made)
        answer = frame(("done", number, made, result.dispositions, bool(result.written),
                        result.events))
        if len(answer) - _HEADER.size > MAX_FRAME:
            self.send(("local", number))
            return
        now = self._reactor.seconds()
        for key in [k for k, (at, _) in self._callbacks.items() if at + WRITTEN_KEPT < now]:
            del self._callbacks[key]
        if result.written:
            self._callbacks[number] = (now, result.written)
        self._send_logs()
        if self.transport is not None:
            self.transport.write(answer)

    def _failed(self, failure: Failure, number: int) -> None:
        error = failure.value
        assert error is not None
        self.send(("failed", number, _portable(error)))

    def _job_finished(self, _: Any) -> None:
        self._jobs -= 1
        self._close_when_done()

    def _close_when_done(self) -> None:
        """
        Once stopping and everything is answered and run: close the channel
        when what is written has been sent; then stop (L{connectionLost}).
        """
        if self._stopping and not self._jobs and not self._running:
            self._send_logs()
            if self.transport is not None:
                self.transport.loseConnection()

    def _run_written(self, number: int) -> None:
        _, callbacks = self._callbacks.pop(number, (0.0, ()))

        async def run() -> None:
            for callback in callbacks:
                try:
                    await callback()
                except Exception:
                    log.failure("After processing's results were written")

        d = Deferred.fromCoroutine(run())
        if not d.called:
            self._running.add(d)
            d.addBoth(self._written_run, d)

    def _written_run(self, _: Any, d: Deferred[None]) -> None:
        self._running.discard(d)
        self._close_when_done()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self._stopping:
            # The main process is gone (killed): its queue still has every
            # message this one holds.  Nothing more is written, as if
            # killed with it.
            os._exit(0)
            return  # (os._exit does not return; a test's stand-in does)
        d = self._service.stopService() if self._service is not None else None
        DeferredList([d] if isinstance(d, Deferred) else []).addBoth(
            lambda _: self._reactor.stop())


def _is_mail(event: LogEvent) -> bool:
    namespace = event.get("log_namespace", "")
    return bool(namespace.startswith(("cipherd.mta", "cipherd.mpa")))


@implementer(ILogFilterPredicate)
def _not_mail(event: LogEvent) -> PredicateResult:
    # MTA and MPA lines go to the main process's logs (which also put their
    # warnings in the service log), not twice.
    return PredicateResult.no if _is_mail(event) else PredicateResult.maybe


def _stderr_line(event: LogEvent) -> str:
    # The main process puts its own time stamp on each line (_Worker).
    level = event.get("log_level", LogLevel.info).name
    return f"{level}|{event.get('log_namespace', '-')}|{event_text(event)}\n"


@implementer(ILogObserver)
class _MailForward:
    def __init__(self, serve: _Serve) -> None:
        self._serve = serve

    def __call__(self, event: LogEvent) -> None:
        if _is_mail(event):
            self._serve.log(event)


def run() -> None:
    """
    Run as a worker on L{CHANNEL_FD}.
    """
    from twisted.internet import reactor

    from cipherd.service import build_worker

    # Stopped by the main process (or killed with it), not by the signals
    # a terminal sends its whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(
        FileLogObserver(sys.stderr, _stderr_line), [_not_mail])], redirectStandardIO=False)
    serve = _Serve(reactor, build_worker)
    mail_events.addObserver(_MailForward(serve))
    reactor.adoptStreamConnection(  # type: ignore[attr-defined]
        CHANNEL_FD, socket.AF_UNIX, _One(serve))
    os.close(CHANNEL_FD)  # the reactor has its own copy
    reactor.run(installSignalHandlers=False)  # type: ignore[call-arg]
