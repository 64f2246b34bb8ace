"""
Issue 12: the SMTP server on a queue whose disk is really full (a small
tmpfs): mail is refused before it is sent (Postfix's queue_minfree) with
452 4.3.1, a SIZE beyond the room left is refused, and a message whose
queue write runs out of space is answered 452 4.3.1 (not 250, not 451)
with nothing left behind in the spool.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from cipherd.smtp.queue import MailQueue
from cipherd.smtp.server import ReceivePolicy, SMTPFactory, SMTPServer
from cipherd.smtp.spool import DirectorySpool
from cipherd.testing import SynchronousRunner
from tests.conftest import fill_disk

HOST = "mx.example.com"


def _session(factory: SMTPFactory) -> tuple[SMTPServer, StringTransport]:
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.10", 40000))
    server = SMTPServer(factory)
    server.makeConnection(transport)
    return server, transport


def _send(server: SMTPServer, transport: StringTransport, data: bytes) -> list[bytes]:
    transport.clear()
    server.dataReceived(data)
    return transport.value().split(b"\r\n")[:-1]


def test_a_full_queue_disk_is_452_insufficient_system_storage(small_disk: Path) -> None:
    spool = DirectorySpool(small_disk / "spool")  # small_disk: a 1 MiB tmpfs (conftest)
    clock = Clock()
    queue = MailQueue(spool, SynchronousRunner(), clock)
    policy = ReceivePolicy(HOST, relay_domains=("example.com",), message_size_limit=1_000_000,
                           queue_minfree=100_000)
    factory = SMTPFactory(lambda: policy, queue.accept, clock,
                          free_space=lambda: shutil.disk_usage(small_disk).free)
    server, transport = _session(factory)
    _send(server, transport, b"EHLO client.example.org\r\n")

    # Room for about 200,000 bytes above the 100,000 kept free.
    filler = fill_disk(small_disk, 300_000)
    free = shutil.disk_usage(small_disk).free
    room = free - 100_000
    assert _send(server, transport, f"MAIL FROM:<a@example.org> SIZE={room + 1}\r\n".encode()
                 ) == [b"452 4.3.1 Insufficient system storage"]
    assert _send(server, transport, f"MAIL FROM:<a@example.org> SIZE={room}\r\n".encode()
                 ) == [b"250 2.1.0 Ok"]
    # A message larger than the room it announced no size for: the write
    # itself runs out of space.
    _send(server, transport, b"RSET\r\n")
    filler.unlink()
    filler = fill_disk(small_disk, 150_000)
    clock.advance(1)
    assert _send(server, transport, b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
                 b"DATA\r\n") == [b"250 2.1.0 Ok", b"250 2.1.5 Ok",
                                  b"354 End data with <CR><LF>.<CR><LF>"]
    body = (b"y" * 998 + b"\r\n") * 400  # 400 KB
    assert _send(server, transport, b"Subject: big\r\n\r\n" + body + b".\r\n") == [
        b"452 4.3.1 Insufficient system storage"]
    # Nothing half-written stays, and nothing was queued.
    assert list((small_disk / "spool" / "incoming").iterdir()) == []
    assert spool.messages() == []

    # Below the reserve, MAIL itself is refused until space is freed.
    filler.unlink()
    filler = fill_disk(small_disk, 50_000)
    assert _send(server, transport, b"MAIL FROM:<a@example.org>\r\n") == [
        b"452 4.3.1 Insufficient system storage"]
    filler.unlink()
    clock.advance(1)
    assert _send(server, transport, b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
                 b"DATA\r\nSubject: small\r\n\r\nhello\r\n.\r\n")[-1].startswith(
                     b"250 2.0.0 Ok: queued as ")
    assert len(spool.messages()) == 1
