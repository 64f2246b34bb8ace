"""
The bootstrap file: defaults, documentation of every key, and errors
collected and reported together.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cipherd.config import _KEYS, ConfigError, config_from_string, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_embedded_default_matches_the_contract() -> None:
    config = load_config(ROOT / "etc" / "cipherd.toml")
    assert config.admin_listen == "tcp:8443:interface=127.0.0.1"
    assert config.database_url == ""
    assert config.effective_database_url == f"sqlite:///{Path.cwd() / 'var' / 'cipherd.db'}"
    assert config.data_dir == Path.cwd() / "var"


def test_every_key_is_documented_in_the_shipped_file() -> None:
    text = (ROOT / "etc" / "cipherd.toml").read_text()
    section = ""
    found: set[tuple[str, str]] = set()
    previous_is_comment = False
    for line in text.splitlines():
        if m := re.fullmatch(r"\[(\w+)\]", line):
            section = m.group(1)
        elif m := re.fullmatch(r"(\w+) = .*", line):
            assert previous_is_comment, f"{section}.{m.group(1)} has no comment above it"
            found.add((section, m.group(1)))
        # Keys documented together (lockout_*) share one comment block.
        previous_is_comment = line.startswith("#") or (previous_is_comment and bool(m))
    assert found == set(_KEYS)


def test_empty_file_gives_defaults() -> None:
    config = config_from_string("", base=Path("/srv/cipherd"))
    assert config.data_dir == Path("/srv/cipherd/var")
    assert config.admin_session_idle_timeout == 1800
    assert config.tls_certificate is None


def test_all_errors_are_reported_together() -> None:
    text = """
        data_dir = 5
        surprise = true
        [database]
        url = "mysql://x"
        pool_size = true
        [admin]
        listen = "tcp:not-a-port"
        lockout_threshold = -1
        [tls]
        certificate = "cert.pem"
        [nonsense]
        a = 1
    """
    with pytest.raises(ConfigError) as caught:
        config_from_string(text, base=Path("/"), source="test.toml")
    errors = caught.value.errors
    assert errors == [
        "data_dir: must be a str, not 5",
        "surprise: unknown key",
        "database.url: must be empty (SQLite in data_dir) or a sqlite:/// or postgresql:// "
        "URL (got 'mysql://x')",
        "database.pool_size: must be a int, not True",
        "admin.listen: not a Twisted server endpoint description (invalid literal for int() "
        "with base 10: 'not-a-port') (got 'tcp:not-a-port')",
        "admin.lockout_threshold: must be greater than 0 (got -1)",
        "[nonsense]: unknown section",
        "tls.certificate and tls.key: set both or neither",
    ]
    assert str(caught.value).startswith("test.toml: 8 configuration error(s):\n  - data_dir")


def test_invalid_toml() -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_string("data_dir = ", base=Path("/"))
    assert caught.value.errors[0].startswith("not valid TOML:")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "missing.toml")
    assert caught.value.errors == ["cannot read: No such file or directory"]


def test_relative_paths_resolve_against_base() -> None:
    config = config_from_string(
        '[tls]\ncertificate = "c.pem"\nkey = "/etc/k.pem"\n', base=Path("/opt/x")
    )
    assert config.tls_certificate == Path("/opt/x/c.pem")
    assert config.tls_key == Path("/etc/k.pem")
