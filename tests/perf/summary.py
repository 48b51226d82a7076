"""The one table of a `make bench` run: P1-P8 against their targets, from the benchmarks' JSON."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

EXPECTED = tuple(f"P{n}" for n in range(1, 9))
HEADER = (
    "| id | delivery | figure | value | target | met | yardstick of the same run | next lever |",
    "|---|---|---|---|---|---|---|---|",
)


def benchmark_id(name: str) -> str:
    """`p1_intake_delivery_on` -> `P1`."""
    return name.split("_", 1)[0].upper()


def yardsticks(document: Mapping[str, Any]) -> str:
    """The benchmark's own yardstick rows, in one cell."""
    return "; ".join(
        f"{row['figure'].removeprefix('yardstick:').strip()} {row['value']}"
        for row in document["results"]
        if row["figure"].startswith("yardstick")
    )


def lever_of(name: str, row: Mapping[str, Any], levers: Mapping[str, Mapping[str, str]]) -> str:
    """The next lever for a missed row: its own, or the first of its benchmark's whose key
    starts its figure; empty if none is named."""
    if row.get("lever"):
        return str(row["lever"])
    for prefix, lever in levers.get(name, {}).items():
        if row["figure"].startswith(prefix):
            return lever
    return ""


def judged_rows(
    document: Mapping[str, Any], levers: Mapping[str, Mapping[str, str]]
) -> tuple[list[str], list[str]]:
    """The table lines of one benchmark's rows that have a target, and what is wrong with
    them (a miss that names no next lever)."""
    name, lines, problems = document["benchmark"], [], []
    ident, yardstick = benchmark_id(name), yardsticks(document) or "—"
    for row in document["results"]:
        if row["target"] in ("-", "") or row["figure"].startswith("yardstick"):
            continue
        lever = "" if row["met"] else lever_of(name, row, levers)
        if not row["met"] and not lever:
            problems.append(f"{ident} {row['figure']!r} missed its target and names no lever")
            lever = "**none named**"
        met = "yes" if row["met"] else "**no**"
        cells = (ident, document.get("delivery", "—"), row["figure"], row["value"], row["target"])
        lines.append(f"| {' | '.join(map(str, cells))} | {met} | {yardstick} | {lever} |")
    return lines, problems


def beside_line(document: Mapping[str, Any]) -> str:
    """When a benchmark ran, and what else used the machine meanwhile."""
    beside = document.get("beside") or {}
    load = beside.get("load_average", ["?", "?"])
    others = ", ".join(f"{p['name']} {p['cpu_seconds']} s" for p in beside.get("others", []))
    sized = "; ".join(document.get("sized_down", [])) or "full size"
    return (
        f"| {document['benchmark']} | {beside.get('seconds', '?')} | {load[0]} → {load[1]} | "
        f"{beside.get('others_cores', '?')} | {others or '—'} | {sized} |"
    )


def render(
    documents: Sequence[Mapping[str, Any]],
    machine: Mapping[str, Any],
    levers: Mapping[str, Mapping[str, str]],
    at: str = "",
) -> tuple[str, list[str]]:
    """The summary in Markdown, and its problems: a miss without a lever, a benchmark of
    P1-P8 that did not run."""
    ordered = sorted(documents, key=lambda d: (benchmark_id(d["benchmark"]), d["benchmark"]))
    lines, problems = list(HEADER), []
    for document in ordered:
        rows, wrong = judged_rows(document, levers)
        lines += rows
        problems += wrong
    ran = {benchmark_id(d["benchmark"]) for d in documents}
    missing = [ident for ident in EXPECTED if ident not in ran]
    if missing:
        problems.append(f"not in this run: {', '.join(missing)}")
    head = [
        f"Machine: {machine.get('platform')}, {machine.get('cpus')} CPUs, Python "
        f"{machine.get('python')}, SQLite {machine.get('sqlite')}; {at}",
        "",
    ]
    beside = [
        "",
        "What ran beside each benchmark (load average at its start → end; CPU the machine's "
        "other processes used meanwhile, in cores, and the busiest of them):",
        "",
        "| benchmark | seconds | load average | others (cores) | busiest others | size |",
        "|---|---|---|---|---|---|",
        *(beside_line(d) for d in ordered),
    ]
    notes = ["", *(f"- {p}" for p in problems)] if problems else []
    return "\n".join([*head, *lines, *beside, *notes]) + "\n", problems
