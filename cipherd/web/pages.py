"""
What every HTML page of the admin site shares: the session check, CSRF on
every POST, the forced password change, rendering and error pages.  The
page groups (``admin``, ``pki_pages``) subclass L{AdminPages}.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from jinja2 import Environment
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from zope.interface import implementer

from cipherd.logs import LOG_NAMES
from cipherd.settings import PAGES
from cipherd.web.auth import AdminSession, csrf_matches
from cipherd.web.backend import AdminBackend
from cipherd.web.common import ErrorAnswer, IErrorPages, arg, client_address, cookie, redirect
from cipherd.web.roles import allowed, refusal

SESSION_COOKIE = "__Host-cipherd-admin"
CSRF_FIELD = "csrf_token"

# Pages an admin who must still change the default password may reach.
_ALLOWED_BEFORE_PASSWORD_CHANGE = ("/admin/password", "/logout")

log = Logger(namespace="cipherd.admin")

Handler = Callable[..., Awaitable[Any]]


def authenticated(handler: Handler) -> Handler:
    """
    Give the handler the admin session, or send the browser to log in;
    check the CSRF token of every POST; force the password change.
    """

    @functools.wraps(handler)
    async def wrapper(self: AdminPages, request: IRequest, *a: Any, **kw: Any) -> Any:
        session = await self.current_session(request)
        if session is None:
            return redirect(request, "/login")
        path = request.path.decode("utf-8", errors="replace")
        submitted = arg(request, CSRF_FIELD)
        if request.method == b"POST" and not csrf_matches(session.csrf_token, submitted):
            return self.forbidden_form(request, session)
        if session.must_change_password and path not in _ALLOWED_BEFORE_PASSWORD_CHANGE:
            return redirect(request, "/admin/password")
        method = request.method.decode("ascii", "replace")
        if not allowed(session.role, method, path):
            log.warn("Refused {method} {path} to admin {account!r} ({role})", method=method,
                     path=path, account=session.admin_name, role=session.role)
            return self.render(request, "error.html", session, status=403,
                               title="Not allowed", message=refusal(session.role))
        return await handler(self, request, session, *a, **kw)

    return wrapper


@implementer(IErrorPages)
class AdminPages:
    """
    The base of the admin page groups.
    """

    def __init__(self, backend: AdminBackend, templates: Environment) -> None:
        self.backend = backend
        self.templates = templates

    @property
    def clock(self) -> IReactorTime:
        return self.backend.authority.clock

    async def current_session(self, request: IRequest) -> AdminSession | None:
        return await self.backend.authority.session(cookie(request, SESSION_COOKIE) or "")

    def render(
        self, request: IRequest, template: str, session: AdminSession | None = None,
        status: int = 200, **context: Any,
    ) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        def may(path: str, method: str = "POST") -> bool:
            return session is not None and allowed(session.role, method, path)

        here = request.path.decode("utf-8", errors="replace")
        page = self.templates.get_template(template).render(
            session=session, csrf_field=CSRF_FIELD, log_names=LOG_NAMES,
            settings_pages=PAGES, may=may, read_only=session is not None and not may(here),
            **context,
        )
        return page.encode("utf-8")

    async def audit(self, request: IRequest, session: AdminSession, action: str, summary: str,
                    *, target: str = "", details: Mapping[str, Any] | None = None) -> None:
        """
        Record a change made on these pages (L{AuditTrail.record}).
        """
        await self.backend.audit.record_request(request, session.admin_name, "web", action,
                                                summary, target=target, details=details)

    def forbidden_form(self, request: IRequest, session: AdminSession | None) -> bytes:
        log.warn("Refused a form without a valid CSRF token from {client}",
                 client=client_address(request))
        return self.render(
            request, "error.html", session, status=403, title="Form refused",
            message="This form was not sent from this site's page, or the page has expired. "
            "Go back, reload the page and try again.",
        )

    def not_found(self, request: IRequest, session: AdminSession | None,
                  message: str = "There is no such page, domain or user.") -> bytes:
        return self.render(request, "error.html", session, status=404, title="Not found",
                           message=message)

    def error_page(self, request: IRequest, answer: ErrorAnswer) -> bytes:
        """
        The error page in the admin style, without a session (looking one
        up needs the database, which may be what failed).
        """
        return self.render(request, "error.html", None, status=answer.status,
                           title=answer.title, message=answer.message)
