"""The queue item: its bytes are the ones earlier versions wrote, and theirs still decode."""

from __future__ import annotations

import json

import msgspec
import persistqueue.serializers.json as json_serializer
import pytest

from agent.core import models
from agent.ledger.item import UNDECODABLE, QueueItem, as_text, decode, encode
from tests.conftest import make_receipt


def old_form(**more: object) -> dict[str, object]:
    """A receipt item as the versions before the typed item built and queued it: a dict."""
    wire = json.dumps(make_receipt("R-1", contact=False))
    body = models.to_builtins(msgspec.json.decode(wire, type=models.Receipt))
    return {"kind": "receipt", "key": "R-1", "revision": 2, "body": body, **more}


@pytest.mark.parametrize(
    "stored",
    [
        old_form(personal=None),
        old_form(personal="v1.k1.sealed"),
        old_form(personal=None, forgotten=True),
    ],
    ids=["no-personal-fields", "sealed", "forgotten"],
)
def test_an_item_queued_by_an_earlier_version_decodes(stored):
    data = json_serializer.dumps(stored)  # the queue's own serializer wrote it then
    item = decode(data)
    assert (item.kind, item.key, item.revision) == ("receipt", "R-1", 2)
    assert item.body == stored["body"]
    assert item.personal == stored["personal"]
    assert item.forgotten is bool(stored.get("forgotten"))
    assert decode(json.dumps(stored)) == item  # as the dead letters and the journal keep it


def test_an_item_is_stored_in_the_bytes_an_earlier_version_wrote():
    stored = old_form(personal="v1.k1.sealed")
    item = decode(json_serializer.dumps(stored))
    assert encode(item) == json_serializer.dumps(stored)
    assert as_text(item) == json.dumps(stored)


def test_a_forgotten_item_keeps_saying_so():
    item = QueueItem("receipt", "R-1", 1, {"a": 1}, None, forgotten=True)
    assert json.loads(encode(item))["forgotten"] is True
    assert decode(encode(item)) == item


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xff\xfe\x00", "its bytes are not UTF-8"),
        (b"{not json", "it is not JSON"),
        (b"[1, 2]", "it is not a queue item"),
        (b'{"n": 1}', "it is not a queue item"),
        (b'{"kind": "receipt", "key": "R-1", "revision": "two"}', "it is not a queue item"),
    ],
)
def test_bytes_that_are_not_an_item_decode_as_undecodable_with_why(data, why):
    item = decode(data)
    assert (item.kind, item.why, item.revision) == (UNDECODABLE, why, 0)
    assert item.key.startswith("undecodable-")
    assert decode(as_text(item)) == item  # a dead letter keeps it as it was
