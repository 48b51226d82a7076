"""The outcome table (docs/connectors.md, "Outcomes") as one table test of the pure decide()."""

from __future__ import annotations

import pytest

from agent.core.config import DeliverySettings
from agent.core.errors import (
    AuthError,
    ConfigError,
    KeyStoreError,
    RejectedError,
    RetryableError,
    ThrottledError,
    UnsendableError,
)
from agent.delivery.outcome import DestinationState, ItemHistory, Verdict, decide, needs_probe

LIMITS = DeliverySettings(set_aside_after_attempts=3, max_attempts=10, max_age_hours=168.0)
V = Verdict

NETWORK = RetryableError("c: could not connect", connector="c")
HTTP_500 = RetryableError("c: HTTP 500", connector="c", status=500)
HTTP_429 = ThrottledError("c: HTTP 429", connector="c", status=429, retry_after_seconds=5)
BUDGET = ThrottledError("call budget used up", connector="c", retry_after_seconds=60)
HTTP_401 = AuthError("c: HTTP 401", connector="c", status=401)
HTTP_422 = RejectedError("c: HTTP 422", connector="c", status=422)
SETTINGS = ConfigError(["destinations.c.base_url: bad"])
OURS = UnsendableError("c: the request could not be encoded", connector="c")
BUG = ZeroDivisionError("a bug in the agent")
KEY_GONE = KeyStoreError("no key k9")

FRESH = ItemHistory()
TWICE = ItemHistory(attempts=2)
NINE = ItemHistory(attempts=9)
NINE_OTHERS = ItemHistory(attempts=9, others_delivered=True)
OLD = ItemHistory(attempts=1, failing_hours=168.0)

UP, DOWN, UNASKED = DestinationState(True), DestinationState(False), DestinationState(None)

TABLE = [
    # error, history, destination, verdict, attempts after
    (None, FRESH, UNASKED, V.DELIVERED, 0),
    (None, NINE, UNASKED, V.DELIVERED, 9),
    # throttled, credentials, settings: the destination's, never the item's
    (HTTP_429, NINE_OTHERS, UNASKED, V.THROTTLED, 9),
    (BUDGET, FRESH, UNASKED, V.THROTTLED, 0),
    (HTTP_401, NINE_OTHERS, UNASKED, V.HALTED, 9),
    (SETTINGS, FRESH, UNASKED, V.HALTED, 0),
    # the cloud refused this item: a dead letter at once
    (HTTP_422, FRESH, UNASKED, V.DEAD_LETTER, 1),
    # network or 5xx: the probe decides between an outage and this item
    (NETWORK, FRESH, DOWN, V.OUTAGE, 0),
    (HTTP_500, NINE_OTHERS, DOWN, V.OUTAGE, 9),
    (HTTP_500, FRESH, UNASKED, V.OUTAGE, 0),  # no probe answer: never charged
    (HTTP_500, FRESH, UP, V.RETRY, 1),
    (HTTP_500, ItemHistory(attempts=1), UP, V.RETRY, 2),
    (HTTP_500, TWICE, UP, V.SET_ASIDE, 3),
    (NETWORK, TWICE, UP, V.SET_ASIDE, 3),
    (HTTP_500, NINE_OTHERS, UP, V.DEAD_LETTER, 10),
    (HTTP_500, NINE, UP, V.SET_ASIDE, 10),  # nothing else went through: maybe not the item
    (HTTP_500, OLD, UP, V.DEAD_LETTER, 2),  # but age always counts
    # ours (prepare, encode, read back) or a bug on this item: the item's, never an outage
    (OURS, FRESH, UNASKED, V.SET_ASIDE, 1),
    (OURS, TWICE, UNASKED, V.SET_ASIDE, 3),
    (OURS, NINE, UNASKED, V.DEAD_LETTER, 10),
    (OURS, OLD, UNASKED, V.DEAD_LETTER, 2),
    (BUG, FRESH, UNASKED, V.SET_ASIDE, 1),
    (BUG, NINE, UNASKED, V.DEAD_LETTER, 10),
    (KEY_GONE, NINE, UNASKED, V.DEAD_LETTER, 10),
]


@pytest.mark.parametrize(
    ("error", "history", "destination", "verdict", "attempts"),
    TABLE,
    ids=[f"{type(row[0]).__name__}-{row[1].attempts}-{row[2].reachable}" for row in TABLE],
)
def test_the_outcome_table(error, history, destination, verdict, attempts):
    outcome = decide(error, history, destination, LIMITS)
    assert outcome.verdict is verdict
    assert outcome.attempts == attempts
    assert outcome.charged == (attempts > history.attempts)


def test_only_a_cloud_or_network_signal_asks_the_probe():
    assert needs_probe(NETWORK)
    assert needs_probe(HTTP_500)
    for error in (None, HTTP_429, HTTP_401, HTTP_422, SETTINGS, OURS, BUG, KEY_GONE):
        assert not needs_probe(error)


def test_every_verdict_is_in_the_table():
    assert {row[3] for row in TABLE} == set(Verdict)
