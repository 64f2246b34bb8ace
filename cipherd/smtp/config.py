"""
The MTA configuration of the guide's Admin → MTA → config page (figures 7
and 8), with Postfix's meanings: kept in the database, shared by every
node, applied without a restart.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from sqlalchemy import Connection, delete, insert, select

from cipherd.settings import domain_problem, email_problem
from cipherd.smtp.server import ReceivePolicy
from cipherd.store import Store
from cipherd.store.schema import mta_config

# Postfix's message_size_limit default.
DEFAULT_SIZE_LIMIT = 10_240_000
# Postfix's unverified_recipient_reject_code default.
DEFAULT_REJECT_CODE = 450
# The SMTP server's resource limits: name → (smallest, largest) value.
# Their defaults are Postfix's (the process limit: default_process_limit;
# the session time limit has no Postfix equivalent).
SMTPD_LIMITS = {
    "smtpd_process_limit": (1, 100_000),
    "smtpd_client_connection_count_limit": (0, 100_000),
    "smtpd_client_connection_rate_limit": (0, 1_000_000),
    "smtpd_timeout": (10, 3600),
    "smtpd_session_time_limit": (60, 86_400),
    "smtpd_min_data_rate": (0, 1_000_000_000),
    "queue_minfree": (0, 2**62),
}
_HOST = re.compile(r"^(\[[^\[\]\s]+\]|[A-Za-z0-9.\-]+)(?::(\d{1,5}))?$")


@dataclass(frozen=True)
class RelayHost:
    """
    A next hop in Postfix's syntax: C{host}, C{host:port} or C{[host]:port}
    (brackets: the host itself, no MX lookup).
    """

    host: str
    port: int = 25
    mx_lookup: bool = True

    @classmethod
    def parse(cls, value: str) -> RelayHost:
        match = _HOST.match(value.strip())
        if match is None:
            raise ValueError(f"{value!r} is not host, host:port or [host]:port")
        host, port = match.group(1), int(match.group(2) or 25)
        if not 0 < port < 65536:
            raise ValueError(f"the port {port} is not between 1 and 65535")
        bracketed = host.startswith("[")
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            problem = domain_problem(host) if "." in host else None
            if problem:
                raise ValueError(problem) from None
        return cls(host, port, mx_lookup=not bracketed)

    def __str__(self) -> str:
        host = self.host if self.mx_lookup else f"[{self.host}]"
        return host if self.port == 25 else f"{host}:{self.port}"


def machine_hostname(name: str | None = None) -> str:
    """
    The default of *my hostname*, as Postfix's C{myhostname}: the machine's
    name (C{gethostname}), with C{.localdomain} (Postfix's default
    C{mydomain}) added when it has no dot; C{localhost} if it is no usable
    host name.
    """
    name = (socket.gethostname() if name is None else name).strip().rstrip(".").lower()
    if name and "." not in name:
        name += ".localdomain"
    return name if name and _hostname_problem(name) is None else "localhost"


@dataclass(frozen=True)
class MTAConfig:
    """
    Every field of the MTA config page, under the contract's names.
    """

    relay_domains: tuple[str, ...] = ()
    my_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    my_hostname: str = field(default_factory=machine_hostname)
    external_relay_host: str = ""
    internal_relay_host: str = ""
    match_subdomains: bool = False
    before_filter_message_size_limit: int = DEFAULT_SIZE_LIMIT
    after_filter_message_size_limit: int = DEFAULT_SIZE_LIMIT * 2
    smtp_helo_name: str = ""
    reject_unverified_recipient: bool = False
    reject_unverified_code: int = DEFAULT_REJECT_CODE
    # SMTP transports: (recipient domain, relay host in Postfix's syntax).
    transports: tuple[tuple[str, str], ...] = ()
    # The DNS servers for MX and address look-ups (guide §2.2: the DNS page);
    # none: the system's (/etc/resolv.conf).
    dns_servers: tuple[str, ...] = ()
    # The SMTP server's resource limits (Postfix's names; see ReceivePolicy):
    # sessions in all, sessions and connections per minute of one client
    # outside my networks (0: no limit), seconds per command and per
    # session, bytes per second in DATA, free bytes the queue keeps (0: 1.5
    # times the message size limit).
    smtpd_process_limit: int = 100
    smtpd_client_connection_count_limit: int = 10
    smtpd_client_connection_rate_limit: int = 60
    smtpd_timeout: int = 300
    smtpd_session_time_limit: int = 1800
    smtpd_min_data_rate: int = 500
    queue_minfree: int = 0
    # Guide §2.3.14: where recipients of webmail messenger messages may send
    # (reply) to -- email addresses, domains (that domain only) and wildcard
    # domains ("*.example.com": example.com and every domain below it, as
    # for settings).  None: nobody, a webmail recipient cannot reply.
    authorized_recipients: tuple[str, ...] = ()

    def transport_domains(self) -> list[str]:
        return [domain for domain, _ in self.transports]

    def to_json(self) -> dict[str, Any]:
        value = asdict(self)
        value["transports"] = [_transport_json(d, r) for d, r in self.transports]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}

    @property
    def helo_name(self) -> str:
        return self.smtp_helo_name or self.my_hostname

    def authorized(self, address: str) -> bool:
        """
        Whether a webmail recipient may send to C{address} (guide §2.3.14):
        it is listed, or its domain, or a wildcard domain above it.
        """
        address = address.strip().lower()
        local, at, domain = address.rpartition("@")
        if not at or not local or not self.authorized_recipients:
            return False
        domain = domain.rstrip(".")
        listed = set(self.authorized_recipients)
        if address in listed or domain in listed:
            return True
        labels = domain.split(".")
        return any("*." + ".".join(labels[i:]) in listed for i in range(len(labels)))

    def receive_policy(self) -> ReceivePolicy:
        """
        The SMTP server's and the router's view of this config, made once
        per config (the router asks for every recipient of every message).
        """
        made: ReceivePolicy | None = self.__dict__.get("_receive_policy")
        if made is None:
            made = self._make_receive_policy()
            object.__setattr__(self, "_receive_policy", made)
        return made

    def _make_receive_policy(self) -> ReceivePolicy:
        return ReceivePolicy(
            my_hostname=self.my_hostname,
            relay_domains=self.relay_domains,
            match_subdomains=self.match_subdomains,
            my_networks=tuple(ipaddress.ip_network(n, strict=False) for n in self.my_networks),
            message_size_limit=self.before_filter_message_size_limit,
            timeout=float(self.smtpd_timeout),
            session_time_limit=float(self.smtpd_session_time_limit),
            min_data_rate=self.smtpd_min_data_rate,
            max_connections=self.smtpd_process_limit,
            client_connection_limit=self.smtpd_client_connection_count_limit,
            client_rate_limit=self.smtpd_client_connection_rate_limit,
            queue_minfree=self.queue_minfree,
            verify_recipients=self.reject_unverified_recipient,
            unverified_reject_code=self.reject_unverified_code,
        )


_FIELDS = {f.name: f for f in fields(MTAConfig)}


def relay_host_problems(host: str, port: str, *, required: bool = True) -> dict[str, str]:
    """
    What is wrong with a relay host typed as a host name or IP address and a
    port in fields of their own, by field (C{host}, C{port}).

    @param required: whether an empty host is wrong (else: no relay host).
    """
    errors = {}
    host = host.strip().strip("[]")
    if not host:
        if required:
            errors["host"] = "Enter the relay host: a host name or an IP address."
        return errors
    if any(c.isspace() or c in "[]:/@" for c in host) and not _is_ipv6(host):
        errors["host"] = (f"{host!r} is not a host name or an IP address (the port goes in "
                          "its own field).")
    else:
        try:
            RelayHost.parse(f"[{host}]")
        except ValueError as e:
            errors["host"] = f"{host!r} is not a host name or an IP address: {e}."
    if not re.fullmatch(r"[0-9]{1,5}", port.strip()) or not 0 < int(port) < 65536:
        errors["port"] = "The port is a number from 1 to 65535 (25 for SMTP)."
    return errors


def relay_host_text(host: str, port: str, mx_lookup: bool) -> str:
    """
    The relay host in Postfix's syntax from its fields (checked by
    L{relay_host_problems}); C{""} for none.
    """
    host = host.strip().strip("[]")
    if not host:
        return ""
    return str(RelayHost(host, int(port), mx_lookup=mx_lookup))


def transport_problems(domain: str, host: str, port: str) -> dict[str, str]:
    """
    What is wrong with a transport as the *add transport* page takes it,
    by field (C{domain}, C{host}, C{port}); empty when nothing is.
    """
    errors = {}
    if problem := domain_name_problem(domain, "the recipients domain"):
        errors["domain"] = problem
    errors.update(relay_host_problems(host, port))
    return errors


def domain_name_problem(domain: str, what: str = "a domain") -> str | None:
    """
    Why C{domain}, as typed in a field of its own, is not a domain name, in
    the words of the page; C{None} when it is one.
    """
    domain = domain.strip().lower().rstrip(".")
    if not domain:
        return f"Enter {what}, e.g. webmail.local."
    if any(c.isspace() for c in domain):
        return f"{domain!r} is not a domain name: it contains spaces."
    if problem := domain_problem(domain):
        return f"{domain!r} is not a domain name: {problem}."
    return None


def dns_server_problem(server: str) -> str | None:
    """
    Why C{server} cannot be one of the DNS servers, or C{None}.
    """
    try:
        ipaddress.ip_address(server.strip())
    except ValueError:
        return (f"{server!r} is not an IP address: a DNS server is given by its address, "
                "not its name.")
    return None


def _is_ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


def _transport_json(domain: str, relay: str) -> dict[str, Any]:
    host = RelayHost.parse(relay)
    return {"domain": domain, "host": str(replace(host, port=25)), "port": host.port}


def _check_transports(value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, list):
        return None, 'must be a list of {"domain": ..., "host": ..., "port": ...}'
    found: dict[str, str] = {}
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("domain"), str) or \
                not isinstance(entry.get("host"), str):
            return None, 'each transport is {"domain": ..., "host": ..., "port": ...}'
        domain = entry["domain"].strip().lower().rstrip(".")
        problem = domain_problem(domain)
        if problem:
            return None, f"{domain!r}: {problem}"
        port = entry.get("port", 25)
        if isinstance(port, bool) or not isinstance(port, int):
            return None, f"{domain}: the port must be a number"
        try:
            relay = RelayHost.parse(entry["host"].strip())
            relay = RelayHost.parse(f"{replace(relay, port=25)!s}:{port}")
        except ValueError as e:
            return None, f"{domain}: {e}"
        found[domain] = str(relay)
    return tuple(sorted(found.items())), None


def _hostname_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return "must be a host name"
    return None if value == "localhost" else domain_problem(value)


def _address_list(value: Any, parse: Callable[[str], Any], one: str,
                  many: str) -> tuple[Any, str | None]:
    """
    A list of strings, each parsed (and written back) as an address or
    network, without repeats.
    """
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None, f"must be a list of {many}"
    found = []
    for item in value:
        try:
            found.append(str(parse(item.strip())))
        except ValueError:
            return None, f"{item!r} is not {one}"
    return tuple(dict.fromkeys(found)), None


def authorized_recipient(entry: str) -> str:
    """
    One entry of the authorized recipients in its stored form: an email
    address, a domain or a wildcard domain, in lower case.

    @raise ValueError: why C{entry} is refused.
    """
    text = entry.strip().lower()
    if not text:
        raise ValueError("an entry is empty")
    if "@" in text:
        problem = email_problem(text)
        if problem:
            raise ValueError(f"{entry!r} is not a valid email address: {problem}")
        return text
    text = text.rstrip(".")
    # A wildcard names a domain with a dot below it: "*.com" would let
    # replies go to half the internet.
    problem = domain_problem(text.removeprefix("*."))
    if problem:
        raise ValueError(f"{entry!r} is neither an email address nor a valid domain: "
                         f"{problem}")
    return text


def authorized_recipient_problems(entries: list[Any]) -> dict[str, str]:
    """
    Why each refused entry of an authorized recipients list is refused, by
    the entry as given (its JSON text when it is not a string).
    """
    problems = {}
    for entry in entries:
        if not isinstance(entry, str):
            problems[json.dumps(entry)] = (f"{json.dumps(entry)} is not a string: write a "
                                           "domain or an email address in quotes")
            continue
        try:
            authorized_recipient(entry)
        except ValueError as e:
            problems[entry] = str(e)
    return problems


def _check(name: str, value: Any) -> tuple[Any, str | None]:
    """
    The clean value of one field, or why it is refused.
    """
    if name == "relay_domains":
        if not isinstance(value, list) or not all(isinstance(d, str) for d in value):
            return None, "must be a list of domain names"
        clean = tuple(dict.fromkeys(d.strip().lower().rstrip(".") for d in value))
        for domain in clean:
            problem = domain_problem(domain)
            if problem:
                return None, problem
        return clean, None
    if name == "my_networks":
        # Postfix writes IPv6 networks as [2001:db8::]/32.
        return _address_list(
            value, lambda n: ipaddress.ip_network(n.replace("[", "").replace("]", ""),
                                                  strict=False),
            "a network (CIDR, e.g. 192.0.2.0/24)", "networks (CIDR, e.g. 192.0.2.0/24)")
    if name in ("my_hostname", "smtp_helo_name"):
        if name == "smtp_helo_name" and value == "":
            return "", None
        problem = _hostname_problem(value)
        return (value.lower(), None) if problem is None else (None, problem)
    if name in ("external_relay_host", "internal_relay_host"):
        if not isinstance(value, str):
            return None, "must be host, host:port or [host]:port"
        if not value.strip():
            return "", None
        try:
            return str(RelayHost.parse(value)), None
        except ValueError as e:
            return None, str(e)
    if name in ("match_subdomains", "reject_unverified_recipient"):
        if not isinstance(value, bool):
            return None, "must be true or false"
        return value, None
    if name in ("before_filter_message_size_limit", "after_filter_message_size_limit"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1024:
            return None, "must be a number of bytes, at least 1024"
        return value, None
    if name in SMTPD_LIMITS:
        low, high = SMTPD_LIMITS[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return None, f"must be a whole number from {low} to {high}"
        return value, None
    if name == "transports":
        return _check_transports(value)
    if name == "dns_servers":
        return _address_list(value, ipaddress.ip_address, "an IP address", "IP addresses")
    if name == "authorized_recipients":
        if not isinstance(value, list):
            return None, "must be a list of domains and email addresses"
        problems = authorized_recipient_problems(value)
        if problems:
            return None, "; ".join(problems.values())
        return tuple(dict.fromkeys(authorized_recipient(v) for v in value)), None
    if name == "reject_unverified_code":
        if value not in (450, 550):
            return None, "must be 450 or 550"
        return value, None
    return None, "is not an MTA setting"


def apply_changes(config: MTAConfig, changes: Mapping[str, Any]) -> tuple[MTAConfig,
                                                                          dict[str, str]]:
    """
    C{config} with C{changes}, all checked together; C{null} restores a
    field's default.

    @return: the new config and C{{name: problem}}; when any problem is
        found the config returned is C{config} unchanged.
    """
    clean: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, value in changes.items():
        if name not in _FIELDS:
            errors[name] = "is not an MTA setting"
            continue
        if value is None:
            default = _FIELDS[name]
            clean[name] = (default.default if default.default is not MISSING
                           else default.default_factory())  # type: ignore[operator]
            continue
        checked, problem = _check(name, value)
        if problem:
            errors[name] = problem
        else:
            clean[name] = checked
    if errors:
        return config, errors
    updated = replace(config, **clean)
    # Guide, figure 8: the after-filter limit must not be below the other.
    # Said at the limit that was changed (the after-filter one when both were).
    before = updated.before_filter_message_size_limit
    after = updated.after_filter_message_size_limit
    if after < before:
        if after == config.after_filter_message_size_limit:
            return config, {"before_filter_message_size_limit": (
                f"must not be larger than the after filter message size limit "
                f"({after:,} bytes)")}
        return config, {"after_filter_message_size_limit": (
            f"must not be smaller than the before filter message size limit "
            f"({before:,} bytes)")}
    return updated, {}


def load(conn: Connection) -> MTAConfig:
    """
    The stored config; fields never set keep their defaults.
    """
    config = MTAConfig()
    stored = {row.name: json.loads(row.value) for row in conn.execute(select(mta_config))
              if row.name in _FIELDS}
    updated, errors = apply_changes(config, stored)
    # A stored value this version refuses (e.g. written by a newer one)
    # falls back to its default rather than stopping mail.
    if errors:
        updated, _ = apply_changes(config, {k: v for k, v in stored.items() if k not in errors})
    return updated


def save(conn: Connection, config: MTAConfig) -> None:
    """
    Keep the fields that differ from their defaults.
    """
    conn.execute(delete(mta_config))
    default = MTAConfig().to_json()
    for name, value in config.to_json().items():
        if value != default[name]:
            conn.execute(insert(mta_config).values(name=name, value=json.dumps(value)))


class MTAConfigSource:
    """
    The MTA config in force on this node: read at start and on every
    change made here, and again every C{REFRESH} seconds for changes made
    on other nodes.

    @ivar current: what the SMTP server and the queue use now.
    """

    REFRESH = 30.0

    def __init__(self, store: Store) -> None:
        self._store = store
        self.current = MTAConfig()
        self._policy: tuple[MTAConfig, ReceivePolicy] | None = None

    def receive_policy(self) -> ReceivePolicy:
        """
        What the SMTP server applies to a new session, and to each new
        transaction of an open one, now.
        """
        if self._policy is None or self._policy[0] is not self.current:
            self._policy = (self.current, self.current.receive_policy())
        return self._policy[1]

    async def refresh(self) -> MTAConfig:
        self.current = await self._store.read(load)
        return self.current

    async def update(self, changes: Mapping[str, Any]) -> dict[str, str]:
        """
        Check and store C{changes}; they apply at once on this node.

        @return: C{{name: problem}}; when not empty nothing changed.
        """
        return await self.edit(lambda stored: changes)

    async def edit(self, changes_to: Callable[[MTAConfig], Mapping[str, Any]]
                   ) -> dict[str, str]:
        """
        L{update} with the changes C{changes_to} makes of the config as it
        is stored, read in the transaction that writes them rather than as
        a page read it earlier (on SQLite, whose writers queue, two admins
        adding a relay domain at once both keep theirs).

        @return: C{{name: problem}}; when not empty nothing changed.
        """

        def write(conn: Connection) -> tuple[MTAConfig, dict[str, str]]:
            stored = load(conn)
            updated, errors = apply_changes(stored, changes_to(stored))
            if not errors:
                save(conn, updated)
            return updated, errors

        updated, errors = await self._store.run(write)
        if not errors:
            self.current = updated
        return errors
