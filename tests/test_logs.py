"""
The MTA and MPA log files: namespace filtering, one event per line,
size rotation, and reading the tail across rotated files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.logger import Logger, LogPublisher

from cipherd.logs import MailLogsService


def test_rotation_and_tail(tmp_path: Path) -> None:
    publisher = LogPublisher()
    service = MailLogsService(tmp_path, max_bytes=400, keep=2, publisher=publisher)
    service.startService()
    log = Logger(namespace="cipherd.mpa", observer=publisher)
    for n in range(40):
        log.info("message {n:02d}", n=n)
    mpa = service.logs["mpa"]
    assert (tmp_path / "mpa.log.1").exists() and (tmp_path / "mpa.log.2").exists()
    assert not (tmp_path / "mpa.log.3").exists()
    tail = mpa.tail(1000)
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
