"""Receipts to Engage through a real worker and the sandbox: what each sale costs at the cloud."""

from __future__ import annotations

import random

import pytest

from agent.connectors import engage, make_session
from agent.core.models import Contact
from agent.delivery.dispatch import Dispatcher
from agent.sandbox import SandboxCloud
from tests.conftest import make_receipt
from tests.fakes.senders import Clock
from tests.test_bulk_delivery import KEY, calls
from tests.test_dispatch import SETTINGS, drain


@pytest.fixture
def cloud():
    sandbox = SandboxCloud(seed=11).serve()
    yield sandbox
    sandbox.stop()


def engage_rig(start_agent, cloud, **settings):
    """An agent's own stores, a real Engage connector on the sandbox, a worker stepped by hand."""
    agent, till = start_agent({"destinations": {"loaded": {"enabled": False}}})
    config = engage.EngageSettings(name="engage", base_url=cloud.url, api_key=KEY, **settings)
    connector = engage.create(config, make_session("EngageTest/1", 5.0))
    clock = Clock()
    dispatcher = Dispatcher(
        "engage",
        connector,
        agent.outbox,
        agent.ledger,
        agent.health,
        SETTINGS,
        resolver=connector,
        rng=random.Random(0),
        monotonic=clock,
    )
    return agent, till, connector, dispatcher, clock


def sales_with_unknown_phones(till, count):
    """Every other POS spells the key type as Voyado's SDK does (PascalCase)."""
    for n in range(count):
        receipt = make_receipt(f"R-{n}")
        spelling = "mobilePhone" if n % 2 else "MobilePhone"
        receipt["contact"] = {"matchKey": f"+4670000{n:04d}", "matchKeyType": spelling}
        assert till.post("/v1/receipts", receipt).status_code == 202


def test_ten_sales_with_unknown_phones_cost_ten_requests_and_make_no_member(start_agent, cloud):
    agent, till, _, dispatcher, clock = engage_rig(start_agent, cloud)
    sales_with_unknown_phones(till, 10)
    drain(dispatcher, clock)
    engage_calls = [r for r in cloud.requests if r.api == "engage"]
    assert [(r.method, r.path) for r in engage_calls] == [("POST", "/api/v2/receipts")] * 10
    assert cloud.engage.contacts == {}
    assert cloud.engage.receipts["R-3"]["contact"]["matchKey"] == "+46700000003"
    spelled = {body["contact"]["matchKeyType"] for body in cloud.engage.receipts.values()}
    assert spelled == {"mobilePhone"}  # Voyado's field definitions' spelling, whichever came in
    assert agent.outbox.depth("engage").pending == 0


def test_the_lookup_setting_costs_one_request_more_and_still_makes_no_member(start_agent, cloud):
    _, till, connector, dispatcher, clock = engage_rig(start_agent, cloud, lookup_match_keys=True)
    known = connector.create_contact(Contact(mobile_phone="+46700000001"))
    cloud.requests.clear()
    sales_with_unknown_phones(till, 3)
    drain(dispatcher, clock)
    assert len(calls(cloud, "GET", "/contacts/id", ok_only=False)) == 3
    assert len(calls(cloud, "POST", "/receipts")) == 3
    assert len(cloud.engage.contacts) == 1  # only the one made above
    assert cloud.engage.receipts["R-1"]["contact"] == {
        "matchKey": known,
        "matchKeyType": "contactId",
    }
    assert cloud.engage.receipts["R-2"]["contact"]["matchKeyType"] == "mobilePhone"
