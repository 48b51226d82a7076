"""Member lookup for the POS: the cache first, then members registered here, then one live call."""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent import models
from agent.contacts import ContactCache
from agent.errors import AgentError, AmbiguousError, NotFoundError
from agent.intake import Intake
from agent.reasons import reason_in_words

log = logging.getLogger(__name__)

KINDS = {"mobilePhone": "phone", "email": "email", "memberNumber": "member"}
LIVE_TIMEOUT_SECONDS = 0.8

LiveLookup = Callable[[str, str], models.SourceContact | None]


@dataclass(frozen=True)
class Found:
    """One member, where the answer came from, and how old the cache's knowledge is."""

    source: str  # cache | cloud | pending
    contact: dict[str, Any]
    age_seconds: float | None


class Lookup:
    """Answers in a few milliseconds from the till; waits for the cloud at most ~0.8 s."""

    def __init__(
        self,
        cache: ContactCache,
        intake: Intake,
        *,
        live: LiveLookup | None = None,
        live_timeout_seconds: float = LIVE_TIMEOUT_SECONDS,
    ) -> None:
        self._cache = cache
        self.cache = cache
        self._intake = intake
        self._live = live
        self._timeout = live_timeout_seconds
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="live-lookup")

    def find(self, kind: str, value: str) -> Found:
        """NotFoundError when nobody matches, AmbiguousError when several do."""
        cached = self._cache.find(kind, value)
        if len(cached) > 1:
            raise AmbiguousError(f"{len(cached)} contacts share this {kind}")
        if cached:
            hit = cached[0]
            return Found("cache", contact_fields(hit.contact), time.time() - hit.verified_at)
        pending = self._pending(kind, value)
        if pending is not None:
            return pending
        live = self._ask_cloud(kind, value)
        if live is None:
            raise NotFoundError(f"no member with this {kind}")
        self._cache.put(live)
        return Found("cloud", contact_fields(live), 0.0)

    def existing(self, contact: models.Contact) -> Found | None:
        """A member this registration would duplicate: by member number, email, then phone.

        The cache first, then members registered here, then (if the source answers in time)
        the cloud. Several matches on a key count as existing: the first is answered.
        """
        keys = (
            ("member", contact.member_number),
            ("email", contact.email),
            ("phone", contact.mobile_phone),
        )
        for kind, value in keys:
            if not value:
                continue
            try:
                return self.find(kind, value)
            except AmbiguousError:
                return Found(
                    "cache", contact_fields(self._cache.find(kind, value)[0].contact), None
                )
            except NotFoundError:
                continue
        return None

    def _pending(self, kind: str, value: str) -> Found | None:
        if kind == "member":
            return None
        registered = self._intake.pending_contacts(kind, value)
        if not registered:
            return None
        local_id, cloud_id = registered[-1]
        return Found("pending", {"localId": local_id, "contactId": cloud_id}, None)

    def _ask_cloud(self, kind: str, value: str) -> models.SourceContact | None:
        """One live call, abandoned after the hard timeout; a cloud failure is a miss."""
        if self._live is None:
            return None
        future = self._pool.submit(self._live, kind, value)
        try:
            return future.result(timeout=self._timeout)
        except concurrent.futures.TimeoutError:
            log.warning("live lookup timed out", extra={"timeoutSeconds": self._timeout})
        except AgentError as exc:
            log.warning("live lookup failed: %s", reason_in_words(exc))
        return None

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
