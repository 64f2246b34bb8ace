"""
The MTA and MPA logs: plain text files under ``<data_dir>/logs``, rotated by
size, with the line shapes of the guide so an administrator can
troubleshoot with it in hand::

    2026-11-28T10:15:02Z INFO Webmail is disabled for the sender...
    2026-11-28T10:15:03Z 3E808D2: to=<webmail@webmail.local>, ... status=deferred (...)

Code logs to them with L{mail_logger} (namespaces C{cipherd.mta...} and
C{cipherd.mpa...}), on a stream of their own; warnings and failures also
reach the service log.  Nothing sensitive belongs in them.

Writing is off the caller's path: logging a line formats it and queues it
in memory, and each log's writer thread writes the queued lines in order,
in one write for all that gathered while it was waking or writing (a busy
MTA logs thousands of lines a second, and formatting and writing each on
the reactor cost about a tenth of its time).  Reading the log
(L{MailLog.tail}, the admin pages), rotating it and stopping the service
write what is queued first, so a reader in the process sees every line
logged before it asked; a reader of the file itself sees a line as soon as
the writer thread has had its turn.  A crash
(C{kill -9}) loses what was queued and not yet written: the lines of that
last moment, at most the last fraction of a second under a load the disk
cannot keep up with; past L{MAX_PENDING_LINES} queued lines the logging
thread writes them itself.
As before, the file is not fsynced: what the operating system holds is
lost with the machine (power loss), not with the process.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from twisted.application.service import Service
from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogPublisher,
    formatEvent,
    globalLogPublisher,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

from cipherd.core.counters import ICounters

# The guide writes WARN, not WARNING.
_LEVEL_NAMES = {
    LogLevel.debug: "DEBUG",
    LogLevel.info: "INFO",
    LogLevel.warn: "WARN",
    LogLevel.error: "ERROR",
    LogLevel.critical: "CRITICAL",
}

MAX_TAIL_LINES = 10_000
# Queued lines past which the logging thread writes them itself: about
# 1.5 MB of MTA lines, more than a second's worth at the MTA's rates.
MAX_PENDING_LINES = 10_000
# How long the writer, once woken, lets more lines gather before writing.
# No time by default: end-to-end tests read the file itself right after a
# mail session.  10 ms saved the reactor another ~0.1-0.2 ms of CPU per
# pass-through message (fewer thread wake-ups, each a switch of the GIL and
# often of the CPU) on 2 busy cores, 2026-12-04.
BATCH_DELAY = 0.0

_log = Logger()

# The MTA and MPA events' own stream: a busy MTA logs several lines per
# message, and formatting each twice (here and in the service log) cost a
# third of its CPU.  What is worth a look in the service log too (warnings,
# errors, failures with their traceback) is passed on to the global stream.
mail_events = LogPublisher()


@implementer(ILogObserver)
def _mail_observer(event: LogEvent) -> None:
    mail_events(event)
    if event.get("log_failure") is not None or event.get(
            "log_level", LogLevel.info) >= LogLevel.warn:
        globalLogPublisher(event)


def emit_mail_event(event: LogEvent) -> None:
    """
    Log C{event} as a L{mail_logger} would (an event a processing worker
    logged, passed on to the process that keeps the logs).
    """
    _mail_observer(event)


def mail_logger(namespace: str) -> Logger:
    """
    A logger for the MTA (C{cipherd.mta...}) or MPA (C{cipherd.mpa...}) log.
    """
    return Logger(namespace=namespace, observer=_mail_observer)

LOG_NAMES = ("mta", "mpa")


def format_line(event: LogEvent, *, with_level: bool) -> str:
    """
    One log line for C{event}; line breaks in the text are escaped so one
    event is always one line (no log injection through message content).
    """
    return _line(_time_stamp(event.get("log_time", 0)), event, with_level)


def _time_stamp(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(event: LogEvent) -> str:
    """
    C{formatEvent(event)}, by C{str.format_map} where that gives the same
    text (a plain format string: about a tenth of the cost); the rest, such
    as Twisted's C{{name()}} calls, and every error, by C{formatEvent}.
    """
    form = event.get("log_format")
    if type(form) is str and "log_flattened" not in event:
        try:
            return form.format_map(event)
        except Exception:  # noqa: S110 - formatEvent calls, or describes the error
            pass
    return formatEvent(event)


def event_text(event: LogEvent) -> str:
    """
    What a log line says of C{event}, without time stamp and level: its
    text, the failure it carries, line breaks escaped.
    """
    text = _text(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text} ({failure.type.__name__}: {failure.getErrorMessage()})"
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _line(stamp: str, event: LogEvent, with_level: bool) -> str:
    text = event_text(event)
    if with_level:
        level = _LEVEL_NAMES.get(event.get("log_level", LogLevel.info), "INFO")
        return f"{stamp} {level} {text}"
    return f"{stamp} {text}"


@dataclass(frozen=True)
class LogQuery:
    """
    Which log lines to show: those containing C{text} (a queue id, an
    address, words; case ignored) logged from C{since} to C{until}
    (C{YYYY-MM-DDTHH:MM:SS}, UTC, as the lines begin; empty: no bound).
    """

    text: str = ""
    since: str = ""
    until: str = ""

    def matches(self, line: str) -> bool:
        stamp = line[:19]
        return ((not self.text or self.text.lower() in line.lower())
                and (not self.since or stamp >= self.since)
                and (not self.until or stamp <= self.until))


@implementer(ILogObserver)
class MailLog:
    """
    Writes the events of one namespace to a size-rotated file.

    Logging a line only formats it and queues it in memory; the log's
    writer thread (L{start}) writes what is queued in one go, so the caller
    makes no system call for each line (see the
    module docstring for what a crash can lose).  L{tail}, L{flush} and
    L{close} write whatever is queued first.  Lines are written in the order
    they were logged, whichever thread logged them.

    @param path: the log file; rotated files are C{path.1}, C{path.2}, ...
    @param namespace: events whose namespace is this or below it are kept.
    @param with_level: prefix the level (MPA) or not (MTA, as Postfix).
    @param max_pending: at this many queued lines the caller writes them
        itself, so a writer that cannot keep up (a slow disk) holds back the
        loggers instead of filling memory.
    @param batch_delay: seconds the writer waits, once woken by a line, for
        more lines to write with it (a close does not wait for it).
    """

    def __init__(
        self, path: Path, namespace: str, *, max_bytes: int, keep: int, with_level: bool,
        max_pending: int = MAX_PENDING_LINES, batch_delay: float = BATCH_DELAY,
    ) -> None:
        self.path = path
        self.namespace = namespace
        self._with_level = with_level
        self._keep = keep
        self._max_bytes = max_bytes
        self._max_pending = max_pending
        self._batch_delay = batch_delay
        self._file = LogFile(
            path.name, str(path.parent), rotateLength=max_bytes, maxRotatedFiles=keep,
            defaultMode=0o600,
        )
        # Appended to by any thread, drained in order under _lock (a deque's
        # append and popleft are atomic).
        self._pending: deque[str] = deque()
        # Held while writing, rotating and reading the files.
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._writer: threading.Thread | None = None
        self._closed = False
        # (second, its time stamp), replaced whole: loggers in other threads.
        self._stamp: tuple[int, str] = (-1, "")

    def __call__(self, event: LogEvent) -> None:
        namespace = event.get("log_namespace", "")
        if namespace != self.namespace and not namespace.startswith(self.namespace + "."):
            return
        if self._closed:
            return
        self._pending.append(self._format(event))
        if len(self._pending) >= self._max_pending:
            self.flush()
        elif self._writer is not None and not self._wake.is_set():
            self._wake.set()

    def _format(self, event: LogEvent) -> str:
        """
        L{format_line}, with the time stamp made once per second: at a few
        thousand lines a second, C{strftime} and Twisted's general formatter
        were most of a line's cost.
        """
        when = event.get("log_time", 0)
        stamp = self._stamp
        if stamp[0] != int(when):
            stamp = self._stamp = (int(when), _time_stamp(when))
        return _line(stamp[1], event, self._with_level) + "\n"

    def start(self) -> None:
        """
        Start the writer thread; until then, queued lines are written by
        L{flush}, L{tail}, L{close} or when C{max_pending} is reached.
        """
        if self._writer is not None or self._closed:
            return
        self._writer = threading.Thread(target=self._write_while_open,
                                        name=f"cipherd-log-{self.path.name}", daemon=True)
        self._writer.start()
        if self._pending:
            self._wake.set()

    def _write_while_open(self) -> None:
        while not self._closing.is_set():
            self._wake.wait()
            if self._batch_delay:
                self._closing.wait(self._batch_delay)
            # Cleared before writing: a line queued meanwhile wakes it again.
            self._wake.clear()
            try:
                self.flush()
            except Exception:
                # Logged to the service log (not to this stream: no loop);
                # the writer goes on with the next lines.
                _log.failure("Could not write to the {name} log", name=self.path.name,
                             level=LogLevel.error)

    def flush(self) -> None:
        """
        Write the queued lines, in order, to the file (rotating it as
        needed).  Any thread may call it.
        """
        with self._lock:
            lines: list[str] = []
            pending = self._pending
            try:
                while True:
                    lines.append(pending.popleft())
            except IndexError:
                pass
            if lines and not self._file.closed:
                self._write(lines)

    def _write(self, lines: list[str]) -> None:
        """
        One write for a batch of lines, except where the file must rotate:
        L{LogFile} rotates before a write once the file has reached its
        length, so the batch is cut where a line at a time would have been.
        """
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and self._file.size + size >= self._max_bytes:
                self._file.write(b"".join(chunk))
                chunk, size = [], 0
            data = line.encode("utf-8")
            chunk.append(data)
            size += len(data)
        if chunk:
            self._file.write(b"".join(chunk))
        self._file.flush()

    def close(self) -> None:
        """
        Stop the writer, write what is queued and close the file.
        """
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is not None:
            self._closing.set()
            self._wake.set()
            writer.join()
        self.flush()
        with self._lock:
            self._file.close()

    def _files_oldest_first(self) -> Iterator[Path]:
        for n in range(self._keep, 0, -1):
            rotated = self.path.with_name(f"{self.path.name}.{n}")
            if rotated.exists():
                yield rotated
        if self.path.exists():
            yield self.path

    def tail(self, lines: int, query: LogQuery | None = None) -> list[str]:
        """
        The last C{lines} lines (that C{query} matches), oldest first, across
        rotated files, up to the last line logged.
        """
        lines = max(0, min(lines, MAX_TAIL_LINES))
        result: deque[str] = deque(maxlen=lines)
        self.flush()
        with self._lock:
            for path in self._files_oldest_first():
                with path.open(encoding="utf-8", errors="replace") as f:
                    found = (line.rstrip("\n") for line in f)
                    result.extend(found if query is None else filter(query.matches, found))
        return list(result)


class MailLogsService(Service):
    """
    Attaches the MTA and MPA logs to the log stream while running.
    """

    def __init__(
        self, directory: Path, *, max_bytes: int, keep: int,
        publisher: LogPublisher = mail_events,
    ) -> None:
        self._publisher = publisher
        self.logs = {
            name: MailLog(
                directory / f"{name}.log", f"cipherd.{name}",
                max_bytes=max_bytes, keep=keep, with_level=(name == "mpa"),
            )
            for name in LOG_NAMES
        }

    def startService(self) -> None:
        super().startService()
        for observer in self.logs.values():
            observer.start()
            self._publisher.addObserver(observer)

    def stopService(self) -> None:
        super().stopService()
        for observer in self.logs.values():
            self._publisher.removeObserver(observer)
            observer.close()


@implementer(ILogObserver)
class ErrorsCounted(Service):
    """
    While running, hands each warning and error cipherd logs (with the
    namespace it came from, without a traceback) to C{counters}, for the
    dashboard's last errors.
    """

    def __init__(self, counters: ICounters, publisher: LogPublisher = globalLogPublisher
                 ) -> None:
        self._counters = counters
        self._publisher = publisher

    def __call__(self, event: LogEvent) -> None:
        namespace = event.get("log_namespace") or ""
        if not namespace.startswith("cipherd") or event.get(
                "log_level", LogLevel.info) < LogLevel.warn:
            return
        text = formatEvent(event).replace("\n", " ").replace("\r", " ")
        self._counters.error(namespace, text)

    def startService(self) -> None:
        super().startService()
        self._publisher.addObserver(self)

    def stopService(self) -> None:
        super().stopService()
        self._publisher.removeObserver(self)
