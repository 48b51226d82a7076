"""Member lookup for the POS: the cache first, then members registered here, then one live call."""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.contacts import ContactCache
from agent.core import models
from agent.core.errors import AgentError, AmbiguousError, DeadlineError, NotFoundError
from agent.core.reasons import reason_in_words
from agent.intake import Intake

log = logging.getLogger(__name__)

KINDS = {"mobilePhone": "phone", "email": "email", "memberNumber": "member"}
LIVE_TIMEOUT_SECONDS = 0.8
TIMEOUT = "timeout"  # a live lookup that did not answer within the bound: unknown, not absent

# (kind, value, deadline on the monotonic clock) -> the cloud's contact, or None for nobody.
LiveLookup = Callable[[str, str, float], models.SourceContact | None]
Key = tuple[str, str]
# What the cache holds so far (sync_progress.py): {"cacheState": ..., "progress": ...}.
CacheState = Callable[[], Mapping[str, Any]]
NO_SOURCE: Mapping[str, Any] = {"cacheState": "none", "progress": None}


@dataclass(frozen=True)
class Found:
    """One member, where the answer came from, and how old the cache's knowledge is.

    source "timeout": the cache and this till do not know the key and the cloud did not
    answer within the bound; contact is None, and nobody may conclude "not a member".
    """

    source: str  # cache | cloud | pending | timeout
    contact: dict[str, Any] | None
    age_seconds: float | None


class Lookup:
    """Answers in a few milliseconds from the till; waits for the cloud at most ~0.8 s.

    The live calls of one request (email and phone) run at once under one deadline. Each
    call's HTTP timeout is what is left of it, so an abandoned call ends by the deadline and
    never holds a worker that a later lookup needs; a call still queued at its deadline never
    starts.
    """

    def __init__(
        self,
        cache: ContactCache,
        intake: Intake,
        *,
        live: LiveLookup | None = None,
        live_timeout_seconds: float = LIVE_TIMEOUT_SECONDS,
        workers: int = 8,
        clock: Callable[[], float] = time.monotonic,
        cache_state: CacheState | None = None,
    ) -> None:
        self.cache_state: CacheState = cache_state or (lambda: NO_SOURCE)
        self._cache = cache
        self.cache = cache
        self._intake = intake
        self._live = live
        self._timeout = live_timeout_seconds
        self._clock = clock
        self._pool = concurrent.futures.ThreadPoolExecutor(
            workers, thread_name_prefix="live-lookup"
        )

    def find(self, kind: str, value: str) -> Found:
        """NotFoundError when nobody matches, AmbiguousError when several do."""
        local = self._local(kind, value, several_is_error=True)
        if local is not None:
            return local
        answer = self._ask_cloud([(kind, value)]).get((kind, value))
        if answer == TIMEOUT:
            return Found(TIMEOUT, None, None)
        if not isinstance(answer, models.SourceContact):
            loading = self.cache_state()["cacheState"] == "loading"
            so_far = " (the cache is still loading: nobody so far)" if loading else ""
            raise NotFoundError(f"no member with this {kind}{so_far}")
        self._cache.put(answer)
        return Found("cloud", contact_fields(answer), 0.0)

    def existing(self, contact: models.Contact) -> Found | None:
        """A member this registration would duplicate: by member number, email, then phone.

        The cache and members registered here first, then the cloud for every key at once
        (if it answers in time). Several matches on a key count as existing: the first is
        answered. Found("timeout") when the cloud did not answer in time: the registration
        is queued, and the intelligent buffer looks the member up before creating one.
        """
        keys = [
            (kind, value)
            for kind, value in (
                ("member", contact.member_number),
                ("email", contact.email),
                ("phone", contact.mobile_phone),
            )
            if value
        ]
        for kind, value in keys:
            local = self._local(kind, value, several_is_error=False)
            if local is not None:
                return local
        answers = self._ask_cloud(keys)
        for key in keys:
            answer = answers.get(key)
            if isinstance(answer, models.SourceContact):
                self._cache.put(answer)
                return Found("cloud", contact_fields(answer), 0.0)
        return Found(TIMEOUT, None, None) if TIMEOUT in answers.values() else None

    def _local(self, kind: str, value: str, *, several_is_error: bool) -> Found | None:
        """The cache's answer, else a member registered at this till; None: ask the cloud."""
        cached = self._cache.find(kind, value)
        if len(cached) > 1 and several_is_error:
            raise AmbiguousError(f"{len(cached)} contacts share this {kind}")
        if len(cached) > 1:
            return Found("cache", contact_fields(cached[0].contact), None)
        if cached:
            hit = cached[0]
            return Found("cache", contact_fields(hit.contact), time.time() - hit.verified_at)
        return self._pending(kind, value)

    def _pending(self, kind: str, value: str) -> Found | None:
        if kind == "member":
            return None
        registered = self._intake.pending_contacts(kind, value)
        if not registered:
            return None
        local_id, cloud_id = registered[-1]
        return Found("pending", {"localId": local_id, "contactId": cloud_id}, None)

    def _ask_cloud(self, keys: list[Key]) -> Mapping[Key, models.SourceContact | str | None]:
        """Every key at once, under one deadline: a contact, None (nobody), or TIMEOUT."""
        if self._live is None or not keys:
            return {}
        deadline = self._clock() + self._timeout
        calls = {
            self._pool.submit(self._call, kind, value, deadline): (kind, value)
            for kind, value in keys
        }
        concurrent.futures.wait(calls, timeout=max(0.0, deadline - self._clock()))
        return {key: self._outcome(call) for call, key in calls.items()}

    def _call(self, kind: str, value: str, deadline: float) -> models.SourceContact | None:
        """In the pool: one live lookup, never started past its deadline."""
        assert self._live is not None
        if self._clock() >= deadline:
            raise DeadlineError("queued past the lookup's deadline", connector="lookup")
        try:
            return self._live(kind, value, deadline)
        except AgentError as exc:
            if self._clock() >= deadline and not isinstance(exc, DeadlineError):
                # The call's timeout was what was left of the deadline: it ran out.
                raise DeadlineError(
                    "no answer within the lookup's deadline", connector="lookup"
                ) from exc
            raise

    def _outcome(
        self, call: concurrent.futures.Future[models.SourceContact | None]
    ) -> models.SourceContact | str | None:
        if not call.done():
            call.cancel()  # still queued: it never starts; running: its timeout ends it
            log.warning("live lookup timed out", extra={"timeoutSeconds": self._timeout})
            return TIMEOUT
        error = call.exception()
        if isinstance(error, DeadlineError):
            log.warning("live lookup timed out", extra={"timeoutSeconds": self._timeout})
            return TIMEOUT
        if isinstance(error, AgentError):
            log.warning("live lookup failed: %s", reason_in_words(error))
            return None  # the cloud answered with a failure: a miss, as when it is offline
        if error is not None:
            raise error
        return call.result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def contact_fields(contact: models.SourceContact) -> dict[str, Any]:
    return {
        "contactId": contact.contact_id,
        "firstName": contact.first_name,
        "lastName": contact.last_name,
        "email": contact.email,
        "mobilePhone": contact.mobile_phone,
        "memberNumber": contact.member_number,
    }
