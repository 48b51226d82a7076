"""R2 (matrix E25, E26): a 72-hour outage with a flapping link, in simulated time, then recovery.

What is simulated: time. The dispatchers run on a monotonic clock the test owns (their backoff,
pauses and set-aside due times read it); the test steps them itself instead of their threads,
and jumps the clock to the next moment something can happen: a pause ends, a set-aside item
falls due, the till sells, the link flips. The link schedule and the sales are in that same
simulated time: 1 hour online, 72 hours offline with short flaps back up (each flap
refused or reset at TCP, alternating), then online for good. Sales are sparse (an exponential
gap of 40 minutes on average, as at night), so the queue often holds a single item.

What is real: the agent (in this process, its API over loopback), intake into the fsync'd
outbox file, the ledger, the production retry policy (1 s doubling to 300 s with jitter, set
aside after 3 attempts, dead-lettered after 10), both connectors speaking HTTP to the sandbox
cloud, and the sandbox's offline switch (connections refused, or reset, at the TCP front).
The wall clock is real: ledger timestamps and `max_age_hours` (168 h, more than this outage)
are not exercised here. Link flips happen between sends, never during one, so a lost answer
(matrix E27) is not produced here; any key the cloud accepted twice must carry the same body.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent import app
from agent.config import KIND_AMENDS
from agent.dispatch import Dispatcher
from agent.sandbox import SandboxCloud
from tests.conftest import base_config, make_receipt, merged
from tests.fakes.senders import Clock

HOUR = 3600.0
ONLINE_BEFORE = 1 * HOUR
OUTAGE = 72 * HOUR
SEND_SECONDS = 0.05  # simulated time one send takes


@dataclass
class Link:
    """The link's schedule: (start, end, mode) of every stretch it is down."""

    down: list[tuple[float, float, str]]

    @staticmethod
    def flapping(rng: random.Random, start: float) -> Link:
        """Down for 72 h from start, except for flaps up of 5 s to 3 min every 1-8 hours."""
        stretches, t, n = [], start, 0
        while t < start + OUTAGE:
            end = min(start + OUTAGE, t + rng.uniform(1 * HOUR, 8 * HOUR))
            stretches.append((t, end, "refused" if n % 2 == 0 else "reset"))
            t, n = end + rng.uniform(5, 180), n + 1
        return Link(stretches)

    def mode(self, t: float) -> str | None:
        return next((m for a, b, m in self.down if a <= t < b), None)

    def next_change(self, t: float) -> float:
        edges = [e for a, b, _ in self.down for e in (a, b) if e > t]
        return min(edges, default=float("inf"))


@dataclass
class Sim:
    clock: Clock
    cloud: SandboxCloud
    till: Any
    agent: app.Agent
    workers: dict[str, Dispatcher]
    link: Link
    sales: list[tuple[float, str, bool]]  # (at, id, has a buyer), in order
    sold: list[tuple[str, bool]] = field(default_factory=list)
    last: dict[str, str] = field(default_factory=dict)  # destination -> "sent" / "failed"
    checks: Counter[str] = field(default_factory=Counter)

    @property
    def t(self) -> float:
        return self.clock.now

    def run_until(self, end: float) -> None:
        while self.t < end:
            self.apply_link()
            self.sell_due()
            for name, worker in self.workers.items():
                self.work(name, worker)
                self.check_truth(name, worker)
            self.clock.now = max(self.t + 0.001, min(self.next_event(), end))

    def apply_link(self) -> None:
        mode = self.link.mode(self.t)
        if self.cloud.faults.offline != mode:
            self.cloud.faults.set_offline(mode)  # type: ignore[arg-type]

    def sell_due(self) -> None:
        while self.sales and self.sales[0][0] <= self.t:
            _, receipt_id, buyer = self.sales.pop(0)
            answer = self.till.post("/v1/receipts", make_receipt(receipt_id, contact=buyer))
            assert answer.status_code == 202, answer.text  # intake never depends on the link
            self.sold.append((receipt_id, buyer))

    def work(self, name: str, worker: Dispatcher) -> None:
        """Steps while the worker is not paused; each send takes a little simulated time."""
        while worker.state.paused_until <= self.t:
            before = (worker.state.sent, worker.state.failed)
            if not worker.step(claim_timeout_seconds=0):
                return
            self.clock.now += SEND_SECONDS
            sent, failed = worker.state.sent, worker.state.failed
            if (sent, failed) != before:
                self.last[name] = "failed" if failed > before[1] else "sent"

    def check_truth(self, name: str, worker: Dispatcher) -> None:
        """Status follows the last attempt: offline after a failure, online after a success."""
        last = self.last.get(name)
        if last is None:
            return
        expected = "offline" if last == "failed" else "online"
        assert worker.snapshot()["state"] == expected, (name, self.t, worker.snapshot())
        self.checks[expected] += 1

    def next_event(self) -> float:
        moments = [self.link.next_change(self.t)]
        if self.sales:
            moments.append(self.sales[0][0])
        for worker in self.workers.values():
            if worker.state.paused_until > self.t:
                moments.append(worker.state.paused_until)
            moments += [p.due for p in worker.state.parked.values() if p.due > self.t]
        return min(moments)

    def health(self) -> str:
        return str(self.till.get("/v1/health").json()["status"])


def plan_sales(rng: random.Random, until: float) -> list[tuple[float, str, bool]]:
    sales, t, n = [], 60.0, 0
    while t < until:
        sales.append((t, f"S-{n:04d}", n % 3 != 0))
        t, n = t + rng.expovariate(1 / (40 * 60)), n + 1
    return sales


@pytest.fixture
def cloud():
    sandbox = SandboxCloud(seed=9).serve()
    yield sandbox
    sandbox.stop()


@pytest.fixture
def sim(start_agent, tmp_path, cloud) -> Sim:
    raw = {
        "destinations": {
            "engage": {"base_url": cloud.url},
            "loaded": {"base_url": cloud.url + "/loaded"},
        },
    }
    # Delivery off in the app: no worker threads; the test runs the workers on its clock.
    agent, till = start_agent(merged(base_config(tmp_path), raw))
    clock, rng = Clock(), random.Random(72)
    clock.now = 0.0
    workers = make_workers(agent, clock)
    link = Link.flapping(rng, ONLINE_BEFORE)
    sales = plan_sales(rng, ONLINE_BEFORE + OUTAGE + HOUR)
    return Sim(clock, cloud, till, agent, workers, link, sales)


def make_workers(agent: app.Agent, clock: Clock) -> dict[str, Dispatcher]:
    """The app's own connectors and stores, production retry settings, the test's clock."""
    settings = agent.settings
    built = app.build_connectors(settings)
    workers = {}
    for destination in settings.enabled_destinations:
        connector: Any = built[destination.name]
        workers[destination.name] = Dispatcher(
            destination.name,
            connector,
            agent.outbox,
            agent.ledger,
            agent.health,
            settings.delivery,
            monotonic=clock,
            rng=random.Random(destination.name),
            amends=KIND_AMENDS[destination.kind],
            resolver=connector if hasattr(connector, "find_contact_id") else None,
        )
        workers[destination.name]._restore_parked()
    return workers


def test_a_72_hour_flapping_outage_drops_nothing_and_status_tells_the_truth(sim):
    assert sim.agent.settings.delivery.backoff_max_seconds == 300  # the production policy
    sim.run_until(ONLINE_BEFORE)
    assert sim.health() == "ok"
    first = next(at for at, _, _ in sim.sales if at >= ONLINE_BEFORE)
    sim.run_until(first + 60)  # the first sale of the outage has failed
    assert sim.link.mode(sim.t) is not None
    assert sim.health() == "degraded"
    assert {w.snapshot()["state"] for w in sim.workers.values()} == {"offline"}
    sim.run_until(ONLINE_BEFORE + OUTAGE)
    assert sim.till.get("/v1/dead-letters").json() == [], "the outage used up retries"
    assert sim.cloud.faults.offline is not None or sim.link.mode(sim.t - 1) is not None
    sim.run_until(ONLINE_BEFORE + OUTAGE + 2 * HOUR)  # recovery; the last sales come in too
    check_recovered(sim)


def check_recovered(sim: Sim) -> None:
    cloud = sim.cloud
    ids = [receipt_id for receipt_id, _ in sim.sold]
    with_buyer = [receipt_id for receipt_id, buyer in sim.sold if buyer]
    assert len(ids) > 80
    assert set(cloud.loaded.orders) == set(ids), "dropped at loaded"
    assert set(cloud.engage.receipts) == set(with_buyer), "dropped at engage"
    assert first_accepted_order(cloud)["loaded"] == ids, "order not kept at loaded"
    assert first_accepted_order(cloud)["engage"] == with_buyer, "order not kept at engage"
    check_repeats_carry_the_same_key(cloud)
    assert sim.till.get("/v1/dead-letters").json() == []
    assert sim.health() == "ok"
    assert {w.snapshot()["state"] for w in sim.workers.values()} == {"online"}
    assert all(sim.agent.outbox.depth(name).pending == 0 for name in sim.workers)
    assert sim.checks["offline"] > 100  # the truth was checked all along, both ways
    assert sim.checks["online"] > 50


def accepted(cloud: SandboxCloud) -> list[tuple[str, str, bytes]]:
    """(api, key, body) of every receipt the sandbox answered 2xx, in order."""
    found = []
    for request in cloud.requests:
        if not 200 <= request.status < 300:
            continue
        if request.api == "engage" and request.path.endswith("/receipts"):
            found.append(("engage", str(request.json["uniqueReceiptId"]), request.body))
        elif request.api == "loaded" and request.path.endswith("/orders"):
            found.append(("loaded", str(request.json["externalId"]), request.body))
    return found


def first_accepted_order(cloud: SandboxCloud) -> dict[str, list[str]]:
    order: dict[str, list[str]] = defaultdict(list)
    for api, key, _ in accepted(cloud):
        if key not in order[api]:
            order[api].append(key)
    return order


def check_repeats_carry_the_same_key(cloud: SandboxCloud) -> None:
    bodies: dict[tuple[str, str], set[bytes]] = defaultdict(set)
    for api, key, body in accepted(cloud):
        bodies[(api, key)].add(body)
    assert all(len(b) == 1 for b in bodies.values()), "a repeat differed from the first send"
