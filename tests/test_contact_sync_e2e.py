"""The contact cache end to end: Lightspeed's feed from the sandbox into lookups, deletions too."""

from __future__ import annotations

import pytest

from agent.connectors import KINDS
from agent.sandbox import SandboxCloud
from tests.conftest import base_config, merged
from tests.test_cli import till_agent


def lightspeed_config(tmp_path, cloud_url: str) -> dict[str, object]:
    return merged(
        base_config(tmp_path),
        {
            "contacts": {"source": "lightspeed", "page_size": 50},
            "destinations": {"lightspeed": {"kind": "lightspeed", "base_url": cloud_url}},
        },
    )


def test_sync_fills_the_cache_and_a_deletion_in_the_cloud_removes_the_member(start_agent, tmp_path):
    cloud = SandboxCloud(seed=5).serve()
    try:
        ids = cloud.lightspeed.seed_customers(120)
        agent, till = start_agent(lightspeed_config(tmp_path, cloud.url))
        report = till.post("/v1/contacts/sync", {}).json()
        assert report["changes"] == 120
        customer = cloud.lightspeed.customers[ids[7]]
        found = till.get("/v1/contacts/lookup", params={"mobilePhone": customer["phone"]}).json()
        assert found["source"] == "cache"
        assert found["contact"]["contactId"] == ids[7]
        cloud.lightspeed.delete_customer(ids[7])
        till.post("/v1/contacts/sync", {})
        gone = till.get("/v1/contacts/lookup", params={"mobilePhone": customer["phone"]})
        assert gone.status_code == 404
        assert agent.contacts.stats()["contacts"] == 119
    finally:
        cloud.stop()


def test_contacts_sync_command_on_a_stopped_agent(tmp_path):
    from tests.conftest import write_toml

    cloud = SandboxCloud(seed=6).serve()
    try:
        cloud.lightspeed.seed_customers(30)
        config = write_toml(tmp_path / "config.toml", lightspeed_config(tmp_path, cloud.url))
        result = till_agent("contacts", "sync", "--config", str(config))
        assert result.returncode == 0, result.stderr
        assert '"changes": 30' in result.stdout
    finally:
        cloud.stop()


def engage_config(tmp_path, cloud_url: str) -> dict[str, object]:
    return merged(
        base_config(tmp_path),
        {"contacts": {"source": "engage"}, "destinations": {"engage": {"base_url": cloud_url}}},
    )


def test_a_member_only_the_cloud_knows_is_found_live_and_not_registered_twice(
    start_agent, tmp_path
):
    cloud = SandboxCloud(seed=7).serve()
    try:
        contact_id = cloud.engage.add_contact(email="zz.cloud.only@example.com")
        _, till = start_agent(engage_config(tmp_path, cloud.url))
        found = till.get("/v1/contacts/lookup", params={"email": "zz.cloud.only@example.com"})
        assert found.json()["source"] == "cloud"
        assert found.json()["contact"]["contactId"] == contact_id
        again = till.post("/v1/contacts", {"email": "zz.cloud.only@example.com"}).json()
        assert again["status"] == "existing"
        assert again["contactId"] == contact_id
        cloud.faults.set_offline("refused")  # the till keeps answering from its cache
        offline = till.get("/v1/contacts/lookup", params={"email": "zz.cloud.only@example.com"})
        assert offline.json()["source"] == "cache"
    finally:
        cloud.stop()


def test_a_slow_cloud_never_holds_a_lookup_past_its_bound(start_agent, tmp_path):
    import time

    cloud = SandboxCloud(seed=8).serve()
    try:
        cloud.faults.set_latency(3.0, api="engage")
        _, till = start_agent(engage_config(tmp_path, cloud.url))
        started = time.monotonic()
        answer = till.get("/v1/contacts/lookup", params={"email": "nobody@example.com"})
        assert time.monotonic() - started < 1.5
        # Unknown, not absent: the cloud did not answer in time (issue 16; it used to be 404).
        assert answer.status_code == 200
        assert answer.json()["source"] == "timeout"
    finally:
        cloud.stop()


def lightspeed_source(cloud_url: str, tmp_path):
    """The real Lightspeed connector against the sandbox, built the way the agent builds it."""
    from agent import app
    from agent.core import config

    settings = config.from_mapping(lightspeed_config(tmp_path, cloud_url), {}, KINDS)
    return app.build_connectors(settings)["lightspeed"]


def test_a_record_changed_while_paginating_arrives_in_its_latest_form(tmp_path):
    from agent.contacts import ContactCache
    from agent.contacts.sync import ContactSync
    from agent.core import crypto
    from agent.core.health import Health

    cloud = SandboxCloud(seed=10).serve()
    keyring = crypto.load_or_create(tmp_path / "keyring.json", may_create=True)
    cache = ContactCache(tmp_path, keyring, default_region="SE")
    try:
        ids = cloud.lightspeed.seed_customers(60)
        sync = ContactSync(
            lightspeed_source(cloud.url, tmp_path), cache, Health(), page_size=20, batch_contacts=20
        )
        changed = [False]

        def change_an_early_record(_: int) -> None:
            if not changed[0]:
                changed[0] = True
                cloud.lightspeed.upsert_customer(ids[0], email="zz.moved.0@example.com")

        sync.run_once(progress=change_an_early_record)
        assert cache.stats()["contacts"] == 60
        assert [c.contact.contact_id for c in cache.find("email", "zz.moved.0@example.com")] == [
            ids[0]
        ]
    finally:
        cache.close()
        cloud.stop()


def test_engages_changes_feed_fills_the_cache_and_carries_deletions(start_agent, tmp_path):
    cloud = SandboxCloud(seed=11).serve()
    try:
        ids = [cloud.engage.add_contact(email=f"zz.feed.{n}@example.com") for n in range(15)]
        agent, till = start_agent(engage_config(tmp_path, cloud.url))
        till.post("/v1/contacts/sync", {})
        assert agent.contacts.stats()["contacts"] == 15
        cloud.engage.delete_contact(ids[3])
        till.post("/v1/contacts/sync", {})
        assert agent.contacts.find("email", "zz.feed.3@example.com") == []
        assert agent.contacts.stats()["contacts"] == 14
    finally:
        cloud.stop()


def test_a_tenant_without_engages_changes_feed_gets_a_clear_status_and_no_loop(
    start_agent, tmp_path
):
    cloud = SandboxCloud(seed=12).serve()
    try:
        cloud.engage.changes_enabled = False
        _agent, till = start_agent(engage_config(tmp_path, cloud.url))
        till.post("/v1/contacts/sync", {})
        feed = [r for r in cloud.requests if r.path.endswith("/contacts/changes")]
        assert len(feed) == 1  # asked once: no retry, no wait, until the next scheduled run
        components = {c["name"]: c for c in till.get("/v1/status").json()["components"]}
        assert components["sync:engage"]["state"] == "degraded"
        assert "not activated for this Engage tenant" in components["sync:engage"]["detail"]
    finally:
        cloud.stop()


@pytest.mark.parametrize(
    ("refusal", "status", "code"),
    [
        (401, 502, "cloud_refused"),
        (403, 502, "cloud_refused"),
        (404, 502, "cloud_refused"),
        (400, 502, "cloud_refused"),
        (500, 503, "cloud_unavailable"),
        (503, 503, "cloud_unavailable"),
    ],
)
def test_a_source_that_refuses_the_sync_is_answered_in_words_never_500(
    start_agent, tmp_path, refusal, status, code
):
    cloud = SandboxCloud(seed=13).serve()
    try:
        config = merged(
            lightspeed_config(tmp_path, cloud.url), {"contacts": {"max_wait_seconds": 0}}
        )
        _agent, till = start_agent(config)
        cloud.faults.set_error_rate(1.0, refusal, api="lightspeed")
        answer = till.post("/v1/contacts/sync", {})
        assert answer.status_code == status
        error = answer.json()["error"]
        assert error["code"] == code
        assert error["errorId"].startswith("err_")
        assert f"HTTP {refusal}" in error["message"]  # the cloud's status, in words
    finally:
        cloud.stop()


def test_a_source_out_of_reach_is_a_503_in_words(start_agent, tmp_path):
    cloud = SandboxCloud(seed=14).serve()
    try:
        config = merged(
            lightspeed_config(tmp_path, cloud.url), {"contacts": {"max_wait_seconds": 0}}
        )
        _agent, till = start_agent(config)
        cloud.faults.set_offline("refused")
        answer = till.post("/v1/contacts/sync", {})
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "cloud_unavailable"
        assert answer.json()["error"]["message"].startswith("lightspeed: ")
        assert "Retry-After" in answer.headers
    finally:
        cloud.stop()
