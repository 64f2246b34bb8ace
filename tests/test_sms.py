"""
PDF passwords by text message: the request an SMS gateway gets (built from
the administrator's templates), and the HTTPS client against a gateway on
127.0.0.1 -- accepted, refused, untrusted, silent.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_twisted
from twisted.internet import reactor
from zope.interface.verify import verifyObject

from cipherd.settings import (
    CertificatesPEM,
    InvalidValue,
    PhoneNumber,
    SMSGatewayBody,
    SMSGatewayUrl,
)
from cipherd.testing.sms import MemorySMSGateway
from cipherd.webmail.sms import (
    HTTPSSMSGateway,
    ISMSGateway,
    SMSError,
    SMSGatewayConfig,
    sms_request,
)
from tests.sms_server import SMSServer

PHONE = "+31612345678"
TEXT = "Password for the encrypted PDF from alice@example.org: Gx7&k=9 {credential}"


def test_both_gateways_are_sms_gateways() -> None:
    assert verifyObject(ISMSGateway, HTTPSSMSGateway(reactor))
    assert verifyObject(ISMSGateway, MemorySMSGateway())


def test_a_form_post_with_a_bearer_credential() -> None:
    config = SMSGatewayConfig("https://sms.example/v1/send", "post_form",
                              "to={phone}&text={text}&from=Cipherd", "bearer", "k3y")
    request = sms_request(config, PHONE, TEXT)
    assert (request.method, request.url) == (b"POST", b"https://sms.example/v1/send")
    assert request.headers[b"Authorization"] == [b"Bearer k3y"]
    assert request.headers[b"Content-Type"] == [b"application/x-www-form-urlencoded"]
    assert request.body is not None
    # The text's own "{credential}" stays words: placeholders are filled once.
    assert parse_qs(request.body.decode()) == {"to": [PHONE], "text": [TEXT],
                                               "from": ["Cipherd"]}
    assert "k3y" not in repr(config) and TEXT not in repr(request)


def test_a_json_post_with_basic_authentication() -> None:
    config = SMSGatewayConfig("https://sms.example/send", "post_json",
                              '{"recipients": [{phone}], "body": {text}}', "basic", "user:pw")
    request = sms_request(config, PHONE, 'say "hi"\n' + TEXT)
    assert request.headers[b"Authorization"] == [b"Basic " + base64.b64encode(b"user:pw")]
    assert request.body is not None
    assert json.loads(request.body) == {"recipients": [PHONE], "body": 'say "hi"\n' + TEXT}


def test_a_get_with_the_credential_in_the_url() -> None:
    config = SMSGatewayConfig("https://sms.example/api?key={credential}&to={phone}&msg={text}",
                              "get", "", "none", "a&b=c")
    request = sms_request(config, PHONE, TEXT)
    assert request.method == b"GET" and request.body is None
    assert b"Authorization" not in request.headers
    query = parse_qs(urlsplit(request.url.decode()).query)
    assert query == {"key": ["a&b=c"], "to": [PHONE], "msg": [TEXT]}


@pytest.mark.parametrize(("value", "stored"), [
    ("+31 6 1234 5678", "+31612345678"), ("+1 (555) 010-9999", "+15550109999"), ("", "")])
def test_mobile_numbers_in_international_form(value: str, stored: str) -> None:
    assert PhoneNumber().check(value) == stored


@pytest.mark.parametrize("value", ["0612345678", "+0612345678", "+3161234567890123",
                                   "+31 6 CALL ME"])
def test_other_numbers_are_refused(value: str) -> None:
    with pytest.raises(InvalidValue, match="international form"):
        PhoneNumber().check(value)


@pytest.mark.parametrize(("value", "why"), [
    ("http://sms.example/send?to={phone}", "must start with https://"),
    ("https://sms.example/send?to={number}", "has the placeholder {number}"),
    ("https:///send", "names no host"),
    ("https://api:{credential}@sms.example/send", "user name or password before the host"),
    ("https://{phone}.sms.example/send", "placeholders in its path and query only"),
    ("https://sms.example/send?from=Zürich", "printable ASCII"),
])
def test_sms_gateway_urls_are_checked(value: str, why: str) -> None:
    with pytest.raises(InvalidValue, match=re.escape(why)):
        SMSGatewayUrl().check(value)


def test_sms_gateway_bodies_name_known_placeholders_only() -> None:
    body = '{"to": {phone}, "text": {text}}'
    assert SMSGatewayBody().check(body) == body
    with pytest.raises(InvalidValue, match=re.escape("has the placeholder {message}")):
        SMSGatewayBody().check("to={phone}&text={message}")


@pytest.mark.parametrize(("url", "method", "body", "why"), [
    ("https://sms.example/send?to={phone}", "get", "text={text}", "has no {text}"),
    ("https://sms.example/send", "post_form", "text={text}", "has no {phone}"),
    ("https://sms.example/send", "post_json", "to={phone}&text={text}", "is not JSON"),
])
def test_a_request_that_would_not_carry_the_password_is_not_made(
        url: str, method: str, body: str, why: str) -> None:
    with pytest.raises(SMSError, match=re.escape(why)):
        sms_request(SMSGatewayConfig(url, method, body), PHONE, TEXT)


def test_ca_certificates_are_checked(server: SMSServer) -> None:
    assert CertificatesPEM().check(server.ca_pem) == server.ca_pem.strip() + "\n"
    with pytest.raises(InvalidValue, match="not a certificate in PEM"):
        CertificatesPEM().check("MIIB...")
    with pytest.raises(InvalidValue, match="damaged or incomplete"):
        CertificatesPEM().check(server.ca_pem.replace("M", "m", 3))
    with pytest.raises(InvalidValue, match="holds a private key"):
        CertificatesPEM().check(server.ca_pem + "-----BEGIN PRIVATE KEY-----\nMII\n"
                                "-----END PRIVATE KEY-----\n")


# Over HTTPS --------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SMSServer]:
    server = SMSServer(tmp_path)
    yield server
    server.close()


def _config(server: SMSServer, **changes: str) -> SMSGatewayConfig:
    values = dict(url=f"{server.url}/send", method="post_form", body="to={phone}&text={text}",
                  authentication="bearer", credential="k3y", ca=server.ca_pem)
    values.update(changes)
    return SMSGatewayConfig(**values)


@pytest_twisted.ensureDeferred
async def test_the_gateway_gets_the_request(server: SMSServer) -> None:
    await HTTPSSMSGateway(reactor).send(_config(server), PHONE, TEXT)
    (request,) = server.requests
    assert (request.method, request.path) == ("POST", "/send")
    assert request.headers["authorization"] == "Bearer k3y"
    assert parse_qs(request.body.decode()) == {"to": [PHONE], "text": [TEXT]}


@pytest_twisted.ensureDeferred
async def test_a_get_by_address(server: SMSServer) -> None:
    config = _config(server, url=server.url.replace("127.0.0.1", "localhost")
                     + "/send?to={phone}&text={text}", method="get")
    await HTTPSSMSGateway(reactor).send(config, PHONE, TEXT)
    (request,) = server.requests
    assert request.method == "GET"
    assert parse_qs(urlsplit(request.path).query) == {"to": [PHONE], "text": [TEXT]}


@pytest_twisted.ensureDeferred
async def test_a_refusal_names_the_status_not_the_text(server: SMSServer) -> None:
    server.status = 503
    with pytest.raises(SMSError) as raised:
        await HTTPSSMSGateway(reactor).send(_config(server), PHONE, TEXT)
    assert str(raised.value) == "the SMS gateway 127.0.0.1 answered HTTP 503"


@pytest_twisted.ensureDeferred
async def test_a_gateway_whose_certificate_is_not_trusted_gets_nothing(
        server: SMSServer) -> None:
    with pytest.raises(SMSError) as raised:
        await HTTPSSMSGateway(reactor).send(_config(server, ca=""), PHONE, TEXT)
    assert str(raised.value).startswith("the SMS gateway 127.0.0.1 could not be reached: ")
    assert "certificate verify failed" in str(raised.value)
    assert server.requests == []


@pytest_twisted.ensureDeferred
async def test_a_silent_gateway_costs_the_bound(server: SMSServer) -> None:
    server.hang = 2.0
    with pytest.raises(SMSError) as raised:
        await HTTPSSMSGateway(reactor, timeout=0.5).send(_config(server), PHONE, TEXT)
    assert str(raised.value) == "the SMS gateway 127.0.0.1 did not answer within 0.5 seconds"
    assert TEXT not in str(raised.value)
