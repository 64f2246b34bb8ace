"""
An admin site wired to an in-memory store, synchronous runners and a
C{task.Clock}, driven through C{treq.testing.StubTreq}.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import LogPublisher

from cipherd.backups import Backups
from cipherd.core.counters import Counters
from cipherd.datadir import make_self_signed_tls, prepare_data_dir, read_kek
from cipherd.logs import MailLogsService
from cipherd.mpa.dlp_policy import DataLossPrevention
from cipherd.netinfo import Address, Interface, NetworkInfo, Resolvers
from cipherd.pki.ca import CertificateAuthority
from cipherd.pki.certstore import CertificateStore
from cipherd.pki.keyring import Keyring
from cipherd.pki.pgp import SequoiaOpenPGP
from cipherd.pki.sitetls import SiteTLS
from cipherd.smtp.config import MTAConfig, MTAConfigSource
from cipherd.smtp.queue import MailQueue
from cipherd.smtp.spool import DirectorySpool
from cipherd.store.counters import CounterStore
from cipherd.store.settings import SettingsRepository
from cipherd.testing import (
    RecordingSubmission,
    SynchronousRunner,
    cheap_hasher,
    migrated_store,
    result_of,
)
from cipherd.web.admin import CSRF_FIELD, AdminSite
from cipherd.web.audit import AuditTrail
from cipherd.web.auth import AdminAuthority
from cipherd.web.backend import AdminBackend
from cipherd.web.dashboard import Dashboard
from cipherd.webmail.accounts import Accounts
from cipherd.webmail.administration import AccountAdministration
from cipherd.webmail.mailbox import Mailboxes
from cipherd.webmail.notify import Notifier

BASE = "https://admin.test"
# What Admin → Network shows of the harness's "machine".
NETWORK = NetworkInfo(
    hostname="webmail", fqdn="webmail.example.com",
    interfaces=(Interface("eth0", "00:15:5d:b2:2a:1d", True, 1500, (
        Address("IPv4", "192.168.1.109", "255.255.255.0", "192.168.1.255"),
        Address("IPv6", "fe80::215:5dff:feb2:2a1d%eth0", "ffff:ffff:ffff:ffff::", ""))),
        Interface("lo", "00:00:00:00:00:00", True, 65536, (
            Address("IPv4", "127.0.0.1", "255.0.0.0", ""),))),
    gateways=("192.168.1.1 (eth0)",),
    resolvers=Resolvers(("192.168.1.1",), ("example.com",)))
GOOD_PASSWORD = "purple-otter-canvas-91"
IDLE = 1800
MAX_AGE = 43200
LOCKOUT_THRESHOLD = 5
LOCKOUT_DURATION = 900


class Response:
    def __init__(self, code: int, headers: Any, body: bytes) -> None:
        self.code = code
        self.headers = headers
        self.body = body
        self.text = body.decode("utf-8", errors="replace")

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    def set_cookies(self) -> list[str]:
        return self.headers.getRawHeaders("set-cookie") or []


NODE = "node-1"


class AdminHarness:
    """
    @param site_tls_replaceable: why the sites' certificate cannot be
        replaced (as when the bootstrap file names it), or C{None}.
    """

    def __init__(self, log_dir: Path, *, site_tls_replaceable: str | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.store = migrated_store()
        self.runner = SynchronousRunner()
        self.settings = SettingsRepository(self.store, self.clock)
        self.authority = AdminAuthority(
            self.store, self.runner, self.clock, idle_timeout=IDLE, max_age=MAX_AGE,
            lockout_threshold=LOCKOUT_THRESHOLD, lockout_window=900,
            lockout_duration=LOCKOUT_DURATION, hasher=cheap_hasher(), totp_key=os.urandom(32),
        )
        result_of(self.authority.ensure_default_admin())
        self.publisher = LogPublisher()
        self.logs = MailLogsService(log_dir, max_bytes=10_000, keep=2, publisher=self.publisher)
        self.logs.startService()
        kek = os.urandom(32)
        self.certificates = CertificateStore(self.store, self.clock, kek, self.runner)
        # The built-in CA; example.com is the internal domain.
        self.ca = CertificateAuthority(self.store, self.certificates, self.settings,
                                       self.runner, self.clock, kek,
                                       internal=lambda address: address.endswith("@example.com"))
        self.dlp = DataLossPrevention(self.store, self.runner, self.clock, kek)
        self.keyring = Keyring(self.store, self.clock, os.urandom(32), self.runner,
                               SequoiaOpenPGP())
        cert_pem, key_pem = make_self_signed_tls("localhost", datetime(2027, 1, 1, tzinfo=UTC))
        (log_dir / "tls-cert.pem").write_bytes(cert_pem)
        (log_dir / "tls-key.pem").write_bytes(key_pem)
        self.site_tls = SiteTLS(log_dir / "tls-cert.pem", log_dir / "tls-key.pem",
                                replaceable=site_tls_replaceable)
        self.audit = AuditTrail(self.store, self.settings, self.clock)
        self.queue = MailQueue(DirectorySpool(log_dir / "spool"), self.runner, self.clock)
        self.counters = Counters(self.clock)
        self.counts = CounterStore(self.store, self.counters, NODE)
        self.disk = (50 << 30, 100 << 30)
        self.accounts = Accounts(self.store, self.clock, self.runner, cheap_hasher())
        self.mailboxes = Mailboxes(self.store, os.urandom(32))
        self.submission = RecordingSubmission()
        self.mta_config = MTAConfig()
        # The backups of a data dir of its own, under its own KEK.
        self.data = prepare_data_dir(log_dir / "data", tls_hostname="localhost",
                                     now=datetime(2027, 1, 1, tzinfo=UTC))
        self.backups = Backups(self.store, self.data, read_kek(self.data), NODE, self.clock,
                               self.runner)
        self.site = AdminSite(
            AdminBackend(self.authority, self.settings, self.logs.logs, self.runner,
                         self.certificates, self.keyring, MTAConfigSource(self.store),
                         self.queue, self.audit,
                         Dashboard(self.store, self.counts, self.queue, lambda: self.disk, NODE,
                                   self.clock),
                         AccountAdministration(self.store, self.accounts, self.mailboxes,
                                               Notifier(self.submission, self.clock),
                                               self.settings, lambda: self.mta_config,
                                               self.clock),
                         network_info=lambda: NETWORK, site_tls=self.site_tls,
                         backups=self.backups, ca=self.ca, dlp=self.dlp,
                         crl_base=lambda: "http://pki.example.com:8081")
        )
        self.treq = StubTreq(self.site.resource())
        self.cookies: dict[str, str] = {}

    def close(self) -> None:
        self.logs.stopService()

    def request(self, method: str, path: str, **kwargs: Any) -> Response:
        kwargs.setdefault("cookies", dict(self.cookies))
        d = self.treq.request(method, BASE + path, allow_redirects=False, **kwargs)
        self.treq.flush()
        outcome: list[Any] = []
        d.addBoth(outcome.append)
        response = outcome[0]
        body_d = response.content()
        self.treq.flush()
        body: list[bytes] = []
        body_d.addBoth(body.append)
        result = Response(response.code, response.headers, body[0])
        for cookie in result.set_cookies():
            name, _, rest = cookie.partition("=")
            value = rest.split(";", 1)[0]
            if "max-age=0" in cookie.lower():
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return result

    def get(self, path: str, **kwargs: Any) -> Response:
        return self.request("GET", path, **kwargs)

    def post_form(self, path: str, data: dict[str, Any] | list[tuple[str, str]],
                  csrf: str | None = "page") -> Response:
        """
        POST a form; C{csrf="page"} takes the token from the page at C{path}
        as a browser would.
        """
        items = list(data.items()) if isinstance(data, dict) else list(data)
        if csrf == "page":
            csrf = self.csrf_from(self.get(path.split("?")[0]))
        if csrf is not None:
            items.append((CSRF_FIELD, csrf))
        return self.request("POST", path, data=items)

    def post_file(self, path: str, data: bytes, *, form_page: str,
                  csrf: str | None = "page", **fields: str) -> Response:
        """
        POST a multipart form with C{data} as its C{file} field, as a
        browser uploads it; C{csrf="page"} takes the token from
        C{form_page}.
        """
        token = self.csrf_from(self.get(form_page)) if csrf == "page" else csrf
        form = dict(fields)
        if token is not None:
            form[CSRF_FIELD] = token
        boundary = "----test-boundary-7MA4YWxkTrZu0gW"
        body = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
            .encode() for k, v in form.items()
        ) + (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
             'filename="up.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
             ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
        return self.request("POST", path, data=body, headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}"})

    @staticmethod
    def csrf_from(page: Response) -> str:
        match = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', page.text)
        assert match, page.text
        return match.group(1)

    def login(self, password: str = "admin") -> Response:
        return self.post_form("/login", {"username": "admin", "password": password})

    def login_with_new_password(self) -> None:
        self.login()
        changed = self.post_form(
            "/admin/password", {"password": GOOD_PASSWORD, "confirm": GOOD_PASSWORD}
        )
        assert changed.code == 303, changed.text
