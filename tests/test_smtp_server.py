"""
The SMTP server, byte for byte over a StringTransport, with the clock
injected: every hardening point has a test named after the attack.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from cipherd.smtp.server import MAX_LINE, Received, ReceivePolicy, SMTPFactory, SMTPServer

HOST = "mx.example.com"
CLIENT = "192.0.2.10"  # not in my_networks
TLS_MARK = object()


class TLSStringTransport(StringTransport):
    def __init__(self, peer: str) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", peer, 40000))
        self.tls_started: list[Any] = []

    def startTLS(self, options: Any) -> None:
        self.tls_started.append(options)


class Session:
    """
    One session against a server, with what it queued.
    """

    def __init__(self, policy: ReceivePolicy | None = None, *, peer: str = CLIENT,
                 accept: Any = None, tls: Any = None, factory: SMTPFactory | None = None
                 ) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.queued: list[Received] = []
        self.policy = policy or ReceivePolicy(HOST, relay_domains=("example.com",))
        self.factory = factory or SMTPFactory(
            lambda: self.policy, accept or self._accept, self.clock, tls)
        self.transport = TLSStringTransport(peer)
        self.server = SMTPServer(self.factory)
        self.server.makeConnection(self.transport)

    def _accept(self, received: Received) -> Deferred[None]:
        self.queued.append(received)
        return succeed(None)

    def send(self, data: bytes) -> list[bytes]:
        """
        Send bytes; return the reply lines they produced.
        """
        self.transport.clear()
        self.server.dataReceived(data)
        return self.transport.value().split(b"\r\n")[:-1]

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting


def codes(lines: list[bytes]) -> list[bytes]:
    return [line[:3] for line in lines if line[3:4] == b" "]


def test_greeting_and_extensions() -> None:
    session = Session(tls=TLS_MARK)
    assert session.transport.value() == f"220 {HOST} ESMTP cipherd\r\n".encode()
    assert session.send(b"EHLO client.example.org\r\n") == [
        f"250-{HOST}".encode(), b"250-PIPELINING", b"250-SIZE 10240000", b"250-STARTTLS",
        b"250-ENHANCEDSTATUSCODES", b"250 8BITMIME"]
    assert Session().send(b"EHLO x\r\n")[3] != b"250-STARTTLS"  # no TLS, not offered


def test_a_pipelined_transaction_is_answered_in_order_and_queued_byte_exact() -> None:
    session = Session()
    body = b"Subject: hi\r\n\r\n..leading dot\r\n.\r\n"  # RFC 5321 4.5.2: ".." is "."
    replies = session.send(
        b"EHLO c\r\nMAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME\r\n"
        b"RCPT TO:<b@example.com>\r\nRCPT TO:<c@Example.COM>\r\nDATA\r\n" + body + b"QUIT\r\n")
    assert codes(replies) == [b"250", b"250", b"250", b"250", b"354", b"250", b"221"]
    (received,) = session.queued
    assert replies[-2] == f"250 2.0.0 Ok: queued as {received.queue_id}".encode()
    assert (received.sender, received.recipients) == (
        "a@example.org", ["b@example.com", "c@Example.COM"])
    head, _, rest = received.content.partition(b"\r\n\t")
    assert head == f"Received: from c (unknown[{CLIENT}])".encode()
    assert rest.endswith(b"Subject: hi\r\n\r\n.leading dot\r\n")
    assert f"with ESMTP id {received.queue_id};".encode() in rest
    assert session.closed


def test_relay_access_denied_is_answered_exactly() -> None:
    session = Session()
    replies = session.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n"
                           b"RCPT TO:<victim@elsewhere.test>\r\n")
    assert replies[-1] == b"454 4.7.1 <victim@elsewhere.test>: Relay access denied"


def test_relay_domains_subdomains_and_my_networks() -> None:
    policy = ReceivePolicy(HOST, relay_domains=("example.com",), match_subdomains=True,
                           my_networks=(ipaddress.ip_network("198.51.100.0/24"),))
    outside = Session(policy)
    outside.send(b"EHLO c\r\nMAIL FROM:<>\r\n")
    assert codes(outside.send(b"RCPT TO:<a@sub.example.com>\r\n")) == [b"250"]
    assert codes(outside.send(b"RCPT TO:<a@notexample.com>\r\n")) == [b"454"]
    inside = Session(policy, peer="198.51.100.7")
    inside.send(b"EHLO c\r\nMAIL FROM:<a@example.com>\r\n")
    assert codes(inside.send(b"RCPT TO:<anyone@elsewhere.test>\r\n")) == [b"250"]


def test_size_limit_on_the_size_parameter_and_while_receiving() -> None:
    policy = ReceivePolicy(HOST, relay_domains=("example.com",), message_size_limit=1000)
    session = Session(policy)
    session.send(b"EHLO c\r\n")
    assert session.send(b"MAIL FROM:<a@example.org> SIZE=1001\r\n") == [
        b"552 5.3.4 Message size exceeds fixed limit"]
    session.send(b"MAIL FROM:<a@example.org> SIZE=10\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    replies = session.send(b"x" * 60 + b"\r\n") + session.send((b"y" * 60 + b"\r\n") * 20)
    assert replies == []  # read on to the end of the data
    assert session.send(b".\r\n") == [b"552 5.3.4 Error: message file too big"]
    assert session.queued == []
    # The session goes on.
    assert codes(session.send(b"MAIL FROM:<a@example.org>\r\n")) == [b"250"]


def test_long_line_smuggling_closes_instead_of_reading_the_rest_as_commands() -> None:
    session = Session()
    session.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    replies = session.send(b"x" * (MAX_LINE + 1) + b"\r\nRCPT TO:<evil@elsewhere.test>\r\n"
                           b"DATA\r\nsmuggled\r\n.\r\n")
    assert replies == [f"421 4.7.0 {HOST} Error: line too long".encode()]
    assert session.closed and session.queued == []
    # Even without a line end, an endless line ends the session.
    endless = Session()
    assert endless.send(b"EHLO " + b"a" * (MAX_LINE + 10)) == [
        f"421 4.7.0 {HOST} Error: line too long".encode()]


def test_starttls_command_injection_is_discarded_and_the_session_reset() -> None:
    session = Session(tls=TLS_MARK)
    session.send(b"EHLO c\r\n")
    replies = session.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n"
                           b"RCPT TO:<b@example.com>\r\n")
    assert replies == [b"220 2.0.0 Ready to start TLS"]
    assert session.transport.tls_started == [TLS_MARK]
    # RFC 3207 4.2: the client must say EHLO again; nothing before TLS counts.
    assert session.send(b"MAIL FROM:<a@example.org>\r\n") == [
        b"503 5.5.1 Error: send HELO/EHLO first"]
    session.send(b"EHLO c\r\n")
    assert session.send(b"STARTTLS\r\n") == [b"554 5.5.1 Error: TLS already active"]
    assert b"STARTTLS" not in b"".join(session.send(b"EHLO c\r\n"))
    session.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
                 b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert b"with ESMTPS id" in session.queued[0].content


@pytest.mark.parametrize("ending", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n"])
def test_smtp_smuggling_with_bare_line_ends_is_refused(ending: bytes) -> None:
    session = Session()
    session.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    replies = session.send(b"Subject: x\r\n\r\nfirst" + ending + b"MAIL FROM:<evil@x.test>\r\n"
                           b"RCPT TO:<victim@example.com>\r\nDATA\r\nforged\r\n.\r\n")
    bare = b"<CR>" if ending.startswith(b"\r.") else b"<LF>"
    assert replies == [f"521 5.5.2 {HOST} Error: bare ".encode() + bare + b" received"]
    assert session.closed and session.queued == []


def test_nul_bytes_are_refused() -> None:
    session = Session()
    session.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    assert session.send(b"a\x00b\r\n.\r\n") == [
        b"550 5.6.0 Error: message content rejected: NUL character"]
    assert session.queued == []


def test_a_mail_loop_is_stopped_by_the_hop_count() -> None:
    policy = ReceivePolicy(HOST, relay_domains=("example.com",), hop_limit=3)
    session = Session(policy)
    session.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    hops = b"Received: from a by b\r\n" * 3
    assert session.send(hops + b"Subject: x\r\n\r\nReceived: in the body\r\n.\r\n") == [
        b"554 5.4.6 Error: too many hops"]
    session.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    assert codes(session.send(b"Received: x\r\nReceived: y\r\n\r\n.\r\n")) == [b"250"]


def test_a_silent_client_is_timed_out_by_the_clock() -> None:
    session = Session()
    session.send(b"EHLO c\r\n")
    session.transport.clear()
    session.clock.advance(299)
    assert not session.closed
    session.clock.advance(2)
    assert session.transport.value() == f"421 4.4.2 {HOST} Error: timeout exceeded\r\n".encode()
    assert session.closed
    session.server.connectionLost()
    assert session.clock.getDelayedCalls() == []


def test_too_many_errors_end_the_session() -> None:
    policy = ReceivePolicy(HOST, hard_error_limit=3)
    session = Session(policy)
    replies = session.send(b"BOGUS\r\nBOGUS\r\nBOGUS\r\nNOOP\r\n")
    assert replies[-1] == f"421 4.7.0 {HOST} Error: too many errors".encode()
    assert codes(replies) == [b"502", b"502", b"502", b"421"]
    assert session.closed


def test_too_many_recipients() -> None:
    policy = ReceivePolicy(HOST, relay_domains=("example.com",), recipient_limit=2)
    session = Session(policy)
    replies = session.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n" + b"".join(
        f"RCPT TO:<r{n}@example.com>\r\n".encode() for n in range(3)))
    assert replies[-1] == b"452 4.5.3 Error: too many recipients"


def test_too_many_connections() -> None:
    policy = ReceivePolicy(HOST, max_connections=1)
    first = Session(policy)
    second = Session(policy, factory=first.factory)
    assert not first.closed
    assert second.transport.value() == (
        f"421 4.7.0 {HOST} Error: too many connections; try again later\r\n".encode())
    assert second.closed


def test_a_queue_failure_is_a_temporary_error_not_a_loss() -> None:
    session = Session(accept=lambda received: fail(OSError("disk full")))
    session.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    assert session.send(b"x\r\n.\r\n") == [b"451 4.3.0 Error: queue file write error"]


def test_commands_wait_for_the_queue_before_they_are_answered() -> None:
    pending: list[Deferred[None]] = []

    def accept(received: Received) -> Deferred[None]:
        pending.append(Deferred())
        return pending[-1]

    session = Session(accept=accept)
    replies = session.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
                           b"DATA\r\nx\r\n.\r\nNOOP\r\n")
    assert codes(replies)[-1] == b"354"  # nothing after DATA yet, NOOP waits
    session.transport.clear()
    pending[0].callback(None)
    assert codes(session.transport.value().split(b"\r\n")[:-1]) == [b"250", b"250"]


@pytest.mark.parametrize("command, reply", [
    (b"MAIL FROM:<a@example.org>\r\n", b"503 5.5.1 Error: send HELO/EHLO first"),
    (b"EHLO\r\n", b"501 5.5.4 Syntax: EHLO hostname"),
    (b"EHLO c\r\nRCPT TO:<b@example.com>\r\n", b"503 5.5.1 Error: need MAIL command"),
    (b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nDATA\r\n", b"503 5.5.1 Error: need RCPT command"),
    (b"EHLO c\r\nMAIL FROM:a@example.org\r\n", b"501 5.1.7 Bad sender address syntax"),
    (b"EHLO c\r\nMAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\n", b"503 5.5.1 Error: nested MAIL command"),
    (b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<>\r\n", b"501 5.1.3 Bad recipient address syntax"),
    (b"VRFY x\r\n", b"252 2.0.0 Cannot VRFY user; try RCPT to attempt delivery"),
    (b"STARTTLS\r\n", b"502 5.5.1 Error: command not implemented"),
])
def test_protocol_errors(command: bytes, reply: bytes) -> None:
    assert Session().send(command)[-1] == reply


def _body(lines: int) -> bytes:
    return b"".join(b".dot %d\r\n" % n if n % 7 == 0 else b"line %d\r\n" % n
                    for n in range(lines))


@pytest.mark.parametrize("chunk", [1, 7, 100, 4096, 1 << 20])
def test_a_long_body_in_any_chunking_is_queued_byte_exact(chunk: int) -> None:
    session = Session()
    session.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    wire = b"Subject: long\r\n\r\n" + _body(3000) + b".\r\nNOOP\r\n"
    replies = []
    for start in range(0, len(wire), chunk):
        replies += session.send(wire[start:start + chunk])
    assert codes(replies) == [b"250", b"250"]
    (received,) = session.queued
    # RFC 5321 4.5.2, line by line: a leading dot is taken off.
    unstuffed = b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n"
                         for line in _body(3000).split(b"\r\n")[:-1])
    assert received.content.endswith(b"\r\nSubject: long\r\n\r\n" + unstuffed)


@pytest.mark.parametrize("fault, reply", [
    (b"line\nsmuggled\r\n", b"521 5.5.2 mx.example.com Error: bare <LF> received"),
    (b"line\rsmuggled\r\n", b"521 5.5.2 mx.example.com Error: bare <CR> received"),
])
def test_a_bare_line_end_deep_in_a_long_body_is_refused(fault: bytes, reply: bytes) -> None:
    session = Session()
    session.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    replies = session.send(b"Subject: x\r\n\r\n" + _body(2000) + fault + _body(10) + b".\r\n")
    assert replies == [reply]
    assert session.closed and session.queued == []


def test_size_limit_and_nul_in_a_long_body() -> None:
    policy = ReceivePolicy(HOST, relay_domains=("example.com",), message_size_limit=20_000)
    session = Session(policy)
    session.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    assert session.send(b"Subject: x\r\n\r\n" + _body(3000) + b".\r\n") == [
        b"552 5.3.4 Error: message file too big"]
    session.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    assert session.send(b"Subject: x\r\n\r\n" + _body(100) + b"a\x00b\r\n" + _body(100)
                        + b".\r\n") == [b"550 5.6.0 Error: message content rejected: NUL "
                                        b"character"]
    assert session.queued == []


def test_helo_smuggling_with_control_characters_is_refused() -> None:
    session = Session()
    replies = session.send(b"EHLO x\r.\rMAIL FROM:<evil@x.org>\rDATA\rX\x00\r\n")
    assert replies == [b"501 5.5.2 Error: bad HELO/EHLO hostname"]
    assert session.send(b"HELO a\x00b\r\n") == [b"501 5.5.2 Error: bad HELO/EHLO hostname"]


def test_a_client_that_floods_while_its_message_is_queued_is_stopped() -> None:
    pending: list[Deferred[None]] = []
    session = Session(accept=lambda received: pending.append(Deferred()) or pending[-1])
    session.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
                 b"Subject: x\r\n\r\nbody\r\n.\r\n")
    session.send(b"NOOP\r\n" * 12_000)  # ~70 KB ahead of the reply: reading pauses
    assert session.transport.producerState == "paused" and not session.closed
    session.send(b"Z" * (1 << 20))  # and yet more: not a client
    assert session.closed
    assert session.transport.value().endswith(b"Error: too much data before the reply\r\n")


def test_the_line_length_limit_is_the_same_in_bulk_and_line_by_line() -> None:
    for split in (False, True):
        session = Session()
        session.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
                     b"DATA\r\nSubject: x\r\n\r\n")
        body = b"a\r\n" + b"x" * MAX_LINE + b"\r\n.\r\n"
        replies = [] if split else session.send(body)
        if split:
            for line in body.split(b"\r\n")[:-1]:
                replies += session.send(line + b"\r\n")
        assert replies == [f"421 4.7.0 {HOST} Error: line too long".encode()], split
        assert session.queued == []
