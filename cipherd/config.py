"""
The bootstrap file (``etc/cipherd.toml``): where the data lives, which
database to use and where to listen.  Everything an administrator changes at
run time is a *setting* in the database instead (see ``cipherd.settings``).

Every key is declared once in ``_KEYS`` with its type, default and a check;
unknown keys and bad values are collected and reported together, so one
start tells the administrator everything that is wrong.
"""

from __future__ import annotations

import socket
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.endpoints import serverFromString


class ConfigError(Exception):
    """
    The bootstrap file is unusable.

    @ivar errors: one human-readable line per problem, in file order.
    """

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"{source}: {len(errors)} configuration error(s):\n{lines}")


@dataclass(frozen=True)
class Config:
    """
    The parsed bootstrap file.  Paths are absolute.
    """

    data_dir: Path
    database_url: str
    database_pool_size: int
    admin_listen: str
    admin_session_idle_timeout: int
    admin_session_max_age: int
    admin_lockout_threshold: int
    admin_lockout_window: int
    admin_lockout_duration: int
    smtp_listen: str
    portal_listen: str
    tls_hostname: str
    tls_certificate: Path | None
    tls_key: Path | None
    log_max_bytes: int
    log_keep: int
    processing_workers: int = 1
    node_name: str = ""
    crl_listen: str = "tcp:8081:interface=127.0.0.1"

    @property
    def effective_node_name(self) -> str:
        """
        This node's name, defaulting to the machine's host name.
        """
        return self.node_name or socket.gethostname()

    @property
    def effective_database_url(self) -> str:
        """
        The database URL, defaulting to SQLite in the data dir.
        """
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'cipherd.db'}"


def _node_name(value: str) -> str | None:
    if len(value) > 64 or not all(c.isalnum() or c in "._-" for c in value):
        return "at most 64 letters, digits, '.', '_' or '-'"
    return None


def _check_endpoint(value: str) -> str | None:
    try:
        # Building an endpoint only parses the description; nothing listens.
        serverFromString(None, value)
    except Exception as e:
        return f"not a Twisted server endpoint description ({e})"
    return None


def _check_database_url(value: str) -> str | None:
    if value == "" or value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
        return None
    return "must be empty (SQLite in data_dir) or a sqlite:/// or postgresql:// URL"


def _positive(value: int) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _workers(value: int) -> str | None:
    return None if 0 <= value <= 32 else "must be from 0 to 32"


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


@dataclass(frozen=True)
class _Key:
    field: str
    kind: type
    default: Any
    check: Callable[[Any], str | None] | None = None


# (section, key) -> declaration.  The documentation of each key is in
# etc/cipherd.toml, which a test keeps in step with this table.
_KEYS: dict[tuple[str, str], _Key] = {
    ("", "data_dir"): _Key("data_dir", str, "var", _non_empty),
    ("database", "url"): _Key("database_url", str, "", _check_database_url),
    ("database", "pool_size"): _Key("database_pool_size", int, 4, _positive),
    ("admin", "listen"): _Key("admin_listen", str, "tcp:8443:interface=127.0.0.1", _check_endpoint),
    ("admin", "session_idle_timeout"): _Key("admin_session_idle_timeout", int, 1800, _positive),
    ("admin", "session_max_age"): _Key("admin_session_max_age", int, 43200, _positive),
    ("admin", "lockout_threshold"): _Key("admin_lockout_threshold", int, 5, _positive),
    ("admin", "lockout_window"): _Key("admin_lockout_window", int, 900, _positive),
    ("admin", "lockout_duration"): _Key("admin_lockout_duration", int, 900, _positive),
    ("smtp", "listen"): _Key("smtp_listen", str, "tcp:2525:interface=127.0.0.1", _check_endpoint),
    ("portal", "listen"): _Key("portal_listen", str, "tcp:8444:interface=127.0.0.1",
                               _check_endpoint),
    ("crl", "listen"): _Key("crl_listen", str, "tcp:8081:interface=127.0.0.1", _check_endpoint),
    ("tls", "hostname"): _Key("tls_hostname", str, "localhost", _non_empty),
    ("tls", "certificate"): _Key("tls_certificate", str, ""),
    ("tls", "key"): _Key("tls_key", str, ""),
    ("logs", "max_bytes"): _Key("log_max_bytes", int, 10_000_000, _positive),
    ("logs", "keep"): _Key("log_keep", int, 5, _positive),
    ("processing", "workers"): _Key("processing_workers", int, 1, _workers),
    ("node", "name"): _Key("node_name", str, "", _node_name),
}

_SECTIONS = {section for section, _ in _KEYS if section}


def config_from_string(text: str, *, base: Path, source: str = "<string>") -> Config:
    """
    Parse bootstrap TOML.

    @param text: the TOML document.
    @param base: the directory relative paths are resolved against.
    @param source: the name used in error messages.
    @raise ConfigError: listing every problem found.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, [f"not valid TOML: {e}"]) from None

    errors: list[str] = []
    values: dict[str, Any] = {key.field: key.default for key in _KEYS.values()}

    def take(section: str, name: str, value: Any) -> None:
        where = f"{section}.{name}" if section else name
        key = _KEYS.get((section, name))
        if key is None:
            errors.append(f"{where}: unknown key")
            return
        # bool is an int in Python; a boolean is never a valid number here.
        if not isinstance(value, key.kind) or isinstance(value, bool):
            errors.append(f"{where}: must be a {key.kind.__name__}, not {value!r}")
            return
        problem = key.check(value) if key.check else None
        if problem:
            errors.append(f"{where}: {problem} (got {value!r})")
            return
        values[key.field] = value

    for name, value in document.items():
        if isinstance(value, dict):
            if name not in _SECTIONS:
                errors.append(f"[{name}]: unknown section")
                continue
            for sub, subvalue in value.items():
                take(name, sub, subvalue)
        else:
            take("", name, value)

    if bool(values["tls_certificate"]) != bool(values["tls_key"]):
        errors.append("tls.certificate and tls.key: set both or neither")

    if errors:
        raise ConfigError(source, errors)

    def path(value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else (base / p).resolve()

    values["data_dir"] = path(values["data_dir"])
    for field in ("tls_certificate", "tls_key"):
        values[field] = path(values[field]) if values[field] else None
    return Config(**values)


def load_config(path: Path) -> Config:
    """
    Read and parse the bootstrap file.  Relative paths in it are relative to
    the current directory, where ``twistd`` was started.

    @raise ConfigError: the file cannot be read or is invalid.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read: {e.strerror}"]) from None
    return config_from_string(text, base=Path.cwd(), source=str(path))
