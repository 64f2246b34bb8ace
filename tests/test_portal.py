"""
The webmail portal in memory, through C{StubTreq} with the clock injected:
security headers and cookies, CSRF on every form, login without user
enumeration, lockout and its end, session timeouts, the TOTP second factor,
the inbox (search, pages, delete), a hostile HTML message made harmless,
downloads with safe names and types, replies to authorized recipients
only, compose behind its setting, the account page, no open redirects,
languages and branding.
"""

from __future__ import annotations

import base64
import email
import email.policy
import os
import re
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock

from cipherd.settings import GLOBAL, scope_for
from cipherd.smtp.config import MTAConfig, apply_changes
from cipherd.store import Store
from cipherd.store.settings import SettingsRepository
from cipherd.testing import (
    RecordingSubmission,
    SynchronousRunner,
    cheap_hasher,
    migrated_store,
    result_of,
)
from cipherd.web.portal import CSRF_COOKIE, SESSION_COOKIE, Portal, safe_next
from cipherd.webmail import render, totp
from cipherd.webmail.accounts import RESET, SIGNUP, Accounts
from cipherd.webmail.i18n import LANGUAGES
from cipherd.webmail.mailbox import Mailboxes, message_key
from cipherd.webmail.messenger import Messenger
from cipherd.webmail.notify import Notifier
from cipherd.webmail.pdfreply import PDFReplies, ReplyCounts

ADDRESS = "dave@partner.example"
PASSWORD = "correct horse battery staple"
SECRET = "a-server-secret-of-some-length"

HOSTILE = (
    b"From: Alice <alice@example.com>\r\nTo: dave@partner.example, carol@example.com\r\n"
    b"Cc: eve@elsewhere.test\r\nSubject: Quarterly figures\r\n"
    b"Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <q3@example.com>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n"
    b"--outer\r\nContent-Type: multipart/related; boundary=\"rel\"\r\n\r\n"
    b"--rel\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    b"<html><head><style>body{background:url(https://tracker.test/css.png)}</style>"
    b"<meta http-equiv=refresh content=\"0;url=https://evil.test/\">"
    b"<base href=\"https://evil.test/\"></head><body>"
    b"<p onclick=\"alert(1)\" style=\"color:red;background-image:url(https://tracker.test/bg.png)"
    b";position:fixed\">Figures</p>"
    b"<script>alert('script')</script>"
    b"<img src=x onerror=\"alert('onerror')\">"
    b"<a href=\"javascript:alert('js')\">click</a>"
    b"<a href=\"https://example.com/report\">report</a>"
    b"<img src=\"https://tracker.test/pixel.png\" alt=\"pixel\">"
    b"<img src=\"cid:logo@example.com\" alt=\"logo\">"
    b"<svg><script>alert('svg')</script></svg>"
    b"<iframe src=\"https://evil.test/\"></iframe>"
    b"<form action=\"https://evil.test/\"><input name=p></form>"
    b"<table background=\"https://tracker.test/table.png\"><tr><td>Q3</td><td>42</td></tr>"
    b"</table></body></html>\r\n"
    b"--rel\r\nContent-Type: image/png\r\nContent-ID: <logo@example.com>\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n"
    b"--rel--\r\n"
    b"--outer\r\nContent-Type: text/html; name=\"../../evil.html\"\r\n"
    b"Content-Disposition: attachment; filename=\"../../evil.html\"\r\n\r\n"
    b"<script>alert('attachment')</script>\r\n"
    b"--outer\r\nContent-Type: text/csv; name=\"figures.csv\"\r\n"
    b"Content-Disposition: attachment; filename=\"figures.csv\"\r\n\r\nq,value\r\n3,42\r\n"
    b"--outer--\r\n"
)


def plain(subject: str, sender: str = "alice@example.com") -> bytes:
    return (f"From: {sender}\r\nTo: {ADDRESS}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{abs(hash(subject))}@example.com>\r\n\r\nHello.\r\n").encode()


@dataclass
class Answer:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), [""])[0]


def multipart_body(boundary: str, form: dict[str, Any],
                   files: dict[str, tuple[str, str, bytes]]) -> bytes:
    """
    A C{multipart/form-data} body as a browser sends it (StubTreq sends
    no files).
    """
    chunks = []
    for name, value in form.items():
        for one in value if isinstance(value, list) else [value]:
            chunks.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\""
                          f"\r\n\r\n{one}\r\n".encode())
    for name, (filename, content_type, data) in files.items():
        chunks.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                      f"filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n"
                      .encode() + data + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode()


def b32_secret(page: str) -> bytes:
    found = re.search(r'<code id="secret">([A-Z2-7 ]+)</code>', page)
    assert found, page
    text = found.group(1).replace(" ", "")
    return base64.b32decode(text + "=" * (-len(text) % 8))


@dataclass
class Visitor:
    """
    A browser, as far as the portal can tell: its cookies and the page
    it last saw.
    """

    site: PortalSite
    cookies: dict[str, str] = field(default_factory=dict)
    language: str = "en"

    def request(self, method: str, path: str, form: dict[str, Any] | None = None, *,
                files: dict[str, tuple[str, str, bytes]] | None = None,
                headers_: dict[str, str] | None = None) -> Answer:
        headers = {"Accept-Language": [self.language],
                   **{k: [v] for k, v in (headers_ or {}).items()}}
        if self.cookies:
            headers["Cookie"] = ["; ".join(f"{k}={v}" for k, v in self.cookies.items())]
        kwargs: dict[str, Any] = {"headers": headers, "allow_redirects": False}
        if files is not None:
            boundary = "portal-test-boundary"
            headers["Content-Type"] = [f"multipart/form-data; boundary={boundary}"]
            kwargs["data"] = multipart_body(boundary, form or {}, files)
        elif form is not None:
            kwargs["data"] = form
        response = result_of(self._call(method, path, kwargs))
        return response

    async def _call(self, method: str, path: str, kwargs: dict[str, Any]) -> Answer:
        # A client of its own each time: cookies are only what this visitor has.
        http = StubTreq(self.site.resource)
        response = await http.request(method, f"https://portal.example{path}", **kwargs)
        body = await response.content()
        headers = {k.decode().lower(): [v.decode() for v in vs]
                   for k, vs in response.headers.getAllRawHeaders()}
        for line in headers.get("set-cookie", []):
            parsed = SimpleCookie(line)
            for name, morsel in parsed.items():
                if morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return Answer(response.code, headers, body)

    def get(self, path: str) -> Answer:
        return self.request("GET", path)

    def csrf(self, page: Answer) -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert found, page.text
        return found.group(1)

    def submit(self, page_path: str, action: str, fields: dict[str, Any], **kwargs: Any
               ) -> Answer:
        """
        Open a page, then send one of its forms with its CSRF token.
        """
        page = self.get(page_path)
        return self.request("POST", action, {"csrf_token": self.csrf(page), **fields},
                            **kwargs)

    def log_in(self, password: str = PASSWORD, address: str = ADDRESS) -> Answer:
        return self.submit("/login", "/login", {"email": address, "password": password})


class PortalSite:
    """
    @param store: a migrated database (default: a new one in memory).
    """

    def __init__(self, store: Store | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.store = store or migrated_store()
        self.settings = SettingsRepository(self.store, self.clock)
        assert result_of(self.settings.update(GLOBAL, {
            "server_secret": SECRET, "notification_sender": "notify@webmail.example",
            "portal_base_url": "https://portal.example"})) == {}
        self.accounts = Accounts(self.store, self.clock, SynchronousRunner(), cheap_hasher())
        self.mailboxes = Mailboxes(self.store, message_key(os.urandom(32)))
        self.submission = RecordingSubmission()
        self.submitted = self.submission.submitted
        self.config, errors = apply_changes(MTAConfig(), {
            "authorized_recipients": ["example.com"], "my_hostname": "webmail.example"})
        assert not errors
        self.messenger = Messenger(self.accounts, self.mailboxes,
                                   Notifier(self.submission, self.clock),
                                   self.settings, lambda: self.config,
                                   self.submission, self.clock)
        self.pdf_replies = PDFReplies(self.settings, ReplyCounts(self.store, self.clock),
                                      lambda: self.config, self.submission, self.clock)
        self.portal = Portal(self.messenger, self.pdf_replies)
        self.resource = self.portal.resource()

    def set(self, scope: Any = GLOBAL, **values: Any) -> None:
        assert result_of(self.settings.update(scope, values)) == {}
        self.clock.advance(10)  # past the portal's settings cache

    def account(self, address: str = ADDRESS, password: str = PASSWORD) -> None:
        account, _ = result_of(self.accounts.invite(address))
        assert result_of(self.accounts.set_password(account, password))

    def deliver(self, content: bytes, address: str = ADDRESS, tunnel_id: str | None = None
                ) -> int:
        tunnel_id = tunnel_id or os.urandom(8).hex()
        assert result_of(self.mailboxes.deliver(address, tunnel_id, self.clock.seconds(),
                                                content))
        self.clock.advance(1)
        messages, _ = result_of(self.mailboxes.find(address))
        return next(m.id for m in messages if m.tunnel_id == tunnel_id)

    def visitor(self, language: str = "en") -> Visitor:
        return Visitor(self, language=language)


@pytest.fixture
def site() -> PortalSite:
    return PortalSite()


@pytest.fixture
def reader(site: PortalSite) -> Visitor:
    site.account()
    visitor = site.visitor()
    answer = visitor.log_in()
    assert (answer.status, answer.header("location")) == (303, "/inbox"), answer.text
    return visitor


# Headers, cookies, CSRF ----------------------------------------------------------


def test_every_page_has_the_security_headers_and_strict_cookies(site: PortalSite) -> None:
    page = site.visitor().get("/login")
    assert page.status == 200
    policy = page.header("content-security-policy")
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert page.header("strict-transport-security").startswith("max-age=")
    assert page.header("x-frame-options") == "DENY"
    assert page.header("x-content-type-options") == "nosniff"
    (cookie,) = page.headers["set-cookie"]
    assert cookie.startswith(f"{CSRF_COOKIE}=")
    for attribute in ("secure", "httponly", "samesite=strict", "path=/"):
        assert attribute in cookie.lower()
    assert "Domain" not in cookie
    assert "<script" not in page.text.replace('<script src="/static/portal.js" defer>', "")


def test_a_form_without_its_csrf_token_is_refused(site: PortalSite, reader: Visitor) -> None:
    message = site.deliver(plain("Hello"))
    for path, form in (("/login", {"email": ADDRESS, "password": PASSWORD}),
                       ("/inbox/delete", {"id": str(message)}),
                       (f"/message/{message}/delete", {}),
                       ("/account/password", {"current": PASSWORD, "password": "x" * 20,
                                              "confirm": "x" * 20}),
                       ("/logout", {})):
        for token in (None, "forged-token"):
            answer = reader.request("POST", path, {**form, **(
                {"csrf_token": token} if token else {})})
            assert answer.status == 403, path
            assert "This form was open too long" in answer.text
    assert result_of(site.mailboxes.count(ADDRESS)) == 1
    assert reader.get("/inbox").status == 200  # still logged in


def test_no_open_redirects() -> None:
    for hostile in ("https://evil.test/", "//evil.test/", "/\\evil.test", "/\\/evil.test",
                    "javascript:alert(1)", " /inbox", "/inbox\r\nSet-Cookie: x=1"):
        assert safe_next(hostile) == "/"
    assert safe_next("/inbox?q=x&page=2") == "/inbox?q=x&page=2"


def test_the_language_switch_stays_on_the_site(site: PortalSite) -> None:
    visitor = site.visitor()
    answer = visitor.get("/language?" + urlencode({"to": "nl", "next": "//evil.test/x"}))
    assert (answer.status, answer.header("location")) == (303, "/")
    answer = visitor.get("/language?" + urlencode({"to": "nl", "next": "/login"}))
    assert answer.header("location") == "/login"
    assert "Inloggen" in visitor.get("/login").text


# Login, lockout, sessions ---------------------------------------------------------


def test_unknown_address_and_wrong_password_read_the_same(site: PortalSite) -> None:
    site.account()
    wrong = site.visitor().log_in("not the password")
    unknown = site.visitor().log_in(PASSWORD, "nobody@partner.example")
    result_of(site.accounts.invite("invited@partner.example"))
    no_password = site.visitor().log_in(PASSWORD, "invited@partner.example")
    texts = {re.sub(r'value="[^"]*"', "", a.text) for a in (wrong, unknown, no_password)}
    assert len(texts) == 1 and {a.status for a in (wrong, unknown, no_password)} == {403}
    assert "The email address or the password is not right." in wrong.text
    assert SESSION_COOKIE not in str(wrong.headers.get("set-cookie"))


def test_repeated_wrong_passwords_lock_the_address_for_that_client(site: PortalSite) -> None:
    site.account()
    visitor = site.visitor()
    for _ in range(4):
        assert "not right" in visitor.log_in("wrong").text
    fifth = visitor.log_in("wrong")
    assert "locked for 15 more minute(s)" in fifth.text
    # Now even the right password is not checked.
    locked = visitor.log_in(PASSWORD)
    assert locked.status == 403 and "locked for 15 more minute(s)" in locked.text
    site.clock.advance(14 * 60)
    assert "locked for 1 more minute(s)" in visitor.log_in(PASSWORD).text
    site.clock.advance(61)
    assert visitor.log_in(PASSWORD).header("location") == "/inbox"


def test_sessions_end_after_idle_time_and_after_eight_hours(site: PortalSite,
                                                            reader: Visitor) -> None:
    for _ in range(40):  # 40 x 14 minutes: active, but longer than 8 hours in all
        site.clock.advance(14 * 60)
        if reader.get("/inbox").status != 200:
            break
    assert site.clock.seconds() - 1_800_000_000 >= 8 * 3600 - 14 * 60
    answer = reader.get("/inbox")
    assert (answer.status, answer.header("location")) == (303, "/login?ended=1")
    assert "Your session has ended" in reader.get("/login?ended=1").text
    again = site.visitor()
    again.log_in()
    site.clock.advance(15 * 60 + 1)
    assert again.get("/inbox").header("location") == "/login?ended=1"


def test_logout_ends_the_session(site: PortalSite, reader: Visitor) -> None:
    token = reader.cookies[SESSION_COOKIE]
    answer = reader.submit("/inbox", "/logout", {})
    assert answer.header("location") == "/login?bye=1"
    assert SESSION_COOKIE not in reader.cookies
    reader.cookies[SESSION_COOKIE] = token  # a copy kept somewhere opens nothing
    assert reader.get("/inbox").header("location") == "/login?ended=1"


# The second factor ------------------------------------------------------------------


def test_totp_setup_then_login_needs_the_code(site: PortalSite, reader: Visitor) -> None:
    page = reader.get("/account/totp")
    assert "otpauth://totp/Secure%20webmail:dave@partner.example?secret=" in page.text
    secret = b32_secret(page.text)
    pending = re.search(r'name="pending" value="([^"]+)"', page.text)
    assert pending
    wrong = reader.request("POST", "/account/totp", {
        "csrf_token": reader.csrf(page), "pending": pending.group(1), "code": "000000"})
    assert wrong.status == 400 and "That code is not right" in wrong.text
    done = reader.request("POST", "/account/totp", {
        "csrf_token": reader.csrf(page), "pending": pending.group(1),
        "code": totp.totp(secret, site.clock.seconds())})
    assert "The second factor is set up" in done.text
    stored = result_of(site.accounts.totp_secret(ADDRESS))
    assert stored is not None and secret not in stored  # sealed, not in the clear

    visitor = site.visitor()
    assert visitor.log_in().header("location") == "/login/code"
    assert visitor.get("/inbox").header("location") == "/login/code"
    assert visitor.get("/account/totp").header("location") == "/login/code"
    code = visitor.submit("/login/code", "/login/code", {"code": "123456"})
    assert code.status == 403 and "That code is not right" in code.text
    site.clock.advance(totp.STEP)
    used = totp.totp(secret, site.clock.seconds())
    answer = visitor.submit("/login/code", "/login/code", {"code": used})
    assert answer.header("location") == "/inbox"
    assert visitor.get("/inbox").status == 200
    # The same code a second time (seen over a shoulder) is spent.
    again = site.visitor()
    assert again.log_in().header("location") == "/login/code"
    replayed = again.submit("/login/code", "/login/code", {"code": used})
    assert replayed.status == 403 and "That code is not right" in replayed.text


def test_a_required_second_factor_is_set_up_before_anything_else(site: PortalSite) -> None:
    site.account()
    site.set(webmail_totp_required=True)
    visitor = site.visitor()
    assert visitor.log_in().header("location") == "/account/totp"
    assert visitor.get("/inbox").header("location") == "/account/totp"
    page = visitor.get("/account/totp")
    assert "This site requires a second factor" in page.text
    secret = b32_secret(page.text)
    pending = re.search(r'name="pending" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    visitor.request("POST", "/account/totp", {"csrf_token": visitor.csrf(page),
                                              "pending": pending,
                                              "code": totp.totp(secret, site.clock.seconds())})
    assert visitor.get("/inbox").status == 200
    # It cannot be removed while required.
    answer = visitor.submit("/account", "/account/totp/remove", {"current": PASSWORD})
    assert answer.status == 400 and "cannot be removed" in answer.text


def test_wrong_codes_lock_like_wrong_passwords(site: PortalSite) -> None:
    site.account()
    sealed = totp.seal_secret(site.mailboxes.key_for("totp"), ADDRESS, b"k" * 20)
    result_of(site.accounts.set_totp_secret(ADDRESS, sealed))
    visitor = site.visitor()
    visitor.log_in()
    for _ in range(4):
        visitor.submit("/login/code", "/login/code", {"code": "000000"})
    answer = visitor.submit("/login/code", "/login/code", {"code": "000000"})
    assert "locked for 15 more minute(s)" in answer.text
    right = visitor.submit("/login/code", "/login/code", {
        "code": totp.totp(b"k" * 20, site.clock.seconds())})
    assert "locked" in right.text and visitor.get("/inbox").status == 303


# The inbox ---------------------------------------------------------------------------


def test_inbox_lists_searches_pages_and_deletes(site: PortalSite, reader: Visitor) -> None:
    ids = [site.deliver(plain(f"Report {n:02d}", sender=f"s{n % 3}@example.com"))
           for n in range(30)]
    site.deliver(HOSTILE)
    page = reader.get("/inbox")
    assert "Messages 1\u201325 of 31" in page.text and 'rel="next"' in page.text
    assert page.text.count('class="unread"') == 25
    assert "Quarterly figures" in page.text and 'alt="Has attachments"' in page.text
    second = reader.get("/inbox?page=2")
    assert "Messages 26\u201331 of 31" in second.text and "Report 00" in second.text
    found = reader.get("/inbox?q=S1%40EXAMPLE")
    assert "10 messages match" in found.text
    assert reader.get("/inbox?q=%25").text.count("Report") == 0  # % is literal
    answer = reader.request("POST", "/inbox/delete", {"csrf_token": reader.csrf(page),
                                                      "id": [str(i) for i in ids[:3]]})
    assert answer.header("location") == "/inbox?deleted=3"
    assert "3 messages deleted." in reader.get(answer.header("location")).text
    assert result_of(site.mailboxes.count(ADDRESS)) == 28
    # An id of digits only str.isdigit() knows ("²") is no id, not a 500.
    page = reader.get("/inbox")
    answer = reader.request("POST", "/inbox/delete", {"csrf_token": reader.csrf(page),
                                                      "id": ["\u00b2", str(ids[3])]})
    assert answer.header("location") == "/inbox?deleted=1"


def test_another_mailbox_is_not_reachable(site: PortalSite, reader: Visitor) -> None:
    theirs = site.deliver(plain("Not yours"), address="erin@partner.example")
    for path in (f"/message/{theirs}", f"/message/{theirs}/body", f"/message/{theirs}/eml",
                 f"/message/{theirs}/part/0", f"/message/{theirs}/reply"):
        answer = reader.get(path)
        assert answer.status == 404 and "Not yours" not in answer.text, path
    reader.submit("/inbox", "/inbox/delete", {"id": str(theirs)})
    assert result_of(site.mailboxes.count("erin@partner.example")) == 1


# One message -------------------------------------------------------------------------


def test_a_hostile_html_message_is_shown_harmless(site: PortalSite, reader: Visitor) -> None:
    message = site.deliver(HOSTILE)
    page = reader.get(f"/message/{message}")
    assert page.status == 200
    assert "frame-src 'self'" in page.header("content-security-policy")
    assert (f'sandbox="allow-popups allow-popups-to-escape-sandbox" referrerpolicy="no-referrer" '
            f'src="/message/{message}/body"') in page.text
    assert "1 remote image was blocked" in page.text
    assert f'href="/message/{message}?remote=1">Show remote content' in page.text
    body = reader.get(f"/message/{message}/body")
    policy = body.header("content-security-policy")
    assert policy.startswith("default-src 'none'; img-src data:;") and "sandbox" in policy
    assert "script-src" not in policy and body.header("x-frame-options") == "SAMEORIGIN"
    html = body.text
    for attack in ("<script", "onerror", "onclick", "javascript:", "tracker.test", "<iframe",
                   "<form", "<base", "<meta http-equiv", "<svg", "position", "evil.test"):
        assert attack not in html, attack
    assert 'style="color:red"' in html
    assert 'src="data:image/png;base64,iVBORw0KGgo="' in html  # cid: inlined
    assert ('<a href="https://example.com/report" target="_blank" rel="noopener noreferrer">'
            in html)
    remote = reader.get(f"/message/{message}/body?remote=1")
    assert "img-src data: https: http:" in remote.header("content-security-policy")
    assert 'src="https://tracker.test/pixel.png"' in remote.text
    assert "tracker.test/bg.png" not in remote.text and "tracker.test/css.png" not in remote.text


def test_attachments_download_with_safe_names_and_types(site: PortalSite,
                                                        reader: Visitor) -> None:
    message = site.deliver(HOSTILE)
    page = reader.get(f"/message/{message}")
    links = re.findall(r'href="(/message/\d+/part/\d+)" download>([^<]+)<', page.text)
    assert [name for _, name in links] == ["evil.html", "figures.csv"]
    evil = reader.get(links[0][0])
    assert evil.header("content-type") == "application/octet-stream"
    assert evil.header("content-disposition") == (
        "attachment; filename=\"evil.html\"; filename*=UTF-8''evil.html")
    assert evil.header("x-content-type-options") == "nosniff"
    assert evil.header("content-security-policy") == "default-src 'none'; sandbox"
    csv = reader.get(links[1][0])
    assert csv.header("content-type") == "text/csv" and csv.body == b"q,value\r\n3,42"
    eml = reader.get(f"/message/{message}/eml")
    assert eml.body == HOSTILE and eml.header("content-type") == "message/rfc822"
    assert 'filename="Quarterly figures.eml"' in eml.header("content-disposition")
    assert reader.get(f"/message/{message}/part/99").status == 404


def test_reading_marks_read(site: PortalSite, reader: Visitor) -> None:
    message = site.deliver(plain("Read me"))
    assert 'class="unread"' in reader.get("/inbox").text
    page = reader.get(f"/message/{message}")
    assert '<pre class="text">Hello.' in page.text and "<iframe" not in page.text
    assert 'class="unread"' not in reader.get("/inbox").text


# Replies and new messages -----------------------------------------------------------------


def test_reply_all_goes_to_authorized_recipients_with_attachments(site: PortalSite,
                                                                   reader: Visitor) -> None:
    message = site.deliver(HOSTILE)
    form = reader.get(f"/message/{message}/reply?all=1")
    assert "alice@example.com, carol@example.com" in form.text
    assert "eve@elsewhere.test" in form.text and "not an authorized recipient" in form.text
    answer = reader.request("POST", f"/message/{message}/reply", {
        "csrf_token": reader.csrf(form), "all": "1", "text": "Thanks!",
        "to": "boss@elsewhere.test, bob@example.com", "copy": "1"},
        files={"attachment": ("notes.txt", "text/plain", b"my notes")})
    assert answer.status == 200, answer.text
    assert "Sent to: alice@example.com, carol@example.com, bob@example.com" in answer.text
    assert "boss@elsewhere.test" in answer.text and "eve@elsewhere.test" in answer.text
    ((sender, recipients, content),) = site.submitted
    # The copy goes into the user's webmail mailbox, never out by mail.
    assert sender == ADDRESS and ADDRESS not in recipients
    assert any(m.tunnel_id.startswith("sent-") for m in
               result_of(site.mailboxes.listing(ADDRESS)))
    parsed = email.message_from_bytes(content, policy=email.policy.default)
    assert parsed["In-Reply-To"] == "<q3@example.com>"
    assert parsed["References"] == "<q3@example.com>"
    (attached,) = parsed.iter_attachments()
    assert (attached.get_filename(), attached.get_content()) == ("notes.txt", "my notes")


def test_a_reply_to_nobody_authorized_is_refused_with_the_reason(site: PortalSite,
                                                                 reader: Visitor) -> None:
    message = site.deliver(plain("From outside", sender="x@elsewhere.test"))
    answer = reader.submit(f"/message/{message}/reply", f"/message/{message}/reply",
                           {"text": "hello"}, files={})
    assert answer.status == 400
    assert "The reply was not sent: no authorized recipient." in answer.text
    assert "x@elsewhere.test" in answer.text and site.submitted == []


def test_compose_only_when_the_setting_allows(site: PortalSite, reader: Visitor) -> None:
    assert reader.get("/compose").status == 404
    assert 'href="/compose"' not in reader.get("/inbox").text
    site.set(scope_for_user(ADDRESS), webmail_compose_enabled=True)
    assert 'href="/compose"' in reader.get("/inbox").text
    answer = reader.submit("/compose", "/compose", {
        "to": "bob@example.com, x@elsewhere.test", "subject": "New", "text": "Hi Bob"},
        files={})
    assert "Sent to: bob@example.com" in answer.text and "x@elsewhere.test" in answer.text
    ((_, recipients, content),) = site.submitted
    assert recipients == ["bob@example.com"] and b"Subject: New" in content


def scope_for_user(address: str) -> Any:
    from cipherd.settings import Level

    return scope_for(Level.USER, address)


# The account ------------------------------------------------------------------------------


def test_change_password_needs_the_current_one(site: PortalSite, reader: Visitor) -> None:
    other = site.visitor()
    other.log_in()
    new = "a completely different passphrase"
    wrong = reader.submit("/account", "/account/password", {
        "current": "wrong", "password": new, "confirm": new})
    assert wrong.status == 400 and "The current password is not right." in wrong.text
    weak = reader.submit("/account", "/account/password", {
        "current": PASSWORD, "password": "password1", "confirm": "password1"})
    assert weak.status == 400 and "too easy to guess" in weak.text
    done = reader.submit("/account", "/account/password", {
        "current": PASSWORD, "password": new, "confirm": new})
    assert "Your password was changed" in done.text
    assert reader.get("/inbox").status == 200
    assert other.get("/inbox").status == 303  # the other session ended
    assert site.visitor().log_in(new).header("location") == "/inbox"


# Sign-up and reset ---------------------------------------------------------------------------


def test_sign_up_page_names_the_senders_and_refuses_a_weak_password(site: PortalSite) -> None:
    account, _ = result_of(site.accounts.invite(ADDRESS))
    site.deliver(plain("Contract", sender="Alice <alice@example.com>"))
    token = site.accounts.link(SECRET, SIGNUP, account, 60)
    visitor = site.visitor()
    page = visitor.get(f"/signup?token={token}")
    assert "Secure messages for dave@partner.example are waiting." in page.text
    assert "Alice &lt;alice@example.com&gt;" in page.text
    weak = visitor.request("POST", "/signup", {"csrf_token": visitor.csrf(page), "token": token,
                                               "password": "password1", "confirm": "password1"})
    assert weak.status == 400 and "too easy to guess" in weak.text
    strength = visitor.request("POST", "/strength", {"csrf_token": visitor.csrf(page),
                                                     "token": token, "password": "password1"})
    assert strength.status == 200 and '"ok": false' in strength.text
    assert visitor.request("POST", "/strength", {"password": "x"}).status == 403
    good = visitor.request("POST", "/signup", {"csrf_token": visitor.csrf(page), "token": token,
                                               "password": PASSWORD, "confirm": PASSWORD})
    assert "Your password is set" in good.text
    used = visitor.get(f"/signup?token={token}")
    assert used.status == 400 and "This link cannot be used" in used.text
    assert "send it again" in used.text


def test_an_expired_reset_link_says_what_to_do(site: PortalSite) -> None:
    site.account()
    account = result_of(site.accounts.get(ADDRESS))
    assert account is not None
    token = site.accounts.link(SECRET, RESET, account, 10)
    site.clock.advance(11 * 60)
    page = site.visitor().get(f"/reset?token={token}")
    assert page.status == 400 and "This link has expired." in page.text
    assert 'href="/reset">Ask for a new password reset link' in page.text


def test_reset_disabled(site: PortalSite) -> None:
    site.set(password_reset_enabled=False)
    visitor = site.visitor()
    assert visitor.get("/reset").status == 404
    assert 'href="/reset"' not in visitor.get("/login").text


# Languages and branding ------------------------------------------------------------------------


def test_dutch_from_accept_language(site: PortalSite) -> None:
    site.account()
    visitor = site.visitor("nl-BE, en;q=0.5")
    page = visitor.get("/login")
    assert '<html lang="nl">' in page.text and "Inloggen" in page.text
    assert "Het e-mailadres of het wachtwoord klopt niet." in visitor.log_in("wrong").text
    assert '<html lang="en">' in site.visitor("fr, en;q=0.1").get("/login").text


def test_every_template_text_has_a_dutch_translation() -> None:
    from importlib.resources import files

    texts: set[str] = set()
    for template in (files("cipherd.web") / "templates").iterdir():
        if template.name.startswith("portal_"):
            source = template.read_text()
            texts |= set(re.findall(r'_\("((?:[^"\\]|\\.)*)"', source))
            texts |= set(re.findall(r"_\('((?:[^'\\]|\\.)*)'", source))
            texts |= set(re.findall(r'ngettext\("([^"]*)", "([^"]*)"', source) and
                         [t for pair in re.findall(r'ngettext\("([^"]*)", "([^"]*)"', source)
                          for t in pair])
    source = (files("cipherd.web") / "portal.py").read_text()
    texts |= {" ".join(re.sub(r'"\s*\n\s*"', "", t).split())
              for t in re.findall(r'self\._\(request, "((?:[^"]|"\s*\n\s*")*)"', source)}
    catalog = LANGUAGES["nl"][1]
    missing = sorted(t for t in texts if t not in catalog)
    assert not missing, missing


def test_branding(site: PortalSite) -> None:
    site.set(portal_product_name="Acme Secure Mail", portal_primary_colour="#7a1f5c",
             portal_logo_url="https://cdn.acme.test/logo.png")
    page = site.visitor().get("/login")
    assert "· Acme Secure Mail</title>" in page.text
    assert '<img src="https://cdn.acme.test/logo.png"' in page.text
    assert "img-src 'self' data: https://cdn.acme.test" in page.header("content-security-policy")
    css = site.visitor().get("/brand.css")
    assert css.text == ":root { --accent: #7a1f5c; }\n"
    assert css.header("content-type").startswith("text/css")


def test_branding_is_set_on_its_admin_page_and_checked(tmp_path: Any) -> None:
    from tests.harness import AdminHarness

    admin = AdminHarness(tmp_path)
    try:
        admin.login_with_new_password()
        page = admin.get("/settings/global/branding")
        assert page.code == 200
        for label in ("Product name", "Primary colour", "Logo URL"):
            assert label in page.text
        fields = [("fields", "portal_primary_colour"), ("fields", "portal_logo_url")]
        refused = admin.post_form("/settings/global/branding", [
            *fields, ("value.portal_primary_colour", "red; background:url(x)"),
            ("value.portal_logo_url", "javascript:alert(1)")])
        assert "is not a colour" in refused.text and "is not a valid URL" in refused.text
        admin.post_form("/settings/global/branding", [
            *fields, ("value.portal_primary_colour", "#7A1F5C"),
            ("value.portal_logo_url", "/static/logo.png")])
        values = result_of(admin.settings.effective(GLOBAL))
        assert values["portal_primary_colour"].value == "#7a1f5c"
        assert values["portal_logo_url"].value == "/static/logo.png"
    finally:
        admin.close()


@pytest.mark.parametrize("value, ok", [
    ("https://cdn.example/logo.png", True), ("/static/logo.png", True),
    ("http://cdn.example/logo.png", False), ("//cdn.example/logo.png", False),
    ("javascript:alert(1)", False), ("/logo.png\" onerror=\"x", False), ("", True),
])
def test_logo_url(value: str, ok: bool) -> None:
    from cipherd.settings import REGISTRY, InvalidValue

    if ok:
        assert REGISTRY["portal_logo_url"].validate(value) == value
    else:
        with pytest.raises(InvalidValue):
            REGISTRY["portal_logo_url"].validate(value)


def test_a_hostile_address_in_the_reply_page_is_text_not_markup(site: PortalSite,
                                                                 reader: Visitor) -> None:
    hostile = (b'From: alice@example.com\r\nReply-To: "<script src=part/1></script>%s"'
               b"@evil.example\r\nSubject: hi\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: text/plain\r\n\r\nhello\r\n")
    message = site.deliver(hostile)
    page = reader.get(f"/message/{message}/reply")
    assert page.status == 200
    assert "<script src=part/1>" not in page.text and "&lt;script" in page.text


@pytest.mark.parametrize("declared, served", [
    ("text/jscript", "application/octet-stream"),
    ("application/x-javascript", "application/octet-stream"),
    ("text/css", "application/octet-stream"),
    ("image/svg+xml", "application/octet-stream"),
    ("text/csv", "text/csv"), ("application/pdf", "application/pdf"), ("image/png", "image/png"),
])
def test_downloads_keep_their_type_only_when_it_is_passive(declared: str, served: str) -> None:
    assert render.download_type(declared) == served


def test_an_attachment_cannot_be_loaded_as_a_script(site: PortalSite, reader: Visitor) -> None:
    message = site.deliver(HOSTILE)
    as_script = reader.request("GET", f"/message/{message}/part/1",
                               headers_={"Sec-Fetch-Dest": "script"})
    assert as_script.status == 403
    download = reader.request("GET", f"/message/{message}/part/1",
                              headers_={"Sec-Fetch-Dest": "document"})
    assert download.status == 200
    assert download.header("cross-origin-resource-policy") == "same-origin"


def test_a_reply_form_is_checked_before_its_uploads_are_read(site: PortalSite,
                                                             reader: Visitor) -> None:
    message = site.deliver(HOSTILE)
    form = reader.get(f"/message/{message}/reply")
    many = {f"field{i}": "x" for i in range(50)}
    refused = reader.request("POST", f"/message/{message}/reply", {"text": "hi", **many},
                             files={"attachment": ("a.txt", "text/plain", b"a")})
    assert refused.status == 403  # no token: not parsed at all
    too_many = reader.request("POST", f"/message/{message}/reply", {
        "csrf_token": reader.csrf(form), "text": "hi", **many},
        files={"attachment": ("a.txt", "text/plain", b"a")})
    assert too_many.status == 400 and "too many parts" in too_many.text
    assert site.submitted == []


def test_link_tokens_stay_out_of_the_access_log_even_url_encoded() -> None:
    from cipherd.web.common import _SECRET_QUERY

    for uri, kept in ((b"/signup?token=abc.def", b"/signup?token=***"),
                      (b"/language?to=nl&next=%2Freset%3Ftoken%3Dabc.def%26x%3D1",
                       b"/language?to=nl&next=%2Freset%3Ftoken%3D***%26x%3D1")):
        assert _SECRET_QUERY.sub(rb"\1***", uri) == kept


def test_a_message_cannot_link_to_the_portals_own_pages() -> None:
    html, _ = render.sanitize('<a href="/logout">x</a><a href="?remote=1">y</a>'
                              '<a href="https://example.org/">z</a>', {}, allow_remote=False)
    assert "/logout" not in html and "remote=1" not in html
    assert 'href="https://example.org/"' in html


def test_no_directory_listing_of_the_static_files(site: PortalSite) -> None:
    listing = site.visitor().get("/static/")
    assert listing.status == 404 and "portal-clip.svg" not in listing.text
    assert "There is no such page or message." in listing.text


def test_disabling_an_account_ends_its_sessions(site: PortalSite, reader: Visitor) -> None:
    assert reader.get("/inbox").status == 200
    assert result_of(site.accounts.set_state(ADDRESS, "disabled"))
    assert reader.get("/inbox").header("location").startswith("/login")


def test_names_and_headers_show_what_they_are() -> None:
    assert render.safe_filename("invoice\u202efdp.exe", 1) == "invoicefdp.exe"
    assert render.safe_filename("a\u2066b\u200bc\u00a0\u00a0\u00a0d.pdf", 1) == "abc d.pdf"
    assert render.plain_text("Bank\u202e \u200bsupport") == "Bank support"


def test_the_error_pages_speak_dutch(site: PortalSite) -> None:
    visitor = site.visitor("nl")
    assert "Dit adres kan geen pagina van deze site zijn." in visitor.get("/a%00b").text
    assert "Deze pagina of dit bericht bestaat niet." in visitor.get("/nowhere").text
