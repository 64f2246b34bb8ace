"""
No mail is lost (DESIGN.md, "Decisions"): a real appliance takes 1,000
numbered messages over 10 SMTP connections while it is killed with
C{kill -9} twice; after the last restart every message that was answered
250 reaches the next hop (a sink on a real socket).  Duplicates are
allowed, as with any MTA: a message delivered just before a kill may be
delivered again.
"""

from __future__ import annotations

import re
import smtplib
import threading
import time
from collections import Counter

import pytest

from tests.conftest import Appliance, api_call
from tests.sink import Sink

pytestmark = pytest.mark.e2e

NEW_PASSWORD = "durable-heron-lantern-27"
MESSAGES = 1000
CONNECTIONS = 10
# Killed once this many messages were answered 250, then started again.
KILL_AFTER = (300, 650)
# Seconds the clients keep trying in all, and the queue has to deliver.
SENDING_TIME = 40.0
DELIVERY_TIME = 30.0
NUMBER = re.compile(rb"^X-Test-Number: (\d+)\r$", re.MULTILINE)


def message(number: int) -> bytes:
    return (f"From: alice@example.org\r\nTo: bob@example.com\r\n"
            f"Subject: durability {number}\r\nX-Test-Number: {number}\r\n\r\n"
            f"message {number} of {MESSAGES}\r\n").encode()


class Load:
    """
    SMTP clients on threads of their own, each on one connection at a time,
    sending the numbers they take until all were answered 250.  A number
    not answered 250 (refused, connection lost, the appliance down) is
    sent again, as a real client would.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.waiting = list(range(MESSAGES - 1, -1, -1))
        self.accepted: set[int] = set()
        self.failures = 0
        self.deadline = time.monotonic() + SENDING_TIME
        self.threads = [threading.Thread(target=self._client, daemon=True)
                        for _ in range(CONNECTIONS)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(SENDING_TIME + 10)

    def _take(self) -> int | None:
        with self.lock:
            return self.waiting.pop() if self.waiting else None

    def _client(self) -> None:
        smtp: smtplib.SMTP | None = None
        number = self._take()
        while number is not None and time.monotonic() < self.deadline:
            try:
                if smtp is None:
                    smtp = smtplib.SMTP("127.0.0.1", self.port, "client.example.org",
                                        timeout=10)
                smtp.sendmail("alice@example.org", ["bob@example.com"], message(number))
            except (OSError, smtplib.SMTPException):
                with self.lock:
                    self.failures += 1
                if smtp is not None:
                    try:
                        smtp.close()
                    finally:
                        smtp = None
                time.sleep(0.1)  # down, or restarting: try again
                continue
            with self.lock:
                self.accepted.add(number)
            number = self._take()
        if smtp is not None:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()

    def count(self) -> int:
        with self.lock:
            return len(self.accepted)


def queued(appliance: Appliance) -> int:
    """
    How many messages the queue holds on disk (read without the spool,
    whose start-up would tidy it).
    """
    spool = appliance.data_dir / "spool"
    return sum(1 for state in ("active", "deferred", "hold")
               for _ in (spool / state).iterdir())


def test_no_message_answered_250_is_lost_when_the_appliance_is_killed_twice_under_load(
        appliance: Appliance) -> None:
    status, _ = api_call(appliance, "POST", "/admin/password", {"password": NEW_PASSWORD},
                         password="admin")
    assert status == 200
    sink = Sink()
    try:
        status, answer = api_call(appliance, "PATCH", "/mta", {"transports": [
            {"domain": "example.com", "host": "[127.0.0.1]", "port": sink.port}]},
            password=NEW_PASSWORD)
        assert status == 200, answer
        started = time.monotonic()
        load = Load(appliance.smtp_port)
        load.start()
        queued_at_kill = []
        for threshold in KILL_AFTER:
            while load.count() < threshold and time.monotonic() < load.deadline:
                time.sleep(0.01)
            appliance.kill()
            queued_at_kill.append(queued(appliance))
            appliance.start()
        load.join()
        accepted = set(load.accepted)

        deadline = time.monotonic() + DELIVERY_TIME
        delivered: Counter[int] = Counter()
        while time.monotonic() < deadline:
            with sink.state.lock:
                captured = list(sink.state.messages)
            delivered = Counter(int(m.group(1)) for c in captured
                                if (m := NUMBER.search(c.content)))
            if accepted <= delivered.keys():
                break
            time.sleep(0.2)
        lost = sorted(accepted - delivered.keys())
        duplicated = sum(n - 1 for n in delivered.values())
        print(f"\ndurability: sent {MESSAGES} over {CONNECTIONS} connections, killed "
              f"(kill -9) after {KILL_AFTER[0]} and {KILL_AFTER[1]} accepted; "
              f"accepted={len(accepted)} delivered={len(delivered)} lost={len(lost)} "
              f"duplicated={duplicated}; in the queue at the kills: {queued_at_kill}, "
              f"client retries: {load.failures}, {time.monotonic() - started:.1f} s")
        assert not lost, f"answered 250 but never delivered: {lost[:20]}"
        assert len(accepted) == MESSAGES  # every number was taken in the end
        assert delivered.keys() <= set(range(MESSAGES))
    finally:
        sink.close()
