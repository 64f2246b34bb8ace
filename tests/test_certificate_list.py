"""
The certificate lists of the API (GET /api/v1/certificates) and of the
admin pages (Admin → Certificates) are paged and searchable (issue 13): a
store of 100,000 certificates is never sent in one answer; the API says
how many match, refuses pages too large and numbers that are not; the page
keeps its search in its page links and escapes what was searched for.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cipherd.pki.certs import thumbprint
from cipherd.store.certificates import ROOTS
from cipherd.testing import result_of
from cipherd.testing.certificates import ec_ca, many_certificates
from cipherd.web.api import MAX_LIST_LIMIT
from tests.harness import GOOD_PASSWORD, AdminHarness

COUNT = 130
AUTH = ("admin", GOOD_PASSWORD)


@pytest.fixture(scope="module")
def crowd() -> dict[str, Any]:
    from cipherd.core.clock import utc_from_seconds

    now = utc_from_seconds(1_800_000_000)
    ca, key = ec_ca("List CA", now - timedelta(days=1), now + timedelta(days=30))
    return {"ca": ca, "certificates": many_certificates(
        ca, key, COUNT, now - timedelta(days=1), now + timedelta(days=30),
        domain="list.example")}


@pytest.fixture
def admin(tmp_path: Path, crowd: dict[str, Any]) -> Iterator[AdminHarness]:
    harness = AdminHarness(tmp_path)
    harness.login_with_new_password()
    result_of(harness.certificates.add_certificate(crowd["ca"], store=ROOTS))
    result_of(harness.certificates.add_certificates((c, None) for c in crowd["certificates"]))
    yield harness
    harness.close()


def listed(admin: AdminHarness, query: str = "") -> tuple[int, Any]:
    response = admin.request("GET", "/api/v1/certificates" + query, auth=AUTH)
    return response.code, json.loads(response.body)


def test_the_api_answers_a_page_with_the_total(admin: AdminHarness,
                                               crowd: dict[str, Any]) -> None:
    code, first = listed(admin)
    assert code == 200
    assert (first["total"], first["offset"], first["limit"]) == (COUNT, 0, 100)
    assert len(first["certificates"]) == 100
    assert all(c["valid"] for c in first["certificates"])
    _, rest = listed(admin, "?offset=100&limit=100")
    assert len(rest["certificates"]) == COUNT - 100
    subjects = [c["subject"] for c in first["certificates"] + rest["certificates"]]
    assert subjects == sorted(subjects) and len(set(subjects)) == COUNT
    _, roots = listed(admin, "?store=roots")
    assert roots["total"] == 1 and roots["certificates"][0]["subject"] == "CN=List CA"


def test_the_api_searches_by_text_address_and_thumbprint(admin: AdminHarness,
                                                         crowd: dict[str, Any]) -> None:
    _, found = listed(admin, "?q=USER12")  # user12, user120..user129
    assert found["total"] == 11
    assert sorted(c["emails"][0] for c in found["certificates"])[:2] == [
        "user120@list.example", "user121@list.example"]
    _, exact = listed(admin, "?email=User12@List.Example")
    assert [c["emails"] for c in exact["certificates"]] == [["user12@list.example"]]
    assert exact["total"] == 1
    wanted = thumbprint(crowd["certificates"][77])
    _, by_print = listed(admin, f"?q={wanted[:16].upper()}")
    assert [c["thumbprint"] for c in by_print["certificates"]] == [wanted]
    _, paged = listed(admin, "?q=user1&offset=100&limit=50")
    assert (paged["total"], paged["certificates"]) == (41, [])  # user1, 10-19, 100-129
    _, none = listed(admin, "?q=%25")  # a LIKE wildcard is only text
    assert none == {"certificates": [], "total": 0, "offset": 0, "limit": 100}


@pytest.mark.parametrize(("query", "errors"), [
    (f"?limit={MAX_LIST_LIMIT + 1}", {"limit": "must be from 1 to 1000"}),
    ("?limit=0", {"limit": "must be from 1 to 1000"}),
    ("?offset=-1&limit=x", {"offset": "'-1' is not a whole number",
                            "limit": "'x' is not a whole number"}),
    ("?offset=%C2%B2", {"offset": "'²' is not a whole number"}),
    ("?offset=" + "9" * 19, {"offset": "must be from 0 to 1000000000"}),
    ("?q=" + "a" * 321, {"q": "must be at most 320 characters"}),
])
def test_the_api_refuses_pages_it_cannot_give(admin: AdminHarness, query: str,
                                              errors: dict[str, str]) -> None:
    code, body = listed(admin, query)
    assert code == 400
    assert body["errors"] == errors


def test_the_page_lists_fifty_at_a_time(admin: AdminHarness) -> None:
    page = admin.get("/pki/certificates")
    assert page.code == 200
    assert "1\u201350 of 130 certificates" in page.text
    assert page.text.count('<tr class="valid">') == 50
    assert "page 1 of 3" in page.text
    assert 'href="/pki/certificates?q=&amp;page=2" rel="next"' in page.text
    last = admin.get("/pki/certificates?page=3")
    assert "101\u2013130 of 130 certificates" in last.text
    assert last.text.count('<tr class="valid">') == 30
    assert 'rel="next"' not in last.text and 'rel="prev"' in last.text
    # Past the end, or not a number: the nearest page there is.
    assert "101\u2013130 of 130" in admin.get("/pki/certificates?page=99").text
    assert "1\u201350 of 130" in admin.get("/pki/certificates?page=two").text


def test_the_page_searches_and_keeps_the_search_in_its_links(admin: AdminHarness) -> None:
    found = admin.get("/pki/certificates?q=user1")  # user1, user10-19, user100-129
    assert "1\u201341 of 41 certificates matching “user1”" in found.text
    assert 'value="user1"' in found.text
    wide = admin.get("/pki/certificates?q=list.example")
    assert 'href="/pki/certificates?q=list.example&amp;page=2" rel="next"' in wide.text
    assert "Show all" in wide.text
    second = admin.get("/pki/certificates?q=list.example&page=2")
    assert "51\u2013100 of 130 certificates matching" in second.text


def test_what_was_searched_for_is_escaped(admin: AdminHarness) -> None:
    attack = '"><script>alert(1)</script>'
    page = admin.get("/pki/certificates", params={"q": attack})
    assert page.code == 200
    assert "<script>alert(1)</script>" not in page.text
    assert "No certificate matches “&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;”." in page.text
    assert 'value="&#34;&gt;&lt;script&gt;' in page.text
