"""
The PDF method in a running appliance: mail sent with swaks, captured at a
sink on real sockets, the PDF opened by qpdf and poppler, one test per
password mode.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pdf_peers import PDFReaders, pdf_of, text_of
from tests.sms_server import SMSServer
from tests.test_gateway_appliance import Gateway, gateway, pki  # noqa: F401
from tests.test_mta_appliance import api

pytestmark = pytest.mark.e2e

ATTACHMENT = bytes(range(256)) * 4  # data.bin in SENT


def log_text(gateway: Gateway, name: str) -> str:  # noqa: F811
    return (gateway.appliance.data_dir / "logs" / f"{name}.log").read_text()


@pytest.fixture
def readers(tmp_path: Path) -> PDFReaders:
    return PDFReaders(tmp_path)


def test_random_password_to_the_sender(gateway: Gateway, readers: PDFReaders) -> None:  # noqa: F811
    gateway.settings("global", encrypt_mode="mandatory", pdf_enabled=True)
    queue_id = gateway.send("dave@partner.example")
    captured = {tuple(c.recipients): c for c in gateway.sink.wait_for(2)}
    mail, notice = captured[("dave@partner.example",)], captured[("alice@example.org",)]
    assert mail.sender == "alice@example.org"
    assert b"Subject: Figures for Q3" in mail.content and b"Gr\xc3\xbc" not in mail.content
    found = re.search(r"The password to open it is:\s+(\S+)", text_of(notice.content))
    assert found is not None
    password = found.group(1)
    pdf = pdf_of(mail.content)
    assert "R = 6" in readers.encryption(pdf, password)
    text = readers.text(pdf, password)
    assert "Figures for Q3" in text and "Grüße" in text and ".leading dot" in text
    assert readers.attachments(pdf, password) == {"data.bin": ATTACHMENT}
    readers.refuses(pdf, password[:-1])
    line = gateway.log("mpa", f"{queue_id}: PDF encrypted")
    assert "random password sent to the sender); Recipient: dave@partner.example" in line
    for log in ("mpa", "mta"):
        assert password not in log_text(gateway, log)


def test_static_password_of_the_recipient(gateway: Gateway, readers: PDFReaders) -> None:  # noqa: F811
    gateway.settings("global", encrypt_mode="mandatory", pdf_enabled=True)
    gateway.settings("domains/partner.example", pdf_password_mode="static")
    gateway.settings("users/dave@partner.example", pdf_password="Dave's static secret")
    # Write-only: the API never shows it.
    shown = api(gateway.appliance, "GET", "/settings/users/dave@partner.example")
    assert shown["properties"]["pdf_password"] == {
        "value": None, "hidden": True, "level": "user", "scope": "dave@partner.example",
        "inherited": False}
    queue_id = gateway.send("dave@partner.example")
    (mail,) = gateway.sink.wait_for(1)  # and no notice
    assert mail.recipients == ["dave@partner.example"]
    pdf = pdf_of(mail.content)
    assert "Grüße" in readers.text(pdf, "Dave's static secret")
    assert readers.attachments(pdf, "Dave's static secret") == {"data.bin": ATTACHMENT}
    gateway.log("mpa", f"{queue_id}: PDF encrypted (AES-256, static password); Recipient: "
                       "dave@partner.example")
    assert "Dave's static secret" not in log_text(gateway, "mpa")


@pytest.fixture
def sms_server(tmp_path: Path) -> Iterator[SMSServer]:
    server = SMSServer(tmp_path)
    yield server
    server.close()


def test_sms_password_to_the_recipients_phone(gateway: Gateway, readers: PDFReaders,  # noqa: F811
                                              sms_server: SMSServer) -> None:
    gateway.settings("global", encrypt_mode="mandatory", pdf_enabled=True,
                     pdf_password_mode="sms", sms_gateway_url=f"{sms_server.url}/v1/messages",
                     sms_gateway_method="post_json",
                     sms_gateway_body='{"to": [{phone}], "body": {text}, "from": "Example"}',
                     sms_gateway_credential="sms-api-key", sms_gateway_ca=sms_server.ca_pem)
    gateway.settings("users/dave@partner.example", sms_phone="+31 6 1234 5678")
    shown = api(gateway.appliance, "GET", "/settings/global")["properties"]
    assert shown["sms_gateway_credential"]["value"] is None  # write-only
    queue_id = gateway.send("dave@partner.example")
    (mail,) = gateway.sink.wait_for(1)  # the PDF, and no notice to the sender
    assert mail.recipients == ["dave@partner.example"]
    assert "sent to your mobile phone" in text_of(mail.content)
    (request,) = sms_server.requests
    assert (request.method, request.path) == ("POST", "/v1/messages")
    assert request.headers["authorization"] == "Bearer sms-api-key"
    sent = json.loads(request.body)
    assert sent["to"] == ["+31612345678"] and sent["from"] == "Example"
    found = re.fullmatch(r"Password for the encrypted PDF from alice@example.org: (\S+)",
                         sent["body"])
    assert found is not None
    password = found.group(1)
    assert readers.attachments(pdf_of(mail.content), password) == {"data.bin": ATTACHMENT}
    gateway.log("mpa", f"{queue_id}: PDF encrypted (AES-256, random password sent by SMS); "
                       "Recipient: dave@partner.example")

    # The gateway refuses: no PDF goes out; webmail is not set up, so the
    # sender hears why.
    sms_server.status = 503
    queue_id = gateway.send("dave@partner.example")
    (notice,) = gateway.sink.wait_for(2)[1:]
    assert notice.recipients == ["alice@example.org"]
    assert ("the PDF password could not be sent by SMS: the SMS gateway 127.0.0.1 answered "
            "HTTP 503") in notice.content.decode()
    gateway.log("mpa", f"{queue_id}: the PDF is not sent: the PDF password could not be sent "
                       "by SMS")
    for log in ("mpa", "mta"):
        text = log_text(gateway, log)
        assert password not in text and "sms-api-key" not in text
