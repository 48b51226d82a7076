"""The OpenAPI document: generated from the shapes, committed, served, and true to live answers."""

from __future__ import annotations

import json

import msgspec

from agent.api import schemas
from tests.conftest import ROOT, make_receipt

COMMITTED = ROOT / "docs" / "openapi.json"


def test_committed_openapi_document_is_fresh():
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))
    assert committed == schemas.openapi_document(), "docs/openapi.json is stale: run `make openapi`"


def test_openapi_document_is_served_with_the_token(agent_till):
    _, till = agent_till
    response = till.get("/v1/openapi.json")
    assert response.status_code == 200
    assert response.json()["openapi"] == "3.1.0"


def test_live_answers_match_their_schemas(agent_till):
    _, till = agent_till
    accepted = till.post("/v1/receipts", make_receipt()).content
    msgspec.json.decode(accepted, type=schemas.ReceiptAccepted)
    msgspec.json.decode(till.get("/v1/receipts/R-0001").content, type=schemas.ReceiptStatus)
    msgspec.json.decode(till.get("/v1/status").content, type=schemas.StatusAnswer)
    msgspec.json.decode(till.get("/v1/health").content, type=schemas.HealthAnswer)
    msgspec.json.decode(till.post("/v1/receipts", {}).content, type=schemas.ErrorBody)
    contact = till.post("/v1/contacts", {"email": "a@example.com"}).content
    msgspec.json.decode(contact, type=schemas.ContactAccepted)


def test_every_route_is_documented():
    from agent.api.routes import ROUTES

    paths = schemas.openapi_document()["paths"]
    for route in ROUTES:
        assert route.method.lower() in paths[route.template], route.template
