"""The till's status in one answer: queues per destination, counters, components, storage."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent import __version__
from agent.contacts import ContactCache
from agent.core.config import DestinationSettings
from agent.core.health import Health
from agent.intake import Intake
from agent.ledger import Outbox, takings
from agent.ops.forecast import Forecast, Outlook

NOT_DELIVERING = "no sender for this destination is running"


def iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


class StatusReporter:
    """Reads the stores and the health board; writes nothing, reaches no cloud."""

    def __init__(
        self,
        *,
        outbox: Outbox,
        intake: Intake,
        health: Health,
        destinations: Sequence[DestinationSettings],
        identity: tuple[str, str],
        data_dir: Path,
        limit_bytes: int,
        workers: Callable[[str], Mapping[str, Any] | None] = lambda name: None,
        cache: ContactCache | None = None,
        forecast: Forecast | None = None,
        cache_state: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self._forecast = forecast
        self._cache_state = cache_state
        self._workers = workers
        self._cache = cache
        self._outbox = outbox
        self._intake = intake
        self._health = health
        self._destinations = tuple(d for d in destinations if d.enabled)
        self._identity = identity
        self._data_dir = data_dir
        self._limit_bytes = limit_bytes
        self._lock = threading.Lock()
        self._last: tuple[float, dict[str, Any] | None] = (0.0, None)

    def report(self, max_age_seconds: float = 0.0) -> dict[str, Any]:
        """The /v1/status answer (shape: api.schemas.StatusAnswer); with max_age_seconds, one
        made that recently may be given again (the status page under a flood of loads)."""
        if max_age_seconds <= 0:
            return self._report()
        with self._lock:
            made_at, made = self._last
            if made is not None and time.monotonic() - made_at < max_age_seconds:
                return made
            fresh = self._report()
            self._last = (time.monotonic(), fresh)
            return fresh

    def _report(self) -> dict[str, Any]:
        return {
            "status": self._health.overall(),
            "version": __version__,
            "storeId": self._identity[0],
            "tillId": self._identity[1],
            "destinations": [self._destination(d) for d in self._destinations],
            "counters": self._intake.counters(),
            "components": [
                {"name": c.name, "state": c.state, "detail": c.detail}
                for c in self._health.snapshot()
            ],
            "storage": self._storage(),
            "contacts": self._contacts(),
            "forecast": self._outlook(),
        }

    def _outlook(self) -> dict[str, Any]:
        """The last outage forecast (a scheduler job measures once a minute; nothing here)."""
        if self._forecast is None:
            return Outlook().wire(0.0)
        return self._forecast.last.wire(self._forecast.warn_below_hours)

    def _contacts(self) -> dict[str, Any]:
        """Size and freshness; while the first download runs, its progress, rate and finish."""
        state = self._cache_state() if self._cache_state else {"cacheState": "none"}
        loading = {"state": state["cacheState"], "firstDownload": state.get("progress")}
        if self._cache is None:
            return {"contacts": 0, "lastSyncAt": None, "syncLagSeconds": None, **loading}
        stats = self._cache.stats()
        synced = stats["lastSyncAt"]
        return {
            "contacts": stats["contacts"],
            "lastSyncAt": iso(float(synced)) if synced is not None else None,
            "syncLagSeconds": round(time.time() - float(synced), 1) if synced is not None else None,
            **loading,
        }

    def _destination(self, destination: DestinationSettings) -> dict[str, Any]:
        depth = self._outbox.depth(destination.name)
        oldest = depth.oldest_enqueued_at
        worker = self._workers(destination.name)
        last_success = worker.get("lastSuccessAt") if worker else None
        return {
            "name": destination.name,
            "kind": destination.kind,
            "state": worker["state"] if worker else "not delivering",
            "detail": worker["detail"] if worker else NOT_DELIVERING,
            "depth": depth.pending,
            "inFlight": depth.claimed,
            "setAside": worker["setAside"] if worker else 0,
            "oldestAgeSeconds": None
            if oldest is None
            else round(max(0.0, time.time() - oldest), 3),
            "lastSuccessAt": iso(last_success) if isinstance(last_success, float) else None,
            "sent": worker["sent"] if worker else 0,
            "failed": worker["failed"] if worker else 0,
            "pausedSeconds": worker["pausedSeconds"] if worker else 0.0,
            **self._takings(destination.name),
        }

    def _takings(self, name: str) -> dict[str, Any]:
        """Today's totals (kept as counters: one row) and the oldest receipt still waiting."""
        with self._outbox.read() as conn:
            today = takings.day_totals(conn, dt.date.today().isoformat(), name).wire()
            oldest = takings.oldest_waiting(conn, name)
        del today["destination"]
        waiting = None
        if oldest is not None:
            key, taken_at = oldest
            age = round(max(0.0, time.time() - taken_at), 1)
            waiting = {"uniqueReceiptId": key, "takenAt": iso(taken_at), "ageSeconds": age}
        return {"today": today, "oldestUndelivered": waiting}

    def _storage(self) -> dict[str, int]:
        used = sum(entry.stat().st_size for entry in os.scandir(self._data_dir) if entry.is_file())
        return {
            "dataDirBytes": used,
            "freeBytes": shutil.disk_usage(self._data_dir).free,
            "limitBytes": self._limit_bytes,
        }


def describe_cache(cache: Mapping[str, Any]) -> str:
    """The /v1/status contacts section in words, for the status page and `till-agent status`."""
    line = f"{cache['contacts']} contacts, last sync {cache['lastSyncAt'] or '-'}"
    download = cache.get("firstDownload")
    if cache.get("state") != "loading" or download is None:
        return line
    return f"{line}; first download {'running' if download['running'] else 'paused'}: " + (
        describe_download(download)
    )


def describe_download(download: Mapping[str, Any]) -> str:
    """'40000 of 100000 contacts so far, 233 contacts/s (1.2 pages/s, 1.17 requests/s
    allowed), done about 2026-11-23T12:34:00+00:00'."""
    total = download["total"]
    parts = [f"{download['contacts']} of {total if total is not None else '?'} contacts so far"]
    if download["contactsPerSecond"] is not None:
        allowed = download["allowedRequestsPerSecond"]
        limit = "" if allowed is None else f", {allowed} requests/s allowed"
        rate = f"{download['contactsPerSecond']} contacts/s ({download['pagesPerSecond']} pages/s"
        parts.append(f"{rate}{limit})")
    finish = download["estimatedFinishAt"]
    parts.append(
        f"done about {finish}"
        if finish
        else "finish unknown (the source does not say how many contacts it has)"
    )
    return ", ".join(parts)
