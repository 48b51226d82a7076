"""R2 (matrix E25, E26): a 72-hour outage with a flapping link, in simulated time, then recovery.

What is simulated: the delivery workers' monotonic clock. The agent is the app as agent/app.py
composes it, delivery on: its own dispatcher threads run, with the production retry policy
(1 s doubling to 300 s with jitter, set aside after 3 attempts, dead-lettered after 10), its
connectors speaking HTTP to the sandbox cloud, its scheduler and its API. The test hands
`app.start` a simulated timebase (agent/core/timebase.py): the workers read its clock and wait on
it, and the test moves it. After every move the test waits (in real time) until each worker has
done what it could and is waiting again, then jumps to the next moment something can happen: a
worker's pause ends, a set-aside item falls due, the till sells, the link flips.

The link schedule and the sales are in that simulated time: 1 hour online, 72 hours offline
with short flaps back up (each refused or reset at TCP, alternating), then online for good.
Sales are sparse (an exponential gap of 40 minutes on average, as at night), so the queue often
holds a single item.

Checked at every one of those moments, through `GET /v1/status`: each destination is `offline`
once it has failed since the link went down and `online` once it has delivered since the link
came up, and what it says waits (queued, in flight, set aside) is exactly what was sold and not
yet accepted by that cloud. At the end: nothing dropped or dead-lettered, order kept, any repeat
carried the same body, health ok.

Not exercised: the wall clock (ledger timestamps, `max_age_hours` of 168 h, longer than this
outage); a lost answer (E27: the link flips between sends, never during one).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent import app
from agent.connectors import KINDS
from agent.core.timebase import Timebase
from agent.sandbox import SandboxCloud
from tests.conftest import base_config, make_receipt, merged

HOUR = 3600.0
ONLINE_BEFORE = 1 * HOUR
OUTAGE = 72 * HOUR
QUIET_WITHIN_SECONDS = 20.0  # real time for the workers to settle after a move
STEADY_SECONDS = 0.025  # real time an idle worker's state must stay as it is: its idle looks


class SimulatedTime:
    """A monotonic clock the test moves; a wait on it ends when the clock passes its end."""

    def __init__(self) -> None:
        self.now = 0.0
        self._moved = threading.Condition()
        self.waits: dict[str, float] = {}  # thread name -> the end of its wait

    def monotonic(self) -> float:
        return self.now

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        name = threading.current_thread().name
        with self._moved:
            self.waits[name] = self.now + seconds
            while self.now < self.waits[name] and not stop.is_set():
                self._moved.wait(0.05)  # real time: a stop is noticed too
            del self.waits[name]
        return stop.is_set()

    def move_to(self, moment: float) -> None:
        with self._moved:
            self.now = max(self.now, moment)
            self._moved.notify_all()

    def timebase(self) -> Timebase:
        # An idle worker looks at this clock every 10 ms of real time, not every 0.5 s.
        return Timebase(monotonic=self.monotonic, wait=self.wait, claim_wait_seconds=0.01)


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
    time: SimulatedTime
    cloud: SandboxCloud
    till: Any
    agent: app.Agent
    link: Link
    sales: list[tuple[float, str, bool]]  # (at, id, has a buyer), in order
    sold: list[tuple[str, bool]] = field(default_factory=list)
    seen: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (sent, failed)
    since_flip: dict[str, tuple[int, int]] = field(default_factory=dict)
    checks: Counter[str] = field(default_factory=Counter)

    @property
    def t(self) -> float:
        return self.time.now

    def run_until(self, end: float) -> None:
        while self.t < end:
            self.apply_link()
            self.sell_due()
            self.wait_quiet()
            self.check_truth()
            self.time.move_to(max(self.t + 0.001, min(self.next_event(), end)))

    def apply_link(self) -> None:
        mode = self.link.mode(self.t)
        if self.cloud.faults.offline != mode:
            self.cloud.faults.set_offline(mode)  # type: ignore[arg-type]
            self.since_flip = dict(self.seen)

    def sell_due(self) -> None:
        while self.sales and self.sales[0][0] <= self.t:
            _, receipt_id, buyer = self.sales.pop(0)
            answer = self.till.post("/v1/receipts", make_receipt(receipt_id, contact=buyer))
            assert answer.status_code == 202, answer.text  # intake never depends on the link
            self.sold.append((receipt_id, buyer))

    def wait_quiet(self) -> None:
        """Real time until every worker has done what it can at this moment and waits again:
        each one either waits on the simulated clock for a later moment, or has nothing it
        could do now and has stayed so over a few of its idle looks (its state unchanged)."""
        deadline = time.monotonic() + QUIET_WITHIN_SECONDS
        before: list[tuple[bool, tuple[Any, ...]]] | None = None
        while True:
            now = [self.quiet(w) for w in self.agent.dispatchers]
            if all(waiting for waiting, _ in now):
                return  # blocked on the simulated clock: nothing can change until it moves
            idle = all(waiting or snapshot[-1] for waiting, snapshot in now)
            if idle and before == now:
                return
            assert time.monotonic() < deadline, f"workers busy at t={self.t}: {self.status()}"
            before = now if idle else None
            time.sleep(STEADY_SECONDS if idle else 0.002)

    def quiet(self, worker: Any) -> tuple[bool, tuple[Any, ...]]:
        """(waits for a later moment, its state now: last, whether it has nothing to do now)."""
        if self.time.waits.get(f"dispatch-{worker.destination}", -1.0) > self.t:
            return True, ()
        box, state = self.agent.outbox, worker.state
        depth = box.depth(worker.destination)
        set_aside = sorted(
            (queue, queue_id) for queue, queue_id, _ in box.set_aside_items(worker.destination)
        )
        due = [p.due for p in state.set_aside.values() if p.due <= self.t]
        nothing_now = depth.pending == 0 and depth.claimed == 0 and not due
        seen = (set_aside, sorted(state.set_aside), state.sent, state.failed, state.paused_until)
        return False, (*seen, nothing_now)

    def next_event(self) -> float:
        moments = [self.link.next_change(self.t)]
        if self.sales:
            moments.append(self.sales[0][0])
        for worker in self.agent.dispatchers:
            if worker.state.paused_until > self.t:
                moments.append(worker.state.paused_until)
            moments += [p.due for p in worker.state.set_aside.values() if p.due > self.t]
            end = self.time.waits.get(f"dispatch-{worker.destination}")
            if end is not None and end > max(self.t, worker.state.paused_until):
                moments.append(end)  # a wait that is not a pause (after an internal error)
        return min(moments)

    def status(self) -> dict[str, Any]:
        return dict(self.till.get("/v1/status").json())

    def check_truth(self) -> None:
        """What /v1/status says of each destination against what happened since the last flip."""
        accepted = self.cloud.accepted_receipts()
        for d in self.status()["destinations"]:
            name = d["name"]
            self.seen[name] = (d["sent"], d["failed"])
            sent0, failed0 = self.since_flip.get(name, (0, 0))
            if self.link.mode(self.t) is not None and d["failed"] > failed0:
                assert d["state"] == "offline", (name, self.t, d)
                self.checks["offline"] += 1
            elif self.link.mode(self.t) is None and d["sent"] > sent0:
                assert d["state"] == "online", (name, self.t, d)
                self.checks["online"] += 1
            waiting = {rid for rid, buyer in self.sold if buyer or name == "loaded"}
            waiting -= set(accepted[name])
            assert d["depth"] + d["inFlight"] + d["setAside"] == len(waiting), (name, self.t, d)
            self.checks["backlog"] += 1

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
def sim(tmp_path, cloud):
    from agent.core import config
    from tests.conftest import Till

    raw = merged(
        base_config(tmp_path),
        {
            "delivery": {"enabled": True},  # the production retry policy
            # The request rate is budgeted in real time: high, so 72 h fit in a minute.
            "destinations": {
                "engage": {"base_url": cloud.url, "requests_per_second": 1000},
                "loaded": {"base_url": cloud.url + "/loaded", "requests_per_second": 1000},
            },
        },
    )
    simulated = SimulatedTime()
    agent = app.start(config.from_mapping(raw, {}, KINDS), timebase=simulated.timebase())
    till = Till(agent.url, agent.token)
    rng = random.Random(72)
    link = Link.flapping(rng, ONLINE_BEFORE)
    sales = plan_sales(rng, ONLINE_BEFORE + OUTAGE + HOUR)
    yield Sim(simulated, cloud, till, agent, link, sales)
    till.close()
    agent.stop()


def test_a_72_hour_flapping_outage_drops_nothing_and_status_tells_the_truth(sim):
    assert sim.agent.settings.delivery.backoff_max_seconds == 300  # the production policy
    assert {w.destination for w in sim.agent.dispatchers} == {"engage", "loaded"}
    sim.run_until(ONLINE_BEFORE)
    assert sim.health() == "ok"
    first = next(at for at, _, _ in sim.sales if at >= ONLINE_BEFORE)
    sim.run_until(first + 60)  # the first sale of the outage has failed
    assert sim.link.mode(sim.t) is not None
    assert sim.health() != "ok"
    assert {d["state"] for d in sim.status()["destinations"]} == {"offline"}
    sim.run_until(ONLINE_BEFORE + OUTAGE)
    assert sim.till.get("/v1/dead-letters").json() == [], "the outage used up retries"
    sim.run_until(ONLINE_BEFORE + OUTAGE + 2 * HOUR)  # recovery; the last sales come in too
    check_recovered(sim)


def check_recovered(sim: Sim) -> None:
    cloud = sim.cloud
    ids = [receipt_id for receipt_id, _ in sim.sold]
    with_buyer = [receipt_id for receipt_id, buyer in sim.sold if buyer]
    assert len(ids) > 80
    assert set(cloud.loaded.orders) == set(ids), "dropped at loaded"
    assert set(cloud.engage.receipts) == set(with_buyer), "dropped at engage"
    # Sends start in the order sold; with several in flight (delivery.in_flight) they may
    # land out of it, each by fewer places than the window holds.
    window = sim.agent.settings.delivery.in_flight
    assert displacement(first_accepted_order(cloud)["loaded"], ids) < window, "order at loaded"
    assert displacement(first_accepted_order(cloud)["engage"], with_buyer) < window, "at engage"
    check_repeats_carry_the_same_key(cloud)
    assert sim.till.get("/v1/dead-letters").json() == []
    status = sim.status()
    assert {d["state"] for d in status["destinations"]} == {"online"}
    assert all(d["depth"] + d["inFlight"] + d["setAside"] == 0 for d in status["destinations"])
    assert sim.health() == "ok"
    # The truth was checked all along: offline after each failed attempt of the outage (some
    # 3,700), online once delivering again (about 15: the first hour, flaps, the recovery),
    # and the backlog at every moment.
    assert sim.checks["offline"] > 1000
    assert sim.checks["online"] > 5
    assert sim.checks["backlog"] > 1000


def displacement(seen: list[str], sold: list[str]) -> int:
    """How many places the furthest-moved receipt landed from its place in the order sold."""
    assert sorted(seen) == sorted(sold)
    place = {key: n for n, key in enumerate(sold)}
    return max((abs(n - place[key]) for n, key in enumerate(seen)), default=0)


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
