"""
The dashboard (the admin site's home page) through StubTreq: mail counted
by the services and stored per node and hour shown as totals, charts and a
table; the queue by state with its oldest message; what expires; the
tunnel's marks; the last errors; the disk and the database.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Connection

from cipherd.core.counters import (
    DEFERRED,
    DELIVERED,
    DELIVERY_DELAY,
    HOUR,
    METHOD,
    RECEIVED,
    RECEIVED_TLS,
    RELAY_FAILURE,
    TUNNEL_SENT,
)
from cipherd.core.envelope import Envelope
from cipherd.smtp.spool import new_queue_id
from cipherd.store import Store
from cipherd.store.pgpkeys import expiring_keys
from cipherd.store.schema import pgp_keys
from cipherd.testing import migrated_store, result_of
from cipherd.web.dashboard import _nice_top, hourly_chart
from tests.harness import GOOD_PASSWORD, AdminHarness
from tests.pki_factory import make_ca, make_user

T = TypeVar("T")


@pytest.fixture
def admin(admin_in: AdminHarness) -> AdminHarness:
    return admin_in


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_an_idle_appliance_says_so(admin: AdminHarness) -> None:
    page = admin.get("/")
    assert page.code == 200
    text = text_of(page.text)
    assert "Database Reachable" in text
    assert "50.0 GB free of 100.0 GB" in text
    assert "Queue: deferred 0 messages none waiting" in text
    assert "Received 0 messages" in text
    assert "Nothing of ours expires within 30 days." in text
    assert "Last tunnel message sent never" in text
    assert "No errors or warnings were logged." in text
    assert '<a href="/" aria-current="page">Dashboard</a>' in page.text


def test_counted_mail_is_shown_for_the_last_48_hours(admin: AdminHarness) -> None:
    counters, clock = admin.counters, admin.clock
    clock.advance(-50 * HOUR)
    counters.add(RECEIVED, 1000)  # more than 48 hours ago: not shown
    clock.advance(48 * HOUR)
    counters.add(RECEIVED, 7)
    counters.add(DELIVERED, 6)
    counters.add(METHOD + "smime", 4)
    clock.advance(2 * HOUR)
    counters.add(RECEIVED, 5)
    counters.add(DEFERRED, 2)
    counters.add(METHOD + "webmail", 3)
    counters.mark(TUNNEL_SENT, "webmail tunnel message ABC to <relay@webmail.local>")
    counters.mark(RELAY_FAILURE, "Q1 from <gw@example.com>: not signed")
    counters.error("cipherd.mpa.relay", "S/MIME decryption key not found; Queue id: Q2")
    result_of(admin.counts.store())
    page = admin.get("/")
    text = text_of(page.text)
    assert "Received 12 messages" in text
    assert "Delivered 6" in text and "Deferred 2" in text and "Bounced 0" in text
    assert "S/MIME 0 4" in text and "Webmail tunnel 3 3" in text
    assert "webmail tunnel message ABC" in text
    assert "S/MIME decryption key not found; Queue id: Q2" in text
    assert "node-1 · cipherd.mpa.relay" in text
    # The relay failure is recent: shown as a failure.
    assert re.search(r'<dd class="failure">[^<]*\(0 s ago', page.text)
    # Two charts, with the hour's bars titled for screen readers and mice.
    assert page.text.count('<svg class="chart"') == 2
    assert "received 12" in page.text  # the chart's description
    assert "UTC: received 7</title>" in page.text
    # The table of hours lists the two hours with mail, newest first.
    rows = re.findall(r"<tr><td>([^<]+)</td><td>(\d+)</td>", page.text)
    assert [count for _, count in rows] == ["5", "7"]


def test_the_queue_by_state_with_its_oldest_message(admin: AdminHarness) -> None:
    now = admin.clock.seconds()
    for age, state in ((3 * HOUR, "deferred"), (600, "deferred"), (30, "active")):
        stored = result_of(admin.queue.store(
            Envelope(new_queue_id(), "a@example.org", ("b@example.com",), now - age),
            b"Subject: x\r\n\r\nbody\r\n"))
        if state == "deferred":
            result_of(admin.queue.move(stored.envelope.queue_id, "deferred"))
    text = text_of(admin.get("/").text)
    assert "Queue: deferred 2 messages oldest 3 h" in text
    assert "Queue: active 1 message oldest 30 s" in text


def test_what_expires_soon_and_what_expired_while_still_the_only_one(
        admin: AdminHarness) -> None:
    now = datetime.fromtimestamp(admin.clock.seconds(), UTC)
    ca = make_ca("Dashboard CA", not_before=now - timedelta(days=400),
                 not_after=now + timedelta(days=3000))
    soon = make_user("soon@example.com", ca, not_before=now - timedelta(days=300),
                     not_after=now + timedelta(days=10))
    gone = make_user("gone@example.com", ca, not_before=now - timedelta(days=300),
                     not_after=now - timedelta(days=2))
    replaced = make_user("renewed@example.com", ca, not_before=now - timedelta(days=300),
                         not_after=now - timedelta(days=2))
    renewal = make_user("renewed@example.com", ca, not_before=now - timedelta(days=3),
                        not_after=now + timedelta(days=700))
    later = make_user("later@example.com", ca, not_before=now - timedelta(days=3),
                      not_after=now + timedelta(days=90))
    no_key = make_user("nokey@example.com", ca, not_before=now - timedelta(days=300),
                       not_after=now + timedelta(days=5))
    for identity in (soon, gone, replaced, renewal, later):
        result_of(admin.certificates.add_certificate(identity.cert, identity.key))
    result_of(admin.certificates.add_certificate(no_key.cert))
    old_root = make_ca("Old Root", not_before=now - timedelta(days=900),
                       not_after=now + timedelta(days=20))
    result_of(admin.certificates.add_certificate(old_root.cert, store="roots"))
    page = admin.get("/")
    rows = re.findall(r'<tr class="severity-(error|warning)">(.*?)</tr>', page.text, re.S)
    listed = [(severity, text_of(row)) for severity, row in rows]
    assert [severity for severity, _ in listed] == ["error", "warning", "warning"]
    assert "gone@example.com" in listed[0][1] and "Expired" in listed[0][1]
    assert "soon@example.com" in listed[1][1] and "Expires soon" in listed[1][1]
    assert "Root" in listed[2][1] and "Old Root" in listed[2][1]
    assert "renewed@example.com" not in page.text and "later@" not in page.text
    assert "nokey@" not in page.text
    # Each links to its certificate.
    assert re.search(r'href="/pki/certificates/[0-9a-f]{64}">Certificate with key', page.text)


def test_a_ca_made_here_that_expires_soon_is_said_once(admin: AdminHarness) -> None:
    made = result_of(admin.ca.create_root("CN=Short-lived CA", "ec-p256", 20,
                                          "http://pki.example.com/short.crl"))
    result_of(admin.ca.create_root("CN=Long-lived CA", "ec-p256", 3650,
                                   "http://pki.example.com/long.crl"))
    page = admin.get("/")
    rows = [text_of(row) for row in re.findall(
        r'<tr class="severity-warning">(.*?)</tr>', page.text, re.S)]
    assert len(rows) == 1 and "Certificate authority" in rows[0]
    assert "Short-lived CA" in rows[0]
    assert f'href="/ca/authorities/{made.id}"' in page.text
    assert "Long-lived CA" not in page.text


def test_pgp_keys_that_expire_are_found_if_ours_or_trusted() -> None:
    store = migrated_store()

    def add(fingerprint: str, expires: float | None, *, secret: bool, trusted: bool,
            revoked: bool = False) -> None:
        def insert(conn: Connection) -> None:
            conn.execute(pgp_keys.insert().values(
                fingerprint=fingerprint, public=b"p", secret=b"s" if secret else None,
                user_ids='["x <x@example.com>"]', created=0.0, expires=expires,
                revoked=revoked, trusted=trusted, source="admin", imported=0.0))
        result_of(_run(store, insert))

    add("a" * 40, 100.0, secret=True, trusted=False)
    add("b" * 40, 200.0, secret=False, trusted=True)
    add("c" * 40, 150.0, secret=False, trusted=False)  # neither ours nor trusted
    add("d" * 40, 120.0, secret=True, trusted=True, revoked=True)
    add("e" * 40, None, secret=True, trusted=True)  # never expires
    add("f" * 40, 900.0, secret=True, trusted=True)  # not soon
    found = result_of(_run(store, lambda conn: expiring_keys(conn, 500.0)))
    assert [k.fingerprint for k in found] == ["a" * 40, "b" * 40]


async def _run(store: Store, fn: Callable[[Connection], T]) -> T:
    return await store.run(fn)


def test_a_low_disk_is_said(admin: AdminHarness) -> None:
    admin.disk = (200 << 20, 100 << 30)
    text = text_of(admin.get("/").text)
    assert "0.2 GB free of 100.0 GB: low" in text


def test_chart_scale_and_escaping() -> None:
    assert [_nice_top(n) for n in (0, 3, 7, 12, 26, 99, 101, 999, 4100)] == [
        4, 4, 10, 20, 50, 100, 200, 1000, 5000]
    chart = str(hourly_chart('A <b>"chart"', [0, 1],
                             [("x<y", "received", [1, 0]), ("z", "delivered", [2, 3])]))
    assert "<b>" not in chart and "&lt;b&gt;" in chart and "x&lt;y" in chart
    assert chart.count("<rect") == 3


def scrape(admin: AdminHarness, **kwargs: object) -> dict[str, float]:
    answer = admin.request("GET", "/metrics", **kwargs)
    assert answer.code == 200, answer.text
    assert answer.header("content-type").startswith("text/plain; version=")
    found = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


def test_metrics_parse_and_move_when_mail_flows(admin: AdminHarness) -> None:
    auth = {"auth": ("admin", GOOD_PASSWORD)}
    before = scrape(admin, **auth)
    assert before["cipherd_messages_received_total{tls=true}"] == 0
    assert before["cipherd_node_info{node=node-1}"] == 1
    admin.counters.add(RECEIVED, 3)
    admin.counters.add(RECEIVED_TLS, 2)
    admin.counters.add(DELIVERED, 4)
    admin.counters.add(METHOD + "pdf", 1)
    admin.counters.observe(DELIVERY_DELAY, 0.3)
    admin.counters.observe(DELIVERY_DELAY, 120)
    admin.counters.error("cipherd.test", "oops")
    result_of(admin.queue.store(Envelope(new_queue_id(), "a@example.org", ("b@example.com",),
                                         admin.clock.seconds() - 60), b"x\r\n"))
    after = scrape(admin, **auth)
    assert after["cipherd_messages_received_total{tls=true}"] == 2
    assert after["cipherd_messages_received_total{tls=false}"] == 1
    assert after["cipherd_recipients_total{outcome=delivered}"] == 4
    assert after["cipherd_recipients_processed_total{method=pdf}"] == 1
    assert after["cipherd_errors_total{}"] == 1
    assert after["cipherd_queue_messages{state=active}"] == 1
    assert after["cipherd_queue_oldest_seconds{state=active}"] == 60
    assert after["cipherd_delivery_delay_seconds_bucket{le=0.5}"] == 1
    assert after["cipherd_delivery_delay_seconds_bucket{le=300}"] == 2
    assert after["cipherd_delivery_delay_seconds_count{}"] == 2
    # Taking the dashboard's tally does not reset the metrics.
    result_of(admin.counts.store())
    assert scrape(admin, **auth)["cipherd_recipients_total{outcome=delivered}"] == 4


def test_metrics_need_credentials_and_take_any_roles_token(admin: AdminHarness) -> None:
    assert admin.request("GET", "/metrics").code == 401
    made = admin.request("POST", "/api/v1/admin/accounts", auth=("admin", GOOD_PASSWORD),
                         headers={"Content-Type": "application/json"},
                         data=json.dumps({"name": "prometheus", "role": "auditor"}).encode())
    first = made.json()["password"]
    admin.request("POST", "/api/v1/admin/password", auth=("prometheus", first),
                  headers={"Content-Type": "application/json"},
                  data=json.dumps({"password": "quiet-lagoon-orbit-73"}).encode())
    token = admin.request("POST", "/api/v1/admin/me/tokens",
                          auth=("prometheus", "quiet-lagoon-orbit-73"),
                          headers={"Content-Type": "application/json"},
                          data=b'{"label": "prometheus"}').json()["token"]
    assert "cipherd_node_info{node=node-1}" in scrape(
        admin, headers={"Authorization": f"Bearer {token}"})
