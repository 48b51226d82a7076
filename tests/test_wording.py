"""The words and units every screen uses: sizes in binary units, spans, the live countdown."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.core import wording
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("count", "said"),
    [
        (0, "0 bytes"),
        (1023, "1023 bytes"),
        (1536, "1.5 KiB"),
        (2048 * 1024 * 1024, "2.0 GiB"),
        (500 * 1024 * 1024, "500.0 MiB"),
        (3 * 1024**4, "3.0 TiB"),
    ],
)
def test_sizes_are_in_binary_units(count, said):
    assert wording.size(count) == said


@pytest.mark.parametrize(
    ("seconds", "said"), [(5, "5 s"), (119, "119 s"), (600, "10 min"), (9000, "2.5 h")]
)
def test_durations(seconds, said):
    assert wording.duration(seconds) == said


def test_a_destination_detail_carries_the_countdown_only_while_waiting():
    waiting = {"state": "offline", "detail": "cloud unreachable", "pausedSeconds": 42.4}
    assert wording.destination_detail(waiting) == "cloud unreachable; next try in 42 s"
    assert wording.destination_detail(waiting | {"pausedSeconds": 0.0}) == "cloud unreachable"
    online = {"state": "online", "detail": "delivering", "pausedSeconds": 3.0}
    assert wording.destination_detail(online) == "delivering"


def test_operations_md_states_table_says_what_the_code_says():
    """docs/operations.md's table of a destination's states is wording.STATES, word for word."""
    text = (ROOT / "docs" / "operations.md").read_text("utf-8")
    table = text.split("<!-- states: agent/core/wording.py STATES -->\n", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| \*\*(.+?)\*\* \| (.+?) \| (.+?) \|$", table, re.MULTILINE)
    documented = {name: (meaning, todo) for name, meaning, todo in rows}
    said = {name: (st.meaning, st.todo or "—") for name, st in wording.STATES.items()}
    assert documented == said


def test_every_state_a_destination_can_report_has_words():
    from agent.delivery import state as dispatch
    from agent.ops import status

    reported = {dispatch.ONLINE, dispatch.OFFLINE, dispatch.THROTTLED, dispatch.HALTED}
    assert "not delivering" in Path(status.__file__).read_text("utf-8")
    assert reported | {"not delivering"} == set(wording.STATES)
