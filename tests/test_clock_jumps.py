"""Wall-clock jumps (+1 day, -1 day, back to 1970) under libfaketime: no mass expiry, no stuck wait.

The code under test runs in a subprocess with libfaketime preloaded. The test moves that
process's wall clock by writing FAKETIME_TIMESTAMP_FILE (re-read on every call); the monotonic
clock is left real (FAKETIME_DONT_FAKE_MONOTONIC), as an NTP step or an RTC reset leaves it.
libfaketime comes from Debian's `faketime` package (`make faketime`); without it the tests
skip and say why.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.sandbox import SandboxCloud
from tests.ci import need
from tests.conftest import ROOT, AgentProcess, Till, make_receipt

LIBFAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))), None)
JUMPS = ("+1d", "-1d", "@1970-01-01 00:00:00")


@pytest.fixture
def fake_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The timestamp file; subprocesses started while this is set run on its clock."""
    need(LIBFAKETIME, "libfaketime is not installed (Debian: faketime; make test installs it)")
    stamp = tmp_path / "faketime"
    stamp.write_text("+0\n")
    shim = tmp_path / "faketime-shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SLEEP_SHIM)
    env = {
        "PYTHONPATH": str(shim),
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(stamp),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_DONT_RESET": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return stamp


# libfaketime 0.9.10 (Debian 12) fails clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME), which
# time.sleep uses, under any offset (EINVAL, or a hang at @1970) even with the monotonic clock
# left alone. A real clock step does not do that, so the subprocess sleeps through select().
SLEEP_SHIM = """
import select, time
def _sleep(seconds):
    select.select([], [], [], max(0.0, seconds))
time.sleep = _sleep
"""


def jump(stamp: Path, spec: str) -> None:
    stamp.write_text(spec + "\n")


CLAIM_SCRIPT = """
import sys, time
from pathlib import Path
from agent.ledger.outbox import Outbox
box = Outbox(Path(sys.argv[1]), ["a"])
print(f"wall {time.time():.0f}", flush=True)
sys.stdin.readline()  # the test is about to move the clock
started = time.monotonic()
assert box.claim("a", timeout_seconds=2.0) is None
print(f"waited {time.monotonic() - started:.2f} wall {time.time():.0f}", flush=True)
box.close()
"""


@pytest.mark.parametrize("spec", JUMPS)
def test_a_claim_waits_its_own_time_whatever_the_wall_clock_does(fake_clock, tmp_path, spec):
    """persist-queue times a blocking get by the wall clock; ours must not (R9)."""
    child = subprocess.Popen(
        [sys.executable, "-c", CLAIM_SCRIPT, str(tmp_path / "box")],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        before = float(child.stdout.readline().split()[1])
        child.stdin.write("go\n")
        child.stdin.flush()
        time.sleep(0.3)  # the claim is waiting now
        jump(fake_clock, spec)
        out, _ = child.communicate(timeout=15)  # a wait stretched by the jump would hang here
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    waited, wall = float(out.split()[1]), float(out.split()[3])
    assert 1.5 < waited < 4.0
    assert abs(wall - before) > 20 * 3600  # the child's clock really jumped


# -- a delivering agent through the jumps ----------------------------------------------------


@pytest.fixture
def cloud() -> Iterator[SandboxCloud]:
    sandbox = SandboxCloud(seed=9).serve()
    yield sandbox
    sandbox.stop()


def sale_attempts(cloud: SandboxCloud, receipt_id: str) -> list[Any]:
    """Every request that tried to store this receipt's order (externalId = its key)."""
    return [
        r
        for r in cloud.requests
        if r.api == "loaded"
        and "/orders" in r.path
        and (f"eid:{receipt_id}" in r.path or (r.json or {}).get("externalId") == receipt_id)
    ]


def wait_until(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


def test_clock_jumps_expire_nothing_purge_nothing_and_retries_keep_their_request(
    fake_clock, agent_process, cloud
):

    process: AgentProcess = agent_process(
        {
            "delivery": {
                "enabled": True,
                "backoff_initial_seconds": 0.2,
                "backoff_max_seconds": 1.0,
                "max_age_hours": 2.0,  # small on purpose: a +1 day jump must not expire them
            },
            "destinations": {
                "engage": {"enabled": False},
                "loaded": {"base_url": cloud.url + "/loaded"},
            },
        }
    )
    process.start()
    till = Till(process.url, process.token)
    assert till.post("/v1/receipts", make_receipt("R-warm", contact=False)).status_code == 202
    assert wait_until(lambda: "R-warm" in cloud.loaded.orders, 15)  # the access token is held
    ids = [f"R-{n:03d}" for n in range(4)]
    cloud.faults.fail_next(503, count=10_000, api="loaded")  # every send fails, recorded
    for rid in ids:
        assert till.post("/v1/receipts", make_receipt(rid, contact=False)).status_code == 202
    assert wait_until(lambda: len(sale_attempts(cloud, ids[0])) >= 2, 15)  # it retries
    for spec in JUMPS:
        tried = len(sale_attempts(cloud, ids[0]))
        jump(fake_clock, spec)
        # retries go on across the jump: the backoff is timed by the monotonic clock
        assert wait_until(lambda n=tried: len(sale_attempts(cloud, ids[0])) > n, 10), spec
        purge = till.post("/v1/privacy/purge", {}).json()
        assert purge["journal_deleted"] == purge["ledger_deleted"] == 0, spec  # no mass purge
        assert till.get("/v1/dead-letters").json() == [], spec  # no mass expiry
        later = make_receipt(f"R-{spec[:3]}", contact=False)
        assert till.post("/v1/receipts", later).status_code == 202
    cloud.faults.clear()
    everything = [*ids, *(f"R-{spec[:3]}" for spec in JUMPS)]
    assert wait_until(lambda: set(everything) <= set(cloud.loaded.orders), 20), "stuck"
    for rid in ids:  # the request is fixed at enqueue: every attempt sent the same bytes
        attempts = sale_attempts(cloud, rid)
        assert len({r.body for r in attempts}) == 1, rid
        assert len({r.headers.get("Idempotency-Key") for r in attempts}) == 1, rid
    # Delivered while the clock said 1970; then NTP puts it right, 56 years ahead at once.
    jump(fake_clock, "+0")
    answer = till.post("/v1/privacy/purge", {})
    purge = answer.json()
    assert answer.status_code == 200, purge
    assert purge["clock_jump_seconds"] > 50 * 365 * 86400  # seen as a jump, not as time passed
    assert purge["journal_deleted"] == purge["ledger_deleted"] == 0  # so no mass purge
    till.close()
