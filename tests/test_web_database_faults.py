"""
Both sites while the database cannot be used (issue 12): held by another
process's write lock, full, or slow enough that requests queue behind
blocked calls.  Writes are answered 503 with C{Retry-After} and a message
saying what is wrong, within seconds; reads, the admin's login and the
queue's flush still work; nothing is logged as a fault.
"""

from __future__ import annotations

import gc
import json
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet import error
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import LogLevel, LogPublisher, formatEvent
from twisted.web.resource import Resource

from cipherd.core.counters import Counters
from cipherd.core.envelope import Envelope
from cipherd.logs import MailLogsService
from cipherd.pki.certstore import CertificateStore
from cipherd.pki.keyring import Keyring
from cipherd.pki.pgp import SequoiaOpenPGP
from cipherd.smtp.config import MTAConfig, MTAConfigSource, apply_changes
from cipherd.smtp.queue import MailQueue, QueueRunner
from cipherd.smtp.spool import DirectorySpool, new_queue_id
from cipherd.store import DatabaseUnavailable, Store, create_engine_for_url
from cipherd.store.counters import CounterStore
from cipherd.store.migrations import migrate
from cipherd.store.settings import SettingsRepository
from cipherd.testing import (
    PassThrough,
    SteeredRunner,
    SynchronousRunner,
    cheap_hasher,
    migrated_store,
    result_of,
)
from cipherd.web.admin import AdminSite
from cipherd.web.audit import AuditTrail
from cipherd.web.auth import AdminAuthority
from cipherd.web.backend import AdminBackend
from cipherd.web.common import REQUEST_DEADLINE
from cipherd.web.dashboard import Dashboard
from cipherd.webmail.accounts import Accounts
from cipherd.webmail.administration import AccountAdministration
from cipherd.webmail.mailbox import Mailboxes
from cipherd.webmail.notify import Notifier
from tests.conftest import fill_disk
from tests.test_portal import PortalSite
from tests.test_queue_runner import FakeResolver

PASSWORD = "purple-otter-canvas-91"
UNAVAILABLE = "Try again in a moment."


def gated_store(gate: SteeredRunner, clock: Clock) -> Store:
    engine = create_engine_for_url("sqlite://")
    with engine.begin() as conn:
        migrate(conn)
    return Store(engine, gate, clock)


class Reply:
    def __init__(self, code: int, headers: dict[str, list[str]], body: bytes) -> None:
        self.code = code
        self.headers = headers
        self.body = body
        self.text = body.decode("utf-8", "replace")

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """
    A client of one site: cookies kept, requests answered as they come.
    """

    def __init__(self, resource: Resource) -> None:
        self.http = StubTreq(resource)
        self.cookies: dict[str, str] = {}

    def begin(self, method: str, path: str, **kwargs: Any) -> Deferred[Reply]:
        async def go() -> Reply:
            response = await self.http.request(method, "https://site.test" + path,
                                               allow_redirects=False,
                                               cookies=dict(self.cookies), **kwargs)
            body = await response.content()
            headers = {k.decode().lower(): [v.decode() for v in vs]
                       for k, vs in response.headers.getAllRawHeaders()}
            for line in headers.get("set-cookie", []):
                name, _, rest = line.partition("=")
                self.cookies[name] = rest.split(";", 1)[0]
            return Reply(response.code, headers, body)

        d = Deferred.fromCoroutine(go())
        self.http.flush()
        return d

    def answer(self, d: Deferred[Reply]) -> Reply:
        self.http.flush()
        outcome: list[Any] = []
        d.addBoth(outcome.append)
        assert outcome, "no answer yet"
        assert isinstance(outcome[0], Reply), outcome[0]
        return outcome[0]

    def request(self, method: str, path: str, **kwargs: Any) -> Reply:
        return self.answer(self.begin(method, path, **kwargs))

    def api(self, method: str, path: str, body: Any = None, password: str = PASSWORD
            ) -> Reply:
        return self.request(method, "/api/v1" + path, auth=("admin", password),
                            data=None if body is None else json.dumps(body).encode(),
                            headers={"Content-Type": "application/json"})

    def submit(self, page: str, action: str, fields: dict[str, str]) -> Reply:
        form = self.request("GET", page)
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token, form.text
        return self.request("POST", action, data={**fields, "csrf_token": token.group(1)})


class Admin:
    """
    An admin site on C{store}, with a queue runner that records where it
    tries to deliver.
    """

    def __init__(self, store: Store, tmp_path: Path, clock: Clock) -> None:
        self.clock = clock
        (tmp_path / "logs").mkdir(exist_ok=True)
        self.logs = MailLogsService(tmp_path / "logs", max_bytes=10_000, keep=2,
                                    publisher=LogPublisher())
        self.logs.startService()
        runner = SynchronousRunner()
        self.authority = AdminAuthority(store, runner, clock, idle_timeout=1800,
                                        max_age=43200, lockout_threshold=5,
                                        lockout_window=900, lockout_duration=900,
                                        hasher=cheap_hasher(), totp_key=bytes(32))
        config, errors = apply_changes(MTAConfig(), {
            "my_hostname": "gw.example.org", "external_relay_host": "[relay.example.net]"})
        assert not errors
        self.queue = MailQueue(DirectorySpool(tmp_path / "spool"), runner, clock)
        self.connects: list[tuple[str, int]] = []
        self.queue_runner = QueueRunner(self.queue, lambda: config, FakeResolver(),
                                        self._connect, clock, PassThrough(),
                                        counters=Counters(clock))
        settings = SettingsRepository(store, clock)
        self.site = AdminSite(AdminBackend(
            self.authority, settings, self.logs.logs, runner,
            CertificateStore(store, clock, os.urandom(32), runner),
            Keyring(store, clock, os.urandom(32), runner, SequoiaOpenPGP()),
            MTAConfigSource(store), self.queue, AuditTrail(store, settings, clock),
            Dashboard(store, CounterStore(store, Counters(clock), "node-1"), self.queue,
                      lambda: (1 << 30, 2 << 30), "node-1", clock),
            AccountAdministration(store, Accounts(store, clock, runner, cheap_hasher()),
                                  Mailboxes(store, os.urandom(32)),
                                  Notifier(self.queue_runner, clock), settings,
                                  lambda: config, clock),
            self.queue_runner))
        self.client = Client(self.site.resource())

    def _connect(self, address: str, port: int, protocol: Any) -> Deferred[Any]:
        self.connects.append((address, port))
        return fail(error.ConnectionRefusedError())

    def close(self) -> None:
        self.logs.stopService()

    def set_up(self) -> None:
        """
        The first start, the default password changed, and an HTML session.
        """
        result_of(self.authority.ensure_default_admin())
        changed = self.client.api("POST", "/admin/password", {"password": PASSWORD},
                                  password="admin")
        assert changed.code == 200, changed.text
        self.log_in()

    def log_in(self) -> Reply:
        return self.client.submit("/login", "/login",
                                  {"username": "admin", "password": PASSWORD})




def faults(events: list[dict[str, Any]]) -> list[str]:
    """
    What was logged as a fault: critical, or with a traceback.
    """
    return [formatEvent(e) for e in events
            if e.get("log_level") == LogLevel.critical or "log_failure" in e]


@pytest.fixture
def gated(tmp_path: Path) -> tuple[Clock, SteeredRunner, Admin]:
    """
    The admin site set up on a store whose database pool the test steers,
    with its clock.
    """
    clock = Clock()
    clock.advance(1_800_000_000)
    gate = SteeredRunner()
    admin = Admin(gated_store(gate, clock), tmp_path, clock)
    admin.set_up()
    return clock, gate, admin  # each test closes the admin site itself


def assert_unavailable(reply: Reply, message: str) -> None:
    assert reply.code == 503, (reply.code, reply.text)
    assert reply.header("retry-after") == "5"
    assert message in reply.text, reply.text


def test_requests_stuck_behind_a_blocked_database_are_answered_503_at_their_deadline(
        gated: tuple[Clock, SteeredRunner, Admin], log_events: list[dict[str, Any]]) -> None:
    clock, gate, admin = gated
    try:
        portal = PortalSite(gated_store(gate, clock))
        portal_client = Client(portal.resource)
        gate.mode = "held"
        portal.clock.advance(2)  # past the settings' one-second cache
        waiting = [admin.client.begin("GET", "/api/v1/queue", auth=("admin", PASSWORD)),
                   admin.client.begin("GET", "/logs"),
                   portal_client.begin("GET", "/login")]
        assert not any(d.called for d in waiting)
        clock.advance(REQUEST_DEADLINE - 0.5)
        portal.clock.advance(REQUEST_DEADLINE - 0.5)
        assert not any(d.called for d in waiting)
        clock.advance(0.5)
        portal.clock.advance(0.5)
        api, page, notice = (admin.client.answer(waiting[0]), admin.client.answer(waiting[1]),
                             portal_client.answer(waiting[2]))
        assert_unavailable(api, "The server could not answer in time: the database is busy.")
        assert api.header("content-type") == "application/json"
        assert_unavailable(page, "The server could not answer in time")
        assert "cipherd admin" in page.text
        assert_unavailable(notice, "The server is busy. Wait a moment and try again.")
        # The work goes on to its end (nothing half done); its answers are dropped.
        gate.release()
        assert clock.getDelayedCalls() == [] and portal.clock.getDelayedCalls() == []
        assert admin.client.api("GET", "/queue").code == 200
    finally:
        admin.close()
    assert faults(log_events) == []
    lines = [formatEvent(e) for e in log_events]
    assert "AdminAPI: GET /api/v1/queue answered 503 after 10 s without an answer (the " \
           "database may be locked or overloaded)" in lines
    assert "AdminAPI: GET /api/v1/queue finished after its deadline" in lines


def test_clients_that_hang_up_mid_request_cannot_fill_the_log_with_critical_tracebacks(
        gated: tuple[Clock, SteeredRunner, Admin], log_events: list[dict[str, Any]]) -> None:
    """
    Review of issue 12 (M1): a client that closed its connection while its
    request waited (connect, send, close) was worth an "Unhandled error in
    Deferred" (AlreadyCancelled) at critical level, on demand for anyone.
    """
    clock, gate, admin = gated
    try:
        gate.mode = "held"
        for path, auth in (("/api/v1/queue", ("admin", PASSWORD)),
                           ("/api/v1/queue", ("admin", "guess")), ("/logs", None)):
            waiting = admin.client.begin("GET", path, auth=auth)
            assert not waiting.called and gate.held
            waiting.addErrback(lambda _: None)  # the client's own side of hanging up
            waiting.cancel()  # the client goes away: Klein cancels the request
            admin.client.http.flush()
            gc.collect()  # an unhandled failure is logged when its Deferred is collected
        gate.release()
        assert clock.getDelayedCalls() == []
        assert admin.client.api("GET", "/queue").code == 200
    finally:
        admin.close()
    assert faults(log_events) == []
    assert [formatEvent(e) for e in log_events
            if e.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical)] == []


def test_a_database_that_cannot_be_used_is_503_with_retry_after_never_500(
        gated: tuple[Clock, SteeredRunner, Admin], log_events: list[dict[str, Any]]) -> None:
    clock, gate, admin = gated
    try:
        portal = PortalSite(gated_store(gate, clock))
        gate.mode, gate.reason = "down", "(sqlite3.OperationalError) database is locked"
        portal.clock.advance(2)
        api = admin.client.api("GET", "/queue")
        assert_unavailable(api, "The database is busy: another process holds its lock. "
                           + UNAVAILABLE)
        assert set(api.json()) == {"error"}
        assert_unavailable(admin.client.request("GET", "/mta/queue"),
                           "The database is busy: another process holds its lock.")
        assert_unavailable(Client(portal.resource).request("GET", "/login"),
                           "The server is busy. Wait a moment and try again.")
        gate.reason = "(sqlite3.OperationalError) database or disk is full"
        assert_unavailable(admin.client.api("PATCH", "/settings/global", {"postmaster": ""}),
                           "The database cannot be written: its disk is full. " + UNAVAILABLE)
    finally:
        admin.close()
    assert faults(log_events) == []
    assert not [e for e in log_events if e.get("log_level") == LogLevel.critical]


def test_a_database_locked_by_another_process_refuses_writes_in_seconds_and_serves_reads(
        tmp_path: Path, log_events: list[dict[str, Any]]) -> None:
    """
    Issue 12: while another process held SQLite's write lock the API stalled
    for more than 40 s.  Now a write waits SQLite's busy timeout (short
    here) and is answered 503; what only reads does not wait at all.
    """
    path = tmp_path / "cipherd.db"
    engine = create_engine_for_url(f"sqlite:///{path}", sqlite_busy_timeout_ms=300)
    with engine.begin() as conn:
        migrate(conn)
    clock = Clock()
    clock.advance(1_800_000_000)
    admin = Admin(Store(engine, SynchronousRunner(), clock), tmp_path, clock)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        admin.set_up()
        other.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        refused = admin.client.api("PATCH", "/settings/global", {"postmaster": "pm@example.com"})
        assert time.monotonic() - started < 3
        assert_unavailable(refused, "The database is busy: another process holds its lock. "
                           + UNAVAILABLE)
        # Reads take no lock: the queue, the logs, the settings, and the pages.
        for read in ("/queue", "/logs/mta", "/settings/global"):
            assert admin.client.api("GET", read).code == 200, read
        assert admin.client.request("GET", "/logs").code == 200
        # A wrong password is still just wrong (counted in memory meanwhile).
        assert admin.client.api("GET", "/queue", password="guess").code == 401
        other.execute("ROLLBACK")
        assert admin.client.api("PATCH", "/settings/global",
                                {"postmaster": "pm@example.com"}).code == 200
    finally:
        other.close()
        admin.close()
        engine.dispose()
    assert faults(log_events) == []


def test_a_portal_login_while_the_database_is_locked_is_503_not_500(
        tmp_path: Path, log_events: list[dict[str, Any]]) -> None:
    path = tmp_path / "cipherd.db"
    engine = create_engine_for_url(f"sqlite:///{path}", sqlite_busy_timeout_ms=300)
    with engine.begin() as conn:
        migrate(conn)
    portal = PortalSite(Store(engine, SynchronousRunner()))
    portal.account()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        visitor = Client(portal.resource)
        answer = visitor.submit("/login", "/login", {"email": "dave@partner.example",
                                                     "password": "correct horse battery staple"})
        assert_unavailable(answer, "The server is busy. Wait a moment and try again.")
        other.execute("ROLLBACK")
        answer = visitor.submit("/login", "/login", {"email": "dave@partner.example",
                                                     "password": "correct horse battery staple"})
        assert (answer.code, answer.header("location")) == (303, "/inbox")
    finally:
        other.close()
        engine.dispose()
    assert faults(log_events) == []


def test_on_a_full_disk_the_admin_api_still_lists_and_flushes_the_queue(
        tmp_path: Path, small_disk: Path, log_events: list[dict[str, Any]]) -> None:
    """
    Issue 12: on a full disk every authenticated call first wrote the login
    counter and failed, so the API could not be used to recover.
    """
    clock = Clock()
    clock.advance(1_800_000_000)
    store = migrated_store(f"sqlite:///{small_disk / 'cipherd.db'}")
    try:
        envelope = on_a_full_disk(store, small_disk, tmp_path, clock)
        after = Admin(store, tmp_path, clock)  # a restart: nothing remembered
        try:
            async def write() -> None:
                await store.run(lambda conn: conn.exec_driver_sql("CREATE TABLE t (x)"))

            with pytest.raises(DatabaseUnavailable, match="full"):
                result_of(write())
            queue = after.client.api("GET", "/queue")
            assert queue.code == 200, queue.text
            assert [m["id"] for m in queue.json()["messages"]] == [envelope.queue_id]
            flush = after.client.api("POST", "/queue/flush")
            assert flush.code == 202, flush.text
            assert after.connects == [("192.0.2.25", 25)]
            assert after.client.api("GET", "/settings/global").code == 200
            # The pages need a session, which needs a write: a clear 503.
            assert_unavailable(after.log_in(), "You cannot log in to these pages just now: "
                               "The database cannot be written: its disk is full. The API "
                               "answers without a session: GET /api/v1/queue lists the queue")
        finally:
            after.close()
    finally:
        store.close()
    assert faults(log_events) == []


def on_a_full_disk(store: Store, disk: Path, tmp_path: Path, clock: Clock) -> Envelope:
    """
    Set up an admin (the password changed, a failed login counted) and a
    message in the queue (the spool is on another disk), then fill the
    database's disk.
    """
    before = Admin(store, tmp_path, clock)
    try:
        before.set_up()
        # A count the right password will not be able to clear.
        assert before.client.api("GET", "/queue", password="guess").code == 401
        envelope = Envelope(new_queue_id(), "a@example.org", ("b@example.com",),
                            clock.seconds())
        result_of(before.queue.store(envelope, b"Subject: stuck\r\n\r\nbody\r\n"))
    finally:
        before.close()
    raw = store.engine.raw_connection()
    try:
        # An empty write-ahead log, so that any write needs new space.
        raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]
    finally:
        raw.close()
    fill_disk(disk, leave=0)
    return envelope
