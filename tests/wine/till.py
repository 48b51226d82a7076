"""The POS on Linux talking to the agent under Wine, and what the sandbox cloud received."""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests

from agent.sandbox import SandboxCloud
from tests.conftest import make_receipt


class Till:
    """The POS, on Linux, calling the agent that runs under Wine on loopback."""

    def __init__(self, listen: str, token_file: Path) -> None:
        self.url = f"http://{listen}"
        self.token_file = token_file

    def health(self) -> int:
        return requests.get(self.url + "/v1/health", timeout=5).status_code

    def sell(self, receipt_id: str) -> None:
        receipt = make_receipt(receipt_id)
        answer = requests.post(
            self.url + "/v1/receipts", json=receipt, headers=self._auth(), timeout=10
        )
        assert answer.status_code == 202, answer.text

    def states(self, receipt_id: str) -> dict[str, str]:
        answer = requests.get(
            self.url + f"/v1/receipts/{receipt_id}", headers=self._auth(), timeout=10
        )
        assert answer.status_code == 200, answer.text
        return {d["destination"]: d["state"] for d in answer.json()["destinations"]}

    def wait_delivered(self, receipt_id: str, timeout_seconds: float = 60.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout_seconds
        while (states := self.states(receipt_id)) and set(states.values()) != {"delivered"}:
            assert time.monotonic() < deadline, f"not delivered in time: {states}"
            time.sleep(0.5)
        return states

    def _auth(self) -> dict[str, str]:
        token = self.token_file.read_text(encoding="utf-8").strip()
        return {"Authorization": f"Bearer {token}"}


def wait_answering(till: Till, timeout_seconds: float = 60.0) -> int:
    """The health status once something answers on the port (the agent is up)."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            return till.health()
        except requests.ConnectionError:
            assert time.monotonic() < deadline, f"nothing answered at {till.url}"
            time.sleep(0.5)


def cloud_received(cloud: SandboxCloud, receipt_id: str) -> set[str]:
    """The simulated APIs that accepted a request naming this receipt."""
    return {
        r.api
        for r in list(cloud.requests)
        if 200 <= r.status < 300 and receipt_id in r.body.decode("utf-8", errors="replace")
    }


def json_line(output: str) -> dict[str, object]:
    """The last line of a Windows program's output that is a JSON object."""
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            found: dict[str, object] = json.loads(line)
            return found
    raise AssertionError(f"no JSON line in:\n{output[-3000:]}")
