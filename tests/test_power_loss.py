"""Power loss (R11; failure matrix B8, B9, B11): the agent's data directory on LazyFS, cut again.

A SIGKILL (test_crash_mixed.py) leaves the kernel's page cache, so every write the agent made
survives it. A power cut does not: what was not fsync'd is gone, and a write in progress may be
torn. Here the agent (`till-agent run`, a subprocess, delivery on against the sandbox cloud in
this process) keeps its data directory on LazyFS (tests/lazyfs.py), whose cache holds every
write until its file is fsync'd. A till thread posts receipts while delivery runs; then the
power is cut, one of four ways, in turn:

- clear: the agent is frozen (SIGSTOP) so it cannot react, LazyFS drops every unsynced byte
  (`lazyfs::clear-cache`), then the agent and LazyFS are killed;
- crash: LazyFS kills itself just before or just after the next write or fsync of the
  `outbox.db-wal` (`lazyfs::crash::...`), its cache lost; then the agent is killed;
- torn WAL: the next write to the `-wal` is torn (`torn-op`: only some of its parts reach the
  disk) or the next run of writes between two fsyncs is (`torn-seq`: only some of them), and
  LazyFS dies;
- torn database during a checkpoint: the same on `outbox.db`, which SQLite writes only when it
  folds the WAL back into it (the purge asks for that; so may an automatic checkpoint).

Every crash and tear must be seen to fire (LazyFS killed itself), or the cut fails. Then LazyFS
is mounted again over what reached its root directory (the disk), the agent restarts, and: it
is healthy ("ok") within 10 s of its start, nothing was moved aside as damaged, quick_check
passes, and every receipt the till got a 2xx for is stored and queued or delivered. At the end
everything drains: each receipt in each cloud that takes it, with at most one resend per cut
and destination, counted from the sandbox's own request records.

The control: the same rig with the agent's stores on synchronous=OFF (the test hook
`storage.no_fsync`, agent/core/failpoints.py) must lose receipts it acknowledged; were it not to,
the rig would not be cutting anything.

`make test` runs POWER_CUTS (20) cuts with a fixed seed; `make test-long` runs 200.
What LazyFS cannot show is said in docs/reliability.md (rows 8, 9, 11).
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from agent.core.failpoints import ENV as FAILPOINTS
from agent.sandbox import SandboxCloud
from tests import lazyfs
from tests.conftest import ROOT, AgentProcess, Till
from tests.test_crash_mixed import (
    Run,
    check_cloud_duplicates,
    check_stored,
    drained,
    quick_check,
    start_selling,
    stored_receipts,
    undrained,
)

GREEN_WITHIN_SECONDS = 10.0
FAULT_FIRES_WITHIN_SECONDS = 20.0
KINDS = ("clear", "crash", "torn-wal", "torn-db")
WAL, DB = "d/outbox.db-wal", "d/outbox.db"
RESULTS = ROOT / "build" / "reliability"


@dataclass
class Rig:
    """The disk (LazyFS over a root that outlives it), the agent on it, the till's record."""

    fs: lazyfs.LazyFS
    run: Run
    green_seconds: list[float] = field(default_factory=list)
    cuts: Counter[str] = field(default_factory=Counter)  # by kind and command

    @property
    def process(self) -> AgentProcess:
        return self.run.process

    @property
    def data_dir(self) -> Path:
        return self.fs.mount_point / "d"


# -- power on, power off -------------------------------------------------------------------


def power_on(rig: Rig, env: dict[str, str] | None = None) -> None:
    """Mount, start the agent, and check what must hold after any cut."""
    rig.fs.mount()
    rig.process.start(wait=False, env=env)
    rig.green_seconds.append(wait_green(rig.process))
    assert not list(rig.data_dir.glob("*.corrupt-*")), "a store was set aside as damaged"
    if (rig.data_dir / "outbox.db").exists():
        assert quick_check(rig.run) == "ok"
    check_stored(rig.run)  # every receipt answered 2xx is there, queued or delivered


def wait_green(process: AgentProcess, seconds: float = GREEN_WITHIN_SECONDS) -> float:
    """Seconds from the start until /v1/health says "ok"; fails after `seconds`."""
    started = time.monotonic()
    last = "no answer"
    while (took := time.monotonic() - started) < seconds:
        assert process.process is not None
        assert process.process.poll() is None, process.log()
        try:
            answer = requests.get(process.url + "/v1/health", timeout=0.5)
            last = answer.text
            if answer.status_code == 200 and answer.json()["status"] == "ok":
                return took
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise AssertionError(f"not green within {seconds}s: {last[:500]}\n{process.log()}")


def cut(rig: Rig, kind: str, rng: random.Random) -> None:
    """Sell while delivery runs, then cut the power the given way; the till stops with it."""
    thread, stop = start_selling(rig.run)
    time.sleep(rng.uniform(0.2, 0.9))
    if kind == "clear":
        clear_cut(rig)
        rig.cuts["clear-cache"] += 1
    else:
        fault = fault_command(rig.fs, kind, rng)
        rig.fs.command(fault)
        rig.cuts[label(fault)] += 1
        fired = wait_fired(rig, checkpoint=kind == "torn-db")
        assert fired, f"the fault never fired: {fault}\n{rig.fs.log()}"
    rig.process.kill()
    rig.fs.power_off()
    stop.set()
    thread.join(15)
    assert not thread.is_alive(), "the till hung on a dead agent"
    rig.run.kills += 1


def clear_cut(rig: Rig) -> None:
    """Freeze the agent, drop every unsynced byte, then everything dies."""
    assert rig.process.process is not None
    rig.process.process.send_signal(signal.SIGSTOP)
    rig.fs.clear_cache()


def fault_command(fs: lazyfs.LazyFS, kind: str, rng: random.Random) -> str:
    """A crash before/after a write or fsync of the WAL, or a torn write of the WAL or the DB."""
    if kind == "crash":
        timing, op = rng.choice(("before", "after")), rng.choice(("write", "fsync"))
        return f"lazyfs::crash::timing={timing}::op={op}::from_rgx=outbox.db-wal"
    target = fs.path(WAL if kind == "torn-wal" else DB)
    if rng.random() < 0.5:  # one write in parts, some of them lost
        parts = rng.randint(2, 4)
        kept = rng.sample(range(1, parts + 1), rng.randint(1, parts - 1))
        return f"lazyfs::torn-op::file={target}::parts={parts}::persist={_numbers(kept)}"
    # The first run of writes between two fsyncs, only some of them kept: its first two (the
    # header and page of one WAL frame, two pages of a checkpoint), as LazyFS arms the tear
    # for that run only, and a run can be that short.
    kept = rng.choice(([1], [2], [1, 2]))
    return f"lazyfs::torn-seq::op=write::file={target}::persist={_numbers(kept)}"


def label(fault: str) -> str:
    """'crash before fsync of outbox.db-wal', 'torn-seq of outbox.db' ...: for the figures."""
    fields = dict(f.split("=", 1) for f in fault.split("::") if "=" in f)
    kind = fault.split("::")[1]
    if kind == "crash":
        return f"crash {fields['timing']} {fields['op']} of outbox.db-wal"
    return f"{kind} of {Path(fields['file']).name}"


def _numbers(values: list[int]) -> str:
    return ",".join(map(str, sorted(values)))


def wait_fired(rig: Rig, *, checkpoint: bool) -> bool:
    """True once LazyFS killed itself at the fault; a DB fault waits for a checkpoint (purge)."""
    deadline = time.monotonic() + FAULT_FIRES_WITHIN_SECONDS
    while time.monotonic() < deadline:
        if checkpoint:
            ask_for_checkpoint(rig.process)
        if rig.fs.wait_crashed(0.5):
            return True
    return False


def ask_for_checkpoint(process: AgentProcess) -> None:
    """The purge ends with wal_checkpoint(TRUNCATE): the only writes to outbox.db itself."""
    till = Till(process.url, process.token)
    try:
        till.session.post(process.url + "/v1/privacy/purge", json={}, timeout=2)
    except requests.RequestException:
        pass  # the file system died under the purge: that is the cut
    finally:
        till.close()


# -- the runs ------------------------------------------------------------------------------


@pytest.fixture
def rig(agent_process, tmp_path) -> Iterator[Rig]:
    if (reason := lazyfs.missing()) is not None:
        pytest.skip(reason)
    fs = lazyfs.LazyFS(tmp_path / "lazyfs.log")
    cloud = SandboxCloud(seed=8).serve()
    process = agent_process(
        {
            "agent": {"data_dir": str(fs.mount_point / "d")},
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
    run = Run(process, cloud, random.Random(0), with_members=False)
    try:
        yield Rig(fs, run)
    finally:
        process.stop_quietly()
        fs.remove()
        cloud.stop()


def power_cuts(rig: Rig, cuts: int, seed: int) -> None:
    """`cuts` cuts, the four kinds in turn; then everything drains and is counted at the cloud."""
    rng = random.Random(seed)
    for n in range(cuts):
        power_on(rig)
        cut(rig, KINDS[n % len(KINDS)], rng)
    power_on(rig)
    resend_pending(rig)
    deadline = time.monotonic() + 90
    while not drained(rig.run) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert drained(rig.run), undrained(rig.run)
    check_cloud_duplicates(rig.run)  # at most one resend per cut and destination
    assert quick_check(rig.run) == "ok"
    assert rig.process.terminate() == 0


def resend_pending(rig: Rig) -> None:
    """The sale the power cut interrupted: the till sends it again, unchanged."""
    post = rig.run.pending
    if post is None:
        return
    till = Till(rig.process.url, rig.process.token)
    try:
        answer = till.post(post.path, post.body)
    finally:
        till.close()
    assert answer.status_code in (200, 202), answer.text
    rig.run.acknowledge(post, answer.json())


def report(rig: Rig, name: str) -> None:
    """What the run showed, in build/reliability/<name>.json (docs/reliability.md quotes it)."""
    sends = rig.run.cloud.accepted_receipts()
    write_figures(
        name,
        {
            "cuts": rig.run.kills,
            "cuts_by_fault": dict(sorted(rig.cuts.items())),
            "receipts_acknowledged": len(rig.run.receipts),
            "acknowledged_lost": 0,
            "seconds_to_green_max": round(max(rig.green_seconds), 2),
            "seconds_to_green_median": round(statistics.median(rig.green_seconds), 2),
            "resends_by_destination": {
                api: sum(n - 1 for n in counts.values()) for api, counts in sends.items()
            },
        },
    )


def write_figures(name: str, figures: dict[str, object]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(figures, indent=2), encoding="utf-8")


def test_power_cuts_lose_no_acknowledged_receipt(rig):
    cuts = int(os.environ.get("POWER_CUTS", "20"))
    power_cuts(rig, cuts, seed=20)
    assert rig.run.kills == cuts
    assert len(rig.run.receipts) > 10 * cuts
    report(rig, "power_loss")


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_power_cuts_long_run(rig):
    cuts = int(os.environ.get("POWER_CUTS_LONG", "200"))
    power_cuts(rig, cuts, seed=200)
    assert rig.run.kills == cuts
    report(rig, "power_loss_long")


def test_without_fsync_the_same_rig_loses_acknowledged_receipts(rig):
    """The control: synchronous=OFF (a test hook), one clear cut: receipts it said 2xx to go."""
    rig.fs.mount()
    rig.process.start(wait=False, env={FAILPOINTS: "storage.no_fsync"})
    assert answering(rig.process).json()["status"] == "failing"  # the hook shows, in red
    till = Till(rig.process.url, rig.process.token)
    components = {c["name"]: c for c in till.get("/v1/status").json()["components"]}
    till.close()
    assert "storage.no_fsync" in components["test-hook"]["detail"]
    thread, stop = start_selling(rig.run)
    deadline = time.monotonic() + 15
    while len(rig.run.receipts) < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    clear_cut(rig)
    rig.process.kill()
    rig.fs.power_off()
    stop.set()
    thread.join(15)
    rig.fs.mount()
    rig.process.start(wait=False)  # the hook off again: the agent comes back as usual
    answering(rig.process)
    lost = set(rig.run.receipts) - stored_receipts(rig.run)
    write_figures(
        "power_loss_control",
        {"receipts_acknowledged": len(rig.run.receipts), "acknowledged_lost": len(lost)},
    )
    assert len(rig.run.receipts) >= 30
    assert lost, "without fsync nothing was lost: the rig cuts nothing"


def answering(process: AgentProcess, seconds: float = GREEN_WITHIN_SECONDS) -> requests.Response:
    """The first answer of /v1/health, whatever it says."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            return requests.get(process.url + "/v1/health", timeout=0.5)
        except requests.ConnectionError:
            time.sleep(0.05)
    raise AssertionError(f"no answer in {seconds}s: {process.log()}")
