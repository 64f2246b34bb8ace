"""
The OpenAPI description (cipherd.web.openapi) against the API's routes:
every route described, nothing described that is not routed, served at
/api/v1/openapi.json without credentials, and a valid OpenAPI 3.1
document by schemathesis's own loader.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis

from cipherd.web.api import AdminAPI
from cipherd.web.openapi import DOCUMENT, openapi_path
from tests.harness import AdminHarness
from tests.test_admin_roles import api


def routed() -> set[tuple[str, str]]:
    found = set()
    for rule in AdminAPI.app.url_map.iter_rules():
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                found.add((method.lower(), openapi_path(rule.rule)))
    return found


def described() -> set[tuple[str, str]]:
    return {(method, path) for path, operations in DOCUMENT["paths"].items()
            for method in operations}


def test_every_route_is_described_and_nothing_else() -> None:
    assert routed() - described() == set(), "describe the new route in cipherd/web/openapi.py"
    assert described() - routed() == set()
    assert len(described()) >= 65


def test_every_operation_names_its_errors_and_parameters() -> None:
    for path, operations in DOCUMENT["paths"].items():
        for method, operation in operations.items():
            if path == "/openapi.json":
                continue
            assert {"401", "403", "503"} <= set(operation["responses"]), (method, path)
            named = {p["name"] for p in operation.get("parameters", ()) if p["in"] == "path"}
            assert named == {part[1:-1] for part in path.split("/")
                             if part.startswith("{")}, (method, path)


def test_the_document_is_served_without_credentials(admin_in: AdminHarness) -> None:
    served = admin_in.get("/api/v1/openapi.json", cookies={})
    assert served.code == 200
    assert served.header("Content-Type") == "application/json"
    assert served.json() == DOCUMENT


def test_schemathesis_loads_it_as_openapi_3_1() -> None:
    schema = schemathesis.openapi.from_dict(DOCUMENT)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(described())


# What schemathesis found: JSON values where a name was expected answered
# 500, and queue ids of another shape 405.

@pytest.mark.parametrize(("path", "body", "field"), [
    ("/queue/actions", {"action": {}, "ids": []}, "action"),
    ("/certificates/download", {"format": {}, "thumbprints": ["a" * 64]}, "format"),
])
def test_an_object_where_a_name_belongs_is_a_400(admin_in: AdminHarness, path: str,
                                                 body: dict[str, Any], field: str) -> None:
    refused = api(admin_in, "POST", path, body)
    assert refused.code == 400, refused.text
    assert field in refused.json()["errors"]


def test_a_queue_id_of_another_shape_is_not_in_the_queue(admin_in: AdminHarness) -> None:
    for path in ("/queue/null,null", "/queue/null,null/content"):
        missing = api(admin_in, "GET", path)
        assert missing.code == 404, missing.text
    for path in ("/queue/zzzzzzzzzzzz", "/queue/zzzzzzzzzzzz/content"):
        missing = api(admin_in, "GET", path)
        assert missing.code == 404, missing.text
        assert missing.json()["error"] == "There is no message zzzzzzzzzzzz in the queue."
