"""
The webmail portal: the recipient's side, on the portal endpoint.

So far it has what the sign-up and password reset links land on: a page
that checks the link, says whose message waits, and sets the password (with
the reason a weak one is refused); a page to ask for a reset link.  Forms
carry a CSRF token bound to a SameSite=Strict cookie; pages carry the same
security headers as the admin site (no inline script or style, no framing,
HSTS); refusals never say whether an address has an account.
"""

from __future__ import annotations

import secrets
from importlib.resources import files
from typing import Any

from klein import Klein
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.static import File

from cipherd.web.auth import csrf_matches
from cipherd.web.common import (
    SecureHeaders,
    arg,
    client_address,
    cookie,
    log,
    set_cookie,
    template_environment,
)
from cipherd.webmail.accounts import RESET, SIGNUP, LinkRefused
from cipherd.webmail.messenger import Messenger

CSRF_COOKIE = "__Host-cipherd-portal"
CSRF_FIELD = "csrf_token"
MAX_PASSWORD = 1024


class Portal:
    """
    @param messenger: the webmail messenger's back end.
    """

    app = Klein()

    def __init__(self, messenger: Messenger) -> None:
        self.messenger = messenger
        self.templates = template_environment()

    def resource(self) -> Resource:
        return SecureHeaders(self.app.resource())

    def _render(self, request: IRequest, template: str, status: int = 200,
                **context: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return self.templates.get_template(template).render(
            csrf_field=CSRF_FIELD, **context).encode("utf-8")

    def _csrf(self, request: IRequest) -> str:
        token = secrets.token_urlsafe(24)
        set_cookie(request, CSRF_COOKIE, token)
        return token

    def _csrf_ok(self, request: IRequest) -> bool:
        expected = cookie(request, CSRF_COOKIE)
        if expected and csrf_matches(expected, arg(request, CSRF_FIELD)):
            return True
        log.warn("Portal: refused a form without a valid CSRF token from {client}",
                 client=client_address(request))
        return False

    def _expired_form(self, request: IRequest) -> bytes:
        return self._render(request, "portal_notice.html", status=403,
                            heading="Please try again",
                            text="This form was open too long or came from another page. "
                                 "Open the link from your message again.")

    @app.route("/static/", branch=True)
    def static(self, request: IRequest) -> Resource:
        return File(str(files("cipherd.web") / "static"))

    @app.route("/", methods=["GET"])
    def home(self, request: IRequest) -> bytes:
        return self._render(request, "portal_notice.html", heading="Secure webmail",
                            text="Open the link in the message you received to sign up or "
                                 "to reset your password.")

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
            return self._render(request, "portal_reset_request.html",
                                csrf=self._csrf(request))
        return await self._password_form(request, RESET)

    @app.route("/reset", methods=["POST"])
    async def reset(self, request: IRequest) -> bytes:
        if arg(request, "token"):
            return await self._set_password(request, RESET)
        if not self._csrf_ok(request):
            return self._expired_form(request)
        address = (arg(request, "email") or "")[:320]
        origin = f"https://{request.getRequestHostname().decode('idna', 'replace')}"
        port = request.getHost().port
        await self.messenger.request_password_reset(address, f"{origin}:{port}")
        # The same answer whether or not the address has an account.
        return self._render(request, "portal_notice.html", heading="Check your mail",
                            text="If this address has a webmail account, a message with a "
                                 "link to choose a new password is on its way. The link "
                                 "works once and for a limited time.")

    async def _password_form(self, request: IRequest, purpose: str, *,
                             problem: str | None = None, status: int = 200) -> bytes:
        token = arg(request, "token") or ""
        try:
            account = await self.messenger.check_link(token, purpose)
        except LinkRefused as e:
            return self._render(request, "portal_notice.html", status=400,
                                heading="This link cannot be used", text=str(e),
                                reset_link=purpose == RESET)
        return self._render(request, "portal_password.html", status=status, purpose=purpose,
                            address=account.address, token=token, problem=problem,
                            csrf=self._csrf(request))

    async def _set_password(self, request: IRequest, purpose: str) -> bytes:
        if not self._csrf_ok(request):
            return self._expired_form(request)
        token = arg(request, "token") or ""
        password = (arg(request, "password") or "")[:MAX_PASSWORD + 1]
        confirm = (arg(request, "confirm") or "")[:MAX_PASSWORD + 1]
        try:
            account, problem = await self.messenger.set_password(token, purpose, password,
                                                                 confirm)
        except LinkRefused as e:
            return self._render(request, "portal_notice.html", status=400,
                                heading="This link cannot be used", text=str(e),
                                reset_link=purpose == RESET)
        if account is None:
            return await self._password_form(request, purpose, problem=problem, status=400)
        return self._render(request, "portal_notice.html", heading="Your password is set",
                            text=f"You can now log in as {account.address} to read your "
                                 "secure messages.")
