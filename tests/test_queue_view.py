"""
The queue in the admin pages and the API: found by queue id, address or
subject; one message's envelope and header, its content only on request
and audited; hold, release, deliver now and delete for a selection.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from cipherd.core.envelope import Envelope
from cipherd.smtp.spool import new_queue_id
from cipherd.testing import result_of
from cipherd.web import queue_view
from tests.harness import GOOD_PASSWORD, AdminHarness
from tests.test_queue_runner import World

CHANGED = ("admin", GOOD_PASSWORD)
BODY = b"the body nobody should read by accident"


def content(subject: bytes) -> bytes:
    return (b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: " + subject
            + b"\r\nX-Long: one\r\n two\r\n\r\n" + BODY + b"\r\n")


@pytest.fixture
def admin(admin_in: AdminHarness) -> AdminHarness:
    return admin_in


def enqueue(admin: AdminHarness, sender: str, recipients: tuple[str, ...],
            subject: bytes) -> str:
    admin.clock.advance(1)  # the list is oldest first
    envelope = Envelope(new_queue_id(), sender, recipients, admin.clock.seconds(),
                        client="client.example.org[192.0.2.7]")
    return result_of(admin.queue.store(envelope, content(subject))).envelope.queue_id


def api(admin: AdminHarness, method: str, path: str, body: Any = None) -> Any:
    return admin.request(method, "/api/v1" + path, auth=CHANGED,
                         data=None if body is None else json.dumps(body).encode(),
                         headers={"Content-Type": "application/json"})


def ids_on(page: str) -> list[str]:
    return re.findall(r'name="id" value="([0-9A-F]{12})"', page)


def test_messages_are_found_by_id_address_or_subject(admin: AdminHarness) -> None:
    first = enqueue(admin, "alice@example.org", ("bob@example.com",), b"Quarterly report")
    second = enqueue(admin, "carol@example.org", ("dave@partner.example",),
                     b"=?utf-8?q?Gr=C3=BC=C3=9Fe?=")
    assert ids_on(admin.get("/mta/queue").text) == [first, second]
    assert ids_on(admin.get("/mta/queue?q=DAVE@").text) == [second]
    assert ids_on(admin.get(f"/mta/queue?q={first.lower()}").text) == [first]
    assert ids_on(admin.get("/mta/queue?q=quarterly").text) == [first]
    # The subject as decoded from its encoded words.
    assert ids_on(admin.get("/mta/queue?q=Gr%C3%BC%C3%9F").text) == [second]
    assert "No queued message matches." in admin.get("/mta/queue?q=nothing").text
    found = api(admin, "GET", "/queue?q=report").json()["messages"]
    assert [m["id"] for m in found] == [first]


def test_one_message_shows_its_envelope_and_header_and_the_body_only_when_asked(
        admin: AdminHarness) -> None:
    queue_id = enqueue(admin, "alice@example.org", ("bob@example.com",),
                       b"=?utf-8?q?Gr=C3=BC=C3=9Fe?=")
    page = admin.get(f"/mta/queue/{queue_id}")
    assert page.code == 200
    assert "client.example.org[192.0.2.7]" in page.text
    assert "Grüße" in page.text and "one two" in page.text
    assert BODY.decode() not in page.text
    assert api(admin, "GET", "/audit?action=queue").json()["entries"] == []
    shown = admin.post_form(f"/mta/queue/{queue_id}/content", {},
                            csrf=admin.csrf_from(page))
    assert shown.code == 200 and BODY.decode() in shown.text
    (entry,) = api(admin, "GET", "/audit?action=queue").json()["entries"]
    assert entry["summary"] == f"showed the content of {queue_id}"
    detail = api(admin, "GET", f"/queue/{queue_id}").json()
    assert detail["client"] == "client.example.org[192.0.2.7]"
    assert {"name": "Subject", "value": "Grüße"} in detail["headers"]
    assert BODY.decode() not in json.dumps(detail)
    raw = api(admin, "GET", f"/queue/{queue_id}/content")
    assert raw.code == 200 and raw.body == content(b"=?utf-8?q?Gr=C3=BC=C3=9Fe?=")
    assert len(api(admin, "GET", "/audit?action=queue").json()["entries"]) == 2
    assert admin.get("/mta/queue/0123456789AB").code == 404
    assert api(admin, "GET", "/queue/0123456789AB").code == 404


def test_a_selection_is_held_released_and_deleted(admin: AdminHarness) -> None:
    ids = [enqueue(admin, "alice@example.org", (f"r{n}@example.com",), b"x") for n in range(3)]
    page = admin.get("/mta/queue")
    csrf = admin.csrf_from(page)
    held = admin.post_form("/mta/queue/bulk", [("action", "hold"), ("id", ids[0]),
                                               ("id", ids[1]), ("id", "not-an-id")], csrf=csrf)
    assert held.header("location") == "/mta/queue?done=bulk-hold&count=2&q="
    states = {m.envelope.queue_id: m.state for m in result_of(admin.queue.messages())}
    assert states == {ids[0]: "hold", ids[1]: "hold", ids[2]: "active"}
    assert "2 messages were put on hold." in admin.get(
        "/mta/queue?done=bulk-hold&count=2").text
    answer = api(admin, "POST", "/queue/actions", {"action": "release", "ids": [ids[0]]})
    assert answer.json() == {"done": [ids[0]], "not_done": []}
    gone = api(admin, "POST", "/queue/actions", {"action": "delete", "ids": [ids[1], ids[2]]})
    assert gone.json()["done"] == [ids[1], ids[2]]
    assert [m.envelope.queue_id for m in result_of(admin.queue.messages())] == [ids[0]]
    summaries = [e["summary"] for e in api(admin, "GET", "/audit?action=queue").json()[
        "entries"]]
    assert summaries == [f"deleted {ids[1]}, {ids[2]}", f"released {ids[0]}",
                         f"held {ids[0]}, {ids[1]}"]
    # This admin site delivers nothing (no queue runner): deliver now is not done.
    assert api(admin, "POST", "/queue/actions", {"action": "deliver", "ids": [ids[0]]}).json()[
        "not_done"] == [ids[0]]
    refused = api(admin, "POST", "/queue/actions", {"action": "burn", "ids": ["x"]})
    assert refused.code == 400 and set(refused.json()["errors"]) == {"action", "ids"}
    assert admin.post_form("/mta/queue/bulk", [("action", "hold"), ("id", ids[0])],
                           csrf=None).code == 403


def test_deliver_now_tries_a_deferred_message_before_its_time(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.network.up = False
    queue_id = world.enqueue()
    world.scan()
    (deferred,) = world.spool.messages()
    assert deferred.state == "deferred" and deferred.envelope.attempts == 1
    world.network.up = True
    done = result_of(queue_view.act(world.queue, world.runner, "deliver", [queue_id]))
    assert done == [queue_id]
    assert world.spool.messages() == [] and len(world.network.queued) == 1
    # A held message is not delivered.
    held = world.enqueue()
    result_of(world.queue.hold(held))
    assert result_of(queue_view.act(world.queue, world.runner, "deliver", [held])) == []


def test_header_fields_survive_what_strangers_write() -> None:
    fields = queue_view.header_fields(b"Subject: =?bogus?q?x?=\r\nX: \xff\xfe\r\n\r\nbody")
    assert fields[0][0] == "Subject" and fields[1][0] == "X"
    assert queue_view.header_fields(b"no header at all") == []
