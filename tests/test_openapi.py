"""The OpenAPI document is valid, complete, and every operation enforces its declared role."""

from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate

from conftest import Client

ROLES = ["service", "analyst", "operator", "admin"]


@pytest.fixture(scope="module")
def document(api_url: str) -> dict:  # type: ignore[type-arg]
    resp = Client(api_url, None).get("/api/v1/openapi.json")
    assert resp.status_code == 200
    return resp.json()


def operations(document: dict):  # type: ignore[no-untyped-def,type-arg]
    for path, item in document["paths"].items():
        for method, op in item.items():
            yield path, method.upper(), op


def test_document_is_valid_openapi_3(document: dict) -> None:  # type: ignore[type-arg]
    validate(document)
    assert document["openapi"].startswith("3.")


def test_every_operation_declares_a_role(document: dict) -> None:  # type: ignore[type-arg]
    for path, method, op in operations(document):
        assert op.get("x-min-role") in ROLES + ["anyone"], (method, path)


def test_only_health_and_docs_are_open(document: dict) -> None:  # type: ignore[type-arg]
    open_ops = sorted(path for path, _, op in operations(document) if op["x-min-role"] == "anyone")
    assert open_ops == ["/api/v1/openapi.json", "/healthz", "/readyz"]


def test_every_protected_operation_refuses_no_credential_and_lower_roles(document: dict, api_url: str, make_client) -> None:  # type: ignore[no-untyped-def,type-arg]
    clients = {role: make_client(role) for role in ROLES[:-1]}
    anonymous = Client(api_url, None)
    for path, method, op in operations(document):
        role = op["x-min-role"]
        if role == "anyone":
            continue
        concrete = re.sub(r"\{(\w+)\}", lambda m: "1" if m.group(1) == "version" else "x", path)
        resp = anonymous.request(method, concrete)
        assert resp.status_code == 401, (method, path, resp.text)
        for lower in ROLES[: ROLES.index(role)]:
            resp = clients[lower].request(method, concrete)
            assert resp.status_code == 403, (method, path, lower, resp.text)
