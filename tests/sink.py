"""
A capturing SMTP sink on a real socket, independent of cipherd's code: it
keeps each message's DATA exactly as received (then undoes dot-stuffing by
RFC 5321 §4.5.2 alone), so tests can compare byte for byte.  Postfix's
smtp-sink rewrites line ends in its dumps, hence this one.
"""

from __future__ import annotations

import socketserver
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Captured:
    sender: str
    recipients: list[str]
    raw: bytes  # DATA as sent, before the final ".\r\n"

    @property
    def content(self) -> bytes:
        lines = self.raw.split(b"\r\n")
        return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


@dataclass
class SinkState:
    messages: list[Captured] = field(default_factory=list)
    rcpt_reply: bytes = b"250 2.1.5 Ok"
    # Replies for particular recipients, instead of rcpt_reply.
    rcpt_replies: dict[str, bytes] = field(default_factory=dict)
    # Every RCPT TO address asked, probes included.
    asked: list[str] = field(default_factory=list)
    greeting: bytes = b"220 sink.example.net ESMTP test sink"
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def _send(self, line: bytes) -> None:
        self.wfile.write(line + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        state = self.server.state
        self._send(state.greeting)
        sender, recipients = "", []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            command = line.rstrip(b"\r\n")
            verb = command[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self._send(b"250-sink.example.net\r\n250-PIPELINING\r\n250 8BITMIME")
            elif verb == b"MAIL":
                sender = command.split(b"<", 1)[1].split(b">", 1)[0].decode()
                recipients = []
                self._send(b"250 2.1.0 Ok")
            elif verb == b"RCPT":
                recipient = command.split(b"<", 1)[1].split(b">", 1)[0].decode()
                reply = state.rcpt_replies.get(recipient, state.rcpt_reply)
                with state.lock:
                    state.asked.append(recipient)
                if reply.startswith(b"250"):
                    recipients.append(recipient)
                self._send(reply)
            elif verb == b"DATA":
                self._send(b"354 go ahead")
                data = bytearray()
                while not data.endswith(b"\r\n.\r\n") and data != b".\r\n":
                    chunk = self.rfile.readline()
                    if not chunk:
                        return
                    data += chunk
                with state.lock:
                    state.messages.append(Captured(sender, recipients,
                                                   bytes(data[:-3])))
                self._send(b"250 2.0.0 Ok: captured")
            elif verb == b"QUIT":
                self._send(b"221 2.0.0 Bye")
                return
            else:
                self._send(b"250 2.0.0 Ok")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's backlog is 5: a burst of deliveries (a queue scanned
    # after a restart opens 20 connections at once) overflowed it, and
    # the dropped connects waited for the kernel's SYN retries (1, 3, 7,
    # 15 s ...) as if the message had been lost.
    request_queue_size = 511
    state: SinkState


class Sink:
    """
    Runs while open; C{port} is where it listens.
    """

    def __init__(self, port: int = 0) -> None:
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.state = SinkState()
        self.state = self._server.state
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Captured]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.state.lock:
                if len(self.state.messages) >= count:
                    return list(self.state.messages)
            time.sleep(0.05)
        raise AssertionError(f"the sink got {len(self.state.messages)} of {count} messages")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
