"""The outage forecast: at the till's intake rate, in how many hours the local store is full."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.core.health import DEGRADED, OK, Health

log = logging.getLogger(__name__)

COMPONENT = "storage:forecast"
WINDOW_SECONDS = 3600.0  # the rate is the last hour's
MIN_SPAN_SECONDS = 300.0  # less than this measured: no forecast yet


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic seconds
    used_bytes: int  # what the store holds (free pages inside the file not counted)
    records: int  # receipts and contact changes taken since install


@dataclass(frozen=True)
class Outlook:
    """The last forecast: None where there is nothing to say yet (or the store is not filling)."""

    hours_to_full: float | None = None
    records_per_hour: float | None = None
    bytes_per_record: float | None = None
    room_bytes: int | None = None

    def wire(self, warn_below_hours: float) -> dict[str, Any]:
        return {
            "hoursToFull": _round(self.hours_to_full),
            "recordsPerHour": _round(self.records_per_hour),
            "bytesPerRecord": _round(self.bytes_per_record),
            "roomBytes": self.room_bytes,
            "warnBelowHours": warn_below_hours,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def outlook(first: Sample, last: Sample, room_bytes: int) -> Outlook:
    """Records per hour times the bytes each adds, against the room left; pure."""
    span = last.at - first.at
    records = last.records - first.records
    if span < MIN_SPAN_SECONDS:
        return Outlook(room_bytes=room_bytes)
    per_hour = records * 3600.0 / span
    grown = last.used_bytes - first.used_bytes
    if records <= 0 or grown <= 0:
        return Outlook(None, per_hour, None, room_bytes)  # not filling at this rate
    per_record = grown / records
    return Outlook(room_bytes / (per_hour * per_record), per_hour, per_record, room_bytes)


class Forecast:
    """Samples the store once a minute (a scheduler job) and keeps the last outlook."""

    def __init__(
        self,
        *,
        measure: Callable[[], tuple[int, int]],
        records: Callable[[], int],
        health: Health,
        warn_below_hours: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._measure = measure  # (used bytes, room bytes left before the store is full)
        self._records = records
        self._health = health
        self.warn_below_hours = warn_below_hours
        self._monotonic = monotonic
        self._samples: deque[Sample] = deque()
        self.last = Outlook()

    def sample(self) -> Outlook:
        """Measure now, forget what is older than the window, forecast, report on the board."""
        used, room = self._measure()
        now = Sample(self._monotonic(), used, self._records())
        self._samples.append(now)
        while self._samples and now.at - self._samples[0].at > WINDOW_SECONDS:
            self._samples.popleft()
        self.last = outlook(self._samples[0], now, room)
        self._report(self.last)
        return self.last

    def _report(self, seen: Outlook) -> None:
        hours = seen.hours_to_full
        if seen.records_per_hour is None:
            self._health.report(COMPONENT, OK, "measuring the intake rate")
        elif hours is None:
            self._health.report(COMPONENT, OK, "not filling")
        elif hours >= self.warn_below_hours:
            self._health.report(COMPONENT, OK, f"full in {hours:.0f} hours at this rate")
        else:
            detail = f"at this rate the store is full in {hours:.1f} hours"
            previous = self._health.get(COMPONENT)
            if previous is None or previous.state != DEGRADED:
                log.warning("%s", detail, extra={"roomBytes": seen.room_bytes})
            self._health.report(COMPONENT, DEGRADED, detail)
