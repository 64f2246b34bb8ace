"""
Shared fixtures: databases (SQLite and the throwaway PostgreSQL that
``scripts/test`` starts) and a running appliance on real sockets.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from twisted.logger import formatEvent, globalLogPublisher

from cipherd.logs import mail_events

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
POSTGRES_ENV = "CIPHERD_TEST_POSTGRES_URL"


def _postgres_admin_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{POSTGRES_ENV} is not set: run the tests with scripts/test")
        pytest.skip(f"{POSTGRES_ENV} not set (scripts/test starts PostgreSQL)")
    return url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """
    A new, empty PostgreSQL database, dropped after the test.
    """
    admin_url = _postgres_admin_url()
    name = f"cipherd_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """
    A new, empty database of each kind cipherd supports.
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return str(request.getfixturevalue("postgres_url"))


# The ports free_port handed out: a port free now may be one handed out a
# moment ago for a listener that has not started yet (an appliance's admin
# port and its CRL port were once the same), so none is handed out twice.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def insecure_tls() -> ssl.SSLContext:
    """
    A client context for the appliance's self-signed certificate.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def api_call(appliance: Appliance, method: str, path: str, body: Any = None, *,
             password: str, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """
    One call to a running appliance's JSON API (HTTP Basic as admin): the
    status and the decoded answer, errors included.

    @param raw: a request body sent as it is (a certificate file), instead
        of C{body} as JSON.
    """
    credentials = base64.b64encode(f"admin:{password}".encode()).decode()
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{appliance.admin_url}/api/v1{path}", method=method, data=data,
        headers={"Authorization": f"Basic {credentials}",
                 "Content-Type": "application/octet-stream" if raw is not None
                 else "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, context=insecure_tls()) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


@dataclass
class Appliance:
    """
    A cipherd process started with C{twistd -n cipherd --config ...}.
    """

    directory: Path
    config: Path
    admin_port: int
    smtp_port: int
    process: subprocess.Popen[bytes] | None = None
    portal_port: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def admin_url(self) -> str:
        return f"https://127.0.0.1:{self.admin_port}"

    def wait_for_log(self, name: str, text: str, timeout: float = 15.0) -> str:
        """
        The MTA or MPA log (C{name}: C{"mta"}, C{"mpa"}) once C{text} is in it.
        """
        path = self.data_dir / "logs" / f"{name}.log"
        deadline = time.monotonic() + timeout
        content = ""
        while time.monotonic() < deadline:
            content = path.read_text() if path.exists() else ""
            if text in content:
                return content
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not in the {name.upper()} log:\n{content}")

    @property
    def portal_url(self) -> str:
        return f"https://127.0.0.1:{self.portal_port}"

    @property
    def data_dir(self) -> Path:
        return self.directory / "var"

    def start(self) -> None:
        log = self.directory / f"twistd-{len(self.logs)}.log"
        self.logs.append(log)
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "twistd"), "--pidfile=", "-n", "--logfile", str(log),
             "cipherd", "--config", str(self.config)],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"cipherd exited with {self.process.returncode}:\n"
                                   + log.read_text())
            try:
                urllib.request.urlopen(f"{self.admin_url}/login", context=insecure_tls(),
                                       timeout=2)
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("cipherd did not answer within 30 s:\n" + log.read_text())

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """
        C{kill -9}: the process gets no chance to tidy up, as in a crash.
        """
        assert self.process is not None
        self.process.kill()
        self.process.wait()


def write_appliance_config(directory: Path, admin_port: int, smtp_port: int,
                           database_url: str = "", portal_port: int = 0,
                           crl_port: int = 0) -> Path:
    config = directory / "cipherd.toml"
    portal_port = portal_port or free_port()
    crl_port = crl_port or free_port()
    config.write_text(
        f'data_dir = "var"\n'
        f"[database]\nurl = {database_url!r}\n"
        f'[admin]\nlisten = "tcp:{admin_port}:interface=127.0.0.1"\n'
        f'[smtp]\nlisten = "tcp:{smtp_port}:interface=127.0.0.1"\n'
        f'[portal]\nlisten = "tcp:{portal_port}:interface=127.0.0.1"\n'
        f'[crl]\nlisten = "tcp:{crl_port}:interface=127.0.0.1"\n'
    )
    return config


@pytest.fixture
def appliance(tmp_path: Path) -> Iterator[Appliance]:
    """
    A running appliance on its embedded default (SQLite), on free ports.
    """
    port, smtp_port, portal_port = free_port(), free_port(), free_port()
    app = Appliance(tmp_path, write_appliance_config(tmp_path, port, smtp_port,
                                                     portal_port=portal_port),
                    port, smtp_port, portal_port=portal_port)
    app.start()
    try:
        yield app
    finally:
        app.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """
    A directory on a 1 MiB tmpfs of its own, for tests that fill the disk
    for real (see L{fill_disk}).  Mounting needs root: skipped without it,
    except under CI.
    """
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("mounting a small tmpfs needs root")
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)],
                   check=True, capture_output=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True, capture_output=True)


def fill_disk(directory: Path, leave: int) -> Path:
    """
    Fill the file system of C{directory} until only about C{leave} bytes
    are free; remove the returned file to free the space again.
    """
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


@pytest.fixture
def artifacts() -> Path:
    """
    Where tests keep screenshots and other artifacts for people to look at.
    """
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def log_events() -> Iterator[list[dict[str, Any]]]:
    """
    Every event logged (to the global log) while the test runs.
    """
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """
    The MTA and MPA log lines written while the test runs, formatted.
    """
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    mail_events.addObserver(observe)
    yield lines
    mail_events.removeObserver(observe)


@pytest.fixture
def signed_in_admin(tmp_path: Path) -> Iterator[Any]:
    """
    The admin site in memory (tests/harness.py), logged in with the default
    password already changed.
    """
    from tests.harness import AdminHarness

    harness = AdminHarness(tmp_path)
    harness.login_with_new_password()
    yield harness
    harness.close()


@pytest.fixture
def clock() -> Any:
    """
    A task.Clock at 2027-01-15 08:00 UTC (1,800,000,000 s).
    """
    from twisted.internet.task import Clock

    clock = Clock()
    clock.advance(1_800_000_000)
    return clock


@pytest.fixture
def admin_in(tmp_path: Path) -> Iterator[Any]:
    """
    The admin site (L{tests.harness.AdminHarness}) with the admin logged in
    and the default password changed.
    """
    from tests.harness import AdminHarness

    harness = AdminHarness(tmp_path)
    harness.login_with_new_password()
    yield harness
    harness.close()
