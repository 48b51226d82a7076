"""The go-live QA report: what was tested, when, each receipt's fate per cloud, the day's sums."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from agent import __version__
from agent.core.figures import kinds, money
from agent.ledger.takings import TakenReceipt
from agent.ops.reconcile import ALTERED, ARRIVED, LOST, Reconciler, Standing, days_between

DELIVERY_STATE = {ARRIVED: "delivered"}


def local_time(timestamp: float | None) -> str | None:
    """A moment in the till's own time zone, with its offset (what the vendor compares with)."""
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def qa_report(
    reconciler: Reconciler,
    first_day: str,
    last_day: str,
    *,
    verify: bool = False,
    now: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """The report's JSON (agent.ops.render.qa_markdown writes the Markdown around it); verify:
    each receipt read back from the clouds that allow it (its verification)."""
    days_between(first_day, last_day)  # the same range checks as the reconciliation
    receipts, standings, reconciliation = reconciler.report(first_day, last_day, verify=verify)
    statuses = [d["status"] for day in reconciliation["days"] for d in day["destinations"]]
    return {
        "from": first_day,
        "to": last_day,
        "storeId": reconciler.identity[0],
        "tillId": reconciler.identity[1],
        "agentVersion": __version__,
        "generatedAt": local_time(now()),
        "testsRan": {
            "first": local_time(min((r.received_at for r in receipts), default=None)),
            "last": local_time(max((r.updated_at for r in receipts), default=None)),
        },
        "destinations": [
            {"name": d.name, "kind": d.kind} for d in reconciler.destinations.values()
        ],
        "receipts": receipt_rows(receipts, standings),
        "reconciliation": reconciliation,
        "allMatch": all(status in ("match", "verified") for status in statuses),
    }


def receipt_rows(receipts: list[TakenReceipt], standings: list[Standing]) -> list[dict[str, Any]]:
    """Every receipt with its kind, figures and fate per destination; nothing about a person."""
    orders = Counter(r.facts.order_id for r in receipts if r.facts.order_id is not None)
    split_orders = frozenset(order for order, n in orders.items() if n > 1)
    by_key: dict[str, dict[str, Any]] = {}
    for standing in standings:
        by_key.setdefault(standing.key, {})[standing.destination] = _fate(standing)
    return [
        {
            "uniqueReceiptId": r.key,
            "receiptNumber": r.facts.receipt_number,
            "createdDate": r.facts.created_date,
            "kinds": kinds(r.facts, r.revision, split_orders),
            "revision": r.revision,
            "currency": r.facts.currency,
            "gross": money(r.facts.amounts.gross),
            "tax": money(r.facts.amounts.tax),
            "tenders": {kind: money(v) for kind, v in r.facts.amounts.tenders},
            "destinations": by_key.get(r.key, {}),
        }
        for r in receipts
    ]


def _fate(standing: Standing) -> dict[str, Any]:
    """Delivered (or why not), and how far the till can vouch for it (reconcile.ACCEPTED...)."""
    read_otherwise = standing.verification in (LOST, ALTERED)
    return {
        "state": standing.verification
        if read_otherwise
        else DELIVERY_STATE.get(standing.state, standing.state),
        "verification": standing.verification,
        "delivered": None if standing.held is None else money(standing.held.gross),
        "cloud": None if standing.cloud is None else money(standing.cloud.gross),
    }
