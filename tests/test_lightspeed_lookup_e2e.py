"""Realistic Lightspeed customers (both numbers, local formats, blanks) found over the API by
either number, typed in E.164 or the local way, with the retailer's default region."""

from __future__ import annotations

from agent.core.matchkeys import normalise_phone
from agent.sandbox import SandboxCloud
from tests.conftest import base_config, merged

REGION = "NZ"


def local_form(e164: str) -> str:
    """+6495550001 -> 09 5550001: the national form with the trunk 0, as a cashier types it."""
    return "0" + e164.removeprefix("+64")


def test_a_customer_is_found_by_mobile_or_phone_in_either_format(start_agent, tmp_path):
    cloud = SandboxCloud(seed=9).serve()
    try:
        ids = cloud.lightspeed.seed_realistic_customers(60)
        raw = merged(
            base_config(tmp_path),
            {
                "agent": {"default_region": REGION},
                "contacts": {"source": "lightspeed", "page_size": 50},
                "destinations": {"lightspeed": {"kind": "lightspeed", "base_url": cloud.url}},
            },
        )
        _, till = start_agent(raw)
        assert till.post("/v1/contacts/sync", {}).json()["changes"] == 60
        tried = {"mobile": 0, "phone": 0}
        for customer_id in ids:
            customer = cloud.lightspeed.customers[customer_id]
            for field in ("mobile", "phone"):
                typed = (customer.get(field) or "").strip()
                if not typed:
                    continue
                e164 = normalise_phone(typed, REGION)
                assert e164 is not None, typed
                for asked in (typed, e164, local_form(e164)):
                    answer = till.get("/v1/contacts/lookup", params={"mobilePhone": asked})
                    assert answer.status_code == 200, (field, asked, answer.text)
                    assert answer.json()["contact"]["contactId"] == customer_id
                tried[field] += 1
        assert min(tried.values()) >= 20, tried  # both fields exercised, many formats
    finally:
        cloud.stop()
