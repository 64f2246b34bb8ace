"""
What scanners, stray clients and browsers' own requests get from both
sites, through StubTreq: unknown paths 404, wrong methods 405 with
C{Allow}, trailing-slash and C{//} variants 404 or 400 (never a redirect),
malformed paths 400 -- each a page in the site's own style (JSON under
C{/api/v1}), none logged above info.  Only a real fault is logged as one.
The favicon and robots.txt that every browser and crawler asks for.
"""

from __future__ import annotations

import gc
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest
from werkzeug.exceptions import NotFound

from cipherd.store import DatabaseUnavailable
from cipherd.testing import result_of
from cipherd.web.common import SeeOther, _within_deadline
from cipherd.web.favicon import ICO_SIZES
from tests.harness import AdminHarness
from tests.test_portal import PortalSite


@dataclass
class Reply:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


def ask(resource: Resource, method: str, path: str, **kwargs: Any) -> Reply:
    """
    One request as a client sends it: the path goes out as it is written
    (no normalising of C{//}, C{..} or escapes).
    """

    async def go() -> Reply:
        response = await StubTreq(resource).request(
            method, f"https://site.test{path}", allow_redirects=False, **kwargs)
        body = await response.content()
        headers = {k.decode().lower(): [v.decode() for v in vs]
                   for k, vs in response.headers.getAllRawHeaders()}
        return Reply(response.code, headers, body)

    return result_of(go())


@dataclass
class Site:
    name: str
    resource: Resource
    harness: Any


@pytest.fixture(params=["admin", "portal"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    if request.param == "admin":
        admin = AdminHarness(tmp_path)
        yield Site("admin", admin.site.resource(), admin)
        admin.close()
    else:
        portal = PortalSite()
        yield Site("portal", portal.resource, portal)




def serious(events: list[dict[str, Any]]) -> list[str]:
    """
    The events above info, formatted with their tracebacks.
    """
    return [formatEvent(e) + (e["log_failure"].getTraceback() if "log_failure" in e else "")
            for e in events
            if e.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical)]


# What both sites answer, as (method, path, status, Allow).
BOTH_SITES = [
    # Every browser asks for these.
    ("GET", "/favicon.ico", 200, None),
    ("GET", "/favicon.svg", 200, None),
    ("GET", "/robots.txt", 200, None),
    # Trailing-slash variants: no such page, and no redirect to guess from.
    ("GET", "/login/", 404, None),
    ("GET", "/static", 404, None),
    ("GET", "/static/", 404, None),  # no directory listing either
    ("GET", "/static/no-such.css", 404, None),
    ("GET", "/no/such/page", 404, None),
    ("GET", "/wp-login.php", 404, None),
    ("GET", "/.env", 404, None),
    # Wrong methods: 405 with the methods there are (RFC 9110 §15.5.6).
    ("GET", "/logout", 405, "POST"),
    ("OPTIONS", "/login", 405, "GET, HEAD, POST"),
    ("PUT", "/login", 405, "GET, HEAD, POST"),
    ("POST", "/static/portal.css", 405, "GET, HEAD"),
    ("DELETE", "/static/portal.css", 405, "GET, HEAD"),
    # Malformed paths: refused before routing and the static files.
    ("GET", "/static/%00", 400, None),
    ("GET", "/static/a%00.css", 400, None),
    ("GET", "/static//x", 400, None),
    ("GET", "//static/portal.css", 400, None),
    ("GET", "/static/%2e%2e/common.py", 400, None),
    ("GET", "/static/../common.py", 400, None),
    ("GET", "/login%zz", 400, None),
    ("GET", "/login%", 400, None),
    ("GET", "/%ff%fe", 400, None),
    ("GET", "/login%0d%0aSet-Cookie:%20x=y", 400, None),
]
ADMIN_ONLY = [
    ("GET", "/api/v1/no-such", 404, None),
    ("GET", "/api/v1/queue/", 404, None),
    ("GET", "/api", 404, None),
    ("GET", "/api/v1", 404, None),
    ("DELETE", "/api/v1/queue", 405, "GET, HEAD"),
    ("GET", "/api/v1/queue/flush", 405, "POST"),
    ("GET", "/api/v1/queue%00", 400, None),
    ("GET", "/api/v1//queue", 400, None),
    ("GET", "/mta", 404, None),
    ("GET", "/mta/no-such", 404, None),
    ("GET", "/pki/certificates/x/y/z", 404, None),
    ("GET", "/mta/queue/flush", 405, "POST"),
]


def check(site: Site, method: str, path: str, status: int, allow: str | None) -> Reply:
    reply = ask(site.resource, method, path)
    assert reply.status == status, (method, path, reply.status, reply.body[:300])
    assert reply.header("allow") == allow, (method, path)
    assert reply.header("location") is None, (method, path)
    # Every answer, errors included, carries the security headers.
    assert reply.header("x-content-type-options") == "nosniff", (method, path)
    return reply


@pytest.mark.parametrize(("method", "path", "status", "allow"), BOTH_SITES)
def test_scanners_and_stray_requests_get_4xx_not_500_and_nothing_is_logged(
        site: Site, log_events: list[dict[str, Any]], method: str, path: str, status: int,
        allow: str | None) -> None:
    reply = check(site, method, path, status, allow)
    assert serious(log_events) == []
    if status >= 400:
        # A page of the site's own, with a way home.
        assert reply.header("content-type") == "text/html; charset=utf-8"
        assert ('href="/"' in reply.text if site.name == "admin"
                else 'href="/login"' in reply.text)
        assert "Traceback" not in reply.text and "werkzeug" not in reply.text.lower()
        assert 'href="/favicon.ico"' in reply.text


@pytest.mark.parametrize(("method", "path", "status", "allow"), ADMIN_ONLY)
def test_scanners_of_the_api_and_admin_pages_get_4xx_and_nothing_is_logged(
        tmp_path: Path, log_events: list[dict[str, Any]], method: str, path: str, status: int,
        allow: str | None) -> None:
    admin = AdminHarness(tmp_path)
    try:
        reply = check(Site("admin", admin.site.resource(), admin), method, path, status, allow)
    finally:
        admin.close()
    assert serious(log_events) == []
    if path.startswith("/api/v1"):
        assert reply.header("content-type") == "application/json"
        assert set(json.loads(reply.body)) == {"error"}
    else:
        assert reply.header("content-type") == "text/html; charset=utf-8"


def test_a_malformed_path_is_worth_a_line_at_info(site: Site,
                                                 log_events: list[dict[str, Any]]) -> None:
    ask(site.resource, "GET", "/static/%00")
    assert [(e["log_level"], formatEvent(e)) for e in log_events] == [
        (LogLevel.info, "Refused a request for a malformed path from 127.0.0.1: a control "
         "character (such as NUL)")]


def test_the_api_answers_its_errors_in_json(tmp_path: Path) -> None:
    admin = AdminHarness(tmp_path)
    try:
        missing = ask(admin.site.resource(), "GET", "/api/v1/no-such")
        assert missing.body == b'{\n "error": "There is no such resource."\n}\n'
        wrong = ask(admin.site.resource(), "DELETE", "/api/v1/queue")
        assert b"This resource does not answer DELETE; it answers GET, HEAD." in wrong.body
        malformed = ask(admin.site.resource(), "GET", "/api/v1/queue%00")
        assert b"This address cannot be a page: it has a control character" in malformed.body
    finally:
        admin.close()


def test_the_portal_error_pages_speak_the_readers_language_and_keep_the_branding() -> None:
    portal = PortalSite()
    portal.set(portal_product_name="Acme Secure Mail", portal_primary_colour="#7a1f5f")
    # The branding is picked up by any page; error pages use what was last seen.
    assert ask(portal.resource, "GET", "/login").status == 200
    page = ask(portal.resource, "GET", "/no-such", headers={"Accept-Language": ["nl"]})
    assert page.status == 404
    assert "Niet gevonden" in page.text and "Acme Secure Mail" in page.text
    assert 'href="/brand.css"' in page.text
    # With a session cookie the way back is the inbox.
    inbox = ask(portal.resource, "GET", "/no-such",
                headers={"Cookie": ["__Host-cipherd-webmail=whatever"]})
    assert 'href="/inbox"' in inbox.text


def test_a_real_fault_is_a_500_page_and_logged_critical_with_its_traceback(
        tmp_path: Path, log_events: list[dict[str, Any]]) -> None:
    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("secret detail")

    admin = AdminHarness(tmp_path)
    portal = PortalSite()
    try:
        admin.login_with_new_password()
        admin.site.backend.queue.messages = broken  # type: ignore[method-assign]
        api = admin.request("GET", "/api/v1/queue", auth=("admin", "purple-otter-canvas-91"))
        assert (api.code, api.json()) == (500, {
            "error": "Something went wrong on our side. The cause is in the cipherd log."})
        page = admin.get("/mta/queue")
        assert page.code == 500 and "The cause is in the cipherd log." in page.text
        portal.messenger.settings_for = broken  # type: ignore[method-assign]
        notice = ask(portal.resource, "GET", "/login")
        assert notice.status == 500 and "This page could not be shown." in notice.text
        assert "secret detail" not in api.text + page.text + notice.text
    finally:
        admin.close()
    critical = [e for e in log_events if e.get("log_level") == LogLevel.critical]
    assert [formatEvent(e) for e in critical] == [
        "AdminAPI: GET /api/v1/queue failed", "MTAPages: GET /mta/queue failed",
        "Portal: GET /login failed"]
    assert all("secret detail" in e["log_failure"].getTraceback() for e in critical)


def test_favicon_is_the_mark_as_ico_and_svg_in_the_sites_colour(tmp_path: Path) -> None:
    admin = AdminHarness(tmp_path)
    portal = PortalSite()
    try:
        ico = ask(admin.site.resource(), "GET", "/favicon.ico")
        assert ico.header("content-type") == "image/vnd.microsoft.icon"
        # ICONDIR: reserved 0, type 1 (icon), one entry per size, each a PNG.
        reserved, kind, count = struct.unpack("<HHH", ico.body[:6])
        assert (reserved, kind, count) == (0, 1, len(ICO_SIZES))
        for n, size in enumerate(ICO_SIZES):
            width, height, _, _, planes, bits, length, offset = struct.unpack(
                "<BBBBHHII", ico.body[6 + 16 * n:22 + 16 * n])
            assert (width, height, planes, bits) == (size, size, 1, 32)
            image = ico.body[offset:offset + length]
            assert image[:8] == b"\x89PNG\r\n\x1a\n"
            assert struct.unpack(">II", image[16:24]) == (size, size)
        assert ask(admin.site.resource(), "GET", "/favicon.svg").body.count(b"#1f5fbf") == 2
        # The portal's follows its branding colour.
        portal.set(portal_primary_colour="#7a1f5f")
        svg = ask(portal.resource, "GET", "/favicon.svg")
        assert svg.header("content-type") == "image/svg+xml"
        assert b'fill="#7a1f5f"' in svg.body and b"#1f5fbf" not in svg.body
        assert ask(portal.resource, "GET", "/favicon.ico").body != ico.body
        # Every page links it.
        for page in (admin.get("/login").text, ask(portal.resource, "GET", "/login").text):
            assert '<link rel="icon" href="/favicon.ico"' in page
            assert '<link rel="icon" href="/favicon.svg" type="image/svg+xml">' in page
    finally:
        admin.close()


def test_robots_txt_keeps_crawlers_out_of_both_sites(site: Site) -> None:
    reply = ask(site.resource, "GET", "/robots.txt")
    assert reply.header("content-type") == "text/plain; charset=utf-8"
    assert reply.body == b"User-agent: *\nDisallow: /\n"


class _Front:
    """What a Klein app is bound to, as far as the deadline is concerned."""


def _within(work: Deferred[Any], clock: Clock) -> tuple[Deferred[Any], list[Any]]:
    request = DummyRequest([b"api", b"v1", b"queue"])
    request.path = b"/api/v1/queue"
    answer = _within_deadline(work, request, 10.0, clock, _Front())
    outcome: list[Any] = []
    answer.addBoth(outcome.append)
    return answer, outcome


def test_a_client_hanging_up_mid_request_is_not_logged_as_a_fault(
        log_events: list[dict[str, Any]]) -> None:
    """
    Klein cancels a request whose client went away; that once cancelled
    the deadline's timer twice and logged an "Unhandled error in Deferred"
    (AlreadyCancelled) at critical level, for any client on demand.
    """
    clock = Clock()
    work: Deferred[Any] = Deferred()
    answer, outcome = _within(work, clock)
    answer.cancel()
    assert outcome[0].check(CancelledError)
    assert work.called and clock.getDelayedCalls() == []
    del work, answer
    gc.collect()  # an unhandled failure is logged when its Deferred is collected
    assert serious(log_events) == []


async def _cleaning_up(step: Deferred[Any], cleanup: Deferred[Any]) -> None:
    try:
        await step
    finally:
        await cleanup  # undoing half a change, say: it goes on after a cancel


def test_work_that_fails_after_its_client_went_away_is_still_logged_if_it_is_a_fault(
        log_events: list[dict[str, Any]]) -> None:
    clock = Clock()
    outcomes: list[Any] = []
    cleanups: list[Deferred[Any]] = []
    for _ in range(4):
        cleanups.append(Deferred())
        answer, outcome = _within(
            Deferred.fromCoroutine(_cleaning_up(Deferred(), cleanups[-1])), clock)
        answer.cancel()
        outcomes += outcome
    assert all(o.check(CancelledError) for o in outcomes)
    cleanups[0].errback(RuntimeError("a bug"))
    # What the error handler answers as 3xx/4xx/503 is no fault.
    cleanups[1].errback(SeeOther("/mta"))
    cleanups[2].errback(NotFound())
    cleanups[3].errback(DatabaseUnavailable("database is locked"))
    # Only this test's events: a timer of another test's HTTP channel that
    # fires on the shared reactor meanwhile ("while handling timed call")
    # is none of its business.
    ours = [e for e in log_events if e.get("log_namespace", "").startswith("cipherd")]
    faults = [e for e in ours if e.get("log_level") == LogLevel.critical]
    assert [formatEvent(e) for e in faults] == [
        "_Front: GET /api/v1/queue failed after its client went away"]
    assert faults[0]["log_failure"].check(RuntimeError)
    assert len(serious(ours)) == 1
    assert clock.getDelayedCalls() == []
