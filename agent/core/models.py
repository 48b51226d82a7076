"""The shapes shared across layers: the POS contract (receipt, contact) and the outbound message."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Annotated, Any, Literal, get_args

import msgspec

from agent.core.errors import InvalidRequestError

# Field limits are generous but finite, so a hostile body cannot make a row of any size.
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f]+$")]
Text = Annotated[str, msgspec.Meta(max_length=1000)]
ShortText = Annotated[str, msgspec.Meta(max_length=255)]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")]
Money = Annotated[Decimal, msgspec.Meta(description="A decimal amount; JSON number or string")]
Instant = Annotated[dt.datetime, msgspec.Meta(tz=True, description="ISO 8601 with an offset")]
# Voyado's receipt field definitions spell the key types in camelCase (developer.voyado.com,
# "Receipts - field definitions"); its SDK's enum in PascalCase. Both are accepted and every
# key type is kept, and sent, in the documented camelCase.
DocumentedMatchKeyType = Literal[
    "email",
    "socialSecurityNumber",
    "mobilePhone",
    "cardId",
    "externalId",
    "memberNumber",
    "contactId",
    "memberNumberWithCardNumberAsFallback",
]
SdkMatchKeyType = Literal[
    "Email",
    "SocialSecurityNumber",
    "MobilePhone",
    "CardId",
    "ExternalId",
    "MemberNumber",
    "ContactId",
    "MemberNumberWithCardNumberAsFallback",
]
MatchKeyType = Literal[DocumentedMatchKeyType, SdkMatchKeyType]  # one flat Literal of both
MATCH_KEY_TYPES: tuple[str, ...] = get_args(DocumentedMatchKeyType)
MATCH_KEY_SPELLINGS = {
    **{name: name for name in MATCH_KEY_TYPES},
    **{name[0].upper() + name[1:]: name for name in MATCH_KEY_TYPES},
}

ItemType = Literal["PURCHASE", "RETURN", "ADJUSTMENT"]


class _Shape(msgspec.Struct, forbid_unknown_fields=True, rename="camel", omit_defaults=True):
    """camelCase on the wire; unknown fields are an error, never silently dropped."""


class ExtraData(_Shape):
    """A name/value pair Engage stores with a receipt, a line or a payment."""

    name: ShortText
    value: Text


ExtraDataList = Annotated[list[ExtraData], msgspec.Meta(max_length=50)]


class Discount(_Shape):
    value: Money
    type: ShortText | None = None
    description: Text | None = None


class ReceiptItem(_Shape):
    type: ItemType
    sku: Id
    article_number: ShortText
    article_name: Text
    quantity: Annotated[int, msgspec.Meta(ge=-1_000_000, le=1_000_000)]
    gross_paid_price: Money
    tax_amount: Money
    tax_percent: Money
    discounts: Annotated[list[Discount], msgspec.Meta(max_length=100)] = []
    article_group: ShortText | None = None
    pack_quantity: Money | None = None
    margin_percent: Money | None = None
    awards_bonus: bool | None = None
    extra_data: ExtraDataList = []


class PaymentMethod(_Shape):
    type: ShortText
    value: Money
    description: Text | None = None
    extra_data: ExtraDataList = []


class UsedBonusCheck(_Shape):
    check_number: ShortText


class UsedPromotion(_Shape):
    promotion_id: ShortText
    coupon_id: ShortText | None = None


class ReceiptContact(_Shape):
    """Who bought: a match key the cloud knows, or the local id of a member registered here."""

    match_key: ShortText | None = None
    match_key_type: MatchKeyType | None = None
    contact_type: ShortText | None = None
    local_id: Id | None = None

    def __post_init__(self) -> None:
        if self.match_key_type is not None:  # one spelling from here on: Voyado's documented one
            self.match_key_type = MATCH_KEY_SPELLINGS[self.match_key_type]  # type: ignore[assignment]


class Receipt(_Shape):
    """A finished purchase or return, shaped like Voyado Engage's receipt."""

    unique_receipt_id: Id
    receipt_number: ShortText
    created_date: Instant
    store_external_id: ShortText
    currency: Currency
    total_gross_price: Money
    payment_methods: Annotated[list[PaymentMethod], msgspec.Meta(min_length=1, max_length=50)]
    items: Annotated[list[ReceiptItem], msgspec.Meta(min_length=1, max_length=2000)]
    contact: ReceiptContact | None = None
    order_id: Id | None = None
    original_receipt_id: Id | None = None
    exchange_rate_to_group_currency: Money | None = None
    used_bonus_checks: Annotated[list[UsedBonusCheck], msgspec.Meta(max_length=50)] = []
    used_promotions: Annotated[list[UsedPromotion], msgspec.Meta(max_length=50)] = []
    extra_data: ExtraDataList = []


class Contact(_Shape):
    """A member registered or changed at the till. contactId is set when the cloud id is known."""

    first_name: ShortText | None = None
    last_name: ShortText | None = None
    email: ShortText | None = None
    mobile_phone: ShortText | None = None
    member_number: ShortText | None = None
    street: Text | None = None
    zip_code: ShortText | None = None
    city: ShortText | None = None
    country_code: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$")] | None = None
    birth_day: dt.date | None = None
    social_security_number: ShortText | None = None
    contact_type: ShortText | None = None
    store_external_id: ShortText | None = None
    accepts_email: bool | None = None
    accepts_sms: bool | None = None
    contact_id: Id | None = None


# Fields that identify or describe a person. They are sealed (AES-GCM) before any write and
# are the fields removed when a person is forgotten. Everything else is business data.
RECEIPT_PERSONAL_FIELDS = ("contact",)
CONTACT_PERSONAL_FIELDS = (
    "firstName",
    "lastName",
    "email",
    "mobilePhone",
    "memberNumber",
    "street",
    "zipCode",
    "city",
    "birthDay",
    "socialSecurityNumber",
)


class OutboundMessage(msgspec.Struct, frozen=True, kw_only=True):
    """What dispatch hands a connector: one receipt or contact, decrypted, with its idempotency key.

    idempotency_key is fixed at intake (the uniqueReceiptId, a derived id for an amendment, or a
    contact's local id) and is the same on every retry. cloud_contact_id is set once the
    intelligent buffer has resolved the receipt's contact in the destination.
    """

    kind: Literal["receipt", "contact"]
    idempotency_key: str
    revision: int = 1
    receipt: Receipt | None = None
    contact: Contact | None = None
    local_id: str | None = None
    cloud_contact_id: str | None = None


def to_builtins(value: msgspec.Struct) -> dict[str, Any]:
    """A shape as JSON-ready builtins (camelCase keys, decimals as strings)."""
    result: dict[str, Any] = msgspec.to_builtins(value)
    return result


def to_wire(value: msgspec.Struct) -> dict[str, Any]:
    """A shape as builtins for a cloud: camelCase keys, decimals kept as Decimal (exact money;
    connectors.base.wire_json writes them as JSON numbers from their own text)."""
    result: dict[str, Any] = msgspec.to_builtins(value, builtin_types=(Decimal,))
    return result


class SourceContact(msgspec.Struct, frozen=True, kw_only=True):
    """One contact as a cloud source reports it, in our field names; deleted=True removes it."""

    contact_id: str
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    mobile_phone: str | None = None
    member_number: str | None = None
    deleted: bool = False
    # A second number a source keeps (Lightspeed's `phone` beside `mobile`): a lookup by it
    # finds the contact too; it is never sent anywhere.
    other_phone: str | None = None


class ContactPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of a contact source's delta feed and the cursor that comes after it.

    cursor is opaque to everyone but the connector that made it; has_more is False once the feed
    is drained for now (the next sync starts from cursor).
    """

    contacts: list[SourceContact]
    cursor: str | None
    has_more: bool


# Money every destination can take: finite, below 10^15 (a JSON number keeps every digit of
# the integer part exact as a double up to 2^53 ≈ 9·10^15) and at most 8 decimal places.
MONEY_DIGITS = 15
MONEY_DECIMALS = 8


def money_problem(value: Decimal) -> str | None:
    """Why an amount is no amount any destination can take, or None."""
    if not value.is_finite():
        return "must be a finite amount (not Infinity or NaN)"
    if value and value.adjusted() >= MONEY_DIGITS:  # no arithmetic: 1e999999999 overflows it
        return "must be below 10^15 in size"
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MONEY_DECIMALS:
        return f"must have at most {MONEY_DECIMALS} decimal places"
    return None


def money_fields(receipt: Receipt) -> Iterator[tuple[str, Decimal]]:
    """(JSON path, amount) of every amount in a receipt."""
    yield "$.totalGrossPrice", receipt.total_gross_price
    for n, payment in enumerate(receipt.payment_methods):
        yield f"$.paymentMethods[{n}].value", payment.value
    for n, item in enumerate(receipt.items):
        yield f"$.items[{n}].grossPaidPrice", item.gross_paid_price
        yield f"$.items[{n}].taxAmount", item.tax_amount
        yield f"$.items[{n}].taxPercent", item.tax_percent
        for m, discount in enumerate(item.discounts):
            yield f"$.items[{n}].discounts[{m}].value", discount.value


def check_receipt(receipt: Receipt) -> None:
    """Rules the types cannot say; InvalidRequestError names the field."""
    for path, amount in money_fields(receipt):
        problem = money_problem(amount)
        if problem is not None:
            raise InvalidRequestError(f"an amount {problem}", code="invalid_amount", path=path)
    contact = receipt.contact
    if contact is None:
        return
    has_key = contact.match_key is not None or contact.match_key_type is not None
    if contact.local_id is not None and has_key:
        raise InvalidRequestError(
            "give either localId or matchKey with matchKeyType, not both",
            code="invalid_receipt",
            path="$.contact",
        )
    if contact.local_id is None and (contact.match_key is None or contact.match_key_type is None):
        raise InvalidRequestError(
            "matchKey and matchKeyType are required together (or localId)",
            code="invalid_receipt",
            path="$.contact",
        )


def check_contact(contact: Contact) -> None:
    """A contact must carry something that identifies it."""
    keys = (contact.email, contact.mobile_phone, contact.member_number, contact.contact_id)
    if all(not key for key in keys):
        raise InvalidRequestError(
            "one of email, mobilePhone, memberNumber or contactId is required",
            code="invalid_contact",
        )
