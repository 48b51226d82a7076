"""The demo, shortened: sandbox, agent and till through an outage and a 429 storm, end to end."""

from __future__ import annotations

from agent.demo import run_demo


def test_the_demo_delivers_every_receipt_exactly_once():
    lines: list[str] = []
    assert run_demo(8.0, lines.append, drain_seconds=60.0), "\n".join(lines)
    text = "\n".join(lines)
    assert "the cloud goes away" in text
    assert "a 429 storm" in text
    assert "every receipt was delivered exactly once" in text
