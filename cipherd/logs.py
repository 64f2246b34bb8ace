"""
The MTA and MPA logs: plain text files under ``<data_dir>/logs``, rotated by
size, with the line shapes of the guide so an administrator can
troubleshoot with it in hand::

    2026-11-28T10:15:02Z INFO Webmail is disabled for the sender...
    2026-11-28T10:15:03Z 3E808D2: to=<webmail@webmail.local>, ... status=deferred (...)

Code logs to them with L{mail_logger} (namespaces C{cipherd.mta...} and
C{cipherd.mpa...}), on a stream of their own; warnings and failures also
reach the service log.  Nothing sensitive belongs in them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
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

# The guide writes WARN, not WARNING.
_LEVEL_NAMES = {
    LogLevel.debug: "DEBUG",
    LogLevel.info: "INFO",
    LogLevel.warn: "WARN",
    LogLevel.error: "ERROR",
    LogLevel.critical: "CRITICAL",
}

MAX_TAIL_LINES = 10_000

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
    when = datetime.fromtimestamp(event.get("log_time", 0), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text} ({failure.type.__name__}: {failure.getErrorMessage()})"
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    if with_level:
        level = _LEVEL_NAMES.get(event.get("log_level", LogLevel.info), "INFO")
        return f"{when} {level} {text}"
    return f"{when} {text}"


@implementer(ILogObserver)
class MailLog:
    """
    Writes the events of one namespace to a size-rotated file.

    @param path: the log file; rotated files are C{path.1}, C{path.2}, ...
    @param namespace: events whose namespace is this or below it are kept.
    @param with_level: prefix the level (MPA) or not (MTA, as Postfix).
    """

    def __init__(
        self, path: Path, namespace: str, *, max_bytes: int, keep: int, with_level: bool
    ) -> None:
        self.path = path
        self.namespace = namespace
        self._with_level = with_level
        self._keep = keep
        self._file = LogFile(
            path.name, str(path.parent), rotateLength=max_bytes, maxRotatedFiles=keep,
            defaultMode=0o600,
        )

    def __call__(self, event: LogEvent) -> None:
        namespace = event.get("log_namespace", "")
        if namespace != self.namespace and not namespace.startswith(self.namespace + "."):
            return
        self._file.write(format_line(event, with_level=self._with_level) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def _files_oldest_first(self) -> Iterator[Path]:
        for n in range(self._keep, 0, -1):
            rotated = self.path.with_name(f"{self.path.name}.{n}")
            if rotated.exists():
                yield rotated
        if self.path.exists():
            yield self.path

    def tail(self, lines: int) -> list[str]:
        """
        The last C{lines} lines, oldest first, across rotated files.
        """
        lines = max(0, min(lines, MAX_TAIL_LINES))
        result: deque[str] = deque(maxlen=lines)
        for path in self._files_oldest_first():
            with path.open(encoding="utf-8", errors="replace") as f:
                result.extend(line.rstrip("\n") for line in f)
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
            self._publisher.addObserver(observer)

    def stopService(self) -> None:
        super().stopService()
        for observer in self.logs.values():
            self._publisher.removeObserver(observer)
            observer.close()
