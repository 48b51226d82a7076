"""A day of sales through an outage, a dead letter and its fix, against the sandbox cloud.

Reconciliation says pending during the outage, mismatch naming the dead-lettered receipt, match
once it is fixed and retried; the QA report's figures equal what the sandbox itself holds
(summed here from the sandbox's own records, not from the agent's ledger).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from decimal import Decimal
from typing import Any

import pytest

from agent.sandbox import SandboxCloud
from tests.conftest import base_config, free_port, make_receipt, merged, wait_for, write_toml
from tests.test_cli import till_agent

DAY = "2026-11-23"


@pytest.fixture
def cloud():
    sandbox = SandboxCloud(seed=5).serve()
    yield sandbox
    sandbox.stop()


def receipt(receipt_id, lines, tenders, *, contact=True, **extra):
    """A receipt of these line amounts (negative: returned) and tenders, on DAY."""
    body = make_receipt(receipt_id, lines=len(lines), contact=contact)
    body["createdDate"] = f"{DAY}T{10 + len(receipt_id) % 8:02d}:15:00+01:00"
    for item, text in zip(body["items"], lines, strict=True):
        value = Decimal(text)
        item.update(
            type="RETURN" if value < 0 else "PURCHASE",
            quantity=-1 if value < 0 else 1,
            grossPaidPrice=str(abs(value)),
            taxAmount=str((abs(value) / 5).quantize(Decimal("0.01"))),
        )
    body["totalGrossPrice"] = str(sum(Decimal(v) for v in lines))
    body["paymentMethods"] = [{"type": k, "value": v} for k, v in tenders.items()]
    return {**body, **extra}


SALES = [
    receipt("P-1", ["12.50", "7.45"], {"CARD": "19.95"}),
    receipt("P-2", ["3.10"], {"CASH": "3.10"}, contact=False),
    receipt("S-1a", ["15.00"], {"CARD": "15.00"}, orderId="O-1"),  # one split bill ...
    receipt("S-1b", ["7.50"], {"CASH": "7.50"}, contact=False, orderId="O-1"),  # ... two receipts
    receipt("P-3", ["9.99", "5.01"], {"CARD": "10.00", "GIFTCARD": "5.00"}),  # split payment
    receipt("F-1", ["-12.50"], {"CARD": "-12.50"}, originalReceiptId="P-1"),  # a refund
    receipt("A-1", ["4.00", "6.00"], {"CARD": "10.00"}),  # amended below
    receipt("X-1", ["8.88"], {"CARD": "8.88"}, contact=False),  # Loaded refuses it at first
]
AMENDED = receipt("A-1", ["4.00", "6.00", "2.25"], {"CARD": "12.25"})


def reconciled(till, destination):
    answer = till.get("/v1/reconciliation", params={"from": DAY}).json()
    return next(d for d in answer["days"][0]["destinations"] if d["destination"] == destination)


def engage_takes(body):
    return "contact" in body


def test_a_day_of_sales_reconciles_through_an_outage_and_a_dead_letter(
    start_agent, tmp_path, cloud
):
    port = free_port()
    overrides = {
        "api": {"listen": f"127.0.0.1:{port}"},
        "delivery": {"enabled": True, "backoff_initial_seconds": 0.2, "backoff_max_seconds": 1},
        "destinations": {
            "engage": {"base_url": cloud.url},
            "loaded": {"base_url": cloud.url + "/loaded"},
        },
    }
    config_file = write_toml(tmp_path / "config.toml", merged(base_config(tmp_path), overrides))
    cloud.faults.set_offline("refused")
    _, till = start_agent(overrides)
    for body in SALES:
        assert till.post("/v1/receipts", body).status_code == 202

    # The outage: everything is on its way, nothing is missing for good.
    for name, takes in (("loaded", lambda b: True), ("engage", engage_takes)):
        during = reconciled(till, name)
        assert during["status"] == "pending", name
        assert during["differences"] == sorted(b["uniqueReceiptId"] for b in SALES if takes(b))
        assert during["delivered"]["count"] == 0

    cloud.faults.reject_ids(["X-1"], status=400, api="loaded")
    cloud.faults.set_offline(None)
    wait_for(lambda: len(till.get("/v1/dead-letters").json()) == 1, seconds=30)
    wait_for(lambda: reconciled(till, "engage")["status"] == "match", seconds=30)
    assert till.post("/v1/receipts", AMENDED).json()["status"] == "amended"
    wait_for(lambda: "A-1~r2" in cloud.engage.receipts, seconds=30)
    wait_for(lambda: reconciled(till, "loaded")["pending"]["count"] == 0, seconds=30)

    # The dead letter: a mismatch naming the receipt and the command that fixes it.
    loaded = reconciled(till, "loaded")
    assert loaded["status"] == "mismatch"
    assert loaded["differences"] == ["X-1"]
    assert loaded["deadLettered"] == {"count": 1, "gross": "8.88"}
    (letter,) = till.get("/v1/dead-letters").json()
    assert f"dead-letters retry {letter['id']}" in loaded["details"][0]["fix"]
    assert reconciled(till, "engage")["status"] == "match"

    cloud.faults.reject_ids([], api="loaded")  # the cause mended at Loaded's end
    assert till.post(f"/v1/dead-letters/{letter['id']}/retry", {}).status_code == 202
    wait_for(lambda: reconciled(till, "loaded")["status"] == "match", seconds=30)

    report = qa_report_from_the_command_line(config_file, tmp_path)
    assert report["allMatch"] is True
    assert report["from"] == report["to"] == DAY
    assert report["testsRan"]["first"] <= report["testsRan"]["last"]
    kinds = {r["uniqueReceiptId"]: r["kinds"] for r in report["receipts"]}
    assert kinds["F-1"] == ["refund"]
    assert kinds["S-1a"] == kinds["S-1b"] == ["purchase", "split"]
    assert kinds["P-3"] == ["purchase", "split"]
    assert kinds["A-1"] == ["purchase", "amended"]
    assert kinds["P-2"] == ["purchase"]
    days = {d["destination"]: d for d in report["reconciliation"]["days"][0]["destinations"]}
    assert exact(days["loaded"]["delivered"]) == sandbox_takings(loaded_records(cloud))
    assert exact(days["engage"]["delivered"]) == sandbox_takings(engage_records(cloud))
    assert days["loaded"]["taken"]["gross"] == "69.18"  # 79.43 sold - 12.50 refunded + 2.25 added
    for row in report["receipts"]:
        for name, records in (("loaded", loaded_records(cloud)), ("engage", engage_records(cloud))):
            fate = row["destinations"].get(name)
            if fate is not None:
                assert Decimal(fate["delivered"]) == records[row["uniqueReceiptId"]]["gross"]


def qa_report_from_the_command_line(config_file, tmp_path) -> dict[str, Any]:
    """`till-agent qa-report` against the running agent; the JSON at the end of the Markdown."""
    target = tmp_path / "qa.md"
    result = till_agent(
        "qa-report", "--from", DAY, "--config", str(config_file), "--output", str(target)
    )
    assert result.returncode == 0, result.stderr
    assert "every number adds up" in result.stdout
    text = target.read_text("utf-8")
    assert "| Day | Destination | Status |" in text
    assert "+4670000" not in text  # the buyers' match keys never reach the vendor's copy
    (block,) = re.findall(r"```json\n(.*)\n```", text, re.DOTALL)
    report: dict[str, Any] = json.loads(block)
    return report


# --- the sandbox's own records, summed here without the agent's code ------------------------


def money(value: Any) -> Decimal:
    return Decimal(str(value))


def figures_of(bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """One receipt's parts as a cloud holds them, added up."""
    gross = sum((money(b["totalGrossPrice"]) for b in bodies), Decimal(0))
    tax = sum(
        (
            -abs(money(i["taxAmount"])) if i["type"] == "RETURN" else money(i["taxAmount"])
            for b in bodies
            for i in b["items"]
        ),
        Decimal(0),
    )
    tenders: dict[str, Decimal] = defaultdict(Decimal)
    for body in bodies:
        for payment in body["paymentMethods"]:
            tenders[payment["type"]] += money(payment["value"])
    return {"gross": gross, "tax": tax, "tenders": tenders}


def order_figures(order: dict[str, Any]) -> dict[str, Any]:
    """A Loaded order added up: unit price x quantity, a refunded item (or order) negative."""
    gross, tax = Decimal(0), Decimal(0)
    for item in order["items"]:
        refunded = order["status"] == "Refunded" or item.get("settlementStatus") == "Refunded"
        units = item["quantity"] * (-1 if refunded else 1)
        gross += money(item["unitPrice"]) * units
        tax += money(item["unitTax"]) * units
    tenders: dict[str, Decimal] = defaultdict(Decimal)
    for tender in order["tenders"]:
        tenders[tender["type"]] += money(tender["invoiceAmount"])
    return {"gross": gross, "tax": tax, "tenders": tenders}


def loaded_records(cloud) -> dict[str, dict[str, Any]]:
    return {
        key: order_figures(order)
        for key, order in cloud.loaded.orders.items()
        if str(order["createdAt"]).startswith(DAY)
    }


def engage_records(cloud) -> dict[str, dict[str, Any]]:
    """Engage keeps an amendment as its own receipt (id~rN): added to the original's."""
    parts: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for key, body in cloud.engage.receipts.items():
        if str(body["createdDate"]).startswith(DAY):
            parts[key.split("~r")[0]].append(body)
    return {key: figures_of(bodies) for key, bodies in parts.items()}


def sandbox_takings(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The reconciliation's shape, from the sandbox's records (money as Decimal)."""
    tenders: dict[str, Decimal] = defaultdict(Decimal)
    for figures in records.values():
        for kind, value in figures["tenders"].items():
            tenders[kind] += value
    returns = [f["gross"] for f in records.values() if f["gross"] < 0]
    return {
        "count": len(records),
        "gross": sum((f["gross"] for f in records.values()), Decimal(0)),
        "tax": sum((f["tax"] for f in records.values()), Decimal(0)),
        "tenders": {k: v for k, v in tenders.items() if v != 0},
        "returns": {"count": len(returns), "gross": sum(returns, Decimal(0))},
    }


def exact(takings: dict[str, Any]) -> dict[str, Any]:
    """The reconciliation's money strings as Decimal (1.5 and 1.50 are the same money)."""
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
