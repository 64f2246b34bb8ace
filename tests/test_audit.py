"""
The audit log: changes made on the admin pages and through the API are
recorded with who, how, from where and what changed (secrets only as
"changed"), listed and filtered on Logs → Audit log and by the API, and
deleted after the retention setting's days.  The queries run on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from cipherd.store.audit import AuditEntry, AuditQuery, add_entry, delete_before, find_entries
from cipherd.testing import deferred_result, migrated_store, result_of
from cipherd.web.audit import DAY
from tests.harness import GOOD_PASSWORD, AdminHarness

CHANGED = ("admin", GOOD_PASSWORD)


@pytest.fixture
def admin(admin_in: AdminHarness) -> AdminHarness:
    return admin_in


def api(admin: AdminHarness, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    return admin.request(method, "/api/v1" + path, data=data, auth=CHANGED,
                         headers={"Content-Type": "application/json"})


def entries(admin: AdminHarness, query: str = "") -> list[dict[str, Any]]:
    answer = api(admin, "GET", "/audit" + query)
    assert answer.code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["entries"]
    return found


def test_store_queries_filter_page_and_expire(database_url: str) -> None:
    store = migrated_store(database_url)
    made = [
        AuditEntry(1000.0 + i, "alice" if i % 2 else "bob", "web", "192.0.2.1",
                   "settings.change" if i < 5 else "queue.delete", f"target-{i}",
                   f"did thing {i} to 50%_off", {"n": i})
        for i in range(10)
    ]
    ids = [deferred_result(store.run(add_entry, entry)) for entry in made]
    assert ids == sorted(ids)

    def find(**kw: Any) -> list[int]:
        return [int(e.details["n"]) for e in deferred_result(store.read(find_entries,
                                                                  AuditQuery(**kw)))]

    assert find() == list(range(9, -1, -1))
    assert find(actor="alice") == [9, 7, 5, 3, 1]
    assert find(action="queue") == [9, 8, 7, 6, 5]
    assert find(action="settings.change") == [4, 3, 2, 1, 0]
    assert find(action="settings.chan") == []  # a group or a whole name, not a prefix
    assert find(text="THING 3") == [3]
    assert find(text="TARGET-7") == [7]
    # LIKE's wildcards are searched for as themselves.
    assert find(text="50%_") == list(range(9, -1, -1))
    assert find(text="5_%") == []
    assert find(since=1003.0, until=1006.0) == [5, 4, 3]
    assert find(limit=3) == [9, 8, 7]
    assert find(limit=3, before_id=ids[7]) == [6, 5, 4]
    stored = deferred_result(store.read(find_entries, AuditQuery(limit=1)))[0]
    assert (stored.actor, stored.via, stored.client, stored.summary, stored.id) == (
        "alice", "web", "192.0.2.1", "did thing 9 to 50%_off", ids[9])
    assert deferred_result(store.run(delete_before, 1004.0)) == 4
    assert find() == [9, 8, 7, 6, 5, 4]


def test_a_settings_form_is_recorded_with_what_changed_and_secrets_hidden(
        admin: AdminHarness) -> None:
    form = [("fields", "comment"), ("fields", "server_secret"), ("value.comment", "audited")]
    saved = admin.post_form("/settings/global/preferences?advanced=1",
                            [*form, ("value.server_secret", "a-new-secret-value-for-links")])
    assert saved.code == 303, saved.text
    changes = [e for e in entries(admin) if e["action"] == "settings.change"]
    assert len(changes) == 1
    change = changes[0]
    assert (change["actor"], change["via"], change["target"]) == ("admin", "web", "global")
    assert change["client"]
    assert change["details"]["comment"] == {"from": None, "to": "audited"}
    assert change["details"]["server_secret"] == "changed"
    # Fields the form sent unchanged are not listed as changes.
    assert set(change["details"]) == {"comment", "server_secret"}
    assert "a-new-secret-value-for-links" not in json.dumps(entries(admin))
    assert "changed comment, server_secret at global" == change["summary"]

    # The same comment again, the secret left blank: nothing changes, and
    # nothing is recorded.
    again = admin.post_form("/settings/global/preferences?advanced=1",
                            [*form, ("value.server_secret", "")])
    assert again.code == 303, again.text
    assert len([e for e in entries(admin) if e["action"] == "settings.change"]) == 1


def test_api_changes_are_recorded_and_found_by_the_api(admin: AdminHarness) -> None:
    assert api(admin, "PATCH", "/settings/domains/example.com",
               {"encrypt_mode": "mandatory", "pdf_password": "Secret-PDF-1"}).code == 200
    assert api(admin, "PATCH", "/mta", {"my_hostname": "gw.example.org"}).code == 200
    assert api(admin, "DELETE", "/settings/domains/example.com").code == 200
    found = entries(admin, "?action=settings")
    assert [e["summary"] for e in found] == [
        "deleted domain example.com",
        "changed encrypt_mode, pdf_password at domain example.com"]
    assert found[1]["via"] == "api"
    assert found[1]["details"] == {
        "encrypt_mode": {"from": None, "to": "mandatory"}, "pdf_password": "changed"}
    mta = entries(admin, "?action=mta")[0]
    assert mta["details"]["my_hostname"]["to"] == "gw.example.org"
    assert "Secret-PDF-1" not in json.dumps(entries(admin, "?limit=500"))
    # Text search, the actor, paging.
    assert [e["action"] for e in entries(admin, "?q=EXAMPLE.COM")] == [
        "settings.delete", "settings.change"]
    assert entries(admin, "?actor=nobody") == []
    first = api(admin, "GET", "/audit?limit=2").json()
    assert len(first["entries"]) == 2 and first["next"] == first["entries"][-1]["id"]
    rest = api(admin, "GET", f"/audit?limit=500&before={first['next']}").json()
    assert rest["next"] is None
    assert {e["id"] for e in rest["entries"]}.isdisjoint(e["id"] for e in first["entries"])
    # The web logins and the password change are there too.
    assert {"session.login", "admin.password"} <= {e["action"] for e in rest["entries"]}


def test_a_bad_search_is_refused_with_the_reason(admin: AdminHarness) -> None:
    refused = api(admin, "GET", "/audit?since=yesterday&limit=0&before=x")
    assert refused.code == 400
    assert refused.json()["errors"] == {
        "since": "'yesterday' is not a date and time (YYYY-MM-DD HH:MM)",
        "limit": "must be a whole number from 1 to 500",
        "before": "must be a whole number from 1 to 4611686018427387904"}
    backwards = api(admin, "GET", "/audit?since=2027-01-02T00:00&until=2027-01-01T00:00")
    assert backwards.json()["errors"] == {"until": "must be after the start"}
    page = admin.get("/audit?since=yesterday")
    assert page.code == 400 and "is not a date and time" in page.text


def test_the_audit_page_lists_and_filters(admin: AdminHarness) -> None:
    api(admin, "PATCH", "/settings/users/bob@example.com", {"encrypt_mode": "mandatory"})
    api(admin, "PATCH", "/mta", {"my_hostname": "gw.example.org"})
    page = admin.get("/audit")
    assert page.code == 200
    assert "changed encrypt_mode at user bob@example.com" in page.text
    assert "changed the MTA config (my_hostname)" in page.text
    assert "API" in page.text and "admin pages" in page.text
    only_mta = admin.get("/audit?action=mta")
    assert "my_hostname" in only_mta.text and "bob@example.com" not in only_mta.text
    assert "No change in the audit log matches" in admin.get("/audit?q=nothing-like-it").text
    # The logs page links to it.
    assert 'href="/audit"' in admin.get("/logs").text


def test_entries_older_than_the_retention_are_deleted(admin: AdminHarness) -> None:
    api(admin, "PATCH", "/settings/global", {"audit_retention_days": 2})
    before = len(entries(admin))
    admin.clock.advance(1.5 * DAY)
    api(admin, "PATCH", "/settings/global", {"comment": "later"})
    assert result_of(admin.audit.expire()) == 0
    admin.clock.advance(1 * DAY)
    assert result_of(admin.audit.expire()) == before
    assert [e["summary"] for e in entries(admin)] == ["changed comment at global"]

