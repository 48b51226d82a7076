"""Named crash points and test hooks for the crash tests, armed by TILL_AGENT_FAILPOINTS only.

`TILL_AGENT_FAILPOINTS="intake.after_commit@3,purge.after_delete"` kills the process the 3rd
time `failpoint("intake.after_commit")` is reached, or the 1st time for `purge.after_delete`.
A hook named there (`storage.no_fsync`) changes a behaviour for a test's control run instead.
Read once at import; unset (production), `failpoint()` is one truth test of an empty dict.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "TILL_AGENT_FAILPOINTS"
# The points, each at one exact place (docs/architecture.md, "Crash points").
POINTS = (
    "intake.before_commit",  # agent/intake/__init__.py: rows written, transaction not yet committed
    "intake.after_commit",  # agent/intake/__init__.py: committed, the 2xx not yet sent
    "dispatch.after_send",  # agent/delivery/attempt.py: the cloud said 2xx, nothing recorded yet
    "purge.after_delete",  # agent/privacy/: delivered rows deleted, before vacuum/checkpoint
    "startup.after_recovery",  # agent/app.py: queues reopened (claims made ready), not serving
    "oauth.before_refresh",  # agent/connectors/oauth.py: a refresh due, its request not yet made
    "oauth.before_save",  # agent/connectors/oauth.py: the new pair answered, not yet saved
    "vault.before_commit",  # agent/connectors/vault.py: a refreshed token written, uncommitted
    "vault.after_commit",  # agent/connectors/vault.py: a refreshed token committed, not yet used
)
# Test hooks: what a control run needs to prove its rig can fail. Never set on a till: there is
# no setting for them, and the agent says so in red on its health when one is on.
HOOKS = (
    "storage.no_fsync",  # agent/core/db.py: synchronous=OFF (test_power_loss.py's control run)
)


def parse(spec: str) -> dict[str, int]:
    """`name[@n],...` as {name: hits left before the kill}; an unknown name is a ValueError."""
    armed: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = part.partition("@")
        if name not in POINTS + HOOKS:
            known = ", ".join(POINTS + HOOKS)
            raise ValueError(f"{ENV}: unknown failpoint {name!r} (known: {known})")
        armed[name] = int(count) if count else 1
    return armed


_armed = parse(os.environ.get(ENV, ""))
_lock = threading.Lock()


def failpoint(name: str) -> None:
    """Kill this process here (SIGKILL: no cleanup, no flush) when the point is armed and due."""
    if not _armed or name not in _armed:
        return
    with _lock:
        _armed[name] -= 1
        due = _armed[name] <= 0
    if due:
        kill = getattr(signal, "SIGKILL", None)
        if kill is None:  # Windows: no SIGKILL; an immediate exit skips cleanup all the same
            os._exit(137)
        os.kill(os.getpid(), kill)


def hooked(name: str) -> bool:
    """True when the test hook `name` is on (TILL_AGENT_FAILPOINTS names it)."""
    return name in HOOKS and name in _armed
