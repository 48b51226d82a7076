"""Reconciliation: per store-day and destination, did the till's takings arrive to the cent."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from agent.core import ratelimit
from agent.core.config import DestinationSettings
from agent.core.errors import CloudError, DeadlineError, InvalidRequestError, StoppingError
from agent.core.figures import ZERO, Amounts, held_of, money, totals
from agent.ledger import DeadLetters, Outbox, takings

log = logging.getLogger(__name__)

MATCH, PENDING, MISMATCH, VERIFIED = "match", "pending", "mismatch", "verified"
# What became of one receipt at one destination, as far as the till knows.
ARRIVED, WAITING, DEAD, ERASED, DIFFERS = "arrived", "pending", "deadLettered", "erased", "differs"
MAX_DAYS = 366
# How far the till can vouch for a receipt at a cloud: the cloud answered 2xx ("accepted"), or
# it was read back as the till took it ("verified"), or read back missing ("lost") or with
# other figures ("altered"). docs/connectors.md says which clouds can be read back.
ACCEPTED, LOST, ALTERED, NOT_DELIVERED = "accepted", "lost", "altered", "not delivered"
READBACK_SECONDS = 20.0  # one reconciliation's read-back; what is left unread stays accepted


@runtime_checkable
class CloudReader(Protocol):
    """A connector that can read back what its cloud holds of a receipt (docs/connectors.md)."""

    # A cloud that applies receipts in batches (Engage: about every 15 minutes) is read back
    # only this long after it acknowledged the receipt; before that the receipt is accepted.
    readback_after_seconds: float

    def read_back(self, key: str) -> Amounts | None:
        """What the cloud holds under the key the receipt was sent with; None: nothing."""
        ...


def readers_of(connectors: Mapping[str, object]) -> dict[str, CloudReader]:
    """The connectors that can read back what their cloud holds, by destination name."""
    return {name: c for name, c in connectors.items() if isinstance(c, CloudReader)}


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


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
    read_keys: list[str] = field(default_factory=list)  # what the cloud holds it under
    acknowledged_at: float = 0.0  # when the cloud last answered 2xx for it
    verification: str = NOT_DELIVERED
    cloud: Amounts | None = None  # what a read-back found

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


@dataclass(frozen=True)
class ReadBack:
    """What one receipt was last read back as (in memory: a restart reads it again)."""

    acknowledged_at: float  # of the part read: a later send makes this stale
    read_at: float  # monotonic
    verification: str
    cloud: Amounts | None


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
        readers: Mapping[str, CloudReader] | None = None,
        *,
        now: Callable[[], float] = time.time,
        wait: Callable[[float], bool] = _sleep,
    ) -> None:
        self._outbox = outbox
        self.readers = dict(readers or {})
        self._now = now
        self._wait = wait
        self._reading = threading.Lock()  # one read-back at a time: its share is per window
        self._read: dict[tuple[str, str], ReadBack] = {}  # (destination, key): the last read
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
        append_only = self.destinations[destination].amends == "difference"
        parts = sorted((row.part for row in rows if row.part is not None), key=lambda p: p[2])
        held = held_of(parts, append_only=append_only)
        taken = receipt.facts.amounts
        state = state_of(taken, held, {row.state for row in rows})
        sent = sorted({part[0] for part in parts})
        return Standing(
            receipt.key,
            destination,
            receipt.facts.business_date,
            taken,
            held,
            state,
            dead_letter_ids if held != taken else [],
            sent,
            sent if append_only else [part[0] for part in parts[-1:]],
            max((part[2] for part in parts), default=0.0),
            ACCEPTED if state == ARRIVED else NOT_DELIVERED,
        )

    # --- read-back ------------------------------------------------------------------------

    def verify(self, standings: Sequence[Standing]) -> None:
        """Read back what each cloud holds of the receipts it acknowledged, within the read-back
        share of its rate (ratelimit.READBACK_SHARE) and READBACK_SECONDS; sets verification."""
        deadline = time.monotonic() + READBACK_SECONDS
        opened = ratelimit.Scope(self._wait, deadline=deadline, readback=True)
        with self._reading, ratelimit.scope(opened):
            for name, reader in sorted(self.readers.items()):
                chosen = [s for s in standings if s.destination == name and s.state == ARRIVED]
                self._verify_at(name, reader, chosen)

    def _verify_at(self, name: str, reader: CloudReader, standings: list[Standing]) -> None:
        """Read the receipts read least lately first, so that runs cut short by the share or
        the time still reach every receipt; one not read this run keeps what it was read as,
        as long as nothing was sent for it since."""
        ripe = self._now() - reader.readback_after_seconds
        readable = [s for s in standings if s.acknowledged_at <= ripe]  # else: batch window
        for standing in readable:
            remembered = self._read.get((name, standing.key))
            if remembered is not None and remembered.acknowledged_at == standing.acknowledged_at:
                standing.cloud, standing.verification = remembered.cloud, remembered.verification
        readable.sort(key=lambda s: (self._last_read(name, s), s.key))
        for standing in readable:
            try:
                found = [reader.read_back(key) for key in standing.read_keys]
            except (CloudError, StoppingError) as exc:
                log.info("read-back at %s ended: %s", name, type(exc).__name__)
                if not isinstance(exc, DeadlineError | StoppingError):  # the cloud failed it:
                    self._remember(name, standing)  # next time it comes last, not first
                return  # the rest keep what they were read as, or stay accepted
            held = [amounts for amounts in found if amounts is not None]
            standing.cloud = sum(held[1:], held[0]) if held else None
            standing.verification = verdict_of(standing.taken, standing.cloud)
            self._remember(name, standing)

    def _remember(self, name: str, standing: Standing) -> None:
        self._read[name, standing.key] = ReadBack(
            standing.acknowledged_at, time.monotonic(), standing.verification, standing.cloud
        )

    def _last_read(self, name: str, standing: Standing) -> float:
        remembered = self._read.get((name, standing.key))
        return float("-inf") if remembered is None else remembered.read_at

    def reconcile(
        self,
        first_day: str,
        last_day: str,
        destination: str | None = None,
        *,
        verify: bool = False,
    ) -> dict[str, Any]:
        """The reconciliation answer (docs/api.md): per day, per destination; verify: read
        back from the clouds that allow it (the cloud column and the verified status)."""
        return self.report(first_day, last_day, destination, verify=verify)[2]

    def report(
        self,
        first_day: str,
        last_day: str,
        destination: str | None = None,
        *,
        verify: bool = False,
    ) -> tuple[list[takings.TakenReceipt], list[Standing], dict[str, Any]]:
        """The receipts, their standings and the reconciliation answer, read back once."""
        days = days_between(first_day, last_day)
        if destination is not None and destination not in self.destinations:
            names = ", ".join(sorted(self.destinations)) or "none"
            raise InvalidRequestError(
                f"no destination {destination!r} takes receipts here (these do: {names})",
                code="unknown_destination",
            )
        receipts, standings = self.standings(first_day, last_day, destination)
        if verify:
            self.verify(standings)
        return (
            receipts,
            standings,
            self._answer(first_day, last_day, destination, days, standings, verify),
        )

    def _answer(
        self,
        first_day: str,
        last_day: str,
        destination: str | None,
        days: list[str],
        standings: list[Standing],
        verify: bool,
    ) -> dict[str, Any]:
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
                    "destinations": [
                        self._wire(day, name, grouped[day, name], verify) for name in chosen
                    ],
                }
                for day in days
            ],
        }

    def _wire(self, day: str, name: str, standings: list[Standing], verify: bool) -> dict[str, Any]:
        settings = self.destinations[name]
        standings.sort(key=lambda s: s.key)
        off = [s for s in standings if s.state != ARRIVED or s.verification in (LOST, ALTERED)]
        status = status_of(off)
        if verify and status == MATCH and all(s.verification == VERIFIED for s in standings):
            status = VERIFIED
        read = [s for s in standings if s.verification in (VERIFIED, LOST, ALTERED)]
        return {
            "destination": name,
            "kind": settings.kind,
            "status": status,
            "taken": totals(s.taken for s in standings).wire(),
            "delivered": totals(s.held for s in standings if s.held is not None).wire(),
            "pending": _outstanding(s for s in off if s.state == WAITING),
            "deadLettered": _outstanding(s for s in off if s.state == DEAD),
            "differing": _outstanding(s for s in off if s.state in (DIFFERS, ERASED)),
            "differences": [s.key for s in off],
            "details": [self._detail(day, settings, s) for s in off],
            "cloud": totals(s.cloud for s in read if s.cloud is not None).wire()
            if verify
            else None,
            "verification": _verification(standings) if verify else None,
        }

    def _detail(
        self, day: str, settings: DestinationSettings, standing: Standing
    ) -> dict[str, Any]:
        held, cloud = standing.held, standing.cloud
        read = standing.verification in (LOST, ALTERED)
        return {
            "uniqueReceiptId": standing.key,
            "state": standing.verification if read else standing.state,
            "taken": money(standing.taken.gross),
            "delivered": None if held is None else money(held.gross),
            "cloud": None if cloud is None else money(cloud.gross),
            "deadLetterIds": standing.dead_letter_ids,
            "fix": fix_for(day, settings, standing),
        }


def status_of(off: Sequence[Standing]) -> str:
    if any(s.state in (DEAD, DIFFERS, ERASED) or s.verification in (LOST, ALTERED) for s in off):
        return MISMATCH
    return PENDING if off else MATCH


def verdict_of(taken: Amounts, cloud: Amounts | None) -> str:
    """What a read-back says: the cloud holds nothing, other figures, or what the till took."""
    if cloud is None:
        return LOST
    return VERIFIED if cloud == taken else ALTERED


def _verification(standings: Sequence[Standing]) -> dict[str, int]:
    """How many receipts were read back as taken, only acknowledged, or read back otherwise."""
    count = {VERIFIED: 0, ACCEPTED: 0, LOST: 0, ALTERED: 0}
    for standing in standings:
        if standing.verification in count:
            count[standing.verification] += 1
    return {
        "verified": count[VERIFIED],
        "accepted": count[ACCEPTED],
        "notVerified": count[LOST] + count[ALTERED],
    }


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
    if standing.state == ERASED and standing.verification not in (LOST, ALTERED):
        return "its buyer was erased on request before it left: nothing will be sent"
    if settings.amends == "difference":
        held = ", ".join(standing.sent_keys)
        return (
            f"{settings.name} keeps the first receipt under each id and cannot take these again "
            f"({held}): correct them in {settings.name} itself"
        )
    return f"till-agent replay --from {day} --to {day} --destination {settings.name}"
