"""
The appliance as a process: first start, second start, refusal to start on
a bad config, the login page over HTTPS.
"""

from __future__ import annotations

import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import Appliance, insecure_tls

pytestmark = pytest.mark.e2e


def test_first_start_creates_data_dir(appliance: Appliance) -> None:
    data = appliance.data_dir
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for secret in (data / "kek", data / "tls" / "key.pem"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    assert (data / "kek").stat().st_size == 32
    assert (data / "cipherd.db").exists()
    page = urllib.request.urlopen(f"{appliance.admin_url}/", context=insecure_tls())
    assert page.url.endswith("/login")
    body = page.read().decode()
    assert "<h1>Log in</h1>" in body
    assert 'name="csrf_token"' in body


def test_second_start_reuses_data(appliance: Appliance) -> None:
    data = appliance.data_dir
    before = {p: p.read_bytes() for p in (data / "kek", data / "tls" / "cert.pem")}
    appliance.restart()
    assert {p: p.read_bytes() for p in before} == before
    log = appliance.logs[-1].read_text()
    assert "Created the database schema" not in log
    assert "Generated" not in log
    assert "Created the default admin account" in appliance.logs[0].read_text()


def test_bad_config_refuses_to_start_listing_every_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        'data_dir = 7\nbogus = 1\n[admin]\nlisten = "nonsense:1"\nlockout_threshold = 0\n'
    )
    twistd = Path(sys.executable).parent / "twistd"
    result = subprocess.run(
        [str(twistd), "--pidfile=", "-n", "cipherd", "--config", str(config)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "4 configuration error(s)" in output
    for expected in ("data_dir: must be a str", "bogus: unknown key",
                     "admin.listen: not a Twisted server endpoint",
                     "admin.lockout_threshold: must be greater than 0"):
        assert expected in output
    assert not (tmp_path / "var").exists()
