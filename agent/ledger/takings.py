"""The takings ledger: each revision's figures, what each cloud acknowledged, the day's totals.

Its tables (receipt_figures, day_totals and the sent_* columns of deliveries) are written only
here, inside the caller's transaction: intake's when a receipt is taken, delivery's when a
cloud acknowledges one. The day's totals are kept as counters so the status page reads one
row per destination, never the day's receipts.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from agent.core.figures import ZERO, Amounts, Facts, SentPart, held_of, money

Shift = tuple[int, Decimal]  # (receipts, gross)
NONE: Shift = (0, ZERO)


@dataclass(frozen=True)
class DayTotals:
    """One destination's takings for one day: what the till took, what the cloud holds."""

    destination: str
    taken_count: int = 0
    taken_gross: Decimal = ZERO
    delivered_count: int = 0
    delivered_gross: Decimal = ZERO

    def wire(self) -> dict[str, object]:
        return {
            "destination": self.destination,
            "taken": {"count": self.taken_count, "gross": money(self.taken_gross)},
            "delivered": {"count": self.delivered_count, "gross": money(self.delivered_gross)},
            "pending": {
                "count": self.taken_count - self.delivered_count,
                "gross": money(self.taken_gross - self.delivered_gross),
            },
        }


def record_taken(
    conn: sqlite3.Connection,
    key: str,
    revision: int,
    facts: Facts,
    targets: Iterable[str],
    *,
    earlier: Collection[str] = (),
    append_only: Collection[str] = (),
) -> None:
    """A revision was taken for these destinations (earlier: those that had the receipt)."""
    previous = figures_of(conn, key, revision - 1) if revision > 1 else None
    conn.execute(
        "INSERT INTO receipt_figures VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            key,
            revision,
            facts.business_date,
            facts.created_date,
            facts.receipt_number,
            facts.store_id,
            facts.currency,
            facts.order_id,
            facts.refund_of,
            facts.amounts.to_json(),
        ),
    )
    day, gross = facts.business_date, facts.amounts.gross
    for destination in targets:
        if previous is None or destination not in earlier:
            _shift(conn, day, destination, taken=(1, gross))
            continue
        old_day, old_gross = previous
        _shift(conn, old_day, destination, taken=(-1, -old_gross))
        _shift(conn, day, destination, taken=(1, gross))
        if old_day != day:  # the sale moved to another day: what the cloud holds moves too
            held = held_by(conn, key, destination, append_only=destination in append_only)
            if held is not None:
                _shift(conn, old_day, destination, delivered=(-1, -held.gross))
                _shift(conn, day, destination, delivered=(1, held.gross))


def record_sent(
    conn: sqlite3.Connection,
    key: str,
    destination: str,
    revision: int,
    sent: tuple[str, Amounts],
    *,
    append_only: bool,
) -> None:
    """A cloud acknowledged a revision, sent under sent[0] with the amounts sent[1].

    An append-only cloud keeps the first part it got under a key, so a resend changes nothing
    here either; a cloud that replaces by id holds the last one acknowledged.
    """
    before = held_by(conn, key, destination, append_only=append_only)
    keep_first = " AND sent_amounts IS NULL" if append_only else ""
    conn.execute(
        "UPDATE deliveries SET sent_key = ?, sent_amounts = ?, delivered_at = ? "
        f"WHERE record_key = ? AND destination = ? AND revision = ?{keep_first}",
        (sent[0], sent[1].to_json(), time.time(), key, destination, revision),
    )
    after = held_by(conn, key, destination, append_only=append_only)
    day = _latest_day(conn, key)
    if day is None or after is None:
        return
    count = 0 if before is not None else 1
    gross = after.gross - (before.gross if before is not None else ZERO)
    _shift(conn, day, destination, delivered=(count, gross))


def held_by(
    conn: sqlite3.Connection, key: str, destination: str, *, append_only: bool
) -> Amounts | None:
    """What the destination holds of a receipt, by what it acknowledged (None: nothing)."""
    rows = conn.execute(
        "SELECT sent_key, sent_amounts, delivered_at FROM deliveries "
        "WHERE record_key = ? AND destination = ? AND sent_amounts IS NOT NULL",
        (key, destination),
    ).fetchall()
    return held_of(rows, append_only=append_only)


def figures_of(conn: sqlite3.Connection, key: str, revision: int) -> tuple[str, Decimal] | None:
    """(business date, gross) of one revision, None if it was taken before figures were kept."""
    row = conn.execute(
        "SELECT business_date, amounts FROM receipt_figures "
        "WHERE unique_receipt_id = ? AND revision = ?",
        (key, revision),
    ).fetchone()
    return None if row is None else (row[0], Amounts.from_json(row[1]).gross)


def _latest_day(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute(
        "SELECT business_date FROM receipt_figures WHERE unique_receipt_id = ? "
        "ORDER BY revision DESC LIMIT 1",
        (key,),
    ).fetchone()
    return None if row is None else str(row[0])


def _shift(
    conn: sqlite3.Connection,
    day: str,
    destination: str,
    *,
    taken: Shift = NONE,
    delivered: Shift = NONE,
) -> None:
    """Add to a day's counters, in exact decimals (SQLite's own arithmetic is floating point)."""
    now = day_totals(conn, day, destination)
    conn.execute(
        "INSERT OR REPLACE INTO day_totals VALUES (?, ?, ?, ?, ?, ?)",
        (
            day,
            destination,
            now.taken_count + taken[0],
            money(now.taken_gross + taken[1]),
            now.delivered_count + delivered[0],
            money(now.delivered_gross + delivered[1]),
        ),
    )


def day_totals(conn: sqlite3.Connection, day: str, destination: str) -> DayTotals:
    """One row: O(1) however many receipts the day had."""
    row = conn.execute(
        "SELECT taken_count, taken_gross, delivered_count, delivered_gross FROM day_totals "
        "WHERE business_date = ? AND destination = ?",
        (day, destination),
    ).fetchone()
    if row is None:
        return DayTotals(destination)
    return DayTotals(destination, row[0], Decimal(row[1]), row[2], Decimal(row[3]))


def oldest_waiting(conn: sqlite3.Connection, destination: str) -> tuple[str, float] | None:
    """(uniqueReceiptId, taken at) of the destination's oldest receipt not yet delivered.

    The partial index deliveries_waiting holds only waiting rows, in the order they were
    taken: this reads a handful of rows however long the ledger is.
    """
    row = conn.execute(
        "SELECT d.record_key, r.received_at FROM deliveries d INDEXED BY deliveries_waiting "
        "JOIN receipts r ON r.unique_receipt_id = d.record_key "
        "WHERE d.destination = ? AND d.state IN ('queued', 'retrying') "
        "ORDER BY d.rowid LIMIT 1",
        (destination,),
    ).fetchone()
    return None if row is None else (str(row[0]), float(row[1]))


def forget_figures(conn: sqlite3.Connection, key: str) -> None:
    """The ledger's retention purge removes a receipt: its figures go with it."""
    conn.execute("DELETE FROM receipt_figures WHERE unique_receipt_id = ?", (key,))


def purge_days(conn: sqlite3.Connection, before_day: str) -> int:
    """Day totals older than the ledger keeps receipts for."""
    return conn.execute("DELETE FROM day_totals WHERE business_date < ?", (before_day,)).rowcount


@dataclass(frozen=True)
class TakenReceipt:
    """The latest revision of a receipt the till took, with its figures."""

    key: str
    revision: int
    facts: Facts
    received_at: float  # when the till first handed it over
    updated_at: float  # when its latest revision came


@dataclass(frozen=True)
class Acknowledgement:
    """One revision of a receipt at one destination: its state, and what went out, if it did."""

    key: str
    destination: str
    revision: int
    state: str
    part: SentPart | None


_LATEST = (
    "receipt_figures f JOIN receipts r ON r.unique_receipt_id = f.unique_receipt_id "
    "AND r.revision = f.revision WHERE f.business_date BETWEEN ? AND ?"
)


def receipts_between(conn: sqlite3.Connection, first_day: str, last_day: str) -> list[TakenReceipt]:
    """Every receipt whose latest revision is dated within the days, in the order taken."""
    rows = conn.execute(
        "SELECT f.unique_receipt_id, f.revision, f.business_date, f.created_date, "
        "f.receipt_number, f.store_id, f.currency, f.order_id, f.refund_of, f.amounts, "
        f"r.received_at, r.updated_at FROM {_LATEST} ORDER BY r.received_at, f.unique_receipt_id",
        (first_day, last_day),
    ).fetchall()
    return [TakenReceipt(row[0], row[1], _facts(row[2:10]), row[10], row[11]) for row in rows]


def _facts(row: tuple[Any, ...]) -> Facts:
    day, created, number, store, currency, order_id, refund_of, amounts = row
    return Facts(
        day, created, number, store, currency, order_id, refund_of, Amounts.from_json(amounts)
    )


def acknowledgements_between(
    conn: sqlite3.Connection, first_day: str, last_day: str
) -> list[Acknowledgement]:
    """Every delivery row of those receipts (superseded revisions left out: they never went)."""
    rows = conn.execute(
        "SELECT d.record_key, d.destination, d.revision, d.state, d.sent_key, d.sent_amounts, "
        f"d.delivered_at FROM deliveries d JOIN {_LATEST} AND d.record_key = f.unique_receipt_id "
        "AND d.state != 'superseded'",
        (first_day, last_day),
    ).fetchall()
    return [
        Acknowledgement(
            row[0], row[1], row[2], row[3], None if row[5] is None else (row[4], row[5], row[6])
        )
        for row in rows
    ]
