"""
Where a recipient's mail goes next, and how to reach it: SMTP transports
(recipient domain → host:port), then the internal relay host for relay
domains, the external relay host for everything else, and otherwise the
recipient domain's MX records — Postfix's order.  Failures are worded as
Postfix words them, so the guide's troubleshooting applies.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.names import client as names_client
from twisted.names import dns
from twisted.names.error import DNSNameError
from zope.interface import Interface, implementer

from cipherd.smtp.config import MTAConfig, RelayHost


@dataclass(frozen=True)
class NextHop:
    """
    @ivar name: the hop as configured (C{[127.0.0.1]:26}) or the domain.
    @ivar host: the host to resolve (or an address).
    @ivar mx_lookup: look up MX records of C{host} first.
    """

    name: str
    host: str
    port: int
    mx_lookup: bool


class HopNotFound(Exception):
    """
    The next hop has no address: the reason, in Postfix's words.

    @ivar permanent: the name does not exist (or has no address): the mail
        bounces (5.4.4), as Postfix's does; otherwise the look-up failed for
        now (4.4.3) and is tried again later.
    """

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.permanent = permanent


class HopUnreachable(Exception):
    """
    No connection could be made: the reason, in Postfix's words.
    """


def next_hop(recipient: str, config: MTAConfig) -> NextHop:
    """
    The next hop for C{recipient} under C{config}.
    """
    domain = recipient.rpartition("@")[2].rstrip(".").lower()
    for transport_domain, relay in config.transports:
        if domain == transport_domain:
            return _hop(relay)
    relay = (config.internal_relay_host if config.receive_policy().relay_domain(recipient)
             else config.external_relay_host)
    if relay:
        return _hop(relay)
    return NextHop(domain, domain, 25, True)


def _hop(relay: str) -> NextHop:
    parsed = RelayHost.parse(relay)
    return NextHop(str(parsed), parsed.host, parsed.port, parsed.mx_lookup)


class IHopResolver(Interface):
    """
    Turns a next hop into the addresses to try, in order.
    """

    def resolve(hop: NextHop) -> Deferred[list[tuple[str, str]]]:
        """
        @return: C{(host name, address)} pairs, best first.
        @raise HopNotFound: no address (the Deferred fails with it).
        """


@implementer(IHopResolver)
class DNSHopResolver:
    """
    Resolves with C{twisted.names} as Postfix's smtp client does: MX records,
    and where a domain has none (or does not exist), its own address; each
    name's A, then AAAA records.  The DNS servers are the appliance's own
    (MTA config C{dns_servers}), or those of C{/etc/resolv.conf}, after
    C{/etc/hosts}, when none are set.

    A name that does not exist, or has no address, is a permanent failure;
    a server that does not answer, or answers with an error, a temporary
    one ("try again").

    @param servers: returns the DNS servers in force, as IP addresses.
    @param make_resolver: C{make_resolver(servers)} → a C{twisted.names}
        resolver (a keyword for tests).
    """

    def __init__(self, servers: Callable[[], Sequence[str]], *,
                 make_resolver: Callable[[list[tuple[str, int]] | None], Any] | None = None
                 ) -> None:
        self._servers = servers
        self._make = make_resolver or (
            lambda servers: names_client.createResolver(servers=servers))
        self._resolvers: dict[tuple[str, ...], Any] = {}

    def _names(self, servers: tuple[str, ...]) -> Any:
        if servers not in self._resolvers:
            self._resolvers.clear()  # the servers changed: the old ones go
            self._resolvers[servers] = self._make(
                [(server, 53) for server in servers] if servers else None)
        return self._resolvers[servers]

    def resolve(self, hop: NextHop) -> Deferred[list[tuple[str, str]]]:
        return Deferred.fromCoroutine(self._resolve(hop))

    async def _resolve(self, hop: NextHop) -> list[tuple[str, str]]:
        try:
            ipaddress.ip_address(hop.host)
            return [(hop.host, hop.host)]
        except ValueError:
            pass
        names = self._names(tuple(self._servers()))
        exchanges = [hop.host]
        if hop.mx_lookup:
            try:
                answers, _, _ = await names.lookupMailExchange(hop.host)
            except CancelledError:
                raise  # the caller gave up: no more questions
            except DNSNameError:
                answers = []  # Postfix: no such domain: its address then
            except Exception:
                raise HopNotFound(_not_found(hop.host, "MX", temporary=True),
                                  permanent=False) from None
            records = sorted((a.payload.preference, str(a.payload.name)) for a in answers
                             if a.type == dns.MX)
            if records:
                exchanges = [name for _, name in records]
        found: list[tuple[str, str]] = []
        problem: HopNotFound | None = None
        for exchange in exchanges:
            try:
                found += [(exchange, address) for address in await _addresses(names, exchange)]
            except HopNotFound as e:
                # One MX host without an address: the next may have one.
                if problem is None or problem.permanent:
                    problem = e
        if not found:
            assert problem is not None
            raise problem
        return found


async def _addresses(names: Any, host: str) -> list[str]:
    """
    C{host}'s IPv4 then IPv6 addresses.
    """
    found: list[str] = []
    temporary = ""
    for kind, lookup, record in (("A", names.lookupAddress, dns.A),
                                 ("AAAA", names.lookupIPV6Address, dns.AAAA)):
        try:
            answers, _, _ = await lookup(host)
        except CancelledError:
            raise  # the caller gave up: no more questions
        except DNSNameError:
            continue
        except Exception:
            temporary = temporary or kind
            continue
        found += [a.payload.dottedQuad() if record == dns.A else
                  ipaddress.IPv6Address(a.payload.address).compressed
                  for a in answers if a.type == record]
    if found:
        return found
    if temporary:
        raise HopNotFound(_not_found(host, temporary, temporary=True), permanent=False)
    # Postfix asks for both and names the last (the guide shows type=AAAA).
    raise HopNotFound(_not_found(host, "AAAA"), permanent=True)


def _not_found(name: str, kind: str, *, temporary: bool = False) -> str:
    # Postfix's words, which the guide's troubleshooting quotes.
    return (f"Host or domain name not found. Name service error for name={name} "
            f"type={kind}: Host not found{', try again' if temporary else ''}")


# Connection errors as Postfix's smtp client words them.
_CONNECT_ERRORS: list[tuple[type[BaseException], str]] = [
    (error.ConnectionRefusedError, "Connection refused"),
    (error.NoRouteError, "No route to host"),
    (error.TCPTimedOutError, "Connection timed out"),
    (error.TimeoutError, "Connection timed out"),
]


def connect_failure_reason(failure: BaseException, host: str, address: str,
                           port: int) -> str:
    """
    C{connect to H[IP]:port: <why>}.
    """
    why = next((words for kind, words in _CONNECT_ERRORS if isinstance(failure, kind)), None)
    if why is None:
        errno = getattr(failure, "osError", None) or getattr(failure, "args", [None])[0]
        why = _errno_words(errno) or str(failure) or type(failure).__name__
    return f"connect to {host}[{address}]:{port}: {why}"


def _errno_words(value: Any) -> str | None:
    if isinstance(value, int):
        try:
            return {errno.EHOSTUNREACH: "No route to host",
                    errno.ENETUNREACH: "Network is unreachable",
                    errno.ECONNREFUSED: "Connection refused"}[value]
        except KeyError:
            return None
    return None


class _OneShotFactory(ClientFactory):
    noisy = False  # one per delivery: not worth a service log line each

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol
        self.connected: Deferred[Protocol] = Deferred()

    def buildProtocol(self, addr: Any) -> Protocol:
        self.connected.callback(self._protocol)
        return self._protocol

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.connected.errback(reason)


def connect_tcp(reactor: Any, address: str, port: int, protocol: Protocol,
                timeout: float = 30.0) -> Deferred[Protocol]:
    """
    Connect C{protocol} to C{address}:C{port}; fails with the socket error.
    """
    factory = _OneShotFactory(protocol)
    reactor.connectTCP(address, port, factory, timeout=timeout)
    return factory.connected
