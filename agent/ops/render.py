"""The reconciliation and the go-live QA report as a person reads them: terminal text, Markdown."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

Answer = Mapping[str, Any]


def reconciliation_text(answer: Answer) -> str:
    """`till-agent reconcile`: one block per day, a line per destination, then what differs."""
    lines = [
        f"Takings of store {answer['storeId']}, till {answer['tillId']}: "
        f"{answer['from']} to {answer['to']}"
    ]
    for day in answer["days"]:
        lines += ["", day["date"]]
        for entry in day["destinations"]:
            lines += _destination_lines(entry)
    return "\n".join(lines)


def _destination_lines(entry: Answer) -> list[str]:
    taken, delivered = entry["taken"], entry["delivered"]
    lines = [
        f"  {entry['destination']:<12} {entry['status'].upper():<9}"
        f" taken {_count_gross(taken)}  delivered {_count_gross(delivered)}"
        f"  pending {_count_gross(entry['pending'])}"
        f"  dead-lettered {_count_gross(entry['deadLettered'])}",
        f"  {'':<22}tax {taken['tax']} / {delivered['tax']}"
        f"  returns {_count_gross(taken['returns'])} / {_count_gross(delivered['returns'])}"
        f"  tenders {_tenders(taken['tenders'])} / {_tenders(delivered['tenders'])}",
    ]
    if entry.get("cloud") is not None:
        counts = entry["verification"]
        lines.append(
            f"  {'':<22}cloud {_count_gross(entry['cloud'])}  verified {counts['verified']}"
            f"  accepted {counts['accepted']}  not verified {counts['notVerified']}"
        )
    lines += [
        f"    {d['uniqueReceiptId']}  {d['state']}  taken {d['taken']}"
        f"  delivered {d['delivered'] or '-'}"
        + (f"  cloud {d['cloud'] or '-'}" if entry.get("cloud") is not None else "")
        + f"\n      fix: {d['fix']}"
        for d in entry["details"]
    ]
    return lines


def _count_gross(value: Answer) -> str:
    return f"{value['count']} = {value['gross']}"


def _tenders(tenders: Mapping[str, str]) -> str:
    return ", ".join(f"{kind} {value}" for kind, value in tenders.items()) or "-"


# --- the QA report ------------------------------------------------------------------------


def qa_markdown(report: Answer) -> str:
    """The vendor's copy: what was tested, when, and whether the numbers add up; JSON at the end."""
    parts = [
        f"# Go-live QA report: store {report['storeId']}, till {report['tillId']}",
        "",
        _facts_table(report),
        "",
        "## Reconciliation per day and destination",
        "",
        _reconciliation_table(report["reconciliation"]["days"]),
        "",
        "## Receipts",
        "",
        _receipts_table(report["receipts"], report["destinations"]),
        "",
        "## The same report as JSON",
        "",
        "```json",
        json.dumps(report, indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(parts)


def _facts_table(report: Answer) -> str:
    ran = report["testsRan"]
    rows = [
        (
            "Date range tested (createdDate, the till's local date)",
            f"{report['from']} to {report['to']}",
        ),
        (
            "Tests ran (receipts handed to the till)",
            f"{ran['first'] or '-'} to {ran['last'] or '-'}",
        ),
        ("Report written", report["generatedAt"]),
        ("Store / till", f"{report['storeId']} / {report['tillId']}"),
        ("Agent version", report["agentVersion"]),
        ("Destinations", ", ".join(f"{d['name']} ({d['kind']})" for d in report["destinations"])),
        ("Receipts", str(len(report["receipts"]))),
        ("All numbers add up", "yes" if report["allMatch"] else "no (see below)"),
    ]
    return _table(("", ""), rows)


def _reconciliation_table(days: Sequence[Answer]) -> str:
    head = (
        "Day",
        "Destination",
        "Status",
        "Taken",
        "Delivered",
        "Cloud (read back)",
        "Tax taken / delivered",
        "Returns taken / delivered",
        "Pending",
        "Dead-lettered",
        "Differences",
    )
    rows = [
        (
            day["date"],
            entry["destination"],
            entry["status"],
            _count_gross(entry["taken"]),
            _count_gross(entry["delivered"]),
            _read_back(entry),
            f"{entry['taken']['tax']} / {entry['delivered']['tax']}",
            f"{_count_gross(entry['taken']['returns'])} / "
            f"{_count_gross(entry['delivered']['returns'])}",
            _count_gross(entry["pending"]),
            _count_gross(entry["deadLettered"]),
            ", ".join(entry["differences"]) or "-",
        )
        for day in days
        for entry in day["destinations"]
    ]
    return _table(head, rows)


def _read_back(entry: Answer) -> str:
    if entry.get("cloud") is None:
        return "not read back"
    counts = entry["verification"]
    return (
        f"{_count_gross(entry['cloud'])}; {counts['verified']} verified, "
        f"{counts['accepted']} accepted, {counts['notVerified']} not verified"
    )


def _receipts_table(receipts: Sequence[Answer], destinations: Sequence[Answer]) -> str:
    names = [d["name"] for d in destinations]
    head = ("Receipt", "Created", "Kind", "Revision", "Gross", "Tax", "Tenders", *names)
    rows = [
        (
            r["uniqueReceiptId"],
            r["createdDate"],
            ", ".join(r["kinds"]),
            str(r["revision"]),
            r["gross"],
            r["tax"],
            _tenders(r["tenders"]),
            *(_delivery(r["destinations"].get(name)) for name in names),
        )
        for r in receipts
    ]
    return _table(head, rows)


def _delivery(state: Answer | None) -> str:
    if state is None:
        return "not taken"
    return f"{state['state']}, {state['verification']}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
