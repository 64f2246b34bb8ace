"""
The MTA of a running appliance, with swaks as the client over a real
socket: STARTTLS, the queue before the 250, the relay rule as configured
through the API, and a kill -9 after the 250.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.request
from typing import Any

import pytest

from cipherd.smtp.spool import DirectorySpool
from tests.conftest import Appliance, insecure_tls
from tests.peers import require_tool, run

pytestmark = pytest.mark.e2e

NEW_PASSWORD = "purple-otter-canvas-91"
# Lines that begin with dots, 8-bit text, a long line: all must arrive as sent.
MESSAGE = (b"From: alice@example.org\r\nTo: bob@example.com\r\nSubject: queue test\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\n"
           b".\r\n..two\r\n. space\r\nGr\xc3\xbc\xc3\x9fe\r\n" + b"x" * 990 + b"\r\n")


def api(appliance: Appliance, method: str, path: str, body: Any = None,
        password: str = NEW_PASSWORD) -> Any:
    credentials = base64.b64encode(f"admin:{password}".encode()).decode()
    request = urllib.request.Request(
        f"{appliance.admin_url}/api/v1{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Basic {credentials}",
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(request, context=insecure_tls()) as response:
        return json.load(response)


def swaks(appliance: Appliance, *args: str, data: bytes = MESSAGE,
          check: bool = True) -> str:
    done = run([require_tool("swaks"), "--server", f"127.0.0.1:{appliance.smtp_port}",
                "--from", "alice@example.org", "--helo", "client.example.org",
                "--data", "-", *args],
               # swaks ends the data with CRLF . CRLF itself.
               stdin=data.removesuffix(b"\r\n"), check=check)
    return done.stdout.decode(errors="replace")


def queue_id_of(transcript: str) -> str:
    match = re.search(r"<[-~] +250 2\.0\.0 Ok: queued as ([0-9A-F]{12})", transcript)
    assert match, transcript
    return match.group(1)


def test_a_message_is_queued_byte_exact_over_starttls_and_survives_kill_9(
        appliance: Appliance) -> None:
    api(appliance, "POST", "/admin/password", {"password": NEW_PASSWORD}, password="admin")
    transcript = swaks(appliance, "--to", "bob@example.com", "--tls")
    assert " 220 2.0.0 Ready to start TLS" in transcript
    queue_id = queue_id_of(transcript)
    queued = api(appliance, "GET", "/queue")["messages"]
    assert [(m["id"], m["state"], m["sender"], m["recipients"]) for m in queued] == [
        (queue_id, "active", "alice@example.org", ["bob@example.com"])]

    # Killed after the 250, before any delivery: the message is still there.
    assert appliance.process is not None
    appliance.process.kill()
    appliance.process.wait()
    appliance.start()
    assert [m["id"] for m in api(appliance, "GET", "/queue")["messages"]] == [queue_id]
    _, content = DirectorySpool(appliance.data_dir / "spool").load(queue_id)
    header_end = content.index(MESSAGE[:20])
    assert content[header_end:] == MESSAGE
    assert content.startswith(b"Received: from client.example.org (unknown[127.0.0.1])")
    assert b"with ESMTPS id " + queue_id.encode() in content[:header_end]

    assert api(appliance, "DELETE", f"/queue/{queue_id}") == {
        "status": f"{queue_id} was deleted."}
    assert api(appliance, "GET", "/queue")["messages"] == []


def test_relay_access_denied_as_configured_through_the_api(appliance: Appliance) -> None:
    api(appliance, "POST", "/admin/password", {"password": NEW_PASSWORD}, password="admin")
    config = api(appliance, "PATCH", "/mta", {"my_networks": [], "relay_domains": [
        "example.com"]})
    assert config["my_networks"] == [] and config["relay_domains"] == ["example.com"]
    refused = swaks(appliance, "--to", "victim@elsewhere.test", check=False)
    assert "<** 454 4.7.1 <victim@elsewhere.test>: Relay access denied" in refused
    accepted = swaks(appliance, "--to", "bob@sub.example.com", check=False)
    assert "<** 454 4.7.1 <bob@sub.example.com>: Relay access denied" in accepted
    api(appliance, "PATCH", "/mta", {"match_subdomains": True})
    queue_id_of(swaks(appliance, "--to", "bob@sub.example.com"))
    log = (appliance.data_dir / "logs" / "mta.log").read_text()
    assert ("NOQUEUE: reject: RCPT from unknown[127.0.0.1]: 454 4.7.1 "
            "<victim@elsewhere.test>: Relay access denied; from=<alice@example.org> "
            "to=<victim@elsewhere.test> proto=ESMTP helo=<client.example.org>") in log


def test_bad_mta_values_are_all_reported_and_nothing_changes(appliance: Appliance) -> None:
    api(appliance, "POST", "/admin/password", {"password": NEW_PASSWORD}, password="admin")
    before = api(appliance, "GET", "/mta")
    request = urllib.request.Request(
        f"{appliance.admin_url}/api/v1/mta", method="PATCH",
        data=json.dumps({"relay_domains": ["not a domain"], "my_networks": ["10.0.0.0/33"],
                         "internal_relay_host": "[127.0.0.1]:99999", "bogus": 1}).encode(),
        headers={"Authorization": "Basic " + base64.b64encode(
            f"admin:{NEW_PASSWORD}".encode()).decode(), "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, context=insecure_tls())
        raise AssertionError("accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 400
        errors = json.load(e)["errors"]
    assert sorted(errors) == ["bogus", "internal_relay_host", "my_networks", "relay_domains"]
    assert errors["internal_relay_host"] == "the port 99999 is not between 1 and 65535"
    assert api(appliance, "GET", "/mta") == before


def test_the_mta_log_names_the_queue_id(appliance: Appliance) -> None:
    api(appliance, "POST", "/admin/password", {"password": NEW_PASSWORD}, password="admin")
    queue_id = queue_id_of(swaks(appliance, "--to", "bob@example.com"))
    log = (appliance.data_dir / "logs" / "mta.log").read_text()
    assert f"{queue_id}: client=unknown[127.0.0.1]" in log
    assert re.search(rf"{queue_id}: from=<alice@example.org>, size=\d+, nrcpt=1 "
                     r"\(queue active\)", log), log
