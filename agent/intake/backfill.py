"""Historic backfill: receipts from a JSONL or CSV file, checked, queued in the low lane."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from agent.core import models
from agent.core.errors import InvalidRequestError

MAX_LISTED_INVALID = 50
# The flat CSV: one row per receipt line; rows of one receipt follow each other and repeat its
# receipt columns. One payment per receipt (paymentType, paymentValue).
CSV_RECEIPT = ("uniqueReceiptId", "receiptNumber", "createdDate", "storeExternalId", "currency")
CSV_ITEM = ("sku", "articleNumber", "articleName")
CSV_AMOUNTS = ("grossPaidPrice", "taxAmount", "taxPercent")


@dataclass
class ImportSummary:
    accepted: int = 0
    duplicates: int = 0
    amended: int = 0
    invalid: int = 0
    invalid_lines: list[str] = field(default_factory=list)

    def add_invalid(self, line: int, reason: str) -> None:
        self.invalid += 1
        if len(self.invalid_lines) < MAX_LISTED_INVALID:
            self.invalid_lines.append(f"line {line}: {reason}")


Submit = Callable[[dict[str, Any]], str]  # a receipt body -> "queued" | "duplicate" | "amended"


def run_import(path: Path, submit: Submit, progress: Callable[[int], object]) -> ImportSummary:
    """Every receipt of the file through the intake checks; a re-run only finds duplicates."""
    summary = ImportSummary()
    for line, body in read_receipts(path):
        progress(1)
        if isinstance(body, str):
            summary.add_invalid(line, body)
            continue
        try:
            check(body)
            status = submit(body)
        except (InvalidRequestError, msgspec.ValidationError) as exc:
            summary.add_invalid(line, str(exc))
            continue
        setattr(summary, _FIELD[status], getattr(summary, _FIELD[status]) + 1)
    return summary


_FIELD = {"queued": "accepted", "duplicate": "duplicates", "amended": "amended"}


def check(body: dict[str, Any]) -> models.Receipt:
    receipt = msgspec.convert(body, models.Receipt, strict=False)
    models.check_receipt(receipt)
    return receipt


def count_receipts(path: Path) -> int:
    return sum(1 for _ in read_receipts(path))


def read_receipts(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, receipt body or why the line cannot be read)."""
    if path.suffix.lower() == ".csv":
        yield from _read_csv(path)
    else:
        yield from _read_jsonl(path)


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """Each line on its own: one that is not UTF-8, not JSON, nested past reason or holding a
    number of thousands of digits is reported by its number, and the next line is read."""
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            yield number, _line_body(raw)


def _line_body(raw: bytes) -> dict[str, Any] | str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8"
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not JSON: {exc.msg}"
    except RecursionError:
        return "not JSON we read: nested too deeply"
    except ValueError:  # an integer of more digits than Python converts
        return "not JSON we read: a number far too long"
    return body if isinstance(body, dict) else "not a JSON object"


def _read_csv(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        current: dict[str, Any] | None = None
        first_line = 0
        for number, row in _csv_rows(handle):
            if isinstance(row, str):
                yield number, row
                continue
            if current is not None and row.get("uniqueReceiptId") != current["uniqueReceiptId"]:
                yield first_line, current
                current = None
            if current is None:
                first_line = number
            try:
                current = _add_csv_row(current, row)
            except KeyError as exc:
                yield number, f"bad CSV row: no column {exc}"
        if current is not None:
            yield first_line, current


def _csv_rows(handle: Any) -> Iterator[tuple[int, dict[str, str] | str]]:
    """(line, row) or (line, why it cannot be read): a field over csv's limit (128 KiB) is
    reported and the reader goes on with the next row. Undecodable bytes read as U+FFFD and
    fail the receipt's checks."""
    reader = csv.DictReader(handle)
    while True:
        before = max(reader.line_num, 1)  # the header's line once read
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield before + 1, f"bad CSV row: {exc}"
            continue
        yield reader.line_num, row


def _add_csv_row(current: dict[str, Any] | None, row: dict[str, str]) -> dict[str, Any]:
    """Values stay text: the receipt checks turn them into decimals and integers, or refuse."""
    if current is None:
        current = {name: row[name] for name in CSV_RECEIPT}
        current["totalGrossPrice"] = row["totalGrossPrice"]
        current["paymentMethods"] = [{"type": row["paymentType"], "value": row["paymentValue"]}]
        current["items"] = []
        if row.get("contactMatchKey"):
            current["contact"] = {
                "matchKey": row["contactMatchKey"],
                "matchKeyType": row["contactMatchKeyType"],
            }
    item: dict[str, Any] = {name: row[name] for name in (*CSV_ITEM, *CSV_AMOUNTS)}
    item["type"] = row["itemType"]
    item["quantity"] = (
        int(row["quantity"])
        if row["quantity"].lstrip("-").isdigit() and len(row["quantity"]) <= 18
        else row["quantity"]
    )
    current["items"].append(item)
    return current
