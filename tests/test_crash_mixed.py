"""SIGKILL during mixed intake and delivery against the sandbox cloud (R1; matrix A1-A5).

The agent runs in a subprocess with delivery on; the sandbox cloud runs in this process, so it
outlives every kill and counts what reached it by `uniqueReceiptId`. A till thread posts
receipts (some with a buyer) and member registrations while delivery runs; a post that fails
because the agent died is retried, with the same body and so the same idempotency key, once the
agent is back — as a POS does.

Kills come at random moments and, deterministically, at the failpoints of agent/core/failpoints.py
(TILL_AGENT_FAILPOINTS): A1 before the intake COMMIT, A2 after it but before the 2xx, A3 after
the cloud's 2xx but before the local ack, A4 in the middle of a purge, A5 during start-up
recovery (several times in a row, by failpoint and at random moments of the start).

After every cycle (at the restart that begins the next one) the invariants: the agent comes
back healthy (no crash loop) and says so truthfully; every receipt and member the till got a
2xx for is stored, and queued or delivered (nothing dead-lettered); the sandbox took receipts
again at most `delivery.in_flight` times per kill and destination (the sends a kill caught in
flight). At the end everything drains:
each receipt is in the cloud exactly once, health is ok and every queue is empty.

CI runs 22 kills; `make test-long` runs CRASH_MIXED_CYCLES (default 200) random cycles on top.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from agent.core.config import DeliverySettings
from agent.core.failpoints import ENV as FAILPOINTS
from agent.ledger.outbox import CLAIMED_STATUS
from agent.sandbox import SandboxCloud
from tests.conftest import AgentProcess, Till, make_receipt, write_toml
from tests.ledger_probe import LedgerProbe

KILLED = -getattr(signal, "SIGKILL", 9)  # Windows has no SIGKILL (and no crash harness)
PHONES = [f"+467000000{n:02d}" for n in range(10)]  # obviously synthetic buyers


@dataclass
class Post:
    """One till request: receipt or member registration, resent unchanged until it gets a 2xx."""

    path: str
    body: dict[str, Any]
    key: str  # uniqueReceiptId, or the member's email


@dataclass
class Run:
    """What the till and the test know across cycles."""

    process: AgentProcess
    cloud: SandboxCloud
    rng: random.Random
    receipts: dict[str, bool] = field(default_factory=dict)  # acked id -> has a buyer
    members: set[str] = field(default_factory=set)  # acked member emails
    pending: Post | None = None  # the post the agent died under: the till sends it again
    made: int = 0
    kills: int = 0
    with_members: bool = True
    # Sends in flight per destination (delivery.in_flight): a kill may resend at most those.
    in_flight: int = DeliverySettings().in_flight
    repeats_at_kills: list[dict[str, int]] = field(default_factory=list)  # before each kill
    resend_expected: set[tuple[str, str]] = field(default_factory=set)  # (api, key) of A3

    def next_post(self) -> Post:
        if self.pending is None:
            self.made += 1
            self.pending = self._new(self.made)
        return self.pending

    def _new(self, n: int) -> Post:
        if self.with_members and n % 5 == 0:
            email = f"member{n}@example.com"
            return Post("/v1/contacts", {"email": email, "firstName": "Test"}, email)
        receipt_id = f"M-{n:05d}"
        buyer = n % 3 != 0
        body = make_receipt(receipt_id, contact=buyer)
        if buyer:
            body["contact"]["matchKey"] = PHONES[n % len(PHONES)]
        return Post("/v1/receipts", body, receipt_id)

    def killed(self) -> None:
        """Count a kill, noting first how many resends the cloud has taken so far."""
        self.repeats_at_kills.append(repeats(self))
        self.kills += 1

    def acknowledge(self, post: Post, answer: dict[str, Any]) -> None:
        if post.path == "/v1/receipts":
            self.receipts[post.key] = "contact" in post.body
        else:
            self.members.add(post.key)
        self.pending = None


def sell(run: Run, stop: threading.Event, pause_seconds: float = 0.008) -> None:
    """The till: post until stopped or until the agent dies under a request."""
    till = Till(run.process.url, run.process.token)
    try:
        while not stop.is_set():
            post = run.next_post()
            response = till.post(post.path, post.body)
            if response.status_code in (200, 202):
                run.acknowledge(post, response.json())
            stop.wait(pause_seconds)
    except requests.RequestException:
        pass  # the agent died under us: this post is sent again after the restart
    finally:
        till.close()


def start_selling(run: Run) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=sell, args=(run, stop), daemon=True)
    thread.start()
    return thread, stop


def end_cycle(run: Run, thread: threading.Thread, stop: threading.Event) -> None:
    stop.set()
    thread.join(15)
    assert not thread.is_alive(), "the till hung on a dead agent"
    run.killed()


# -- the cycles --------------------------------------------------------------------------


def random_cycle(run: Run) -> None:
    """Restart (checked), sell and deliver for a random while, then SIGKILL."""
    restart_and_check(run)
    thread, stop = start_selling(run)
    time.sleep(run.rng.uniform(0.05, 0.6))
    run.process.kill()
    end_cycle(run, thread, stop)


def failpoint_cycle(run: Run, point: str, nudge: Any = None) -> None:
    """Restart (checked) with one failpoint armed; sell until the agent kills itself there."""
    restart_and_check(run, env={FAILPOINTS: point})
    thread, stop = start_selling(run)
    if nudge is not None:
        nudge(run)
    assert run.process.process is not None
    try:
        code = run.process.process.wait(20)
    except Exception:
        run.process.kill()
        raise AssertionError(f"failpoint {point} was never reached") from None
    assert code == KILLED, f"{point}: the agent exited {code}, not by its failpoint"
    end_cycle(run, thread, stop)


def a1_before_commit(run: Run) -> None:
    before = stored_receipts(run)
    failpoint_cycle(run, f"intake.before_commit@{run.rng.randint(3, 30)}")
    post = run.pending
    assert post is not None
    assert post.path == "/v1/receipts"
    assert post.key not in before  # a fresh receipt, the 3rd or later of this run of the agent
    assert post.key not in stored_receipts(run), "a half-written receipt survived (A1)"
    restart_and_check(run)
    answer = resend(run, post)  # no 2xx was sent, so the till sends it again: a new receipt
    assert answer.status_code == 202
    assert answer.json()["status"] == "queued"
    run.acknowledge(post, answer.json())
    assert run.process.terminate() == 0


def a2_after_commit(run: Run) -> None:
    failpoint_cycle(run, f"intake.after_commit@{run.rng.randint(3, 30)}")
    post = run.pending
    assert post is not None
    assert post.key in stored_receipts(run), "committed, so stored (A2)"
    restart_and_check(run)
    answer = resend(run, post)  # the till never saw its 2xx: the retry is a duplicate
    assert answer.status_code == 200
    assert answer.json()["status"] == "duplicate", answer.text
    run.acknowledge(post, answer.json())
    assert run.process.terminate() == 0


def a3_after_cloud_ack(run: Run) -> None:
    failpoint_cycle(run, f"dispatch.after_send@{run.rng.randint(5, 40)}")
    window = sent_not_recorded(run)
    assert window, "killed after the cloud's 2xx, yet no send is left unrecorded (A3)"
    run.resend_expected |= window


def a4_during_purge(run: Run) -> None:
    def purge_soon(run: Run) -> None:
        time.sleep(0.4)  # some deliveries first, so the purge has acked rows to delete
        till = Till(run.process.url, run.process.token)
        try:
            till.post("/v1/privacy/purge", {})
        except requests.RequestException:
            pass  # the failpoint killed the agent mid-purge, as intended
        finally:
            till.close()

    failpoint_cycle(run, "purge.after_delete", nudge=purge_soon)
    assert quick_check(run) == "ok"


def a5_during_recovery(run: Run, repeats: int) -> None:
    """Killed while recovering, again and again: by the failpoint, then at random moments."""
    for _ in range(repeats):
        run.process.start(wait=False, env={FAILPOINTS: "startup.after_recovery"})
        assert run.process.process is not None
        assert run.process.process.wait(20) == KILLED
        run.killed()
    for _ in range(repeats):
        run.process.start(wait=False)
        time.sleep(run.rng.uniform(0.05, 0.5))
        run.process.kill()
        run.killed()


# -- the invariants ----------------------------------------------------------------------


def restart_and_check(run: Run, env: dict[str, str] | None = None) -> None:
    """The agent comes back (no crash loop), tells the truth, and holds all it acknowledged."""
    run.process.start(env=env)  # raises if it exits or is not healthy in 15 s
    health = requests.get(run.process.url + "/v1/health", timeout=5)
    assert health.status_code == 200
    assert health.json()["status"] in ("ok", "degraded")
    check_stored(run)
    check_cloud_duplicates(run)


def check_stored(run: Run) -> None:
    with ledger(run) as probe:
        stored = probe.receipt_ids()
        states = probe.delivery_states()
        waiting = probe.unaccounted()
    lost = set(run.receipts) - stored
    assert not lost, f"acknowledged receipts lost: {sorted(lost)[:5]}"
    assert set(states) <= {"queued", "retrying", "delivered"}, states
    assert not waiting, f"neither delivered nor in a queue: {waiting[:5]}"


def repeats(run: Run) -> dict[str, int]:
    """Per destination, how many times the cloud took a receipt it had taken before."""
    return {
        api: sum(n - 1 for n in counts.values())
        for api, counts in run.cloud.accepted_receipts().items()
    }


def check_cloud_duplicates(run: Run) -> None:
    """A key accepted twice only after a crash, and a kill resends at most the sends it cut
    off in flight: before the k-th kill and at the end, at most in_flight resends per earlier
    kill and destination (one by one, in_flight 1: at most one)."""
    checkpoints = [*run.repeats_at_kills, repeats(run)]
    for kills_before, seen in enumerate(checkpoints):
        for api, resent in seen.items():
            bound = run.in_flight * kills_before
            assert resent <= bound, (api, resent, f"after {kills_before} kills", run.in_flight)


def sent_not_recorded(run: Run) -> set[tuple[str, str]]:
    """(api, key) the cloud accepted but the ledger does not call delivered: the A3 window."""
    with ledger(run) as probe:
        delivered = probe.delivered()
    return {
        (api, key)
        for api, counts in run.cloud.accepted_receipts().items()
        for key in counts
        if (api, key) not in delivered
    }


def resend(run: Run, post: Post) -> requests.Response:
    """The till sends a failed post again, unchanged."""
    till = Till(run.process.url, run.process.token)
    try:
        return till.post(post.path, post.body)
    finally:
        till.close()


def stored_receipts(run: Run) -> set[str]:
    if not ledger(run).path.exists():
        return set()
    with ledger(run) as probe:
        return probe.receipt_ids()


def quick_check(run: Run) -> str:
    with ledger(run) as probe:
        return probe.quick_check()


def ledger(run: Run) -> LedgerProbe:
    """The agent's ledger, read-only (it may be running: WAL readers)."""
    return LedgerProbe(run.process.raw["agent"]["data_dir"])


def drain_and_check(run: Run) -> None:
    """The till's last post goes through; everything reaches the cloud exactly once."""
    restart_and_check(run)
    if run.pending is not None:
        answer = resend(run, run.pending)
        assert answer.status_code in (200, 202), answer.text
        run.acknowledge(run.pending, answer.json())
    deadline = time.monotonic() + 90
    while not drained(run) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert drained(run), undrained(run)
    check_final(run)


def drained(run: Run) -> bool:
    cloud = run.cloud
    with_buyer = {k for k, buyer in run.receipts.items() if buyer}
    return (
        set(cloud.loaded.orders) == set(run.receipts)
        and set(cloud.engage.receipts) == with_buyer
        and run.members <= cloud_member_emails(cloud)
        and all(d["depth"] == 0 and d["inFlight"] == 0 for d in status(run)["destinations"])
    )


def undrained(run: Run) -> str:
    missing = set(run.receipts) - set(run.cloud.loaded.orders)
    return f"not drained: loaded misses {sorted(missing)[:5]}; status {status(run)}"


def cloud_member_emails(cloud: SandboxCloud) -> set[str]:
    return {str(c.get("email")) for c in list(cloud.engage.contacts.values())}


def status(run: Run) -> dict[str, Any]:
    till = Till(run.process.url, run.process.token)
    try:
        return dict(till.get("/v1/status").json())
    finally:
        till.close()


def check_final(run: Run) -> None:
    assert stored_receipts(run) == set(run.receipts), "stored and acknowledged differ"
    check_stored(run)
    with ledger(run) as probe:
        assert set(probe.delivery_states()) <= {"delivered"}
    check_cloud_duplicates(run)
    sends = run.cloud.accepted_receipts()
    for api, key in run.resend_expected:  # A3: sent again, with the same key, held once
        assert sends[api][key] >= 2, (api, key)
    emails = Counter(str(c.get("email")) for c in run.cloud.engage.contacts.values())
    assert all(emails[e] == 1 for e in run.members), "a member was created twice in the cloud"
    report = status(run)
    assert report["status"] == "ok", report["components"]
    assert {d["state"] for d in report["destinations"]} == {"online"}
    assert quick_check(run) == "ok"
    assert run.process.terminate() == 0


# -- the tests ---------------------------------------------------------------------------


@pytest.fixture
def cloud():
    sandbox = SandboxCloud(seed=5).serve()
    yield sandbox
    sandbox.stop()


def make_run(agent_process, cloud: SandboxCloud, seed: int) -> Run:
    process = agent_process(
        {
            "delivery": {
                "enabled": True,
                "backoff_initial_seconds": 0.05,
                "backoff_max_seconds": 0.5,
            },
            "destinations": {
                "engage": {"base_url": cloud.url, "requests_per_second": 150},
                "loaded": {"base_url": cloud.url + "/loaded", "requests_per_second": 300},
            },
        }
    )
    return Run(process, cloud, random.Random(seed))


def named_points(run: Run) -> None:
    """A1-A5 once each, members off for A3 so its window holds a receipt."""
    run.with_members = False
    a1_before_commit(run)
    a2_after_commit(run)
    a3_after_cloud_ack(run)
    run.with_members = True
    a4_during_purge(run)
    a5_during_recovery(run, repeats=3)


def test_sigkill_at_named_and_random_points_loses_and_duplicates_nothing(agent_process, cloud):
    run = make_run(agent_process, cloud, seed=11)
    named_points(run)
    for _ in range(12):
        random_cycle(run)
    drain_and_check(run)
    assert run.kills >= 20
    assert len(run.receipts) > 100
    assert run.members
    assert run.resend_expected


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_sigkill_mixed_long_run(agent_process, cloud):
    run = make_run(agent_process, cloud, seed=12)
    cycles = int(os.environ.get("CRASH_MIXED_CYCLES", "200"))
    for cycle in range(cycles):
        if cycle % 25 == 0:
            named_points(run)
        random_cycle(run)
    drain_and_check(run)
    assert run.kills >= cycles


def test_sigterm_with_requests_in_flight_stops_in_time_and_leaves_nothing_claimed(
    agent_process, cloud
):
    """A6: sales and a slow send in flight; SIGTERM ends in bounded time, claims go back."""
    run = make_run(agent_process, cloud, seed=13)
    run.process.raw["api"]["stop_timeout_seconds"] = 2.0
    write_toml(run.process.config_path, run.process.raw)
    cloud.faults.set_latency(1.0, api="loaded")  # every send to loaded is in flight for 1 s
    restart_and_check(run)
    thread, stop = start_selling(run)
    time.sleep(1.5)
    began = time.monotonic()
    assert run.process.terminate() == 0
    took = time.monotonic() - began
    stop.set()
    thread.join(15)
    assert took < 3 * 2.0 + 2, f"shutdown took {took:.1f}s"  # API, scheduler, each worker
    with ledger(run) as probe:
        for queue in ("engage", "loaded"):
            assert probe.queue_count(queue, CLAIMED_STATUS) == 0, f"{queue}: an item left claimed"
    cloud.faults.set_latency(0.0, api="loaded")
    drain_and_check(run)
