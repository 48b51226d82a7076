"""Dispatch's outcome table, set-aside and outage logic, against a scripted sender.

End to end over HTTP against the sandbox cloud: tests/test_delivery.py.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from agent.core import models
from agent.core.config import DeliverySettings
from agent.core.errors import (
    AuthError,
    RejectedError,
    RetryableError,
    ThrottledError,
    UnsendableError,
)
from agent.delivery.dispatch import Dispatcher
from tests.conftest import make_receipt
from tests.fakes.senders import Clock, ScriptedSender, raising

SETTINGS = DeliverySettings(
    backoff_initial_seconds=1.0,
    backoff_max_seconds=60.0,
    set_aside_after_attempts=3,
    max_attempts=6,
    auth_probe_seconds=300.0,
)


def dispatcher_for(agent, sender, destination="loaded", **kwargs) -> Dispatcher:
    """A worker on a running agent's own stores, with the test's sender and options."""
    kwargs.setdefault("rng", random.Random(0))
    return Dispatcher(
        destination, sender, agent.outbox, agent.ledger, agent.health, SETTINGS, **kwargs
    )


@pytest.fixture
def rig(start_agent):
    agent, till = start_agent({"destinations": {"engage": {"enabled": False}}})
    sender = ScriptedSender()
    clock = Clock()
    return agent, till, sender, clock, dispatcher_for(agent, sender, monotonic=clock)


def post(till, *ids):
    for receipt_id in ids:
        assert till.post("/v1/receipts", make_receipt(receipt_id)).status_code == 202


def drain(dispatcher, clock, steps=50):
    """Run the worker's steps, jumping the clock over every pause."""
    for _ in range(steps):
        clock.now = max(clock.now, dispatcher.state.paused_until) + 0.001
        if not dispatcher.step():
            dues = [item.due for item in dispatcher.state.set_aside.values()]
            if dues:
                clock.now = max(clock.now, min(dues)) + 0.001


def state_of(till, receipt_id):
    return till.get(f"/v1/receipts/{receipt_id}").json()["destinations"][0]


def test_items_are_delivered_in_order_and_marked_delivered(rig):
    agent, till, sender, clock, dispatcher = rig
    post(till, "R-1", "R-2", "R-3")
    drain(dispatcher, clock)
    assert sender.sent == ["R-1", "R-2", "R-3"]
    assert state_of(till, "R-2")["state"] == "delivered"
    assert agent.outbox.depth("loaded").pending == 0


def test_transient_failure_backs_off_and_retries_the_same_item(rig):
    """The cloud answers its probe: a blip on this item, which keeps its place a moment."""
    _, till, sender, clock, dispatcher = rig
    post(till, "R-1", "R-2")
    sender.rules["R-1"] = raising(RetryableError("503", connector="x", status=503))
    dispatcher.step()
    assert dispatcher.state.state == "online"
    assert "retrying one item" in dispatcher.state.detail
    assert "HTTP 503" in dispatcher.state.detail
    assert sender.probes == 1
    assert dispatcher.state.paused_until > clock.now
    assert state_of(till, "R-1")["state"] == "retrying"
    assert state_of(till, "R-1")["nextAttemptAt"] is not None
    del sender.rules["R-1"]
    drain(dispatcher, clock)
    assert sender.sent == ["R-1", "R-2"]


def test_throttled_pauses_the_whole_destination_for_retry_after(rig):
    _, till, sender, clock, dispatcher = rig
    post(till, "R-1")
    sender.default = raising(ThrottledError("429", connector="x", retry_after_seconds=42.0))
    dispatcher.step()
    assert dispatcher.state.state == "throttled"
    assert dispatcher.state.paused_until == pytest.approx(clock.now + 42.0)
    assert state_of(till, "R-1")["state"] == "queued"  # not charged to the item


def test_auth_failure_halts_and_keeps_the_queue(rig):
    agent, till, sender, clock, dispatcher = rig
    post(till, "R-1", "R-2")
    sender.default = raising(AuthError("401", connector="x", status=401))
    dispatcher.step()
    assert dispatcher.state.state == "halted"
    assert agent.health.get("destination:loaded").state == "failing"
    assert agent.outbox.depth("loaded").pending == 2
    assert dispatcher.state.paused_until == pytest.approx(clock.now + 300.0)
    sender.default = None
    drain(dispatcher, clock)
    assert sender.sent == ["R-1", "R-2"]


def test_rejected_item_is_dead_lettered_with_the_cloud_error_id_and_the_rest_flow(rig):
    _agent, till, sender, clock, dispatcher = rig
    post(till, "R-1", "R-2")
    sender.rules["R-1"] = raising(
        RejectedError(
            "400", connector="x", status=400, cloud_error_id="cloud-77", body_excerpt="bad sku"
        )
    )
    drain(dispatcher, clock)
    assert sender.sent == ["R-2"]
    state = state_of(till, "R-1")
    assert state["state"] == "dead_lettered"
    assert state["cloudErrorId"] == "cloud-77"
    (letter,) = till.get("/v1/dead-letters").json()
    assert (letter["status"], letter["cloudErrorId"], letter["bodyExcerpt"]) == (
        400,
        "cloud-77",
        "bad sku",
    )
    assert till.get("/v1/status").json()["counters"]["dead_letters"] == 1


def test_a_poison_item_is_set_aside_and_never_blocks_the_items_behind_it(rig):
    _, till, sender, clock, dispatcher = rig
    post(till, "R-1", "R-2", "R-3")
    sender.rules["R-1"] = raising(RetryableError("500", connector="x", status=500))
    drain(dispatcher, clock, steps=12)
    assert sender.sent[:2] == ["R-2", "R-3"]
    drain(dispatcher, clock, steps=60)
    assert state_of(till, "R-1")["state"] == "dead_lettered"  # after max_attempts on its own
    assert sender.attempts.count("R-1") == SETTINGS.max_attempts


def test_an_outage_keeps_order_and_does_not_use_up_retries(rig):
    _, till, sender, clock, dispatcher = rig
    post(till, "R-1", "R-2", "R-3")
    sender.go_offline(RetryableError("x: could not connect", connector="x"))
    drain(dispatcher, clock, steps=40)  # far more failures than max_attempts
    assert sender.sent == []
    assert state_of(till, "R-1")["state"] != "dead_lettered"
    assert state_of(till, "R-1")["attempts"] == 0  # an outage is never charged to an item
    sender.come_back()
    drain(dispatcher, clock)
    assert sender.sent == ["R-1", "R-2", "R-3"]


def test_a_lone_item_in_a_long_outage_is_never_dead_lettered(rig):
    """Regression: with nothing behind it to compare, the outage was charged to the item."""
    _, till, sender, clock, dispatcher = rig
    post(till, "R-1")
    sender.go_offline(RetryableError("x: could not connect", connector="x"))
    drain(dispatcher, clock, steps=200)  # far more failures than max_attempts
    assert sender.attempts.count("R-1") > 5 * SETTINGS.max_attempts
    assert state_of(till, "R-1")["state"] != "dead_lettered"
    sender.come_back()
    drain(dispatcher, clock)
    assert sender.sent == ["R-1"]


def test_an_item_that_cannot_be_read_back_is_dead_lettered(rig):
    agent, till, sender, clock, dispatcher = rig
    post(till, "R-1", "R-2")
    claimed = agent.outbox.claim("loaded", timeout_seconds=1)
    agent.outbox.release(claimed)
    broken = msgspec.structs.replace(claimed.item, body={"not": "a receipt"})
    assert agent.outbox.run(lambda b: b.replace("loaded", claimed.id, broken))
    drain(dispatcher, clock)
    assert sender.sent == ["R-2"]
    assert state_of(till, "R-1")["state"] == "dead_lettered"


def test_restart_puts_set_aside_items_back_in_line(rig):
    agent, till, _, _, dispatcher = rig
    post(till, "R-1")
    claimed = agent.outbox.claim("loaded", timeout_seconds=1)
    agent.outbox.set_aside(claimed)
    assert agent.outbox.depth("loaded").pending == 0
    dispatcher._set_aside.restore()
    assert agent.outbox.depth("loaded").pending == 1


def test_the_request_rate_is_never_exceeded(start_agent):
    import time

    from agent.core.ratelimit import RateBudget

    agent, till = start_agent({"destinations": {"engage": {"enabled": False}}})
    sender = ScriptedSender()
    stamps: list[float] = []
    sender.default = lambda message: stamps.append(time.monotonic())
    dispatcher = dispatcher_for(agent, sender, budget=RateBudget("loaded", requests_per_second=20))
    post(till, *[f"R-{n}" for n in range(30)])
    while dispatcher.step():
        pass
    assert len(stamps) == 30
    in_any_second = max(sum(1 for s in stamps if t <= s < t + 1.0) for t in stamps)
    assert in_any_second <= 20


def test_a_used_up_daily_budget_pauses_the_destination(start_agent, tmp_path):
    from agent.core.ratelimit import RateBudget

    agent, till = start_agent({"destinations": {"engage": {"enabled": False}}})
    sender = ScriptedSender()
    budget = RateBudget(
        "loaded", requests_per_second=100, daily_calls=2, budget_file=tmp_path / "b.sqlite"
    )
    dispatcher = dispatcher_for(agent, sender, budget=budget)
    post(till, "R-1", "R-2", "R-3")
    for _ in range(3):
        dispatcher.step()
    assert sender.sent == ["R-1", "R-2"]
    assert dispatcher.state.state == "throttled"
    assert "call budget used up" in dispatcher.state.detail  # a reason in words
    assert agent.outbox.depth("loaded").pending == 1


def test_rate_limit_remaining_zero_pauses_until_the_reset(rig):
    _, till, sender, clock, dispatcher = rig

    class Result:
        rate_limit_remaining = 0
        rate_limit_reset_seconds = 30

    sender.default = None
    original = sender.send
    sender.send = lambda message: (original(message), Result())[1]
    post(till, "R-1", "R-2")
    dispatcher.step()
    assert dispatcher.state.paused_until == pytest.approx(clock.now + 30)


class RecordingSender(ScriptedSender):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[Any] = []

    def send(self, message):
        self.messages.append(message)
        super().send(message)


def test_an_append_only_cloud_gets_an_amendment_as_a_difference_receipt(start_agent):
    agent, till = start_agent()
    sender = RecordingSender()
    dispatcher = dispatcher_for(agent, sender, "engage", amends="difference")
    post(till, "R-1")
    dispatcher.step()
    assert till.post("/v1/receipts", make_receipt("R-1", lines=3)).json()["status"] == "amended"
    dispatcher.step()
    assert sender.sent == ["R-1", "R-1~r2"]
    difference = sender.messages[1].receipt
    assert [(i.type, i.sku) for i in difference.items] == [("PURCHASE", "SKU-2")]
    assert difference.contact == sender.messages[0].receipt.contact  # same buyer
    assert till.get("/v1/receipts/R-1").json()["destinations"][0]["state"] == "delivered"


def test_a_replacing_cloud_gets_the_whole_new_revision_under_the_same_id(start_agent):
    agent, till = start_agent()
    sender = RecordingSender()
    dispatcher = dispatcher_for(agent, sender)
    post(till, "R-1")
    dispatcher.step()
    till.post("/v1/receipts", make_receipt("R-1", lines=3))
    dispatcher.step()
    assert sender.sent == ["R-1", "R-1"]
    assert sender.messages[1].revision == 2
    assert len(sender.messages[1].receipt.items) == 3


def test_an_amendment_replaced_before_it_left_goes_whole(start_agent):
    agent, till = start_agent()
    sender = RecordingSender()
    dispatcher = dispatcher_for(agent, sender, "engage", amends="difference")
    post(till, "R-1")
    till.post("/v1/receipts", make_receipt("R-1", lines=3))
    dispatcher.step()
    assert sender.sent == ["R-1"]
    assert len(sender.messages[0].receipt.items) == 3


def engage_rig(start_agent, *, lookup_match_keys=True):
    from tests.fakes.senders import DirectoryResolver

    agent, till = start_agent()
    sender = RecordingSender()
    resolver = DirectoryResolver(lookup_match_keys=lookup_match_keys)
    dispatcher = dispatcher_for(agent, sender, "engage", amends="difference", resolver=resolver)
    return agent, till, sender, resolver, dispatcher


def test_a_buyer_known_to_the_cloud_is_tagged_by_its_cloud_id(start_agent):
    _, till, sender, resolver, dispatcher = engage_rig(start_agent)
    resolver.by_key["+46700000001"] = "cloud-known"
    post(till, "R-1")
    dispatcher.step()
    assert sender.messages[0].cloud_contact_id == "cloud-known"
    assert resolver.created == []


def test_an_unknown_buyer_is_sent_by_its_key_and_never_made_a_member(start_agent):
    _, till, sender, resolver, dispatcher = engage_rig(start_agent)
    post(till, "R-1", "R-2")
    dispatcher.step()
    dispatcher.step()
    assert resolver.created == []
    assert resolver.lookups == 2
    assert [m.cloud_contact_id for m in sender.messages] == [None, None]
    assert [m.receipt.contact.match_key for m in sender.messages] == ["+46700000001"] * 2


def test_without_the_lookup_setting_a_bare_key_goes_as_it_came_in_one_request(start_agent):
    _, till, sender, resolver, dispatcher = engage_rig(start_agent, lookup_match_keys=False)
    resolver.by_key["+46700000001"] = "cloud-known"
    post(till, "R-1")
    dispatcher.step()
    assert resolver.lookups == 0
    assert resolver.created == []
    assert sender.messages[0].cloud_contact_id is None


def test_a_member_registered_offline_is_created_before_the_receipt_that_refers_to_it(start_agent):
    from tests.fakes.senders import IdResult

    _, till, sender, _, dispatcher = engage_rig(start_agent)
    local_id = till.post("/v1/contacts", {"email": "new.member@example.com"}).json()["localId"]
    receipt = make_receipt("R-1")
    receipt["contact"] = {"localId": local_id}
    post_body = till.post("/v1/receipts", receipt)
    assert post_body.status_code == 202
    sender.default = lambda message: None
    original = sender.send
    sender.send = lambda message: (original(message), IdResult("cloud-77"))[1]
    dispatcher.step()
    dispatcher.step()
    assert sender.sent == [local_id, "R-1"]
    assert sender.messages[1].cloud_contact_id == "cloud-77"


def test_a_receipt_waits_for_its_member_to_reach_the_cloud(start_agent):
    """The member's registration went out, but the cloud gave no id for it (yet): the receipt
    that names it is set aside, its own problem, and the destination stays online."""
    _, till, sender, _, dispatcher = engage_rig(start_agent)
    local_id = till.post("/v1/contacts", {"email": "zz.waiting@example.com"}).json()["localId"]
    receipt = make_receipt("R-1")
    receipt["contact"] = {"localId": local_id}
    assert till.post("/v1/receipts", receipt).status_code == 202
    dispatcher.step()
    dispatcher.step()
    assert sender.sent == [local_id]
    assert till.get("/v1/receipts/R-1").json()["destinations"][0]["state"] == "retrying"
    assert dispatcher.state.state == "online"


def test_live_sales_go_before_the_low_priority_lane(start_agent):
    import msgspec

    from agent.core import models

    agent, till = start_agent({"destinations": {"engage": {"enabled": False}}})
    for n in range(3):
        history = msgspec.convert(make_receipt(f"OLD-{n}"), models.Receipt, strict=False)
        agent.intake.put_receipt(history, low_priority=True)
    post(till, "LIVE-1")
    sender = ScriptedSender()
    dispatcher = dispatcher_for(agent, sender)
    assert agent.outbox.depth("loaded").low_priority == 3
    for _ in range(4):
        dispatcher.step()
    assert sender.sent == ["LIVE-1", "OLD-0", "OLD-1", "OLD-2"]
    state = till.get("/v1/receipts/OLD-1").json()["destinations"][0]["state"]
    assert state == "delivered"


def test_a_config_error_halts_and_an_unexpected_failure_is_the_items_alone(rig):
    """A bug met while sending one item (here ZeroDivisionError) is that item's attempt: it is
    set aside and the next goes, instead of stalling the destination (issue 14)."""
    from agent.core.errors import ConfigError

    agent, till, sender, clock, dispatcher = rig
    post(till, "R-1", "R-2")
    sender.default = raising(ConfigError(["destinations.loaded.base_url: no scheme"]))
    dispatcher.step()
    assert dispatcher.state.state == "halted"
    assert agent.outbox.depth("loaded").pending == 2
    sender.default = None
    sender.rules["R-1"] = raising(ZeroDivisionError("a bug"))
    clock.now = dispatcher.state.paused_until + 1
    dispatcher.step()
    dispatcher.step()
    assert sender.sent == ["R-2"]
    assert dispatcher.state.state == "online"
    assert agent.outbox.depth("loaded").claimed == 0  # never stuck claimed
    assert state_of(till, "R-1")["state"] == "retrying"


def test_a_buyers_lookup_counts_against_the_request_rate(start_agent):
    """With lookup_match_keys each receipt with an unknown buyer costs two requests."""
    import time

    from agent.core.ratelimit import RateBudget
    from tests.fakes.senders import DirectoryResolver

    agent, till = start_agent()
    stamps: list[float] = []
    sender = ScriptedSender()
    sender.default = lambda message: stamps.append(time.monotonic())

    class StampedResolver(DirectoryResolver):
        def find_contact_id(self, *, email: str | None, mobile_phone: str | None) -> str | None:
            stamps.append(time.monotonic())
            return super().find_contact_id(email=email, mobile_phone=mobile_phone)

        def create_contact(self, contact: models.Contact) -> str:
            stamps.append(time.monotonic())
            return super().create_contact(contact)

    resolver = StampedResolver()
    budget = RateBudget("engage", requests_per_second=10)
    dispatcher = dispatcher_for(agent, sender, "engage", resolver=resolver, budget=budget)
    for n in range(8):
        receipt = make_receipt(f"R-{n}")
        receipt["contact"] = {"matchKey": f"+4670000{n:04d}", "matchKeyType": "mobilePhone"}
        assert till.post("/v1/receipts", receipt).status_code == 202
    while dispatcher.step():
        pass
    assert len(stamps) == 8 * 2  # look, send: never a create
    in_any_second = max(sum(1 for s in stamps if t <= s < t + 1.0) for t in stamps)
    assert in_any_second <= 10


# -- issue 14: failures judged by where they come from ------------------------------------


def test_two_items_that_fail_alone_in_a_row_never_stall_the_destination(rig):
    """Regression: a second failing item in a row was taken for an outage, and both went back
    uncharged for good while the sale behind them waited."""
    _, till, sender, clock, dispatcher = rig
    post(till, "BAD-1", "BAD-2", "GOOD")
    for key in ("BAD-1", "BAD-2"):
        sender.rules[key] = raising(RetryableError("x: HTTP 500", connector="x", status=500))
    states = []
    for _ in range(12):
        drain(dispatcher, clock, steps=1)
        states.append(dispatcher.state.state)
    assert "GOOD" in sender.sent
    assert "offline" not in states  # the probe answered: never shown unreachable
    drain(dispatcher, clock, steps=80)
    assert state_of(till, "BAD-1")["state"] == "dead_lettered"
    assert state_of(till, "BAD-2")["state"] == "dead_lettered"


@pytest.mark.parametrize(
    "error",
    [
        UnicodeEncodeError("latin-1", "S042-Łódź", 5, 6, "ordinal not in range(256)"),
        ValueError("Out of range float values are not JSON compliant"),
        UnsendableError("x: the request could not be encoded", connector="x"),
    ],
    ids=["unicode", "value", "unsendable"],
)
def test_an_error_of_ours_on_one_item_sets_it_aside_and_dead_letters_it_with_words(rig, error):
    _, till, sender, clock, dispatcher = rig
    post(till, "BAD-1", "BAD-2", "GOOD")
    for key in ("BAD-1", "BAD-2"):
        sender.rules[key] = raising(error)
    drain(dispatcher, clock, steps=3)
    assert sender.sent == ["GOOD"]  # each bad one set aside at its first failure
    assert sender.probes == 0  # ours, not the cloud's: nothing to ask the cloud
    assert dispatcher.state.state == "online"
    drain(dispatcher, clock, steps=60)
    assert sender.attempts.count("BAD-1") == SETTINGS.max_attempts
    letters = till.get("/v1/dead-letters").json()
    assert {d["recordKey"] for d in letters} == {"BAD-1", "BAD-2"}
    for letter in letters:
        assert type(error).__name__ not in letter["reason"]
        assert "Error" not in letter["reason"]


def test_an_outage_is_confirmed_by_the_probe_and_recovery_noticed_while_backing_off(rig):
    _, till, sender, clock, dispatcher = rig
    post(till, "R-1")
    sender.go_offline(RetryableError("x: could not connect", connector="x"))
    for _ in range(12):  # the back-off grows to its cap (60 s here)
        drain(dispatcher, clock, steps=1)
    assert dispatcher.state.state == "offline"
    assert dispatcher.state.detail.startswith("no answer from the cloud")
    assert dispatcher.state.paused_until - clock.now > 30
    sender.come_back()
    clock.now += SETTINGS.recovery_probe_seconds + 0.1
    dispatcher.step()  # the probe, while still backing off
    assert dispatcher.state.state == "online"
    dispatcher.step()
    assert sender.sent == ["R-1"]


def test_retry_now_skips_the_back_off_and_wakes_set_aside_items(rig):
    _, till, sender, clock, dispatcher = rig
    post(till, "R-1", "R-2")
    sender.rules["R-1"] = raising(UnsendableError("x: cannot", connector="x"))
    dispatcher.step()  # R-1 set aside for its own back-off
    dispatcher.step()  # R-2 delivered
    del sender.rules["R-1"]
    assert dispatcher.state.set_aside
    dispatcher.retry_now()
    dispatcher.step()
    assert sender.sent == ["R-2", "R-1"]
    sender.go_offline(RetryableError("x: could not connect", connector="x"))
    post(till, "R-3")
    dispatcher.step()
    assert dispatcher.state.paused_until > clock.now
    sender.come_back()
    dispatcher.retry_now()
    dispatcher.step()
    assert sender.sent == ["R-2", "R-1", "R-3"]
