"""
An authoritative DNS server on a real UDP socket, for the appliance's
configured DNS servers: it answers from a fixed zone and says "no such
name" (NXDOMAIN) for everything else.  The MTA config takes DNS servers as
IP addresses on port 53, so it listens on port 53 of a loopback address of
its own (all of 127.0.0.0/8 is loopback on Linux); binding port 53 takes
root, as the appliance tests have.
"""

from __future__ import annotations

import os
import socketserver
import threading

import pytest
from twisted.names import dns


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        data, sock = self.request
        try:
            query = dns.Message()
            query.fromStr(data)
        except Exception:  # not DNS: no answer, as a server would
            return
        answer = dns.Message(id=query.id, answer=1, opCode=query.opCode, auth=1,
                             recDes=query.recDes)
        answer.queries = query.queries
        for question in query.queries:
            name = question.name.name.decode().lower()
            self.server.asked.append((name, dns.QUERY_TYPES.get(question.type, "?")))
            records = self.server.zone.get(name)
            if records is None:
                answer.rCode = dns.ENAME
                continue
            answer.answers += [dns.RRHeader(name=name, type=record.TYPE, payload=record)
                               for record in records if record.TYPE == question.type]
        sock.sendto(answer.toStr(), self.client_address)


class _Server(socketserver.ThreadingUDPServer):
    daemon_threads = True
    zone: dict[str, list[dns.IEncodableRecord]]
    asked: list[tuple[str, str]]


class DNSServer:
    """
    Runs while open on C{address}:53.

    @ivar zone: name → records (C{dns.Record_A}, C{dns.Record_MX}, ...).
    @ivar asked: the questions, as C{(name, type)}.
    """

    def __init__(self, address: str) -> None:
        if os.geteuid() != 0 and not os.environ.get("CI"):
            pytest.skip("a DNS server on port 53 takes root")
        self._server = _Server((address, 53), _Handler)
        self._server.zone = {}
        self._server.asked = []
        self.address = address
        self.zone = self._server.zone
        self.asked = self._server.asked
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
