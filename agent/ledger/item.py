"""A queue item: its one shape, and the one place it is encoded and decoded.

An item is a record (a receipt or a contact) as it waits in a destination's queue: the business
fields in clear, the personal ones sealed. The queue stores it with persist-queue's JSON
serializer (never pickle), as a JSON object; the dead letters and the replay journal keep the
same object as text. So an item queued by an earlier version, a plain JSON object with the same
keys, decodes unchanged, and one written now reads back in an earlier version.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import msgspec
import persistqueue.serializers.json as json_serializer

UNDECODABLE = "undecodable"  # the kind of an item whose stored bytes cannot be read back


class QueueItem(msgspec.Struct, omit_defaults=True):
    """One record waiting for a destination; `personal` is sealed with the record id."""

    kind: str  # "receipt", "contact", or UNDECODABLE
    key: str  # the record's id: the unique receipt id, or a contact's local id
    revision: int
    body: dict[str, Any] = {}  # the business fields, as the POS sent them
    personal: str | None = None  # the personal fields, sealed (crypto.record_aad(kind, key))
    forgotten: bool = False  # the person was erased: `personal` is gone for good
    why: str = ""  # an UNDECODABLE item's reason, in words


def encode(item: QueueItem) -> bytes:
    """An item as the queue stores it: persist-queue's JSON serializer (never pickle)."""
    data: bytes = json_serializer.dumps(_wire(item))
    return data


def as_text(item: QueueItem) -> str:
    """An item as the dead letters and the replay journal keep it: the same JSON, as text."""
    return json.dumps(_wire(item))


def _wire(item: QueueItem) -> dict[str, Any]:
    """The JSON object of an item, keys as earlier versions wrote them (`personal` always)."""
    wire: dict[str, Any] = msgspec.to_builtins(item)  # leaves out what is unset
    if item.kind == UNDECODABLE:
        return wire
    head = {"kind": item.kind, "key": item.key, "revision": item.revision}
    return head | {"body": item.body, "personal": item.personal} | wire


def decode(data: bytes | str) -> QueueItem:
    """A stored item; an item of kind UNDECODABLE (with `why`) when it is not one of ours."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return _undecodable(raw, "its bytes are not UTF-8")
    try:
        return msgspec.json.decode(text, type=QueueItem)
    except msgspec.ValidationError:
        return _undecodable(raw, "it is not a queue item")
    except (msgspec.DecodeError, RecursionError):
        return _undecodable(raw, "it is not JSON")


def _undecodable(data: bytes, why: str) -> QueueItem:
    digest = hashlib.sha256(data).hexdigest()[:16]
    return QueueItem(UNDECODABLE, f"undecodable-{digest}", 0, why=why)
