"""Simulated Voyado Engage (v2, with v3 aliases): receipts, contacts, lookup, bulk, changes feed."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from agent.sandbox.http import Request, Response, json_response

# Voyado's receipt field definitions' spelling (camelCase) only: the strictest reading.
MATCH_KEY_TYPES = frozenset(
    {
        "email",
        "socialSecurityNumber",
        "mobilePhone",
        "cardId",
        "externalId",
        "memberNumber",
        "contactId",
        "memberNumberWithCardNumberAsFallback",
    }
)
RECEIPT_FIELDS = (
    "contact",
    "uniqueReceiptId",
    "receiptNumber",
    "createdDate",
    "storeExternalId",
    "currency",
    "totalGrossPrice",
    "paymentMethods",
    "items",
)
ITEM_FIELDS = (
    "type",
    "sku",
    "quantity",
    "grossPaidPrice",
    "taxAmount",
    "taxPercent",
    "articleNumber",
    "articleName",
)
ITEM_TYPES = frozenset({"PURCHASE", "RETURN", "ADJUSTMENT"})
BULK_MAX = 4000
PHONE = re.compile(r"^\+?[0-9]{6,15}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def error(status: int, code: str, message: str) -> Response:
    """Engage's error body as the sandbox writes it: {"errorCode", "message"}."""
    return json_response(status, {"errorCode": code, "message": message})


@dataclass(frozen=True)
class Change:
    """One entry of the contact changes feed."""

    contact_id: str
    change_type: str  # Created | Updated | Deleted
    at: float


class EngageApi:
    """Engage's state (receipts, contacts, changes, batches) and its routes."""

    def __init__(
        self,
        api_key: str,
        now: Callable[[], float],
        rate_per_second: int = 200,
        changes_cap: int = 250_000,
        bulk_seconds: float = 0.2,
    ) -> None:
        self.api_key = api_key
        self.bulk_seconds = bulk_seconds  # how long a bulk batch stays InProgress
        self.changes_enabled = True  # False: a tenant Voyado has not activated the feed for
        self.bulk_words = ("InProgress", "Completed")  # undocumented by Voyado: a knob
        self.rate_per_second = rate_per_second
        self.changes_cap = changes_cap
        self._now = now
        self._lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        """No receipts, contacts, changes or batches."""
        with self._lock:
            self.receipts: dict[str, Any] = {}
            self.duplicate_receipts = 0
            self.contacts: dict[str, dict[str, Any]] = {}
            self.changes: list[Change] = []
            self.batches: dict[str, dict[str, Any]] = {}
            self._batch_rows: dict[str, tuple[str, list[dict[str, Any]], float]] = {}
            self._window: tuple[int, int] = (0, 0)
            # Addresses a tenant's own rules refuse although they are well formed (a blocked
            # domain, say): the rows a batch refuses that no intake check could foresee.
            self.refused_emails: set[str] = set()

    # --- the Python API tests and technicians use --------------------------------------

    def add_contact(self, contact_id: str | None = None, **fields: Any) -> str:
        """Store a contact (no duplicate check) and record a Created change; returns its id."""
        with self._lock:
            new_id = contact_id or str(uuid.uuid4())
            self.contacts[new_id] = {**fields, "id": new_id}
            self._change(new_id, "Created")
            return new_id

    def update_contact(self, contact_id: str, **fields: Any) -> None:
        """Change fields of a stored contact and record an Updated change."""
        with self._lock:
            self.contacts[contact_id].update(fields)
            self._change(contact_id, "Updated")

    def delete_contact(self, contact_id: str) -> None:
        """Forget a contact and record a Deleted change."""
        with self._lock:
            self.contacts.pop(contact_id, None)
            self._change(contact_id, "Deleted")

    def counts(self) -> dict[str, int]:
        """How much state there is, for the admin route."""
        with self._lock:
            return {
                "receipts": len(self.receipts),
                "duplicateReceipts": self.duplicate_receipts,
                "contacts": len(self.contacts),
                "changes": len(self.changes),
                "batches": len(self.batches),
            }

    def _change(self, contact_id: str, change_type: str) -> None:
        self.changes.append(Change(contact_id, change_type, self._now()))

    # --- HTTP -------------------------------------------------------------------------

    @staticmethod
    def error(status: int, message: str) -> Response:
        """The error body a fault answers with."""
        return error(status, "SandboxFault", message)

    @staticmethod
    def item_id(request: Request) -> str | None:
        """The id reject_ids matches: a receipt's uniqueReceiptId."""
        body = request.json
        return str(body.get("uniqueReceiptId")) if isinstance(body, dict) else None

    def handle(self, request: Request) -> Response:
        """Auth, header rules, rate limit, then the route."""
        problem = self._check_headers(request) or self._rate_limit()
        if problem is not None:
            return problem
        route = re.sub(r"^/api/v[23]/", "", request.routed_path).rstrip("/")
        with self._lock:
            self._settle_batches()
            return self._route(request, route)

    def _check_headers(self, request: Request) -> Response | None:
        if request.header("apikey") != self.api_key:
            return error(401, "Unauthorized", "missing or wrong apikey header")
        if not request.header("user-agent"):
            return error(400, "MissingUserAgent", "the User-Agent header is required")
        content_type = request.header("content-type").split(";")[0].strip().lower()
        if content_type != "application/json":  # Voyado: on every request, or 500
            return error(500, "InternalServerError", "An error has occurred")
        return None

    def _rate_limit(self) -> Response | None:
        second = int(self._now())
        with self._lock:
            start, used = self._window
            self._window = (second, used + 1) if start == second else (second, 1)
            if self._window[1] > self.rate_per_second:
                return error(429, "TooManyRequests", "rate limit exceeded for this api key")
        return None

    def _route(self, request: Request, route: str) -> Response:
        fixed: dict[tuple[str, str], Callable[[Request], Response]] = {
            ("POST", "receipts"): self._post_receipt,
            ("POST", "contacts"): self._create_contact,
            ("GET", "contacts/count"): lambda r: json_response(200, len(self.contacts)),
            ("GET", "contacts/id"): self._lookup,
            ("GET", "contacts/changes"): self._changes,
            ("POST", "contacts/bulk"): self._bulk,
            ("PATCH", "contacts/bulk"): self._bulk,
            ("GET", "contacts/bulk/status"): self._bulk_status,
        }
        handler = fixed.get((request.method, route))
        if handler is not None:
            return handler(request)
        match = re.fullmatch(r"contacts/([^/]+)", route)
        if match is not None:
            return self._contact(request, unquote(match.group(1)))
        return error(404, "NotFound", f"no route {request.method} {request.path}")

    # --- receipts ---------------------------------------------------------------------

    def _post_receipt(self, request: Request) -> Response:
        body = request.json
        problem = receipt_problem(body)
        if problem is not None:
            return error(400, "InvalidReceipt", problem)
        key = str(body["uniqueReceiptId"])
        if key in self.receipts:
            self.duplicate_receipts += 1
            return json_response(202, {"status": "duplicate", "uniqueReceiptId": key})
        self.receipts[key] = body
        return json_response(202, {"status": "accepted", "uniqueReceiptId": key})

    # --- contacts ---------------------------------------------------------------------

    def _create_contact(self, request: Request) -> Response:
        body = request.json
        if not isinstance(body, dict):
            return error(400, "InvalidContact", "the body must be a JSON object")
        problem = contact_fields_problem(body) or self._refused(body)
        if problem is not None:
            return error(400, problem, "the contact has an invalid email or phone")
        existing = self._matching(body.get("email"), body.get("mobilePhone"))
        if existing:
            return json_response(200, {**self.contacts[existing[0]]})
        new_id = self.add_contact(**body)
        return json_response(201, self.contacts[new_id])

    def _refused(self, row: dict[str, Any]) -> str | None:
        return "InvalidEmailAddress" if row.get("email") in self.refused_emails else None

    def _contact(self, request: Request, contact_id: str) -> Response:
        contact = self.contacts.get(contact_id)
        if contact is None:
            return error(404, "ContactNotFound", f"no contact {contact_id}")
        if request.method == "GET":
            return json_response(200, contact)
        if request.method == "DELETE":
            self.delete_contact(contact_id)
            return Response(204)
        update = "PATCH" if request.path.startswith("/api/v3/") else "POST"  # v2 POSTs, v3 PATCHes
        if request.method != update:
            return error(405, "MethodNotAllowed", f"{update} updates a contact in this version")
        if isinstance(request.json, dict):
            self.update_contact(contact_id, **{**request.json, "id": contact_id})
            return json_response(200, self.contacts[contact_id])
        return error(400, "InvalidRequest", "update needs a JSON object")

    def _matching(self, email: Any, phone: Any) -> list[str]:
        return [
            cid
            for cid, c in self.contacts.items()
            if (email and c.get("email") == email) or (phone and c.get("mobilePhone") == phone)
        ]

    def _lookup(self, request: Request) -> Response:
        email, phone = request.query.get("email"), request.query.get("mobilePhone")
        if not email and not phone:
            return error(400, "InvalidSearchQuery", "give email or mobilePhone")
        if email and not EMAIL.match(email):
            return error(400, "InvalidEmailAddress", "not an email address")
        if phone and not PHONE.match(phone):
            return error(400, "InvalidPhoneNumber", "not a phone number")
        found = self._matching(email, phone)
        if not found:
            return error(404, "ContactNotFound", "no contact matches")
        if len(found) > 1:
            return error(409, "MultipleMatches", f"{len(found)} contacts match")
        return json_response(200, found[0])

    # --- bulk ---------------------------------------------------------------------------

    def _bulk(self, request: Request) -> Response:
        rows = request.json
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            return error(400, "InvalidRequest", "the body must be a JSON array of contacts")
        if len(rows) > BULK_MAX:
            return error(400, "TooManyContacts", f"at most {BULK_MAX} contacts per request")
        batch_id = str(uuid.uuid4())
        self.batches[batch_id] = {
            "batchId": batch_id,
            "status": self.bulk_words[0],
            "contactType": request.query.get("contactType", "Member"),
            "total": len(rows),
        }
        self._batch_rows[batch_id] = (request.method, rows, self._now() + self.bulk_seconds)
        self._settle_batches()
        return json_response(202, batch_id)

    def settle_batches(self) -> None:
        """Apply the bulk batches whose time has come (any request does it first, too)."""
        with self._lock:
            self._settle_batches()

    def _settle_batches(self) -> None:
        """Batches whose time has come are applied, and their report names each failed row."""
        due = [b for b, (_, _, at) in self._batch_rows.items() if at <= self._now()]
        for batch_id in due:
            method, rows, _ = self._batch_rows.pop(batch_id)
            problems = [self._bulk_row(method, row) for row in rows]
            failures = [
                {"index": index, "errorCode": code} for index, code in enumerate(problems) if code
            ]
            self.batches[batch_id].update(
                status=self.bulk_words[1],
                succeeded=len(rows) - len(failures),
                failed=len(failures),
                failures=failures,
            )

    def _bulk_row(self, method: str, row: dict[str, Any]) -> str | None:
        """Apply one row of a batch; the row's error code, or None when it went in."""
        problem = contact_fields_problem(row) or self._refused(row)
        if problem is not None:
            return problem
        if method == "POST":
            if not self._matching(row.get("email"), row.get("mobilePhone")):
                self.add_contact(**row)
            return None
        contact_id = str(row.get("id", ""))
        if contact_id not in self.contacts:
            return "ContactNotFound"
        self.update_contact(contact_id, **row)
        return None

    def _bulk_status(self, request: Request) -> Response:
        batch = self.batches.get(request.query.get("batchId", ""))
        if batch is None:
            return error(404, "BatchNotFound", "no such batchId")
        return json_response(200, batch)

    # --- changes feed -----------------------------------------------------------------

    def _changes(self, request: Request) -> Response:
        if not self.changes_enabled:  # the status Engage uses is undocumented: our assumption
            return error(403, "FeatureNotActivated", "the contact changes API is not activated")
        change_type = request.query.get("changeType", "")
        if change_type not in ("Created", "Updated", "Deleted"):
            return error(400, "InvalidChangeType", "changeType is Created, Updated or Deleted")
        try:
            start = parse_date(request.query["fromDate"])
            end = parse_date(request.query["toDate"]) if "toDate" in request.query else None
        except (KeyError, ValueError):
            return error(400, "InvalidDate", "fromDate (and toDate) must be dates")
        end = self._now() if end is None else end
        ids = changed_ids(self.changes, change_type, start, end)
        if len(ids) > self.changes_cap:
            return error(400, "TooManyChanges", f"more than {self.changes_cap} ids: narrow it")
        return json_response(200, ids)


def changed_ids(changes: list[Change], change_type: str, start: float, end: float) -> list[str]:
    """Distinct ids of changes of change_type with start <= at < end, first change first."""
    seen: dict[str, None] = {}
    for change in changes:
        if change.change_type == change_type and start <= change.at < end:
            seen.setdefault(change.contact_id, None)
    return list(seen)


def parse_date(text: str) -> float:
    """A fromDate/toDate: "2023-05-04 11:05:00.000" or ISO 8601; no offset means UTC."""
    moment = datetime.fromisoformat(text.strip().replace(" ", "T", 1))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def contact_fields_problem(row: dict[str, Any]) -> str | None:
    """Engage's error name for a contact whose email or mobile phone is malformed, or None."""
    email, phone = row.get("email"), row.get("mobilePhone")
    if email and not EMAIL.match(str(email)):
        return "InvalidEmailAddress"
    if phone and not PHONE.match(str(phone)):
        return "InvalidPhoneNumber"
    return None


def receipt_problem(body: Any) -> str | None:
    """What is wrong with a receipt, or None."""
    if not isinstance(body, dict):
        return "the receipt must be a JSON object"
    missing = [name for name in RECEIPT_FIELDS if body.get(name) in (None, "")]
    if missing:
        return f"missing required field(s): {', '.join(missing)}"
    return (
        contact_problem(body["contact"])
        or list_problem(body, "paymentMethods")
        or list_problem(body, "items")
        or next(filter(None, (item_problem(i, it) for i, it in enumerate(body["items"]))), None)
        or return_total_problem(body)
    )


def return_total_problem(body: dict[str, Any]) -> str | None:
    """Voyado's field definitions: a receipt of type RETURN has a negative totalGrossPrice."""
    if (
        all(item["type"] == "RETURN" for item in body["items"])
        and number(body["totalGrossPrice"]) >= 0
    ):
        return "totalGrossPrice must be negative for a RETURN receipt"
    return None


def number(value: Any) -> float:
    """A JSON number (or numeric string) as a float, for a sign check; NaN when it is neither."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def contact_problem(contact: Any) -> str | None:
    """What is wrong with a receipt's contact, or None."""
    if not isinstance(contact, dict) or not contact.get("matchKey"):
        return "contact.matchKey is required"
    if contact.get("matchKeyType") not in MATCH_KEY_TYPES:
        return f"contact.matchKeyType must be one of {', '.join(sorted(MATCH_KEY_TYPES))}"
    return None


def list_problem(body: dict[str, Any], name: str) -> str | None:
    """A problem if body[name] is not a non-empty list."""
    value = body[name]
    if not isinstance(value, list) or not value:
        return f"{name} must be a non-empty array"
    return None


def item_problem(index: int, item: Any) -> str | None:
    """What is wrong with items[index], or None."""
    if not isinstance(item, dict):
        return f"items[{index}] must be an object"
    missing = [name for name in ITEM_FIELDS if item.get(name) in (None, "")]
    if missing:
        return f"items[{index}]: missing required field(s): {', '.join(missing)}"
    if item["type"] not in ITEM_TYPES:
        return f"items[{index}].type must be PURCHASE, RETURN or ADJUSTMENT"
    if isinstance(item["quantity"], bool) or not isinstance(item["quantity"], int):
        return f"items[{index}].quantity must be an integer"
    if item["type"] == "RETURN" and (item["quantity"] >= 0 or number(item["grossPaidPrice"]) < 0):
        return f"items[{index}]: a RETURN has a negative quantity and a positive price"
    return None
