"""The outage forecast: the intake rate against the room left, on the page, as a metric, alerted."""

from __future__ import annotations

import pytest
import requests

from agent import app
from agent.core.config import AlertsSettings
from agent.core.health import DEGRADED, OK, ComponentState, Health
from agent.ledger import DeadLetters
from agent.ops.alerts import Alerts
from agent.ops.forecast import MIN_SPAN_SECONDS, Outlook, Sample, outlook
from tests.conftest import make_receipt
from tests.fakes.senders import Clock
from tests.test_alerts import hook  # noqa: F401 (a fixture)

MB = 1_000_000


@pytest.mark.parametrize(
    ("first", "last", "room", "expected"),
    [
        # Under five minutes measured: nothing to say yet.
        (Sample(0, 0, 0), Sample(MIN_SPAN_SECONDS - 1, MB, 10), MB, Outlook(room_bytes=MB)),
        # Nothing taken: not filling, whatever the file did.
        (Sample(0, 0, 5), Sample(600, MB, 5), MB, Outlook(None, 0.0, None, MB)),
        # The store shrank (a purge ran): not filling at this rate.
        (Sample(0, 2 * MB, 0), Sample(600, MB, 60), MB, Outlook(None, 360.0, None, MB)),
        # 60 records in 10 minutes = 360 an hour, 10 kB each = 3.6 MB an hour; 36 MB left.
        (
            Sample(0, 0, 0),
            Sample(600, 600_000, 60),
            36 * MB,
            Outlook(10.0, 360.0, 10_000.0, 36 * MB),
        ),
    ],
)
def test_the_outlook_is_the_intake_rate_against_the_room_left(first, last, room, expected):
    assert outlook(first, last, room) == expected


def forecast_state(board: Health) -> ComponentState:
    state = board.get("storage:forecast")
    assert state is not None
    return state


def sell(till, first, count):
    for n in range(first, first + count):
        body = make_receipt(f"F-{n:05d}", lines=20)
        assert till.post("/v1/receipts", body).status_code == 202


def test_a_store_filling_during_an_outage_is_forecast_shown_and_alerted(start_agent, hook):  # noqa: F811
    received, url = hook
    # Delivery is off: every receipt stays, as in an outage. A 3 MB cap fills in hours.
    agent, till = start_agent({"storage": {"max_size_mb": 3}, "alerts": {"webhook_url": url}})
    board, clock = Health(), Clock()
    forecast = app.store_forecast(agent.settings, agent.outbox, agent.intake, board, clock)
    alerts = Alerts(
        AlertsSettings(webhook_url=url),
        DeadLetters(agent.outbox),
        board,
        ("store-test", "till-test"),
    )
    forecast.sample()
    assert forecast_state(board).detail == "measuring the intake rate"
    sell(till, 0, 60)
    clock.now += 600  # 60 receipts in ten minutes
    seen = forecast.sample()
    assert seen.records_per_hour == pytest.approx(360.0)
    assert seen.bytes_per_record is not None
    assert seen.bytes_per_record > 1000
    hours = seen.hours_to_full
    assert hours is not None
    assert 0 < hours < 24
    # The room is what the 3 MB cap leaves, so the figure is the store's own, not the disk's.
    used, _ = agent.outbox.page_bytes()
    assert seen.room_bytes == 3 * 1024 * 1024 - used
    assert seen.room_bytes is not None
    assert hours == pytest.approx(seen.room_bytes / (360.0 * seen.bytes_per_record))
    state = forecast_state(board)
    assert (state.state, state.detail) == (
        DEGRADED,
        f"at this rate the store is full in {hours:.1f} hours",
    )
    assert alerts.send_digest()
    (digest,) = received
    assert digest["storeFilling"] == state.detail
    assert "full in" in digest["summary"]
    assert not alerts.send_digest()  # told once
    clock.now += 3600  # an hour without a sale: not filling any more
    assert forecast.sample().hours_to_full is None
    assert forecast_state(board).state == OK


def test_the_forecast_is_on_the_status_page_and_in_the_metrics(start_agent):
    _agent, till = start_agent({"storage": {"max_size_mb": 3}})
    status = till.get("/v1/status").json()
    assert status["forecast"]["warnBelowHours"] == 24.0
    assert status["forecast"]["hoursToFull"] is None  # measured once at start: nothing yet
    page = requests.get(till.url + "/", timeout=5).text
    assert "measuring the intake rate" in page
    metrics = requests.get(till.url + "/metrics", timeout=5).text
    assert "till_agent_store_full_in_hours +Inf" in metrics
