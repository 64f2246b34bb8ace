"""
The SMTP server, byte for byte over a StringTransport, with the clock
injected: every hardening point has a test named after the attack.
"""

from __future__ import annotations

import errno
import ipaddress
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from cipherd.core.envelope import Received
from cipherd.smtp.server import (
    CLOSE_GRACE,
    MAX_LINE,
    ReceivePolicy,
    SMTPFactory,
    SMTPServer,
    client_key,
)
from cipherd.smtp.spool import SpoolError

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


def test_a_config_change_applies_from_the_next_transaction_of_a_session() -> None:
    session = Session()
    replies = session.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n"
                           b"RCPT TO:<b@example.com>\r\nRSET\r\n")
    assert codes(replies) == [b"250", b"250", b"250", b"250"]
    # The relay domain goes while the session stays open (a cached connection).
    session.policy = ReceivePolicy(HOST, relay_domains=("example.net",))
    replies = session.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n")
    assert replies[-1] == b"454 4.7.1 <b@example.com>: Relay access denied"


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
    second = Session(policy, factory=first.factory, peer="192.0.2.11")
    assert not first.closed
    assert second.transport.value() == (
        f"421 4.7.0 {HOST} Error: too many connections; try again later\r\n".encode())
    assert second.closed


def _sessions(policy: ReceivePolicy, count: int, peer: str,
              factory: SMTPFactory | None = None) -> list[Session]:
    sessions = [Session(policy, peer=peer, factory=factory)]
    sessions += [Session(policy, peer=peer, factory=sessions[0].factory)
                 for _ in range(count - 1)]
    return sessions


def test_one_client_cannot_take_every_session(log_lines: list[str]) -> None:
    """
    Postfix's smtpd_client_connection_count_limit: the eleventh session of
    one client is refused, while other clients and clients in my networks
    are served as before.
    """
    policy = ReceivePolicy(HOST, relay_domains=("example.com",))
    held = _sessions(policy, 10, CLIENT)
    assert not any(s.closed for s in held)
    refused = Session(policy, peer=CLIENT, factory=held[0].factory)
    assert refused.transport.value() == (
        f"421 4.7.0 {HOST} Error: too many connections from {CLIENT}\r\n".encode())
    assert refused.closed
    refused.server.connectionLost()
    assert (f"warning: Connection concurrency limit exceeded: 11 from unknown[{CLIENT}] for "
            "service smtp") in log_lines
    other = Session(policy, peer="192.0.2.99", factory=held[0].factory)
    assert other.transport.value().startswith(b"220 ")
    trusted = _sessions(policy, 12, "127.0.0.1", factory=held[0].factory)
    assert not any(s.closed for s in trusted)
    # One of the client's sessions ends: it may open one again.
    held[0].server.connectionLost()
    assert not Session(policy, peer=CLIENT, factory=held[0].factory).closed


def test_a_client_reconnecting_too_fast_is_refused(log_lines: list[str]) -> None:
    """
    Postfix's smtpd_client_connection_rate_limit, per minute.
    """
    policy = ReceivePolicy(HOST, client_rate_limit=5)
    first = Session(policy)
    first.server.connectionLost()
    for _ in range(4):
        Session(policy, factory=first.factory).server.connectionLost()
    sixth = Session(policy, factory=first.factory)
    assert sixth.transport.value() == (
        f"421 4.7.0 {HOST} Error: too many connections from {CLIENT}\r\n".encode())
    sixth.server.connectionLost()
    assert (f"warning: Connection rate limit exceeded: 6 from unknown[{CLIENT}] for service "
            "smtp") in log_lines
    assert not Session(policy, peer="127.0.0.1", factory=first.factory).closed
    first.clock.advance(60)
    assert not Session(policy, factory=first.factory).closed


def test_clients_are_counted_by_address_and_ipv6_by_network() -> None:
    assert client_key("192.0.2.1") == "192.0.2.1"
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("2001:db8:1:2:3:4:5:6") == client_key("2001:db8:1:2:ffff::1") == \
        "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:2:3:4:5:6") != client_key("2001:db8:1:3::1")


def test_a_client_trickling_a_byte_a_minute_does_not_keep_its_session() -> None:
    """
    The timeout runs from the last command answered: bytes of a line that
    never ends do not restart it (they did: one byte a minute held a
    session for ever).
    """
    session = Session()
    session.send(b"EHLO c\r\n")
    for byte in b"NOOP":
        session.clock.advance(60)
        session.send(bytes([byte]))
        assert not session.closed
    session.clock.advance(60)
    assert session.transport.value() == f"421 4.4.2 {HOST} Error: timeout exceeded\r\n".encode()
    assert session.closed


def test_a_session_of_endless_noops_ends() -> None:
    """
    Commands that do nothing keep a session open only so long: past the
    junk command limit they count as errors, and the session time limit
    ends it in any case.
    """
    session = Session(ReceivePolicy(HOST, session_time_limit=600))
    session.send(b"EHLO c\r\n")
    for _ in range(2):
        session.clock.advance(290)
        assert session.send(b"NOOP\r\n") == [b"250 2.0.0 Ok"]
    session.transport.clear()
    session.clock.advance(20)
    assert session.transport.value() == (
        f"421 4.4.2 {HOST} Error: session time limit exceeded\r\n".encode())
    assert session.closed

    session = Session()
    replies = session.send(b"EHLO c\r\n" + b"NOOP\r\n" * 150)
    # EHLO, the 100 free NOOPs, then 20 more each counted as an error.
    assert codes(replies).count(b"250") == 1 + 100 + 20
    assert replies[-1] == f"421 4.7.0 {HOST} Error: too many errors".encode()


def test_a_sender_trickling_data_below_the_minimum_rate_is_cut_off() -> None:
    """
    Postfix's smtpd_min_data_rate (500 bytes/s): in DATA each byte buys
    1/500 s; a client keeping up the rate is never cut, one trickling
    below it is, with 421, once the time it bought runs out.
    """
    fast = Session()
    fast.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    for _ in range(900):  # 15 minutes at 600 bytes/s
        fast.clock.advance(1)
        fast.send(b"x" * 598 + b"\r\n")
    assert not fast.closed
    assert fast.send(b".\r\n")[0].startswith(b"250 2.0.0 Ok: queued as ")

    slow = Session()
    slow.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    slow.transport.clear()
    seconds = 0
    while not slow.closed and seconds < 1000:
        slow.clock.advance(1)
        seconds += 1
        slow.server.dataReceived(b"x" * 100 + b"\r\n")  # 102 bytes/s
    # 300 s, stretched by 102/500 s a second: cut off after ~377 s.
    assert 370 <= seconds <= 380
    assert slow.transport.value() == f"421 4.4.2 {HOST} Error: timeout exceeded\r\n".encode()
    assert slow.queued == []


def test_a_full_queue_disk_refuses_mail_before_and_while_writing(
        log_lines: list[str]) -> None:
    """
    Postfix's queue_minfree: with less free space than the reserve (1.5
    times the size limit by default, or the configured bytes) MAIL is
    refused with 452 4.3.1, and so is a SIZE beyond the space above the
    reserve; a queue write failing for want of space is 452 4.3.1 too.
    """
    free = [2_000_000]
    policy = ReceivePolicy(HOST, relay_domains=("example.com",), message_size_limit=1_000_000)
    clock = Clock()
    factory = SMTPFactory(lambda: policy, lambda received: succeed(None), clock,
                          free_space=lambda: free[0])
    session = Session(policy, factory=factory)
    # 2 MB free, 1.5 MB kept: room for 500,000 bytes.
    assert session.send(b"EHLO c\r\nMAIL FROM:<a@example.org> SIZE=500001\r\n")[-1] == \
        b"452 4.3.1 Insufficient system storage"
    assert session.send(b"MAIL FROM:<a@example.org> SIZE=500000\r\n") == [b"250 2.1.0 Ok"]
    free[0] = 1_400_000
    clock.advance(1)
    assert session.send(b"RSET\r\nMAIL FROM:<a@example.org>\r\n")[-1] == \
        b"452 4.3.1 Insufficient system storage"
    assert any("not enough free space in mail queue: 1400000 bytes < 1500000 bytes" in line
               for line in log_lines)
    # A reserve set in bytes instead.
    policy = ReceivePolicy(HOST, relay_domains=("example.com",), message_size_limit=1_000_000,
                           queue_minfree=100_000)
    free[0] = 600_000
    clock.advance(1)
    session = Session(policy, factory=factory)
    assert session.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n")[-1] == b"250 2.1.0 Ok"
    assert session.send(b"RSET\r\nMAIL FROM:<a@example.org> SIZE=500001\r\n")[-1] == \
        b"452 4.3.1 Insufficient system storage"

    def no_space(received: Received) -> Deferred[None]:
        return fail(_wrapped(OSError(errno.ENOSPC, "No space left on device")))

    full = Session(accept=no_space)
    full.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    assert full.send(b"x\r\n.\r\n") == [b"452 4.3.1 Insufficient system storage"]
    assert any("queue file write error: no space left" in line for line in log_lines)


def _wrapped(error: OSError) -> SpoolError:
    try:
        raise SpoolError(f"cannot write the queue file: {error.strerror}") from error
    except SpoolError as e:
        return e


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


def test_no_time_limit_cuts_a_message_while_the_queue_writes_it() -> None:
    """
    The session time limit passes while the queue is still writing the
    message: the client gets its 250 first (cutting it then would make it
    send again what is already queued), and the session ends after.
    """
    pending: list[Deferred[None]] = []

    def slow(received: Received) -> Deferred[None]:
        pending.append(Deferred())
        return pending[-1]

    session = Session(ReceivePolicy(HOST, relay_domains=("example.com",),
                                    session_time_limit=600, min_data_rate=0), accept=slow)
    session.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    for line in (b"x\r\n", b"y\r\n", b".\r\n"):  # at 250 s, 500 s and 590 s
        session.clock.advance(250 if line != b".\r\n" else 90)
        session.send(line)
    assert pending and not session.closed
    session.clock.advance(400)  # past the limit, and past the timeout
    assert not session.closed
    session.transport.clear()
    pending[0].callback(None)
    assert session.transport.value().startswith(b"250 2.0.0 Ok: queued as ")
    session.transport.clear()
    session.clock.advance(1)
    assert session.transport.value() == (
        f"421 4.4.2 {HOST} Error: session time limit exceeded\r\n".encode())
    assert session.closed


def test_a_closed_session_whose_client_never_goes_is_aborted() -> None:
    """
    A 421 closes the session gently (the reply is read first, and under
    TLS a handshake ends first); a client that neither reads nor finishes
    a handshake would keep its session and its place for ever (a real
    socket did, with STARTTLS and no handshake).  It is aborted after a
    grace period.
    """
    session = Session()
    session.send(b"EHLO c\r\n")
    session.clock.advance(300)
    assert session.transport.disconnecting and not session.transport.disconnected
    session.clock.advance(CLOSE_GRACE)
    assert session.transport.disconnected  # StringTransport: aborted
    session.server.connectionLost()
    assert session.clock.getDelayedCalls() == []
    assert session.factory.sessions == 0

    # A client that goes at once leaves no timer behind.
    polite = Session()
    polite.send(b"QUIT\r\n")
    polite.server.connectionLost()
    assert polite.clock.getDelayedCalls() == []


def test_a_client_that_never_reads_its_replies_is_not_read_either() -> None:
    """
    Pipelined commands from a client that reads none of the replies piled
    the replies up in memory (6 MB of EHLOs made 63 MB).  When the
    transport says its buffer is full, the server stops reading and
    answering until the client catches up.
    """
    session = Session()
    assert session.transport.producer is session.server  # registered for back-pressure
    session.server.pauseProducing()  # the transport's write buffer is full
    assert session.send(b"NOOP\r\n" * 3) == []
    assert session.transport.producerState == "paused"  # not reading either
    session.server.resumeProducing()  # the client read what was written
    assert session.transport.producerState == "producing"
    assert codes(session.transport.value().split(b"\r\n")[:-1]) == [b"250"] * 3
