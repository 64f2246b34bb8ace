"""
Text messages through an SMS gateway's HTTPS API: how PDF passwords reach
recipients whose password mode is SMS.

SMS gateways differ in everything but HTTPS, so the request is the
administrator's: a URL template, a method (GET, a POSTed form or POSTed
JSON), a body template and a credential sent as a bearer token, as basic
authentication, or in the URL or body.  The placeholders C{{phone}},
C{{text}} and C{{credential}} are encoded for where they stand.

The text carries a password: it is never logged, and no error names the
URL (whose query may hold it) or repeats the gateway's answer (which may
echo it); errors name the host and the HTTP status only.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import Certificate, platformTrust, trustRootFromCertificates
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, FileBodyProducer
from twisted.web.http_headers import Headers
from zope.interface import Interface, implementer

from cipherd.core.failures import describe_error
from cipherd.settings import SMS_PLACEHOLDERS

# An SMS gateway answers in a second or two; a password that has not gone
# after this does not hold the queue up longer (the next method is used).
SMS_TIMEOUT = 15.0
# What is read of an answer (and dropped): the status is what counts.
MAX_ANSWER = 64 * 1024

FORM = "application/x-www-form-urlencoded"


class SMSError(Exception):
    """
    The text message was not accepted by the SMS gateway (the message says
    why, without the text).
    """


@dataclass(frozen=True)
class SMSGatewayConfig:
    """
    An SMS gateway as the settings describe it (the sender's settings:
    the organisation's account).
    """

    url: str
    method: str = "post_form"
    body: str = "to={phone}&text={text}"
    authentication: str = "bearer"
    credential: str = field(default="", repr=False)
    ca: str = ""

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> SMSGatewayConfig:
        return cls(url=str(settings["sms_gateway_url"]),
                   method=str(settings["sms_gateway_method"]),
                   body=str(settings["sms_gateway_body"]),
                   authentication=str(settings["sms_gateway_authentication"]),
                   credential=str(settings["sms_gateway_credential"]),
                   ca=str(settings["sms_gateway_ca"]))

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "?"  # no placeholder there (the setting's check)


@dataclass(frozen=True)
class SMSRequest:
    method: bytes
    url: bytes
    headers: Mapping[bytes, list[bytes]]
    body: bytes | None = field(default=None, repr=False)

    def __repr__(self) -> str:  # the URL may hold the text
        return f"SMSRequest({self.method.decode()} to {urlsplit(self.url.decode()).hostname})"


_PLACEHOLDER = re.compile("|".join(re.escape(p) for p in SMS_PLACEHOLDERS))


def _filled(template: str, values: Mapping[str, str], encode: Callable[[str], str]) -> str:
    """
    C{template} with each placeholder replaced by its value, encoded, in
    one pass (a text that says "{credential}" stays those words); the rest
    as it is (a JSON body's own braces, say).
    """
    return _PLACEHOLDER.sub(lambda m: encode(values[m.group(0)]), template)


def sms_request(config: SMSGatewayConfig, phone: str, text: str) -> SMSRequest:
    """
    The HTTP request that asks the gateway to send C{text} to C{phone}.
    """
    values = {"{phone}": phone, "{text}": text, "{credential}": config.credential}
    url = _filled(config.url, values, lambda v: quote(v, safe=""))
    headers: dict[bytes, list[bytes]] = {b"User-Agent": [b"cipherd"]}
    if config.authentication == "bearer" and config.credential:
        headers[b"Authorization"] = [b"Bearer " + config.credential.encode()]
    elif config.authentication == "basic" and config.credential:
        headers[b"Authorization"] = [b"Basic " + base64.b64encode(config.credential.encode())]
    sent = config.url if config.method == "get" else config.url + config.body
    for placeholder, what in (("{phone}", "number"), ("{text}", "text")):
        if placeholder not in sent:
            where = "URL" if config.method == "get" else "URL or body"
            raise SMSError(f"the SMS gateway {where} has no {placeholder}: the {what} would "
                           "not be sent (Settings → PDF → SMS)")
    if config.method == "get":
        return SMSRequest(b"GET", url.encode(), headers)
    if config.method == "post_json":
        body = _filled(config.body, values, lambda v: json.dumps(v))
        try:
            json.loads(body)
        except ValueError:
            raise SMSError("the SMS gateway body is not JSON once filled in (Settings → PDF → "
                           "SMS: placeholders become JSON strings, quotes included)") from None
        headers[b"Content-Type"] = [b"application/json"]
    else:
        body = _filled(config.body, values, lambda v: quote_plus(v, safe=""))
        headers[b"Content-Type"] = [FORM.encode()]
    return SMSRequest(b"POST", url.encode(), headers, body.encode())


class ISMSGateway(Interface):
    def send(config: SMSGatewayConfig, phone: str, text: str) -> Deferred[None]:
        """
        Have the gateway send C{text} to C{phone}; fires when the gateway
        accepted it (an HTTP 2xx answer).

        @raise SMSError: it did not (the message says why).
        """


class _Drain(Protocol):
    """
    An answer's body, read up to L{MAX_ANSWER} bytes and dropped.
    """

    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred(lambda _: self._stop())
        self._size = 0

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > MAX_ANSWER:
            self._stop()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.callback(None)


@implementer(ISMSGateway)
class HTTPSSMSGateway:
    """
    L{ISMSGateway} over HTTPS with Twisted's agent: the gateway's host name
    checked against its certificate, which must chain to the configured CA
    certificates or the system's roots.
    """

    def __init__(self, reactor: Any, timeout: float = SMS_TIMEOUT) -> None:
        self._reactor = reactor
        self._timeout = timeout

    def send(self, config: SMSGatewayConfig, phone: str, text: str) -> Deferred[None]:
        return Deferred.fromCoroutine(self._send(config, phone, text))

    async def _send(self, config: SMSGatewayConfig, phone: str, text: str) -> None:
        if not config.url:
            raise SMSError("no SMS gateway URL is set (Settings → PDF → SMS)")
        request = sms_request(config, phone, text)
        try:
            if config.ca:
                roots = [Certificate.loadPEM(c.public_bytes(Encoding.PEM))
                         for c in x509.load_pem_x509_certificates(config.ca.encode())]
                trust = trustRootFromCertificates(roots)
            else:
                trust = platformTrust()
            agent = Agent(self._reactor, BrowserLikePolicyForHTTPS(trust),
                          connectTimeout=self._timeout)
            body = None if request.body is None else FileBodyProducer(io.BytesIO(request.body))
            sending = agent.request(request.method, request.url,
                                    Headers(dict(request.headers)), body)
        except Exception as e:
            # What the URL or the CA certificates could not be made into
            # (the error's own words would show the URL, text and all).
            raise SMSError(f"no request could be made for the SMS gateway {config.host} "
                           f"({type(e).__name__}): check its URL and CA certificates "
                           "(Settings → PDF → SMS)") from None
        silent = SMSError(f"the SMS gateway {config.host} did not answer within "
                          f"{self._timeout:g} seconds")
        # (The agent's own error on cancelling wraps the cancel: replaced.)
        sending.addTimeout(self._timeout, self._reactor,
                           onTimeoutCancel=lambda result, timeout: Failure(silent))
        try:
            response = await sending
        except SMSError:
            raise
        except Exception as e:
            raise SMSError(f"the SMS gateway {config.host} could not be reached: "
                           f"{describe_error(e)}") from None
        drain = _Drain()
        response.deliverBody(drain)
        # The status decides; a body that does not end is not waited for.
        drain.done.addTimeout(self._timeout, self._reactor,
                              onTimeoutCancel=lambda result, timeout: None)
        await drain.done
        if not 200 <= response.code < 300:
            raise SMSError(f"the SMS gateway {config.host} answered HTTP {response.code}")

