"""till-agent import: a site's history in the low-priority lane; re-runnable; bad lines listed."""

from __future__ import annotations

import csv
import json

from tests.conftest import Till, make_receipt
from tests.test_cli import till_agent


def write_jsonl(path, bodies):
    path.write_text("\n".join(json.dumps(b) for b in bodies) + "\n", encoding="utf-8")
    return path


def test_import_on_a_running_agent_goes_to_the_low_lane_and_lists_bad_lines(
    agent_process, tmp_path
):
    process = agent_process()
    process.start()
    bad = make_receipt("H-BAD")
    bad["items"][0]["quantity"] = "many"
    lines = [make_receipt(f"H-{n}") for n in range(5)] + [bad]
    history = write_jsonl(tmp_path / "history.jsonl", lines)
    with history.open("a", encoding="utf-8") as handle:
        handle.write("{not json\n")
    result = till_agent("import", str(history), "--config", str(process.config_path))
    assert result.returncode == 0, result.stderr
    assert "accepted 5, duplicates 0, amended 0, invalid 2" in result.stdout
    assert "line 6:" in result.stdout
    assert "line 7: not JSON" in result.stdout
    again = till_agent("import", str(history), "--config", str(process.config_path))
    assert "accepted 0, duplicates 5" in again.stdout  # resumable: a re-run only finds duplicates
    till = Till(process.url, process.token)
    status = till.get("/v1/status").json()
    till.close()
    assert {d["name"]: d["depth"] for d in status["destinations"]} == {"engage": 5, "loaded": 5}


def test_import_of_a_flat_csv_on_a_stopped_agent(agent_process, tmp_path):
    process = agent_process()
    process.start()
    assert process.terminate() == 0
    path = tmp_path / "history.csv"
    columns = [
        "uniqueReceiptId",
        "receiptNumber",
        "createdDate",
        "storeExternalId",
        "currency",
        "totalGrossPrice",
        "paymentType",
        "paymentValue",
        "itemType",
        "sku",
        "articleNumber",
        "articleName",
        "quantity",
        "grossPaidPrice",
        "taxAmount",
        "taxPercent",
        "contactMatchKey",
        "contactMatchKeyType",
    ]
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for rid, sku in (("C-1", "A"), ("C-1", "B"), ("C-2", "A")):
            total = "20.00" if rid == "C-1" else "10.00"
            writer.writerow(
                [
                    rid,
                    rid,
                    "2025-06-01T12:00:00+02:00",
                    "store-test",
                    "SEK",
                    total,
                    "card",
                    total,
                    "PURCHASE",
                    sku,
                    sku,
                    f"Article {sku}",
                    "1",
                    "10.00",
                    "2.00",
                    "25",
                    "",
                    "",
                ]
            )
    result = till_agent("import", str(path), "--config", str(process.config_path))
    assert result.returncode == 0, result.stderr
    assert "accepted 2, duplicates 0, amended 0, invalid 0" in result.stdout


def test_import_reports_each_unreadable_line_by_number_and_goes_on(agent_process, tmp_path):
    """Issue 14 §5: deep JSON, bad UTF-8, NaN, 5,000 digits, a CSV field over 128 KiB."""
    process = agent_process()
    process.start()
    assert process.terminate() == 0
    nan = json.dumps(make_receipt("H-NAN")).replace('"20.00"', "NaN", 1)
    digits = json.dumps(make_receipt("H-DIGITS")).replace('"20.00"', "9" * 5000, 1)
    history = tmp_path / "history.jsonl"
    history.write_bytes(
        b"\n".join(
            [
                json.dumps(make_receipt("H-1")).encode(),
                b"[" * 100_000,
                b'{"uniqueReceiptId": "\xff\xfe"}',
                nan.encode(),
                digits.encode(),
                json.dumps(make_receipt("H-2")).encode(),
            ]
        )
        + b"\n"
    )
    result = till_agent("import", str(history), "--config", str(process.config_path))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "accepted 2, duplicates 0, amended 0, invalid 4" in result.stdout
    for number in (2, 3, 4, 5):
        assert f"line {number}:" in result.stdout
    assert "line 3: not UTF-8" in result.stdout
    table = tmp_path / "history.csv"
    table.write_text("uniqueReceiptId,receiptNumber\n" + "x" * 140_000 + ",1\n", encoding="utf-8")
    result = till_agent("import", str(table), "--config", str(process.config_path))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "line 2: bad CSV row" in result.stdout
