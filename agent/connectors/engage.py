"""Voyado Engage: receipts, contacts, lookup, bulk writes and the contact changes feed."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import phonenumbers
import requests

from agent import __version__
from agent.connectors.base import (
    ContactSource,
    Options,
    ReadSecret,
    Sender,
    SendResult,
    call,
    header_value,
    join,
    json_body,
    path_segment,
    rate_limit,
)
from agent.core.config import CloudKind, DestinationSettings
from agent.core.errors import AuthError, RejectedError, RetryableError, UnsendableError
from agent.core.models import (
    Contact,
    ContactPage,
    OutboundMessage,
    Receipt,
    SourceContact,
    to_builtins,
    to_wire,
)

log = logging.getLogger(__name__)

# What Engage is to the agent. Voyado asks for under 50 requests a second per API key; we keep
# to 40. Receipts are append-only (a receipt id is kept as first sent), so a changed receipt
# goes out as its difference. The same facts hold for the v2 and v3 flavours (api_version).
KIND = CloudKind(
    name="engage",
    takes=frozenset({"receipts_with_contact", "contacts"}),
    amends="difference",
    requests_per_second=40.0,
    contact_source=True,
    finds_contacts=True,
    writes_in_bulk=True,
)
BULK_MAX = 4000
CHANGE_TYPES = ("Created", "Updated", "Deleted")
CONTACT_HEADER_KEYS = ("source", "storeExternalId", "createAsUnapproved")
MIN_WINDOW_SECONDS = 60.0
MAX_WINDOW_SECONDS = 10 * 365 * 86400.0
FEED_NOT_ACTIVATED = (403, 404)  # what a tenant without the feed answers: our assumption
WINDOWS_PER_CALL = 200  # empty windows skipped in one fetch before handing back a page


class FeedUnavailableError(RejectedError):
    """The tenant has no contact changes feed: a sync run ends with these words, no retry."""


@dataclass(frozen=True)
class EngageSettings:
    """One Engage tenant: where, which API version, how phones go out, how the feed walks."""

    name: str
    base_url: str
    api_key: str = field(repr=False)
    api_version: str = "v2"
    phone_format: str = "e164"  # "e164": +46701234567; "digits": 46701234567
    default_region: str = "SE"
    contact_type: str = "Member"
    source: str = "TillAgent"
    user_agent: str = f"TillAgent/{__version__}"
    changes_start: str = "2000-01-01T00:00:00+00:00"
    changes_window_hours: float = 720.0
    changes_overlap_seconds: float = 300.0
    changes_utc_offset_minutes: int = 0
    bulk_max: int = BULK_MAX
    avoid_triggering_export: bool = False
    bulk_contacts: bool = True  # queued contact changes go out through contacts/bulk
    bulk_min: int = 3  # a shorter run of contacts goes one by one (bulk costs ≥ 2 calls)
    bulk_status_poll_seconds: float = 0.5
    bulk_status_timeout_seconds: float = 60.0
    lookup_match_keys: bool = False  # a receipt's bare email/phone looked up first (+1 call)


def parse_settings(destination: DestinationSettings, read_secret: ReadSecret) -> EngageSettings:
    """EngageSettings from [destinations.<name>] (profile applied); ConfigError lists problems."""
    opts = Options(destination, read_secret)
    settings = EngageSettings(
        name=destination.name,
        base_url=opts.base_url,
        api_key=opts.secret("api_key_secret", "engage-api-key"),
        api_version=opts.choice("api_version", "v2", ("v2", "v3")),
        phone_format=opts.choice("phone_format", "e164", ("e164", "digits")),
        default_region=opts.text("default_region", "SE"),
        contact_type=opts.text("contact_type", "Member"),
        source=opts.text("source", "TillAgent"),
        user_agent=opts.text("user_agent", f"TillAgent/{__version__}"),
        changes_start=opts.text("changes_start", "2000-01-01T00:00:00+00:00"),
        changes_window_hours=opts.number("changes_window_hours", 720.0, low=0.02, high=87600),
        changes_overlap_seconds=opts.number("changes_overlap_seconds", 300.0, high=86400),
        changes_utc_offset_minutes=int(
            opts.number("changes_utc_offset_minutes", 0, low=-900, high=900)
        ),
        bulk_max=int(opts.number("bulk_max", BULK_MAX, low=1, high=BULK_MAX)),
        avoid_triggering_export=opts.flag("avoid_triggering_export", False),
        bulk_contacts=opts.flag("bulk_contacts", True),
        bulk_min=int(opts.number("bulk_min", 3, low=1, high=BULK_MAX)),
        bulk_status_poll_seconds=opts.number("bulk_status_poll_seconds", 0.5, low=0.05, high=60),
        bulk_status_timeout_seconds=opts.number(
            "bulk_status_timeout_seconds", 60.0, low=1, high=3600
        ),
        lookup_match_keys=opts.flag("lookup_match_keys", False),
    )
    _check_start(settings.changes_start, opts)
    opts.finish()
    return settings


def _check_start(value: str, opts: Options) -> None:
    try:
        if dt.datetime.fromisoformat(value).tzinfo is None:
            raise ValueError("no offset")
    except ValueError:
        opts.problems.append(f"{opts.prefix}.changes_start: ISO 8601 with offset (got {value!r})")


class EngageConnector:
    """Maps our receipts and contacts to Engage's API and back; classifies every answer."""

    # The changes feed holds changes only: ghosts are found by fetching each contact.
    lists_everything = False

    def __init__(
        self,
        settings: EngageSettings,
        http: requests.Session,
        now: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.name = settings.name
        self.settings = settings
        self.lookup_match_keys = settings.lookup_match_keys
        self._http = http
        self._now = now or (lambda: dt.datetime.now(dt.UTC))
        self._headers = {
            "apikey": settings.api_key,
            "User-Agent": settings.user_agent,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }

    # --- plumbing -----------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return join(self.settings.base_url, f"/api/{self.settings.api_version}/{path}")

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = self._headers | kwargs.pop("headers", {})
        return call(
            self._http, method, self._url(path), connector=self.name, headers=headers, **kwargs
        )

    def _result(self, response: requests.Response, cloud_id: str | None = None) -> SendResult:
        remaining, reset = rate_limit(response)
        return SendResult(response.status_code, cloud_id, remaining, reset)

    # --- Sender -------------------------------------------------------------------------

    def probe(self) -> None:
        """GET contacts/count: cheap, cached by Engage, and needs a valid key."""
        self._call("GET", "contacts/count")

    def count_contacts(self) -> int:
        """GET contacts/count: how many contacts there are (Engage refreshes it ~every 20 min),
        for the first download's estimated finish."""
        count = json_body(self._call("GET", "contacts/count"), connector=self.name)
        if isinstance(count, bool) or not isinstance(count, int):
            raise RetryableError(f"{self.name}: contacts/count not a number", connector=self.name)
        return count

    def send(self, message: OutboundMessage) -> SendResult:
        """A receipt to POST receipts; a contact created (looked up first) or updated."""
        if message.kind == "receipt" and message.receipt is not None:
            body = self.receipt_payload(message.receipt, message.cloud_contact_id)
            return self._result(self._call("POST", "receipts", json=body))
        if message.kind == "contact" and message.contact is not None:
            return self._send_contact(message.contact)
        raise RejectedError(
            f"{self.name}: nothing to send in a {message.kind}", connector=self.name
        )

    def _send_contact(self, contact: Contact) -> SendResult:
        """Voyado's retry advice: check with a GET before a create, so a retry never duplicates."""
        cloud_id = contact.contact_id or self.find_contact_id(
            email=contact.email, mobile_phone=contact.mobile_phone
        )
        if cloud_id is not None:  # v2 updates with POST, v3 with PATCH (Voyado's v3 reference)
            segment = path_segment(cloud_id, connector=self.name)
            method = "PATCH" if self.settings.api_version == "v3" else "POST"
            response = self._call(method, f"contacts/{segment}", json=self.contact_payload(contact))
            return self._result(response, cloud_id)
        response = self._create(contact)
        return self._result(response, self._id_of(response))

    # --- contacts -----------------------------------------------------------------------

    def create_contact(self, contact: Contact) -> str:
        """POST contacts; the new (or, when a key already exists, the existing) contact's id."""
        return self._id_of(self._create(contact))

    def _create(self, contact: Contact) -> requests.Response:
        extras = {
            "source": self.settings.source,
            "storeExternalId": contact.store_external_id or "",
        }
        extras = {k: v for k, v in extras.items() if v}
        if self.settings.api_version == "v2":  # v2 reads these as headers, v3 from the query
            return self._call(
                "POST", "contacts", json=self.contact_payload(contact), headers=_headers(extras)
            )
        return self._call("POST", "contacts", json=self.contact_payload(contact), params=extras)

    def find_contact_id(self, *, email: str | None, mobile_phone: str | None) -> str | None:
        """GET contacts/id by email or phone: the id, None on 404; 409 (several) RejectedError."""
        params = {
            "email": (email or "").strip() or None,
            "mobilePhone": self.phone_out(mobile_phone),
        }
        params = {k: v for k, v in params.items() if v}
        if not params:
            return None
        try:
            response = self._call("GET", "contacts/id", params=params)
        except RejectedError as exc:
            if exc.status == 404:
                return None
            raise
        return self._id_of(response)

    def fetch_contact(self, contact_id: str) -> SourceContact | None:
        """GET contacts/{id} as a SourceContact; None when Engage no longer has it (404) or the
        id (from the changes feed) could name no contact at all."""
        try:
            segment = path_segment(contact_id, connector=self.name)
            response = self._call("GET", f"contacts/{segment}")
        except UnsendableError:
            return None
        except RejectedError as exc:
            if exc.status == 404:
                return None
            raise
        return self.source_contact(json_body(response, connector=self.name), contact_id)

    def bulk_write(self, contacts: Sequence[Contact], *, update: bool = False) -> list[str]:
        """POST (create) or PATCH (update) contacts/bulk in batches of ≤ bulk_max; batch ids."""
        params: dict[str, str] = {"contactType": self.settings.contact_type}
        if update:
            params["avoidTriggeringExport"] = str(self.settings.avoid_triggering_export).lower()
        size = self.settings.bulk_max
        batches = []
        for start in range(0, len(contacts), size):
            body = [self.bulk_row(c, update=update) for c in contacts[start : start + size]]
            response = self._call(
                "PATCH" if update else "POST", "contacts/bulk", json=body, params=params
            )
            batches.append(self._id_of(response))
        return batches

    def bulk_row(self, contact: Contact, *, update: bool) -> dict[str, Any]:
        """One contact of a bulk body; an update names its contact by `id`."""
        body = self.contact_payload(contact)
        if update:
            if not contact.contact_id:
                raise RejectedError(
                    f"{self.name}: a bulk update needs a contactId", connector=self.name
                )
            body["id"] = contact.contact_id
        return body

    def bulk_status(self, batch_id: str) -> dict[str, Any]:
        """GET contacts/bulk/status?batchId=: Engage's report on one batch, as it sends it."""
        response = self._call("GET", "contacts/bulk/status", params={"batchId": batch_id})
        body = json_body(response, connector=self.name)
        return body if isinstance(body, dict) else {"status": body}

    def _id_of(self, response: requests.Response) -> str:
        """An id from a reply that is a JSON string, an object with id/batchId, or plain text."""
        try:
            body = json.loads(response.text)
        except ValueError:
            body = response.text.strip()
        if isinstance(body, dict):
            body = body.get("id") or body.get("batchId") or body.get("contactId")
        if isinstance(body, str) and body and len(body) <= 255 and "<" not in body:
            return body
        raise RetryableError(
            f"{self.name}: no id in a {response.status_code} reply",
            connector=self.name,
            status=response.status_code,
        )

    # --- mapping ------------------------------------------------------------------------

    def phone_out(self, phone: str | None) -> str | None:
        """A phone as Engage should get it: E.164 (+46…) or the same digits without '+'."""
        if not phone:
            return None
        e164 = to_e164(phone, self.settings.default_region, connector=self.name)
        return e164 if self.settings.phone_format == "e164" else e164.lstrip("+")

    def receipt_payload(self, receipt: Receipt, cloud_contact_id: str | None) -> dict[str, Any]:
        """Our receipt in Engage's shape: money as numbers, order links as extraData."""
        body: dict[str, Any] = to_wire(engage_signs(receipt))
        body.pop("contact", None)
        extra = [
            {"name": name, "value": value}
            for name, value in (
                ("orderId", body.pop("orderId", None)),
                ("originalReceiptId", body.pop("originalReceiptId", None)),
            )
            if value
        ]
        if extra:
            body["extraData"] = [*body.get("extraData", []), *extra]
        body["contact"] = self._receipt_contact(receipt, cloud_contact_id)
        return body

    def _receipt_contact(self, receipt: Receipt, cloud_contact_id: str | None) -> dict[str, str]:
        if cloud_contact_id:
            return {"matchKey": cloud_contact_id, "matchKeyType": "contactId"}
        contact = receipt.contact
        if contact is None or contact.match_key is None or contact.match_key_type is None:
            raise RetryableError(  # a member registered at this till, not yet in Engage
                f"{self.name}: receipt {receipt.unique_receipt_id} has no resolved contact",
                connector=self.name,
            )
        key = contact.match_key
        if contact.match_key_type == "mobilePhone":
            key = self.phone_out(key) or key
        return {
            "matchKey": key,
            "matchKeyType": contact.match_key_type,
            "contactType": self.settings.contact_type,
        }

    def contact_payload(self, contact: Contact) -> dict[str, Any]:
        """Our contact in Engage's shape: empty fields left out (Engage would blank them)."""
        body = to_builtins(contact)
        for key in ("contactId", "storeExternalId"):
            body.pop(key, None)
        if contact.email:
            body["email"] = contact.email.strip()  # the till's stray spaces; intake checked it
        if contact.mobile_phone:
            body["mobilePhone"] = self.phone_out(contact.mobile_phone)
        prefs = {k: body.pop(k) for k in ("acceptsEmail", "acceptsSms") if k in body}
        if prefs:
            body["preferences"] = prefs
        body.setdefault("contactType", self.settings.contact_type)
        return body

    def source_contact(self, body: Any, contact_id: str) -> SourceContact:
        """Engage's contact (flat, or with an `attributes` object) as our SourceContact."""
        if not isinstance(body, dict):
            raise RetryableError(f"{self.name}: contact reply not an object", connector=self.name)
        nested = body.get("attributes")
        attrs: dict[str, Any] = nested if isinstance(nested, dict) else body

        def text(key: str) -> str | None:
            value = attrs.get(key)
            return str(value) if value not in (None, "") else None

        return SourceContact(
            contact_id=str(body.get("id") or contact_id),
            first_name=text("firstName"),
            last_name=text("lastName"),
            email=text("email"),
            mobile_phone=text("mobilePhone"),
            member_number=text("memberNumber"),
        )

    # --- ContactSource: the changes feed ------------------------------------------------

    def fetch_contact_changes(self, cursor: str | None, limit: int) -> ContactPage:
        """Walk time windows from the cursor; each page is ≤ limit ids of one window, fetched."""
        feed = _Feed.decode(cursor, self.settings, self._now())
        for _ in range(WINDOWS_PER_CALL):
            changes = self._window_changes(feed)
            page = changes[feed.offset : feed.offset + limit]
            if page or feed.at_now:
                break
            feed = feed.advanced(self.settings)
        else:  # only empty windows so far: hand back where the walk stands
            return ContactPage(contacts=[], cursor=feed.encode(), has_more=True)
        contacts = [self._changed(contact_id, deleted) for contact_id, deleted in page]
        if feed.offset + limit < len(changes):
            nxt, more = feed.paged(feed.offset + limit), True
        else:
            nxt, more = feed.advanced(self.settings), not feed.at_now
        return ContactPage(contacts=contacts, cursor=nxt.encode(), has_more=more)

    def _changed(self, contact_id: str, deleted: bool) -> SourceContact:
        if deleted:
            return SourceContact(contact_id=contact_id, deleted=True)
        fresh = self.fetch_contact(contact_id)
        return fresh or SourceContact(contact_id=contact_id, deleted=True)

    def _window_changes(self, feed: _Feed) -> list[tuple[str, bool]]:
        """Every id changed in the window; the window narrows while Engage's cap answers 400."""
        while True:
            try:
                return self._changes_in(feed)
            except RejectedError as exc:
                if exc.status != 400 or feed.window_seconds <= MIN_WINDOW_SECONDS:
                    raise
                feed.narrow()
                log.info("%s: changes window narrowed to %.0f s", self.name, feed.window_seconds)

    def _changes_in(self, feed: _Feed) -> list[tuple[str, bool]]:
        found: dict[str, bool] = {}
        for change_type in CHANGE_TYPES:
            params = {
                "changeType": change_type,
                "fromDate": self._engage_time(feed.start),
                "toDate": self._engage_time(feed.end, round_up=True),
            }
            response = self._changes_call(params)
            ids = json_body(response, connector=self.name)
            if not isinstance(ids, list):
                raise RetryableError(f"{self.name}: changes not a list", connector=self.name)
            for contact_id in ids:
                found[str(contact_id)] = change_type == "Deleted" or found.get(
                    str(contact_id), False
                )
        return sorted(found.items())

    def _changes_call(self, params: dict[str, str]) -> requests.Response:
        """GET contacts/changes; a 403/404 means the feed is not activated for this tenant."""
        try:
            return self._call("GET", "contacts/changes", params=params)
        except (AuthError, RejectedError) as exc:
            if exc.status not in FEED_NOT_ACTIVATED:
                raise
            raise FeedUnavailableError(
                f"{self.name}: the contact changes feed answered {exc.status}: it is not "
                "activated for this Engage tenant (Voyado activates it on request); until "
                "then contacts come from live lookups only",
                connector=self.name,
                status=exc.status,
                cloud_error_id=exc.cloud_error_id,
            ) from exc

    def _engage_time(self, instant: dt.datetime, *, round_up: bool = False) -> str:
        """Engage's date format, to the millisecond; an end rounds up so no change slips out."""
        spare = instant.microsecond % 1000
        if round_up and spare:
            instant += dt.timedelta(microseconds=1000 - spare)
        offset = dt.timezone(dt.timedelta(minutes=self.settings.changes_utc_offset_minutes))
        return instant.astimezone(offset).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@dataclass
class _Feed:
    """Where the changes feed stands: a window [start, end), an offset in it, its width."""

    start: dt.datetime
    window_seconds: float
    now: dt.datetime
    offset: int = 0

    @property
    def end(self) -> dt.datetime:
        return min(self.start + dt.timedelta(seconds=self.window_seconds), self.now)

    @property
    def at_now(self) -> bool:
        return self.end >= self.now

    def narrow(self) -> None:
        self.window_seconds = max(MIN_WINDOW_SECONDS, self.window_seconds / 2)
        self.offset = 0

    def paged(self, offset: int) -> _Feed:
        return _Feed(self.start, self.window_seconds, self.now, offset)

    def advanced(self, settings: EngageSettings) -> _Feed:
        """The next window starts `overlap` before this one ended and is twice as wide."""
        overlap = dt.timedelta(seconds=settings.changes_overlap_seconds)
        start = max(self.start, self.end - overlap) if self.at_now else self.end - overlap
        if start <= self.start and not self.at_now:
            start = self.end  # a window narrower than the overlap must still move on
        width = min(self.window_seconds * 2, MAX_WINDOW_SECONDS)
        return _Feed(start, width, self.now)

    def encode(self) -> str:
        return json.dumps(
            {"start": self.start.isoformat(), "window": self.window_seconds, "offset": self.offset}
        )

    @classmethod
    def decode(cls, cursor: str | None, settings: EngageSettings, now: dt.datetime) -> _Feed:
        width = settings.changes_window_hours * 3600
        if not cursor:
            return cls(dt.datetime.fromisoformat(settings.changes_start), width, now)
        try:
            state = json.loads(cursor)
            start = dt.datetime.fromisoformat(state["start"])
            return cls(start, float(state["window"]), now, int(state["offset"]))
        except (ValueError, KeyError, TypeError):
            log.warning("engage: unreadable changes cursor, starting from changes_start")
            return cls(dt.datetime.fromisoformat(settings.changes_start), width, now)


def engage_signs(receipt: Receipt) -> Receipt:
    """Voyado's return rules: a RETURN line has a negative quantity and a positive price and
    tax; a receipt of returns only has a negative total and negative payments."""
    items = [
        msgspec.structs.replace(
            item,
            quantity=-abs(item.quantity),
            gross_paid_price=abs(item.gross_paid_price),
            tax_amount=abs(item.tax_amount),
        )
        if item.type == "RETURN"
        else item
        for item in receipt.items
    ]
    if not all(item.type == "RETURN" for item in items):
        return msgspec.structs.replace(receipt, items=items)
    return msgspec.structs.replace(
        receipt,
        items=items,
        total_gross_price=-abs(receipt.total_gross_price),
        payment_methods=[
            msgspec.structs.replace(p, value=-abs(p.value)) for p in receipt.payment_methods
        ],
    )


def _headers(values: dict[str, str]) -> dict[str, str]:
    """The values a header can carry as they are. A store id no header can carry (Łódź, a
    leading space) is left out rather than sent mangled: the member is still created, without
    the store (v2 takes it only as a header)."""
    kept = {name: value for name, value in values.items() if header_value(value) is not None}
    dropped = sorted(values.keys() - kept.keys())
    if dropped:
        log.warning("engage: %s cannot go in a header; created without it", ", ".join(dropped))
    return kept


def to_e164(phone: str, region: str, *, connector: str = "engage") -> str:
    """A phone number in E.164 with its plus; RejectedError when it is no number at all."""
    try:
        number = phonenumbers.parse(phone, region)
    except phonenumbers.NumberParseException as exc:
        raise RejectedError(f"not a phone number ({exc.error_type})", connector=connector) from exc
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def create(
    settings: EngageSettings,
    http: requests.Session,
    now: Callable[[], dt.datetime] | None = None,
) -> EngageConnector:
    """The connector for one Engage destination."""
    return EngageConnector(settings, http, now)


# mypy proves the class keeps both contracts here (litestream's `var _ X = (*Y)(nil)`).
_AS_SENDER: type[Sender] = EngageConnector
_AS_SOURCE: type[ContactSource] = EngageConnector
