"""
The CA's publication point: a plain HTTP listener of its own (RFC 5280
§4.2.1.13 and §4.2.2.1: distribution points and caIssuers are fetched over
HTTP, as a CRL is signed and fetching it over TLS could need the CRL
itself) serving each CA's CRL at the path of its distribution point and its
certificate beside it (L{cipherd.pki.ca.CertificateAuthority.published}).
Nothing else is there: any other path is a 404, any method but GET and HEAD
a 405.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from cipherd.pki.ca import CertificateAuthority
from cipherd.store import DatabaseUnavailable

log = Logger(namespace="cipherd.ca")


class PublicationPoint(Resource):
    """
    The root (and only) resource of the CRL listener.
    """

    isLeaf = True

    def __init__(self, authority: CertificateAuthority) -> None:
        super().__init__()
        self._authority = authority

    def render(self, request: Request) -> Any:
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"Allow", b"GET, HEAD")
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"Only GET and HEAD: this address serves CRLs and CA certificates.\n"
        path = request.path.decode("utf-8", errors="replace")
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = Deferred.fromCoroutine(self._authority.published(path))

        def answer(found: Any) -> None:
            if gone:
                return
            if found is None:
                request.setResponseCode(404)
                request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
                body = b"There is no CRL or CA certificate at this address.\n"
            else:
                request.setHeader(b"Content-Type", found.media_type)
                request.setHeader(b"Cache-Control", f"max-age={found.max_age}".encode())
                body = found.body
            request.setHeader(b"Content-Length", str(len(body)).encode())
            if request.method != b"HEAD":
                request.write(body)
            request.finish()

        def failed(failure: Any) -> None:
            if not failure.check(DatabaseUnavailable):
                log.failure("Serving {path} failed", failure, path=path)
            if gone:
                return
            request.setResponseCode(503)
            request.setHeader(b"Retry-After", b"30")
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            request.write(b"The CRL cannot be read just now; try again shortly.\n")
            request.finish()

        d.addCallback(answer).addErrback(failed)
        return NOT_DONE_YET
