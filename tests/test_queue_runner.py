"""
The queue runner, deterministic: a real spool on disk, cipherd's own SMTP
server as the next hop in memory (iosim), name resolution and connection
failures injected, time driven by a Clock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import error
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.test import iosim
from zope.interface import implementer

from cipherd.smtp.bounce import BOUNCE_SIZE_LIMIT, Failed, build_bounce
from cipherd.smtp.config import MTAConfig, apply_changes
from cipherd.smtp.queue import MIN_BACKOFF, QUEUE_LIFETIME, MailQueue, QueueRunner
from cipherd.smtp.routing import HopNotFound, IHopResolver, NextHop, next_hop
from cipherd.smtp.server import Received, ReceivePolicy, SMTPFactory
from cipherd.smtp.spool import DirectorySpool, Envelope, new_queue_id
from cipherd.testing import SynchronousRunner, result_of

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

    def _accept(self, received: Received) -> Deferred[None]:
        self.queued.append(received)
        return succeed(None)

    def connect(self, address: str, port: int, client: Protocol) -> Deferred[Any]:
        self.connections.append((address, port))
        if not self.up:
            return fail(error.ConnectionRefusedError())
        server = self.factory.buildProtocol(None)
        pump = iosim.connect(server, iosim.FakeTransport(server, isServer=True),
                             client, iosim.FakeTransport(client, isServer=False))
        pump.flush()
        return succeed(client)


class World:
    def __init__(self, tmp_path: Path, **config: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.spool = DirectorySpool(tmp_path / "spool")
        self.queue = MailQueue(self.spool, SynchronousRunner(), self.clock)
        changes = {"my_hostname": "gw.example.org",
                   "external_relay_host": "[relay.example.net]", **config}
        self.config, errors = apply_changes(MTAConfig(), changes)
        assert not errors
        self.network = Network(self.clock)
        self.resolver = FakeResolver()
        self.runner = QueueRunner(self.queue, lambda: self.config, self.resolver,
                                  self.network.connect, self.clock)

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


def test_a_queue_file_that_cannot_be_updated_is_held_not_delivered_again(
        tmp_path: Path) -> None:
    world = World(tmp_path)
    world.network.policy = ReceivePolicy("next-hop.example.net", relay_domains=("example.com",))
    queue_id = world.enqueue(recipients=("b@example.com", "c@elsewhere.test"))
    real_move = world.spool.move

    def full(queue_id: str, state: str, envelope: Envelope | None = None,
             keep_hold: bool = False) -> Any:
        if envelope is not None:
            raise OSError(28, "No space left on device")
        return real_move(queue_id, state, envelope, keep_hold)

    world.spool.move = full  # type: ignore[method-assign]
    world.scan()
    world.clock.advance(600)
    world.scan()
    assert [r.recipients for r in world.network.queued] == [["b@example.com"]]
    assert world.queued() == [(queue_id, "hold", ("b@example.com", "c@elsewhere.test"))]


def test_a_host_that_refuses_at_the_greeting_hands_over_to_the_next_mx(
        tmp_path: Path, log_lines: list[str]) -> None:
    from cipherd.smtp.server import SMTPServer

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
            server = busy_factory.buildProtocol(None)
            iosim.connect(server, iosim.FakeTransport(server, isServer=True),
                          client, iosim.FakeTransport(client, isServer=False)).flush()
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
    world = World(tmp_path)
    world.runner.processor = Broken()  # type: ignore[assignment]
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
