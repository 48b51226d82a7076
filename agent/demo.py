"""The demo: the sandbox cloud, an agent and a simulated till, through an outage and a 429 storm."""

from __future__ import annotations

import random
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from agent import app, connectors
from agent.core import config
from agent.sandbox import SandboxCloud

SECRETS = {
    "engage-api-key": "sandbox-engage-key",
    "loaded-client-secret": "sandbox-secret",
}
# (share of the selling time, what happens): the demo's script.
TIMELINE = (
    (0.27, "outage", "the cloud goes away (connections refused)"),
    (0.50, "back", "the cloud is back"),
    (0.63, "storm", "a 429 storm: the cloud asks for 3 s of quiet, six times"),
)


@dataclass
class TillLog:
    """What the simulated till handed over and what it was told."""

    accepted: list[str] = field(default_factory=list)
    with_contact: list[str] = field(default_factory=list)
    refused: int = 0


def run_demo(seconds: float, say: Callable[[str], object], *, drain_seconds: float = 60.0) -> bool:
    """Run it; True when every receipt reached every cloud that takes it exactly once."""
    with tempfile.TemporaryDirectory(prefix="till-agent-demo-") as directory:
        cloud = SandboxCloud(seed=1).serve()
        agent = app.start(demo_settings(Path(directory), cloud.url))
        try:
            say(f"sandbox cloud {cloud.url}   agent {agent.url}   data {directory}")
            log = TillLog()
            _sell_and_disturb(agent, cloud, log, seconds, say)
            _drain(agent, drain_seconds, say)
            return _verdict(cloud, log, say)
        finally:
            agent.stop()
            cloud.stop()


def demo_settings(directory: Path, cloud_url: str, *, port: int = 0) -> config.Settings:
    """An agent on its own folder (data, logs, the sandbox's credentials) sending to cloud_url."""
    credentials = directory / "credentials"
    credentials.mkdir(mode=0o700)
    for name, value in SECRETS.items():
        (credentials / name).write_text(value, encoding="utf-8")
    raw: dict[str, Any] = {
        "agent": {
            "store_id": "demo-store",
            "till_id": "till-1",
            "data_dir": str(directory / "data"),
            "log_dir": str(directory / "logs"),
            "credentials_dir": str(credentials),
        },
        "api": {"listen": f"127.0.0.1:{port}", "token_file": str(directory / "pos-token")},
        "delivery": {"backoff_initial_seconds": 0.5, "backoff_max_seconds": 4.0},
        "destinations": {
            "engage": {"kind": "engage", "base_url": cloud_url, "requests_per_second": 50},
            "loaded": {
                "kind": "loaded",
                "base_url": cloud_url + "/loaded",
                "client_id": "sandbox-client",
                "requests_per_second": 50,
            },
        },
    }
    return config.from_mapping(raw, {}, connectors.KINDS)


def _sell_and_disturb(
    agent: app.Agent,
    cloud: SandboxCloud,
    log: TillLog,
    seconds: float,
    say: Callable[[str], object],
) -> None:
    stop = threading.Event()
    till = threading.Thread(target=_till, args=(agent, log, stop), name="demo-till")
    till.start()
    started = time.monotonic()
    pending = [(share * seconds, action, words) for share, action, words in TIMELINE]
    while (elapsed := time.monotonic() - started) < seconds:
        while pending and pending[0][0] <= elapsed:
            _, action, words = pending.pop(0)
            _act(cloud, action)
            say(f"  >>> {words}")
        say(_line(elapsed, agent, log))
        time.sleep(1.0)
    stop.set()
    till.join()
    cloud.faults.clear()


def _act(cloud: SandboxCloud, action: str) -> None:
    if action == "outage":
        cloud.faults.set_offline("refused")
    elif action == "back":
        cloud.faults.set_offline(None)
    elif action == "storm":
        cloud.faults.storm_429(6, retry_after_form="seconds", retry_after_seconds=3)


def _till(agent: app.Agent, log: TillLog, stop: threading.Event) -> None:
    """Five sales a second, a third of them by a known member; the till never waits."""
    rng = random.Random(7)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {agent.token}"
    number = 0
    while not stop.wait(0.2):
        number += 1
        receipt = demo_receipt(number, with_contact=rng.random() < 0.33)
        answer = session.post(f"{agent.url}/v1/receipts", json=receipt, timeout=5)
        if answer.status_code == 202:
            log.accepted.append(receipt["uniqueReceiptId"])
            if "contact" in receipt:
                log.with_contact.append(receipt["uniqueReceiptId"])
        else:
            log.refused += 1
    session.close()


def demo_receipt(number: int, *, with_contact: bool) -> dict[str, Any]:
    price = f"{10 + number % 7}.00"
    receipt: dict[str, Any] = {
        "uniqueReceiptId": f"DEMO-{number:05d}",
        "receiptNumber": str(number),
        "createdDate": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "storeExternalId": "demo-store",
        "currency": "SEK",
        "totalGrossPrice": price,
        "paymentMethods": [{"type": "card", "value": price}],
        "items": [
            {
                "type": "PURCHASE",
                "sku": f"SKU-{number % 5}",
                "articleNumber": f"ART-{number % 5}",
                "articleName": f"Demo article {number % 5}",
                "quantity": 1,
                "grossPaidPrice": price,
                "taxAmount": "2.00",
                "taxPercent": "25",
            }
        ],
    }
    if with_contact:
        receipt["contact"] = {
            "matchKey": f"+4670000{number % 50:04d}",
            "matchKeyType": "mobilePhone",
        }
    return receipt


def _line(elapsed: float, agent: app.Agent, log: TillLog) -> str:
    status = _status(agent)
    parts = [f"t={elapsed:4.0f}s  till: {len(log.accepted):4d} sold"]
    for d in status["destinations"]:
        parts.append(
            f"{d['name']}: {d['state']:<9} queued {d['depth']:4d} sent {d['sent']:4d} "
            f"retried {d['failed']:3d}"
        )
    return "  |  ".join(parts)


def _status(agent: app.Agent) -> dict[str, Any]:
    assert agent.status is not None
    return agent.status.report()


def _drain(agent: app.Agent, seconds: float, say: Callable[[str], object]) -> None:
    say("the till stops selling; waiting for every queue to drain")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = _status(agent)
        if all(d["depth"] == 0 and d["inFlight"] == 0 for d in status["destinations"]):
            return
        time.sleep(0.5)


def _verdict(cloud: SandboxCloud, log: TillLog, say: Callable[[str], object]) -> bool:
    """Counted at the clouds, send by send: every receipt accepted by each cloud that takes it,
    each exactly once (a repeat would be a resend the cloud took again)."""
    accepted = cloud.accepted_receipts()
    verdicts = [
        _one_cloud("engage (receipts with a member)", accepted["engage"], log.with_contact, say),
        _one_cloud("loaded (every receipt)", accepted["loaded"], log.accepted, say),
    ]
    if all(verdicts):
        say("every receipt was delivered exactly once, through the outage and the 429 storm")
    return all(verdicts)


def _one_cloud(
    name: str, accepted: Counter[str], expected: list[str], say: Callable[[str], object]
) -> bool:
    missing = set(expected) - set(accepted)
    extra = set(accepted) - set(expected)
    repeated = sum(n - 1 for n in accepted.values())
    say(
        f"{name}: {len(expected)} sold, {len(accepted)} accepted by the cloud in "
        f"{sum(accepted.values())} sends; missing {len(missing)}, unknown {len(extra)}, "
        f"accepted again {repeated}"
    )
    return not missing and not extra and repeated == 0
