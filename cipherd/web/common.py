"""
What the admin and portal sites share: security headers on every response,
one error handler for every Klein app of both sites (L{SiteApp}), a
deadline on every request, templates, form and cookie helpers.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib.resources import files
from typing import IO, Any, TypeVar, cast
from urllib.parse import unquote_to_bytes

from jinja2 import Environment, PackageLoader, select_autoescape
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import combinedLogFormatter
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request
from twisted.web.static import File
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect
from zope.interface import Attribute, Interface, implementer

from cipherd.core.clock import minute_utc
from cipherd.logs import LogQuery
from cipherd.store import DatabaseUnavailable
from cipherd.web.favicon import favicon_ico, favicon_svg

# No inline script or style anywhere: everything comes from /static.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; connect-src 'self'"
)

# The largest file the admin site takes (a certificate bundle), and the
# largest request body it reads: that file and its multipart framing.
MAX_UPLOAD = 10_000_000
MAX_REQUEST_BODY = MAX_UPLOAD + 64 * 1024

# RFC 9110 §10.2.3: how long a client should wait before it asks again
# after a 503 (the database locked or full, the server busy).
RETRY_AFTER_SECONDS = 5
# How long a request may go unanswered before it is answered 503.  Behind
# calls that wait on a locked database (each up to SQLite's busy timeout,
# 5 s) a request would otherwise wait for all of them in turn: 40 s and
# more were seen.  Long enough for any ordinary request.
REQUEST_DEADLINE = 10.0
# For requests that carry an upload to work through (a certificate bundle
# of thousands, a large CRL): see L{request_deadline}.
UPLOAD_DEADLINE = 120.0

log = Logger(namespace="cipherd.web")

T = TypeVar("T")

SECURITY_HEADERS = {
    b"Content-Security-Policy": CONTENT_SECURITY_POLICY.encode(),
    b"Strict-Transport-Security": b"max-age=31536000",
    b"X-Content-Type-Options": b"nosniff",
    b"X-Frame-Options": b"DENY",
    b"Referrer-Policy": b"no-referrer",
    b"Cross-Origin-Opener-Policy": b"same-origin",
    b"Cache-Control": b"no-store",
}


@dataclass(frozen=True)
class ErrorAnswer:
    """
    An answer that is not the page asked for: its status, the headers it
    needs (C{Allow}, C{Retry-After}), and what to tell the reader.

    @ivar title: a few words, the page's heading.
    @ivar message: one or two sentences; never an exception's text.
    """

    status: int
    title: str
    message: str
    headers: Mapping[bytes, bytes] = field(default_factory=dict)


class IErrorPages(Interface):
    """
    What a Klein app of a cipherd site is bound to: it shows that site's
    error pages, and knows the clock its request deadlines run on.
    """

    clock = Attribute("The L{IReactorTime} on which request deadlines run.")

    def error_page(request: IRequest, answer: ErrorAnswer) -> bytes:
        """
        The body for C{answer}, in the site's own style (an HTML page, or
        JSON for the API), with its C{Content-Type} set; the status and
        C{answer}'s headers are set already.

        It must not use the database: it is what may have failed.
        """


class SeeOther(Exception):
    """
    Raised by a handler to send the browser elsewhere on this site (303).

    @ivar location: a path on this site, never taken from the request.
    """

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


class DeadlinePassed(Exception):
    """
    A request was not answered within its deadline (L{REQUEST_DEADLINE}).
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


NOT_FOUND = ErrorAnswer(404, "Not found", "There is no such page.")
INTERNAL_ERROR = ErrorAnswer(500, "Internal error", "Something went wrong on our side. The "
                             "cause is in the cipherd log.")


def _unavailable(message: str) -> ErrorAnswer:
    return ErrorAnswer(503, "Try again in a moment", message,
                       {b"Retry-After": str(RETRY_AFTER_SECONDS).encode()})


def database_problem(reason: str) -> str:
    """
    What a L{DatabaseUnavailable}'s reason means, for an administrator (the
    reason itself is the driver's text and stays in the log).
    """
    lowered = reason.lower()
    if "full" in lowered or "no space" in lowered:
        return "The database cannot be written: its disk is full."
    if "readonly" in lowered or "read-only" in lowered:
        # A file system remounted read-only after disk errors, say.
        return "The database cannot be written: it is read-only."
    if "lock" in lowered or "busy" in lowered:
        return "The database is busy: another process holds its lock."
    if "connection became free" in lowered:
        return "The database is busy: every connection to it is in use."
    return "The database cannot be reached."


def _where(front: object, request: IRequest) -> dict[str, Any]:
    return {"site": type(front).__name__,
            "method": request.method.decode("ascii", "replace"),
            "path": request.path.decode("utf-8", "replace")}


def _answer_for(front: object, request: IRequest, failure: Failure) -> ErrorAnswer:
    """
    What a failure means for the client, logged as what it is: routing
    misses are the client's and not logged; a database that cannot be used
    is logged by the store (once per episode) and here at info; only a
    real fault is logged as one (critical, with its traceback).
    """
    error = failure.value
    if isinstance(error, RequestRedirect):
        # Werkzeug's answer to /x/ for a route /x (strict slashes) or to
        # //: an address we do not serve, not one to send the client to.
        return NOT_FOUND
    if isinstance(error, MethodNotAllowed):
        # RFC 9110 §15.5.6: a 405 names the methods the resource has.
        allowed = ", ".join(sorted(error.valid_methods or ()))
        method = request.method.decode("ascii", "replace")
        return ErrorAnswer(405, "Method not allowed",
                           f"This page does not answer {method} requests.",
                           {b"Allow": allowed.encode("ascii")})
    if isinstance(error, HTTPException):
        if error.code == 404:
            return NOT_FOUND
        return ErrorAnswer(error.code or 500, error.name, f"{error.name}.")
    if isinstance(error, DatabaseUnavailable):
        log.info("{site}: {method} {path} answered 503, the database is unavailable: "
                 "{reason}", reason=error.reason, **_where(front, request))
        return _unavailable(database_problem(error.reason) + " Try again in a moment.")
    if isinstance(error, DeadlinePassed):
        log.warn("{site}: {method} {path} answered 503 after {seconds:g} s without an answer "
                 "(the database may be locked or overloaded)", seconds=error.seconds,
                 **_where(front, request))
        message = "The server could not answer in time: the database is busy. Try again in " \
                  "a moment"
        if request.method not in (b"GET", b"HEAD"):
            # The work goes on (see _within_deadline): it may yet succeed.
            message += "; what you sent may still take effect, so look before you send it again"
        return _unavailable(message + ".")
    log.failure("{site}: {method} {path} failed", failure, **_where(front, request))
    return INTERNAL_ERROR


def error_response(pages: IErrorPages, request: IRequest, answer: ErrorAnswer) -> bytes:
    """
    Set C{answer}'s status and headers and return its page from C{pages};
    plain text if that page fails.
    """
    request.setResponseCode(answer.status)
    for name, value in answer.headers.items():
        request.setHeader(name, value)
    try:
        return pages.error_page(request, answer)
    except Exception:
        log.failure("The {status} page failed", status=answer.status)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return f"{answer.title}. {answer.message}\n".encode()


def _answer_failure(self: Any, request: IRequest, failure: Failure) -> bytes:
    # The one error handler of every cipherd Klein app (STYLE.md: one for
    # all sub-apps, so none falls back to twisted.web's bare pages); a
    # method of the object the app is bound to, as Klein calls it.
    if isinstance(failure.value, SeeOther):
        return redirect(request, failure.value.location)
    return error_response(cast(IErrorPages, self), request,
                          _answer_for(self, request, failure))


def request_deadline(seconds: float | None) -> Callable[[T], T]:
    """
    Give a route handler another deadline than L{REQUEST_DEADLINE}; put it
    below C{@app.route} (and C{@authenticated}).  C{None}: none at all, for
    a handler that streams its answer (a 503 cannot follow a body begun).
    """

    def mark(handler: T) -> T:
        setattr(handler, "request_deadline", seconds)  # noqa: B010 -- a function's attribute
        return handler

    return mark


def _within_deadline(work: Deferred[Any], request: IRequest, seconds: float,
                     clock: IReactorTime, front: object) -> Deferred[Any]:
    """
    C{work}'s result, or L{DeadlinePassed} once C{seconds} pass without one.

    The work is not cancelled at the deadline: a handler stopped between
    two steps would leave half a change behind.  It runs to its end and
    its answer, which no one waits for any more, is dropped.  (A client
    that goes away still cancels it, as Klein does: the answer is then
    L{CancelledError}, which Klein drops, whatever the work ends with.)

    Nothing here raises into Klein's or the work's callbacks: a client
    that hangs up mid-request was once worth a critical "Unhandled error
    in Deferred" (the timer cancelled twice), on demand for anyone.
    """
    client_gone = False

    def cancel(_: Deferred[Any]) -> None:
        nonlocal client_gone
        client_gone = True
        if timer.active():
            timer.cancel()
        try:
            work.cancel()
        except Exception:
            log.failure("{site}: {method} {path}: cancelling the work failed",
                        **_where(front, request))
        # Deferred.cancel errbacks the answer with CancelledError now.

    answer: Deferred[Any] = Deferred(cancel)
    timer = clock.callLater(seconds, lambda: answer.errback(DeadlinePassed(seconds)))

    def finished(result: object) -> None:
        if not answer.called and not client_gone:
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure):
                answer.errback(result)
            else:
                answer.callback(result)
            return
        when = "after its client went away" if client_gone else "after its deadline"
        # What the error handler would have answered 3xx/4xx/503 is no fault.
        if isinstance(result, Failure) and not result.check(
                CancelledError, DatabaseUnavailable, SeeOther, HTTPException):
            log.failure("{site}: {method} {path} failed {when}", result, when=when,
                        **_where(front, request))
        elif not client_gone:
            log.info("{site}: {method} {path} finished {when}", when=when,
                     **_where(front, request))

    work.addBoth(finished)
    return answer


class SiteApp(Klein):
    """
    The Klein app of each site and sub-site (pages, API): every error goes
    to the one handler (L{_answer_failure}), and a request still without
    an answer after its deadline (L{REQUEST_DEADLINE}, or the handler's own
    from L{request_deadline}) is answered 503.  The object the app is bound
    to provides L{IErrorPages}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.handle_errors(Exception)(_answer_failure)

    def execute_endpoint(self, endpoint: str, request: IRequest, *args: Any,
                         **kwargs: Any) -> Any:
        result = super().execute_endpoint(endpoint, request, *args, **kwargs)
        front = self._instance
        if not isinstance(result, Deferred) or front is None:
            return result
        seconds = getattr(self.endpoints[endpoint], "request_deadline", REQUEST_DEADLINE)
        if seconds is None:
            return result
        return _within_deadline(result, request, seconds, cast(IErrorPages, front).clock,
                                front)


# RFC 3986 §2.1: a percent sign starts a two-digit hexadecimal escape.
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def path_problem(request: IRequest) -> str | None:
    """
    What makes the request's path one no page of ours has, or C{None}.

    Browsers never send these; scanners do, and before this check they
    reached the routing and the static files as a 500 with a traceback
    (a NUL byte), a redirect without a Location (C{//}), or a logged
    decoding error (not UTF-8).
    """
    path: bytes = request.path
    if not path.startswith(b"/"):
        return "the path does not start with /"
    if _BAD_ESCAPE.search(path):
        return "a percent sign without two hexadecimal digits"
    segments = path[1:].split(b"/")
    if b"" in segments[:-1]:
        return "an empty path segment (//)"
    try:
        decoded = [unquote_to_bytes(segment).decode("utf-8") for segment in segments]
    except UnicodeDecodeError:
        return "the path is not UTF-8"
    for segment in decoded:
        if any(unicodedata.category(c) == "Cc" for c in segment):
            return "a control character (such as NUL)"
        if segment in (".", ".."):
            # RFC 3986 §5.2.4: clients remove these before they ask.
            return "a dot segment"
    try:
        request.getRequestHostname().decode("utf-8")
    except UnicodeDecodeError:
        return "the Host header is not UTF-8"
    return None


class SecureHeaders(Resource):
    """
    The root of a site: sets the security headers on every response, and
    answers 400 to a path no page can have (L{path_problem}) before it
    reaches the routing; everything else goes to the site's Klein app.

    @param pages: the site's error pages.
    """

    isLeaf = True

    def __init__(self, wrapped: Resource, pages: IErrorPages) -> None:
        super().__init__()
        self._wrapped = wrapped
        self._pages = pages

    def render(self, request: Request) -> Any:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        problem = path_problem(request)
        if problem is None:
            return self._wrapped.render(request)
        log.info("Refused a request for a malformed path from {client}: {problem}",
                 client=client_address(request), problem=problem)
        return error_response(self._pages, request, ErrorAnswer(
            400, "Bad request", f"This address cannot be a page: it has {problem}."))


# Neither site is for search engines: the admin site is for administrators,
# the portal for the recipients of one message each.
ROBOTS_TXT = b"User-agent: *\nDisallow: /\n"
# Icons and robots.txt hold nothing secret: let the browser keep them.
_CACHE_AN_HOUR = b"max-age=3600"


def robots_txt(request: IRequest) -> bytes:
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Cache-Control", _CACHE_AN_HOUR)
    return ROBOTS_TXT


def favicon(request: IRequest, colour: str, kind: str) -> bytes:
    """
    The product's mark in C{colour} (L{cipherd.web.favicon}).

    @param kind: C{"ico"} or C{"svg"}.
    """
    request.setHeader(b"Cache-Control", _CACHE_AN_HOUR)
    if kind == "svg":
        request.setHeader(b"Content-Type", b"image/svg+xml")
        return favicon_svg(colour)
    request.setHeader(b"Content-Type", b"image/vnd.microsoft.icon")
    return favicon_ico(colour)



@implementer(IPushProducer)
class _FileProducer:
    """
    Writes a file to a request as the connection takes it: the transport
    pauses it when its buffer is full and resumes it when drained, so a
    large file never sits in memory whole.
    """

    CHUNK = 64 * 1024

    def __init__(self, source: IO[bytes], request: IRequest) -> None:
        self._source = source
        self._request = request
        self._paused = False
        self.done: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        cast(Request, self._request).registerProducer(self, True)
        self._produce()
        return self.done

    def _produce(self) -> None:
        while not self._paused and not self.done.called:
            chunk = self._source.read(self.CHUNK)
            if not chunk:
                cast(Request, self._request).unregisterProducer()
                self.done.callback(None)
                return
            self._request.write(chunk)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._produce()

    def stopProducing(self) -> None:
        # The client went away.
        if not self.done.called:
            self.done.errback(CancelledError("the client closed the connection"))


def attachment(request: IRequest, media_type: bytes, filename: str, *,
               private: bool = False) -> None:
    """
    Answer C{request} with a file to download: its media type and the name
    a browser saves it under.

    @param private: it holds a secret (a private key): no cache keeps it.
    """
    request.setHeader(b"Content-Type", media_type)
    request.setHeader(b"Content-Disposition", f'attachment; filename="{filename}"'.encode())
    if private:
        request.setHeader(b"Cache-Control", b"no-store")


def send_file(request: IRequest, source: IO[bytes]) -> Deferred[None]:
    """
    Write C{source} to C{request}, paced by the connection; fires when all
    is written (or fails when the client went away first).
    """
    return _FileProducer(source, request).start()


def template_environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("cipherd.web", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["timestamp"] = minute_utc
    return environment


# A whole number as forms and query strings send it: ASCII digits only
# (str.isdigit() takes "²", which int() refuses), and few enough for int()
# (it refuses more than 4300) and beyond every limit.
_WHOLE_NUMBER = re.compile(r"[0-9]{1,19}")


def whole_number(raw: str) -> int | None:
    """
    C{raw} as a whole number, or C{None} when it is not one.
    """
    return int(raw) if _WHOLE_NUMBER.fullmatch(raw) else None


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


class _Missing(Resource):
    """
    What the static files answer for a name they do not have: the site's
    own 404 page, through its error handler.
    """

    isLeaf = True

    def render(self, request: IRequest) -> bytes:
        raise NotFound()


class _StaticFiles(File):
    """
    The files under C{static/}, without directory listings; GET and HEAD
    only.  Missing files and wrong methods raise, so that the site's error
    handler answers them in the site's style.
    """

    # File declares its own not-found page's class; any resource will do.
    childNotFound = _Missing()  # type: ignore[assignment]

    def render(self, request: IRequest) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            raise MethodNotAllowed(["GET", "HEAD"])
        return super().render(request)

    def directoryListing(self) -> IResource:
        return _Missing()


def static_files() -> Resource:
    return _StaticFiles(str(files("cipherd.web") / "static"))


def log_query(request: IRequest) -> tuple[LogQuery, dict[str, str], dict[str, str]]:
    """
    The search of a log (Admin → Logs, and the API): (the query, what was
    typed, errors by field C{q}, C{since}, C{until}).  The times are the
    browser's C{datetime-local} (or any ISO 8601 date and time), in UTC as
    the lines are.
    """
    typed = {name: (arg(request, name) or "").strip() for name in ("q", "since", "until")}
    errors = {}
    bounds = {}
    for name, seconds in (("since", ":00"), ("until", ":59")):
        text = typed[name]
        if not text:
            continue
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            errors[name] = f"{text!r} is not a date and time (YYYY-MM-DD HH:MM)"
            continue
        bounds[name] = when.strftime("%Y-%m-%dT%H:%M") + seconds
    if not errors and bounds.get("since", "") > bounds.get("until", "\uffff"):
        errors["until"] = "must not be before the start"
    return (LogQuery(typed["q"], bounds.get("since", ""), bounds.get("until", "")),
            typed, errors)
