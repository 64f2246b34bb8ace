"""
Admin → Network (guide §2.2, figures 2 and 6): the machine's name, its
interfaces and addresses, default gateways and the system's DNS servers,
read only; the DNS servers cipherd's MTA asks, editable as DNS 1-3, each
refusal at its field, applied at once.
"""

from __future__ import annotations

import html
from typing import Any

from cipherd.netinfo import (
    Address,
    gather,
    parse_ipv4_routes,
    parse_ipv6_routes,
    parse_resolv_conf,
)
from cipherd.testing import result_of

ROUTE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
"""
IPV6_ROUTE = (
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n"
    "fe800000000000000000000000000000 40 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n"
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n")


def dns_servers(admin: Any) -> list[str]:
    return list(result_of(admin.site.mta.backend.mta.refresh()).dns_servers)


def test_resolv_conf_nameservers_and_the_last_search_line() -> None:
    resolvers = parse_resolv_conf(
        "# generated\nnameserver 192.0.2.53\nnameserver 2001:db8::53 # second\n"
        "domain old.example\nsearch example.com corp.example\noptions edns0\n;comment\n"
        "nameserver\n")
    assert resolvers.nameservers == ("192.0.2.53", "2001:db8::53")
    assert resolvers.search == ("example.com", "corp.example")
    assert parse_resolv_conf("").nameservers == ()


def test_default_gateways_from_the_kernels_route_tables() -> None:
    assert parse_ipv4_routes(ROUTE) == ("192.168.1.1 (eth0)",)
    assert parse_ipv4_routes("header only\n") == ()
    assert parse_ipv6_routes(IPV6_ROUTE) == ("fe80::1 (eth0)",)


def test_an_address_is_shown_with_its_prefix_length() -> None:
    assert Address("IPv4", "192.168.1.109", "255.255.255.0", "").prefix == "192.168.1.109/24"
    assert Address("IPv6", "fe80::1%eth0", "ffff:ffff:ffff:ffff::", "").prefix == (
        "fe80::1%eth0/64")
    assert Address("IPv4", "10.0.0.1", "", "").prefix == "10.0.0.1"  # no mask known


def test_this_machines_network_is_read() -> None:
    info = gather()
    assert info.hostname
    loopback = [i for i in info.interfaces if any(a.address == "127.0.0.1"
                                                  for a in i.addresses)]
    assert loopback and loopback[0].up


def test_the_page_shows_the_machine_and_the_dns_servers(signed_in_admin: Any) -> None:
    page = signed_in_admin.get("/admin/network")
    assert page.code == 200
    text = html.unescape(page.text)
    for shown in ("<h1>Network info</h1>", "webmail.example.com", "eth0", "00:15:5d:b2:2a:1d",
                  "192.168.1.109/24", "broadcast 192.168.1.255", "fe80::215:5dff:feb2:2a1d%eth0/64",
                  "192.168.1.1 (eth0)", "example.com", "the system's DNS servers"):
        assert shown in text, shown
    for number in (1, 2, 3):
        assert f'<label for="dns{number}" class="name">DNS {number}</label>' in page.text
    assert 'href="/admin/network" aria-current="page"' in page.text


def test_dns_servers_are_applied_and_each_refusal_is_at_its_field(
        signed_in_admin: Any) -> None:
    refused = signed_in_admin.post_form("/admin/network", {
        "dns1": "192.0.2.53", "dns2": "ns.example.com", "dns3": "2001:db8::53"})
    assert refused.code == 400
    assert ('<p class="error field-error" id="error.dns2">\'ns.example.com\' is not an IP '
            'address: a DNS server is given by its address, not its name.</p>') in (
                html.unescape(refused.text).replace("&#39;", "'"))
    assert 'value="192.0.2.53"' in refused.text and 'value="ns.example.com"' in refused.text
    assert 'value="2001:db8::53"' in refused.text
    assert dns_servers(signed_in_admin) == []

    saved = signed_in_admin.post_form("/admin/network", {
        "dns1": "", "dns2": " 192.0.2.53 ", "dns3": "2001:db8::53"})
    assert saved.code == 303 and saved.header("location") == "/admin/network?saved=1"
    assert dns_servers(signed_in_admin) == ["192.0.2.53", "2001:db8::53"]
    page = signed_in_admin.get("/admin/network?saved=1")
    assert "The DNS servers were applied." in page.text
    assert 'id="dns1" name="dns1" value="192.0.2.53"' in page.text
    assert 'id="dns3" name="dns3" value=""' in page.text

    cleared = signed_in_admin.post_form("/admin/network", {"dns1": "", "dns2": "", "dns3": ""})
    assert cleared.code == 303
    assert dns_servers(signed_in_admin) == []


def test_the_form_needs_its_csrf_token(signed_in_admin: Any) -> None:
    refused = signed_in_admin.post_form("/admin/network", {"dns1": "192.0.2.53"}, csrf=None)
    assert refused.code == 403
    assert dns_servers(signed_in_admin) == []
