"""The outcome of one delivery attempt: one pure function of the error, the item, the destination.

This is the outcome table of docs/connectors.md, in one place. Failures are judged by where
they come from: an error of ours while preparing, encoding or reading back one item is that
item's problem and never an outage; a destination is unreachable only on a network or cloud
signal that its connector's probe confirms.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agent.core.config import DeliverySettings
from agent.core.errors import (
    AuthError,
    ConfigError,
    RejectedError,
    RetryableError,
    ThrottledError,
)


class Verdict(enum.Enum):
    """What becomes of the item and of its destination."""

    DELIVERED = "delivered"  # ack it
    THROTTLED = "throttled"  # back in its place, uncharged; the destination waits Retry-After
    HALTED = "halted"  # back in its place, uncharged; credentials or settings: slow re-probe
    OUTAGE = "outage"  # back in its place, uncharged; the destination backs off and probes
    RETRY = "retry"  # charged; back in its place, the destination waits its short back-off
    SET_ASIDE = "set_aside"  # charged; waits its own back-off while the items behind it flow
    DEAD_LETTER = "dead_letter"  # charged; given up: into the dead letters with its reason


CHARGED = frozenset({Verdict.RETRY, Verdict.SET_ASIDE, Verdict.DEAD_LETTER})


@dataclass(frozen=True)
class ItemHistory:
    """What this item has been through at this destination before the attempt just made."""

    attempts: int = 0  # failed attempts charged to it so far
    failing_hours: float = 0.0  # since its first charged failure
    others_delivered: bool = False  # another item got through since it began failing


@dataclass(frozen=True)
class DestinationState:
    """What is known about the destination right after the attempt."""

    reachable: bool | None = None  # the connector's probe: True answered, False did not,
    # None not asked (no probe for this error)


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    attempts: int  # the item's charged attempts after this one

    @property
    def charged(self) -> bool:
        return self.verdict in CHARGED


def needs_probe(error: BaseException | None) -> bool:
    """Whether the destination's probe must be asked before deciding (a cloud or network
    signal that could be an outage or this item's own failure)."""
    return isinstance(error, RetryableError) and not isinstance(error, ThrottledError)


def decide(
    error: BaseException | None,
    item: ItemHistory,
    destination: DestinationState,
    settings: DeliverySettings,
) -> Outcome:
    """The outcome of one attempt (the table in docs/connectors.md, "Outcomes").

    error is what the attempt raised (None: delivered). Anything that is not a cloud's or the
    settings' signal — our own failure to prepare, encode or read back this item, whatever
    its type — is the item's problem.
    """
    uncharged = _destination_wide(error, destination)
    if uncharged is not None:
        return Outcome(uncharged, item.attempts)
    attempts = item.attempts + 1
    if isinstance(error, RejectedError) or _given_up(item, attempts, error, settings):
        return Outcome(Verdict.DEAD_LETTER, attempts)
    if isinstance(error, RetryableError) and attempts < settings.set_aside_after_attempts:
        return Outcome(Verdict.RETRY, attempts)  # a blip: keep the order, wait a little
    return Outcome(Verdict.SET_ASIDE, attempts)


def _destination_wide(error: BaseException | None, destination: DestinationState) -> Verdict | None:
    """The verdicts that concern the whole destination and never charge the item."""
    if error is None:
        return Verdict.DELIVERED
    if isinstance(error, ThrottledError):
        return Verdict.THROTTLED
    if isinstance(error, AuthError | ConfigError):
        return Verdict.HALTED
    if isinstance(error, RetryableError) and destination.reachable is not True:
        return Verdict.OUTAGE  # the probe confirmed it (or could not be asked): never charged
    return None


def _given_up(
    item: ItemHistory, attempts: int, error: BaseException | None, settings: DeliverySettings
) -> bool:
    """Past the configured attempts or age. A cloud's retryable answer counts its attempts only
    once another item has gone through since (so a partial outage the probe cannot see never
    empties a queue into the dead letters); its age always counts."""
    if item.failing_hours >= settings.max_age_hours:
        return True
    if isinstance(error, RetryableError) and not item.others_delivered:
        return False
    return attempts >= settings.max_attempts
