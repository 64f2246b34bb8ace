"""
The MTA of a running appliance, with swaks as the client over a real
socket: STARTTLS, the queue before the 250, the relay rule as configured
through the API, and a kill -9 after the 250.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from cipherd.smtp.spool import DirectorySpool
from tests.conftest import Appliance, api_call, free_port
from tests.dns_server import DNSServer
from tests.peers import require_tool, run
from tests.postfix import Postfix
from tests.sink import Sink

pytestmark = pytest.mark.e2e

NEW_PASSWORD = "purple-otter-canvas-91"
# Lines that begin with dots, 8-bit text, a long line: all must arrive as sent.
MESSAGE = (b"From: alice@example.org\r\nTo: bob@example.com\r\nSubject: queue test\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\n"
           b".\r\n..two\r\n. space\r\nGr\xc3\xbc\xc3\x9fe\r\n" + b"x" * 990 + b"\r\n")


def api(appliance: Appliance, method: str, path: str, body: Any = None,
        password: str = NEW_PASSWORD, raw: bytes | None = None) -> Any:
    """
    An API call that must succeed: its answer.
    """
    status, answer = api_call(appliance, method, path, body, password=password, raw=raw)
    assert status < 300, (method, path, status, answer)
    return answer


def api_refusal(appliance: Appliance, method: str, path: str, body: Any) -> dict[str, str]:
    """
    The field errors of a request the API must refuse with 400.
    """
    status, answer = api_call(appliance, method, path, body, password=NEW_PASSWORD)
    assert status == 400, (method, path, status, answer)
    errors: dict[str, str] = answer["errors"]
    return errors


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
    # The next hop is down: the messages stay in the queue.
    port = free_port()
    api(appliance, "PATCH", "/mta", {"transports": [
        {"domain": "example.com", "host": "[127.0.0.1]", "port": port}]})
    transcript = swaks(appliance, "--to", "bob@example.com", "--tls")
    assert " 220 2.0.0 Ready to start TLS" in transcript
    queue_id = queue_id_of(transcript)
    other = queue_id_of(swaks(appliance, "--to", "carol@example.com"))
    queued = api(appliance, "GET", "/queue")["messages"]
    assert sorted((m["id"], m["sender"], tuple(m["recipients"])) for m in queued) == sorted([
        (queue_id, "alice@example.org", ("bob@example.com",)),
        (other, "alice@example.org", ("carol@example.com",))])

    # Killed after the 250, before any delivery: the messages are still there.
    assert appliance.process is not None
    appliance.process.kill()
    appliance.process.wait()
    appliance.start()
    assert sorted(m["id"] for m in api(appliance, "GET", "/queue")["messages"]) == sorted(
        [queue_id, other])
    _, content = DirectorySpool(appliance.data_dir / "spool").load(queue_id)
    header_end = content.index(MESSAGE[:20])
    assert content[header_end:] == MESSAGE
    assert content.startswith(b"Received: from client.example.org (unknown[127.0.0.1])")
    assert b"with ESMTPS id " + queue_id.encode() in content[:header_end]

    assert api(appliance, "DELETE", f"/queue/{other}") == {"status": f"{other} was deleted."}
    sink = Sink(port)  # the next hop is back
    try:
        api(appliance, "POST", "/queue/flush")
        (captured,) = sink.wait_for(1)
        assert captured.content == content
        _wait_for_log(appliance, f"{queue_id}: removed")
        assert api(appliance, "GET", "/queue")["messages"] == []
    finally:
        sink.close()


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
    log = _wait_for_log(appliance, "<victim@elsewhere.test>: Relay access denied;")
    assert ("NOQUEUE: reject: RCPT from unknown[127.0.0.1]: 454 4.7.1 "
            "<victim@elsewhere.test>: Relay access denied; from=<alice@example.org> "
            "to=<victim@elsewhere.test> proto=ESMTP helo=<client.example.org>") in log


def test_bad_mta_values_are_all_reported_and_nothing_changes(appliance: Appliance) -> None:
    api(appliance, "POST", "/admin/password", {"password": NEW_PASSWORD}, password="admin")
    before = api(appliance, "GET", "/mta")
    errors = api_refusal(appliance, "PATCH", "/mta", {
        "relay_domains": ["not a domain"], "my_networks": ["10.0.0.0/33"],
        "internal_relay_host": "[127.0.0.1]:99999", "bogus": 1})
    assert sorted(errors) == ["bogus", "internal_relay_host", "my_networks", "relay_domains"]
    assert errors["internal_relay_host"] == "the port 99999 is not between 1 and 65535"
    assert api(appliance, "GET", "/mta") == before


def test_the_mta_log_names_the_queue_id(appliance: Appliance) -> None:
    api(appliance, "POST", "/admin/password", {"password": NEW_PASSWORD}, password="admin")
    queue_id = queue_id_of(swaks(appliance, "--to", "bob@example.com"))
    # The line is written once the message is queued, which may follow the 250 reply.
    log = _wait_for_log(appliance, f"{queue_id}: from=<alice@example.org>")
    assert f"{queue_id}: client=unknown[127.0.0.1]" in log
    assert re.search(rf"{queue_id}: from=<alice@example.org>, size=\d+, nrcpt=1 "
                     r"\(queue active\)", log), log


def _wait_for_log(appliance: Appliance, text: str, timeout: float = 15.0) -> str:
    return appliance.wait_for_log("mta", text, timeout)


def test_delivered_byte_exact_through_a_transport(appliance: Appliance) -> None:
    sink = Sink()
    try:
        api(appliance, "POST", "/admin/password", {"password": NEW_PASSWORD}, password="admin")
        api(appliance, "PATCH", "/mta", {"transports": [
            {"domain": "example.com", "host": "[127.0.0.1]", "port": sink.port}]})
        queue_id = queue_id_of(swaks(appliance, "--to", "bob@example.com"))
        (captured,) = sink.wait_for(1)
        assert (captured.sender, captured.recipients) == ("alice@example.org",
                                                          ["bob@example.com"])
        assert captured.content[captured.content.index(MESSAGE[:20]):] == MESSAGE
        assert captured.content.startswith(b"Received: from client.example.org")
        log = _wait_for_log(appliance, f"{queue_id}: removed")
        assert re.search(rf"{queue_id}: to=<bob@example.com>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
                         rf"{sink.port}, delay=[0-9.e-]+, delays=[0-9.e/-]+, dsn=2\.0\.0, "
                         r"status=sent \(250 2\.0\.0 Ok: captured\)", log), log
        assert api(appliance, "GET", "/queue")["messages"] == []
    finally:
        sink.close()


def test_next_hop_down_is_deferred_with_postfix_words_then_flushed(
        appliance: Appliance) -> None:
    port = free_port()
    api(appliance, "POST", "/admin/password", {"password": NEW_PASSWORD}, password="admin")
    api(appliance, "PATCH", "/mta", {"transports": [
        {"domain": "example.com", "host": "[127.0.0.1]", "port": port}]})
    queue_id = queue_id_of(swaks(appliance, "--to", "bob@example.com"))
    _wait_for_log(appliance, f"{queue_id}: to=<bob@example.com>, relay=none")
    log = _wait_for_log(appliance, f"connect to 127.0.0.1[127.0.0.1]:{port}: Connection refused")
    assert "status=deferred" in log
    (queued,) = api(appliance, "GET", "/queue")["messages"]
    assert queued["state"] == "deferred" and "Connection refused" in queued["reason"]
    sink = Sink(port)
    try:
        assert api(appliance, "POST", "/queue/flush")["status"].startswith("Delivery of every")
        sink.wait_for(1)
        _wait_for_log(appliance, f"{queue_id}: removed")
    finally:
        sink.close()


def test_a_remote_refusal_is_logged_as_the_guide_shows_it(appliance: Appliance) -> None:
    sink = Sink()
    sink.state.rcpt_reply = b"454 4.7.1 <bob@example.com>: Relay access denied"
    try:
        api(appliance, "POST", "/admin/password", {"password": NEW_PASSWORD}, password="admin")
        api(appliance, "PATCH", "/mta", {"transports": [
            {"domain": "example.com", "host": "[127.0.0.1]", "port": sink.port}]})
        queue_id = queue_id_of(swaks(appliance, "--to", "bob@example.com"))
        _wait_for_log(appliance, (
            f"{queue_id}: to=<bob@example.com>, relay=127.0.0.1[127.0.0.1]:{sink.port}"))
        _wait_for_log(appliance, (
            "dsn=4.7.1, status=deferred (host 127.0.0.1[127.0.0.1] said: 454 4.7.1 "
            "<bob@example.com>: Relay access denied (in reply to RCPT TO command))"))
    finally:
        sink.close()


def test_no_transport_for_webmail_local_bounces_as_the_guide_shows(
        appliance: Appliance) -> None:
    """
    Guide, Troubleshooting, "The tunnel message was bounced by the gateway":
    without an SMTP transport for webmail.local its MX is looked up, through
    the appliance's DNS servers (a real one here, that knows no such name).
    """
    sink = Sink()
    dns_server = DNSServer("127.83.0.53")
    try:
        api(appliance, "POST", "/admin/password", {"password": NEW_PASSWORD}, password="admin")
        api(appliance, "PATCH", "/mta", {"dns_servers": [dns_server.address], "transports": [
            {"domain": "example.org", "host": "[127.0.0.1]", "port": sink.port}]})
        queue_id = queue_id_of(swaks(appliance, "--to", "webmail@webmail.local",
                                     "--from", "webmail-sender@example.org"))
        log = _wait_for_log(appliance, f"{queue_id}: to=<webmail@webmail.local>")
        assert re.search(
            rf"{queue_id}: to=<webmail@webmail\.local>, relay=none, delay=[0-9.]+, "
            r"delays=[0-9.]+/0/0/[0-9.]+, dsn=5\.4\.4, status=bounced \(Host or domain name "
            r"not found\. Name service error for name=webmail\.local type=AAAA: Host not "
            r"found\)", log), log
        (bounce,) = sink.wait_for(1)
        assert (bounce.sender, bounce.recipients) == ("", ["webmail-sender@example.org"])
        assert (b"<webmail@webmail.local>: Host or domain name not found. Name service error "
                b"for name=webmail.local type=AAAA: Host not found") in bounce.content
        assert {("webmail.local", "MX"), ("webmail.local", "A"),
                ("webmail.local", "AAAA")} <= set(dns_server.asked)
    finally:
        dns_server.close()
        sink.close()


def test_reject_unverified_recipient_asks_the_next_hop_first(appliance: Appliance) -> None:
    sink = Sink()
    unknown = b"550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown"
    sink.state.rcpt_replies["nobody@example.com"] = unknown
    try:
        api(appliance, "POST", "/admin/password", {"password": NEW_PASSWORD}, password="admin")
        # swaks connects from 127.0.0.1: outside my networks it is verified.
        api(appliance, "PATCH", "/mta", {
            "my_networks": ["192.0.2.0/24"], "relay_domains": ["example.com"],
            "reject_unverified_recipient": True, "reject_unverified_code": 550,
            "transports": [{"domain": "example.com", "host": "[127.0.0.1]",
                            "port": sink.port}]})
        refused = swaks(appliance, "--to", "nobody@example.com", check=False)
        said = (f"host 127.0.0.1[127.0.0.1] said: {unknown.decode()} (in reply to RCPT TO "
                "command)")
        assert (f"<** 550 5.1.1 <nobody@example.com>: Recipient address rejected: "
                f"undeliverable address: {said}") in refused, refused
        queue_id_of(swaks(appliance, "--to", "bob@example.com"))
        (captured,) = sink.wait_for(1)
        assert captured.recipients == ["bob@example.com"]
        # One probe each, then the message itself; the second asks nobody.
        swaks(appliance, "--to", "nobody@example.com", check=False)
        sink.wait_for(1)
        log = _wait_for_log(appliance, "verify: to=<bob@example.com>")
        assert (f"verify: to=<nobody@example.com>, relay=127.0.0.1[127.0.0.1]:{sink.port}, "
                f"dsn=5.1.1, status=undeliverable ({said})") in log
        assert "NOQUEUE: reject: RCPT from unknown[127.0.0.1]: 550 5.1.1" in log
        assert sorted(sink.state.asked) == ["bob@example.com", "bob@example.com",
                                            "nobody@example.com"]
    finally:
        sink.close()


def test_delivery_to_ourselves_is_a_loop_and_bounces(appliance: Appliance) -> None:
    sink = Sink()
    try:
        api(appliance, "POST", "/admin/password", {"password": NEW_PASSWORD}, password="admin")
        api(appliance, "PATCH", "/mta", {"transports": [
            {"domain": "example.com", "host": "[127.0.0.1]", "port": appliance.smtp_port},
            {"domain": "example.org", "host": "[127.0.0.1]", "port": sink.port}]})
        queue_id = queue_id_of(swaks(appliance, "--to", "bob@example.com"))
        _wait_for_log(appliance, f"mail for [127.0.0.1]:{appliance.smtp_port} loops back to "
                                 "myself")
        (bounce,) = sink.wait_for(1)
        assert (bounce.sender, bounce.recipients) == ("", ["alice@example.org"])
        assert b"Subject: Undelivered Mail Returned to Sender" in bounce.content
        assert b"Status: 5.4.6" in bounce.content
        _wait_for_log(appliance, f"{queue_id}: sender non-delivery notification")
    finally:
        sink.close()


def test_send_email_tool_delivers_a_well_formed_message(appliance: Appliance) -> None:
    sink = Sink()
    try:
        api(appliance, "POST", "/admin/password", {"password": NEW_PASSWORD}, password="admin")
        api(appliance, "PATCH", "/mta", {"transports": [
            {"domain": "example.com", "host": "[127.0.0.1]", "port": sink.port}]})
        sent = api(appliance, "POST", "/send-email", {
            "from": "postmaster@example.org", "to": ["bob@example.com"],
            "subject": "Test from cipherd", "body": "Hello\n.\nBye"})
        (captured,) = sink.wait_for(1)
        assert (captured.sender, captured.recipients) == ("postmaster@example.org",
                                                          ["bob@example.com"])
        assert b"Subject: Test from cipherd\r\n" in captured.content
        assert captured.content.endswith(b"\r\n\r\nHello\r\n.\r\nBye\r\n")
        _wait_for_log(appliance, f"{sent['queue_id']}: removed")
        assert api_refusal(appliance, "POST", "/send-email", {
            "from": "a@example.org", "to": "b@example.com",
            "subject": "x\r\nBcc: victim@example.net"}) == {
            "subject": "the subject must be one line"}
    finally:
        sink.close()


def test_a_real_postfix_relays_into_cipherd_and_cipherd_into_a_real_postfix(
        appliance: Appliance) -> None:
    """
    swaks → Postfix → cipherd → Postfix → capturing sink: each hop is a real
    MTA, and the body arrives as sent.
    """
    sink = Sink()
    outer = Postfix(free_port(), appliance.smtp_port, hostname="outer.postfix.test")
    inner = Postfix(free_port(), sink.port, hostname="inner.postfix.test")
    outer.start()
    inner.start()
    try:
        api(appliance, "POST", "/admin/password", {"password": NEW_PASSWORD}, password="admin")
        api(appliance, "PATCH", "/mta", {"transports": [
            {"domain": "example.com", "host": "[127.0.0.1]", "port": inner.port}]})
        run([require_tool("swaks"), "--server", f"127.0.0.1:{outer.port}",
             "--from", "alice@example.org", "--to", "bob@example.com", "--helo", "client.test",
             "--data", "-"], stdin=MESSAGE.removesuffix(b"\r\n"))
        (captured,) = sink.wait_for(1, timeout=30)
        assert (captured.sender, captured.recipients) == ("alice@example.org",
                                                          ["bob@example.com"])
        body = MESSAGE[MESSAGE.index(b"\r\n\r\n"):]
        assert captured.content.endswith(body)
        received = [line for line in captured.content.split(b"\r\n")
                    if line.startswith(b"Received: ")]
        assert len(received) == 3  # inner Postfix, cipherd, outer Postfix
        assert b"(cipherd) with ESMTP id" in captured.content
        assert re.search(r"status=sent \(250 2\.0\.0 Ok: queued as [0-9A-F]{12}\)",
                         outer.log()), outer.log()
        assert f"relay=127.0.0.1[127.0.0.1]:{appliance.smtp_port}" in outer.log()
        log = _wait_for_log(appliance, "removed")
        assert re.search(rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{inner.port}, .*status=sent "
                         r"\(250 2\.0\.0 Ok: queued as [0-9A-F]+\)", log), log
    finally:
        outer.stop()
        inner.stop()
        sink.close()
