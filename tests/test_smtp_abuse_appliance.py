"""
Issue 12, against a running appliance over real sockets: one client cannot
lock everyone else out of SMTP, a burst of connects is answered, and every
listener speaks only TLS 1.2 with AEAD suites, or TLS 1.3.

The abusive clients and the good one come from different loopback
addresses (127.0.0.5, .6, .9): per-client limits count by address, and
127.0.0.1 stays in *my networks* (exempt, as Postfix's
C{smtpd_client_event_limit_exceptions}).
"""

from __future__ import annotations

import re
import selectors
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from cipherd.smtp.config import machine_hostname
from tests.conftest import Appliance
from tests.peers import require_tool
from tests.sink import Sink
from tests.test_mta_appliance import NEW_PASSWORD, api

pytestmark = pytest.mark.e2e

TRICKLER = "127.0.0.5"
IDLER = "127.0.0.6"
GOOD = "127.0.0.9"
MESSAGE = (b"From: good@example.org\r\nTo: bob@example.com\r\nSubject: through the crowd\r\n"
           b"\r\nDelivered while others hold connections.\r\n")


@pytest.fixture
def mta(appliance: Appliance) -> Iterator[tuple[Appliance, Sink]]:
    """
    The appliance relaying example.com to a sink; only 127.0.0.1 is in
    my networks.
    """
    sink = Sink()
    api(appliance, "POST", "/admin/password", {"password": NEW_PASSWORD}, password="admin")
    api(appliance, "PATCH", "/mta", {
        "relay_domains": ["example.com"], "my_networks": ["127.0.0.1/32"],
        "transports": [{"domain": "example.com", "host": "[127.0.0.1]", "port": sink.port}]})
    try:
        yield appliance, sink
    finally:
        sink.close()


def _open(port: int, source: str, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind((source, 0))
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sockets.append(s)
    return sockets


def _first_lines(sockets: list[socket.socket], timeout: float) -> dict[socket.socket, bytes]:
    """
    The first line each socket received within C{timeout} (C{b""}: closed
    without one); sockets that got nothing are left out.
    """
    selector = selectors.DefaultSelector()
    for s in sockets:
        selector.register(s, selectors.EVENT_READ)
    got: dict[socket.socket, bytes] = {}
    buffers: dict[socket.socket, bytes] = {}
    deadline = time.monotonic() + timeout
    while len(got) < len(sockets) and time.monotonic() < deadline:
        for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                data = s.recv(4096)
            except (BlockingIOError, ConnectionError):
                data = b""
            buffers[s] = buffers.get(s, b"") + data
            if b"\r\n" in buffers[s] or not data:
                got[s] = buffers[s].split(b"\r\n")[0]
                selector.unregister(s)
    selector.close()
    return got


def test_one_client_trickling_and_idling_cannot_lock_others_out(
        mta: tuple[Appliance, Sink]) -> None:
    """
    100 connections from one client sending a byte each (then a byte a
    minute, as the attack did) and 500 idle ones from another: each client
    keeps at most its 10 sessions, the rest are told 421, and a third
    client delivers a message at once.
    """
    appliance, sink = mta
    trickling = _open(appliance.smtp_port, TRICKLER, 100)
    idle = _open(appliance.smtp_port, IDLER, 500)
    try:
        time.sleep(0.5)
        for s in trickling:
            try:
                s.send(b"E")  # the first byte of EHLO; the next would follow in a minute
            except OSError:
                pass
        answers = _first_lines(trickling + idle, timeout=20)
        greeted = {who: sum(1 for s in group if answers.get(s, b"").startswith(b"220 "))
                   for who, group in (("trickling", trickling), ("idle", idle))}
        refused = {who: sum(1 for s in group if answers.get(s, b"").startswith(b"421 4.7.0"))
                   for who, group in (("trickling", trickling), ("idle", idle))}
        print(f"\nsessions held: trickling client {greeted['trickling']} of 100 "
              f"({refused['trickling']} refused with 421), idle client {greeted['idle']} of "
              f"500 ({refused['idle']} refused with 421)")
        assert greeted == {"trickling": 10, "idle": 10}, answers
        assert refused == {"trickling": 90, "idle": 490}
        assert (f"421 4.7.0 {machine_hostname()} Error: too many connections from "
                f"{TRICKLER}".encode() in answers.values())

        started = time.monotonic()
        with smtplib.SMTP("127.0.0.1", appliance.smtp_port, source_address=(GOOD, 0),
                          timeout=10) as client:
            client.sendmail("good@example.org", ["bob@example.com"], MESSAGE)
        (captured,) = sink.wait_for(1, timeout=10)
        elapsed = time.monotonic() - started
        print(f"the other client's message reached the next hop in {elapsed:.2f} s")
        assert captured.content.endswith(MESSAGE)
        assert elapsed < 5
    finally:
        for s in trickling + idle:
            s.close()
    for client in (TRICKLER, IDLER):
        appliance.wait_for_log(
            "mta", f"warning: Connection concurrency limit exceeded: 11 from unknown[{client}] "
                   "for service smtp")


def test_a_burst_of_connects_is_answered_not_left_in_the_backlog(
        mta: tuple[Appliance, Sink]) -> None:
    """
    200 clients connecting at once (the default backlog of 50 left some
    connected and never greeted): every one gets its 220.
    """
    appliance, _ = mta
    api(appliance, "PATCH", "/mta", {"smtpd_process_limit": 300})
    time.sleep(0.2)
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{appliance.smtp_port}"],
                               capture_output=True, text=True, check=True).stdout
    backlog = int(listening.split()[2])  # Send-Q of a listener: its backlog
    print(f"\nSMTP listen backlog: {backlog}")
    assert backlog >= 511
    burst = _open(appliance.smtp_port, "127.0.0.1", 200)
    try:
        started = time.monotonic()
        answers = _first_lines(burst, timeout=30)
        elapsed = time.monotonic() - started
        greeted = sum(1 for line in answers.values() if line.startswith(b"220 "))
        print(f"{greeted} of 200 simultaneous connects greeted in {elapsed:.2f} s")
        assert greeted == 200
    finally:
        for s in burst:
            s.close()


def _handshake(port: int, *options: str, starttls: bool = False) -> tuple[bool, str]:
    """
    Whether C{openssl s_client} with C{options} completes a handshake, and
    the suite it got.
    """
    command = [require_tool("openssl"), "s_client", "-connect", f"127.0.0.1:{port}",
               "-servername", "localhost", *options]
    if starttls:
        command += ["-starttls", "smtp"]
    done = subprocess.run(command, input=b"", capture_output=True, timeout=20)
    output = done.stdout.decode(errors="replace")
    match = re.search(r"Cipher is (\S+)", output)
    cipher = match.group(1) if match else ""
    return done.returncode == 0 and cipher not in ("", "(NONE)", "0000"), cipher


@pytest.mark.parametrize("listener", ["smtp", "admin", "portal"])
def test_tls_offers_only_aead_suites_and_tls_1_3(appliance: Appliance, listener: str) -> None:
    """
    The CBC suites with SHA-1 (ECDHE-ECDSA-AES128-SHA, AES256-SHA) that
    TLS 1.2 still offered are refused on every listener; AES-GCM and
    ChaCha20-Poly1305 with ECDHE, and TLS 1.3, work.
    """
    port = {"smtp": appliance.smtp_port, "admin": appliance.admin_port,
            "portal": appliance.portal_port}[listener]
    starttls = listener == "smtp"
    for cbc in ("ECDHE-ECDSA-AES128-SHA", "AES256-SHA", "ECDHE-ECDSA-AES256-SHA384"):
        ok, cipher = _handshake(port, "-tls1_2", "-cipher", cbc, starttls=starttls)
        assert not ok, (listener, cbc, cipher)
    assert not _handshake(port, "-tls1_1", "-cipher", "ALL:@SECLEVEL=0",
                          starttls=starttls)[0]
    for aead in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                 "ECDHE-ECDSA-CHACHA20-POLY1305"):
        assert _handshake(port, "-tls1_2", "-cipher", aead, starttls=starttls) == (True, aead)
    ok, cipher = _handshake(port, "-tls1_3", starttls=starttls)
    assert ok and cipher.startswith("TLS_"), cipher


def _closed_within(s: socket.socket, timeout: float) -> float | None:
    """
    Seconds until the server closed C{s} (EOF or reset), reading and
    dropping whatever it sends; C{None} if it stayed open.
    """
    started = time.monotonic()
    s.setblocking(True)
    while time.monotonic() - started < timeout:
        s.settimeout(max(0.1, timeout - (time.monotonic() - started)))
        try:
            if not s.recv(65536):
                return time.monotonic() - started
        except TimeoutError:
            return None
        except ConnectionError:
            return time.monotonic() - started
    return None


def test_sessions_stalled_in_a_tls_handshake_or_never_reading_are_ended(
        mta: tuple[Appliance, Sink]) -> None:
    """
    Two ways a closed session stayed open for ever, keeping its place: a
    client that asks for STARTTLS and never starts the handshake, and one
    that pipelines commands without reading a reply (the replies piled up
    in memory).  With one session per client allowed, each is ended within
    the timeout and the grace period, and its client may connect again.
    """
    appliance, _ = mta
    api(appliance, "PATCH", "/mta", {"smtpd_timeout": 10,
                                     "smtpd_client_connection_count_limit": 1})
    time.sleep(0.5)
    stalled = socket.socket()
    stalled.bind((TRICKLER, 0))
    stalled.connect(("127.0.0.1", appliance.smtp_port))
    stalled.sendall(b"EHLO stalled.example\r\nSTARTTLS\r\n")
    deaf = socket.socket()
    deaf.bind((IDLER, 0))
    deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    deaf.connect(("127.0.0.1", appliance.smtp_port))
    deaf.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # as much as the kernel takes, reading nothing
        try:
            sent += deaf.send(b"EHLO deaf.example\r\n" * 1000)
        except BlockingIOError:
            time.sleep(0.05)
    try:
        # Meanwhile each client's one place is taken.
        for source in (TRICKLER, IDLER):
            with socket.create_connection(("127.0.0.1", appliance.smtp_port),
                                          source_address=(source, 0), timeout=5) as again:
                assert again.recv(200).startswith(b"421 4.7.0")
        stalled_after = _closed_within(stalled, 40)
        deaf_after = _closed_within(deaf, 40)
        print(f"\nSTARTTLS without a handshake ended after {stalled_after} s; a client that "
              f"sent {sent} bytes without reading ended after {deaf_after} s")
        assert stalled_after is not None and deaf_after is not None
    finally:
        stalled.close()
        deaf.close()
    time.sleep(0.5)
    for source in (TRICKLER, IDLER):
        with socket.create_connection(("127.0.0.1", appliance.smtp_port),
                                      source_address=(source, 0), timeout=5) as again:
            assert again.recv(200).startswith(b"220 ")
