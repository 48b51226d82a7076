"""Reconciliation: per store-day and destination, did the till's takings arrive to the cent."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from agent import takings
from agent.config import KIND_AMENDS, DestinationSettings
from agent.errors import InvalidRequestError
from agent.figures import ZERO, Amounts, held_of, money, totals
from agent.ledger import DeadLetters
from agent.outbox import Outbox

MATCH, PENDING, MISMATCH = "match", "pending", "mismatch"
# What became of one receipt at one destination, as far as the till knows.
ARRIVED, WAITING, DEAD, ERASED, DIFFERS = "arrived", "pending", "deadLettered", "erased", "differs"
MAX_DAYS = 366


@dataclass
class Standing:
    """One receipt at one destination: what the till took, what the cloud holds, and why."""

    key: str
    destination: str
    day: str
    taken: Amounts
    held: Amounts | None
    state: str
    dead_letter_ids: list[int] = field(default_factory=list)
    sent_keys: list[str] = field(default_factory=list)

    @property
    def outstanding(self) -> Decimal:
        return self.taken.gross - (self.held.gross if self.held is not None else ZERO)


def state_of(taken: Amounts, held: Amounts | None, states: set[str]) -> str:
    """Arrived when the cloud holds exactly the latest figures; else why not."""
    if held is not None and held == taken:
        return ARRIVED
    if states & {"queued", "retrying"}:
        return WAITING
    if "dead_lettered" in states:
        return DEAD
    if "forgotten" in states:
        return ERASED
    return DIFFERS


def days_between(first_day: str, last_day: str) -> list[str]:
    """Every date from first to last, both included; InvalidRequestError for a bad range."""
    try:
        first, last = dt.date.fromisoformat(first_day), dt.date.fromisoformat(last_day)
    except ValueError as exc:
        raise InvalidRequestError(f"dates are YYYY-MM-DD: {exc}", code="invalid_range") from exc
    if last < first:
        raise InvalidRequestError("to is before from", code="invalid_range")
    if (last - first).days >= MAX_DAYS:
        raise InvalidRequestError(f"at most {MAX_DAYS} days at once", code="invalid_range")
    return [(first + dt.timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


class Reconciler:
    """Reads the ledger (the figures each receipt had, what each cloud acknowledged)."""

    def __init__(
        self,
        outbox: Outbox,
        destinations: Sequence[DestinationSettings],
        dead_letters: DeadLetters,
        identity: tuple[str, str],
    ) -> None:
        self._outbox = outbox
        self._dead_letters = dead_letters
        self.identity = identity
        takes = ("receipts", "receipts_with_contact")
        self.destinations = {
            d.name: d for d in destinations if d.enabled and any(t in d.takes for t in takes)
        }

    def standings(
        self, first_day: str, last_day: str, destination: str | None = None
    ) -> tuple[list[takings.TakenReceipt], list[Standing]]:
        """The receipts of those days, and each one's standing at each destination taking it."""
        with self._outbox.read() as conn:
            receipts = takings.receipts_between(conn, first_day, last_day)
            acks = takings.acknowledgements_between(conn, first_day, last_day)
        letters = defaultdict(list)
        for letter in self._dead_letters.all():
            letters[letter.record_key, letter.destination].append(letter.id)
        by_pair = defaultdict(list)
        for ack in acks:
            if ack.destination in self.destinations and destination in (None, ack.destination):
                by_pair[ack.key, ack.destination].append(ack)
        found = {r.key: r for r in receipts}
        return receipts, [
            self._standing(found[key], name, rows, letters[key, name])
            for (key, name), rows in by_pair.items()
        ]

    def _standing(
        self,
        receipt: takings.TakenReceipt,
        destination: str,
        rows: list[takings.Acknowledgement],
        dead_letter_ids: list[int],
    ) -> Standing:
        append_only = KIND_AMENDS.get(self.destinations[destination].kind) == "difference"
        parts = [row.part for row in rows if row.part is not None]
        held = held_of(parts, append_only=append_only)
        taken = receipt.facts.amounts
        return Standing(
            receipt.key,
            destination,
            receipt.facts.business_date,
            taken,
            held,
            state_of(taken, held, {row.state for row in rows}),
            dead_letter_ids if held != taken else [],
            sorted({part[0] for part in parts}),
        )

    def reconcile(
        self, first_day: str, last_day: str, destination: str | None = None
    ) -> dict[str, Any]:
        """The reconciliation answer (docs/api.md): per day, per destination."""
        days = days_between(first_day, last_day)
        if destination is not None and destination not in self.destinations:
            names = ", ".join(sorted(self.destinations)) or "none"
            raise InvalidRequestError(
                f"no destination {destination!r} takes receipts here (these do: {names})",
                code="unknown_destination",
            )
        _, standings = self.standings(first_day, last_day, destination)
        grouped: dict[tuple[str, str], list[Standing]] = defaultdict(list)
        for standing in standings:
            grouped[standing.day, standing.destination].append(standing)
        chosen = [destination] if destination else sorted(self.destinations)
        return {
            "from": first_day,
            "to": last_day,
            "storeId": self.identity[0],
            "tillId": self.identity[1],
            "days": [
                {
                    "date": day,
                    "destinations": [self._wire(day, name, grouped[day, name]) for name in chosen],
                }
                for day in days
            ],
        }

    def _wire(self, day: str, name: str, standings: list[Standing]) -> dict[str, Any]:
        settings = self.destinations[name]
        standings.sort(key=lambda s: s.key)
        off = [s for s in standings if s.state != ARRIVED]
        return {
            "destination": name,
            "kind": settings.kind,
            "status": status_of(off),
            "taken": totals(s.taken for s in standings).wire(),
            "delivered": totals(s.held for s in standings if s.held is not None).wire(),
            "pending": _outstanding(s for s in off if s.state == WAITING),
            "deadLettered": _outstanding(s for s in off if s.state == DEAD),
            "differing": _outstanding(s for s in off if s.state in (DIFFERS, ERASED)),
            "differences": [s.key for s in off],
            "details": [self._detail(day, settings, s) for s in off],
        }

    def _detail(
        self, day: str, settings: DestinationSettings, standing: Standing
    ) -> dict[str, Any]:
        held = standing.held
        return {
            "uniqueReceiptId": standing.key,
            "state": standing.state,
            "taken": money(standing.taken.gross),
            "delivered": None if held is None else money(held.gross),
            "deadLetterIds": standing.dead_letter_ids,
            "fix": fix_for(day, settings, standing),
        }


def status_of(off: Sequence[Standing]) -> str:
    if any(s.state in (DEAD, DIFFERS, ERASED) for s in off):
        return MISMATCH
    return PENDING if off else MATCH


def _outstanding(standings: Iterable[Standing]) -> dict[str, Any]:
    chosen = list(standings)
    return {"count": len(chosen), "gross": money(sum((s.outstanding for s in chosen), ZERO))}


def fix_for(day: str, settings: DestinationSettings, standing: Standing) -> str:
    """What a technician does about one difference, as a command where there is one."""
    if standing.state == WAITING:
        return "on its way: nothing to do (till-agent status says why it waits)"
    if standing.state == DEAD:
        ids = [str(i) for i in standing.dead_letter_ids] or ["ID"]
        return "; ".join(
            f"till-agent dead-letters show {i}, mend the cause, then "
            f"till-agent dead-letters retry {i}"
            for i in ids
        )
    if standing.state == ERASED:
        return "its buyer was erased on request before it left: nothing will be sent"
    if KIND_AMENDS.get(settings.kind) == "difference":
        held = ", ".join(standing.sent_keys)
        return (
            f"{settings.name} keeps the first receipt under each id and cannot take these again "
            f"({held}): correct them in {settings.name} itself"
        )
    return f"till-agent replay --from {day} --to {day} --destination {settings.name}"
