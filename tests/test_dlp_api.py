"""
/api/v1/dlp through StubTreq: patterns added from the built-in library or
written (checked on save: a backreference or an empty match is a 400
naming the field), changed, deleted; the quarantine listed, viewed (what
hit, masked, and the header fields, never the body), released (queued with
its release mark) and deleted, each once; every change audited.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from cipherd.mpa.dlp_policy import RELEASED, Hit, Verdict
from cipherd.testing import RecordingSubmission, result_of
from cipherd.web.backend import release_quarantined
from tests import dlp_samples as samples
from tests.harness import AdminHarness
from tests.test_admin_roles import api


def test_patterns(admin_in: AdminHarness) -> None:
    assert api(admin_in, "GET", "/dlp/patterns").json() == {"patterns": []}
    library = api(admin_in, "GET", "/dlp/patterns/builtin").json()["patterns"]
    assert {"credit-card", "iban", "confidential"} <= {p["name"] for p in library}
    added = api(admin_in, "POST", "/dlp/patterns/builtin", {"names": ["credit-card", "iban"]})
    assert added.json() == {"added": ["credit-card", "iban"]}
    assert api(admin_in, "POST", "/dlp/patterns/builtin",
               {"names": ["credit-card"]}).json() == {"added": []}
    assert api(admin_in, "POST", "/dlp/patterns/builtin", {"names": ["nope"]}).code == 400

    made = api(admin_in, "POST", "/dlp/patterns", {
        "name": "project-x", "words": ["Project X", "Codename Falcon"], "action": "quarantine"})
    assert made.code == 201 and made.json()["words"] == ["Project X", "Codename Falcon"]
    changed = api(admin_in, "POST", "/dlp/patterns", {
        "name": "project-x", "words": ["Project X"], "action": "block", "threshold": 2})
    assert changed.code == 200 and changed.json()["threshold"] == 2
    refused = api(admin_in, "POST", "/dlp/patterns", {
        "name": "Bad Name", "regex": r"(\d)\1", "validator": "md5", "threshold": True})
    assert refused.code == 400
    assert set(refused.json()["errors"]) == {"threshold"}  # types first
    refused = api(admin_in, "POST", "/dlp/patterns", {
        "name": "Bad Name", "regex": r"(\d)\1", "validator": "md5"})
    errors = refused.json()["errors"]
    assert set(errors) == {"name", "regex", "validator"} and "Backreferences" in errors["regex"]
    names = [p["name"] for p in api(admin_in, "GET", "/dlp/patterns").json()["patterns"]]
    assert names == ["credit-card", "iban", "project-x"]
    assert api(admin_in, "DELETE", "/dlp/patterns/iban").code == 204
    assert api(admin_in, "DELETE", "/dlp/patterns/iban").code == 404
    actions = [e["action"] for e in api(admin_in, "GET", "/audit").json()["entries"]]
    assert actions.count("dlp.pattern") == 3 and "dlp.delete" in actions


def _quarantine(admin: AdminHarness, content: bytes) -> str:
    verdict = Verdict("quarantine", (Hit("credit-card", "quarantine", 1, ("body",),
                                         "pay •••• •••• •••• 1111 now"),))
    return result_of(admin.dlp.quarantine("alice@example.com", ["dave@partner.example"],
                                          "Payment", content, verdict))


def test_quarantine(admin_in: AdminHarness) -> None:
    content = samples.message(subject="Payment", text=f"pay {samples.CARD} now")
    first = _quarantine(admin_in, content)
    second = _quarantine(admin_in, content)
    listed = api(admin_in, "GET", "/dlp/quarantine").json()
    assert listed["total"] == 2 and {m["id"] for m in listed["messages"]} == {first, second}
    one = api(admin_in, "GET", f"/dlp/quarantine/{first}").json()
    assert one["findings"][0]["rule"] == "credit-card"
    assert {"name": "subject", "value": "Payment"} in one["headers"]
    assert samples.CARD not in str(one)  # never the body
    assert api(admin_in, "GET", "/dlp/quarantine/not-an-id").code == 404
    # This harness delivers no mail: the release is refused, nothing lost.
    assert api(admin_in, "POST", f"/dlp/quarantine/{first}/release").code == 409
    assert api(admin_in, "GET", "/dlp/quarantine").json()["total"] == 2
    assert api(admin_in, "DELETE", f"/dlp/quarantine/{second}").code == 204
    assert api(admin_in, "DELETE", f"/dlp/quarantine/{second}").code == 404

    mailed = RecordingSubmission()
    backend = dataclasses.replace(admin_in.site.backend, queue_runner=cast(Any, mailed))
    row = result_of(release_quarantined(backend, first))
    assert row is not None and row.id == first
    [(sender, recipients, marked)] = mailed.submitted
    assert (sender, recipients) == ("alice@example.com", ["dave@partner.example"])
    assert marked.startswith(f"{RELEASED}: {first} ".encode())
    assert admin_in.dlp.released(marked) == (True, content)
    assert result_of(release_quarantined(backend, first)) is None  # once only


def test_the_pages_show_the_quarantine(admin_in: AdminHarness) -> None:
    quarantine_id = _quarantine(admin_in, samples.message(subject="Payment",
                                                          text=f"pay {samples.CARD} now"))
    listing = admin_in.get("/dlp/quarantine")
    assert listing.code == 200 and f'href="/dlp/quarantine/{quarantine_id}"' in listing.text
    one = admin_in.get(f"/dlp/quarantine/{quarantine_id}")
    assert one.code == 200 and "pay •••• •••• •••• 1111 now" in one.text
    assert samples.CARD not in one.text and " UTC" in one.text
    deleted = admin_in.post_form(f"/dlp/quarantine/{quarantine_id}/delete", {},
                                 csrf=admin_in.csrf_from(one))
    assert deleted.code == 303 and admin_in.get(f"/dlp/quarantine/{quarantine_id}").code == 404
