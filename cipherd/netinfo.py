"""
What Admin → Network shows (guide §2.2, figure 2): the machine's host
name, its network interfaces and their addresses, the default gateways and
the DNS resolvers the system uses.  Read only: cipherd runs unprivileged
and does not change the machine's network; the DNS servers cipherd itself
asks are an MTA setting (C{dns_servers}).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

import psutil

RESOLV_CONF = Path("/etc/resolv.conf")
PROC_ROUTE = Path("/proc/net/route")
PROC_IPV6_ROUTE = Path("/proc/net/ipv6_route")


@dataclass(frozen=True)
class Address:
    family: str  # "IPv4" or "IPv6"
    address: str
    netmask: str
    broadcast: str

    @property
    def prefix(self) -> str:
        """
        C{address/prefix length}, as C{ip addr} shows it.
        """
        try:
            bits = bin(int(ipaddress.ip_address(self.netmask))).count("1")
        except ValueError:
            return self.address
        return f"{self.address}/{bits}"


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str
    up: bool
    mtu: int
    addresses: tuple[Address, ...]


@dataclass(frozen=True)
class Resolvers:
    """
    The system's DNS configuration (C{/etc/resolv.conf}).
    """

    nameservers: tuple[str, ...]
    search: tuple[str, ...]


@dataclass(frozen=True)
class NetworkInfo:
    """
    @ivar fqdn: "" when the machine's name has no domain.
    """

    hostname: str
    fqdn: str
    interfaces: tuple[Interface, ...]
    gateways: tuple[str, ...]
    resolvers: Resolvers


def parse_resolv_conf(text: str) -> Resolvers:
    """
    The C{nameserver} and C{search} (or C{domain}) lines of a
    resolv.conf, comments ignored; the last C{search}/C{domain} wins, as
    the resolver has it.
    """
    nameservers: list[str] = []
    search: list[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            nameservers.append(words[1])
        elif words and words[0] in ("search", "domain"):
            search = words[1:]
    return Resolvers(tuple(nameservers), tuple(search))


def parse_ipv4_routes(text: str) -> tuple[str, ...]:
    """
    The default gateways in C{/proc/net/route}: routes to 0.0.0.0/0 with
    the gateway flag, as C{via address (interface)}.
    """
    found: list[str] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        interface, destination, gateway, flags, mask = (
            fields[0], fields[1], fields[2], fields[3], fields[7])
        try:
            if int(destination, 16) or int(mask, 16) or not int(flags, 16) & 0x2:
                continue
            address = socket.inet_ntoa(struct.pack("<I", int(gateway, 16)))
        except (ValueError, struct.error):
            continue
        found.append(f"{address} ({interface})")
    return tuple(found)


def parse_ipv6_routes(text: str) -> tuple[str, ...]:
    """
    The default gateways in C{/proc/net/ipv6_route}: ::/0 with a next hop.
    """
    found: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 10 or fields[0] != "0" * 32 or fields[1] != "00":
            continue
        try:
            hop = ipaddress.IPv6Address(bytes.fromhex(fields[4]))
        except ValueError:
            continue
        if hop.is_unspecified:
            continue
        found.append(f"{hop} ({fields[9]})")
    return tuple(found)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _interfaces() -> tuple[Interface, ...]:
    stats = psutil.net_if_stats()
    interfaces: list[Interface] = []
    for name, entries in sorted(psutil.net_if_addrs().items()):
        mac = ""
        addresses: list[Address] = []
        for entry in entries:
            if entry.family == psutil.AF_LINK:
                mac = entry.address
            elif entry.family in (socket.AF_INET, socket.AF_INET6):
                addresses.append(Address(
                    "IPv4" if entry.family == socket.AF_INET else "IPv6", entry.address,
                    entry.netmask or "", entry.broadcast or ""))
        stat = stats.get(name)
        interfaces.append(Interface(name, mac, bool(stat and stat.isup),
                                    stat.mtu if stat else 0, tuple(addresses)))
    return tuple(interfaces)


def _fqdn() -> str:
    """
    The machine's fully qualified name as the resolver gives it, or "" when
    it gives none with a domain (C{getfqdn} falls back to names such as
    C{localhost}).
    """
    name = socket.getfqdn()
    return name if "." in name.strip(".") else ""


def gather(resolv_conf: Path = RESOLV_CONF, routes: Path = PROC_ROUTE,
           ipv6_routes: Path = PROC_IPV6_ROUTE) -> NetworkInfo:
    """
    The machine's network as it is now.  Reads files and asks the kernel:
    call it from a thread.
    """
    return NetworkInfo(
        hostname=socket.gethostname(), fqdn=_fqdn(), interfaces=_interfaces(),
        gateways=parse_ipv4_routes(_read(routes)) + parse_ipv6_routes(_read(ipv6_routes)),
        resolvers=parse_resolv_conf(_read(resolv_conf)))
