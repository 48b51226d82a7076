"""GET /metrics: Prometheus text with queue, commit, send and cache figures; no personal data."""

from __future__ import annotations

import requests

from agent.core.errors import RejectedError
from tests.conftest import make_receipt
from tests.fakes.senders import ScriptedSender, raising
from tests.test_dispatch import dispatcher_for


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    head = f"{name}{{{wanted}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(head + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{head} not in metrics")


def test_metrics_show_queues_commits_sends_and_dead_letters(agent_till):
    agent, till = agent_till
    for n in range(3):
        till.post("/v1/receipts", make_receipt(f"R-{n}"))
    sender = ScriptedSender()
    sender.rules["R-0"] = raising(RejectedError("400", connector="x", status=400))
    dispatcher = dispatcher_for(agent, sender, metrics=agent.metrics)
    dispatcher.step()
    dispatcher.step()
    response = requests.get(till.url + "/metrics", timeout=5)  # no token: scrapers have none
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.text
    assert metric(text, "till_agent_queue_depth", destination="loaded") == 1
    assert metric(text, "till_agent_queue_depth", destination="engage") == 3
    assert metric(text, "till_agent_commit_seconds_count") >= 3
    assert metric(text, "till_agent_sends_total", destination="loaded", outcome="delivered") == 1
    assert (
        metric(text, "till_agent_dead_letters_total", destination="loaded", reason="rejected") == 1
    )
    assert "+46700000001" not in text


def test_purge_runs_are_counted(agent_till):
    _, till = agent_till
    till.post("/v1/privacy/purge", {})
    text = requests.get(till.url + "/metrics", timeout=5).text
    assert metric(text, "till_agent_purge_runs_total") == 1
