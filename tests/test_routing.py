"""
Next hops to addresses: MX records by preference, the A fallback, the
appliance's own DNS servers, and Postfix's words for what is not found.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSQueryTimeoutError

from cipherd.smtp.routing import DNSHopResolver, HopNotFound, NextHop
from cipherd.testing import result_of


def mx(name: str, preference: int, exchange: str) -> dns.RRHeader:
    return dns.RRHeader(name=name, type=dns.MX,
                        payload=dns.Record_MX(preference=preference, name=exchange))


class FakeNames:
    """
    A twisted.names resolver with fixed answers.
    """

    def __init__(self, mx_answers: Any, addresses: dict[str, str]) -> None:
        self.mx_answers = mx_answers
        self.addresses = addresses
        self.asked: list[str] = []

    def lookupMailExchange(self, name: str) -> Deferred[Any]:
        self.asked.append(f"MX {name}")
        if isinstance(self.mx_answers, Exception):
            return fail(self.mx_answers)
        return succeed((self.mx_answers, [], []))

    def getHostByName(self, name: str) -> Deferred[str]:
        self.asked.append(f"A {name}")
        if name not in self.addresses:
            return fail(DNSNameError(name))
        return succeed(self.addresses[name])


class SystemResolver:
    def __init__(self, addresses: dict[str, str]) -> None:
        self.addresses = addresses

    def resolve(self, name: str) -> Deferred[str]:
        from twisted.internet.error import DNSLookupError

        if name not in self.addresses:
            return fail(DNSLookupError(name))
        return succeed(self.addresses[name])


def resolver(names: FakeNames, servers: tuple[str, ...] = ("192.0.2.53",),
             system: dict[str, str] | None = None) -> tuple[DNSHopResolver, list[Any]]:
    made: list[Any] = []

    def make(servers: Any) -> FakeNames:
        made.append(servers)
        return names

    return DNSHopResolver(lambda: servers, SystemResolver(system or {}),
                          make_resolver=make), made


async def resolve(hop_resolver: DNSHopResolver, hop: NextHop) -> list[tuple[str, str]]:
    return await hop_resolver.resolve(hop)


def test_mx_records_by_preference_through_the_configured_servers() -> None:
    names = FakeNames([mx("example.com", 20, "mx2.example.com"),
                       mx("example.com", 10, "mx1.example.com")],
                      {"mx1.example.com": "192.0.2.1", "mx2.example.com": "192.0.2.2"})
    hop_resolver, made = resolver(names)
    found = result_of(resolve(hop_resolver, NextHop("example.com", "example.com", 25, True)))
    assert found == [("mx1.example.com", "192.0.2.1"), ("mx2.example.com", "192.0.2.2")]
    assert made == [[("192.0.2.53", 53)]]
    # The same servers: the same resolver.
    result_of(resolve(hop_resolver, NextHop("example.com", "example.com", 25, True)))
    assert len(made) == 1


def test_no_mx_falls_back_to_the_address_and_brackets_skip_mx() -> None:
    names = FakeNames([], {"example.org": "192.0.2.7", "relay.example.net": "192.0.2.8"})
    hop_resolver, _ = resolver(names)
    assert result_of(resolve(hop_resolver, NextHop("example.org", "example.org", 25, True))
                     ) == [("example.org", "192.0.2.7")]
    bracketed = NextHop("[relay.example.net]", "relay.example.net", 25, False)
    assert result_of(resolve(hop_resolver, bracketed)) == [("relay.example.net", "192.0.2.8")]
    assert "MX relay.example.net" not in names.asked
    literal = NextHop("[127.0.0.1]:26", "127.0.0.1", 26, False)
    assert result_of(resolve(hop_resolver, literal)) == [("127.0.0.1", "127.0.0.1")]


def test_without_configured_servers_addresses_come_from_the_system() -> None:
    names = FakeNames([mx("example.com", 10, "mx.example.com")], {})
    hop_resolver, made = resolver(names, servers=(), system={"mx.example.com": "192.0.2.9"})
    assert result_of(resolve(hop_resolver, NextHop("example.com", "example.com", 25, True))
                     ) == [("mx.example.com", "192.0.2.9")]
    assert made == [None]  # twisted.names reads /etc/resolv.conf


@pytest.mark.parametrize("mx_answers, message", [
    (DNSNameError("nx.example"), "Host or domain name not found. Name service error for "
                                 "name=nx.example type=MX: Host not found"),
    (DNSQueryTimeoutError("nx.example"), "Host or domain name not found. Name service error "
                                         "for name=nx.example type=MX: Host not found, try "
                                         "again (DNSQueryTimeoutError)"),
    ([], "Host or domain name not found. Name service error for name=nx.example type=A: "
         "Host not found"),
])
def test_what_is_not_found_is_said_in_postfix_words(mx_answers: Any, message: str) -> None:
    hop_resolver, _ = resolver(FakeNames(mx_answers, {}))
    with pytest.raises(HopNotFound) as refused:
        result_of(resolve(hop_resolver, NextHop("nx.example", "nx.example", 25, True)))
    assert str(refused.value) == message
