"""
Next hops to addresses: MX records by preference, the A fallback, the
appliance's own DNS servers, and Postfix's words for what is not found.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSQueryTimeoutError, DNSServerError

from cipherd.smtp.routing import DNSHopResolver, HopNotFound, NextHop
from cipherd.testing import result_of


def mx(name: str, preference: int, exchange: str) -> dns.RRHeader:
    return dns.RRHeader(name=name, type=dns.MX,
                        payload=dns.Record_MX(preference=preference, name=exchange))


class FakeNames:
    """
    A twisted.names resolver with fixed answers: C{addresses} maps a name to
    its addresses (IPv4 and IPv6), or to the exception its look-ups raise.
    """

    def __init__(self, mx_answers: Any, addresses: dict[str, Any]) -> None:
        self.mx_answers = mx_answers
        self.addresses = addresses
        self.asked: list[str] = []

    def lookupMailExchange(self, name: str) -> Deferred[Any]:
        self.asked.append(f"MX {name}")
        if isinstance(self.mx_answers, Exception):
            return fail(self.mx_answers)
        return succeed((self.mx_answers, [], []))

    def _lookup(self, kind: str, name: str) -> Deferred[Any]:
        self.asked.append(f"{kind} {name}")
        found = self.addresses.get(name, DNSNameError(name))
        if isinstance(found, Exception):
            return fail(found)
        records = []
        for address in ([found] if isinstance(found, str) else found):
            if kind == "A" and ":" not in address:
                records.append(dns.RRHeader(name=name, type=dns.A,
                                            payload=dns.Record_A(address)))
            elif kind == "AAAA" and ":" in address:
                records.append(dns.RRHeader(name=name, type=dns.AAAA,
                                            payload=dns.Record_AAAA(address)))
        return succeed((records, [], []))

    def lookupAddress(self, name: str) -> Deferred[Any]:
        return self._lookup("A", name)

    def lookupIPV6Address(self, name: str) -> Deferred[Any]:
        return self._lookup("AAAA", name)


def resolver(names: FakeNames, servers: tuple[str, ...] = ("192.0.2.53",)
             ) -> tuple[DNSHopResolver, list[Any]]:
    made: list[Any] = []

    def make(servers: Any) -> FakeNames:
        made.append(servers)
        return names

    return DNSHopResolver(lambda: servers, make_resolver=make), made


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


def test_without_configured_servers_twisted_names_reads_the_system_files() -> None:
    names = FakeNames([mx("example.com", 10, "mx.example.com")],
                      {"mx.example.com": ["192.0.2.9", "2001:db8::9"]})
    hop_resolver, made = resolver(names, servers=())
    assert result_of(resolve(hop_resolver, NextHop("example.com", "example.com", 25, True))
                     ) == [("mx.example.com", "192.0.2.9"), ("mx.example.com", "2001:db8::9")]
    assert made == [None]  # /etc/hosts, then the servers of /etc/resolv.conf


def test_an_mx_host_without_an_address_is_skipped() -> None:
    names = FakeNames([mx("example.com", 10, "gone.example.com"),
                       mx("example.com", 20, "mx2.example.com")],
                      {"mx2.example.com": "192.0.2.2"})
    hop_resolver, _ = resolver(names)
    assert result_of(resolve(hop_resolver, NextHop("example.com", "example.com", 25, True))
                     ) == [("mx2.example.com", "192.0.2.2")]


NOT_FOUND = "Host or domain name not found. Name service error for name=nx.example type="


@pytest.mark.parametrize("mx_answers, addresses, message, permanent", [
    # The guide's line: the domain does not exist, nor has it an address.
    (DNSNameError("nx.example"), {}, NOT_FOUND + "AAAA: Host not found", True),
    ([], {}, NOT_FOUND + "AAAA: Host not found", True),
    ([], {"nx.example": []}, NOT_FOUND + "AAAA: Host not found", True),
    (DNSQueryTimeoutError("nx.example"), {}, NOT_FOUND + "MX: Host not found, try again",
     False),
    (DNSServerError("nx.example"), {}, NOT_FOUND + "MX: Host not found, try again", False),
    ([], {"nx.example": DNSQueryTimeoutError("nx.example")},
     NOT_FOUND + "A: Host not found, try again", False),
])
def test_what_is_not_found_is_said_in_postfix_words(mx_answers: Any, addresses: Any,
                                                    message: str, permanent: bool) -> None:
    hop_resolver, _ = resolver(FakeNames(mx_answers, addresses))
    with pytest.raises(HopNotFound) as refused:
        result_of(resolve(hop_resolver, NextHop("nx.example", "nx.example", 25, True)))
    assert (str(refused.value), refused.value.permanent) == (message, permanent)
