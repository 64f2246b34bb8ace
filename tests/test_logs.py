"""
The MTA and MPA log files: namespace filtering, one event per line,
size rotation, reading the tail across rotated files, and writing off the
logger's path (queued lines, in order, written by a thread of their own).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import Logger, LogLevel, LogPublisher, formatEvent

from cipherd.logs import MailLog, MailLogsService, format_line
from tests.conftest import fill_disk


def test_rotation_and_tail(tmp_path: Path) -> None:
    publisher = LogPublisher()
    service = MailLogsService(tmp_path, max_bytes=400, keep=2, publisher=publisher)
    service.startService()
    log = Logger(namespace="cipherd.mpa", observer=publisher)
    for n in range(40):
        log.info("message {n:02d}", n=n)
    mpa = service.logs["mpa"]
    tail = mpa.tail(1000)
    assert (tmp_path / "mpa.log.1").exists() and (tmp_path / "mpa.log.2").exists()
    assert not (tmp_path / "mpa.log.3").exists()
    # Each file rotated where a line at a time would have rotated it: at the
    # first line that finds it at or past its length, not a batch later.
    for path in (tmp_path / "mpa.log.2", tmp_path / "mpa.log.1"):
        lines = path.read_bytes().splitlines(keepends=True)
        assert sum(map(len, lines[:-1])) < 400 <= sum(map(len, lines))
    numbers = [int(line.rsplit(" ", 1)[1]) for line in tail]
    assert numbers == list(range(numbers[0], 40))  # oldest first, nothing missing
    assert len(numbers) < 40  # the oldest rotated away
    assert [line.split(" ", 1)[1] for line in mpa.tail(2)] == ["INFO message 38",
                                                                "INFO message 39"]
    service.stopService()
    # Stopped: events no longer reach the file.
    log.info("after stop")
    assert "after stop" not in (tmp_path / "mpa.log").read_text()


def test_line_breaks_cannot_forge_log_lines(tmp_path: Path) -> None:
    publisher = LogPublisher()
    service = MailLogsService(tmp_path, max_bytes=10_000, keep=1, publisher=publisher)
    service.startService()
    Logger(namespace="cipherd.mpa", observer=publisher).warn(
        "Subject: {subject}", subject="hi\n2026-01-01T00:00:00Z INFO forged\r"
    )
    Logger(namespace="cipherd.mpaX", observer=publisher).info("other namespace")
    lines = service.logs["mpa"].tail(10)
    service.stopService()
    assert len(lines) == 1
    assert lines[0].endswith("WARN Subject: hi\\n2026-01-01T00:00:00Z INFO forged\\r")


def test_failures_are_summarised_on_one_line(tmp_path: Path) -> None:
    publisher = LogPublisher()
    service = MailLogsService(tmp_path, max_bytes=10_000, keep=1, publisher=publisher)
    service.startService()
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        Logger(namespace="cipherd.mta", observer=publisher).failure("Delivery failed")
    lines = service.logs["mta"].tail(10)
    service.stopService()
    assert len(lines) == 1
    assert lines[0].endswith("Delivery failed (ValueError: bad\\nthing)")


def test_mail_events_stay_out_of_the_service_log_unless_worth_a_look() -> None:
    from twisted.logger import globalLogPublisher

    from cipherd.logs import mail_events, mail_logger

    mail: list[str] = []
    service: list[str] = []

    def to_mail(event: dict[str, Any]) -> None:
        mail.append(event["log_format"])

    def to_service(event: dict[str, Any]) -> None:
        service.append(event.get("log_format", ""))

    mail_events.addObserver(to_mail)
    globalLogPublisher.addObserver(to_service)
    try:
        log = mail_logger("cipherd.mta.test")
        log.info("routine {n}", n=1)
        log.warn("worth a look")
        try:
            raise ValueError("boom")
        except ValueError:
            log.failure("failed")
    finally:
        mail_events.removeObserver(to_mail)
        globalLogPublisher.removeObserver(to_service)
    assert mail == ["routine {n}", "worth a look", "failed"]
    assert "routine {n}" not in service
    assert "worth a look" in service and "failed" in service


def _event(text: str, when: float = 1_800_000_000.25, **fields: Any) -> dict[str, Any]:
    return {"log_format": text, "log_time": when, "log_namespace": "cipherd.mta.queue",
            "log_level": LogLevel.info, **fields}


def _wait_until(done: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "not written in time"
        time.sleep(0.01)


def test_a_line_is_queued_and_tail_reads_it_at_once(tmp_path: Path) -> None:
    """
    Logging does not write: the line waits for the writer.  Reading the
    log writes what is queued first, so it has every line logged.
    """
    log = MailLog(tmp_path / "mta.log", "cipherd.mta", max_bytes=10_000, keep=1,
                  with_level=False)
    log(_event("first"))
    log(_event("second"))
    assert (tmp_path / "mta.log").read_text() == ""
    assert log.tail(10) == ["2027-01-15T08:00:00Z first", "2027-01-15T08:00:00Z second"]
    assert (tmp_path / "mta.log").read_text().splitlines() == log.tail(10)
    log(_event("third"))
    log.close()
    assert (tmp_path / "mta.log").read_text().endswith("Z second\n2027-01-15T08:00:00Z third\n")


def test_past_max_pending_the_logger_writes_itself(tmp_path: Path) -> None:
    log = MailLog(tmp_path / "mta.log", "cipherd.mta", max_bytes=10_000, keep=1,
                  with_level=False, max_pending=3)
    for n in range(5):
        log(_event("line {n}", n=n))
    assert (tmp_path / "mta.log").read_text().splitlines() == [
        f"2027-01-15T08:00:00Z line {n}" for n in range(3)]
    log.close()
    assert len((tmp_path / "mta.log").read_text().splitlines()) == 5


def test_the_writer_writes_without_being_asked(tmp_path: Path) -> None:
    log = MailLog(tmp_path / "mta.log", "cipherd.mta", max_bytes=10_000, keep=1,
                  with_level=False)
    log(_event("before start"))
    log.start()
    log(_event("after start"))
    _wait_until(lambda: "after start" in (tmp_path / "mta.log").read_text())
    assert (tmp_path / "mta.log").read_text() == (
        "2027-01-15T08:00:00Z before start\n2027-01-15T08:00:00Z after start\n")
    log.close()
    assert not any(t.name == "cipherd-log-mta.log" for t in threading.enumerate())


def test_a_batch_waits_its_moment_and_close_does_not_wait_for_it(tmp_path: Path) -> None:
    """
    Woken by a line, the writer waits C{batch_delay} for more lines to
    write with it (one wake-up per batch, not per line); closing writes at
    once.
    """
    log = MailLog(tmp_path / "mta.log", "cipherd.mta", max_bytes=10_000, keep=1,
                  with_level=False, batch_delay=3600)
    log.start()
    for n in range(3):
        log(_event("line {n}", n=n))
    assert (tmp_path / "mta.log").read_text() == ""
    started = time.monotonic()
    log.close()
    assert time.monotonic() - started < 60
    assert len((tmp_path / "mta.log").read_text().splitlines()) == 3


def test_lines_from_many_threads_keep_their_order_through_rotation(tmp_path: Path) -> None:
    """
    Four threads log while the writer writes and a reader reads the tail:
    every line is written once, each thread's in its order, and the files
    rotate as they fill.
    """
    publisher = LogPublisher()
    service = MailLogsService(tmp_path, max_bytes=100_000, keep=3, publisher=publisher)
    service.startService()
    mta = service.logs["mta"]
    log = Logger(namespace="cipherd.mta.queue", observer=publisher)
    tails: list[list[str]] = []

    def write(thread: int) -> None:
        for n in range(2000):
            log.info("thread {thread} line {n}", thread=thread, n=n)
            if n % 500 == 0:
                tails.append(mta.tail(5))

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    service.stopService()
    # Read while lines were being written: whole lines only.
    assert len(tails) == 16 and all(
        re.fullmatch(r"\S+Z thread \d line \d+", line) for tail in tails for line in tail)
    files = [tmp_path / name for name in ("mta.log.3", "mta.log.2", "mta.log.1", "mta.log")]
    assert all(path.exists() for path in files)
    lines = [line for path in files for line in path.read_text().splitlines()]
    assert len(lines) == 8000
    for thread in range(4):
        ns = [int(line.rsplit(" ", 1)[1]) for line in lines if f" thread {thread} " in line]
        assert ns == list(range(2000))


def test_a_write_that_fails_is_reported_and_the_writer_goes_on(
        small_disk: Path, log_events: list[dict[str, Any]]) -> None:
    """
    On a full disk the lines of the batch are lost (as each line was when
    written one by one) and the service log says so; once there is room
    again, the next lines are written.
    """
    log = MailLog(small_disk / "mta.log", "cipherd.mta", max_bytes=100_000, keep=1,
                  with_level=False)
    log.start()
    filler = fill_disk(small_disk, leave=0)
    log(_event("lost " + "x" * 8000))
    _wait_until(lambda: any("Could not write to the mta.log log" in formatEvent(e)
                            for e in log_events))
    (failed,) = [e for e in log_events if "Could not write" in formatEvent(e)]
    assert failed["log_level"] == LogLevel.error
    assert failed["log_failure"].type is OSError
    filler.unlink()
    log(_event("written"))
    _wait_until(lambda: "written" in (small_disk / "mta.log").read_text())
    log.close()
    assert (small_disk / "mta.log").read_text().endswith("Z written\n")


def test_the_time_stamp_follows_each_second(tmp_path: Path) -> None:
    log = MailLog(tmp_path / "mpa.log", "cipherd.mpa", max_bytes=10_000, keep=1,
                  with_level=True)
    for when in (1_800_000_000.999, 1_800_000_001.0, 1_800_000_000.5, 1_800_000_061.2):
        log(_event("at {log_time}", when, log_namespace="cipherd.mpa", log_level=LogLevel.warn))
    assert log.tail(10) == [
        "2027-01-15T08:00:00Z WARN at 1800000000.999",
        "2027-01-15T08:00:01Z WARN at 1800000001.0",
        "2027-01-15T08:00:00Z WARN at 1800000000.5",
        "2027-01-15T08:01:01Z WARN at 1800000061.2"]
    log.close()


_FIELDS = ["{name}", "{name!r}", "{name:>6}", "{number:05d}", "{number.real}", "{call()}",
           "{missing}", "{items[0]}", "{{", "}}", "{", "}", "{0}", "{}", "{name:{number}}",
           "{call}", "text ", "ünï ", "\n"]


@given(parts=st.lists(st.sampled_from(_FIELDS), max_size=6),
       name=st.text(max_size=5), number=st.integers(0, 9))
def test_a_line_reads_as_twisted_formats_its_event(
        parts: list[str], name: str, number: int) -> None:
    """
    The quick formatting (C{str.format_map}) gives exactly Twisted's text
    for every format, including calls, missing fields and broken formats.
    """
    event = _event("".join(parts), name=name, number=number, call=lambda: "called",
                   items=["first"])
    text = formatEvent(event).replace("\r", "\\r").replace("\n", "\\n")
    assert format_line(event, with_level=False) == f"2027-01-15T08:00:00Z {text}"
