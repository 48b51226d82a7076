"""The first download, usable while it runs (issue 16 §4): lookups from what has been applied,
and its progress, rate and estimated finish on /v1/status, the status page, `till-agent status`
and `till-agent contacts sync`."""

from __future__ import annotations

from agent.cli import format_status
from agent.sandbox import SandboxCloud
from tests.conftest import base_config, merged, wait_for, write_toml
from tests.test_cli import till_agent


def engage_paced(cloud: SandboxCloud, per_second: float):
    """Overrides: Engage as the contact source, ten contacts a page, at per_second."""
    return {
        "contacts": {"source": "engage", "page_size": 10},
        "destinations": {"engage": {"base_url": cloud.url, "requests_per_second": per_second}},
    }


def test_while_the_first_download_runs_status_and_lookups_say_so(start_agent, tmp_path):
    cloud = SandboxCloud(seed=61).serve()
    try:
        emails = [f"zz.loading.{n}@example.com" for n in range(120)]
        ids = [cloud.engage.add_contact(email=e) for e in emails]
        # Each page costs its ten contacts' fetches and the window's three changes calls.
        agent, till = start_agent(engage_paced(cloud, 40))
        wait_for(lambda: till.get("/v1/status").json()["contacts"]["contacts"] >= 10, 20)
        status = till.get("/v1/status").json()
        cache = status["contacts"]
        assert cache["state"] == "loading", cache
        download = cache["firstDownload"]
        assert download["running"] is True
        assert download["total"] == 120  # Engage's contacts/count
        assert download["contactsPerSecond"] > 0
        assert download["allowedRequestsPerSecond"] == 40
        assert download["estimatedFinishAt"] is not None
        assert "first download running: " in format_status(status)
        assert "of 120 contacts so far" in format_status(status)
        assert "first download running" in till.get("/").text
        applied = next(n for n, e in enumerate(emails) if agent.contacts.find("email", e))
        found = till.get("/v1/contacts/lookup", params={"email": emails[applied]}).json()
        assert (found["source"], found["cacheState"]) == ("cache", "loading")
        assert found["contact"]["contactId"] == ids[applied]
        assert found["cacheProgress"]["total"] == 120
        wait_for(lambda: till.get("/v1/status").json()["contacts"]["state"] == "ready", 60)
        done = till.get("/v1/status").json()["contacts"]
        assert (done["contacts"], done["firstDownload"]) == (120, None)
        answer = till.get("/v1/contacts/lookup", params={"email": emails[-1]}).json()
        assert (answer["cacheState"], answer["cacheProgress"]) == ("ready", None)
    finally:
        cloud.stop()


def test_a_source_that_cannot_count_says_the_finish_is_unknown(start_agent, tmp_path):
    cloud = SandboxCloud(seed=62).serve()
    try:
        cloud.lightspeed.seed_customers(60)
        raw = merged(
            base_config(tmp_path),
            {
                "contacts": {"source": "lightspeed", "page_size": 10},
                # 5 requests per 2 s: the download takes a few windows.
                "destinations": {
                    "lightspeed": {
                        "kind": "lightspeed",
                        "base_url": cloud.url,
                        "requests_per_second": 2.5,
                        "rate_window_seconds": 2,
                    }
                },
            },
        )
        _, till = start_agent(raw)
        wait_for(lambda: till.get("/v1/status").json()["contacts"]["contacts"] >= 10, 20)
        status = till.get("/v1/status").json()
        assert status["contacts"]["firstDownload"]["total"] is None
        assert "finish unknown" in format_status(status)
        assert [r.status for r in cloud.requests if r.status == 429] == []
    finally:
        cloud.stop()


def test_contacts_sync_shows_the_first_download_as_a_progress_bar(tmp_path):
    cloud = SandboxCloud(seed=63).serve()
    try:
        for n in range(25):
            cloud.engage.add_contact(email=f"zz.bar.{n}@example.com")
        config = write_toml(
            tmp_path / "config.toml", merged(base_config(tmp_path), engage_paced(cloud, 40))
        )
        result = till_agent("contacts", "sync", "--config", str(config))
        assert result.returncode == 0, result.stderr
        assert '"changes": 25' in result.stdout
        assert "25/25" in result.stderr  # tqdm: the total from the source, so a time left too
    finally:
        cloud.stop()


def test_contacts_sync_against_a_running_agent_follows_it_and_answers(agent_process, tmp_path):
    cloud = SandboxCloud(seed=64).serve()
    try:
        for n in range(12):
            cloud.engage.add_contact(email=f"zz.running.{n}@example.com")
        process = agent_process(engage_paced(cloud, 40))
        process.start()
        result = till_agent("contacts", "sync", "--config", str(process.config_path))
        assert result.returncode == 0, result.stderr
        assert '"changes": ' in result.stdout  # the agent's own sync may have taken them first
        assert "contact" in result.stderr  # the bar
        status = till_agent("status", "--config", str(process.config_path))
        assert "contact cache: 12 contacts" in status.stdout, status.stdout
    finally:
        cloud.stop()
