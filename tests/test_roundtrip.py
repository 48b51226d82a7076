"""Odd payloads survive the queue byte for byte (failure matrix row 38): what a connector is
handed is exactly what the till posted — Unicode, long decimals, extreme quantities."""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core import models
from tests.conftest import make_receipt

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))

texts = st.text(st.characters(codec="utf-8"), max_size=300)
money = st.decimals(
    min_value=Decimal("-999999999999999.9999"),
    max_value=Decimal("999999999999999.9999"),
    allow_nan=False,
    places=4,
).map(str)
items = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["PURCHASE", "RETURN"]),
        "sku": st.text(st.characters(min_codepoint=0x20, codec="utf-8"), min_size=1),
        "articleNumber": texts.filter(lambda t: len(t) <= 255),
        "articleName": texts,
        "quantity": st.integers(-1_000_000, 1_000_000),
        "grossPaidPrice": money,
        "taxAmount": money,
        "taxPercent": money,
    }
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(items, min_size=1, max_size=5), total=money, note=texts)
def test_what_a_connector_gets_is_what_the_till_posted(agent_till, lines, total, note):
    agent, till = agent_till
    receipt: dict[str, Any] = make_receipt(f"RT-{agent.intake.counters()['accepted']:06d}")
    receipt.update(items=lines, totalGrossPrice=total)
    receipt["paymentMethods"][0].update(value=total, description=note)
    response = till.post("/v1/receipts", receipt)
    assert response.status_code == 202, response.text
    claimed = agent.outbox.claim("loaded", timeout_seconds=0)
    assert claimed is not None
    agent.outbox.ack(claimed)
    sent = agent.ledger.message_for(claimed.item).receipt
    posted = msgspec.json.decode(msgspec.json.encode(receipt), type=models.Receipt)
    assert msgspec.json.encode(sent) == msgspec.json.encode(posted)
    assert sent is not None
    assert [i.article_name for i in sent.items] == [line["articleName"] for line in lines]
    assert [str(i.gross_paid_price) for i in sent.items] == [x["grossPaidPrice"] for x in lines]
