"""
Request bodies are bounded: a declared length over the limit is refused
before the body is read, a chunked body as soon as it passes the limit,
and the resource never sees either.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Site

from cipherd.web.common import BoundedRequest


class Small(BoundedRequest):
    max_body = 1000


class Echo(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bytes] = []

    def render_POST(self, request: Any) -> bytes:
        body: bytes = request.content.read()
        self.seen.append(body)
        return b"got %d" % len(body)


def _connect(resource: Resource) -> tuple[Any, StringTransport]:
    # The channel's idle timer runs on a clock of its own: on the global
    # reactor it would fire a minute later, in some other test.
    site = Site(resource, requestFactory=Small, reactor=Clock())
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4321))
    channel.makeConnection(transport)
    return channel, transport


def test_a_body_within_the_limit_reaches_the_resource() -> None:
    echo = Echo()
    channel, transport = _connect(echo)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                         + b"a" * 1000)
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    assert transport.value().endswith(b"got 1000")
    assert echo.seen == [b"a" * 1000]


def test_a_declared_length_over_the_limit_is_refused_before_the_body() -> None:
    echo = Echo()
    channel, transport = _connect(echo)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n")
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 413 Content Too Large\r\n")
    assert answer.endswith(b"\r\n\r\nThe request body is larger than 1000 bytes.\n")
    assert transport.disconnecting
    channel.dataReceived(b"a" * 1001)
    assert echo.seen == []
    assert transport.value() == answer


def test_a_client_that_waits_for_100_continue_gets_only_the_413() -> None:
    echo = Echo()
    channel, transport = _connect(echo)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                         b"Content-Length: 5000\r\n\r\n")
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 413 Content Too Large\r\n")
    assert b"100 Continue" not in answer
    assert answer.endswith(b"\r\n\r\nThe request body is larger than 1000 bytes.\n")


def test_a_chunked_body_is_cut_off_when_it_passes_the_limit() -> None:
    echo = Echo()
    channel, transport = _connect(echo)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):
        channel.dataReceived(b"190\r\n" + b"b" * 400 + b"\r\n")
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    assert transport.disconnecting
    channel.dataReceived(b"0\r\n\r\n")
    assert echo.seen == []


def test_a_chunked_body_within_the_limit_is_fine() -> None:
    echo = Echo()
    channel, transport = _connect(echo)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + b"190\r\n" + b"b" * 400 + b"\r\n0\r\n\r\n")
    assert transport.value().endswith(b"got 400")
