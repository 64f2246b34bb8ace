"""
DLP in a running appliance, mail sent with swaks and captured at a sink:
a valid card number in a PDF attachment, a DOCX, a zipped CSV and the HTML
body each hits the rule; a number failing the Luhn check does not; a zip
bomb and a password-protected zip are reported as such; a quarantined
message released arrives unchanged; block bounces naming the rule only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests import dlp_samples as samples
from tests.conftest import Appliance
from tests.peers import require_tool, run
from tests.sink import Sink
from tests.test_mta_appliance import NEW_PASSWORD, api

pytestmark = pytest.mark.e2e

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


@pytest.fixture
def gateway(appliance: Appliance) -> Iterator[tuple[Appliance, Sink]]:
    sink = Sink()
    try:
        api(appliance, "POST", "/admin/password", {"password": NEW_PASSWORD},
            password="admin")
        api(appliance, "PATCH", "/mta", {"relay_domains": ["example.com"], "transports": [
            {"domain": domain, "host": "[127.0.0.1]", "port": sink.port}
            for domain in ("example.com", "partner.example")]})
        api(appliance, "POST", "/dlp/patterns/builtin", {"names": ["credit-card"]})
        api(appliance, "POST", "/dlp/patterns", {
            "name": "credit-card", "regex": r"\b(?:\d[ -]?){12,18}\d\b", "validator": "luhn",
            "action": "quarantine"})
        api(appliance, "PATCH", "/settings/global", {
            "dlp_enabled": True, "dlp_unscannable_action": "quarantine",
            "dlp_bomb_action": "quarantine", "dlp_manager": "dlp-manager@example.com"})
        yield appliance, sink
    finally:
        sink.close()


def send(appliance: Appliance, content: bytes) -> None:
    run([require_tool("swaks"), "--server", f"127.0.0.1:{appliance.smtp_port}",
         "--from", "alice@example.com", "--to", "bob@partner.example",
         "--helo", "client.example.com", "--data", "-"], stdin=content.removesuffix(b"\r\n"))


def quarantine(appliance: Appliance, count: int, timeout: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages: list[dict] = api(appliance, "GET", "/dlp/quarantine")["messages"]
        if len(messages) >= count:
            return messages
        time.sleep(0.2)
    raise AssertionError(f"the quarantine has {len(messages)} of {count} messages")


def test_dlp_end_to_end(gateway: tuple[Appliance, Sink]) -> None:
    appliance, sink = gateway
    cases = {
        "pdf": samples.message(subject="pdf", attachments=[
            ("invoice.pdf", "application/pdf", samples.pdf(f"Card {samples.CARD}"))]),
        "docx": samples.message(subject="docx", attachments=[
            ("letter.docx", DOCX, samples.docx(["Card 4111 1111 ", "1111 1111"]))]),
        "csv": samples.message(subject="csv", attachments=[
            ("export.zip", "application/zip",
             samples.zipped({"cards.csv": f"name,card\nA,{samples.CARD}\n".encode()}))]),
        "html": samples.message(subject="html", html=f"<p>Card <b>{samples.CARD}</b></p>"),
        "bomb": samples.message(subject="bomb", attachments=[
            ("bomb.zip", "application/zip", samples.zip_bomb())]),
        "locked": samples.message(subject="locked", attachments=[
            ("locked.zip", "application/zip", samples.encrypted_zip())]),
    }
    for content in cases.values():
        send(appliance, content)
    held = {m["subject"]: m for m in quarantine(appliance, len(cases))}
    for subject in ("pdf", "docx", "csv", "html"):
        findings = held[subject]["findings"]
        assert [f["rule"] for f in findings] == ["credit-card"], (subject, findings)
        assert "1111" in findings[0]["excerpt"] and samples.CARD not in str(findings)
    assert held["pdf"]["findings"][0]["where"] == ["attachment invoice.pdf"]
    assert held["csv"]["findings"][0]["where"] == ["attachment export.zip/cards.csv"]
    assert [f["rule"] for f in held["bomb"]["findings"]] == ["zip-bomb"]
    assert held["locked"]["findings"][0]["rule"] == "unscannable"
    assert held["locked"]["findings"][0]["excerpt"] == "the archive is password-protected"

    # The sender and the DLP manager were told; nothing reached bob.
    told = sink.wait_for(2 * len(cases))
    assert not any("bob@partner.example" in c.recipients for c in told)

    # A number that fails the Luhn check is no card number: delivered.
    send(appliance, samples.message(subject="order", text=f"Order {samples.NOT_A_CARD}"))
    delivered = sink.wait_for(2 * len(cases) + 1)[-1]
    assert delivered.recipients == ["bob@partner.example"]
    assert samples.NOT_A_CARD.encode() in delivered.content

    # Released: delivered unchanged (below the Received field we add).
    released = api(appliance, "POST", f"/dlp/quarantine/{held['pdf']['id']}/release")
    assert released["id"] == held["pdf"]["id"]
    arrived = sink.wait_for(2 * len(cases) + 2)[-1]
    assert arrived.recipients == ["bob@partner.example"]
    assert arrived.content.endswith(cases["pdf"]) and b"X-Cipherd-DLP" not in arrived.content
    assert len(api(appliance, "GET", "/dlp/quarantine")["messages"]) == len(cases) - 1

    # Block: a bounce to the sender naming the rule, not the number.
    api(appliance, "POST", "/dlp/patterns", {
        "name": "credit-card", "regex": r"\b(?:\d[ -]?){12,18}\d\b", "validator": "luhn",
        "action": "block"})
    time.sleep(1.1)  # the patterns a worker keeps are a second old at most
    send(appliance, cases["html"])
    messages = sink.wait_for(2 * len(cases) + 4)
    bounce = next(c for c in messages[-2:] if c.recipients == ["alice@example.com"])
    assert b"blocked by the DLP rule credit-card" in bounce.content
    assert samples.CARD.encode() not in bounce.content
    assert samples.CARD.replace(" ", "").encode() not in bounce.content
    appliance.wait_for_log("mta", "the message was blocked by the DLP rule credit-card")
