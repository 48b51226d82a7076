"""Turns a claimed item into the message its cloud takes: read back, amended, its buyer resolved."""

from __future__ import annotations

from typing import Protocol

import msgspec

from agent.core import models
from agent.core.errors import RejectedError, UnsendableError
from agent.delivery import amend
from agent.delivery.budget import Budget
from agent.ledger import UNDECODABLE, Claimed, Ledger

MULTIPLE_MATCHES = 409


class ContactResolver(Protocol):
    """A cloud that keeps contacts and finds one by a secondary key (Engage).

    lookup_match_keys: a receipt's bare email or phone is looked up first and sent by contact
    id (one request more per receipt); off, the cloud matches the key itself.
    """

    lookup_match_keys: bool

    def find_contact_id(self, *, email: str | None, mobile_phone: str | None) -> str | None: ...


class Preparer:
    """The message for one claimed item; raises UnsendableError for an item that cannot go.

    message() runs on the worker as the item is claimed; resolved() right before its send
    (on the send's thread), as the buyer's cloud id may arrive meanwhile.
    """

    def __init__(
        self,
        destination: str,
        ledger: Ledger,
        budget: Budget,
        *,
        amends: str = "replace",
        resolver: ContactResolver | None = None,
    ) -> None:
        self._destination = destination
        self._ledger = ledger
        self._budget = budget
        self._amends = amends
        self._resolver = resolver

    def message(self, claimed: Claimed) -> models.OutboundMessage | None:
        """The message to send; None when nothing this cloud counts has changed (delivered).

        UnsendableError when the queued item cannot be read back (not JSON, not our shape, a
        key that is gone): that item's problem alone.
        """
        if claimed.item.get("kind") == UNDECODABLE:
            # Named by the ledger's record queued at that place, so its state tells the truth.
            claimed.item.update(self._ledger.record_at(claimed.lane_queue, claimed.id) or {})
            raise UnsendableError(f"the queued item cannot be read back: {claimed.item['why']}")
        try:
            message = self._ledger.message_for(claimed.item)
        except (msgspec.ValidationError, KeyError, TypeError, ValueError) as exc:
            raise UnsendableError(f"the queued item cannot be read back: {_what(exc)}") from exc
        if self._amends != "difference":
            return message
        return self._as_difference(claimed.item, message)

    def resolved(self, message: models.OutboundMessage) -> models.OutboundMessage:
        """A member registered here goes by its cloud id; a bare key as it came (or looked up)."""
        receipt = message.receipt
        if self._resolver is not None and message.contact is not None:
            if message.contact.contact_id is None:
                self._budget.spend()  # the cloud is asked first whether it knows the contact
            return message
        if self._resolver is None or receipt is None or receipt.contact is None:
            return message
        contact = receipt.contact
        if contact.local_id is not None:
            cloud_id = self._ledger.cloud_contact_id(contact.local_id)
            if cloud_id is None:  # the member registered here has not reached the cloud yet
                raise UnsendableError(
                    "its member, registered at this till, has not reached the cloud yet",
                    connector=self._destination,
                )
            return msgspec.structs.replace(message, cloud_contact_id=cloud_id)
        return self._by_match_key(message, contact, self._resolver)

    def _by_match_key(
        self,
        message: models.OutboundMessage,
        contact: models.ReceiptContact,
        resolver: ContactResolver,
    ) -> models.OutboundMessage:
        """A buyer named by a bare email or phone: as it came, or by the id the cloud has."""
        email, phone = buyer_keys(contact)
        if not resolver.lookup_match_keys or (email is None and phone is None):
            return message  # the cloud matches the key itself: one request, no member made
        # A tenant that wants contact ids: look the key up on every attempt; never create a
        # member for it (a typed phone number is not consent to join a loyalty programme).
        try:
            self._budget.spend()
            cloud_id = resolver.find_contact_id(email=email, mobile_phone=phone)
        except RejectedError as exc:
            if exc.status == MULTIPLE_MATCHES:
                return message  # several contacts share the key: let the cloud choose, as-is
            raise
        if cloud_id is None:
            return message  # unknown to the cloud: sent with its key, as the POS gave it
        return msgspec.structs.replace(message, cloud_contact_id=cloud_id)

    def _as_difference(
        self, item: dict[str, object], message: models.OutboundMessage
    ) -> models.OutboundMessage | None:
        """For an append-only cloud: a later revision goes as the difference to the last one."""
        revision = int(str(item["revision"]))
        if message.receipt is None or revision == 1:
            return message
        earlier = self._ledger.delivered_before(self._destination, str(item["key"]), revision)
        if earlier is None:
            return message  # the cloud never got an earlier revision: send this one whole
        delivered = msgspec.convert(earlier, models.Receipt, strict=False)
        diff = amend.difference(delivered, message.receipt, revision)
        if diff is None:
            return None
        contact = message.receipt.contact
        return msgspec.structs.replace(
            message,
            idempotency_key=diff.unique_receipt_id,
            receipt=msgspec.structs.replace(diff, contact=contact),
        )


def members_named(message: models.OutboundMessage) -> set[str]:
    """The window keys of the member registered at this till that a receipt names, if any."""
    contact = message.receipt.contact if message.receipt is not None else None
    if contact is None or contact.local_id is None:
        return set()
    return {member_key(contact.local_id)}


def member_key(local_id: str) -> str:
    return f"member:{local_id}"


def buyer_keys(contact: models.ReceiptContact) -> tuple[str | None, str | None]:
    """(email, mobile phone) when the receipt names its buyer by one of those."""
    if contact.match_key_type == "email":
        return contact.match_key, None
    if contact.match_key_type == "mobilePhone":
        return None, contact.match_key
    return None, None


def _what(exc: BaseException) -> str:
    """An exception raised while reading an item back, in words (no values: they may be
    personal)."""
    if isinstance(exc, msgspec.ValidationError):
        return "not in the shape of a receipt or contact"
    if isinstance(exc, KeyError):
        return "a part of it is missing"
    return "its content is not valid"
