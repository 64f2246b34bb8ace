"""
The queue runner, deterministic: a real spool on disk, cipherd's own SMTP
server as the next hop in memory (iosim), name resolution and connection
failures injected, time driven by a Clock.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.test import iosim
from zope.interface import implementer

from cipherd.core.counters import Counters
from cipherd.core.envelope import Envelope, Received
from cipherd.smtp.bounce import BOUNCE_SIZE_LIMIT, Failed, build_bounce
from cipherd.smtp.client import CACHE_IDLE, CACHE_LIFETIME
from cipherd.smtp.config import MTAConfig, apply_changes
from cipherd.smtp.processing import ProcessingResult
from cipherd.smtp.queue import (
    DATABASE_DEFERRAL,
    DATABASE_RETRY_WAITS,
    MIN_BACKOFF,
    QUEUE_LIFETIME,
    IMessageProcessor,
    MailQueue,
    QueueRunner,
    describe,
)
from cipherd.smtp.routing import HopNotFound, IHopResolver, NextHop, next_hop
from cipherd.smtp.server import ReceivePolicy, SMTPFactory, SMTPServer
from cipherd.smtp.spool import DirectorySpool, Rename, new_queue_id
from cipherd.store import DatabaseUnavailable, Store, create_engine_for_url
from cipherd.testing import PassThrough, SynchronousRunner, result_of
from tests.conftest import fill_disk

CONTENT = b"From: a@example.org\r\nSubject: hello\r\n\r\n.dot\r\nbody\r\n"


@implementer(IHopResolver)
class FakeResolver:
    def __init__(self) -> None:
        self.missing: set[str] = set()  # no such name
        self.unanswered: set[str] = set()  # the DNS servers do not answer

    def resolve(self, hop: NextHop) -> Deferred[list[tuple[str, str]]]:
        if hop.host in self.missing:
            return fail(HopNotFound(f"Host or domain name not found. Name service error for "
                                    f"name={hop.host} type=AAAA: Host not found",
                                    permanent=True))
        if hop.host in self.unanswered:
            return fail(HopNotFound(f"Host or domain name not found. Name service error for "
                                    f"name={hop.host} type=A: Host not found, try again",
                                    permanent=False))
        address = hop.host if hop.host[:1].isdigit() else "192.0.2.25"
        return succeed([(hop.host, address)])


class _PumpedTransport(iosim.FakeTransport):
    """
    A client's transport that moves what it writes at once: a connection
    the queue runner keeps for the next message is written to outside any
    pumping.
    """

    pump: iosim.IOPump | None = None
    _pumping = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.pump is not None and not self._pumping:
            self._pumping = True
            try:
                self.pump.flush()
            finally:
                self._pumping = False


def pumped(server: Protocol, client: Protocol) -> iosim.IOPump:
    """
    Connect C{client} to C{server} in memory, greeting done.
    """
    transport = _PumpedTransport(client, isServer=False)
    transport.pump = iosim.connect(server, iosim.FakeTransport(server, isServer=True),
                                   client, transport)
    return transport.pump


class Network:
    """
    The next hop (cipherd's server) and whether it answers.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.up = True
        self.queued: list[Received] = []
        self.policy = ReceivePolicy("next-hop.example.net", relay_domains=("example.com",))
        self.factory = SMTPFactory(lambda: self.policy, self._accept, clock)
        self.connections: list[tuple[str, int]] = []
        self.servers: list[tuple[SMTPServer, iosim.IOPump]] = []

    def _accept(self, received: Received) -> Deferred[None]:
        self.queued.append(received)
        return succeed(None)

    def connect(self, address: str, port: int, client: Protocol) -> Deferred[Any]:
        self.connections.append((address, port))
        if not self.up:
            return fail(error.ConnectionRefusedError())
        server = self.factory.buildProtocol(None)
        self.servers.append((server, pumped(server, client)))
        return succeed(client)


class World:
    """
    A queue runner on a spool in C{tmp_path}.  A second World on the same
    directory and clock is the node after a restart.

    @param rename: the spool's rename (a crash injected there).
    """

    def __init__(self, tmp_path: Path, *, clock: Clock | None = None,
                 rename: Rename = os.rename, processor: Any = None, **config: Any) -> None:
        if clock is None:
            clock = Clock()
            clock.advance(1_800_000_000)
        self.clock = clock
        self.spool = DirectorySpool(tmp_path / "spool", rename=rename)
        self.queue = MailQueue(self.spool, SynchronousRunner(), self.clock)
        changes = {"my_hostname": "gw.example.org",
                   "external_relay_host": "[relay.example.net]", **config}
        self.config, errors = apply_changes(MTAConfig(), changes)
        assert not errors
        self.network = Network(self.clock)
        self.resolver = FakeResolver()
        self.counters = Counters(self.clock)
        self.runner = QueueRunner(self.queue, lambda: self.config, self.resolver,
                                  self.network.connect, self.clock,
                                  processor or PassThrough(), counters=self.counters)

    def enqueue(self, sender: str = "a@example.org",
                recipients: tuple[str, ...] = ("b@example.com",),
                content: bytes = CONTENT) -> str:
        envelope = Envelope(new_queue_id(), sender, recipients, self.clock.seconds())
        return result_of(self.queue.store(envelope, content)).envelope.queue_id

    def scan(self) -> None:
        result_of(self.runner.scan())

    def queued(self) -> list[tuple[str, str, tuple[str, ...]]]:
        return [(m.envelope.queue_id, m.state, m.envelope.recipients)
                for m in self.spool.messages()]


def test_delivered_byte_exact_and_removed(tmp_path: Path, log_lines: list[str]) -> None:
    world = World(tmp_path)
    queue_id = world.enqueue()
    world.scan()
    assert world.queued() == []
    (received,) = world.network.queued
    assert received.content.endswith(CONTENT) and received.sender == "a@example.org"
    assert world.network.connections == [("192.0.2.25", 25)]
    sent = next(line for line in log_lines if "status=sent" in line)
    assert sent.startswith(f"{queue_id}: to=<b@example.com>, relay=relay.example.net"
                           "[192.0.2.25]:25, delay=0, delays=0/0/0/0, dsn=2.0.0, status=sent "
                           f"(250 2.0.0 Ok: queued as {received.queue_id})")
    assert f"{queue_id}: removed" in log_lines


def test_next_hop_down_is_deferred_then_delivered_when_it_is_back(
        tmp_path: Path, log_lines: list[str]) -> None:
    world = World(tmp_path)
    world.network.up = False
    queue_id = world.enqueue()
    world.scan()
    (message,) = world.spool.messages()
    assert message.state == "deferred" and message.envelope.attempts == 1
    assert message.envelope.next_attempt == world.clock.seconds() + MIN_BACKOFF
    assert (f"{queue_id}: to=<b@example.com>, relay=none, delay=0, delays=0/0/0/0, "
            "dsn=4.4.1, status=deferred (connect to relay.example.net[192.0.2.25]:25: "
            "Connection refused)") in log_lines
    world.scan()  # not due yet
    assert len(world.network.connections) == 1
    world.network.up = True
    world.clock.advance(MIN_BACKOFF)
    world.scan()
    assert world.queued() == [] and len(world.network.queued) == 1


def test_a_permanent_refusal_bounces_to_the_sender_and_the_bounce_is_delivered(
        tmp_path: Path, log_lines: list[str]) -> None:
    world = World(tmp_path)
    world.network.policy = ReceivePolicy("next-hop.example.net", relay_domains=("example.com",),
                                         message_size_limit=1024)
    queue_id = world.enqueue(content=CONTENT + b"x" * 2000 + b"\r\n")
    world.runner.kick = lambda: None  # type: ignore[method-assign]  # scan by hand
    world.scan()
    bounce_line = next(line for line in log_lines if "status=bounced" in line)
    assert "dsn=5.3.4" in bounce_line and "Message size exceeds fixed limit" in bounce_line
    ((bounce_id, state, recipients),) = world.queued()
    assert bounce_id != queue_id and (state, recipients) == ("active", ("a@example.org",))
    _, bounce = world.spool.load(bounce_id)
    assert world.spool.load(bounce_id)[0].envelope.sender == ""
    assert b"Subject: Undelivered Mail Returned to Sender" in bounce
    assert b"Status: 5.3.4" in bounce and b"Final-Recipient: rfc822; b@example.com" in bounce
    # Returned whole under Postfix's bounce_size_limit.
    assert b"Content-Type: message/rfc822\r\n" in bounce and b"x" * 2000 in bounce
    # The bounce itself goes out (a@example.org is external: the relay host).
    world.network.policy = ReceivePolicy("next-hop.example.net",
                                         relay_domains=("example.com", "example.org"))
    world.scan()
    assert world.queued() == []
    assert world.network.queued[-1].sender == "" and world.network.queued[-1].recipients == [
        "a@example.org"]


def test_no_bounce_of_a_bounce(tmp_path: Path, log_lines: list[str]) -> None:
    world = World(tmp_path)
    world.resolver.missing.add("relay.example.net")
    queue_id = world.enqueue(sender="")
    world.clock.advance(QUEUE_LIFETIME)
    world.scan()
    assert world.queued() == []
    assert f"{queue_id}: undeliverable bounce discarded (null sender)" in log_lines


def test_a_domain_that_does_not_exist_bounces_at_once_as_the_guide_shows(
        tmp_path: Path, log_lines: list[str]) -> None:
    # Guide, Troubleshooting, "The tunnel message was bounced by the
    # gateway": no SMTP transport for webmail.local, so its MX is looked up.
    world = World(tmp_path, external_relay_host=None)
    world.resolver.missing.add("webmail.local")
    world.runner.kick = lambda: None  # type: ignore[method-assign]
    queue_id = world.enqueue(recipients=("webmail@webmail.local",))
    world.scan()
    assert (f"{queue_id}: to=<webmail@webmail.local>, relay=none, delay=0, delays=0/0/0/0, "
            "dsn=5.4.4, status=bounced (Host or domain name not found. Name service error "
            "for name=webmail.local type=AAAA: Host not found)") in log_lines
    ((bounce_id, _, recipients),) = world.queued()
    assert recipients == ("a@example.org",)
    _, bounce = world.spool.load(bounce_id)
    assert (b"<webmail@webmail.local>: Host or domain name not found. Name service error for "
            b"name=webmail.local type=AAAA: Host not found") in bounce
    assert b"Status: 5.4.4" in bounce


def test_bounce_after_the_queue_lifetime_with_the_name_service_error(
        tmp_path: Path, log_lines: list[str]) -> None:
    world = World(tmp_path)
    world.resolver.unanswered.add("relay.example.net")
    world.runner.kick = lambda: None  # type: ignore[method-assign]
    queue_id = world.enqueue()
    world.scan()
    assert (f"{queue_id}: to=<b@example.com>, relay=none, delay=0, delays=0/0/0/0, dsn=4.4.3, "
            "status=deferred (Host or domain name not found. Name service error for "
            "name=relay.example.net type=A: Host not found, try again)") in log_lines
    backoffs = []
    while any(m[0] == queue_id for m in world.queued()):
        message = world.spool.load(queue_id)[0]
        assert message.state == "deferred"
        backoffs.append(message.envelope.next_attempt - world.clock.seconds())
        world.clock.advance(backoffs[-1])
        world.scan()
    assert backoffs[:5] == [300, 600, 1200, 2400, 4000]
    ((bounce_id, _, recipients),) = world.queued()
    assert recipients == ("a@example.org",)
    assert sum(backoffs) >= QUEUE_LIFETIME - 4000
    _, bounce = world.spool.load(bounce_id)
    assert b"Status: 4.4.7" in bounce and b"message expired after 5 days" in bounce


def test_routing_order(tmp_path: Path) -> None:
    config, errors = apply_changes(MTAConfig(), {
        "relay_domains": ["example.com"], "internal_relay_host": "[127.0.0.1]:26",
        "external_relay_host": "smarthost.example.net:587",
        "transports": [{"domain": "webmail.local", "host": "[192.0.2.5]", "port": 2525}]})
    assert not errors
    assert next_hop("w@webmail.local", config) == NextHop("[192.0.2.5]:2525", "192.0.2.5",
                                                          2525, False)
    assert next_hop("b@Example.com", config) == NextHop("[127.0.0.1]:26", "127.0.0.1", 26,
                                                        False)
    assert next_hop("x@elsewhere.test", config) == NextHop(
        "smarthost.example.net:587", "smarthost.example.net", 587, True)
    direct, _ = apply_changes(config, {"external_relay_host": None})
    assert next_hop("x@elsewhere.test", direct) == NextHop("elsewhere.test", "elsewhere.test",
                                                           25, True)


def still_connecting(world: World, attempts: list[tuple[str, int]]) -> list[Deferred[Any]]:
    """
    Make every connection attempt hang; return the attempts' Deferreds.
    """
    connecting: list[Deferred[Any]] = []

    def slow(address: str, port: int, client: Protocol) -> Deferred[Any]:
        attempts.append((address, port))
        connecting.append(Deferred())
        return connecting[-1]

    world.runner._connect = slow
    return connecting


def test_a_message_in_delivery_is_not_started_again_by_another_scan(tmp_path: Path) -> None:
    world = World(tmp_path)
    pending: list[tuple[str, int]] = []

    connecting = still_connecting(world, pending)
    world.enqueue()
    first = Deferred.fromCoroutine(world.runner.scan())
    second = Deferred.fromCoroutine(world.runner.scan())
    assert pending == [("192.0.2.25", 25)]
    assert second.called and not first.called
    connecting[0].errback(error.ConnectionRefusedError())
    assert first.called


def test_the_after_filter_size_limit_bounces(tmp_path: Path, log_lines: list[str]) -> None:
    world = World(tmp_path, before_filter_message_size_limit=1024,
                  after_filter_message_size_limit=1024)
    world.runner.kick = lambda: None  # type: ignore[method-assign]
    queue_id = world.enqueue(content=CONTENT + b"x" * 2000 + b"\r\n")
    world.scan()
    assert world.network.connections == []
    assert (f"{queue_id}: to=<b@example.com>, relay=none, delay=0, delays=0/0/0/0, dsn=5.3.4, "
            "status=bounced (message size exceeds the after-filter limit (1024 bytes))"
            ) in log_lines
    ((_, _, recipients),) = world.queued()
    assert recipients == ("a@example.org",)


def test_connections_to_one_next_hop_are_limited(tmp_path: Path) -> None:
    from cipherd.smtp.queue import PER_DESTINATION

    world = World(tmp_path, transports=[
        {"domain": "other.example", "host": "[192.0.2.99]", "port": 25}])
    pending: list[tuple[str, int]] = []

    connecting = still_connecting(world, pending)
    for _ in range(PER_DESTINATION + 5):
        world.enqueue()
    world.enqueue(recipients=("x@other.example",))
    scan = Deferred.fromCoroutine(world.runner.scan())
    assert pending.count(("192.0.2.25", 25)) == PER_DESTINATION
    assert pending.count(("192.0.2.99", 25)) == 1  # another hop is not held up
    # The hop refuses them all: the waiting ones get their turn, and all end.
    world.runner._connect = lambda address, port, client: fail(error.ConnectionRefusedError())
    while connecting:
        connecting.pop().errback(error.ConnectionRefusedError())
    assert scan.called
    assert {m.state for m in world.spool.messages()} == {"deferred"}


def test_a_message_held_while_it_waited_for_a_place_is_not_delivered(tmp_path: Path) -> None:
    from twisted.internet.defer import DeferredSemaphore

    world = World(tmp_path)
    world.runner._limit = DeferredSemaphore(1)  # one delivery at a time
    attempts: list[tuple[str, int]] = []
    connecting = still_connecting(world, attempts)
    first, second = world.enqueue(), world.enqueue()
    world.runner.deliver_soon(first)  # takes the only place, hangs connecting
    world.runner.deliver_soon(second)  # claimed, waits for the place
    result_of(world.queue.hold(second))  # the admin holds it meanwhile
    connecting[0].errback(error.ConnectionRefusedError())  # the place is free
    assert attempts == [("192.0.2.25", 25)]  # the held one was not tried
    assert next(m for m in world.queued() if m[0] == second)[1] == "hold"


def test_a_queue_file_that_cannot_be_renamed_is_not_delivered_again(tmp_path: Path) -> None:
    # Not a full disk (the spool copes with that): the file system refuses
    # every rename.  The recipient served must not get the message again.
    refusing = [False]

    def rename(source: Path, target: Path) -> None:
        if refusing[0]:
            raise OSError(errno.EIO, "Input/output error")
        os.rename(source, target)

    world = World(tmp_path, rename=rename)
    queue_id = world.enqueue(recipients=("b@example.com", "c@elsewhere.test"))
    refusing[0] = True
    world.scan()
    world.clock.advance(MIN_BACKOFF)
    world.scan()
    assert [r.recipients for r in world.network.queued] == [["b@example.com"]]
    message, _ = world.spool.load(queue_id)
    assert message.state == "active" and message.envelope.recipients == ("c@elsewhere.test",)
    refusing[0] = False
    result_of(world.runner.scan(flush=True))  # the admin flushes: c is tried again
    assert [r.recipients for r in world.network.queued] == [["b@example.com"]]
    assert world.queued() == [(queue_id, "deferred", ("c@elsewhere.test",))]


def test_a_host_that_refuses_at_the_greeting_hands_over_to_the_next_mx(
        tmp_path: Path, log_lines: list[str]) -> None:
    class Busy(SMTPServer):
        def connectionMade(self) -> None:
            self.factory.sessions += 1
            self._close_with(421, "4.3.2 mx1 Service not available, closing")

    world = World(tmp_path, external_relay_host="")
    world.resolver.resolve = lambda hop: succeed(  # type: ignore[method-assign]
        [("mx1.example.com", "192.0.2.1"), ("mx2.example.com", "192.0.2.2")])
    busy_factory = SMTPFactory(lambda: world.network.policy, world.network._accept, world.clock)
    busy_factory.buildProtocol = lambda addr: Busy(busy_factory)  # type: ignore[method-assign]
    real_connect = world.network.connect

    def connect(address: str, port: int, client: Protocol) -> Deferred[Any]:
        if address == "192.0.2.1":
            pumped(busy_factory.buildProtocol(None), client)
            return succeed(client)
        return real_connect(address, port, client)

    world.runner._connect = connect
    world.enqueue()
    world.scan()
    assert world.queued() == [] and len(world.network.queued) == 1
    assert any("relay=mx2.example.com[192.0.2.2]:25" in line and "status=sent" in line
               for line in log_lines)


def test_a_large_original_is_returned_as_its_header_only() -> None:
    failed = [Failed("b@example.com", "5.7.1", "host h[192.0.2.1] said: 550 5.7.1 no "
                                               "(in reply to end of DATA command)", "h")]
    original = CONTENT + b"x" * BOUNCE_SIZE_LIMIT + b"\r\n"
    bounce = build_bounce(my_hostname="gw.example.org", queue_id="ABC", sender="a@example.org",
                          received=0, now=60, failed=failed, original=original)
    assert b"Content-Type: text/rfc822-headers\r\n" in bounce
    assert b"Subject: hello\r\n" in bounce and b"xxxx" not in bounce
    assert b"If you do so, please include this problem report." in bounce


class Broken:
    def process(self, envelope: Envelope, content: bytes) -> Deferred[Any]:
        return fail(ValueError("an odd certificate"))


def test_a_message_no_attempt_can_process_bounces_after_the_queue_lifetime(
        tmp_path: Path, log_lines: list[str]) -> None:
    world = World(tmp_path, processor=Broken())
    world.runner.kick = lambda: None  # type: ignore[method-assign]
    queue_id = world.enqueue()
    world.scan()
    (message,) = world.spool.messages()
    assert message.state == "deferred"
    assert message.envelope.reason == "processing failed (ValueError: an odd certificate)"
    world.clock.advance(QUEUE_LIFETIME)
    world.scan()
    ((bounce_id, _, recipients),) = world.queued()
    assert bounce_id != queue_id and recipients == ("a@example.org",)
    assert b"processing failed (ValueError: an odd certificate)" in world.spool.load(
        bounce_id)[1]


def test_verification_probes_cannot_take_the_places_of_deliveries(tmp_path: Path) -> None:
    from cipherd.smtp.queue import PROBES_PER_DESTINATION

    world = World(tmp_path)
    pending: list[tuple[str, int]] = []
    still_connecting(world, pending)
    probes = [Deferred.fromCoroutine(world.runner.probe(f"u{i}@example.com"))
              for i in range(PROBES_PER_DESTINATION + 3)]
    assert len(pending) == PROBES_PER_DESTINATION  # the rest wait for a probe place
    world.enqueue()
    Deferred.fromCoroutine(world.runner.scan())
    assert len(pending) == PROBES_PER_DESTINATION + 1  # the delivery is not held up
    assert not any(p.called for p in probes)


# Availability under abuse and faults (issue 12) ------------------------------

# 50 KB in lines of 78 octets: the size the half-written file had.
LARGE = CONTENT + (b"x" * 76 + b"\r\n") * 650


def test_a_deferral_that_cannot_be_written_on_a_full_disk_stays_deferred_with_its_reason(
        small_disk: Path) -> None:
    world = World(small_disk)
    queue_id = world.enqueue(recipients=("b@example.com", "c@elsewhere.test"), content=LARGE)
    filler = fill_disk(small_disk, leave=20_000)  # less than the rewritten file needs
    world.scan()
    assert [r.recipients for r in world.network.queued] == [["b@example.com"]]
    # Deferred for the recipient still to serve, with its reason and a first
    # back-off step, as if the disk had room; nothing half-written is left.
    (message,) = result_of(world.queue.messages())
    assert (message.state, message.envelope.recipients) == ("deferred", ("c@elsewhere.test",))
    assert message.envelope.attempts == 1
    assert message.envelope.next_attempt == world.clock.seconds() + MIN_BACKOFF
    assert "Relay access denied" in message.envelope.reason
    assert describe(message)["reason"] == message.envelope.reason  # the API's listing
    assert list((small_disk / "spool" / "incoming").iterdir()) == []
    world.scan()  # not due: b does not get it again
    assert len(world.network.queued) == 1
    # A restart now would find it deferred with its old envelope: tried
    # again at once for both recipients (b twice), never lost.
    on_disk = DirectorySpool(small_disk / "spool").load(queue_id)[0]
    assert (on_disk.state, on_disk.envelope.recipients) == (
        "deferred", ("b@example.com", "c@elsewhere.test"))
    # Room again: the next attempt writes the envelope it had in memory.
    filler.unlink()
    world.clock.advance(MIN_BACKOFF)
    world.scan()
    assert len(world.network.queued) == 1
    on_disk = DirectorySpool(small_disk / "spool").load(queue_id)[0]
    assert (on_disk.state, on_disk.envelope.recipients, on_disk.envelope.attempts) == (
        "deferred", ("c@elsewhere.test",), 2)


def test_a_bounce_that_cannot_be_queued_on_a_full_disk_keeps_its_recipient_queued(
        small_disk: Path) -> None:
    world = World(small_disk)
    world.network.policy = ReceivePolicy("next-hop.example.net", relay_domains=("example.com",),
                                         message_size_limit=1024)
    world.runner.kick = lambda: None  # type: ignore[method-assign]  # scan by hand
    queue_id = world.enqueue(content=LARGE)
    filler = fill_disk(small_disk, leave=0)  # no room for the bounce either
    world.scan()
    (message,) = result_of(world.queue.messages())
    assert (message.envelope.queue_id, message.state) == (queue_id, "deferred")
    assert "Message size exceeds fixed limit" in message.envelope.reason
    assert list((small_disk / "spool" / "incoming").iterdir()) == []
    filler.unlink()
    world.clock.advance(MIN_BACKOFF)
    world.scan()
    ((bounce_id, _, recipients),) = world.queued()
    assert bounce_id != queue_id and recipients == ("a@example.org",)


class Unavailable:
    """
    Processing that finds the database locked until C{available} is set.
    """

    def __init__(self) -> None:
        self.available = False
        self.calls = 0

    def process(self, envelope: Envelope, content: bytes) -> Deferred[Any]:
        self.calls += 1
        if not self.available:
            return fail(DatabaseUnavailable("database is locked"))
        return succeed(ProcessingResult.unchanged(envelope, content))


def test_a_database_that_is_unavailable_is_retried_then_deferred_briefly_and_logged_once(
        tmp_path: Path, log_lines: list[str]) -> None:
    processor = Unavailable()
    world = World(tmp_path, processor=processor)
    first, second = world.enqueue(), world.enqueue()
    scan = Deferred.fromCoroutine(world.runner.scan())
    assert processor.calls == 2 and not scan.called
    for wait in DATABASE_RETRY_WAITS:
        world.clock.advance(wait)
    assert scan.called and processor.calls == 2 * (1 + len(DATABASE_RETRY_WAITS))
    for message in world.spool.messages():
        assert message.state == "deferred"
        assert message.envelope.attempts == 0  # not a back-off step
        assert message.envelope.next_attempt == world.clock.seconds() + DATABASE_DEFERRAL
        assert message.envelope.reason == "the database is unavailable: database is locked"
    waiting = [line for line in log_lines if "processing waits for the database" in line]
    assert len(waiting) == 1 and "(database is locked)" in waiting[0]
    assert not any("processing failed" in line for line in log_lines)
    assert world.network.queued == []
    world.clock.advance(DATABASE_DEFERRAL - 1)
    world.scan()
    assert processor.calls == 8  # not due yet
    processor.available = True
    world.clock.advance(1)
    world.scan()
    assert world.queued() == [] and len(world.network.queued) == 2
    assert {first, second} <= {line.split(":")[0] for line in log_lines
                               if "status=sent" in line}
    down = sum(DATABASE_RETRY_WAITS) + DATABASE_DEFERRAL
    assert f"Processing works again: the database answered after {down:.0f} s (2 messages " \
           "were deferred meanwhile)" in log_lines
    world.clock.advance(CACHE_IDLE)  # the connection kept for a next message is closed
    assert world.clock.getDelayedCalls() == []


def test_a_database_outage_never_bounces_even_a_message_at_the_end_of_its_lifetime(
        tmp_path: Path) -> None:
    world = World(tmp_path, processor=Unavailable())
    world.runner.kick = lambda: None  # type: ignore[method-assign]
    queue_id = world.enqueue()
    world.clock.advance(QUEUE_LIFETIME)
    scan = Deferred.fromCoroutine(world.runner.scan())
    world.clock.pump(DATABASE_RETRY_WAITS)
    assert scan.called
    assert world.queued() == [(queue_id, "deferred", ("b@example.com",))]


def test_stopping_while_waiting_for_the_database_leaves_the_message_as_it_was(
        tmp_path: Path) -> None:
    world = World(tmp_path, processor=Unavailable())
    queue_id = world.enqueue()
    scan = Deferred.fromCoroutine(world.runner.scan())
    world.runner.stop()
    assert scan.called and world.clock.getDelayedCalls() == []
    (message,) = world.spool.messages()
    assert (message.envelope.queue_id, message.state, message.envelope.attempts) == (
        queue_id, "active", 0)


def test_a_database_locked_by_another_process_defers_briefly_then_the_mail_flows(
        tmp_path: Path, log_lines: list[str]) -> None:
    world = World(tmp_path)
    path = tmp_path / "cipherd.db"
    store = Store(create_engine_for_url(f"sqlite:///{path}", sqlite_busy_timeout_ms=50),
                  SynchronousRunner(), world.clock)

    async def create() -> None:
        await store.migrate()
        await store.run(lambda conn: conn.exec_driver_sql(
            "CREATE TABLE processed (queue_id TEXT)"))

    result_of(create())

    @implementer(IMessageProcessor)
    class Recording:
        """
        Processing that writes to the database, as the gateway's does.
        """

        def process(self, envelope: Envelope, content: bytes) -> Deferred[ProcessingResult]:
            d = store.run(lambda conn: conn.exec_driver_sql(
                "INSERT INTO processed VALUES (?)", (envelope.queue_id,)))
            return d.addCallback(lambda _: ProcessingResult.unchanged(envelope, content))

    world.runner = QueueRunner(world.queue, lambda: world.config, world.resolver,
                               world.network.connect, world.clock, Recording(),
                               counters=Counters(world.clock))
    other = sqlite3.connect(path, isolation_level=None)  # another process, say a backup
    try:
        other.execute("BEGIN EXCLUSIVE")
        queue_id = world.enqueue()
        scan = Deferred.fromCoroutine(world.runner.scan())
        for wait in DATABASE_RETRY_WAITS:
            world.clock.advance(wait)
        assert scan.called
        (message,) = world.spool.messages()
        assert (message.state, message.envelope.attempts) == ("deferred", 0)
        assert message.envelope.reason == "the database is unavailable: database is locked"
        assert message.envelope.next_attempt == world.clock.seconds() + DATABASE_DEFERRAL
        assert len([line for line in log_lines if "waits for the database" in line]) == 1
        other.execute("COMMIT")
        world.clock.advance(DATABASE_DEFERRAL)
        world.scan()
        assert world.queued() == [] and len(world.network.queued) == 1
        assert other.execute("SELECT queue_id FROM processed").fetchall() == [(queue_id,)]
    finally:
        other.close()
        store.close()


class Killed(BaseException):
    """
    The process was killed (C{kill -9}): nothing after this point runs.
    """


def test_a_kill_between_the_two_renames_of_a_deferral_neither_retries_at_once_nor_doubles_the_backoff(  # noqa: E501
        tmp_path: Path) -> None:
    def rename(source: Path, target: Path) -> None:
        if (source.parent.name, target.parent.name) == ("active", "deferred"):
            raise Killed  # the new envelope is in place, the second rename never happens
        os.rename(source, target)

    world = World(tmp_path, rename=rename)
    world.network.up = False
    queue_id = world.enqueue()
    killed_at = world.clock.seconds()
    Deferred.fromCoroutine(world.runner.scan()).addErrback(lambda f: f.trap(Killed))
    (message,) = world.spool.messages()
    assert (message.envelope.queue_id, message.state, message.envelope.attempts) == (
        queue_id, "active", 1)
    world.scan()  # the record, not the directory, says when it is due
    assert len(world.network.connections) == 1

    restarted = World(tmp_path, clock=world.clock)
    restarted.network.up = False
    (message,) = restarted.spool.messages()
    assert (message.state, message.envelope.attempts) == ("deferred", 1)
    assert message.envelope.next_attempt == killed_at + MIN_BACKOFF
    restarted.scan()
    restarted.clock.advance(MIN_BACKOFF - 1)
    restarted.scan()
    assert restarted.network.connections == []  # not before its recorded next attempt
    restarted.clock.advance(1)
    restarted.scan()
    assert len(restarted.network.connections) == 1
    (message,) = restarted.spool.messages()
    # The second step of the back-off (600 s), not a doubled one.
    assert (message.state, message.envelope.attempts) == ("deferred", 2)
    assert message.envelope.next_attempt == restarted.clock.seconds() + 2 * MIN_BACKOFF


def test_release_and_flush_still_mean_now(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.network.up = False
    queue_id = world.enqueue()
    world.scan()
    assert result_of(world.queue.hold(queue_id))
    assert result_of(world.queue.release(queue_id))
    (message,) = world.spool.messages()
    assert (message.state, message.envelope.next_attempt) == ("active", 0.0)
    world.scan()  # at once, not at the deferral's next attempt
    assert len(world.network.connections) == 2
    result_of(world.runner.scan(flush=True))
    assert len(world.network.connections) == 3


def test_messages_to_one_host_share_a_connection_that_waits_briefly_for_the_next(
        tmp_path: Path, log_lines: list[str]) -> None:
    world = World(tmp_path)
    first, second = world.enqueue(), world.enqueue()
    world.scan()
    assert world.queued() == [] and len(world.network.queued) == 2
    # One connection, one greeting and EHLO: the second message followed
    # the first's 250 with its own MAIL FROM.
    assert world.network.connections == [("192.0.2.25", 25)]
    assert sum("status=sent" in line for line in log_lines) == 2
    assert world.network.factory.sessions == 1
    world.clock.advance(CACHE_IDLE)
    world.network.servers[0][1].flush()
    assert world.network.factory.sessions == 0  # QUIT after the idle time
    third = world.enqueue()
    world.scan()
    assert world.queued() == [] and len(world.network.connections) == 2
    assert {first, second, third} <= {line.split(":")[0] for line in log_lines
                                      if "status=sent" in line}


@pytest.mark.parametrize("noticed", [True, False])
def test_a_kept_connection_the_next_hop_closed_is_replaced_without_a_deferral(
        tmp_path: Path, noticed: bool) -> None:
    world = World(tmp_path)
    world.enqueue()
    world.scan()
    server, pump = world.network.servers[0]
    # The next hop ends the idle connection (its own timeout): noticed at
    # once, or only when the next MAIL FROM meets a closed connection.
    server._close_with(421, "4.4.2 next-hop.example.net Error: timeout exceeded")
    if noticed:
        pump.flush()
    world.enqueue()
    world.scan()
    assert world.queued() == [] and len(world.network.queued) == 2
    assert len(world.network.connections) == 2


def test_a_connection_is_used_no_longer_than_its_lifetime(tmp_path: Path) -> None:
    world = World(tmp_path)
    messages = int(CACHE_LIFETIME / (CACHE_IDLE / 2)) + 2
    for _ in range(messages):
        world.enqueue()
        world.scan()
        world.clock.advance(CACHE_IDLE / 2)
    assert world.queued() == [] and len(world.network.queued) == messages
    assert len(world.network.connections) == 2


def test_a_transaction_that_did_not_end_cleanly_closes_its_connection(
        tmp_path: Path) -> None:
    world = World(tmp_path)
    world.network.policy = ReceivePolicy("next-hop.example.net")  # relays for nobody
    world.enqueue()
    world.scan()
    assert world.network.queued == []
    for _, pump in world.network.servers:
        pump.flush()
    assert world.network.factory.sessions == 0


def test_stopping_closes_the_connections_kept_for_a_next_message(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.enqueue()
    world.scan()
    assert world.network.factory.sessions == 1
    world.runner.stop()
    world.network.servers[0][1].flush()
    assert world.network.factory.sessions == 0
    assert world.clock.getDelayedCalls() == []


@pytest.mark.parametrize("change", ["hold", "delete"])
def test_an_admin_change_while_a_message_is_written_is_not_undone_by_its_delivery(
        tmp_path: Path, change: str) -> None:
    """
    The spool has linked the new file into active/ (the admin sees it) and
    the admin holds or deletes it before the reactor hears that the write
    is done: the message is read back, not delivered from memory as it was
    written.
    """
    world = World(tmp_path)
    accept = world.queue.accept

    def accept_then_admin_changes(received: Received) -> Deferred[Any]:
        def admin(message: Any) -> Any:
            result_of(getattr(world.queue, change)(message.envelope.queue_id))
            return message
        return accept(received).addCallback(admin)

    world.queue.accept = accept_then_admin_changes  # type: ignore[method-assign]
    received = Received(queue_id=new_queue_id(), sender="a@example.org",
                        recipients=["b@example.com"], client="c", helo="h", content=CONTENT)
    world.runner.accept(received)
    assert world.network.queued == []
    assert world.queued() == ([(received.queue_id, "hold", ("b@example.com",))]
                              if change == "hold" else [])


def test_a_message_written_without_an_admin_change_is_delivered_from_memory(
        tmp_path: Path) -> None:
    world = World(tmp_path)
    loads: list[str] = []
    load = world.queue.load

    def counting_load(queue_id: str) -> Any:
        loads.append(queue_id)
        return load(queue_id)

    world.queue.load = counting_load  # type: ignore[method-assign]
    received = Received(queue_id=new_queue_id(), sender="a@example.org",
                        recipients=["b@example.com"], client="c", helo="h", content=CONTENT)
    world.runner.accept(received)
    assert len(world.network.queued) == 1 and loads == []


class _FakeKept:
    def __init__(self, opened: float) -> None:
        self.opened = opened
        self.idle = True
        self.closed = False

    def wait_idle(self, ended: Any) -> None:
        pass

    def close_idle(self) -> None:
        self.closed, self.idle = True, False


def test_a_kept_connection_past_its_lifetime_is_closed_when_taken() -> None:
    from cipherd.smtp.client import ConnectionCache

    clock = Clock()
    cache = ConnectionCache(clock, 5, idle=CACHE_IDLE, lifetime=CACHE_LIFETIME)
    kept = _FakeKept(opened=clock.seconds())
    clock.advance(CACHE_LIFETIME - 1)
    cache.put("hop", kept)  # type: ignore[arg-type]
    clock.advance(1.5)  # within its idle time, past its lifetime
    assert cache.take("hop") is None and kept.closed and len(cache) == 0


def test_a_kept_connection_is_not_used_once_the_helo_name_changed(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.enqueue()
    world.scan()
    world.config, errors = apply_changes(world.config, {"smtp_helo_name": "mx.example.org"})
    assert not errors
    world.enqueue()
    world.scan()
    assert world.queued() == [] and len(world.network.connections) == 2
    assert [r.helo for r in world.network.queued] == ["gw.example.org", "mx.example.org"]
