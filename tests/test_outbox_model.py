"""The outbox against a model: random put/claim/ack/release/set aside/crash/reopen over real files.

A hypothesis state machine drives the real Outbox (real SQLite files in a temporary directory)
and a plain in-memory model side by side. After every step the invariants compare the two:
nothing put is lost, nothing acked comes back, a claimed item returns after a crash, each lane
keeps its order, and the counts agree.

"crash" takes a copy of the files exactly as they are on disk at that moment (outbox.db, -wal,
-shm: what a SIGKILL leaves, since every commit has been written by then) and continues from
the copy with a fresh Outbox; the old object is thrown away without its clean shutdown reaching
those files. "reopen" is the clean close and open. OUTBOX_MODEL_EXAMPLES sets the number of
examples (the long run uses more).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
)

from agent.core.errors import NotFoundError
from agent.ledger.item import QueueItem, decode
from agent.ledger.outbox import LOW_PRIORITY, Claimed, Outbox

EXAMPLES = int(os.environ.get("OUTBOX_MODEL_EXAMPLES", "25"))
DESTINATIONS = ("a", "b")
QUEUES = tuple(q for d in DESTINATIONS for q in (d, d + LOW_PRIORITY))
TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)


@dataclass
class Model:
    """What the outbox should hold: per queue, id -> item and its state."""

    items: dict[str, dict[int, QueueItem]] = field(default_factory=dict)
    state: dict[tuple[str, int], str] = field(default_factory=dict)  # pending|claimed|set_aside
    acked_unpurged: int = 0

    def ids(self, queue: str, wanted: str) -> list[int]:
        return sorted(i for i in self.items.get(queue, {}) if self.state[(queue, i)] == wanted)

    def next_for(self, destination: str) -> tuple[str, int] | None:
        """Live lane first, then the low-priority lane; the lowest id of a lane first."""
        for queue in (destination, destination + LOW_PRIORITY):
            pending = self.ids(queue, "pending")
            if pending:
                return queue, pending[0]
        return None

    def remove(self, queue: str, queue_id: int) -> None:
        del self.items[queue][queue_id]
        del self.state[(queue, queue_id)]


class OutboxMachine(RuleBasedStateMachine):
    claims = Bundle("claims")

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="outbox-model-"))
        self.generation = itertools.count()
        self.directory = self.root / "g0"
        self.box = Outbox(self.directory, list(DESTINATIONS))
        self.model = Model()
        self.serial = itertools.count()
        self.live_claims: set[tuple[str, int]] = set()

    def teardown(self) -> None:
        self.box.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- writes ----------------------------------------------------------------------------

    @rule(queue=st.sampled_from(QUEUES), text=TEXT)
    def put(self, queue: str, text: str) -> None:
        n = next(self.serial)
        item = QueueItem("receipt", f"R-{n}", 1, {"n": n, "text": text, "queue": queue})
        queue_id = self.box.run(lambda batch: batch.put(queue, item))
        assert queue_id not in self.model.items.setdefault(queue, {}), "an id was reused"
        self.model.items[queue][queue_id] = item
        self.model.state[(queue, queue_id)] = "pending"

    @rule(queues=st.lists(st.sampled_from(QUEUES), min_size=1, max_size=3))
    def put_that_fails(self, queues: list[str]) -> None:
        """A write that raises after its puts: none of them may stay (all or nothing)."""

        def work(batch: Any) -> None:
            for queue in queues:
                batch.put(queue, QueueItem("receipt", "R--1", 1, {"text": "rolled back"}))
            raise RuntimeError("the caller failed")

        with pytest.raises(RuntimeError):
            self.box.run(work)

    # -- the consumer ----------------------------------------------------------------------

    @rule(target=claims, destination=st.sampled_from(DESTINATIONS))
    def claim(self, destination: str) -> Any:
        expected = self.model.next_for(destination)
        got = self.box.claim(destination, timeout_seconds=0)
        if expected is None:
            assert got is None
            return multiple()  # nothing claimed: the bundle gets nothing
        assert got is not None, f"expected {expected}, the outbox had nothing"
        assert (got.lane_queue, got.id) == expected
        assert got.item == self.model.items[expected[0]][expected[1]]
        self.model.state[expected] = "claimed"
        self.live_claims.add(expected)
        return got

    def _live(self, claimed: Any) -> bool:
        return isinstance(claimed, Claimed) and (claimed.lane_queue, claimed.id) in (
            self.live_claims
        )

    @rule(claimed=consumes(claims))
    def ack(self, claimed: Any) -> None:
        if not self._live(claimed):
            return self._refused(claimed, self.box.ack)
        self.box.ack(claimed)
        self._gone(claimed)
        self.model.acked_unpurged += 1
        return None

    @rule(claimed=consumes(claims))
    def release(self, claimed: Any) -> None:
        if not self._live(claimed):
            return self._refused(claimed, self.box.release)
        self.box.release(claimed)
        self.live_claims.discard((claimed.lane_queue, claimed.id))
        self.model.state[(claimed.lane_queue, claimed.id)] = "pending"
        return None

    @rule(claimed=consumes(claims))
    def set_aside(self, claimed: Any) -> None:
        if not self._live(claimed):
            return self._refused(claimed, self.box.set_aside)
        self.box.set_aside(claimed)
        self.live_claims.discard((claimed.lane_queue, claimed.id))
        self.model.state[(claimed.lane_queue, claimed.id)] = "set_aside"
        return None

    @rule(claimed=consumes(claims))
    def settle(self, claimed: Any) -> None:
        """Delete the claimed item in one transaction with other work (the dead-letter move)."""
        if not self._live(claimed):
            with pytest.raises(NotFoundError):
                self.box.settle(claimed, lambda batch: None)
            return
        self.box.settle(claimed, lambda batch: None)
        self._gone(claimed)

    @precondition(lambda self: any(s == "set_aside" for s in self.model.state.values()))
    @rule(data=st.data())
    def bring_back(self, data: st.DataObject) -> None:
        set_aside = sorted(k for k, s in self.model.state.items() if s == "set_aside")
        queue, queue_id = data.draw(st.sampled_from(set_aside))
        self.box.bring_back(queue, queue_id)
        self.model.state[(queue, queue_id)] = "pending"

    @rule()
    def purge_acked(self) -> None:
        assert self.box.purge_acked(chunk_rows=3) == self.model.acked_unpurged
        self.model.acked_unpurged = 0

    def _gone(self, claimed: Claimed) -> None:
        self.live_claims.discard((claimed.lane_queue, claimed.id))
        self.model.remove(claimed.lane_queue, claimed.id)

    def _refused(self, claimed: Any, how: Any) -> None:
        """A handle from before a crash, or one already used: refused, nothing changes."""
        if isinstance(claimed, Claimed):
            with pytest.raises(NotFoundError):
                how(claimed)

    # -- crash and restart -----------------------------------------------------------------

    @rule()
    def crash(self) -> None:
        """Continue from the files as a SIGKILL leaves them; the old object never closes them."""
        target = self.root / f"g{next(self.generation) + 1}"
        target.mkdir()
        for path in self.directory.iterdir():
            shutil.copy2(path, target / path.name)
        abandoned, self.box = self.box, Outbox(target, list(DESTINATIONS))
        self.directory = target
        abandoned.close()  # only releases handles on the old copy, which is never read again
        self._restart()

    @rule()
    def reopen(self) -> None:
        self.box.close()
        self.box = Outbox(self.directory, list(DESTINATIONS))
        self._restart()

    def _restart(self) -> None:
        """Every claim of the dead process is ready again, in its place; its handles are stale."""
        for key in self.live_claims:
            self.model.state[key] = "pending"
        self.live_claims.clear()

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def counts_agree(self) -> None:
        for destination in DESTINATIONS:
            depth = self.box.depth(destination)
            lanes = (destination, destination + LOW_PRIORITY)
            pending = [len(self.model.ids(q, "pending")) for q in lanes]
            claimed = sum(len(self.model.ids(q, "claimed")) for q in lanes)
            assert (depth.pending, depth.claimed, depth.low_priority) == (
                sum(pending),
                claimed,
                pending[1],
            )

    @invariant()
    def every_item_is_stored_as_put_in_its_state(self) -> None:
        """Nothing lost, nothing acked back, nothing rolled back present, byte-exact content."""
        status_of = {"pending": (0, 1), "claimed": (2,), "set_aside": (9,)}
        with self.box.read() as conn:
            for queue in QUEUES:
                rows = conn.execute(
                    f"SELECT _id, data, status FROM ack_queue_{queue} WHERE status != 5 "
                    "ORDER BY _id"
                ).fetchall()
                stored = {int(r[0]): (r[1], int(r[2])) for r in rows}
                expected = self.model.items.get(queue, {})
                assert sorted(stored) == sorted(expected), queue
                for queue_id, item in expected.items():
                    data, status = stored[queue_id]
                    assert decode(data) == item
                    assert status in status_of[self.model.state[(queue, queue_id)]]

    @invariant()
    def set_aside_items_are_listed_oldest_first(self) -> None:
        for destination in DESTINATIONS:
            listed = [(q, i) for q, i, _ in self.box.set_aside_items(destination)]
            lanes = (destination, destination + LOW_PRIORITY)
            assert listed == [(q, i) for q in lanes for i in self.model.ids(q, "set_aside")]


OutboxMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_outbox_against_its_model = OutboxMachine.TestCase
# The long run (OUTBOX_MODEL_EXAMPLES=500 under make test-long) outlasts the default timeout.
test_outbox_against_its_model.pytestmark = [pytest.mark.timeout(1800)]
