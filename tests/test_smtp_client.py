"""
The SMTP client against cipherd's own server, in memory (iosim): content
arrives byte-exact whatever the chunking, and each recipient gets the
outcome the next hop gave, in Postfix's words.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test import iosim

from cipherd.core.envelope import Outcome, Received
from cipherd.smtp import client as smtp_client
from cipherd.smtp.client import Delivery, SMTPClient
from cipherd.smtp.server import ReceivePolicy, SMTPFactory, SMTPServer

HOST = "next-hop.example.net"


class Hop:
    """
    cipherd's server as the next hop, with what it queued.
    """

    def __init__(self, policy: ReceivePolicy | None = None, accept: Any = None) -> None:
        self.clock = Clock()
        self.queued: list[Received] = []
        self.policy = policy or ReceivePolicy(HOST, relay_domains=("example.com",))
        self.factory = SMTPFactory(lambda: self.policy, accept or self._accept, self.clock)
        self.client_wrote = b""

    def _accept(self, received: Received) -> Deferred[None]:
        self.queued.append(received)
        return succeed(None)

    def deliver(self, delivery: Delivery, chunk: int | None = None) -> Delivery:
        server = self.factory.buildProtocol(None)
        client = SMTPClient(delivery, f"{HOST}[192.0.2.25]", self.clock, None)
        server_transport = iosim.FakeTransport(server, isServer=True)
        client_transport = iosim.FakeTransport(client, isServer=False)
        original = client_transport.write

        def write(data: bytes) -> None:
            self.client_wrote += data
            # Deliver what the client writes in pieces of this size.
            step = chunk or len(data) or 1
            for start in range(0, len(data), step):
                original(data[start:start + step])

        client_transport.write = write  # type: ignore[method-assign]
        pump = iosim.connect(server, server_transport, client, client_transport)
        pump.flush()
        results: list[Delivery] = []
        client.done.addCallback(results.append)
        assert results, "the delivery did not finish"
        return results[0]


def delivery(content: bytes, *recipients: str, sender: str = "a@example.org") -> Delivery:
    return Delivery(sender, list(recipients or ["b@example.com"]), content, "gw.example.org")


def dot_stuff(content: bytes) -> bytes:
    """
    The DATA payload for C{content}, made whole: what the client writes a
    piece at a time.
    """
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


def test_dot_stuffing_of_the_whole_content() -> None:
    content = b".a\r\nb\r\n.\r\n..c"
    assert dot_stuff(content) == b"..a\r\nb\r\n..\r\n...c\r\n.\r\n"
    hop = Hop()
    hop.deliver(delivery(content))
    assert hop.client_wrote.endswith(b"DATA\r\n" + dot_stuff(content) + b"QUIT\r\n")


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(st.sampled_from([b".", b"\r\n", b"x", b"\r\n.", b"..", b"\r\n\r\n",
                                        b"x\r\n.."]), max_size=40),
       step=st.integers(min_value=1, max_value=12))
def test_the_payload_written_in_pieces_is_the_whole_stuffed(pieces: list[bytes],
                                                            step: int) -> None:
    """
    Written a few bytes at a time, the payload is dot_stuff's, wherever the
    pieces are cut: at a CR before its LF, before a dot, in a line.
    """
    content = b"".join(pieces)
    hop = Hop()
    with mock.patch.object(smtp_client, "_DATA_STEP", step):
        hop.deliver(delivery(content))
    assert hop.client_wrote.endswith(b"DATA\r\n" + dot_stuff(content) + b"QUIT\r\n")


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(st.sampled_from([b".", b"..", b". x", b"x.", b"", b"a" * 70, b".\x80"]),
                      max_size=30),
       chunk=st.integers(min_value=1, max_value=40))
def test_dot_lines_at_every_offset_arrive_byte_exact(lines: list[bytes], chunk: int) -> None:
    content = b"Subject: dots\r\n\r\n" + b"".join(line + b"\r\n" for line in lines)
    hop = Hop()
    done = hop.deliver(delivery(content), chunk=chunk)
    assert [o.status for o in done.outcomes.values()] == ["sent"]
    (received,) = hop.queued
    assert received.content.endswith(b"\r\n" + content) or received.content.endswith(content)
    assert received.content[received.content.index(b"Subject: dots"):] == content


def test_each_recipient_gets_its_own_outcome_in_postfix_words() -> None:
    hop = Hop()
    done = hop.deliver(delivery(b"Subject: x\r\n\r\nbody\r\n", "b@example.com",
                                "victim@elsewhere.test"))
    sent = done.outcomes["b@example.com"]
    assert sent.status == "sent" and sent.dsn == "2.0.0"
    assert sent.reason == f"250 2.0.0 Ok: queued as {hop.queued[0].queue_id}"
    refused = done.outcomes["victim@elsewhere.test"]
    assert (refused.status, refused.dsn) == ("deferred", "4.7.1")
    assert refused.reason == (f"host {HOST}[192.0.2.25] said: 454 4.7.1 "
                              "<victim@elsewhere.test>: Relay access denied (in reply to RCPT "
                              "TO command)")
    assert hop.queued[0].recipients == ["b@example.com"]


def test_a_permanent_refusal_bounces() -> None:
    hop = Hop(ReceivePolicy(HOST, relay_domains=("example.com",), message_size_limit=2000))
    done = hop.deliver(delivery(b"x" * 3000 + b"\r\n"))
    outcome = done.outcomes["b@example.com"]
    assert (outcome.status, outcome.dsn) == ("bounced", "5.3.4")
    assert outcome.reason.endswith("552 5.3.4 Message size exceeds fixed limit (in reply to "
                                   "MAIL FROM command)")


def test_a_next_hop_that_is_ourselves_is_a_loop() -> None:
    hop = Hop()
    looped = delivery(b"x\r\n")
    looped.my_hostname, looped.destination = HOST.upper(), "[127.0.0.1]:2525"
    outcome = hop.deliver(looped).outcomes["b@example.com"]
    assert (outcome.status, outcome.dsn, outcome.reason) == (
        "bounced", "5.4.6", "mail for [127.0.0.1]:2525 loops back to myself")
    assert hop.queued == []


@pytest.mark.parametrize("sender", ["", "a@example.org"])
def test_null_sender_and_8bit(sender: str) -> None:
    hop = Hop()
    done = hop.deliver(delivery("Subject: é\r\n\r\nGrüße\r\n".encode(), sender=sender))
    assert done.outcomes["b@example.com"].status == "sent"
    assert hop.queued[0].sender == sender


class NoPipelining(SMTPServer):
    def do_EHLO(self, argument: bytes) -> None:
        self._greet(argument, esmtp=True)
        self._reply(250, HOST, "SIZE 10240000", "8BITMIME")


def test_one_command_at_a_time_without_pipelining() -> None:
    hop = Hop()
    hop.factory.buildProtocol = lambda addr: NoPipelining(hop.factory)  # type: ignore[method-assign]
    done = hop.deliver(delivery(b"Subject: x\r\n\r\n.body\r\n", "b@example.com",
                                "victim@elsewhere.test"))
    assert done.outcomes["b@example.com"].status == "sent"
    assert done.outcomes["victim@elsewhere.test"].status == "deferred"
    assert hop.queued[0].content.endswith(b"\r\n\r\n.body\r\n")
    refused = Hop(ReceivePolicy(HOST, relay_domains=("example.com",), message_size_limit=2000))
    refused.factory.buildProtocol = (  # type: ignore[method-assign]
        lambda addr: NoPipelining(refused.factory))
    outcome = refused.deliver(delivery(b"x" * 3000 + b"\r\n")).outcomes["b@example.com"]
    assert (outcome.status, outcome.dsn) == ("bounced", "5.3.4")


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_probe_asks_rcpt_to_and_sends_no_data(pipelining: bool) -> None:
    hop = Hop()
    if not pipelining:
        hop.factory.buildProtocol = (  # type: ignore[method-assign]
            lambda addr: NoPipelining(hop.factory))
    probe = Delivery("", ["b@example.com", "victim@elsewhere.test"], b"", "gw.example.org",
                     probe=True)
    done = hop.deliver(probe)
    assert done.outcomes["b@example.com"] == Outcome("deliverable", "2.1.5", "250 2.1.5 Ok")
    assert done.outcomes["victim@elsewhere.test"].status == "deferred"
    assert hop.queued == []
    commands = [line.split(b":")[0] for line in hop.client_wrote.split(b"\r\n") if line]
    assert commands == [b"EHLO gw.example.org", b"MAIL FROM", b"RCPT TO", b"RCPT TO", b"QUIT"]


class DataAlways(SMTPServer):
    def do_DATA(self, argument: bytes) -> None:
        self._data = []
        self._reply(354, "End data with <CR><LF>.<CR><LF>")


def test_data_accepted_without_recipients_gets_an_empty_message() -> None:
    """
    RFC 2920 §3.1: when every pipelined RCPT failed but DATA got 354 anyway,
    the client ends the data at once instead of sending the message.
    """
    hop = Hop()
    hop.factory.buildProtocol = lambda addr: DataAlways(hop.factory)  # type: ignore[method-assign]
    done = hop.deliver(delivery(b"Subject: secret\r\n\r\nbody\r\n", "victim@elsewhere.test"))
    assert done.outcomes["victim@elsewhere.test"].status == "deferred"
    assert all(b"secret" not in r.content for r in hop.queued)


def test_replies_sent_before_the_tls_handshake_do_not_count() -> None:
    """
    A man in the middle appends fake replies to the server's 220 for
    STARTTLS: the delivery fails instead of counting them after TLS.
    """
    clock = Clock()
    client = SMTPClient(delivery(b"x\r\n"), f"{HOST}[192.0.2.25]", clock, object())  # type: ignore[arg-type]
    transport = StringTransport()
    client.makeConnection(transport)
    client.dataReceived(b"220 mx ESMTP\r\n")
    client.dataReceived(b"250-mx\r\n250 STARTTLS\r\n")
    assert transport.value().endswith(b"STARTTLS\r\n")
    done: list[Delivery] = []
    client.done.addCallback(done.append)
    client.dataReceived(b"220 go ahead\r\n250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n")
    assert done[0].outcomes["b@example.com"].status == "deferred"
    assert "data after the STARTTLS reply" in done[0].outcomes["b@example.com"].reason


def test_an_endless_reply_is_cut_off() -> None:
    client = SMTPClient(delivery(b"x\r\n"), f"{HOST}[192.0.2.25]", Clock(), None)
    transport = StringTransport()
    client.makeConnection(transport)
    done: list[Delivery] = []
    client.done.addCallback(done.append)
    client.dataReceived(b"220-hello\r\n" * 500)
    assert done[0].outcomes["b@example.com"].reason.endswith("failed: reply too long")
    assert transport.disconnecting


@pytest.mark.parametrize(("reply", "status", "dsn"), [
    (b"552 5.3.4 Message too big\r\n", "bounced", "5.3.4"),
    (b"250 2.0.0 Ok: queued as X\r\n", "deferred", "4.5.0"),
])
def test_a_reply_before_the_end_of_the_data_ends_the_connection(reply: bytes, status: str,
                                                                 dsn: str) -> None:
    """
    A next hop that answers while the body is still being written is in
    the middle of DATA: a 2xx there accepted nothing, and the connection is
    closed, never kept for the next message nor sent a QUIT inside the body.
    """
    content = b"x" * 600_000 + b"\r\n"
    client = SMTPClient(delivery(content), f"{HOST}[192.0.2.25]", Clock(), None, keep=True)
    transport = StringTransport()
    client.makeConnection(transport)
    for line in [b"220 h\r\n", b"250-h\r\n250 PIPELINING\r\n", b"250 ok\r\n", b"250 ok\r\n",
                 b"354 go\r\n"]:
        client.dataReceived(line)
    transport.producer.resumeProducing()  # one piece of the body written
    written = transport.value()
    done: list[Delivery] = []
    client.done.addCallback(done.append)
    client.dataReceived(reply)
    (outcome,) = done[0].outcomes.values()
    assert (outcome.status, outcome.dsn) == (status, dsn)
    assert not client.idle and transport.disconnecting and transport.producer is None
    assert transport.value() == written  # no QUIT, no dot


class _TCPLike(StringTransport):
    """
    As a TCP transport does, a pull producer is asked for its first piece
    at once, inside registerProducer.
    """

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        super().registerProducer(producer, streaming)
        if not streaming:
            producer.resumeProducing()


def test_a_reply_that_comes_with_the_354_accepted_nothing() -> None:
    """
    A next hop (or a man in the middle) that answers MAIL, RCPT, DATA and
    the end of the data in one segment, before it has seen a byte of the
    body: the message is deferred, the connection closed, never kept.
    """
    content = b"Subject: x\r\n\r\nbody\r\n"
    client = SMTPClient(delivery(content), f"{HOST}[192.0.2.25]", Clock(), None, keep=True)
    transport = _TCPLike()
    client.makeConnection(transport)
    client.dataReceived(b"220 mx\r\n")
    client.dataReceived(b"250-mx\r\n250 PIPELINING\r\n")
    done: list[Delivery] = []
    client.done.addCallback(done.append)
    client.dataReceived(b"250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 Ok: queued as FAKE\r\n")
    (outcome,) = done[0].outcomes.values()
    assert (outcome.status, outcome.dsn) == ("deferred", "4.5.0")
    assert "before the message was sent" in outcome.reason
    assert not client.idle and transport.disconnecting
    assert content not in transport.value()


def test_a_kept_connection_does_not_hold_the_message_it_delivered() -> None:
    content = b"Subject: x\r\n\r\n" + b"y" * 5000 + b"\r\n"
    client = SMTPClient(delivery(content), f"{HOST}[192.0.2.25]", Clock(), None, keep=True)
    transport = _TCPLike()
    client.makeConnection(transport)
    done: list[Delivery] = []
    client.done.addCallback(done.append)
    for reply in [b"220 mx\r\n", b"250-mx\r\n250 PIPELINING\r\n",
                  b"250 ok\r\n250 ok\r\n354 go\r\n"]:
        client.dataReceived(reply)
    client.dataReceived(b"250 2.0.0 Ok: queued as Q1\r\n")
    assert done[0].content == content and done[0].outcomes["b@example.com"].status == "sent"
    assert client.idle and client.delivery.content == b""
    # The next message goes over it as usual.
    client.deliver(delivery(b"Subject: two\r\n\r\nsecond\r\n"))
    assert transport.value().endswith(b"y\r\n.\r\nMAIL FROM:<a@example.org>\r\n"
                                      b"RCPT TO:<b@example.com>\r\nDATA\r\n")
