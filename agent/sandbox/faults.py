"""The sandbox cloud's switchable faults: what the next requests to each simulated API suffer."""

from __future__ import annotations

import email.utils
import random
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

RetryAfter = int | float | str | None
OfflineMode = Literal["refused", "reset"] | None

_T = TypeVar("_T")

APIS = ("engage", "loaded", "lightspeed", "webhook")


@dataclass
class Planned:
    """One queued answer: a status (with Retry-After) or a broken body, for api (None = any)."""

    kind: Literal["status", "malformed", "truncated", "lost"]
    api: str | None
    status: int = 200
    retry_after: str | None = None


@dataclass
class Verdict:
    """What the server must do with one request instead of (or before) answering it normally."""

    kind: Literal["status", "malformed", "truncated", "lost", "reject"] | None = None
    status: int = 200
    retry_after: str | None = None
    latency_seconds: float = 0.0


@dataclass
class _State:
    planned: list[Planned] = field(default_factory=list)
    offline: OfflineMode = None
    latency: dict[str | None, float] = field(default_factory=dict)
    error_rate: dict[str | None, tuple[float, int]] = field(default_factory=dict)
    rejected: dict[str | None, tuple[frozenset[str], int, str]] = field(default_factory=dict)
    auth_failure: set[str] = field(default_factory=set)


def retry_after_value(
    retry_after: RetryAfter, now: Callable[[], float], retry_after_seconds: float = 2
) -> str | None:
    """A Retry-After header value: seconds as given, or "date" = an HTTP-date that far ahead."""
    if retry_after is None:
        return None
    if retry_after == "date":
        return email.utils.formatdate(now() + retry_after_seconds, usegmt=True)
    if isinstance(retry_after, str):
        return retry_after  # already a header value (an HTTP-date or digits)
    return str(int(retry_after))


class Faults:
    """Thread-safe fault switches; `api=None` means every simulated API (never the admin routes)."""

    def __init__(self, now: Callable[[], float], seed: int = 0) -> None:
        self._now = now
        self._lock = threading.Lock()
        self._state = _State()
        self._random = random.Random(seed)
        self.on_offline: Callable[[OfflineMode], None] | None = None

    def fail_next(
        self,
        status: int,
        count: int = 1,
        api: str | None = None,
        retry_after: RetryAfter = None,
        retry_after_seconds: float = 2,
    ) -> None:
        """The next count requests answer status (with the API's error body).

        retry_after: None = no header; an int = that many seconds; "date" = an HTTP-date
        retry_after_seconds ahead; any other string is sent as the header value verbatim.
        """
        value = retry_after_value(retry_after, self._now, retry_after_seconds)
        self._plan([Planned("status", api, status, value) for _ in range(count)])

    def storm_429(
        self,
        count: int,
        api: str | None = None,
        retry_after_form: Literal["seconds", "date", "absent"] = "seconds",
        retry_after_seconds: int = 2,
    ) -> None:
        """The next count requests answer 429; Retry-After in seconds, an HTTP-date, or absent."""
        forms: dict[str, RetryAfter] = {"seconds": retry_after_seconds, "date": "date"}
        retry_after = forms.get(retry_after_form)
        self.fail_next(429, count, api, retry_after, retry_after_seconds)

    def malformed_next(self, count: int = 1, api: str | None = None) -> None:
        """The next count requests answer 200 with a body that is not JSON."""
        self._plan([Planned("malformed", api) for _ in range(count)])

    def truncated_next(self, count: int = 1, api: str | None = None) -> None:
        """The next count requests get a Content-Length larger than the body, then a close."""
        self._plan([Planned("truncated", api) for _ in range(count)])

    def lost_next(self, count: int = 1, api: str | None = None) -> None:
        """The next count requests are carried out, then their answers are cut off midway.

        The cloud has committed what the client will take for a failure: its resend must be
        recognised (the same uniqueReceiptId / externalId / idempotency key).
        """
        self._plan([Planned("lost", api) for _ in range(count)])

    def set_offline(self, mode: OfflineMode = "refused") -> None:
        """refused: the public port stops listening; reset: connections are reset; None: online."""
        if mode not in ("refused", "reset", None):
            raise ValueError(f"offline mode must be 'refused', 'reset' or None (got {mode!r})")
        with self._lock:
            self._state.offline = mode
        if self.on_offline is not None:
            self.on_offline(mode)

    def set_latency(self, seconds: float, api: str | None = None) -> None:
        """Every request (to api, or to any API) waits this long before it is answered."""
        with self._lock:
            self._state.latency[api] = float(seconds)

    def set_error_rate(
        self, rate: float, status: int = 503, api: str | None = None, seed: int | None = None
    ) -> None:
        """A random fraction rate of requests answers status; seed makes the draw repeatable."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be within 0..1 (got {rate})")
        with self._lock:
            self._state.error_rate[api] = (float(rate), status)
            if seed is not None:
                self._random.seed(seed)

    def reject_ids(
        self,
        ids: Iterable[str],
        status: int = 400,
        api: str | None = None,
        message: str = "sandbox fault: this id is rejected",
    ) -> None:
        """Receipts/sales/deliveries whose id (uniqueReceiptId, externalId, key) is in ids fail,
        with message as the error body's text (a cloud's own words, whatever they hold)."""
        with self._lock:
            self._state.rejected[api] = (frozenset(ids), status, message)

    def set_auth_failure(self, api: str, on: bool = True) -> None:
        """Every call of api answers 401 while on."""
        with self._lock:
            if on:
                self._state.auth_failure.add(api)
            else:
                self._state.auth_failure.discard(api)

    def clear(self) -> None:
        """Every switch off, the public port back online."""
        with self._lock:
            was_offline = self._state.offline is not None
            self._state = _State()
        if was_offline and self.on_offline is not None:
            self.on_offline(None)

    @property
    def offline(self) -> OfflineMode:
        """The current offline mode."""
        with self._lock:
            return self._state.offline

    def _plan(self, planned: list[Planned]) -> None:
        with self._lock:
            self._state.planned.extend(planned)

    def decide(self, api: str) -> Verdict:
        """Consume the fault (if any) that applies to one request to api."""
        with self._lock:
            verdict = Verdict(latency_seconds=self._for(self._state.latency, api) or 0.0)
            if api in self._state.auth_failure:
                verdict.kind, verdict.status = "status", 401
                return verdict
            planned = self._take_planned(api)
            if planned is not None:
                verdict.kind, verdict.status = planned.kind, planned.status
                verdict.retry_after = planned.retry_after
                return verdict
            rate = self._for(self._state.error_rate, api)
            if rate is not None and self._random.random() < rate[0]:
                verdict.kind, verdict.status = "status", rate[1]
            return verdict

    def rejection(self, api: str, item_id: str | None) -> tuple[int, str] | None:
        """The status and message to reject item_id with at api, or None to accept it."""
        with self._lock:
            rule = self._for(self._state.rejected, api)
        if rule is None or item_id is None or item_id not in rule[0]:
            return None
        return rule[1], rule[2]

    def _take_planned(self, api: str) -> Planned | None:
        for index, planned in enumerate(self._state.planned):
            if planned.api in (None, api):
                return self._state.planned.pop(index)
        return None

    @staticmethod
    def _for(table: dict[str | None, _T], api: str) -> _T | None:
        if api in table:
            return table[api]
        return table.get(None)
