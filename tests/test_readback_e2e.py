"""Read-back against the sandbox: a receipt Loaded lost or altered after its 2xx is not verified.

The real agent delivers a day of sales to the sandbox's Loaded and Engage; then the sandbox's
Loaded loses one order and alters another behind the agent's back. Reconciliation with
verify=true names both (lost, altered: a mismatch) and verifies the rest; Engage, which has no
per-receipt read (docs/connectors.md), stays accepted. The read-backs stay within the
read-back share of Loaded's rate (ratelimit.READBACK_SHARE), counted at the sandbox.
"""

from __future__ import annotations

from decimal import Decimal

from agent.sandbox import SandboxCloud
from tests.conftest import base_config, free_port, merged, wait_for, write_toml
from tests.test_cli import till_agent
from tests.test_reconcile_e2e import DAY, SALES, cloud, loaded_records, sandbox_takings

__all__ = ["cloud"]  # the sandbox fixture, shared with the reconciliation's end-to-end test

RATE = 20  # Loaded's requests per second here: the read-back may use 2 of every window
SHARE = 2


def reconciled(till, destination, verify=True):
    query = {"from": DAY, "destination": destination, "verify": "true" if verify else "false"}
    answer = till.get("/v1/reconciliation", params=query).json()
    return next(d for d in answer["days"][0]["destinations"] if d["destination"] == destination)


def read_backs(sandbox: SandboxCloud) -> list[float]:
    """When the sandbox's Loaded saw each read of an order (GET orders/eid:...)."""
    return [
        r.at
        for r in list(sandbox.requests)
        if r.api == "loaded" and r.method == "GET" and "/orders/eid:" in r.path
    ]


def test_a_receipt_the_cloud_lost_or_altered_after_its_2xx_is_not_verified(
    start_agent, tmp_path, cloud
):
    overrides = {
        "api": {"listen": f"127.0.0.1:{free_port()}"},
        "delivery": {"enabled": True, "backoff_initial_seconds": 0.2, "backoff_max_seconds": 1},
        "destinations": {
            "engage": {"base_url": cloud.url},
            "loaded": {"base_url": cloud.url + "/loaded", "requests_per_second": RATE},
        },
    }
    sales = [body for body in SALES if body["uniqueReceiptId"] != "X-1"]
    _, till = start_agent(overrides)
    for body in sales:
        assert till.post("/v1/receipts", body).status_code == 202
    wait_for(lambda: reconciled(till, "loaded", verify=False)["status"] == "match", seconds=30)
    wait_for(lambda: reconciled(till, "engage", verify=False)["status"] == "match", seconds=30)
    before = reconciled(till, "loaded")
    assert before["status"] == "verified"
    assert before["verification"] == {"verified": len(sales), "accepted": 0, "notVerified": 0}
    assert _exact(before["cloud"]) == _exact(before["taken"])

    with cloud.loaded._lock:  # Loaded loses one order and changes another after their 2xx
        del cloud.loaded.orders["P-2"]
        cloud.loaded.orders["P-1"]["items"][0]["unitPrice"] = 11.5
    cloud.clear_requests()
    loaded = reconciled(till, "loaded")
    assert loaded["status"] == "mismatch"
    assert loaded["differences"] == ["P-1", "P-2"]
    states = {d["uniqueReceiptId"]: (d["state"], d["cloud"]) for d in loaded["details"]}
    assert states == {"P-1": ("altered", "18.95"), "P-2": ("lost", None)}
    assert loaded["verification"] == {
        "verified": len(sales) - 2,
        "accepted": 0,
        "notVerified": 2,
    }
    assert loaded["delivered"] == loaded["taken"]  # the 2xx said so; the read-back says not
    assert _exact(loaded["cloud"]) == sandbox_takings(loaded_records(cloud))
    assert "till-agent replay --from" in loaded["details"][0]["fix"]

    engage = reconciled(till, "engage")
    assert engage["status"] == "match"  # no per-receipt read at Engage: accepted, not verified
    assert engage["verification"]["accepted"] == engage["taken"]["count"]
    assert engage["verification"]["verified"] == 0

    # One read per receipt, never more than the read-back's share of any window.
    moments = sorted(read_backs(cloud))
    assert len(moments) == len(sales)
    for first in moments:
        assert sum(1 for m in moments if first <= m < first + 0.9) <= SHARE
    assert moments[-1] - moments[0] >= (len(sales) // SHARE - 1) * 0.9

    report = tmp_path / "qa.json"
    config_file = write_toml(tmp_path / "config.toml", merged(base_config(tmp_path), overrides))
    made = till_agent(
        "qa-report", "--from", DAY, "--verify", "--format", "json", "--output", str(report),
        "--config", str(config_file),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "some numbers differ" in made.stdout


def _exact(takings):
    return {
        "count": takings["count"],
        "gross": Decimal(takings["gross"]),
        "tax": Decimal(takings["tax"]),
        "tenders": {k: Decimal(v) for k, v in takings["tenders"].items()},
        "returns": {
            "count": takings["returns"]["count"],
            "gross": Decimal(takings["returns"]["gross"]),
        },
    }


def test_inside_the_read_back_delay_a_receipt_is_accepted_and_nothing_is_read(start_agent, cloud):
    overrides = {
        "delivery": {"enabled": True, "backoff_initial_seconds": 0.2, "backoff_max_seconds": 1},
        "destinations": {
            "loaded": {"base_url": cloud.url + "/loaded", "readback_after_seconds": 3600},
        },
    }
    _, till = start_agent(overrides)
    assert till.post("/v1/receipts", SALES[0]).status_code == 202
    wait_for(lambda: reconciled(till, "loaded", verify=False)["status"] == "match", seconds=30)
    cloud.clear_requests()
    loaded = reconciled(till, "loaded")
    assert loaded["status"] == "match"  # accepted at its 2xx; verified only once read back
    assert loaded["verification"] == {"verified": 0, "accepted": 1, "notVerified": 0}
    assert read_backs(cloud) == []
    assert till.get("/v1/reconciliation", params={"from": DAY, "verify": "yes"}).status_code == 400


def test_runs_cut_short_reach_every_receipt_and_remember_what_they_read(start_agent, cloud):
    overrides = {
        "delivery": {"enabled": True, "backoff_initial_seconds": 0.2, "backoff_max_seconds": 1},
        "destinations": {"loaded": {"base_url": cloud.url + "/loaded", "requests_per_second": 40}},
    }
    sales = [body for body in SALES if body["uniqueReceiptId"] != "X-1"]
    _, till = start_agent(overrides)
    for body in sales:
        assert till.post("/v1/receipts", body).status_code == 202
    wait_for(lambda: reconciled(till, "loaded", verify=False)["status"] == "match", seconds=30)

    cloud.faults.reject_ids(["S-1a"], status=503, api="loaded")  # the cloud fails one read
    first = reconciled(till, "loaded")
    assert first["verification"] == {"verified": 5, "accepted": 2, "notVerified": 0}
    assert first["status"] == "match"  # the 2xx stands; the read-back is not a delivery

    cloud.faults.reject_ids(["S-1b"], status=503, api="loaded")
    cloud.clear_requests()
    second = reconciled(till, "loaded")
    assert [r.path.rsplit(":", 1)[-1] for r in cloud.requests] == ["S-1b"]  # never read: first
    assert second["verification"] == {"verified": 5, "accepted": 2, "notVerified": 0}

    cloud.faults.reject_ids([], api="loaded")
    third = reconciled(till, "loaded")
    assert third["status"] == "verified"
    assert third["verification"] == {"verified": len(sales), "accepted": 0, "notVerified": 0}
