"""The contact cache end to end: Lightspeed's feed from the sandbox into lookups, deletions too."""

from __future__ import annotations

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
