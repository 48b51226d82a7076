"""The contract scenarios: each one, for each cloud, through the real agent against the sandbox.

A purchase, a refund, an amendment, a split bill, a member registered offline, a POS following
Voyado's own receipt examples, money to the last digit, token expiry and refresh, and a 429
with each header the vendor documents: for Engage v2 and v3, Loaded, Lightspeed and the
webhook. The agent runs in-process (real HTTP intake, real SQLite, real delivery workers and
sync); the sandbox enforces each vendor's documented rules. A case that cannot apply to a cloud
is not generated: NOT_APPLICABLE says why, and docs/connectors.md ("Contract scenarios") lists
the same reasons.
"""

from __future__ import annotations

import copy
import email.utils
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from agent import app
from agent.sandbox import SandboxCloud
from tests.conftest import ROOT, Till, lightspeed_oauth_secrets, write_secrets
from tests.conftest import wait_for as wait_seconds

CLOUDS = ("engage-v2", "engage-v3", "loaded", "lightspeed", "webhook")
SENDS = "a contact source: it takes nothing from the till (its CloudKind)"
STATIC = "authorised by a static {what}: no token that expires or is refreshed"
NOT_APPLICABLE: dict[tuple[str, str], str] = {
    **{
        (scenario, "lightspeed"): SENDS
        for scenario in (
            "purchase",
            "refund",
            "amendment",
            "split-bill",
            "member-offline",
            "voyado-examples",
            "money",
        )
    },
    ("token-refresh", "engage-v2"): STATIC.format(what="API key"),
    ("token-refresh", "engage-v3"): STATIC.format(what="API key"),
    ("token-refresh", "webhook"): STATIC.format(what="HMAC signing secret"),
}
BIG = "123456789012345.6789"  # 15 integer digits, 4 decimals: a float would round it


@dataclass
class Rig:
    """One cloud behind a running agent: the sandbox, the agent, the POS's session."""

    cloud: str
    sandbox: SandboxCloud
    agent: app.Agent
    till: Till
    credentials: Path

    @property
    def destination(self) -> str:
        return self.cloud.split("-")[0]


def sale(
    receipt_id: str, *, amount: str = "20.00", tax: str = "4.00", **extra: Any
) -> dict[str, Any]:
    """A purchase of one line, paid by card, tagged with an email Engage matches."""
    body: dict[str, Any] = {
        "uniqueReceiptId": receipt_id,
        "receiptNumber": receipt_id.rsplit("-", 1)[-1],
        "createdDate": "2026-11-24T10:00:00+01:00",
        "storeExternalId": "S042",
        "currency": "SEK",
        "totalGrossPrice": amount,
        "paymentMethods": [{"type": "card", "value": amount}],
        "items": [line("1001", amount, tax)],
        "contact": {"matchKey": "zz.scenario@example.com", "matchKeyType": "email"},
    }
    body.update(extra)
    return body


def line(
    sku: str, amount: str, tax: str, kind: str = "PURCHASE", quantity: int = 1
) -> dict[str, Any]:
    return {
        "type": kind,
        "sku": sku,
        "articleNumber": f"A-{sku}",
        "articleName": f"Test article {sku}",
        "quantity": quantity,
        "grossPaidPrice": amount,
        "taxAmount": tax,
        "taxPercent": "25",
    }


def overrides(cloud: str, sandbox: SandboxCloud) -> dict[str, Any]:
    """The agent's config for one cloud: that destination on, the others off."""
    off = {"engage": {"enabled": False}, "loaded": {"enabled": False}}
    base: dict[str, Any] = {
        "delivery": {
            "enabled": True,
            "backoff_initial_seconds": 0.2,
            "backoff_max_seconds": 1,
            "recovery_probe_seconds": 0.3,
        },
    }
    if cloud.startswith("engage"):
        version = cloud.split("-")[1]
        destinations = {**off, "engage": {"base_url": sandbox.url, "api_version": version}}
    elif cloud == "loaded":
        loaded = {"base_url": sandbox.url + "/loaded", "token_margin_seconds": 2}
        destinations = {**off, "loaded": loaded}
    elif cloud == "webhook":
        hook = {"kind": "webhook", "base_url": sandbox.url + "/webhook/till"}
        destinations = {**off, "webhook": hook}
    else:
        source = {
            "kind": "lightspeed",
            "base_url": sandbox.url,
            "auth": "oauth",
            "client_id": "sandbox-lightspeed-client",
            "token_margin_seconds": 2,
        }
        destinations = {**off, "lightspeed": source}
        base["contacts"] = {"source": "lightspeed", "page_size": 10}
    return {**base, "destinations": destinations}


@pytest.fixture
def rig_for(start_agent, tmp_path) -> Iterator[Callable[..., Rig]]:
    """rig_for(cloud, **sandbox_options): a sandbox and an agent delivering to that cloud."""
    clouds: list[SandboxCloud] = []

    def make(cloud: str, **options: Any) -> Rig:
        sandbox = SandboxCloud(seed=81, **options).serve()
        clouds.append(sandbox)
        credentials = tmp_path / "credentials"
        write_secrets(credentials, lightspeed_oauth_secrets(sandbox))
        agent, till = start_agent(overrides(cloud, sandbox))
        return Rig(cloud, sandbox, agent, till, credentials)

    yield make
    for sandbox in clouds:
        sandbox.stop()


def wait_for(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    wait_seconds(condition, seconds)


def post(rig: Rig, path: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = rig.till.post(path, body)
    assert answer.status_code in (200, 202), answer.text
    result: dict[str, Any] = answer.json()
    return result


def delivered(rig: Rig, receipt_id: str, revision: int = 1) -> bool:
    entries = rig.till.get(f"/v1/receipts/{receipt_id}").json().get("destinations", [])
    return any(e["revision"] == revision and e["state"] == "delivered" for e in entries)


def send(rig: Rig, body: dict[str, Any], revision: int = 1) -> None:
    """The POS sends a receipt; the agent delivers it (this revision) to the cloud."""
    post(rig, "/v1/receipts", body)
    wait_for(lambda: delivered(rig, body["uniqueReceiptId"], revision))


def bodies(rig: Rig, *, path_part: str) -> list[bytes]:
    """The raw bodies the cloud received on writes whose path contains path_part."""
    return [
        r.body
        for r in list(rig.sandbox.requests)
        if path_part in r.path and r.method in ("POST", "PATCH", "PUT") and r.status < 300
    ]


def webhook_messages(rig: Rig, kind: str) -> list[dict[str, Any]]:
    return [d.json for d in rig.sandbox.webhook.received if d.json.get("kind") == kind]


# --- the scenarios -------------------------------------------------------------------------


def purchase(rig: Rig) -> None:
    send(rig, sale("S-1"))
    if rig.destination == "engage":
        got = rig.sandbox.engage.receipts["S-1"]
        tag = {"matchKey": "zz.scenario@example.com", "matchKeyType": "email"}
        assert tag.items() <= got["contact"].items()  # as it came: one request, no lookup
        assert got["totalGrossPrice"] == 20
    elif rig.destination == "loaded":
        order = rig.sandbox.loaded.orders["S-1"]
        assert [i["unitPrice"] for i in order["items"]] == [20]
        assert "1001" in rig.sandbox.loaded.items  # created before the order named it
    else:
        (message,) = webhook_messages(rig, "receipt")
        assert message["receipt"]["uniqueReceiptId"] == "S-1"


def refund(rig: Rig) -> None:
    body = sale(
        "R-1",
        amount="-249.00",
        items=[line("1001", "249.00", "49.80", "RETURN", -1)],
        originalReceiptId="S-0",
    )
    send(rig, body)
    if rig.destination == "engage":  # the sandbox refuses any other signs
        got = rig.sandbox.engage.receipts["R-1"]
        assert got["totalGrossPrice"] < 0
        assert [(i["quantity"], i["grossPaidPrice"] > 0) for i in got["items"]] == [(-1, True)]
    elif rig.destination == "loaded":
        order = rig.sandbox.loaded.orders["R-1"]
        assert order["status"] == "Refunded"
        assert [i["settlementStatus"] for i in order["items"]] == ["Refunded"]
        assert [t["invoiceAmount"] < 0 for t in order["tenders"]] == [True]
    else:
        (message,) = webhook_messages(rig, "receipt")
        assert message["receipt"]["items"][0]["type"] == "RETURN"


def amendment(rig: Rig) -> None:
    first = sale("A-1")
    send(rig, first)
    second = copy.deepcopy(first)
    second["items"].append(line("2002", "51.00", "10.20"))
    second["totalGrossPrice"] = "71.00"
    second["paymentMethods"] = [{"type": "card", "value": "71.00"}]
    send(rig, second, revision=2)
    if rig.destination == "engage":  # receipts cannot be updated: the difference goes
        difference = rig.sandbox.engage.receipts["A-1~r2"]
        assert difference["totalGrossPrice"] == 51
        assert rig.sandbox.engage.receipts["A-1"]["totalGrossPrice"] == 20
    elif rig.destination == "loaded":  # replaced by PATCH eid:, items by position
        assert len(rig.sandbox.loaded.orders["A-1"]["items"]) == 2
        assert [r.method for r in rig.sandbox.requests if "/orders" in r.path][-1] == "PATCH"
    else:
        revisions = [m["revision"] for m in webhook_messages(rig, "receipt")]
        assert revisions == [1, 2]


def split_bill(rig: Rig) -> None:
    for n in (1, 2):
        send(rig, sale(f"T-{n}", amount="120.00", tax="14.40", orderId="TABLE-7"))
    if rig.destination == "engage":
        got = [rig.sandbox.engage.receipts[f"T-{n}"]["totalGrossPrice"] for n in (1, 2)]
        assert got == [120, 120]
    elif rig.destination == "loaded":  # each receipt its own order: the bill adds up
        orders = [rig.sandbox.loaded.orders[f"T-{n}"] for n in (1, 2)]
        assert [o["tenders"][0]["invoiceAmount"] for o in orders] == [120, 120]
    else:
        messages = webhook_messages(rig, "receipt")
        assert [m["receipt"]["orderId"] for m in messages] == ["TABLE-7", "TABLE-7"]


def member_offline(rig: Rig) -> None:
    rig.sandbox.faults.set_offline("refused")
    member = {"firstName": "Test", "lastName": "Person", "email": "zz.member.81@example.com"}
    local_id = post(rig, "/v1/contacts", member)["localId"]
    body = sale("M-1", contact={"localId": local_id})
    post(rig, "/v1/receipts", body)
    time.sleep(0.5)
    assert not delivered(rig, "M-1")  # offline: it waits
    rig.sandbox.faults.set_offline(None)
    wait_for(lambda: delivered(rig, "M-1"))
    if rig.destination == "engage":  # created first, then the receipt names it by its id
        (contact_id,) = rig.sandbox.engage.contacts
        tag = {"matchKey": contact_id, "matchKeyType": "contactId"}
        assert tag.items() <= rig.sandbox.engage.receipts["M-1"]["contact"].items()
    elif rig.destination == "loaded":  # Loaded takes no contacts: the sale goes on its own
        assert "M-1" in rig.sandbox.loaded.orders
    else:
        wait_for(lambda: len(webhook_messages(rig, "contact")) == 1)
        assert webhook_messages(rig, "receipt")[0]["receipt"]["contact"]["localId"] == local_id


def voyado_examples(rig: Rig) -> None:
    """Receipts shaped as Voyado's "register a purchase" and "register a return" examples
    (developer.voyado.com/en/receipts/register-a-purchase.html, …/register-a-return.html):
    JSON numbers, an exchange rate, a bonus-check payment with extra data, a line with extra
    data, a margin as a string, awardsBonus, a negative discount, used bonus checks and
    promotions, a member number with a contact type. Values are ours."""
    purchase_body = {
        "contact": {
            "matchKey": "SBX00000081",
            "matchKeyType": "memberNumber",
            "contactType": "member",
        },
        "uniqueReceiptId": "V-20261124-0001",
        "receiptNumber": "0001",
        "createdDate": "2026-11-24T15:55:54+01:00",
        "storeExternalId": "S042",
        "currency": "NOK",
        "exchangeRateToGroupCurrency": 1.0,
        "totalGrossPrice": 300.00,
        "paymentMethods": [
            {
                "type": "bonuscheck",
                "description": "Test bonus check",
                "value": 50.00,
                "extraData": [{"name": "checkNumber", "value": "000081"}],
            },
            {"type": "Card", "description": "Test card", "value": 250.00},
        ],
        "items": [
            {
                "type": "PURCHASE",
                "quantity": 2,
                "grossPaidPrice": 300.00,
                "taxAmount": 60.00,
                "taxPercent": 25.00,
                "sku": "SBX-0081",
                "articleNumber": "SBX-A-0081",
                "articleName": "Test jacket",
                "articleGroup": "Test jackets",
                "extraData": [{"name": "size", "value": "M"}],
                "marginPercent": "25.00",
                "awardsBonus": False,
                "discounts": [{"type": "81", "description": "Test discount", "value": -100.00}],
            }
        ],
        "usedBonusChecks": [{"checkNumber": "000081"}],
        "usedPromotions": [{"promotionId": "00000000-0000-4000-8000-000000000081"}],
    }
    return_body = copy.deepcopy(purchase_body)
    return_body.update(uniqueReceiptId="V-20261124-0002", receiptNumber="0002")
    return_body.update(totalGrossPrice=-150.00, usedBonusChecks=[], usedPromotions=[])
    return_body["paymentMethods"] = [{"type": "Card", "description": "Test card", "value": -150}]
    return_body["items"] = [
        {
            "type": "RETURN",
            "quantity": -1,
            "grossPaidPrice": 150.00,
            "taxAmount": 30.00,
            "taxPercent": 25.00,
            "sku": "SBX-0081",
            "articleNumber": "SBX-A-0081",
            "articleName": "Test jacket",
        }
    ]
    for body in (purchase_body, return_body):
        answer = rig.till.post("/v1/receipts", body)
        assert answer.status_code == 202, answer.text  # accepted as Voyado shows it
        assert answer.json()["warnings"] == []
        wait_for(lambda b=body: delivered(rig, b["uniqueReceiptId"]))  # type: ignore[misc]
    if rig.destination == "engage":
        got = rig.sandbox.engage.receipts["V-20261124-0001"]
        assert got["contact"]["matchKeyType"] == "memberNumber"
        assert got["usedBonusChecks"] == [{"checkNumber": "000081"}]
        assert rig.sandbox.engage.receipts["V-20261124-0002"]["totalGrossPrice"] == -150
    elif rig.destination == "loaded":
        assert rig.sandbox.loaded.orders["V-20261124-0002"]["status"] == "Refunded"
    else:
        assert len(webhook_messages(rig, "receipt")) == 2


def money(rig: Rig) -> None:
    """The bytes the cloud received hold the amount exactly as the POS wrote it."""
    send(rig, sale("X-1", amount=BIG, tax="0.0001"))
    exact = BIG.encode()
    if rig.destination == "engage":
        (raw,) = bodies(rig, path_part="/receipts")
        assert b'"totalGrossPrice":' + exact in raw
        assert b'"grossPaidPrice":' + exact in raw
        assert b'"value":' + exact in raw
        assert b'"taxAmount":0.0001' in raw
    elif rig.destination == "loaded":
        (raw,) = bodies(rig, path_part="/orders")
        assert b'"unitPrice":' + exact in raw
        assert b'"invoiceAmount":' + exact in raw
        assert b'"unitTax":0.0001' in raw
    else:
        (raw,) = bodies(rig, path_part="/webhook/")
        assert raw.count(exact) == 3  # the total, the line and the payment


def token_refresh(rig: Rig) -> None:
    """Expiry (renewed before use, no 401), then a token revoked early (a 401, renewed once)."""
    if rig.destination == "loaded":
        send(rig, sale("K-1"))
        time.sleep(1.2)  # the token (3 s, margin 2 s) is due: renewed before the next use
        send(rig, sale("K-2"))
        assert not [r for r in rig.sandbox.requests if r.status == 401]
        rig.sandbox.loaded.revoke_tokens()
        send(rig, sale("K-3"))
        grants = [r.body.decode() for r in rig.sandbox.requests if "/oauth/token" in r.path]
        kinds = [g.split("grant_type=")[1].split("&")[0] for g in grants]
        assert kinds[0] == "client_credentials"
        assert kinds[1:] == ["refresh_token"] * (len(kinds) - 1)
        assert len(kinds) >= 3  # renewed at expiry, and after the revocation
        assert len([r for r in rig.sandbox.requests if r.status == 401]) == 1
        saved = rig.agent.vault.load_token("loaded")
        assert saved is not None
        assert rig.sandbox.loaded.refresh_tokens == {saved["refresh_token"]}  # the rest spent
        return
    lightspeed = rig.sandbox.lightspeed
    lightspeed.seed_realistic_customers(10)
    sync(rig)
    time.sleep(1.2)  # due: renewed before use
    lightspeed.seed_realistic_customers(5)
    sync(rig)
    assert not [r for r in rig.sandbox.requests if r.status == 401]
    lightspeed.expire_access_tokens()
    lightspeed.seed_realistic_customers(5)
    sync(rig)
    assert lightspeed.refresh_requests >= 3  # the first, at expiry, after the revocation
    assert len([r for r in rig.sandbox.requests if r.status == 401]) == 1
    saved = rig.agent.vault.load_token("lightspeed")
    assert saved is not None
    assert lightspeed.refresh_tokens == {saved["refresh_token"]}  # each used one revoked
    assert rig.agent.contacts.stats()["contacts"] == 20


def sync(rig: Rig) -> dict[str, Any]:
    return post(rig, "/v1/contacts/sync", {})


def too_many_requests(rig: Rig) -> None:
    """A 429 as each vendor documents it. Engage and Loaded document no Retry-After (Loaded:
    wait a minute): the destination waits 60 s unless told otherwise. Lightspeed: the window's
    own 429, X-RateLimit-Limit/-Remaining and an HTTP-date Retry-After. Webhook (ours):
    Retry-After in seconds."""
    if rig.cloud == "lightspeed":
        lightspeed_429(rig)
        return
    api = rig.destination
    retry_after = 1 if api == "webhook" else None
    if api == "loaded":
        send(rig, sale("W-0"))  # a token in hand, so the 429 meets the order
    rig.sandbox.faults.fail_next(429, count=1, api=api, retry_after=retry_after)
    post(rig, "/v1/receipts", sale("W-1"))
    (worker,) = [w for w in rig.agent.dispatchers if w.destination == api]
    wait_for(lambda: worker.state.state == "throttled" or delivered(rig, "W-1"))
    if retry_after is not None:
        wait_for(lambda: delivered(rig, "W-1"))  # on its own, after the second asked
        return
    waits = worker.snapshot()["pausedSeconds"]  # what /v1/status shows
    assert isinstance(waits, float)
    assert 55 <= waits <= 60, waits  # the documented "wait a minute"
    time.sleep(0.5)
    assert not delivered(rig, "W-1")
    hurried = rig.till.post("/v1/delivery/retry-now", {})
    assert hurried.status_code == 202, hurried.text  # a technician hurries it
    wait_for(lambda: delivered(rig, "W-1"))


def lightspeed_429(rig: Rig) -> None:
    lightspeed = rig.sandbox.lightspeed
    lightspeed.seed_realistic_customers(40)
    assert rig.agent.sync is not None
    rig.agent.sync.wake()  # 5 pages in windows of 3 requests: the sync waits as it is told
    wait_for(lambda: rig.agent.contacts.stats()["contacts"] == 40, seconds=60)
    assert [r for r in rig.sandbox.requests if r.status == 429 and r.api == "lightspeed"]
    # What such a 429 carries, asked the same way (the personal token is never rate-exempt).
    url = f"{rig.sandbox.url}/api/2.0/customers"
    headers = {"Authorization": "Bearer sandbox-lightspeed-token"}
    answers = [requests.get(url, headers=headers, timeout=5) for _ in range(4)]
    answer = next(a for a in answers if a.status_code == 429)
    assert answer.json() == {"error": "Too Many Requests", "message": "Rate limiting enforced"}
    assert answer.headers["X-RateLimit-Limit"] == "3"
    assert answer.headers["X-RateLimit-Remaining"] == "0"
    assert "X-RateLimit-Reset" not in answer.headers
    assert email.utils.parsedate_to_datetime(answer.headers["Retry-After"]).tzinfo is not None


SCENARIOS: dict[str, Callable[[Rig], None]] = {
    "purchase": purchase,
    "refund": refund,
    "amendment": amendment,
    "split-bill": split_bill,
    "member-offline": member_offline,
    "voyado-examples": voyado_examples,
    "money": money,
    "token-refresh": token_refresh,
    "429": too_many_requests,
}
SANDBOX_OPTIONS: dict[str, dict[str, Any]] = {
    "token-refresh": {"loaded_token_seconds": 3, "lightspeed_token_seconds": 3},
    "429": {"lightspeed_rate_limit": 3, "lightspeed_rate_window_seconds": 2},
}
CASES = [
    pytest.param(scenario, cloud, id=f"{scenario}-{cloud}")
    for scenario in SCENARIOS
    for cloud in CLOUDS
    if (scenario, cloud) not in NOT_APPLICABLE
]


@pytest.mark.parametrize(("scenario", "cloud"), CASES)
def test_scenario(scenario: str, cloud: str, rig_for) -> None:
    rig = rig_for(cloud, **SANDBOX_OPTIONS.get(scenario, {}))
    SCENARIOS[scenario](rig)


def test_every_scenario_runs_for_some_cloud_and_every_gap_is_documented():
    text = (ROOT / "docs" / "connectors.md").read_text("utf-8")
    table = text[text.index("### Contract scenarios") :]
    for (scenario, cloud), reason in NOT_APPLICABLE.items():
        assert f"| {scenario} | {cloud} |" in table, (scenario, cloud)
        assert reason.split(":")[0] in table, reason
    ran = {
        scenario for scenario in SCENARIOS for c in CLOUDS if (scenario, c) not in NOT_APPLICABLE
    }
    assert ran == set(SCENARIOS)
    clouds = {c for s in SCENARIOS for c in CLOUDS if (s, c) not in NOT_APPLICABLE}
    assert clouds == set(CLOUDS)
