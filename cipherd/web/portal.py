"""
The webmail portal: the recipient's side, on the portal endpoint.

The people who use it did not choose it and arrive from an email that
could be phishing, so every page says plainly where they are and what to
do next, works on a phone, and is as strict as a browser allows:

- Sign-up and password reset through the emailed links (the link is
  checked, the page says whose messages wait, the password is set with the
  reason a weak one is refused and a live strength meter); login with
  optional TOTP (RFC 6238) second factor, required when the *second
  factor required* setting says so; logout.
- Sessions in the database (L{cipherd.webmail.sessions}): a random token
  in a C{__Host-} cookie (Secure, HttpOnly, SameSite=Strict), its SHA-256
  stored; 15 minutes idle, 8 hours at most; a new token at every login.
  Failed logins and one-time codes are counted per address and client and
  lock the pair for a while; the answer is the same for an unknown address
  as for a wrong password, and takes as long (a dummy Argon2 check).
- The inbox (unread, sender, subject, date, size, attachments; search;
  pages; delete), each message (headers, text, HTML made safe as
  L{cipherd.webmail.render} explains — sanitized, in its own sandboxed
  document with its own CSP, remote content blocked until asked for —
  attachments as downloads, the whole message as C{.eml}, a print
  stylesheet), replies and, when allowed, new messages to authorized
  recipients only, and an account page (password, second factor).
- Every form carries a CSRF token: before login one bound to a
  SameSite=Strict cookie, after login the session's own; compared in
  constant time.  Every page carries the security headers of
  L{cipherd.web.common.SecureHeaders} (no inline script, no framing,
  HSTS); redirects go only to paths on this site.
- English and Dutch through jinja2's i18n extension
  (L{cipherd.webmail.i18n}); the product name, colour and logo from the
  *branding* settings (the colour through a generated stylesheet, never
  inline style).
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import functools
import json
import re
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from jinja2 import Environment
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from werkzeug.exceptions import NotFound
from zope.interface import implementer

from cipherd.core.clock import minute_utc
from cipherd.settings import REGISTRY
from cipherd.web.auth import csrf_matches
from cipherd.web.common import (
    CONTENT_SECURITY_POLICY,
    MAX_UPLOAD,
    ErrorAnswer,
    IErrorPages,
    SecureHeaders,
    SeeOther,
    SiteApp,
    arg,
    args,
    clear_cookie,
    client_address,
    cookie,
    favicon,
    json_response,
    log,
    redirect,
    robots_txt,
    set_cookie,
    static_files,
    template_environment,
    whole_number,
)
from cipherd.webmail import render, totp, tracking
from cipherd.webmail.accounts import DISABLED, RESET, SIGNUP, Account, LinkRefused
from cipherd.webmail.controls import (
    CONTROLS,
    NO_DOWNLOAD,
    NO_REPLY,
    REQUIRE_TOTP,
    VIEWABLE,
    WORDS,
    ControlRefused,
)
from cipherd.webmail.i18n import LANGUAGES, negotiate, ngettext_for, translator
from cipherd.webmail.mailbox import Held, MessageEnded
from cipherd.webmail.messenger import Messenger, ReplyResult
from cipherd.webmail.passkeys import PasskeyRefused, RelyingParty
from cipherd.webmail.pdfreply import PDFReplies, ReplyLink, ReplyRefused
from cipherd.webmail.reply import MAX_REPLY_SIZE, Attachment, quoted_text
from cipherd.webmail.sessions import BUSY, LOCKED, THROTTLED, WRONG, LoginRefused, PortalSession
from cipherd.webmail.tracking import DELETED, EXPIRED, RECALLED, Timeline, TrackingLink

# How each end of a message reads on the status pages.
STATES = {"": "In the mailbox", EXPIRED: "Expired", RECALLED: "Recalled",
          DELETED: "Deleted by the recipient"}


CSRF_COOKIE = "__Host-cipherd-portal"
SESSION_COOKIE = "__Host-cipherd-webmail"
LANGUAGE_COOKIE = "__Host-cipherd-language"
CSRF_FIELD = "csrf_token"
MAX_PASSWORD = 1024
PAGE_SIZE = 25
# The live strength meter: at most this many checks per client a minute.
STRENGTH_CHECKS_PER_MINUTE = 60
MAX_ATTACHMENTS = 20
_LOCAL_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9/_.~=&?%+-]*")
# What every page shows of the branding settings; error pages use the last
# values seen (they must not need the database).
_BRAND = ("portal_product_name", "portal_primary_colour", "portal_logo_url")
_DEFAULT_COLOUR = "#1f5fbf"


def safe_next(location: str | None) -> str:
    """
    C{location} when it is a path on this site, else C{/}: no open
    redirects (C{//host}, C{/\\host} and absolute URLs are refused).
    """
    if location and len(location) < 2000 and _LOCAL_PATH.fullmatch(location):
        return location
    return "/"


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.0f} KB"
    return f"{size / 1024 / 1024:.1f} MB"


@dataclass(frozen=True)
class _Form:
    """
    A submitted multipart form: its fields and its files.
    """

    fields: dict[str, list[str]]
    files: list[Attachment]

    def get(self, name: str) -> str:
        values = self.fields.get(name)
        return values[0] if values else ""


# What a reply or message with its attachments may weigh, as the page says:
# the smaller of what the portal reads and what a reply may be.
MAX_FORM_SIZE = min(MAX_REPLY_SIZE, MAX_UPLOAD)

# Fields and files a reply or message form may have (attachments beyond
# MAX_ATTACHMENTS are dropped anyway).
MAX_FORM_PARTS = 40


def _multipart(request: IRequest) -> _Form:
    """
    The fields and files of a C{multipart/form-data} body (Twisted keeps
    the fields but drops the file names and types).
    """
    content_type = request.getHeader(b"content-type") or b""
    body = request.content.read() if request.content is not None else b""
    if request.content is not None:
        request.content.seek(0)
    if not content_type.lower().startswith(b"multipart/form-data"):
        return _Form({k.decode(): [v.decode("utf-8", "replace") for v in vs]
                      for k, vs in request.args.items()}, [])
    boundary = re.search(rb'boundary="?([^";]{1,200})', content_type)
    if boundary is None:
        raise ValueError("The form is not one a browser sends.")
    if body.count(b"--" + boundary.group(1)) > MAX_FORM_PARTS + 1:
        raise ValueError("The form has too many parts. Attach fewer files.")
    parsed = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type + b"\r\n\r\n" + body)
    fields: dict[str, list[str]] = {}
    found: list[Attachment] = []
    for part in parsed.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        data = part.get_payload(decode=True)
        data = data if isinstance(data, bytes) else b""
        filename = part.get_filename()
        if filename is None:
            fields.setdefault(name, []).append(data.decode("utf-8", "replace"))
        elif name == "attachment" and (filename or data):
            found.append(Attachment(render.safe_filename(filename, len(found) + 1),
                                    part.get_content_type(), data))
    return _Form(fields, found)


def _message_page(handler: Callable[..., Awaitable[bytes]]
                  ) -> Callable[..., Awaitable[bytes]]:
    """
    A page of one message: a message that expired or was recalled, or
    that its sender's controls keep from this, answers with a page saying
    so (L{Portal._message_refused}).  Below C{@app.route}.
    """
    @functools.wraps(handler)
    async def page(self: Portal, request: IRequest, *args: Any, **kwargs: Any) -> bytes:
        try:
            return await handler(self, request, *args, **kwargs)
        except (MessageEnded, ControlRefused) as e:
            return await self._message_refused(request, e)

    return page


@implementer(IErrorPages)
class Portal:
    """
    @param messenger: the webmail messenger's back end; the portal's
        sessions, clock and TOTP key come from it.
    @param pdf_replies: the reply page of PDF-encrypted messages.
    """

    app = SiteApp()

    def __init__(self, messenger: Messenger, pdf_replies: PDFReplies) -> None:
        self.messenger = messenger
        self.pdf_replies = pdf_replies
        self.sessions = messenger.portal_sessions()
        self._totp_key = messenger.mailboxes.key_for("totp")
        self._environments = {code: self._environment(code) for code in LANGUAGES}
        self._strength_checks: dict[str, deque[float]] = {}
        self._brand: dict[str, Any] = {name: REGISTRY[name].default for name in _BRAND}

    @property
    def clock(self) -> IReactorTime:
        return self.sessions.clock

    def _environment(self, language: str) -> Environment:
        environment = template_environment()
        environment.add_extension("jinja2.ext.i18n")
        gettext = translator(language)
        environment.install_gettext_callables(  # type: ignore[attr-defined]
            gettext, ngettext_for(gettext), newstyle=True)
        environment.filters["size"] = human_size
        return environment

    def resource(self) -> Resource:
        return SecureHeaders(self.app.resource(), self)

    # Helpers ---------------------------------------------------------------

    def _language(self, request: IRequest) -> str:
        accept = request.getHeader(b"accept-language")
        return negotiate(accept.decode("latin-1") if accept else None,
                         cookie(request, LANGUAGE_COOKIE))

    def _(self, request: IRequest, text: str, **values: Any) -> str:
        return translator(self._language(request))(text, **values)

    async def _values(self, address: str = "") -> Mapping[str, Any]:
        """
        Effective settings (C{""}: the global ones), through the settings'
        own short cache.
        """
        values = await self.messenger.settings_for(address)
        if not address:
            self._brand = {name: values[name] for name in _BRAND}
        return values

    async def _render(self, request: IRequest, template: str, status: int = 200, *,
                      session: PortalSession | None = None, frames: bool = False,
                      **context: Any) -> bytes:
        brand = await self._values()
        user_values = await self._values(session.address) if session else {}
        return self._page(request, template, status, brand, session=session,
                          compose_enabled=bool(user_values.get("webmail_compose_enabled")),
                          frames=frames, **context)

    def _page(self, request: IRequest, template: str, status: int, brand: Mapping[str, Any],
              *, session: PortalSession | None, compose_enabled: bool, frames: bool = False,
              **context: Any) -> bytes:
        logo = brand["portal_logo_url"]
        images = "'self' data:"
        if logo.startswith("https://"):
            parts = urlsplit(logo)
            images += f" https://{parts.netloc}"
        policy = CONTENT_SECURITY_POLICY.replace("img-src 'self' data:", f"img-src {images}")
        if frames:
            policy += "; frame-src 'self'"
        request.setHeader(b"Content-Security-Policy", policy.encode())
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        language = self._language(request)
        here = request.uri.decode("latin-1")
        return self._environments[language].get_template(template).render(
            csrf_field=CSRF_FIELD, product=brand["portal_product_name"], logo=logo,
            language=language, here=safe_next(here), session=session,
            signed_in=session is not None and session.second_factor,
            compose_enabled=compose_enabled,
            languages=[(code, name, f"/language?{urlencode({'to': code, 'next': here})}")
                       for code, (name, _) in LANGUAGES.items()],
            **context).encode("utf-8")

    async def _notice(self, request: IRequest, heading: str, text: str, *, status: int = 200,
                      session: PortalSession | None = None, **context: Any) -> bytes:
        return await self._render(request, "portal_notice.html", status, session=session,
                                  heading=self._(request, heading), text=self._(request, text),
                                  **context)

    def _csrf(self, request: IRequest) -> str:
        # One token per browser while it has one: pages opened side by side
        # all stay valid.
        token = cookie(request, CSRF_COOKIE)
        if not token or not re.fullmatch(r"[A-Za-z0-9_-]{32}", token):
            token = secrets.token_urlsafe(24)
            set_cookie(request, CSRF_COOKIE, token)
        return token

    def _csrf_ok(self, request: IRequest, session: PortalSession | None = None,
                 submitted: str | None = None) -> bool:
        expected = session.csrf_token if session is not None else cookie(request, CSRF_COOKIE)
        if submitted is None:
            submitted = arg(request, CSRF_FIELD)
        if expected and csrf_matches(expected, submitted):
            return True
        log.warn("Portal: refused a form without a valid CSRF token from {client}",
                 client=client_address(request))
        return False

    async def _expired_form(self, request: IRequest) -> bytes:
        return await self._notice(request, "Please try again",
                                  "This form was open too long or came from another page. "
                                  "Go back, reload the page and send it again.", status=403)

    async def _user(self, request: IRequest, *, setup: bool = False) -> PortalSession:
        """
        The session of a logged-in reader.

        @param setup: the page that sets up a required second factor, which
            a session without one may see.
        @raise SeeOther: to the login page, or to the second factor.
        """
        token = cookie(request, SESSION_COOKIE)
        session = await self.sessions.get(token)
        if session is None:
            raise SeeOther("/login?ended=1" if token else "/login")
        if not session.second_factor:
            if await self.messenger.has_second_factor(session.address):
                raise SeeOther("/login/code")
            if not setup:
                raise SeeOther("/account/totp")
        return session

    async def _message(self, session: PortalSession, message_id: int) -> Held:
        """
        @raise NotFound: no such message in the reader's mailbox.
        @raise MessageEnded: it expired or was recalled.
        @raise ControlRefused: its sender requires a second factor, which
            the account has not.
        """
        held = await self.messenger.held(session.address, message_id)
        if held is None:
            raise NotFound()
        return held

    async def _message_refused(self, request: IRequest, refused: Exception) -> bytes:
        """
        The page for a message that expired or was recalled (its content
        is gone: 410 Gone), or that its sender's controls keep from what
        was asked (403).
        """
        if isinstance(refused, MessageEnded) and refused.how == EXPIRED:
            status, heading = 410, self._(request, "This message has expired")
            text = self._(request, "Its sender let it be read until %(when)s; it is no longer "
                                   "available. Ask the sender if you still need it.",
                          when=minute_utc(refused.expires))
        elif isinstance(refused, MessageEnded):
            status, heading = 410, self._(request, "This message was recalled")
            text = self._(request, "Its sender took it back: it is no longer available. Ask "
                                   "the sender if you still need it.")
        else:
            assert isinstance(refused, ControlRefused)
            status, heading = 403, self._(request, "Not allowed for this message")
            text = self._(request, str(refused))
        return await self._render(request, "portal_notice.html", status,
                                  session=await self._user(request), heading=heading, text=text,
                                  totp_link=getattr(refused, "control", "") == REQUIRE_TOTP)

    def error_page(self, request: IRequest, answer: ErrorAnswer) -> bytes:
        """
        The error pages in the portal's style and the reader's language,
        with the branding last seen: no database (it may be what failed),
        so no session either -- a link to the inbox for a browser that has
        a session cookie, else to the login page.
        """
        if answer.status in (404, 405):
            heading, text = ("Not found", "There is no such page or message. It may have "
                             "been deleted.")
        elif answer.status == 400:
            heading, text = ("Not found", "This address cannot be a page of this site. Check "
                             "the link you followed.")
        elif answer.status == 503:
            heading, text = ("Please try again", "The server is busy. Wait a moment and try "
                             "again.")
        else:
            heading, text = ("Something went wrong", "This page could not be shown. Try again "
                             "in a moment.")
        return self._page(request, "portal_notice.html", answer.status, self._brand,
                          session=None, compose_enabled=False,
                          heading=self._(request, heading), text=self._(request, text),
                          inbox_link=cookie(request, SESSION_COOKIE) is not None)

    # Public pages ------------------------------------------------------------

    @app.route("/static/", branch=True)
    def static(self, request: IRequest) -> Resource:
        return static_files()

    async def _colour(self) -> str:
        colour: str = (await self._values())["portal_primary_colour"]
        return colour if re.fullmatch(r"#[0-9a-f]{6}", colour) else _DEFAULT_COLOUR

    @app.route("/favicon.ico", methods=["GET"])
    async def favicon_ico(self, request: IRequest) -> bytes:
        """
        The product's mark in the branding colour.
        """
        return favicon(request, await self._colour(), "ico")

    @app.route("/favicon.svg", methods=["GET"])
    async def favicon_svg(self, request: IRequest) -> bytes:
        return favicon(request, await self._colour(), "svg")

    @app.route("/robots.txt", methods=["GET"])
    def robots(self, request: IRequest) -> bytes:
        return robots_txt(request)

    @app.route("/brand.css", methods=["GET"])
    async def brand_css(self, request: IRequest) -> bytes:
        """
        The branding colour as a stylesheet (the CSP allows no inline
        style); the value is a validated C{#rrggbb}.
        """
        colour = await self._colour()
        request.setHeader(b"Content-Type", b"text/css; charset=utf-8")
        return f":root {{ --accent: {colour}; }}\n".encode()

    @app.route("/language", methods=["GET"])
    def language(self, request: IRequest) -> bytes:
        chosen = arg(request, "to")
        if chosen in LANGUAGES:
            set_cookie(request, LANGUAGE_COOKIE, chosen, max_age=365 * 86400)
        return redirect(request, safe_next(arg(request, "next")))

    @app.route("/", methods=["GET"])
    async def home(self, request: IRequest) -> bytes:
        if await self.sessions.get(cookie(request, SESSION_COOKIE)) is not None:
            return redirect(request, "/inbox")
        return redirect(request, "/login")

    @app.route("/strength", methods=["POST"])
    async def strength(self, request: IRequest) -> bytes:
        """
        The live strength meter: zxcvbn's estimate in bits against the
        minimum; the sign-up, reset and account pages' script asks as the
        reader types.  CSRF-protected and rate-limited per client; the
        check when the form is sent is what counts.
        """
        session = await self.sessions.get(cookie(request, SESSION_COOKIE))
        if not (self._csrf_ok(request) or (session is not None
                                           and self._csrf_ok(request, session))):
            return json_response(request, 403, {"error": "CSRF"})
        if not self._strength_allowed(client_address(request)):
            return json_response(request, 429, {"error": "Too many checks; slow down."})
        password = (arg(request, "password") or "")[:MAX_PASSWORD]
        address = session.address if session else ""
        if not address and arg(request, "token"):
            try:
                address = (await self.messenger.check_link(arg(request, "token") or "",
                                                           arg(request, "purpose") or SIGNUP)
                           ).address
            except LinkRefused:
                address = ""
        needed = int((await self._values(address))["min_password_strength"])
        bits, problem = (await self.messenger.password_strength(address, password)
                         if password else (0.0, None))
        return json_response(request, 200, {
            "bits": round(bits), "needed": needed, "ok": bool(password) and problem is None,
            "problem": self._(request, problem) if problem else ""})

    def _strength_allowed(self, client: str) -> bool:
        now = self.messenger.now()
        recent = self._strength_checks.setdefault(client, deque())
        while recent and now - recent[0] > 60:
            recent.popleft()
        if len(recent) >= STRENGTH_CHECKS_PER_MINUTE:
            return False
        recent.append(now)
        if len(self._strength_checks) > 10_000:
            self._strength_checks = {client: recent}
        return True

    # Login ------------------------------------------------------------------

    @app.route("/login", methods=["GET"])
    async def login_form(self, request: IRequest) -> bytes:
        if await self.sessions.get(cookie(request, SESSION_COOKIE)) is not None:
            return redirect(request, "/inbox")
        notice = None
        if arg(request, "ended"):
            notice = self._(request, "Your session has ended. For your safety you are logged "
                                     "out after 15 minutes without activity. Log in again.")
        elif arg(request, "bye"):
            notice = self._(request, "You have logged out. Close the browser window if this "
                                     "is a shared computer.")
        return await self._login_page(request, notice=notice)

    async def _login_page(self, request: IRequest, *, problem: str | None = None,
                          notice: str | None = None, address: str = "",
                          status: int = 200) -> bytes:
        values = await self._values()
        return await self._render(request, "portal_login.html", status, problem=problem,
                                  notice=notice, address=address, csrf=self._csrf(request),
                                  reset_enabled=values["password_reset_enabled"],
                                  code_login=values["webmail_email_code_login"])

    def _refusal(self, request: IRequest, refused: LoginRefused) -> str:
        if refused.reason == LOCKED:
            return self._(request, "Too many failed attempts. For your safety, logging in is "
                                   "locked for %(minutes)s more minute(s). Try again later, or "
                                   "reset your password.", minutes=refused.minutes)
        if refused.reason == THROTTLED:
            return self._(request, "Too many login attempts at once. Wait a moment and try "
                                   "again.")
        if refused.reason == BUSY:
            return self._(request, "The server is busy. Wait a moment and try again.")
        return self._(request, "The email address or the password is not right.")

    @app.route("/login", methods=["POST"])
    async def login(self, request: IRequest) -> bytes:
        if not self._csrf_ok(request):
            return await self._expired_form(request)
        address = (arg(request, "email") or "").strip().lower()[:320]
        password = (arg(request, "password") or "")[:MAX_PASSWORD]
        try:
            account = await self.sessions.check_password(address, password,
                                                         client_address(request))
        except LoginRefused as refused:
            return await self._login_page(request, problem=self._refusal(request, refused),
                                          address=address, status=403)
        return await self._logged_in(request, account, "a password")

    async def _logged_in(self, request: IRequest, account: Account, how: str) -> bytes:
        """
        A session for C{account}, whose password or mailed code was right;
        on to its second factor when it has one or must set one up.
        """
        has_code = await self.messenger.has_second_factor(account.address)
        required = (await self._values(account.address))["webmail_totp_required"]
        token = await self.sessions.open(account.address,
                                         second_factor=not (has_code or required))
        set_cookie(request, SESSION_COOKIE, token)
        log.info("Portal: {address} logged in with {how} from {client}",
                 address=account.address, how=how, client=client_address(request))
        if has_code:
            return redirect(request, "/login/code")
        return redirect(request, "/account/totp" if required else "/inbox")

    # Sign-in by a mailed code ------------------------------------------------

    @app.route("/login/email", methods=["GET"])
    async def email_code_form(self, request: IRequest) -> bytes:
        if await self.sessions.get(cookie(request, SESSION_COOKIE)) is not None:
            return redirect(request, "/inbox")
        return await self._render(request, "portal_login_email.html",
                                  address=(arg(request, "address") or "").strip()[:320],
                                  csrf=self._csrf(request), sent=False)

    @app.route("/login/email", methods=["POST"])
    async def email_code(self, request: IRequest) -> bytes:
        """
        Mail a sign-in code; the answer is the same whether or not one is
        sent (no enumeration), and asks for the code.
        """
        if not self._csrf_ok(request):
            return await self._expired_form(request)
        address = (arg(request, "email") or "").strip().lower()[:320]
        if address:
            self.messenger.request_login_code(address)
        return await self._render(request, "portal_login_email.html", address=address,
                                  csrf=self._csrf(request), sent=bool(address))

    @app.route("/login/email/code", methods=["POST"])
    async def email_code_login(self, request: IRequest) -> bytes:
        if not self._csrf_ok(request):
            return await self._expired_form(request)
        address = (arg(request, "email") or "").strip().lower()[:320]
        code = (arg(request, "code") or "")[:32]
        try:
            account = await self.sessions.check_login(
                address, client_address(request),
                lambda: self.messenger.login_with_code(address, code))
        except LoginRefused as refused:
            problem = (self._(request, "That code is not right, or no longer works. Ask for a "
                                       "new one if it is more than 10 minutes old.")
                       if refused.reason == WRONG else self._refusal(request, refused))
            return await self._render(request, "portal_login_email.html", 403,
                                      address=address, csrf=self._csrf(request), sent=True,
                                      problem=problem)
        return await self._logged_in(request, account, "a mailed code")

    @app.route("/login/code", methods=["GET"])
    async def code_form(self, request: IRequest) -> bytes:
        session = await self.sessions.get(cookie(request, SESSION_COOKIE))
        if session is None:
            return redirect(request, "/login")
        if session.second_factor:
            return redirect(request, "/inbox")
        return await self._code_page(request, session)

    async def _code_page(self, request: IRequest, session: PortalSession, *,
                         status: int = 200, problem: str | None = None) -> bytes:
        """
        The second factor: a code from the app, or a passkey (either that
        the account has).
        """
        passkeys = await self.messenger.passkeys.listing(session.address)
        options = (await self.messenger.passkeys.authentication_options(
            await self._party(request), session.address)) if passkeys else ""
        return await self._render(
            request, "portal_code.html", status, session=session, csrf=session.csrf_token,
            has_totp=await self.messenger.accounts.totp_secret(session.address) is not None,
            passkey_options=options, problem=problem)

    @app.route("/login/code/passkey", methods=["POST"])
    async def code_passkey(self, request: IRequest) -> bytes:
        """
        A passkey of the account as its second factor (counted as a code
        is: a wrong one is a failed attempt).
        """
        session = await self.sessions.get(cookie(request, SESSION_COOKIE))
        if session is None:
            return redirect(request, "/login")
        if not self._csrf_ok(request, session):
            return await self._expired_form(request)
        try:
            await self.messenger.passkeys.authenticate(
                await self._party(request), arg(request, "credential") or "", session.address)
            valid, problem = True, None
        except PasskeyRefused as e:
            valid, problem = False, self._(request, str(e))
        try:
            await self.sessions.check_code(session, valid, client_address(request))
        except LoginRefused as refused:
            return await self._code_page(
                request, session, status=403,
                problem=problem if refused.reason == WRONG else self._refusal(request, refused))
        log.info("Portal: {address} gave a passkey as the second factor from {client}",
                 address=session.address, client=client_address(request))
        return redirect(request, "/inbox")

    # Passkeys --------------------------------------------------------------------

    async def _party(self, request: IRequest) -> RelyingParty:
        """
        The portal as WebAuthn's relying party: the origin of the *portal
        base URL*, else the one the browser asked for.
        """
        values = await self._values()
        base = values["portal_base_url"]
        origin = (f"{urlsplit(base).scheme}://{urlsplit(base).netloc}" if base else
                  "https://" + (request.getHeader(b"host") or b"localhost").decode("latin-1"))
        return RelyingParty(urlsplit(origin).hostname or "localhost", origin,
                            values["portal_product_name"])

    @app.route("/login/passkey/options", methods=["GET"])
    async def passkey_options(self, request: IRequest) -> bytes:
        """
        The question a passkey sign-in answers, fetched by portal.js (so
        that the login page itself is the same for everyone).
        """
        return json_response(request, 200, json.loads(
            await self.messenger.passkeys.authentication_options(await self._party(request))))

    @app.route("/login/passkey", methods=["POST"])
    async def passkey_login(self, request: IRequest) -> bytes:
        """
        Sign in with a passkey instead of a password: the authenticator
        verified its user, so no second factor is asked.
        """
        if not self._csrf_ok(request):
            return await self._expired_form(request)
        try:
            address = await self.messenger.passkeys.authenticate(
                await self._party(request), arg(request, "credential") or "")
        except PasskeyRefused as e:
            log.info("Portal: a passkey sign-in from {client} was refused: {why}",
                     client=client_address(request), why=e)
            return await self._login_page(request, problem=self._(request, str(e)),
                                          status=403)
        account = await self.messenger.accounts.get(address)
        if account is None or account.state == DISABLED:
            return await self._login_page(request, status=403, problem=self._(
                request, "This account is disabled. Ask the sender of your messages."))
        await self.messenger.accounts.touch(address, login=True)
        token = await self.sessions.open(address, second_factor=True)
        set_cookie(request, SESSION_COOKIE, token)
        log.info("Portal: {address} logged in with a passkey from {client}", address=address,
                 client=client_address(request))
        return redirect(request, "/inbox")

    @app.route("/account/passkeys", methods=["POST"])
    async def passkey_add(self, request: IRequest) -> bytes:
        session = await self._user(request, setup=True)
        if not self._csrf_ok(request, session):
            return await self._expired_form(request)
        try:
            passkey = await self.messenger.passkeys.register(
                await self._party(request), session.address, arg(request, "credential") or "",
                (arg(request, "name") or "")[:200])
        except PasskeyRefused as e:
            return await self._account_page(request, session, status=400,
                                            passkey_problem=self._(request, str(e)))
        log.info("Portal: {address} added the passkey {name}", address=session.address,
                 name=passkey.name)
        if not session.second_factor:
            # A required second factor set up (as a passkey, not an app).
            await self.sessions.check_code(session, True, client_address(request))
        return await self._account_page(request, session, passkey_changed="added")

    @app.route("/account/passkeys/remove", methods=["POST"])
    async def passkey_remove(self, request: IRequest) -> bytes:
        session = await self._user(request)
        if not self._csrf_ok(request, session):
            return await self._expired_form(request)
        values = await self._values(session.address)
        passkeys = await self.messenger.passkeys.listing(session.address)
        has_totp = await self.messenger.accounts.totp_secret(session.address) is not None
        if values["webmail_totp_required"] and not has_totp and len(passkeys) <= 1:
            return await self._account_page(request, session, status=409, passkey_problem=self._(
                request, "A second factor is required here: add another passkey or set up an "
                         "authenticator app before you remove this one."))
        if await self.messenger.passkeys.remove(session.address,
                                                (arg(request, "id") or "")[:1400]):
            log.info("Portal: {address} removed a passkey", address=session.address)
        return await self._account_page(request, session, passkey_changed="removed")

    @app.route("/login/code", methods=["POST"])
    async def code(self, request: IRequest) -> bytes:
        session = await self.sessions.get(cookie(request, SESSION_COOKIE))
        if session is None:
            return redirect(request, "/login")
        if not self._csrf_ok(request, session):
            return await self._expired_form(request)
        sealed = await self.messenger.accounts.totp_secret(session.address)
        step = None if sealed is None else totp.matching_step(
            totp.unseal_secret(self._totp_key, session.address, sealed),
            arg(request, "code") or "", self.messenger.now())
        # A code seen once (by someone looking over a shoulder, say) is spent.
        valid = step is not None and await self.messenger.accounts.use_totp_step(
            session.address, step)
        try:
            await self.sessions.check_code(session, valid, client_address(request))
        except LoginRefused as refused:
            problem = (self._(request, "That code is not right. Enter the code your app shows "
                                       "now.") if refused.reason == WRONG
                       else self._refusal(request, refused))
            return await self._code_page(request, session, status=403, problem=problem)
        return redirect(request, "/inbox")

    @app.route("/logout", methods=["POST"])
    async def logout(self, request: IRequest) -> bytes:
        session = await self.sessions.get(cookie(request, SESSION_COOKIE))
        if session is not None:
            if not self._csrf_ok(request, session):
                return await self._expired_form(request)
            await self.sessions.close(session.token_hash)
        clear_cookie(request, SESSION_COOKIE)
        return redirect(request, "/login?bye=1")

    # Sign-up and reset -----------------------------------------------------

    @app.route("/signup", methods=["GET"])
    async def signup_form(self, request: IRequest) -> bytes:
        return await self._password_form(request, SIGNUP)

    @app.route("/signup", methods=["POST"])
    async def signup(self, request: IRequest) -> bytes:
        return await self._set_password(request, SIGNUP)

    @app.route("/reset", methods=["GET"])
    async def reset_form(self, request: IRequest) -> bytes:
        if not arg(request, "token"):
            if not (await self._values())["password_reset_enabled"]:
                return await self._reset_disabled(request)
            return await self._render(request, "portal_reset_request.html",
                                      csrf=self._csrf(request))
        return await self._password_form(request, RESET)

    async def _reset_disabled(self, request: IRequest) -> bytes:
        return await self._notice(request, "Password reset is not available",
                                  "Ask the person who sent you the secure message to have "
                                  "your account reset.", status=404)

    @app.route("/reset", methods=["POST"])
    async def reset(self, request: IRequest) -> bytes:
        if arg(request, "token"):
            return await self._set_password(request, RESET)
        if not self._csrf_ok(request):
            return await self._expired_form(request)
        if not (await self._values())["password_reset_enabled"]:
            return await self._reset_disabled(request)
        address = (arg(request, "email") or "")[:320]
        # Without a portal base URL the link names the address the request
        # came in on, never its Host header: a forged Host would otherwise
        # send the victim a working link to the forger's site.
        host = request.getHost()
        name = f"[{host.host}]" if ":" in host.host else host.host
        await self.messenger.request_password_reset(address, f"https://{name}:{host.port}")
        # The same answer whether or not the address has an account.
        return await self._notice(request, "Check your mail",
                                  "If this address has a webmail account, a message with a "
                                  "link to choose a new password is on its way. The link "
                                  "works once and for a limited time.")

    async def _link_refused(self, request: IRequest, purpose: str, refused: LinkRefused
                            ) -> bytes:
        if purpose == RESET:
            advice = ("Ask for a new password reset link below. If you remember your "
                      "password, just log in.")
        else:
            advice = ("If you have set a password already, log in. Otherwise ask the person "
                      "who sent you the secure message to send it again: a new message brings "
                      "a new link.")
        return await self._render(request, "portal_link_refused.html", 400,
                                  heading=self._(request, "This link cannot be used"),
                                  reason=self._(request, str(refused)),
                                  advice=self._(request, advice), reset_link=purpose == RESET)

    async def _password_form(self, request: IRequest, purpose: str, *,
                             problem: str | None = None, status: int = 200) -> bytes:
        token = arg(request, "token") or ""
        try:
            account = await self.messenger.check_link(token, purpose)
        except LinkRefused as e:
            return await self._link_refused(request, purpose, e)
        senders: list[str] = []
        if purpose == SIGNUP:
            waiting, _ = await self.messenger.search(account.address, limit=5)
            senders = sorted({m.sender for m in waiting if m.sender})
        return await self._render(request, "portal_password.html", status, purpose=purpose,
                                  address=account.address, token=token,
                                  problem=self._(request, problem) if problem else None,
                                  csrf=self._csrf(request), senders=senders)

    async def _set_password(self, request: IRequest, purpose: str) -> bytes:
        if not self._csrf_ok(request):
            return await self._expired_form(request)
        token = arg(request, "token") or ""
        password = (arg(request, "password") or "")[:MAX_PASSWORD + 1]
        confirm = (arg(request, "confirm") or "")[:MAX_PASSWORD + 1]
        try:
            account, problem = await self.messenger.set_password(token, purpose, password,
                                                                 confirm)
        except LinkRefused as e:
            return await self._link_refused(request, purpose, e)
        if account is None:
            return await self._password_form(request, purpose, problem=problem, status=400)
        await self.sessions.close_others(account.address)
        return await self._render(request, "portal_password_set.html", address=account.address)

    # The inbox ---------------------------------------------------------------

    @app.route("/inbox", methods=["GET"])
    async def inbox(self, request: IRequest) -> bytes:
        session = await self._user(request)
        query = (arg(request, "q") or "").strip()[:200]
        try:
            page = max(1, min(int(arg(request, "page") or 1), 100_000))
        except ValueError:
            page = 1
        messages, total = await self.messenger.search(
            session.address, query, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
        pages = max(1, -(-total // PAGE_SIZE))

        def page_link(number: int) -> str:
            return "/inbox?" + urlencode({**({"q": query} if query else {}), "page": number})

        try:
            deleted = int(arg(request, "deleted") or -1)
        except ValueError:
            deleted = -1
        return await self._render(
            request, "portal_inbox.html", session=session, messages=messages, total=total,
            query=query, page=page, pages=pages, first=(page - 1) * PAGE_SIZE + 1,
            previous=page_link(page - 1) if page > 1 else None,
            next=page_link(page + 1) if page < pages else None, deleted=deleted,
            csrf=session.csrf_token)

    @app.route("/inbox/delete", methods=["POST"])
    async def delete(self, request: IRequest) -> bytes:
        session = await self._user(request)
        if not self._csrf_ok(request, session):
            return await self._expired_form(request)
        ids = [n for i in args(request, "id") if (n := whole_number(i)) is not None][:1000]
        deleted = await self.messenger.delete(session.address, ids) if ids else 0
        return redirect(request, f"/inbox?deleted={deleted}")

    # One message ---------------------------------------------------------------

    @app.route("/message/<int:message_id>", methods=["GET"])
    @_message_page
    async def message(self, request: IRequest, message_id: int) -> bytes:
        session = await self._user(request)
        held = await self.messenger.read(session.address, message_id)
        if held is None:
            raise NotFound()
        remote = arg(request, "remote") == "1"
        shown = render.read(held.content, allow_remote=remote)
        return await self._render(request, "portal_message.html", session=session,
                                  frames=shown.html is not None, shown=shown, id=message_id,
                                  remote=remote, csrf=session.csrf_token,
                                  controls=held.controls, viewable=VIEWABLE,
                                  notes=[self._(request, WORDS[c]) for c in CONTROLS
                                         if c in held.controls])

    @app.route("/message/<int:message_id>/body", methods=["GET"])
    @_message_page
    async def message_body(self, request: IRequest, message_id: int) -> bytes:
        """
        The message's HTML as its own document, for the sandboxed frame
        (see L{cipherd.webmail.render}): its own CSP replaces the portal's,
        and only the portal may frame it.
        """
        session = await self._user(request)
        remote = arg(request, "remote") == "1"
        held = await self._message(session, message_id)
        html, _ = render.sanitize_message(held.content, allow_remote=remote)
        request.setHeader(b"Content-Security-Policy", render.frame_policy(remote).encode())
        request.setHeader(b"X-Frame-Options", b"SAMEORIGIN")
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return render.frame_document(html).encode("utf-8")

    def _download(self, request: IRequest, filename: str, content_type: str,
                  data: bytes, *, inline: bool = False) -> bytes:
        """
        @param inline: shown by the browser (an image or a PDF whose sender
            does not allow downloads), not saved.
        """
        # A download is for the person, never for a page: a <script>, <link>
        # or worker of any page (ours included) that points here gets nothing.
        destination = request.getHeader(b"sec-fetch-dest") or b""
        if destination.lower() in (b"script", b"style", b"worker", b"sharedworker",
                                   b"serviceworker", b"audioworklet", b"paintworklet"):
            request.setResponseCode(403)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"Attachments are downloads, not parts of a page.\n"
        request.setHeader(b"Cross-Origin-Resource-Policy", b"same-origin")
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        disposition = render.content_disposition(filename)
        if inline:
            disposition = "inline" + disposition.removeprefix("attachment")
        request.setHeader(b"Content-Disposition", disposition.encode("ascii"))
        # Opened on its own, a download is still a scriptless document (and
        # a sandboxed one: but for a PDF shown here, which Chromium's viewer
        # does not show in a sandbox).
        sandbox = "" if inline and content_type == "application/pdf" else "; sandbox"
        request.setHeader(b"Content-Security-Policy",
                          f"default-src 'none'{sandbox}".encode("ascii"))
        return data

    @app.route("/message/<int:message_id>/part/<int:index>", methods=["GET"])
    @_message_page
    async def attachment(self, request: IRequest, message_id: int, index: int) -> bytes:
        session = await self._user(request)
        held = await self._message(session, message_id)
        found = render.part(held.content, index)
        if found is None:
            raise NotFound()
        if NO_DOWNLOAD not in held.controls:
            await self.messenger.downloaded(session.address, message_id, found[0])
            return self._download(request, *found)
        if found[1] not in VIEWABLE:
            raise ControlRefused(NO_DOWNLOAD)
        await self.messenger.downloaded(session.address, message_id, f"{found[0]} (viewed)")
        return self._download(request, *found, inline=True)

    @app.route("/message/<int:message_id>/eml", methods=["GET"])
    @_message_page
    async def eml(self, request: IRequest, message_id: int) -> bytes:
        session = await self._user(request)
        held = await self._message(session, message_id)
        if NO_DOWNLOAD in held.controls:
            raise ControlRefused(NO_DOWNLOAD)
        content = held.content
        subject = render.header(render.parse(content), "Subject")
        name = render.safe_filename(subject[:80], message_id, ".eml")
        if not name.endswith(".eml"):
            name += ".eml"
        await self.messenger.downloaded(session.address, message_id, name)
        return self._download(request, name, "message/rfc822", content)

    @app.route("/message/<int:message_id>/delete", methods=["POST"])
    async def delete_one(self, request: IRequest, message_id: int) -> bytes:
        session = await self._user(request)
        if not self._csrf_ok(request, session):
            return await self._expired_form(request)
        deleted = await self.messenger.delete(session.address, [message_id])
        return redirect(request, f"/inbox?deleted={deleted}")

    # Replies to PDF-encrypted messages (no account) ---------------------------

    async def _pdf_link(self, request: IRequest) -> tuple[ReplyLink, str] | bytes:
        """
        The link of the request's C{?token=} and the token, or the page
        refusing it.
        """
        token = arg(request, "token") or ""
        try:
            return await self.pdf_replies.check(token), token
        except LinkRefused as e:
            return await self._pdf_link_refused(request, e)

    @app.route("/pdf/reply", methods=["GET"])
    async def pdf_reply_form(self, request: IRequest) -> bytes:
        checked = await self._pdf_link(request)
        if isinstance(checked, bytes):
            return checked
        return await self._pdf_reply_page(request, *checked)

    async def _pdf_reply_page(self, request: IRequest, link: ReplyLink, token: str, *,
                              status: int = 200, problem: str | None = None,
                              text: str = "") -> bytes:
        return await self._render(request, "portal_pdf_reply.html", status, link=link,
                                  token=token, csrf=self._csrf(request),
                                  max_size=MAX_FORM_SIZE, text=text,
                                  problem=self._(request, problem) if problem else None)

    async def _pdf_link_refused(self, request: IRequest, refused: LinkRefused) -> bytes:
        return await self._render(
            request, "portal_link_refused.html", 403,
            heading=self._(request, "This reply link cannot be used"),
            reason=self._(request, str(refused)),
            advice=self._(request, "Reply to the sender by email, or ask the sender to send "
                                   "the message again: a new message brings a new link."),
            reset_link=False, login_link=False)

    @app.route("/pdf/reply", methods=["POST"])
    async def pdf_reply(self, request: IRequest) -> bytes:
        checked = await self._pdf_link(request)
        if isinstance(checked, bytes):
            return checked
        link, token = checked
        if not self._csrf_ok(request):
            return await self._expired_form(request)
        try:
            form = _multipart(request)
        except ValueError as e:
            return await self._pdf_reply_page(request, link, token, status=400,
                                              problem=str(e))
        text = form.get("text")[:1_000_000]
        try:
            await self.pdf_replies.send(link, text, form.files[:MAX_ATTACHMENTS])
        except LinkRefused as e:
            return await self._pdf_link_refused(request, e)
        except ReplyRefused as e:
            return await self._pdf_reply_page(request, link, token, status=400,
                                              problem=str(e), text=text)
        return await self._render(request, "portal_pdf_reply_sent.html", link=link)

    # The sender's status and recall links ---------------------------------------

    async def _tracked(self, request: IRequest, purpose: str
                       ) -> tuple[TrackingLink, Timeline, str] | bytes:
        """
        The link of the request's C{?token=}, the timeline it names and
        the token; or the page refusing it.
        """
        token = arg(request, "token") or ""
        try:
            link = await self.messenger.tracking_link(token, purpose)
        except LinkRefused as e:
            return await self._render(
                request, "portal_link_refused.html", 403,
                heading=self._(request, "This link cannot be used"),
                reason=self._(request, str(e)),
                advice=self._(request, "Use the links of the delivery receipt as they are; "
                                       "they work for a limited time after the message was "
                                       "sent."),
                reset_link=False, login_link=False)
        timeline = await self.messenger.timeline(link.tunnel_id)
        if timeline is None:
            return await self._notice(request, "Nothing is known of this message",
                                      "It is in no mailbox here any more, and what became "
                                      "of it has been forgotten.", status=404)
        return link, timeline, token

    def _statuses(self, request: IRequest, timeline: Timeline) -> list[dict[str, Any]]:
        return [{"address": r.address,
                 "state": self._(request, STATES.get(r.ended, r.ended)),
                 "expires": minute_utc(r.expires) if r.expires and not r.ended else "",
                 "events": [(minute_utc(e.at), self._(request, e.words), e.detail)
                            for e in r.events]}
                for r in timeline.recipients]

    @app.route("/status", methods=["GET"])
    async def status(self, request: IRequest) -> bytes:
        tracked = await self._tracked(request, tracking.STATUS)
        if isinstance(tracked, bytes):
            return tracked
        _, timeline, _ = tracked
        return await self._render(request, "portal_status.html", timeline=timeline,
                                  statuses=self._statuses(request, timeline))

    @app.route("/recall", methods=["GET"])
    async def recall_form(self, request: IRequest) -> bytes:
        tracked = await self._tracked(request, tracking.RECALL)
        if isinstance(tracked, bytes):
            return tracked
        _, timeline, token = tracked
        return await self._recall_page(request, timeline, token)

    async def _recall_page(self, request: IRequest, timeline: Timeline, token: str, *,
                           status: int = 200, **context: Any) -> bytes:
        return await self._render(request, "portal_recall.html", status, timeline=timeline,
                                  token=token, statuses=self._statuses(request, timeline),
                                  recallable=timeline.recallable(), csrf=self._csrf(request),
                                  **context)

    @app.route("/recall", methods=["POST"])
    async def recall(self, request: IRequest) -> bytes:
        tracked = await self._tracked(request, tracking.RECALL)
        if isinstance(tracked, bytes):
            return tracked
        link, timeline, token = tracked
        if not self._csrf_ok(request):
            return await self._expired_form(request)
        chosen = set(tracking.addresses(args(request, "address")))
        recallable = timeline.recallable()
        if not chosen & set(recallable):
            return await self._recall_page(
                request, timeline, token, status=400,
                problem=self._(request, "Choose at least one recipient to recall the message "
                                        "from."))
        everyone = chosen >= set(recallable)
        recalled = await self.messenger.recall(
            timeline.tunnel_id, None if everyone else sorted(chosen & set(recallable)),
            f"by the sender {link.sender} (recall link)")
        timeline = await self.messenger.timeline(link.tunnel_id) or timeline
        return await self._recall_page(request, timeline, token, recalled=recalled)

    # Replies and new messages ---------------------------------------------------

    @app.route("/message/<int:message_id>/reply", methods=["GET"])
    @_message_page
    async def reply_form(self, request: IRequest, message_id: int) -> bytes:
        session = await self._user(request)
        held = await self._message(session, message_id)
        if NO_REPLY in held.controls:
            raise ControlRefused(NO_REPLY)
        return await self._reply_page(request, session, message_id, held.content,
                                      reply_all=arg(request, "all") == "1")

    async def _reply_page(self, request: IRequest, session: PortalSession, message_id: int,
                          content: bytes, *, reply_all: bool, status: int = 200,
                          **context: Any) -> bytes:
        shown = render.read(content)
        plan = self.messenger.plan_reply(session.address, content, reply_all=reply_all)
        subject = shown.subject if shown.subject.lower().startswith("re:") else \
            f"Re: {shown.subject}"
        return await self._render(request, "portal_compose.html", status, session=session,
                                  csrf=session.csrf_token, id=message_id, reply_all=reply_all,
                                  recipients=plan.recipients,
                                  # Translated here, escaped in the page: the
                                  # reasons quote the message's addresses.
                                  refused_now={address: self._(request, reason) for
                                               address, reason in plan.refused.items()},
                                  subject=subject, quoted=quoted_text(content),
                                  max_size=MAX_FORM_SIZE, **context)

    async def _upload_form(self, request: IRequest, session: PortalSession) -> _Form | bytes:
        """
        A reply or new-message form, or the page refusing it.  The token
        first (Twisted has read the form's fields already): the costly
        parse of the uploads only for a form that is ours.
        """
        if not self._csrf_ok(request, session, arg(request, CSRF_FIELD)):
            return await self._expired_form(request)
        try:
            return _multipart(request)
        except ValueError as e:
            return await self._notice(request, "The form could not be read", str(e),
                                      status=400, session=session)

    @app.route("/message/<int:message_id>/reply", methods=["POST"])
    async def reply(self, request: IRequest, message_id: int) -> bytes:
        session = await self._user(request)
        form = await self._upload_form(request, session)
        if isinstance(form, bytes):
            return form
        reply_all = form.get("all") == "1"
        extra = [a.strip() for a in re.split(r"[,;\s]+", form.get("to")) if a.strip()]
        result = await self.messenger.reply(
            session.address, message_id, form.get("text")[:1_000_000], reply_all=reply_all,
            to=extra[:50], attachments=form.files[:MAX_ATTACHMENTS],
            copy_to_self=form.get("copy") == "1")
        return await self._sent(request, session, result)

    async def _sent(self, request: IRequest, session: PortalSession,
                    result: ReplyResult) -> bytes:
        problem = self._(request, result.problem) if result.problem else None
        refused = {address: self._(request, reason) for address, reason in
                   result.refused.items()}
        return await self._render(request, "portal_sent.html", 200 if result.sent_to else 400,
                                  session=session, sent_to=result.sent_to, refused=refused,
                                  problem=problem)

    async def _composer(self, request: IRequest) -> PortalSession:
        """
        The session of a reader who may write new messages.

        @raise NotFound: the *compose enabled* setting does not allow it.
        """
        session = await self._user(request)
        if not (await self._values(session.address))["webmail_compose_enabled"]:
            raise NotFound()
        return session

    @app.route("/compose", methods=["GET"])
    async def compose_form(self, request: IRequest) -> bytes:
        session = await self._composer(request)
        return await self._render(request, "portal_compose.html", session=session,
                                  csrf=session.csrf_token, id=None, recipients=[],
                                  refused_now={}, subject="", quoted="",
                                  max_size=MAX_FORM_SIZE)

    @app.route("/compose", methods=["POST"])
    async def compose(self, request: IRequest) -> bytes:
        session = await self._composer(request)
        form = await self._upload_form(request, session)
        if isinstance(form, bytes):
            return form
        to = [a.strip() for a in re.split(r"[,;\s]+", form.get("to")) if a.strip()]
        result = await self.messenger.compose(
            session.address, to[:50], form.get("subject")[:998], form.get("text")[:1_000_000],
            attachments=form.files[:MAX_ATTACHMENTS], copy_to_self=form.get("copy") == "1")
        return await self._sent(request, session, result)

    # The account -----------------------------------------------------------------

    @app.route("/account", methods=["GET"])
    async def account(self, request: IRequest) -> bytes:
        session = await self._user(request)
        return await self._account_page(request, session)

    async def _account_page(self, request: IRequest, session: PortalSession, *,
                            status: int = 200, **context: Any) -> bytes:
        has_code = await self.messenger.accounts.totp_secret(session.address) is not None
        values = await self._values(session.address)
        return await self._render(
            request, "portal_account.html", status, session=session, csrf=session.csrf_token,
            has_code=has_code, required=values["webmail_totp_required"],
            passkeys=[(p, minute_utc(p.created),
                       minute_utc(p.last_used) if p.last_used else "")
                      for p in await self.messenger.passkeys.listing(session.address)],
            passkey_options=await self.messenger.passkeys.registration_options(
                await self._party(request), session.address), **context)

    def _current_refused(self, request: IRequest, refused: LoginRefused) -> str:
        if refused.reason == WRONG:
            return self._(request, "The current password is not right.")
        return self._refusal(request, refused)

    @app.route("/account/password", methods=["POST"])
    async def change_password(self, request: IRequest) -> bytes:
        session = await self._user(request)
        if not self._csrf_ok(request, session):
            return await self._expired_form(request)
        current = (arg(request, "current") or "")[:MAX_PASSWORD]
        try:
            # Counted like a login: a session is no licence to guess.
            await self.sessions.check_password(session.address, current,
                                               client_address(request))
        except LoginRefused as refused:
            return await self._account_page(
                request, session, status=400,
                password_problem=self._current_refused(request, refused))
        problem = await self.messenger.change_password(
            session.address, current, (arg(request, "password") or "")[:MAX_PASSWORD + 1],
            (arg(request, "confirm") or "")[:MAX_PASSWORD + 1])
        if problem:
            return await self._account_page(request, session, status=400,
                                            password_problem=self._(request, problem))
        await self.sessions.close_others(session.address, keep=session.token_hash)
        return await self._account_page(request, session, password_changed=True)

    @app.route("/account/totp", methods=["GET"])
    async def totp_form(self, request: IRequest) -> bytes:
        session = await self._user(request, setup=True)
        if await self.messenger.accounts.totp_secret(session.address) is not None:
            return redirect(request, "/account")
        return await self._totp_page(request, session, totp.new_secret())

    async def _totp_page(self, request: IRequest, session: PortalSession, secret: bytes, *,
                         problem: str | None = None, status: int = 200) -> bytes:
        # The secret waits in the form, sealed to this account, until a
        # code from the app proves it was copied.
        pending = base64.urlsafe_b64encode(
            totp.seal_secret(self._totp_key, session.address, secret)).decode("ascii")
        issuer = (await self._values())["portal_product_name"]
        return await self._render(request, "portal_totp.html", status, session=session,
                                  csrf=session.csrf_token, pending=pending,
                                  uri=totp.otpauth_uri(secret, session.address, issuer),
                                  secret=totp.secret_text(secret), problem=problem)

    @app.route("/account/totp", methods=["POST"])
    async def totp_setup(self, request: IRequest) -> bytes:
        session = await self._user(request, setup=True)
        if not self._csrf_ok(request, session):
            return await self._expired_form(request)
        if await self.messenger.accounts.totp_secret(session.address) is not None:
            return redirect(request, "/account")
        try:
            secret = totp.unseal_secret(
                self._totp_key, session.address,
                base64.urlsafe_b64decode((arg(request, "pending") or "").encode("ascii")))
        except (totp.SealedSecretError, binascii.Error, ValueError):
            return await self._expired_form(request)
        step = totp.matching_step(secret, arg(request, "code") or "", self.messenger.now())
        valid = step is not None
        try:
            await self.sessions.check_code(session, valid, client_address(request))
        except LoginRefused as refused:
            problem = (self._(request, "That code is not right. Check that the time on your "
                                       "phone is correct and enter the code your app shows "
                                       "now.") if refused.reason == WRONG
                       else self._refusal(request, refused))
            return await self._totp_page(request, session, secret, problem=problem,
                                         status=400)
        await self.messenger.accounts.set_totp_secret(
            session.address, totp.seal_secret(self._totp_key, session.address, secret))
        if step is not None:  # the code typed here is spent: no login with it
            await self.messenger.accounts.use_totp_step(session.address, step)
        # Other sessions (perhaps someone else's) must log in again, now with a code.
        await self.sessions.close_others(session.address, keep=session.token_hash)
        log.info("Portal: {address} set up a second factor", address=session.address)
        return await self._account_page(request, session, code_changed="added")

    @app.route("/account/totp/remove", methods=["POST"])
    async def totp_remove(self, request: IRequest) -> bytes:
        session = await self._user(request)
        if not self._csrf_ok(request, session):
            return await self._expired_form(request)
        if (await self._values(session.address))["webmail_totp_required"]:
            return await self._account_page(
                request, session, status=400,
                code_problem=self._(request, "A second factor is required here; it cannot be "
                                             "removed."))
        try:
            await self.sessions.check_password(session.address,
                                               (arg(request, "current") or "")[:MAX_PASSWORD],
                                               client_address(request))
        except LoginRefused as refused:
            return await self._account_page(request, session, status=400,
                                            code_problem=self._current_refused(request, refused))
        await self.messenger.accounts.set_totp_secret(session.address, None)
        log.info("Portal: {address} removed the second factor", address=session.address)
        return await self._account_page(request, session, code_changed="removed")
