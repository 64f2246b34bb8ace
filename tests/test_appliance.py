"""
The appliance as a process: first start, second start, refusal to start on
a bad config, the login page over HTTPS.
"""

from __future__ import annotations

import http.client
import stat
import subprocess
import sys
import urllib.parse
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


def test_an_endless_chunked_upload_is_cut_off(appliance: Appliance) -> None:
    url = urllib.parse.urlsplit(appliance.admin_url)
    connection = http.client.HTTPSConnection(url.hostname, url.port, context=insecure_tls())

    def endless() -> object:
        for _ in range(2_000):  # 2 GB if nothing stopped it
            yield b"x" * 1_000_000

    try:
        connection.request("POST", "/api/v1/certificates", body=endless(),
                           headers={"Authorization": "Basic YWRtaW46YWRtaW4=",
                                    "Content-Type": "application/octet-stream"},
                           encode_chunked=True)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server closed while we were still sending
    response = connection.getresponse()
    assert response.status == 413
    assert response.read() == b"The request body is larger than 10065536 bytes.\n"
    assert "Refused a request body over 10065536 bytes from 127.0.0.1" in (
        appliance.logs[-1].read_text())


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
