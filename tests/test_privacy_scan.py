"""After intake, no planted personal value is readable in any byte of the data directory."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tests.conftest import make_receipt

# Synthetic, clearly not real people; odd characters so every encoding is exercised.
PLANTED = {
    "first": "Zyxqvörn",
    "last": "Plantédtestsson",
    "email": "zz.planted.7731@example.com",
    "phone": "+46700009173",
    "member": "MBR-PLANT-55813",
    "street": "Qwxyzgatan 99",
    "ssn": "19010101-PL4N",
    "receipt_key": "zz.receipt.buyer.4410@example.com",
    "quarantined": "zz.quarantine.5512@example.com",
}


def encodings(value: str) -> list[bytes]:
    """The value as UTF-8, UTF-16 (both byte orders) and as JSON-escaped text."""
    escaped = json.dumps(value)[1:-1]
    return [
        value.encode("utf-8"),
        value.encode("utf-16-le"),
        value.encode("utf-16-be"),
        escaped.encode("utf-8"),
        json.dumps(value, ensure_ascii=False)[1:-1].encode("utf-8"),
    ]


def scan(directory: Path) -> list[tuple[str, str]]:
    """Every (file, planted name) whose bytes contain the value in any encoding."""
    hits = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for name, value in PLANTED.items():
            if any(form in data for form in encodings(value)):
                hits.append((str(path), name))
    return hits


def plant_everything(till) -> None:
    contact = {
        "firstName": PLANTED["first"],
        "lastName": PLANTED["last"],
        "email": PLANTED["email"],
        "mobilePhone": PLANTED["phone"],
        "memberNumber": PLANTED["member"],
        "street": PLANTED["street"],
        "socialSecurityNumber": PLANTED["ssn"],
    }
    assert till.post("/v1/contacts", contact).status_code == 202
    receipt = make_receipt("R-PII")
    receipt["contact"] = {"matchKey": PLANTED["receipt_key"], "matchKeyType": "Email"}
    assert till.post("/v1/receipts", receipt).status_code == 202
    receipt["items"][0]["quantity"] = 2  # an amendment re-seals the personal part
    assert till.post("/v1/receipts", receipt).status_code == 202
    bad = make_receipt("R-BAD")
    bad["contact"] = {"matchKey": PLANTED["quarantined"], "matchKeyType": "Bogus"}
    assert till.post("/v1/receipts", bad).status_code == 422


def test_no_personal_value_in_any_byte_of_the_data_directory(start_agent, tmp_path, caplog):
    agent, till = start_agent()
    with caplog.at_level(logging.DEBUG):
        plant_everything(till)
        data_dir = agent.settings.agent.data_dir
        wal = data_dir / "outbox.db-wal"
        assert wal.exists()
        assert wal.stat().st_size > 0  # the WAL is scanned while it holds data
        assert scan(data_dir) == []
    logged = "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert [n for n, v in PLANTED.items() if v in logged] == []


def test_no_personal_value_after_a_clean_stop_either(start_agent):
    agent, till = start_agent()
    plant_everything(till)
    till.close()
    agent.stop()
    assert scan(agent.settings.agent.data_dir) == []


def test_the_scan_would_find_a_plaintext_value(tmp_path):
    (tmp_path / "leak.db-wal").write_bytes(b"\x00" + PLANTED["phone"].encode("utf-16-le"))
    assert scan(tmp_path) == [(str(tmp_path / "leak.db-wal"), "phone")]


def test_no_personal_value_in_the_logs_of_a_real_agent(agent_process, tmp_path):
    """`till-agent run` with file logging, every path incl. refusals, forget and purge."""
    from tests.conftest import Till
    from tests.test_cli import till_agent

    process = agent_process({"agent": {"log_level": "DEBUG"}})
    process.start()
    till = Till(process.url, process.token)
    plant_everything(till)
    bad = make_receipt("R-ENUM")
    bad["items"][0]["type"] = PLANTED["email"]  # a value echoed by the validator's message
    assert till.post("/v1/receipts", bad).status_code == 422
    till.close()
    forgot = till_agent("forget", "--config", str(process.config_path), "--email", PLANTED["email"])
    assert forgot.returncode == 0, forgot.stderr
    assert till_agent("purge", "--config", str(process.config_path)).returncode == 0
    assert process.terminate() == 0
    log_dir = tmp_path / "logs"
    assert list(log_dir.glob("till-agent-*.log")), "the agent wrote no log file"
    assert scan(log_dir) == []
    assert scan(tmp_path / "data") == []
    stderr = (tmp_path / "agent-stderr.log").read_bytes()
    assert [n for n, v in PLANTED.items() if any(f in stderr for f in encodings(v))] == []
