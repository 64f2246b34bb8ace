"""
The SMTP client that hands a message to the next hop.

Written on C{Protocol} rather than C{twisted.mail.smtp.ESMTPSender}, whose
dot-stuffing works per chunk (FIELD-NOTES, "twisted.mail"): here the whole
content is stuffed at once (RFC 5321 §4.5.2), so a line that starts with a
dot is escaped wherever the transport splits the data.  Each recipient gets
its own outcome, in Postfix's words, for the MTA log and for bounces.

A connection whose transaction ended cleanly can carry the next message to
the same host (L{ConnectionCache}, Postfix's connection cache): no new
connection, greeting, EHLO or TLS handshake per message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPullProducer, IReactorTime, ITransport
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from cipherd.core.envelope import Outcome

MAX_REPLY_LINE = 2048
# Lines in one multi-line reply (an EHLO lists a dozen extensions).
MAX_REPLY_LINES = 100
# Postfix's smtp_*_timeout defaults are 300 s for most stages.
TIMEOUT = 300.0
# Postfix's smtp_connection_cache_time_limit: how long a connection waits,
# idle, for the next message; and smtp_connection_reuse_time_limit: how
# long it is used at all.
CACHE_IDLE = 2.0
CACHE_LIFETIME = 300.0
_REPLY = re.compile(rb"^(\d{3})([ -])(.*)$")


@dataclass
class Delivery:
    """
    One message for one next hop.

    @ivar recipients: the recipients that go through this hop.
    @ivar content: the message, CRLF lines.
    @ivar helo: the name we give in EHLO.
    @ivar my_hostname: our own name: a next hop that greets with it is us.
    @ivar destination: the next hop as routing named it, for the loop error.
    @ivar probe: only ask whether the recipients would be taken (address
        verification, Postfix's C{verify}): the conversation ends after
        RCPT TO, and a recipient the next hop accepts is C{"deliverable"}.
    """

    sender: str
    recipients: list[str]
    content: bytes
    helo: str
    my_hostname: str = ""
    destination: str = ""
    probe: bool = False
    outcomes: dict[str, Outcome] = field(default_factory=dict)


# The DATA payload is written a piece of this size at a time, as the
# connection takes it: a large message is never copied whole.
_DATA_STEP = 256 * 1024


@implementer(IPullProducer)
class _DataWriter:
    """
    Writes the DATA payload for C{content} to C{transport}: every line that
    begins with a dot gets another (RFC 5321 §4.5.2), the last line ends
    with CRLF, and the terminating C{.} follows.  A piece at a time, each
    when the transport has sent the one before (a pull producer);
    C{progress} is told of each piece.
    """

    def __init__(self, transport: ITransport, content: bytes,
                 progress: Callable[[], None]) -> None:
        self._transport = transport
        self._content: bytes | None = content
        self._progress = progress
        self._position = 0
        self._line_start = True
        # Whether the whole payload, its terminating dot included, is written.
        self.finished = False
        transport.registerProducer(self, False)  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        content, start = self._content, self._position
        if content is None:
            return
        end = min(len(content), start + _DATA_STEP)
        if content[end - 1 : end] == b"\r" and content[end : end + 1] == b"\n":
            end += 1  # never between a CR and its LF
        raw = content[start:end]
        piece = raw.replace(b"\r\n.", b"\r\n..")
        if self._line_start and raw.startswith(b"."):
            piece = b"." + piece
        self._line_start = raw.endswith(b"\r\n")
        self._position = end
        if end == len(content):
            piece += (b"" if content.endswith(b"\r\n") else b"\r\n") + b".\r\n"
            self.finished = True
            self.stop()
        self._progress()
        self._transport.write(piece)

    def stop(self) -> None:
        """
        Write no more (the last piece is written, or the transaction ended).
        """
        if self._content is not None:
            self._content = None
            self._transport.unregisterProducer()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        # The connection is gone: the transport forgets us itself.
        self._content = None


def _enhanced(code: int, text: str, default: str) -> str:
    match = re.match(r"([245])\.(\d{1,3})\.(\d{1,3})\b", text)
    if match and match.group(1) == str(code)[0]:
        return match.group(0)
    return default


class SMTPClient(Protocol, TimeoutMixin):
    """
    Delivers one L{Delivery} over one connection, then QUITs; with C{keep},
    a transaction the next hop answered at its end leaves the connection
    open and L{idle} instead, for L{deliver} to send the next message.

    @ivar done: fires with the delivery, every recipient with an outcome.
    """

    def __init__(self, delivery: Delivery, peer: str, clock: IReactorTime,
                 tls: CertificateOptions | None, timeout: float = TIMEOUT, *,
                 keep: bool = False) -> None:
        self.peer = peer  # "host[ip]" as the log names it
        self.tls = tls
        self.callLater = clock.callLater  # type: ignore[assignment]
        self.opened = clock.seconds()
        self._timeout = timeout
        self._keep = keep
        self._buffer = bytearray()
        self._lines: list[bytes] = []
        self._stage = "greeting"
        self._esmtp = True
        self._tls_active = False
        self._extensions: set[str] = set()
        # Told when an idle connection can no longer be used.
        self._idle_ended: Callable[[SMTPClient], None] | None = None
        self._writer: _DataWriter | None = None
        self._transaction(delivery)

    @property
    def tls_active(self) -> bool:
        """
        Whether this connection runs over TLS (STARTTLS done).
        """
        return self._tls_active

    def _transaction(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.done: Deferred[Delivery] = Deferred()
        self._pending = list(delivery.recipients)
        self._accepted: list[str] = []
        self._finished = False
        self._pipelined = False
        self._mail_refused: Outcome | None = None
        # Whether the next hop answered MAIL FROM: before that, a failure is
        # the host's, and another host of the destination may be tried.
        self.reached_mail = False

    @property
    def idle(self) -> bool:
        """
        Whether the connection is open between transactions, ready for
        L{deliver}.
        """
        return (self._stage == "idle" and self.transport is not None
                and bool(getattr(self.transport, "connected", True))
                and not getattr(self.transport, "disconnecting", False))

    def deliver(self, delivery: Delivery) -> Deferred[Delivery]:
        """
        Send the next message over this idle connection: MAIL FROM at once
        (the greeting, EHLO and STARTTLS are done).

        @return: L{done} for this delivery.
        """
        if not self.idle:
            raise RuntimeError("the connection is not idle")
        self._idle_ended = None
        self._transaction(delivery)
        self.setTimeout(self._timeout)
        self._mail()
        return self.done

    def wait_idle(self, ended: Callable[[SMTPClient], None]) -> None:
        """
        Be kept idle; C{ended} is told if the next hop speaks or hangs up
        meanwhile (the connection is closed then).
        """
        self._idle_ended = ended

    def close_idle(self) -> None:
        """
        Say goodbye on an idle connection and close it.
        """
        self._idle_ended = None
        if self._stage == "idle":
            self._stage = "closed"
            self._send("QUIT")
            assert self.transport is not None
            self.transport.loseConnection()

    # Transport -------------------------------------------------------------

    def connectionMade(self) -> None:
        self.setTimeout(self._timeout)

    def dataReceived(self, data: bytes) -> None:
        if self._stage == "idle":
            # Between transactions the next hop has nothing to say but a
            # 421 as it closes: this connection is done.
            self._end_idle()
            assert self.transport is not None
            self.transport.loseConnection()
            return
        self.resetTimeout()
        self._buffer += data
        while not self._finished:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_REPLY_LINE:
                    self._fail_all("deferred", "4.4.2", f"conversation with {self.peer} "
                                   "failed: reply line too long")
                return
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[:end + 1]
            match = _REPLY.match(line)
            if match is None:
                self._fail_all("deferred", "4.5.0", f"conversation with {self.peer} "
                               "failed: malformed reply")
                return
            self._lines.append(match.group(3))
            if len(self._lines) > MAX_REPLY_LINES:
                self._fail_all("deferred", "4.5.0", f"conversation with {self.peer} "
                               "failed: reply too long")
                return
            if match.group(2) == b" ":
                text = b" ".join(self._lines).decode("utf-8", "replace")
                lines, self._lines = self._lines, []
                self._reply(int(match.group(1)), text, lines)

    def timeoutConnection(self) -> None:
        self._fail_all("deferred", "4.4.2", f"conversation with {self.peer} timed out while "
                       f"{self._stage_words()}")

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.setTimeout(None)
        if self._stage == "idle":
            self._end_idle()
        if not self._finished:
            self._fail_all("deferred", "4.4.2", f"lost connection with {self.peer} while "
                           f"{self._stage_words()}", close=False)

    def _stage_words(self) -> str:
        return {
            "greeting": "receiving the initial server greeting",
            "ehlo": "performing the EHLO handshake", "helo": "performing the HELO handshake",
            "starttls": "performing the STARTTLS handshake",
            "mail": "sending MAIL FROM", "rcpt": "sending RCPT TO", "data": "sending DATA",
            "content": "sending message body", "quit": "sending QUIT",
            "idle": "waiting for the next message",
        }.get(self._stage, self._stage)

    def _send(self, line: str) -> None:
        assert self.transport is not None
        self.transport.write(line.encode("ascii", "replace") + b"\r\n")

    # The conversation ------------------------------------------------------

    def _said(self, code: int, text: str) -> str:
        command = {"mail": "MAIL FROM", "rcpt": "RCPT TO", "data": "DATA",
                   "content": "end of DATA", "greeting": "initial greeting",
                   "ehlo": "EHLO", "helo": "HELO", "starttls": "STARTTLS"}.get(self._stage,
                                                                            self._stage)
        return f"host {self.peer} said: {code} {text} (in reply to {command} command)"

    def _refused(self, code: int, text: str) -> Outcome:
        if code >= 500:
            return Outcome("bounced", _enhanced(code, text, "5.0.0"), self._said(code, text))
        return Outcome("deferred", _enhanced(code, text, "4.0.0"), self._said(code, text))

    def _reply(self, code: int, text: str, lines: list[bytes]) -> None:
        stage = self._stage
        if stage == "greeting":
            if code != 220:
                self._finish_all(self._refused(code, text))
                return
            greeter = text.split(" ", 1)[0].lower()
            if self.delivery.my_hostname and greeter == self.delivery.my_hostname.lower():
                # Delivering would hand the message back to ourselves.
                self._finish_all(Outcome("bounced", "5.4.6", f"mail for "
                                         f"{self.delivery.destination} loops back to myself"))
                return
            self._ehlo()
        elif stage in ("ehlo", "helo"):
            if code == 250:
                self._extensions = {line.split(b" ")[0].decode("ascii", "replace").upper()
                                    for line in lines[1:]} if stage == "ehlo" else set()
                if ("STARTTLS" in self._extensions and self.tls is not None
                        and not self._tls_active):
                    self._stage = "starttls"
                    self._send("STARTTLS")
                else:
                    self._mail()
            elif stage == "ehlo" and 500 <= code < 600:
                self._stage = "helo"
                self._send(f"HELO {self.delivery.helo}")
            else:
                self._finish_all(self._refused(code, text))
        elif stage == "starttls":
            if code == 220:
                assert self.transport is not None
                if self._buffer:
                    # Replies sent before the handshake cannot count after
                    # it (a man in the middle answering for the server).
                    self._fail_all("deferred", "4.7.0", f"conversation with {self.peer} "
                                   "failed: data after the STARTTLS reply")
                    return
                self.transport.startTLS(self.tls)  # type: ignore[attr-defined]
                self._tls_active = True
                self._ehlo()  # RFC 3207 §4.2: start over
            else:
                self._mail()  # opportunistic: go on in the clear
        elif stage == "mail":
            if code == 421:
                # The host is closing the session (on a kept connection, the
                # idle timeout it sent before our MAIL FROM arrived): not
                # this transaction's refusal; another connection may do.
                self._finish_all(self._refused(code, text))
                return
            self.reached_mail = True
            if code != 250:
                if not self._pipelined:
                    self._finish_all(self._refused(code, text))
                    return
                # The RCPTs and DATA sent with it get their (503) replies still.
                self._mail_refused = self._refused(code, text)
            if self._pipelined:
                self._stage = "rcpt"
            else:
                self._next_rcpt()
        elif stage == "rcpt":
            recipient = self._pending.pop(0)
            if self._mail_refused is not None:
                self.delivery.outcomes[recipient] = self._mail_refused
            elif code in (250, 251):
                if self.delivery.probe:
                    self.delivery.outcomes[recipient] = Outcome(
                        "deliverable", _enhanced(code, text, "2.1.5"), f"{code} {text}")
                else:
                    self._accepted.append(recipient)
            else:
                self.delivery.outcomes[recipient] = self._refused(code, text)
            if not self._pipelined:
                self._next_rcpt()
            elif not self._pending:
                if self.delivery.probe:
                    self._quit()
                else:
                    self._stage = "data"
        elif stage == "data":
            if code != 354:
                self._finish_all(self._refused(code, text), only=self._accepted)
                return
            assert self.transport is not None
            if self._buffer:
                # Nothing may follow the 354 before the body is sent: a
                # reply there answers a message the next hop has not seen.
                self._fail_all("deferred", "4.5.0", f"conversation with {self.peer} failed: "
                               "a reply after the DATA reply, before the message was sent")
                return
            if not self._accepted:
                # RFC 2920 §3.1: DATA accepted although no recipient was:
                # end it with an empty message.
                self._stage = "empty"
                self.transport.write(b".\r\n")
                return
            self._stage = "content"
            self._writer = _DataWriter(self.transport, self.delivery.content, self.resetTimeout)
        elif stage == "empty":
            self._quit()
        elif stage == "content":
            early = self._writer is not None and not self._writer.finished
            self._stop_writing()
            if early:
                # A reply before the end of the data (RFC 5321 §4.1.1.4 has
                # it after): the connection is in the middle of DATA, so it
                # is closed without QUIT, and a 2xx accepted nothing.
                outcome = self._refused(code, text) if code >= 400 else Outcome(
                    "deferred", "4.5.0", f"host {self.peer} said: {code} {text} before the "
                    "end of the message data")
                for recipient in self._accepted:
                    self.delivery.outcomes.setdefault(recipient, outcome)
                self._finish(True)
                return
            if code == 250:
                outcome = Outcome("sent", _enhanced(code, text, "2.0.0"), f"{code} {text}")
            else:
                outcome = self._refused(code, text)
            if self._keep and code != 421 and not self._buffer and not self._lines:
                # The transaction is over and the next hop waits for the
                # next one (RFC 5321 §4.1.1.4): keep the connection.
                for recipient in self._accepted:
                    self.delivery.outcomes.setdefault(recipient, outcome)
                self._stage = "idle"
                delivered = self.delivery
                self._finish(False)
                if self._stage == "idle" and self.delivery is delivered:
                    # Kept for the next message (unless a callback already
                    # sent it): not holding this one's content meanwhile.
                    self.delivery = replace(delivered, content=b"")
                return
            self._finish_all(outcome, only=self._accepted)
        elif stage == "quit":
            pass

    def _end_idle(self) -> None:
        self._stage = "closed"
        ended, self._idle_ended = self._idle_ended, None
        if ended is not None:
            ended(self)

    def _ehlo(self) -> None:
        self._stage = "ehlo"
        self._send(f"EHLO {self.delivery.helo}")

    def _mail(self) -> None:
        self._stage = "mail"
        size = f" SIZE={len(self.delivery.content)}" if "SIZE" in self._extensions else ""
        body = " BODY=8BITMIME" if ("8BITMIME" in self._extensions
                                    and not self.delivery.content.isascii()) else ""
        mail = f"MAIL FROM:<{self.delivery.sender}>{size}{body}"
        if "PIPELINING" not in self._extensions:
            self._send(mail)
            return
        # RFC 2920: MAIL, every RCPT and DATA in one go; the replies come
        # back in the same order.
        self._pipelined = True
        commands = [mail, *(f"RCPT TO:<{r}>" for r in self._pending)]
        self._send("\r\n".join(commands if self.delivery.probe else [*commands, "DATA"]))

    def _next_rcpt(self) -> None:
        if self._pending:
            self._stage = "rcpt"
            self._send(f"RCPT TO:<{self._pending[0]}>")
        elif self._accepted:
            self._stage = "data"
            self._send("DATA")
        else:
            self._quit()

    # Endings ---------------------------------------------------------------

    def _finish_all(self, outcome: Outcome, only: list[str] | None = None) -> None:
        for recipient in (only if only is not None else self.delivery.recipients):
            self.delivery.outcomes.setdefault(recipient, outcome)
        self._quit()

    def _fail_all(self, status: str, dsn: str, reason: str, close: bool = True) -> None:
        if self._finished:
            return
        for recipient in self.delivery.recipients:
            self.delivery.outcomes.setdefault(recipient, Outcome(status, dsn, reason))
        self._finish(close)

    def _quit(self) -> None:
        self._stage = "quit"
        self._send("QUIT")
        self._finish(True)

    def _stop_writing(self) -> None:
        if self._writer is not None:
            self._writer.stop()
            self._writer = None

    def _finish(self, close: bool) -> None:
        self._finished = True
        self.setTimeout(None)
        self._stop_writing()
        if close and self.transport is not None:
            self.transport.loseConnection()
        self.done.callback(self.delivery)



class ConnectionCache:
    """
    Idle connections to next hops, each used again for the next message to
    the same host (Postfix's connection cache): one waits L{CACHE_IDLE}
    seconds for it, and none is used longer than L{CACHE_LIFETIME} after it
    was opened.

    @param per_host: the most idle connections kept to one host.
    """

    def __init__(self, clock: IReactorTime, per_host: int, *, idle: float = CACHE_IDLE,
                 lifetime: float = CACHE_LIFETIME) -> None:
        self._clock = clock
        self._per_host = per_host
        self._idle = idle
        self._lifetime = lifetime
        self._idle_clients: dict[Hashable, list[tuple[SMTPClient, IDelayedCall]]] = {}
        self._closed = False

    def take(self, key: Hashable) -> SMTPClient | None:
        """
        An idle connection to C{key}'s host, taken out of the cache, or
        C{None}.
        """
        waiting = self._idle_clients.get(key)
        while waiting:
            client, timer = waiting.pop()
            timer.cancel()
            if not waiting:
                del self._idle_clients[key]
            if not client.idle:
                continue
            if self._clock.seconds() - client.opened >= self._lifetime:
                client.close_idle()
                continue
            return client
        return None

    def put(self, key: Hashable, client: SMTPClient) -> None:
        """
        Keep C{client}, if it is idle, for the next message to C{key}'s host;
        close it if there is no room or it has been used long enough.
        """
        if not client.idle:
            return
        if self._closed:
            client.close_idle()
            return
        waiting = self._idle_clients.setdefault(key, [])
        if (len(waiting) >= self._per_host
                or self._clock.seconds() - client.opened >= self._lifetime):
            if not waiting:
                del self._idle_clients[key]
            client.close_idle()
            return
        timer = self._clock.callLater(self._idle, self._expire, key, client)
        waiting.append((client, timer))
        client.wait_idle(lambda c: self._forget(key, c))

    def _forget(self, key: Hashable, client: SMTPClient) -> None:
        waiting = self._idle_clients.get(key, [])
        for entry in waiting:
            if entry[0] is client:
                waiting.remove(entry)
                if entry[1].active():
                    entry[1].cancel()
                break
        if not waiting:
            self._idle_clients.pop(key, None)

    def _expire(self, key: Hashable, client: SMTPClient) -> None:
        self._forget(key, client)
        client.close_idle()

    def close(self) -> None:
        """
        Close every idle connection, and those that become idle later (the
        queue stops).
        """
        self._closed = True
        idle_clients, self._idle_clients = self._idle_clients, {}
        for waiting in idle_clients.values():
            for client, timer in waiting:
                if timer.active():
                    timer.cancel()
                client.close_idle()

    def __len__(self) -> int:
        return sum(len(waiting) for waiting in self._idle_clients.values())
