"""How the agent says sizes, ages and waits to a person: one vocabulary for every screen."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KIB = 1024
UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB")


def size(count: float) -> str:
    """Bytes in binary units, as the settings count them (storage.max_size_mb is in MiB)."""
    value = float(count)
    for unit in UNITS[:-1]:
        if abs(value) < KIB:
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= KIB
    return f"{value:.1f} {UNITS[-1]}"


def duration(seconds: float) -> str:
    """A span a person reads at a glance: 45 s, 12 min, 3.5 h, 2.0 days."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def next_try(seconds: float) -> str:
    """The countdown to a destination's next attempt, computed when it is shown."""
    return "trying now" if seconds <= 0.5 else f"next try in {duration(seconds)}"


@dataclass(frozen=True)
class State:
    """A destination's state as a person reads it: what it means, what to do ('' nothing)."""

    meaning: str
    todo: str


# The one vocabulary of a destination's states: the status page, `till-agent status` and
# docs/operations.md say these words (tests/test_wording.py keeps the document equal).
STATES = {
    "online": State("the cloud takes what is sent; the detail says how it goes", ""),
    "offline": State(
        'the cloud is not taking receipts: nothing answered ("no answer from the cloud"), or '
        "it answered with a server error (the detail gives the HTTP status); the queue is kept, "
        "the agent backs off and asks the cloud every `delivery.recovery_probe_seconds` (15 s), "
        "so a cloud that is back is used again within that",
        "nothing, if it clears by itself; `till-install verify` checks the way to the cloud; "
        "`till-agent retry-now NAME` tries at once",
    ),
    "throttled": State(
        "the cloud asked for a pause (`Retry-After`), or a call budget is used up",
        "nothing: it resumes by itself",
    ),
    "halted": State(
        "the cloud refused the credentials (HTTP 401/403) or a setting; no receipt can go, the "
        "queue is kept, health is red, an alert goes out",
        "put the right secret in place with `till-install configure --secret NAME` (it "
        "restarts the agent), or `till-agent retry-now NAME` after fixing it another way",
    ),
    "not delivering": State(
        "delivery is off (`[delivery] enabled = false`) or its worker stopped; sales are kept",
        "restart the agent to deliver",
    ),
}


def state_hint(state: str) -> str:
    """What to do about a destination in this state ('' when nothing)."""
    known = STATES.get(state)
    return known.todo if known else ""


def destination_detail(destination: Mapping[str, Any]) -> str:
    """A destination's detail from /v1/status, with the countdown to its next try worked out
    when it is shown (the page refreshes, `status` is run again: the countdown moves)."""
    paused = float(destination.get("pausedSeconds") or 0.0)
    if destination["state"] == "online" or paused <= 0:
        return str(destination["detail"])
    return f"{destination['detail']}; {next_try(paused)}"


def storage(answer: Mapping[str, Any]) -> str:
    """The storage part of /v1/status: used, allowed (storage.max_size_mb, MiB), free on disk."""
    return (
        f"{size(answer['dataDirBytes'])} used of {size(answer['limitBytes'])} allowed, "
        f"{size(answer['freeBytes'])} free on disk"
    )
