"""
What the admin and portal sites share: security headers on every response,
templates, form and cookie helpers.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any, cast

from jinja2 import Environment, PackageLoader, select_autoescape
from twisted.logger import Logger
from twisted.web.http import combinedLogFormatter
from twisted.web.iweb import IRequest
from twisted.web.pages import notFound as not_found
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request
from twisted.web.static import File

# No inline script or style anywhere: everything comes from /static.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; connect-src 'self'"
)

# The largest file the admin site takes (a certificate bundle), and the
# largest request body it reads: that file and its multipart framing.
MAX_UPLOAD = 10_000_000
MAX_REQUEST_BODY = MAX_UPLOAD + 64 * 1024

log = Logger(namespace="cipherd.web")

SECURITY_HEADERS = {
    b"Content-Security-Policy": CONTENT_SECURITY_POLICY.encode(),
    b"Strict-Transport-Security": b"max-age=31536000",
    b"X-Content-Type-Options": b"nosniff",
    b"X-Frame-Options": b"DENY",
    b"Referrer-Policy": b"no-referrer",
    b"Cross-Origin-Opener-Policy": b"same-origin",
    b"Cache-Control": b"no-store",
}


class SecureHeaders(Resource):
    """
    Wraps a leaf resource (a Klein app) and sets the security headers on
    every response before it renders.
    """

    isLeaf = True

    def __init__(self, wrapped: Resource) -> None:
        super().__init__()
        self._wrapped = wrapped

    def render(self, request: Request) -> Any:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        return self._wrapped.render(request)


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


def template_environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("cipherd.web", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["timestamp"] = _timestamp
    return environment


def arg(request: IRequest, name: str) -> str | None:
    """
    A query or form argument as text (the first, if repeated).
    """
    values = request.args.get(name.encode())
    if not values:
        return None
    return values[0].decode("utf-8", errors="replace")


def args(request: IRequest, name: str) -> list[str]:
    return [v.decode("utf-8", errors="replace") for v in request.args.get(name.encode(), [])]


def cookie(request: IRequest, name: str) -> str | None:
    value = request.getCookie(name.encode())
    return value.decode("ascii", errors="replace") if value else None


def set_cookie(request: IRequest, name: str, value: str, *, max_age: int | None = None) -> None:
    """
    Set a cookie the way every cipherd cookie is set: Secure, HttpOnly,
    SameSite=Strict, host-only (the C{__Host-} prefix enforces it).
    """
    # IRequest.addCookie does not declare httpOnly and sameSite; Request has them.
    cast(Request, request).addCookie(
        name.encode(), value.encode(), path=b"/", secure=True, httpOnly=True,
        sameSite=b"strict", max_age=None if max_age is None else str(max_age).encode(),
    )


def clear_cookie(request: IRequest, name: str) -> None:
    cast(Request, request).addCookie(
        name.encode(), b"", path=b"/", secure=True, httpOnly=True, sameSite=b"strict",
        max_age=b"0",
    )


def json_response(request: IRequest, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(body, indent=1, sort_keys=True).encode() + b"\n"


def redirect(request: IRequest, location: str) -> bytes:
    """
    A 303 to a path on this site (never to another origin).
    """
    if not location.startswith("/") or location.startswith("//"):
        location = "/"
    request.setResponseCode(303)
    request.setHeader(b"Location", location.encode())
    return b""


def client_address(request: IRequest) -> str:
    address = request.getClientAddress()
    return getattr(address, "host", None) or str(address)


# Also URL-encoded, as in a ?next= that carries a page with its token.
_SECRET_QUERY = re.compile(rb"(?i)((?:password|token)(?:=|%3D))(?:[^&%\s]|%(?!26))*")


class _ScrubbedRequest:
    def __init__(self, request: Any) -> None:
        self._request = request
        self.uri = _SECRET_QUERY.sub(rb"\1***", request.uri)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def access_log_formatter(timestamp: str, request: Any) -> str:
    """
    The combined access log format, with secrets in query strings (the
    certificate import's C{?password=}) replaced by C{***}.
    """
    return combinedLogFormatter(timestamp, _ScrubbedRequest(request))


class BoundedRequest(Request):
    """
    A request whose body may not exceed C{max_body} bytes.

    Twisted buffers a whole body before the resource sees it, and a chunked
    body announces no length: without this a client could fill the disk or
    memory.  A declared length over the limit is refused before any of the
    body is read; a chunked body as soon as it passes the limit.  The answer
    is C{413} and the connection is closed (the rest of the body is never
    read).
    """

    max_body = MAX_REQUEST_BODY
    _received = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        if length is not None and length > self.max_body:
            # Refused before the body: no "100 Continue" after the 413.
            self.requestHeaders.removeHeader(b"expect")
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._refused:
            super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        self._refused = True
        if self.content is not None:
            self.content.close()
        body = f"The request body is larger than {self.max_body} bytes.\n".encode()
        log.warn("Refused a request body over {limit} bytes from {client}",
                 limit=self.max_body, client=client_address(self))
        transport = self.channel.transport
        assert transport is not None
        transport.write(
            b"HTTP/1.1 413 Content Too Large\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            + b"Content-Length: %d\r\n" % len(body)
            + b"Connection: close\r\n\r\n" + body
        )
        self.channel.loseConnection()


class _StaticFiles(File):
    """
    The files under C{static/}, without directory listings.
    """

    def directoryListing(self) -> IResource:
        return not_found()


def static_files() -> Resource:
    return _StaticFiles(str(files("cipherd.web") / "static"))
