"""Delivery's stages on their own (agent/delivery/): real stores, the sandbox over HTTP.

The worker that wires them is tested in test_dispatch.py and test_window.py; the outcome
table in test_outcome.py.
"""

from __future__ import annotations

import threading
from decimal import Decimal
from types import SimpleNamespace
from typing import cast

import pytest

from agent import app
from agent.connectors import KINDS
from agent.core import config
from agent.core.config import DeliverySettings
from agent.core.errors import NotFoundError, ThrottledError, UnsendableError
from agent.core.ratelimit import RateBudget
from agent.delivery.budget import Budget, wait_asked
from agent.delivery.history import FailingItems
from agent.delivery.prepare import Preparer
from agent.delivery.record import Recorder
from agent.delivery.send import Send, Sender
from agent.delivery.setaside import SetAside
from agent.delivery.state import Destination
from agent.sandbox import SandboxCloud
from tests.conftest import base_config, make_receipt, merged
from tests.fakes.senders import Clock

NO_BUDGET = Budget("engage", None, threading.Event(), spaced=False)


@pytest.fixture
def stores(start_agent):
    """A running agent's own stores (its delivery off), a destination on a test clock."""
    agent, till = start_agent()
    clock = Clock()
    return SimpleNamespace(
        agent=agent, till=till, clock=clock, engage=Destination("engage", agent.health, clock)
    )


def post(till, receipt):
    assert till.post("/v1/receipts", receipt).status_code == 202


# -- budget ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remaining", "reset", "wait"),
    [(None, None, None), (3, 7, None), (0, 7, 7.0), (0, None, 1.0), (-1, 2.5, 2.5)],
)
def test_the_wait_a_clouds_rate_limit_headers_ask_for(remaining, reset, wait):
    answer = SimpleNamespace(rate_limit_remaining=remaining, rate_limit_reset_seconds=reset)
    assert wait_asked(answer) == wait
    assert wait_asked(object()) is None  # an answer without the headers asks for nothing


def test_a_spent_call_budget_is_a_throttle_with_its_wait():
    budget = RateBudget("engage", requests_per_second=100, daily_calls=1)
    spend = Budget("engage", budget, threading.Event(), spaced=False)
    spend.spend()  # the day's one call
    with pytest.raises(ThrottledError) as caught:
        spend.spend()
    assert caught.value.status is None  # our own budget, not the cloud
    assert caught.value.retry_after_seconds > 0


# -- set aside -------------------------------------------------------------------------------


def test_an_item_set_aside_comes_back_in_line_when_due(stores):
    box = stores.agent.outbox
    post(stores.till, make_receipt("R-1"))
    aside = SetAside(stores.engage, box, stores.agent.ledger, threading.Event())
    aside.put(box.claim("engage", timeout_seconds=1), delay=30.0)
    assert aside
    assert stores.engage.snapshot()["setAside"] == 1
    assert box.depth("engage").pending == 0
    stores.clock.now += 29.0
    aside.bring_back_due()
    assert box.depth("engage").pending == 0
    stores.clock.now += 2.0
    aside.bring_back_due()
    assert box.depth("engage").pending == 1
    assert not aside


def test_a_technicians_dead_letter_is_applied_by_the_worker_once(stores):
    box = stores.agent.outbox
    post(stores.till, make_receipt("R-1"))
    wake = threading.Event()
    aside = SetAside(stores.engage, box, stores.agent.ledger, wake)
    claimed = box.claim("engage", timeout_seconds=1)
    with pytest.raises(NotFoundError):
        aside.ask("dead_letter", ("engage", claimed.id))  # not set aside (claimed)
    aside.put(claimed, delay=3600.0)
    [listed] = aside.listed()
    assert listed["id"] == f"engage:{claimed.id}"
    assert listed["record_key"] == claimed.item.key
    aside.ask("dead_letter", ("engage", claimed.id))
    assert wake.is_set()  # the worker's wait is cut short
    aside.apply_asked()
    again = box.claim("engage", timeout_seconds=1)  # back in line, at once
    assert (again.lane_queue, again.id) == (claimed.lane_queue, claimed.id)
    assert aside.condemned(again)
    assert not aside.condemned(again)


def test_a_restart_puts_what_was_set_aside_back_in_line(stores):
    box = stores.agent.outbox
    post(stores.till, make_receipt("R-1"))
    box.set_aside(box.claim("engage", timeout_seconds=1))
    SetAside(stores.engage, box, stores.agent.ledger, threading.Event()).restore()
    assert box.depth("engage").pending == 1


# -- history ---------------------------------------------------------------------------------


def test_an_items_failing_age_runs_on_the_monotonic_clock(stores):
    post(stores.till, make_receipt("R-1"))
    item = stores.agent.outbox.claim("engage", timeout_seconds=1).item
    failing = FailingItems(stores.engage, stores.agent.ledger)
    assert failing.history(item).attempts == 0
    failing.charge(item, 2)
    stores.clock.now += 2 * 3600
    history = failing.history(item)
    assert history.attempts == 2
    assert history.failing_hours == pytest.approx(2.0)
    assert not history.others_delivered
    stores.engage.delivered()  # another item got through
    assert failing.history(item).others_delivered
    failing.done(item)
    assert failing.history(item).failing_hours == 0.0


# -- prepare and record ----------------------------------------------------------------------


def test_a_later_revision_goes_as_the_difference_to_the_delivered_one(stores):
    agent, box = stores.agent, stores.agent.outbox
    settings = DeliverySettings()
    aside = SetAside(stores.engage, box, agent.ledger, threading.Event())
    failing = FailingItems(stores.engage, agent.ledger)
    record = Recorder(stores.engage, box, agent.ledger, settings, aside, failing, append_only=True)
    prepare = Preparer("engage", agent.ledger, NO_BUDGET, amends="difference")
    post(stores.till, make_receipt("R-1", lines=2))
    first = box.claim("engage", timeout_seconds=1)
    sent = prepare.message(first)
    assert sent is not None
    assert sent.idempotency_key == "R-1"
    record.delivered(first, sent)
    assert stores.engage.state.sent == 1
    post(stores.till, make_receipt("R-1", lines=3))  # an amendment: one line more
    second = box.claim("engage", timeout_seconds=1)
    diff = prepare.message(second)
    assert diff is not None
    assert diff.receipt is not None
    assert diff.idempotency_key == "R-1~r2"
    assert diff.receipt.total_gross_price == Decimal("10.00")


def test_an_item_that_cannot_be_read_back_is_unsendable_in_words(stores):
    box = stores.agent.outbox
    post(stores.till, make_receipt("R-1"))
    claimed = box.claim("engage", timeout_seconds=1)
    claimed.item.body = {"not": "a receipt"}
    with pytest.raises(UnsendableError, match="cannot be read back"):
        Preparer("engage", stores.agent.ledger, NO_BUDGET).message(claimed)


# -- send: the probe, against the sandbox ----------------------------------------------------


def test_the_probe_says_whether_the_cloud_answers(start_agent, tmp_path):
    cloud = SandboxCloud(seed=3).serve()
    overrides = {"destinations": {"engage": {"base_url": cloud.url}}}
    agent, _ = start_agent(overrides)
    settings = config.from_mapping(merged(base_config(tmp_path), overrides), {}, KINDS)
    connector = cast(Sender, app.build_connectors(settings)["engage"])
    budget = RateBudget("engage", requests_per_second=100, daily_calls=2)
    spend = Budget("engage", budget, threading.Event(), spaced=False)
    send = Send(connector, spend, Preparer("engage", agent.ledger, spend))
    try:
        assert send.reachable() is True
        cloud.faults.set_offline("refused")
        assert send.reachable() is False
        assert send.reachable() is None  # our own budget forbids a request now: not asked
    finally:
        cloud.stop()
