"""Several receipts in flight per destination (delivery.in_flight): the window's guarantees.

On a running agent's own stores, with a sender that holds each send until the test lets it
go, so what is in flight at once is seen, not timed. End to end: tests/test_delivery.py
(SIGKILL with several in flight) and P3 (tests/perf/test_p3_drain.py, 150 ms away).
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from agent.core import models
from agent.core.config import DeliverySettings
from agent.core.errors import RejectedError, RetryableError, ThrottledError
from agent.core.ratelimit import SEND_MARGIN, RateBudget
from agent.delivery.dispatch import Dispatcher
from agent.delivery.flight import HELD_PER_SEND
from agent.ledger import QueueItem
from tests.conftest import make_receipt
from tests.fakes.senders import Clock

SETTINGS = DeliverySettings(
    backoff_initial_seconds=1.0,
    backoff_max_seconds=60.0,
    set_aside_after_attempts=3,
    max_attempts=6,
)
IN_FLIGHT = 4


class GatedSender:
    """Each send waits until the test opens the gate; counts how many are in flight at once."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        self.started: list[tuple[str, int]] = []  # (id, revision) as each send began
        self.landed: list[tuple[str, int]] = []  # ... and as each ended
        self.events: list[tuple[str, tuple[str, int], float]] = []  # start/end, ident, when
        self.rules: dict[str, Callable[[models.OutboundMessage], None]] = {}
        self.probe_error: Exception | None = None
        self.probes = 0

    def probe(self) -> None:
        self.probes += 1
        if self.probe_error is not None:
            raise self.probe_error

    def send(self, message: models.OutboundMessage) -> None:
        ident = (message.idempotency_key, message.revision)
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.started.append(ident)
            self.events.append(("start", ident, time.monotonic()))
        try:
            assert self.gate.wait(10), "the test never opened the gate"
            rule = self.rules.get(message.idempotency_key)
            if rule is not None:
                rule(message)
        finally:
            with self.lock:
                self.in_flight -= 1
                self.landed.append(ident)
                self.events.append(("end", ident, time.monotonic()))


def raising(error: Exception) -> Callable[[models.OutboundMessage], None]:
    def outcome(message: models.OutboundMessage) -> None:
        raise error

    return outcome


def windowed(agent: Any, sender: Any, **kwargs: Any) -> Dispatcher:
    kwargs.setdefault("rng", random.Random(0))
    kwargs.setdefault("in_flight", IN_FLIGHT)
    return Dispatcher(
        "loaded", sender, agent.outbox, agent.ledger, agent.health, SETTINGS, **kwargs
    )


def pump(dispatcher: Dispatcher, until: Callable[[], bool], seconds: float = 10.0) -> None:
    """The worker's passes, as its thread runs them, until the condition holds."""
    deadline = time.monotonic() + seconds
    while not until():
        assert time.monotonic() < deadline, "condition not met in time"
        dispatcher.step(claim_timeout_seconds=0.02)


def post(till: Any, *ids: str) -> None:
    for receipt_id in ids:
        assert till.post("/v1/receipts", make_receipt(receipt_id)).status_code == 202


def state_of(till: Any, receipt_id: str) -> str:
    return str(till.get(f"/v1/receipts/{receipt_id}").json()["destinations"][0]["state"])


@pytest.fixture
def rig(start_agent):
    agent, till = start_agent({"destinations": {"engage": {"enabled": False}}})
    return agent, till, GatedSender()


def test_several_receipts_are_in_flight_at_once_and_never_more_than_the_window(rig):
    agent, till, sender = rig
    dispatcher = windowed(agent, sender)
    total = IN_FLIGHT + HELD_PER_SEND * IN_FLIGHT + 6
    post(till, *[f"R-{n}" for n in range(total)])
    pump(dispatcher, lambda: sender.in_flight == IN_FLIGHT)
    for _ in range(3 * total):  # a full window starts nothing more; the claim runs ahead
        dispatcher.step()
    assert len(sender.started) == IN_FLIGHT
    assert [key for key, _ in sender.started] == ["R-0", "R-1", "R-2", "R-3"]  # started in order
    # ... as far as HELD_PER_SEND a place: those wait their turn, claimed; the rest in the queue
    assert agent.outbox.depth("loaded").claimed == IN_FLIGHT + HELD_PER_SEND * IN_FLIGHT
    assert agent.outbox.depth("loaded").pending == 6
    sender.gate.set()
    pump(
        dispatcher,
        lambda: agent.outbox.depth("loaded").pending == 0 and not len(sender.landed) < total,
    )
    pump(dispatcher, lambda: state_of(till, f"R-{total - 1}") == "delivered")
    assert sender.most_in_flight == IN_FLIGHT
    assert dispatcher.state.sent == total
    assert agent.outbox.depth("loaded").claimed == 0


def test_the_revisions_of_one_receipt_go_one_after_the_other(rig):
    """Revision 2 waits for revision 1 to land; other receipts pass it meanwhile."""
    agent, till, sender = rig
    dispatcher = windowed(agent, sender)
    post(till, "R-1")
    pump(dispatcher, lambda: sender.in_flight == 1)  # revision 1 in flight
    assert till.post("/v1/receipts", make_receipt("R-1", lines=3)).json()["status"] == "amended"
    post(till, "R-2")
    threading.Timer(0.5, sender.gate.set).start()  # while the worker holds revision 2
    pump(dispatcher, lambda: len(sender.landed) == 3 and agent.outbox.depth("loaded").claimed == 0)
    order = [(what, ident) for what, ident, _ in sender.events]
    assert order.index(("start", ("R-1", 2))) > order.index(("end", ("R-1", 1)))
    assert state_of(till, "R-1") == "delivered"
    assert dispatcher.state.sent == 3


def test_a_429_pauses_the_whole_window_and_sends_waiting_for_the_budget_are_held_back(rig):
    """Retry-After across the window: what waits for its turn is not sent into the pause."""
    agent, till, sender = rig
    budget = RateBudget("loaded", requests_per_second=2)  # two go at once, two wait ~1 s
    dispatcher = windowed(agent, sender, budget=budget)
    sender.rules["R-0"] = raising(
        ThrottledError("429", connector="loaded", retry_after_seconds=42.0, status=429)
    )
    sender.gate.set()
    post(till, *[f"R-{n}" for n in range(4)])
    pump(dispatcher, lambda: dispatcher.state.state == "throttled")
    paused_until = dispatcher.state.paused_until
    assert paused_until == pytest.approx(time.monotonic() + 42.0, abs=2.0)
    paused_at = time.monotonic()
    time.sleep(1.5)  # those that waited for the budget find the destination paused
    pump(dispatcher, lambda: agent.outbox.depth("loaded").claimed == 0)
    assert sender.started[0] == ("R-0", 1)
    assert len(sender.started) <= 2  # the budget let two go; nothing else was sent
    assert all(when <= paused_at for what, _, when in sender.events if what == "start")
    delivered = dispatcher.state.sent
    assert agent.outbox.depth("loaded").pending == 4 - delivered  # each kept its place
    assert state_of(till, "R-0") == "queued"  # a 429 is not charged to the item
    assert state_of(till, "R-3") == "queued"
    assert dispatcher.state.paused_until == paused_until
    budget.close()


def test_a_poison_receipt_in_the_window_never_holds_up_those_behind_it(rig):
    agent, till, sender = rig
    dispatcher = windowed(agent, sender)
    sender.rules["R-1"] = raising(RejectedError("400", connector="loaded", status=400))
    sender.gate.set()
    post(till, *[f"R-{n}" for n in range(8)])
    pump(dispatcher, lambda: state_of(till, "R-7") == "delivered")
    pump(dispatcher, lambda: state_of(till, "R-1") == "dead_lettered")
    assert dispatcher.state.state == "online"
    assert dispatcher.state.sent == 7


def test_an_outage_in_the_window_is_probed_once_and_charges_nobody(rig):
    """Every send fails: the first is judged (the probe confirms the outage), the others land
    into the pause and keep their places, uncharged."""
    agent, till, sender = rig
    clock = Clock()
    dispatcher = windowed(agent, sender, monotonic=clock)
    down = RetryableError("connection refused", connector="loaded")
    sender.rules = {f"R-{n}": raising(down) for n in range(4)}
    sender.probe_error = down
    post(till, *[f"R-{n}" for n in range(4)])
    pump(dispatcher, lambda: sender.in_flight == IN_FLIGHT)
    sender.gate.set()
    pump(dispatcher, lambda: agent.outbox.depth("loaded").claimed == 0)
    assert dispatcher.state.state == "offline"
    assert sender.probes == 1
    assert agent.outbox.depth("loaded").pending == 4
    assert {state_of(till, f"R-{n}") for n in range(4)} <= {"queued", "retrying"}
    assert all(
        agent.ledger.attempts("loaded", QueueItem("receipt", f"R-{n}", 1)) == 0 for n in range(4)
    )
    sender.rules.clear()
    sender.probe_error = None
    clock.now = dispatcher.state.paused_until + 0.001
    pump(dispatcher, lambda: state_of(till, "R-3") == "delivered" and dispatcher.state.sent == 4)


def test_the_request_rate_holds_across_the_window(start_agent):
    agent, till = start_agent({"destinations": {"engage": {"enabled": False}}})
    sender = GatedSender()
    sender.gate.set()
    stamps: list[float] = []
    sender.rules = {f"R-{n}": lambda m: stamps.append(time.monotonic()) for n in range(30)}
    budget = RateBudget("loaded", requests_per_second=20)
    dispatcher = windowed(agent, sender, budget=budget, in_flight=8)
    post(till, *[f"R-{n}" for n in range(30)])
    pump(dispatcher, lambda: dispatcher.state.sent == 30)
    in_any_second = max(sum(1 for s in stamps if t <= s < t + 1.0) for t in stamps)
    assert in_any_second <= 20
    budget.close()


def test_a_windows_sends_are_spaced_evenly_over_a_longer_window_even_from_many_threads():
    """Sends in flight leave one by one at an even pace, never in a burst (not even the first
    ones), and never more than the limit within the published window stretched by SEND_MARGIN
    (their arrivals at the cloud spread by their round trips)."""
    budget = RateBudget("engage", requests_per_second=20)
    window = 1.0 * (1 + SEND_MARGIN)
    gap = window / 20
    stamps: list[float] = []
    lock = threading.Lock()

    def send(count: int) -> None:
        for _ in range(count):
            assert budget.spend(threading.Event().wait, spaced=True).allowed  # never set: sleeps
            with lock:
                stamps.append(time.monotonic())

    try:
        threads = [threading.Thread(target=send, args=(10,)) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        stamps.sort()
        assert len(stamps) == 50
        # (stamped after each spend returns: 20 ms for the threads' scheduling; a window of
        # the published 1.0 s would take a 21st send within 1.03 s)
        in_any_window = max(sum(1 for s in stamps if t <= s < t + window - 0.02) for t in stamps)
        assert in_any_window <= 20
        gaps = sorted(b - a for a, b in itertools.pairwise(stamps))
        assert gaps[len(gaps) // 10] >= 0.7 * gap  # no burst: nine in ten at least that apart
        assert stamps[-1] - stamps[0] == pytest.approx(49 * gap, abs=0.1)  # and no slower
    finally:
        budget.close()


def test_stop_lands_the_sends_in_flight_and_acks_what_was_delivered(rig):
    agent, till, sender = rig
    dispatcher = windowed(agent, sender)
    post(till, *[f"R-{n}" for n in range(6)])
    dispatcher.start()
    deadline = time.monotonic() + 10
    while sender.in_flight < IN_FLIGHT:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    threading.Timer(0.3, sender.gate.set).start()
    dispatcher.stop(10.0)
    assert not dispatcher.alive
    assert dispatcher.state.sent == IN_FLIGHT  # landed after the stop: recorded and acked
    assert agent.outbox.depth("loaded").claimed == 0
    assert agent.outbox.depth("loaded").pending == 6 - IN_FLIGHT


def queued_then_delivered(
    start_agent: Callable[..., Any], cloud: Any, fill: Callable[[Any], None], **engage: Any
) -> Any:
    """Fill the queue with delivery off (as an outage would), then start delivering it."""
    destinations = {"engage": {"base_url": cloud.url, **engage}, "loaded": {"enabled": False}}
    first, till = start_agent({"delivery": {"enabled": False}, "destinations": destinations})
    fill(till)
    till.close()
    first.stop()
    delivery = {"enabled": True, "backoff_initial_seconds": 0.2, "in_flight": 8}
    return start_agent({"delivery": delivery, "destinations": destinations})[1]


def test_a_bulk_run_is_in_flight_beside_receipts_and_those_naming_its_members_follow_it(
    start_agent,
):
    """End to end against the sandbox 50 ms away: registrations from an outage go in one run;
    the receipts naming those members wait for it and carry their cloud ids; the other
    receipts go meanwhile."""
    from agent.sandbox import SandboxCloud
    from tests.conftest import wait_for

    cloud = SandboxCloud(seed=11).serve()
    sales = [f"M-{n}" for n in range(6)] + [f"S-{n:02d}" for n in range(24)]

    def fill(till: Any) -> None:
        members = []
        for n in range(6):
            answer = till.post("/v1/contacts", {"email": f"w{n}@example.com"})
            assert answer.status_code in (201, 202), answer.text
            members.append(answer.json()["localId"])
        for n, sale in enumerate(sales):
            receipt = make_receipt(sale, contact=False)
            receipt["contact"] = (
                {"localId": members[n]}
                if n < len(members)
                else {"matchKey": f"K{n}", "matchKeyType": "memberNumber"}
            )
            assert till.post("/v1/receipts", receipt).status_code == 202

    try:
        cloud.faults.set_latency(0.05, api="engage")
        till = queued_then_delivered(start_agent, cloud, fill)
        wait_for(lambda: set(cloud.engage.receipts) == set(sales), seconds=30)
        by_email = {c["email"]: cid for cid, c in cloud.engage.contacts.items()}
        for n in range(6):  # each after its member, by its cloud id
            contact = cloud.engage.receipts[f"M-{n}"]["contact"]
            assert contact == {
                "matchKey": by_email[f"w{n}@example.com"],
                "matchKeyType": "contactId",
            }
        requests = [r for r in cloud.requests if r.api == "engage" and 200 <= r.status < 300]
        run_began = next(i for i, r in enumerate(requests) if r.path.endswith("/contacts/bulk"))
        run_ended = max(i for i, r in enumerate(requests) if r.path.endswith("/contacts/id"))
        during = [
            r.json["uniqueReceiptId"]
            for r in requests[run_began:run_ended]
            if r.path.endswith("/receipts")
        ]
        assert during, "no receipt went while the run was in flight"
        assert all(sale.startswith("S-") for sale in during)
        assert till.get("/v1/dead-letters").json() == []
    finally:
        cloud.stop()


def test_a_run_behind_many_receipts_gets_its_places_before_they_are_all_sent(start_agent):
    """The claim runs ahead of a full window; a run of contact changes claimed behind 80
    receipts waits only for the places it takes to land, not for every receipt claimed before
    it (each place that lands is kept for it)."""
    from agent.sandbox import SandboxCloud
    from tests.conftest import wait_for

    cloud = SandboxCloud(seed=12).serve()
    sales = [f"S-{n:02d}" for n in range(80)]

    def fill(till: Any) -> None:
        for sale in sales:
            assert till.post("/v1/receipts", make_receipt(sale)).status_code == 202
        for n in range(4):
            answer = till.post("/v1/contacts", {"email": f"r{n}@example.com"})
            assert answer.status_code in (201, 202), answer.text

    try:
        cloud.faults.set_latency(0.05, api="engage")
        queued_then_delivered(start_agent, cloud, fill)
        wait_for(lambda: len(cloud.engage.contacts) == 4, seconds=30)
        wait_for(lambda: set(cloud.engage.receipts) == set(sales), seconds=30)
        requests = [r for r in cloud.requests if r.api == "engage" and 200 <= r.status < 300]
        run_began = next(i for i, r in enumerate(requests) if r.path.endswith("/contacts/bulk"))
        before = [r for r in requests[:run_began] if r.path.endswith("/receipts")]
        assert len(before) < 40, len(before)  # 8 in flight: a few windows' worth, not all 80
    finally:
        cloud.stop()


def test_the_window_keeps_a_key_to_one_send_and_lands_every_outcome():
    from agent.delivery.window import Window
    from agent.ledger import Claimed

    def failing() -> None:
        raise ValueError("refused")

    window = Window("loaded", 2)
    first, second = (Claimed("loaded", n, QueueItem("receipt", f"R-{n}", 1), 0.0) for n in (1, 2))
    gate = threading.Event()
    window.start(first, frozenset({"R-1", "member:a"}), "one", lambda: gate.wait(5))
    assert window.holds({"member:a"})
    assert not window.holds({"R-2"})
    with pytest.raises(RuntimeError):  # a key held: the caller must wait for it
        window.start(second, frozenset({"R-2", "member:a"}), "two", lambda: None)
    window.start(second, frozenset({"R-2"}), "two", failing)
    assert not window.has_room()
    landed = window.land(5.0)
    assert landed is not None
    assert (landed.claimed.id, type(landed.error)) == (2, ValueError)
    gate.set()
    landed = window.land(5.0)
    assert landed is not None
    assert (landed.claimed.id, landed.result, landed.error) == (1, True, None)
    assert len(window) == 0
    assert not window.holds({"R-1", "member:a"})
    assert window.land() is None


def test_two_runs_changing_one_contact_are_never_in_flight_at_once(start_agent):
    """Runs go beside each other, but not two that change the same contact: the second
    run's PATCH leaves only after the first run has landed (its last status read)."""
    from agent.sandbox import SandboxCloud
    from tests.conftest import wait_for

    cloud = SandboxCloud(seed=12).serve()
    known = [cloud.engage.add_contact(email=f"k{n}@example.com") for n in range(3)]

    def fill(till: Any) -> None:
        for name in ("First", "Second"):
            for contact_id in known:
                body = {"contactId": contact_id, "firstName": name}
                assert till.post("/v1/contacts", body).status_code in (201, 202)
            receipt = make_receipt(f"R-{name}", contact=False)
            receipt["contact"] = {"matchKey": name, "matchKeyType": "memberNumber"}
            assert till.post("/v1/receipts", receipt).status_code == 202  # ends the run

    try:
        cloud.faults.set_latency(0.05, api="engage")
        queued_then_delivered(start_agent, cloud, fill, bulk_min=3)
        wait_for(lambda: {"R-First", "R-Second"} <= set(cloud.engage.receipts), seconds=30)
        wait_for(lambda: all(cloud.engage.contacts[c].get("firstName") == "Second" for c in known))
        requests = [r for r in cloud.requests if r.api == "engage" and 200 <= r.status < 300]
        patches = [i for i, r in enumerate(requests) if r.method == "PATCH"]
        statuses = [i for i, r in enumerate(requests) if r.path.endswith("/bulk/status")]
        assert len(patches) == 2
        polled_before = {str(requests[i].query) for i in statuses if patches[0] < i < patches[1]}
        polled_after = {str(requests[i].query) for i in statuses if i > patches[1]}
        assert polled_before  # the first run polled its batch to the end ...
        assert not polled_before & polled_after  # ... before the second run's PATCH went
    finally:
        cloud.stop()
