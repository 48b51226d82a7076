"""The technician's status page: one small self-refreshing HTML page, no scripts, no assets."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from agent.core import wording
from agent.core.reasons import printable
from agent.ops.status import describe_cache

REFRESH_SECONDS = 5
CONTENT_TYPE = "text/html; charset=utf-8"
STYLE = """
body{font:15px/1.35 system-ui,sans-serif;margin:0;padding:.6rem;background:#f6f6f4;color:#222}
h1{font-size:1.15rem;margin:.2rem 0 .6rem}h2{font-size:1rem;margin:1rem 0 .3rem}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:.3rem .45rem;border-bottom:1px solid #ddd;vertical-align:top}
th{font-weight:600;background:#eee}.num{text-align:right}
.state{font-weight:700;border-radius:.3rem;padding:.05rem .4rem;color:#fff}
.ok,.online{background:#2e7d32}.degraded,.offline,.throttled{background:#b26a00}
.failing,.halted{background:#c62828}.other{background:#666}.muted{color:#666}
"""


def render(
    status: Mapping[str, Any],
    dead_letters: int,
    set_aside: Sequence[Mapping[str, Any]] = (),
) -> bytes:
    """The page for one /v1/status answer (everything on it is ids, counts and states) and
    the set-aside items, each with its reason in words."""
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>Till {_e(status['tillId'])}: {_e(status['status'])}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Till {_e(status['tillId'])} · store {_e(status['storeId'])} "
        f"{_badge(status['status'])}</h1>",
        _destinations(status["destinations"]),
        _set_aside(set_aside),
        _takings(status["destinations"]),
        _summary(status, dead_letters),
        _components(status["components"]),
        f'<p class="muted">Till Agent {_e(status["version"])} · refreshes every '
        f"{REFRESH_SECONDS} s</p></body></html>",
    ]
    return "".join(parts).encode()


def _destinations(destinations: list[Mapping[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{_e(d['name'])}<br><span class=muted>{_e(d['kind'])}</span></td>"
        f"<td>{_badge(d['state'])}<br><span class=muted>{_e(wording.destination_detail(d))}"
        f"</span>{_hint(d['state'])}</td><td class=num>{d['depth']}</td>"
        f"<td class=num>{_age(d['oldestAgeSeconds'])}</td>"
        f"<td>{_e(d['lastSuccessAt'] or '-')}</td><td class=num>{d['setAside']}</td></tr>"
        for d in destinations
    )
    head = (
        "<tr><th>Destination</th><th>State</th><th class=num>Queued</th>"
        "<th class=num>Oldest</th><th>Last success</th><th class=num>Set aside</th></tr>"
    )
    return f"<h2>Delivery</h2><table>{head}{rows}</table>"


SET_ASIDE_SHOWN = 20


def _set_aside(items: Sequence[Mapping[str, Any]]) -> str:
    """Items that failed on their own: why, in words, and the command that unsticks them."""
    if not items:
        return ""
    rows = "".join(
        f"<tr><td>{_e(i['id'])}</td><td>{_e(i['destination'])}</td>"
        f"<td>{_e(printable(i['record_key'], 40))}</td><td class=num>{i['attempts']}</td>"
        f"<td>{_e(printable(i['reason'] or '-'))}</td></tr>"
        for i in items[:SET_ASIDE_SHOWN]
    )
    head = (
        "<tr><th>Item</th><th>Destination</th><th>Record</th><th class=num>Tries</th>"
        "<th>Why</th></tr>"
    )
    more = f" (the first {SET_ASIDE_SHOWN})" if len(items) > SET_ASIDE_SHOWN else ""
    return (
        f"<h2>Set aside{more}</h2><table>{head}{rows}</table><p class=muted>"
        "till-agent set-aside release ITEM (try it now) · till-agent set-aside dead-letter ITEM"
        " · till-agent retry-now</p>"
    )


def _takings(destinations: list[Mapping[str, Any]]) -> str:
    """Today's receipts per destination; the oldest one still waiting (an id, never a person)."""
    rows = "".join(
        f"<tr><td>{_e(d['name'])}</td>{_count_gross(d['today']['taken'])}"
        f"{_count_gross(d['today']['delivered'])}{_count_gross(d['today']['pending'])}"
        f"<td>{_waiting(d['oldestUndelivered'])}</td></tr>"
        for d in destinations
    )
    head = (
        "<tr><th>Destination</th><th class=num>Taken</th><th class=num>Delivered</th>"
        "<th class=num>Still to go</th><th>Oldest undelivered receipt</th></tr>"
    )
    note = '<p class="muted">till-agent reconcile --date DAY: every receipt that differs</p>'
    return f"<h2>Today's takings</h2><table>{head}{rows}</table>{note}"


def _count_gross(part: Mapping[str, Any]) -> str:
    return f"<td class=num>{part['count']} · {_e(part['gross'])}</td>"


def _waiting(oldest: Mapping[str, Any] | None) -> str:
    if oldest is None:
        return "-"
    return f"{_e(oldest['uniqueReceiptId'])} ({_age(oldest['ageSeconds'])})"


def _forecast(forecast: Mapping[str, Any]) -> str:
    hours, rate = forecast["hoursToFull"], forecast["recordsPerHour"]
    if rate is None:
        return "measuring the intake rate"
    if hours is None:
        return f"not filling ({rate:g} receipts and changes an hour)"
    warn = " (under the warning level)" if hours < forecast["warnBelowHours"] else ""
    return f"full in {hours:g} hours at {rate:g} receipts and changes an hour{warn}"


def _summary(status: Mapping[str, Any], dead_letters: int) -> str:
    storage, cache, counters = status["storage"], status["contacts"], status["counters"]
    rows = [
        ("Dead letters", f"{dead_letters} (till-agent dead-letters list)"),
        ("Contact cache", describe_cache(cache)),
        ("Disk", wording.storage(storage)),
        ("Store", _forecast(status["forecast"])),
        ("Since install", ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counters.items())),
    ]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<h2>Till</h2><table>{body}</table>"


def _hint(state: str) -> str:
    hint = wording.state_hint(state)
    return f"<br><small>{_e(hint)}</small>" if hint else ""


def _components(components: list[Mapping[str, Any]]) -> str:
    problems = [c for c in components if c["state"] != "ok"]
    if not problems:
        return "<h2>Problems</h2><p>None.</p>"
    rows = "".join(
        f"<tr><td>{_e(c['name'])}</td><td>{_badge(c['state'])}</td><td>{_e(c['detail'])}</td></tr>"
        for c in problems
    )
    return f"<h2>Problems</h2><table>{rows}</table>"


KNOWN_STATES = {"ok", "online", "degraded", "offline", "throttled", "failing", "halted"}


def _badge(state: str) -> str:
    css = state if state in KNOWN_STATES else "other"
    return f'<span class="state {css}">{_e(state)}</span>'


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else wording.duration(seconds)


def _e(value: object) -> str:
    return html.escape(str(value))
