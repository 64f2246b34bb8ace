"""
The SMTP server: receives mail on the SMTP endpoint and hands each accepted
message to the queue before it answers 250.

Written on C{Protocol}, not on C{twisted.mail.smtp.ESMTP}, because an MTA
must not have that class's faults (FIELD-NOTES, "twisted.mail"): a line over
the limit here ends the session with 421 instead of turning the rest of the
message into commands; STARTTLS throws away whatever was pipelined before
the handshake and forgets the session (RFC 3207 §4.2); bare LF and bare CR
in DATA are refused as Postfix's C{smtpd_forbid_bare_newline} does, and only
C{<CRLF>.<CRLF>} ends a message; commands are read strictly in order, so
PIPELINING (RFC 2920) is advertised because it works.  Reply texts follow
Postfix's, so an administrator reads them as usual.
"""

from __future__ import annotations

import errno
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLContextFactory,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from cipherd.core.envelope import Received
from cipherd.logs import mail_logger
from cipherd.smtp.spool import new_queue_id
from cipherd.smtp.verify import Verdict

log = mail_logger("cipherd.mta.smtpd")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 5321 §4.5.3.1.4-6 set 512 octets for a command and 1000 for a text
# line; real mail breaks the second, so a line may be this long before the
# session is closed (twisted.mail's limit; Postfix's line_length_limit
# splits instead, which smuggling defences would have to undo).
MAX_LINE = 16 * 1024
# RFC 5321 §4.5.3.1.3: a path is at most 256 octets.
MAX_PATH = 256
# What a client may send ahead while its last command waits for the queue.
MAX_BUFFERED = 4 * MAX_LINE
# Postfix's smtpd_junk_command_limit: NOOP, RSET and VRFY past this many in
# a session count as errors (towards the hard error limit), so a client
# cannot hold a session open for ever with commands that do nothing.
JUNK_COMMAND_LIMIT = 100
_JUNK = frozenset({"NOOP", "RSET", "VRFY"})
# How long a closed session may take to go (its client reading the last
# reply, or ending a TLS handshake) before the connection is aborted.
CLOSE_GRACE = 10.0
# How often a session's time limits are looked at again while the server,
# not the client, is busy (writing the queue, verifying a recipient).
BUSY_RECHECK = 1.0
# Postfix's anvil_rate_time_unit: connection rates are counted per minute.
RATE_TIME_UNIT = 60.0
# An IPv6 client is counted by its /64: one host is commonly given a whole
# /64 to connect from (Postfix's smtpd_client_ipv6_prefix_length is 84,
# which lets such a host be 2^20 clients; the portal's lockout uses /64 too).
IPV6_CLIENT_PREFIX = 64
# Free space on the queue's file system, when queue_minfree is 0: Postfix
# asks for 1.5 times the message size limit.
MINFREE_FACTOR = 1.5
# How long a reading of the free disk space is used (a statvfs per MAIL
# FROM would be cheap, but the number need not be fresher than this).
FREE_SPACE_CACHE = 1.0
# A queue write failing with these means the disk is full.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


@dataclass(frozen=True)
class ReceivePolicy:
    """
    What the server accepts, from the MTA settings (Postfix's names).

    @ivar my_hostname: the name in the greeting and the Received header.
    @ivar relay_domains: recipients in these domains are accepted from anyone.
    @ivar match_subdomains: ...and in their subdomains.
    @ivar my_networks: clients in these networks may relay anywhere.
    @ivar message_size_limit: the largest message accepted, in bytes
        (before any processing; C{0}: no limit).
    @ivar recipient_limit: recipients per message (C{smtpd_recipient_limit}).
    @ivar hard_error_limit: error replies before the session is ended.
    @ivar timeout: seconds a client has to send each command, and the
        longest it may stay silent in DATA (C{smtpd_timeout}).  Partial
        input does not restart it: a line trickled a byte at a time counts
        from when the previous command was answered.
    @ivar session_time_limit: seconds a session may last in all, however
        busy the client keeps it (a message the server is still writing to
        the queue gets its answer first).
    @ivar min_data_rate: bytes per second a client must keep up in DATA:
        each byte received extends the DATA deadline by C{1/rate} seconds,
        never beyond C{timeout} from now (Postfix's C{smtpd_min_data_rate});
        C{0}: any byte restarts the timeout.
    @ivar hop_limit: Received headers that mean a mail loop (C{hopcount_limit}).
    @ivar max_connections: concurrent sessions in all; more are turned away
        (Postfix's process limit of the smtpd service).
    @ivar client_connection_limit: concurrent sessions of one client
        (C{smtpd_client_connection_count_limit}; C{0}: no limit).  Clients
        in C{my_networks} are exempt, as Postfix's
        C{smtpd_client_event_limit_exceptions}.
    @ivar client_rate_limit: connections one client may open per minute
        (C{smtpd_client_connection_rate_limit}; C{0}: no limit; the same
        exemption).
    @ivar queue_minfree: free bytes the queue's file system must keep:
        mail is refused (C{452 4.3.1}) when less is left, and C{SIZE=}
        beyond what is left above it; C{0}: 1.5 times the message size
        limit (Postfix's C{queue_minfree}).
    @ivar verify_recipients: ask the next hop before accepting a recipient
        from a client outside C{my_networks} (C{reject_unverified_recipient}).
    @ivar unverified_reject_code: the reply to a recipient known to bounce
        (C{unverified_recipient_reject_code}: 450 or 550).
    """

    my_hostname: str
    relay_domains: tuple[str, ...] = ()
    match_subdomains: bool = False
    my_networks: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"),
                                          ipaddress.ip_network("::1/128"))
    message_size_limit: int = 10_240_000
    recipient_limit: int = 1000
    hard_error_limit: int = 20
    timeout: float = 300.0
    session_time_limit: float = 1800.0
    min_data_rate: int = 500
    hop_limit: int = 50
    max_connections: int = 100
    client_connection_limit: int = 10
    client_rate_limit: int = 60
    queue_minfree: int = 0
    verify_recipients: bool = False
    unverified_reject_code: int = 450

    @property
    def minfree(self) -> int:
        """
        The free bytes the queue's file system keeps before mail is refused.
        """
        if self.queue_minfree:
            return self.queue_minfree
        return int(MINFREE_FACTOR * self.message_size_limit)

    def in_my_networks(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.my_networks)

    def relay_domain(self, recipient: str) -> bool:
        domain = recipient.rpartition("@")[2].rstrip(".").lower()
        for relay in self.relay_domains:
            relay = relay.lower()
            if domain == relay or (self.match_subdomains and domain.endswith("." + relay)):
                return True
        return False


# What the queue does with an accepted message: a Deferred that fires once
# the message is on disk (its queue id), or fails (the client gets 451).
Accept = Callable[[Received], "Deferred[Any]"]


class SMTPReply(Exception):
    """
    A refusal with its SMTP reply.
    """

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


_PATH = re.compile(rb"^(?:FROM|TO):\s*<([^<>\s]*)>((?:\s+\S+)*)\s*$", re.IGNORECASE)
_ADDRESS = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[A-Za-z0-9.\-\[\]:]+$|^$")
_HEADER_NAME = re.compile(rb"^[!-9;-~]+:")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


def client_key(address: str) -> str:
    """
    The client that per-client limits count C{address} as: the address
    itself, an IPv4-mapped IPv6 address as IPv4, IPv6 by its network.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{IPV6_CLIENT_PREFIX}", strict=False))
    return str(ip)


def _no_space(error: BaseException | None) -> bool:
    """
    Whether C{error}, or an error it was raised from, is a full disk.
    """
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _parse_path(argument: bytes, what: str) -> tuple[str, dict[str, str]]:
    """
    C{FROM:<address> PARAM=value...} → the address and the ESMTP parameters.

    @raise SMTPReply: bad syntax.
    """
    match = _PATH.match(argument)
    if match is None:
        raise SMTPReply(501, f"5.1.7 Bad {what} address syntax")
    try:
        address = match.group(1).decode("ascii")
    except UnicodeDecodeError:
        raise SMTPReply(501, f"5.1.7 Bad {what} address syntax") from None
    if len(address) > MAX_PATH or not _ADDRESS.match(address):
        raise SMTPReply(501, f"5.1.7 Bad {what} address syntax")
    params: dict[str, str] = {}
    for item in match.group(2).split():
        key, _, value = item.decode("ascii", "replace").partition("=")
        params[key.upper()] = value
    return address, params


@implementer(IPushProducer)
class SMTPServer(Protocol):
    """
    One SMTP session.

    Time is kept as two deadlines, checked by one timer: the current
    request's (a command, or DATA at the minimum data rate) and the
    session's.  Deadlines only move later, so the timer is re-armed only
    when it fires early, never on each read (reads are the hot path).
    """

    def __init__(self, factory: SMTPFactory) -> None:
        self.factory = factory
        self.policy = factory.policy()
        self._clock = factory.clock
        self._timer: IDelayedCall | None = None
        self._deadline = 0.0
        self._session_end = 0.0
        self._client_key: str | None = None  # counted in the factory's tables
        self._junk = 0
        self._buffer = bytearray()
        self._pos = 0  # where the next unread line starts in _buffer
        self._busy = False  # a reply is pending: later lines wait their turn
        self._paused = False  # reading stopped (see _update_reading)
        self._write_blocked = False  # the client does not read our replies
        self._abort_call: IDelayedCall | None = None
        self._closing = False
        self._tls = False
        self._errors = 0
        self._helo: str | None = None
        self._esmtp = False
        self._reset_transaction()
        self.client_address = ""
        self.client_name = "unknown"

    # Connection ------------------------------------------------------------

    def connectionMade(self) -> None:
        assert self.transport is not None
        peer = self.transport.getPeer()
        self.client_address = getattr(peer, "host", "")
        self._client_key = client_key(self.client_address)
        now = self._clock.seconds()
        concurrent, rate = self.factory.opened(self._client_key, now)
        log.info("connect from {client}", client=self.client)
        policy = self.policy
        exempt = policy.in_my_networks(self.client_address)
        if self._refused(concurrent, rate, exempt):
            # Not a session: it must not count against those that follow.
            self.factory.closed(self._client_key)
            self._client_key = None
            return
        self._session_end = now + policy.session_time_limit
        self._deadline = now + policy.timeout
        self._arm()
        self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
        self._reply(220, f"{policy.my_hostname} ESMTP cipherd")

    def _refused(self, concurrent: int, rate: int, exempt: bool) -> bool:
        """
        Turn the new session away with 421 if it is over a limit.
        """
        policy = self.policy
        if self.factory.sessions > policy.max_connections:
            log.warn("warning: Connection count limit exceeded: {count} for service smtp "
                     "(limit {limit}); refusing {client}", count=self.factory.sessions,
                     limit=policy.max_connections, client=self.client)
            self._close_with(421, f"4.7.0 {policy.my_hostname} Error: too many "
                                  "connections; try again later")
            return True
        if exempt:
            return False
        for kind, count, limit in (("concurrency", concurrent, policy.client_connection_limit),
                                   ("rate", rate, policy.client_rate_limit)):
            if limit and count > limit:
                log.warn("warning: Connection {kind} limit exceeded: {count} from {client} "
                         "for service smtp", kind=kind, count=count, client=self.client)
                self._close_with(421, f"4.7.0 {policy.my_hostname} Error: too many "
                                      f"connections from {self.client_address}")
                return True
        return False

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._disarm()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        if self._client_key is not None:
            self.factory.closed(self._client_key)
            self._client_key = None
        log.info("disconnect from {client}", client=self.client)

    # Time ------------------------------------------------------------------

    def _arm(self) -> None:
        if self._timer is None or not self._timer.active():
            delay = min(self._deadline, self._session_end) - self._clock.seconds()
            self._timer = self._clock.callLater(max(0.0, delay), self._expired)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self._closing:
            return
        now = self._clock.seconds()
        if self._busy:
            # Waiting for us (the queue, a verification): not the client's
            # time, and no moment to cut a message that may be on disk
            # already.  Looked at again shortly.
            self._deadline = max(self._deadline, now + self.policy.timeout)
            self._timer = self._clock.callLater(BUSY_RECHECK, self._expired)
            return
        if now >= self._session_end:
            log.info("session time limit exceeded after {state} from {client}",
                     state=self._state_name(), client=self.client)
            self._close_with(421, f"4.4.2 {self.policy.my_hostname} Error: session time "
                                  "limit exceeded")
            return
        if now >= self._deadline:
            self.timeoutConnection()
            return
        self._arm()

    def _next_request(self) -> None:
        """
        A command was read or answered: the client has C{timeout} again.
        """
        self._deadline = self._clock.seconds() + self.policy.timeout

    def timeoutConnection(self) -> None:
        if self._data is not None:
            log.info("timeout after DATA ({size} bytes) from {client}", size=self._size,
                     client=self.client)
        else:
            log.info("timeout after {state} from {client}", state=self._state_name(),
                     client=self.client)
        self._close_with(421, f"4.4.2 {self.policy.my_hostname} Error: timeout exceeded")

    @property
    def client(self) -> str:
        return f"{self.client_name}[{self.client_address}]"

    def _state_name(self) -> str:
        if self._data is not None:
            return "DATA"
        if self._recipients:
            return "RCPT"
        if self._sender is not None:
            return "MAIL"
        return "CONNECT" if self._helo is None else "EHLO"

    # Reading ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self._data is not None:
            # RFC 5321 §4.5.3.2.6 gives DATA blocks the timeout; Postfix's
            # smtpd_min_data_rate: each byte buys 1/rate seconds, never
            # more than the timeout from now.  A trickle falls behind.
            now = self._clock.seconds()
            rate = self.policy.min_data_rate
            self._deadline = (now + self.policy.timeout if not rate else
                              min(self._deadline + len(data) / rate,
                                  now + self.policy.timeout))
        self._buffer += data
        if (self._busy or self._write_blocked) and len(self._buffer) > MAX_BUFFERED:
            if len(self._buffer) > 16 * MAX_BUFFERED:
                # Still sending although reading stopped: not a client.
                self._close_with(421, f"4.7.0 {self.policy.my_hostname} Error: too much "
                                      "data before the reply")
                return
            self._update_reading()
        self._process()

    def _update_reading(self) -> None:
        """
        Read from the client only while its input can be used: not while a
        full buffer waits for the queue's answer, nor while the client does
        not read our replies (they would pile up in memory).
        """
        paused = self._write_blocked or (self._busy and len(self._buffer) > MAX_BUFFERED)
        if paused != self._paused and not self._closing:
            self._paused = paused
            if paused:
                self.transport.pauseProducing()  # type: ignore[union-attr]
            else:
                self.transport.resumeProducing()  # type: ignore[union-attr]

    # IPushProducer: the transport says when our replies fill its buffer.

    def pauseProducing(self) -> None:
        self._write_blocked = True
        self._update_reading()

    def resumeProducing(self) -> None:
        self._write_blocked = False
        self._update_reading()
        if not self._closing:
            self._process()

    def stopProducing(self) -> None:
        pass  # connectionLost follows

    def _process(self) -> None:
        # Lines are read from self._pos on and the buffer is trimmed once at
        # the end, not after every line (a 64 KB chunk of DATA is ~1000 lines).
        buffer = self._buffer
        bulk = True  # until the bulk path declines once in this read
        try:
            while not self._busy and not self._closing and not self._write_blocked:
                end = buffer.find(b"\n", self._pos)
                if end < 0:
                    if len(buffer) - self._pos > MAX_LINE:
                        self._line_too_long()
                    return
                if end - self._pos > MAX_LINE:
                    self._line_too_long()
                    return
                if self._data is not None and not self._in_header and bulk:
                    if self._data_bulk():
                        continue
                    bulk = False  # line by line to the end of this read: no rescans
                line = bytes(buffer[self._pos:end + 1])
                self._pos = end + 1
                if self._data is not None:
                    self._data_line(line)
                else:
                    self._command(line)
        finally:
            del buffer[:self._pos]
            self._pos = 0

    def _line_too_long(self) -> None:
        log.warn("{client}: line longer than {limit} bytes", client=self.client,
                 limit=MAX_LINE)
        self._close_with(421, f"4.7.0 {self.policy.my_hostname} Error: line too long")

    # Replies ---------------------------------------------------------------

    def _write_reply(self, code: int, lines: list[str]) -> None:
        self.transport.write(b"".join(  # type: ignore[union-attr]
            f"{code}{'-' if i < len(lines) - 1 else ' '}{line}\r\n".encode("ascii", "replace")
            for i, line in enumerate(lines)))

    def _reply(self, code: int, text: str, *more: str) -> None:
        self._write_reply(code, [text, *more])
        if code >= 400:
            self._count_error()

    def _count_error(self) -> None:
        # Postfix's smtpd_hard_error_limit: a client that keeps getting
        # errors is probing or broken.
        self._errors += 1
        if self._errors >= self.policy.hard_error_limit:
            log.info("too many errors after {state} from {client}",
                     state=self._state_name(), client=self.client)
            self._close_with(421, f"4.7.0 {self.policy.my_hostname} Error: too many "
                                  "errors")

    def _close_with(self, code: int, text: str) -> None:
        if self._closing:
            return
        self._write_reply(code, [text])
        self._closing = True
        self._buffer.clear()
        self._pos = 0
        self._disarm()
        self.transport.loseConnection()  # type: ignore[union-attr]
        # loseConnection waits for our replies to be read, and under TLS
        # for a handshake to end: a client that does neither would keep
        # the session (and its place) for ever.
        self._abort_call = self._clock.callLater(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        log.info("lost connection after a grace of {grace:g} s from {client}: aborted",
                 grace=CLOSE_GRACE, client=self.client)
        self.transport.abortConnection()  # type: ignore[union-attr]

    # Commands --------------------------------------------------------------

    def _reset_transaction(self) -> None:
        self._sender: str | None = None
        self._recipients: list[str] = []
        self._data: list[bytes] | None = None
        self._size = 0
        self._data_problem: tuple[int, str] | None = None
        self._in_header = True
        self._hops = 0

    def _command(self, raw: bytes) -> None:
        self._next_request()
        line = raw.rstrip(b"\r\n")
        verb, _, argument = line.partition(b" ")
        name = verb.upper().decode("ascii", "replace")
        handler = getattr(self, f"do_{name}", None) if name.isalpha() else None
        if handler is None:
            self._reply(502, "5.5.2 Error: command not recognized")
            return
        try:
            result = handler(argument.strip())
        except SMTPReply as e:
            self._reply(e.code, e.text)
            return
        if name in _JUNK:
            self._junk += 1
            if self._junk > JUNK_COMMAND_LIMIT and not self._closing:
                self._count_error()
        if isinstance(result, Deferred):
            self._busy = True
            result.addErrback(self._internal_error).addBoth(self._resume)

    def _resume(self, _: object) -> None:
        self._next_request()
        self._busy = False
        self._update_reading()
        self._process()

    def _internal_error(self, failure: Failure) -> None:
        log.failure("{client}: internal error", failure, client=self.client)
        self._reply(451, "4.3.0 Error: internal error; try again later")

    def _greet(self, argument: bytes, esmtp: bool) -> None:
        if not argument:
            raise SMTPReply(501, f"5.5.4 Syntax: {'EHLO' if esmtp else 'HELO'} hostname")
        if _CONTROL.search(argument):
            # It goes into our Received header: no bare CR, NUL or other
            # control character may ride along to the next hop.
            raise SMTPReply(501, "5.5.2 Error: bad HELO/EHLO hostname")
        self._helo = argument.decode("ascii", "replace")[:255]
        self._esmtp = esmtp
        self._reset_transaction()

    def do_HELO(self, argument: bytes) -> None:
        self._greet(argument, esmtp=False)
        self._reply(250, self.policy.my_hostname)

    def do_EHLO(self, argument: bytes) -> None:
        self._greet(argument, esmtp=True)
        extensions = ["PIPELINING"]
        if self.policy.message_size_limit:
            extensions.append(f"SIZE {self.policy.message_size_limit}")
        else:
            extensions.append("SIZE")
        if self.factory.tls is not None and not self._tls:
            extensions.append("STARTTLS")
        extensions += ["ENHANCEDSTATUSCODES", "8BITMIME"]
        self._reply(250, self.policy.my_hostname, *extensions)

    def do_MAIL(self, argument: bytes) -> None:
        if self._helo is None:
            raise SMTPReply(503, "5.5.1 Error: send HELO/EHLO first")
        if self._sender is not None:
            raise SMTPReply(503, "5.5.1 Error: nested MAIL command")
        sender, params = _parse_path(argument, "sender")
        # A new MTA config applies from the next transaction: a peer's cached
        # connection (a gateway's, delivering to webmail) can outlive the
        # change that made a relay domain go, and must not keep it.
        self.policy = self.factory.policy()
        limit = self.policy.message_size_limit
        size = params.get("SIZE")
        if size is not None:
            if not size.isdigit():
                raise SMTPReply(501, "5.5.4 Bad message size syntax")
            if limit and int(size) > limit:
                raise SMTPReply(552, "5.3.4 Message size exceeds fixed limit")
        body = params.get("BODY", "7BIT").upper()
        if body not in ("7BIT", "8BITMIME"):
            raise SMTPReply(501, "5.5.4 Bad BODY keyword value")
        self._check_free_space(sender, int(size) if size is not None else 0)
        self._sender = sender
        self._reply(250, "2.1.0 Ok")

    def _check_free_space(self, sender: str, size: int) -> None:
        """
        Postfix's queue_minfree: refuse a transaction the queue has no room
        for now, before the client sends it.

        @raise SMTPReply: C{452 4.3.1}, too little space.
        """
        free = self.factory.free_bytes()
        if free is None:
            return
        minfree = self.policy.minfree
        if free >= minfree + size:
            return
        if free < minfree:
            log.warn("warning: not enough free space in mail queue: {free} bytes < "
                     "{minfree} bytes (queue_minfree)", free=free, minfree=minfree)
        log.info("NOQUEUE: reject: MAIL from {client}: 452 4.3.1 Insufficient system storage; "
                 "from=<{sender}> size={size} proto={proto} helo=<{helo}>",
                 client=self.client, sender=sender, size=size,
                 proto="ESMTP" if self._esmtp else "SMTP", helo=self._helo)
        raise SMTPReply(452, "4.3.1 Insufficient system storage")

    def do_RCPT(self, argument: bytes) -> Deferred[None] | None:
        if self._sender is None:
            raise SMTPReply(503, "5.5.1 Error: need MAIL command")
        recipient, _ = _parse_path(argument, "recipient")
        if not recipient:
            raise SMTPReply(501, "5.1.3 Bad recipient address syntax")
        if len(self._recipients) >= self.policy.recipient_limit:
            raise SMTPReply(452, "4.5.3 Error: too many recipients")
        if not (self.policy.relay_domain(recipient)
                or self.policy.in_my_networks(self.client_address)):
            log.info("NOQUEUE: reject: RCPT from {client}: 454 4.7.1 <{rcpt}>: Relay access "
                     "denied; from=<{sender}> to=<{rcpt}> proto={proto} helo=<{helo}>",
                     client=self.client, rcpt=recipient, sender=self._sender,
                     proto="ESMTP" if self._esmtp else "SMTP", helo=self._helo)
            raise SMTPReply(454, f"4.7.1 <{recipient}>: Relay access denied")
        if (self.policy.verify_recipients and self.factory.verify is not None
                and not self.policy.in_my_networks(self.client_address)):
            # Postfix's permit_mynetworks, reject_unauth_destination,
            # reject_unverified_recipient: mail from outside for our domains.
            return self.factory.verify(recipient).addCallback(self._verified, recipient)
        self._recipients.append(recipient)
        self._reply(250, "2.1.5 Ok")
        return None

    def _verified(self, verdict: Verdict, recipient: str) -> None:
        if self._closing:
            return
        if verdict.status == "deliverable":
            self._recipients.append(recipient)
            self._reply(250, "2.1.5 Ok")
            return
        # The next hop's words go back to the client: one line, no controls.
        reason = " ".join(_CONTROL.sub(b" ", verdict.reason.encode("utf-8", "replace"))
                          .decode("utf-8", "replace").split())[:400]
        if verdict.status == "undeliverable":
            code = self.policy.unverified_reject_code
            text = (f"{code // 100}.1.1 <{recipient}>: Recipient address rejected: "
                    f"undeliverable address: {reason}")
        else:
            code = 450
            text = (f"4.1.1 <{recipient}>: Recipient address rejected: unverified address: "
                    f"{reason}")
        log.info("NOQUEUE: reject: RCPT from {client}: {code} {text}; from=<{sender}> "
                 "to=<{rcpt}> proto={proto} helo=<{helo}>", client=self.client, code=code,
                 text=text, sender=self._sender, rcpt=recipient,
                 proto="ESMTP" if self._esmtp else "SMTP", helo=self._helo)
        self._reply(code, text)

    def do_DATA(self, argument: bytes) -> None:
        if not self._recipients:
            raise SMTPReply(503, "5.5.1 Error: need RCPT command")
        if argument:
            raise SMTPReply(501, "5.5.4 Syntax: DATA")
        self._data = []
        self._reply(354, "End data with <CR><LF>.<CR><LF>")

    def do_RSET(self, argument: bytes) -> None:
        self._reset_transaction()
        self._reply(250, "2.0.0 Ok")

    def do_NOOP(self, argument: bytes) -> None:
        self._reply(250, "2.0.0 Ok")

    def do_VRFY(self, argument: bytes) -> None:
        self._reply(252, "2.0.0 Cannot VRFY user; try RCPT to attempt delivery")

    def do_QUIT(self, argument: bytes) -> None:
        self._close_with(221, "2.0.0 Bye")

    def do_STARTTLS(self, argument: bytes) -> None:
        if self.factory.tls is None:
            raise SMTPReply(502, "5.5.1 Error: command not implemented")
        if self._tls:
            raise SMTPReply(554, "5.5.1 Error: TLS already active")
        if argument:
            raise SMTPReply(501, "5.5.4 Syntax: STARTTLS")
        pipelined = len(self._buffer) - self._pos
        if pipelined:
            # RFC 3207 §4.2 / CVE-2011-0411: nothing sent before the
            # handshake may count after it.
            log.warn("{client}: {count} bytes pipelined after STARTTLS discarded",
                     client=self.client, count=pipelined)
        self._buffer.clear()
        self._pos = 0
        self._reply(220, "2.0.0 Ready to start TLS")
        # RFC 3207 §4.2: forget everything learnt before TLS.
        self._helo = None
        self._esmtp = False
        self._reset_transaction()
        self._tls = True
        self.transport.startTLS(self.factory.tls)  # type: ignore[union-attr]

    # DATA ------------------------------------------------------------------

    def _data_line(self, raw: bytes) -> None:
        assert self._data is not None
        if not raw.endswith(b"\r\n") or b"\r" in raw[:-2]:
            # Postfix's smtpd_forbid_bare_newline: such a line may end a
            # message for one server and not for another (SMTP smuggling).
            bare = "<CR>" if b"\r" in raw[:-2] else "<LF>"
            log.warn("{client}: bare {bare} received", client=self.client, bare=bare)
            self._close_with(521, f"5.5.2 {self.policy.my_hostname} Error: bare {bare} "
                                  "received")
            return
        line = raw[:-2]
        if line == b".":
            self._end_of_data()
            return
        if line.startswith(b"."):
            line = line[1:]  # RFC 5321 §4.5.2: dot-stuffing
        if self._data_problem is not None:
            return
        self._size += len(line) + 2
        limit = self.policy.message_size_limit
        if limit and self._size > limit:
            self._data_problem = (552, "5.3.4 Error: message file too big")
            self._data = []  # keep reading to the end, keep nothing
            return
        if b"\x00" in line:
            self._data_problem = (550, "5.6.0 Error: message content rejected: NUL "
                                       "character")
            self._data = []
            return
        if self._in_header:
            if not line:
                self._in_header = False
            elif line[:9].lower() == b"received:":
                self._hops += 1
            elif not (_HEADER_NAME.match(line) or line[:1] in (b" ", b"\t")):
                self._in_header = False
        self._data.append(line + b"\r\n")

    def _data_bulk(self) -> bool:
        """
        Past the header, take every complete line up to the end of the data
        at once, with the checks of L{_data_line} made on the whole piece
        (a message body is thousands of lines; this is the hot path).

        @return: whether anything was taken; C{False} leaves the rest to
            L{_data_line}, one line at a time.
        """
        assert self._data is not None
        buffer, start = self._buffer, self._pos
        last = buffer.rfind(b"\n", start)
        if last < 0:
            return False
        region = bytes(buffer[start:last + 1])
        if region.startswith(b".\r\n"):
            return False  # the end of data itself: _data_line handles it
        terminator = region.find(b"\r\n.\r\n")
        body = region if terminator < 0 else region[:terminator + 2]
        # The same refusals as line by line, checked on the whole piece.
        crlf = body.count(b"\r\n")
        if crlf != body.count(b"\n") or crlf != body.count(b"\r"):
            return False  # a bare CR or LF: _data_line finds and names it
        # The line path counts the CR too: a line of MAX_LINE bytes is over.
        if len(body) > MAX_LINE and max(map(len, body.split(b"\r\n"))) >= MAX_LINE:
            return False  # _process ends the session at that line
        self._pos = start + len(body)
        if self._data_problem is not None:
            return True
        # RFC 5321 §4.5.2: a leading dot on any line is taken off.
        unstuffed = (body[1:] if body.startswith(b".") else body).replace(b"\r\n.", b"\r\n")
        self._size += len(unstuffed)
        limit = self.policy.message_size_limit
        if limit and self._size > limit:
            self._data_problem = (552, "5.3.4 Error: message file too big")
            self._data = []
        elif b"\x00" in unstuffed:
            self._data_problem = (550, "5.6.0 Error: message content rejected: NUL "
                                       "character")
            self._data = []
        else:
            self._data.append(unstuffed)
        return True

    def _end_of_data(self) -> None:
        assert self._data is not None
        self._next_request()  # the data deadline is over: the next command's begins
        problem = self._data_problem
        if problem is None and self._hops >= self.policy.hop_limit:
            problem = (554, "5.4.6 Error: too many hops")
        if problem is not None:
            log.info("NOQUEUE: reject: DATA from {client}: {code} {text}; from=<{sender}>",
                     client=self.client, code=problem[0], text=problem[1],
                     sender=self._sender)
            self._reset_transaction()
            self._reply(*problem)
            return
        queue_id = new_queue_id()
        log.info("{queue_id}: client={client}", queue_id=queue_id, client=self.client)
        assert self._sender is not None
        received = Received(
            queue_id=queue_id, sender=self._sender, recipients=list(self._recipients),
            client=self.client, helo=self._helo or "",
            # One join: the lines and the content are the only copies.
            content=b"".join([self._received_header(queue_id), *self._data]),
            tls=bool(self._tls),
        )
        self._reset_transaction()
        self._busy = True
        done = maybeDeferred(self.factory.accept, received)
        done.addCallbacks(self._queued, self._not_queued, callbackArgs=(received,),
                          errbackArgs=(received,))
        done.addBoth(self._resume)

    def _received_header(self, queue_id: str) -> bytes:
        # RFC 5321 §4.4: the trace field, with Postfix's shape.
        when = datetime.fromtimestamp(self.factory.clock.seconds(), UTC)
        protocol = ("ESMTPS" if self._tls else "ESMTP") if self._esmtp else (
            "SMTPS" if self._tls else "SMTP")
        for_clause = (f"\r\n\tfor <{self._recipients[0]}>" if len(self._recipients) == 1
                      else "")
        return (f"Received: from {self._helo or 'unknown'} ({self.client})\r\n"
                f"\tby {self.policy.my_hostname} (cipherd) with {protocol} id "
                f"{queue_id}{for_clause};\r\n"
                f"\t{when.strftime('%a, %d %b %Y %H:%M:%S +0000')}\r\n").encode(
                    "ascii", "replace")

    def _queued(self, _: object, received: Received) -> None:
        if self._closing:
            # Cut off meanwhile (it flooded us while it waited): it saw a
            # 421 and will send again; the copy queued here is delivered.
            log.info("{queue_id}: queued after the session was closed",
                     queue_id=received.queue_id)
            return
        self._reply(250, f"2.0.0 Ok: queued as {received.queue_id}")

    def _not_queued(self, failure: Failure, received: Received) -> None:
        if self._closing:
            return  # the client was told 421 already and will send again
        if _no_space(failure.value):
            # A full disk is the operator's to fix, not a bug: one line,
            # and the client told to come back (RFC 3463 4.3.1).
            self.factory.disk_full()
            log.warn("warning: {queue_id}: queue file write error: no space left on the "
                     "queue's file system; the client is told to try again later",
                     queue_id=received.queue_id)
            self._reply(452, "4.3.1 Insufficient system storage")
            return
        log.failure("{queue_id}: the message could not be queued", failure,
                    queue_id=received.queue_id)
        self._reply(451, "4.3.0 Error: queue file write error")


@dataclass
class SMTPFactory(ServerFactory):
    """
    Makes a session per connection.

    @ivar policy: returns the policy in force now (settings may change
        between sessions without a restart).
    @ivar accept: queues an accepted message.
    @ivar clock: for timeouts and the Received header's date.
    @ivar tls: the server's TLS options for STARTTLS, or C{None}.
    @ivar verify: recipient address verification
        (L{cipherd.smtp.verify.AddressVerifier.verify}), used when the
        policy asks for it.
    @ivar free_space: the free bytes on the queue's file system now
        (C{None}: not checked).
    @ivar sessions: sessions open now.
    """

    policy: Callable[[], ReceivePolicy]
    accept: Accept
    clock: IReactorTime
    tls: IOpenSSLContextFactory | None = None
    verify: Callable[[str], Deferred[Verdict]] | None = None
    free_space: Callable[[], int] | None = None
    sessions: int = field(default=0)
    # Per client (L{client_key}): sessions open now, and the connections
    # of the current minute as [start of the minute, count] (anvil's).
    _client_sessions: dict[str, int] = field(default_factory=dict)
    _rates: dict[str, list[float]] = field(default_factory=dict)
    _swept: float = 0.0
    _free: tuple[float, int] | None = None
    noisy = False  # the MTA log says what matters

    def buildProtocol(self, addr: Any) -> SMTPServer:
        return SMTPServer(self)

    def opened(self, client: str, now: float) -> tuple[int, int]:
        """
        Count a new session of C{client}.

        @return: its sessions open now, and its connections this minute
            (both counting this one).
        """
        self.sessions += 1
        concurrent = self._client_sessions[client] = self._client_sessions.get(client, 0) + 1
        if now - self._swept >= RATE_TIME_UNIT:
            # Forget the clients of past minutes, once a minute: the table
            # holds at most a minute's clients.
            self._rates = {c: w for c, w in self._rates.items() if now - w[0] < RATE_TIME_UNIT}
            self._swept = now
        window = self._rates.get(client)
        if window is None or now - window[0] >= RATE_TIME_UNIT:
            window = self._rates[client] = [now, 0]
        window[1] += 1
        return concurrent, int(window[1])

    def closed(self, client: str) -> None:
        """
        A session counted by L{opened} ended.
        """
        self.sessions -= 1
        left = self._client_sessions.get(client, 1) - 1
        if left > 0:
            self._client_sessions[client] = left
        else:
            self._client_sessions.pop(client, None)

    def free_bytes(self) -> int | None:
        """
        The free bytes on the queue's file system, read at most once a
        second; C{None} when unknown.
        """
        if self.free_space is None:
            return None
        now = self.clock.seconds()
        if self._free is None or now - self._free[0] >= FREE_SPACE_CACHE:
            try:
                self._free = (now, self.free_space())
            except OSError:
                return None
        return self._free[1]

    def disk_full(self) -> None:
        """
        A write to the queue failed for want of space: read it afresh.
        """
        self._free = None
