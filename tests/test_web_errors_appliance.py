"""
A running appliance asked, byte for byte over TLS, for what scanners and
stray clients ask both its sites: unknown paths, wrong methods, trailing
slashes, NUL bytes (raw and escaped), bad escapes, C{//} and dot segments.
Each gets a 4xx, and the service log has no critical line and no
traceback.  The 404 pages in Chromium, kept as screenshots.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, expect

from tests.conftest import Appliance, insecure_tls
from tests.test_browser_admin import DESKTOP, PHONE, browser  # noqa: F401

pytestmark = pytest.mark.e2e

# (method, raw path, status, Allow) asked of both sites.
BOTH_SITES: list[tuple[str, bytes, int, str | None]] = [
    ("GET", b"/favicon.ico", 200, None),
    ("GET", b"/robots.txt", 200, None),
    ("GET", b"/login/", 404, None),
    ("GET", b"/static", 404, None),
    ("GET", b"/static/", 404, None),
    ("GET", b"/no/such/page", 404, None),
    ("GET", b"/logout", 405, "POST"),
    ("OPTIONS", b"/login", 405, "GET, HEAD, POST"),
    ("POST", b"/static/portal.css", 405, "GET, HEAD"),
    ("GET", b"/static/%00", 400, None),
    ("GET", b"/static/\x00", 400, None),
    ("GET", b"/static//x", 400, None),
    ("GET", b"/static/../cipherd.toml", 400, None),
    ("GET", b"/static/%2e%2e/common.py", 400, None),
    ("GET", b"/login%zz", 400, None),
    ("GET", b"/%ff", 400, None),
]
ADMIN_ONLY: list[tuple[str, bytes, int, str | None]] = [
    ("GET", b"/api/v1/no-such", 404, None),
    ("GET", b"/api/v1/queue/", 404, None),
    ("DELETE", b"/api/v1/queue", 405, "GET, HEAD"),
    ("GET", b"/api/v1/%00", 400, None),
    ("GET", b"/mta/no-such", 404, None),
]


def ask(port: int, method: str, path: bytes, host: bytes | None = None
        ) -> tuple[int, dict[str, str], bytes]:
    """
    One HTTP/1.1 request, written as it is (no client library to tidy
    the path), and its status, headers and body.
    """
    host = host or f"127.0.0.1:{port}".encode()
    request = (method.encode() + b" " + path + b" HTTP/1.1\r\nHost: " + host
               + b"\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=15) as raw, \
            insecure_tls().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(request)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def test_scanners_get_4xx_from_both_sites_and_the_log_stays_clean(
        appliance: Appliance) -> None:
    asked = [(appliance.admin_port, *case) for case in BOTH_SITES + ADMIN_ONLY]
    asked += [(appliance.portal_port, *case) for case in BOTH_SITES]
    for port, method, path, status, allow in asked:
        code, headers, body = ask(port, method, path)
        assert (code, headers.get("allow")) == (status, allow), (port, method, path, body[:200])
        assert "location" not in headers, (port, method, path)
        if status >= 400:
            assert b"Traceback" not in body and b"Processing Failed" not in body
    for port in (appliance.admin_port, appliance.portal_port):
        # Klein logged a Host header that is not UTF-8 as an error.
        assert ask(port, "GET", b"/login", host=b"\xff\xfe")[0] == 400
    log = appliance.logs[-1].read_text()
    assert "#critical]" not in log and "Traceback" not in log, log
    assert "#error]" not in log, log
    assert "Refused a request for a malformed path from 127.0.0.1" in log


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:  # noqa: F811
    context = browser.new_context(ignore_https_errors=True, viewport=DESKTOP)
    try:
        yield context
    finally:
        context.close()


@pytest.mark.browser
def test_the_404_pages_in_chromium(appliance: Appliance, context: BrowserContext,
                                   artifacts: Path) -> None:
    page = context.new_page()
    for site, url, home in (("admin", appliance.admin_url, "Back to the start page"),
                            ("portal", appliance.portal_url, "Go to the login page")):
        response = page.goto(f"{url}/no/such/page")
        assert response is not None and response.status == 404
        expect(page.get_by_role("heading", name="Not found")).to_be_visible()
        expect(page.get_by_role("link", name=home)).to_be_visible()
        for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(viewport)
            page.screenshot(path=artifacts / f"{site}-404-{width}.png", full_page=True)
        page.set_viewport_size(DESKTOP)
        # The tab's icon: the browser fetched it and it is an image.
        icon = page.evaluate("fetch('/favicon.svg').then(r => r.headers.get('content-type'))")
        assert icon == "image/svg+xml"
        page.goto(f"{url}/favicon.svg")
        page.screenshot(path=artifacts / f"{site}-favicon.png")
        page.goto(f"{url}/no/such/page")
        page.get_by_role("link", name=home).click()
        page.wait_for_load_state()
        assert page.url.endswith("/login")
