"""Response shapes of the local API and the OpenAPI 3.1 document generated from all shapes."""

from __future__ import annotations

import datetime as dt
import inspect
from typing import Annotated, Any, Literal

import msgspec

from agent.core import models


class _Out(msgspec.Struct, rename="camel", omit_defaults=False):
    pass


class ReceiptAccepted(_Out):
    status: Literal["queued", "duplicate", "amended"]
    unique_receipt_id: str
    revision: int
    destinations: list[str]
    warnings: list[str]


class ContactAccepted(_Out):
    """queued: a new member, under a local id; duplicate: this very registration again;
    existing: a member with one of these keys is known already (in the cache, registered here,
    or in the cloud) and nothing was queued. A queued registration with source "timeout": the
    cloud did not answer the duplicate check in time; delivery looks the member up before it
    creates one."""

    status: Literal["queued", "duplicate", "existing"]
    local_id: str | None
    destinations: list[str]
    contact_id: str | None = None
    source: Literal["cache", "cloud", "pending", "timeout"] | None = None


class DeliveryState(_Out):
    destination: str
    revision: int
    state: Literal["queued", "sending", "retrying", "delivered", "dead_lettered"]
    attempts: int
    next_attempt_at: str | None
    last_error_id: str | None
    cloud_error_id: str | None
    updated_at: str


class ReceiptStatus(_Out):
    unique_receipt_id: str
    revision: int
    received_at: str
    warnings: list[str]
    destinations: list[DeliveryState]


class ReceiptList(_Out):
    """A page of GET /v1/receipts: oldest first; `next` is the cursor of the next page, or null."""

    receipts: list[ReceiptStatus]
    next: str | None


class HealthAnswer(_Out):
    status: Literal["ok", "degraded", "failing"]
    version: str


class CountGross(_Out):
    count: int
    gross: str


class TodayTotals(_Out):
    """Today's receipts (the till's local date): taken, delivered and the rest still to go."""

    taken: CountGross
    delivered: CountGross
    pending: CountGross


class WaitingReceipt(_Out):
    unique_receipt_id: str
    taken_at: str
    age_seconds: float


class DestinationStatus(_Out):
    name: str
    kind: str
    state: str
    detail: str
    depth: int
    in_flight: int
    set_aside: int
    oldest_age_seconds: float | None
    last_success_at: str | None
    sent: int
    failed: int
    paused_seconds: float
    today: TodayTotals
    oldest_undelivered: WaitingReceipt | None


class ComponentStatus(_Out):
    name: str
    state: str
    detail: str


class StorageStatus(_Out):
    data_dir_bytes: int
    free_bytes: int
    limit_bytes: int


class CacheStatus(_Out):
    contacts: int
    last_sync_at: str | None
    sync_lag_seconds: float | None
    state: Literal["loading", "ready", "none"]
    first_download: CacheProgress | None


class StoreForecast(_Out):
    """At the last hour's intake rate, hours until the store is full (null: not filling, or
    not measured for five minutes yet)."""

    hours_to_full: float | None
    records_per_hour: float | None
    bytes_per_record: float | None
    room_bytes: int | None
    warn_below_hours: float


class StatusAnswer(_Out):
    status: Literal["ok", "degraded", "failing"]
    version: str
    store_id: str
    till_id: str
    destinations: list[DestinationStatus]
    counters: dict[str, int]
    components: list[ComponentStatus]
    storage: StorageStatus
    contacts: CacheStatus
    forecast: StoreForecast


class ForgetRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Who to forget: an email address, a mobile phone number, or both."""

    email: Annotated[str, msgspec.Meta(min_length=3, max_length=255)] | None = None
    mobile_phone: Annotated[str, msgspec.Meta(min_length=3, max_length=64)] | None = None


class ReplayRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Days by the receipts' own createdDate (the till's local date), both included."""

    first_day: dt.date = msgspec.field(name="from")
    last_day: dt.date = msgspec.field(name="to")
    destination: str | None = None
    dry_run: bool = msgspec.field(default=False, name="dryRun")


class ReplayAnswer(_Out):
    queued: int


class RetryNowRequest(msgspec.Struct, forbid_unknown_fields=True):
    """One destination, or none for every destination."""

    destination: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class RetryNowAnswer(_Out):
    """The destinations whose back-off was skipped."""

    destinations: list[str]


class SetAsideView(_Out):
    """An item that failed on its own and waits its own back-off; reason in words."""

    id: str
    destination: str
    kind: str
    record_key: str
    revision: int
    attempts: int
    reason: str | None
    error_id: str | None
    cloud_error_id: str | None
    next_attempt_at: str | None


class SetAsideList(_Out):
    items: list[SetAsideView]


class ReplayStepView(_Out):
    destination: str
    unique_receipt_id: str
    revision: int
    sends_as: str
    effect: Literal["replaces", "duplicate"]


class ReplayPlan(_Out):
    """A dry run: what would be queued, and what each cloud will do with it."""

    would_queue: int
    replaces: int
    duplicates: int
    steps: list[ReplayStepView]


class PurgeAnswer(_Out):
    delivered_deleted: int
    quarantine_redacted: int
    dead_letters_redacted: int
    journal_deleted: int
    cached_contacts_expired: int
    ledger_deleted: int
    resealed: int
    key_rotated: bool
    keys_destroyed: list[str]
    pages_released: int
    clock_jump_seconds: float
    checkpoint_pending: bool


class ForgetAnswer(_Out):
    records: int
    queued_items_stripped: int
    queued_items_removed: int
    quarantine_deleted: int
    dead_letters_redacted: int
    cached_contacts_removed: int
    in_flight: int


class LookedUpContact(_Out):
    contact_id: str | None = None
    local_id: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    mobile_phone: str | None = None
    member_number: str | None = None


class CacheProgress(_Out):
    """The first download from the contact source, while it lasts (contacts/sync_progress.py)."""

    running: bool
    contacts: int
    total: int | None
    pages: int
    contacts_per_second: float | None
    pages_per_second: float | None
    allowed_requests_per_second: float | None
    estimated_finish_at: str | None


class LookupAnswer(_Out):
    """source "timeout": not in the cache, not registered here, and the cloud did not answer
    within contacts.lookup_timeout_seconds; contact is null. Unknown, never "not a member".
    cacheState "loading": the first download from the source has not finished; the answer
    comes from what it has applied so far (cacheProgress)."""

    source: Literal["cache", "cloud", "pending", "timeout"]
    age_seconds: float | None
    contact: LookedUpContact | None
    cache_state: Literal["loading", "ready", "none"]
    cache_progress: CacheProgress | None


class DeadLetterView(_Out):
    id: int
    destination: str
    kind: str
    record_key: str
    revision: int
    status: int | None
    reason: str
    error_id: str
    cloud_error_id: str | None
    body_excerpt: str
    created_at: str
    redacted: bool


class Takings(_Out):
    """Receipts added up; money as exact decimal strings."""

    count: int
    gross: str
    tax: str
    tenders: dict[str, str]
    returns: CountGross


class Difference(_Out):
    """A receipt the cloud does not hold as the till took it, and what to do about it."""

    unique_receipt_id: str
    state: Literal["pending", "deadLettered", "erased", "differs", "lost", "altered"]
    taken: str
    delivered: str | None
    cloud: str | None  # what a read-back found (verify=true); lost: nothing
    dead_letter_ids: list[int]
    fix: str


class Verification(_Out):
    """verify=true: receipts read back as taken, only acknowledged (2xx), or read back lost or
    altered."""

    verified: int
    accepted: int
    not_verified: int


class DestinationReconciliation(_Out):
    destination: str
    kind: str
    status: Literal["match", "pending", "mismatch", "verified"]
    taken: Takings
    delivered: Takings
    pending: CountGross
    dead_lettered: CountGross
    differing: CountGross
    differences: list[str]
    details: list[Difference]
    cloud: Takings | None  # verify=true: what the read-backs found; else null
    verification: Verification | None


class DayReconciliation(_Out):
    date: str
    destinations: list[DestinationReconciliation]


class Reconciliation(_Out):
    """Per store-day (the till's local date of createdDate) and destination."""

    first_day: str = msgspec.field(name="from")
    last_day: str = msgspec.field(name="to")
    store_id: str
    till_id: str
    days: list[DayReconciliation]


class ReceiptFate(_Out):
    state: str
    verification: Literal["not delivered", "accepted", "verified", "lost", "altered"]
    delivered: str | None
    cloud: str | None


class QaReceipt(_Out):
    unique_receipt_id: str
    receipt_number: str
    created_date: str
    kinds: list[Literal["purchase", "refund", "split", "amended"]]
    revision: int
    currency: str
    gross: str
    tax: str
    tenders: dict[str, str]
    destinations: dict[str, ReceiptFate]


class TestsRan(_Out):
    first: str | None
    last: str | None


class DestinationName(_Out):
    name: str
    kind: str


class QaReport(_Out):
    """The go-live QA report for a vendor (no personal data)."""

    first_day: str = msgspec.field(name="from")
    last_day: str = msgspec.field(name="to")
    store_id: str
    till_id: str
    agent_version: str
    generated_at: str
    tests_ran: TestsRan
    destinations: list[DestinationName]
    receipts: list[QaReceipt]
    reconciliation: Reconciliation
    all_match: bool


class ErrorDetail(_Out):
    path: str
    message: str


class ErrorInfo(_Out):
    code: str
    message: str
    error_id: str
    details: list[ErrorDetail]


class ErrorBody(_Out):
    error: ErrorInfo


# The version of the POS contract this document describes (the /v1 routes), not the package's:
# the committed docs/openapi.json must not change with every build of the agent.
API_VERSION = "1.0.0"
VERIFY_HELP = (
    "true: read back from the clouds that allow it (a small share of each one's rate); "
    "default false"
)

ERROR_STATUSES = {
    "400": "Not JSON",
    "401": "No or wrong bearer token",
    "403": "Host is not a loopback name",
    "404": "No such route or record",
    "405": "Method not allowed on this route",
    "409": "The key matches several members",
    "413": "Body over the size limit",
    "415": "Content-Type is not JSON",
    "422": "Failed validation; the body is quarantined",
    "500": "Unexpected error (logged with the errorId)",
    "503": "The local store cannot persist right now; retry after Retry-After",
}
SHAPES = (
    models.Receipt,
    models.Contact,
    ReceiptAccepted,
    ContactAccepted,
    ReceiptStatus,
    ReceiptList,
    HealthAnswer,
    StatusAnswer,
    ForgetRequest,
    ReplayRequest,
    ReplayAnswer,
    RetryNowRequest,
    RetryNowAnswer,
    SetAsideView,
    SetAsideList,
    ReplayPlan,
    PurgeAnswer,
    ForgetAnswer,
    DeadLetterView,
    LookupAnswer,
    Reconciliation,
    QaReport,
    ErrorBody,
)


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document; docs/openapi.json is this, and a test keeps it fresh."""
    _, components = msgspec.json.schema_components(
        SHAPES, ref_template="#/components/schemas/{name}"
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Till Agent local API",
            "version": API_VERSION,
            "description": "The POS contract on loopback. See docs/api.md.",
        },
        "servers": [{"url": "http://127.0.0.1:8765"}],
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "schemas": _cleaned(components),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _cleaned(node: Any) -> Any:
    """Descriptions as inspect.cleandoc gives them, whichever way msgspec's version indents them."""
    if isinstance(node, dict):
        return {
            key: inspect.cleandoc(value)
            if key == "description" and isinstance(value, str)
            else _cleaned(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_cleaned(value) for value in node]
    return node


def _ref(name: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


def _answers(ok: dict[str, tuple[str, str]], errors: tuple[str, ...]) -> dict[str, Any]:
    answers: dict[str, Any] = {
        code: {"description": text, **_ref(shape)} for code, (text, shape) in ok.items()
    }
    for code in errors:
        answers[code] = {"description": ERROR_STATUSES[code], **_ref("ErrorBody")}
    return answers


def _query(name: str, description: str, required: bool) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": "string"},
    }


def _paths() -> dict[str, Any]:
    common = ("401", "403", "500", "503")
    body_errors = ("400", "413", "415", "422", *common)
    return {
        "/v1/receipts": {
            "get": {
                "summary": "Receipts still to deliver, or dead-lettered somewhere, oldest first",
                "parameters": [
                    {
                        "name": "state",
                        "in": "query",
                        "required": True,
                        "schema": {"enum": ["undelivered", "dead_lettered"]},
                    },
                    {
                        "name": "since",
                        "in": "query",
                        "required": False,
                        "description": "Received at or after (ISO 8601 with an offset)",
                        "schema": {"type": "string", "format": "date-time"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "description": "The `next` of the page before",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": _answers({"200": ("A page", "ReceiptList")}, ("400", *common)),
            },
            "post": {
                "summary": "Queue a finished purchase or return",
                "requestBody": {"required": True, **_ref("Receipt")},
                "responses": _answers(
                    {
                        "202": ("Queued, or amended (a new revision)", "ReceiptAccepted"),
                        "200": ("The identical receipt was already queued", "ReceiptAccepted"),
                    },
                    body_errors,
                ),
            },
        },
        "/v1/receipts/{uniqueReceiptId}": {
            "get": {
                "summary": "Delivery state of a receipt, per destination",
                "parameters": [
                    {
                        "name": "uniqueReceiptId",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    }
                ],
                "responses": _answers({"200": ("Found", "ReceiptStatus")}, ("404", *common)),
            }
        },
        "/v1/contacts": {
            "post": {
                "summary": "Register or change a member at the till",
                "requestBody": {"required": True, **_ref("Contact")},
                "responses": _answers(
                    {
                        "202": ("Queued under a local id", "ContactAccepted"),
                        "200": ("The identical change was already queued", "ContactAccepted"),
                    },
                    body_errors,
                ),
            }
        },
        "/v1/contacts/lookup": {
            "get": {
                "summary": "Find a member: the cache, members registered here, then the cloud",
                "parameters": [
                    {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
                    for name in ("mobilePhone", "email", "memberNumber")
                ],
                "responses": _answers(
                    {"200": ("Found", "LookupAnswer")}, ("400", "404", "409", *common)
                ),
            }
        },
        "/v1/health": {
            "get": {
                "summary": "Liveness; no token, no data",
                "security": [],
                "responses": {
                    "200": {"description": "Healthy or degraded", **_ref("HealthAnswer")},
                    "503": {"description": "Failing", **_ref("HealthAnswer")},
                },
            }
        },
        "/v1/status": {
            "get": {
                "summary": "Queues, destinations, counters, storage",
                "responses": _answers({"200": ("Status", "StatusAnswer")}, common),
            }
        },
        "/v1/privacy/purge": {
            "post": {
                "summary": "Run the retention purge now (counts only)",
                "responses": _answers({"200": ("Done", "PurgeAnswer")}, common),
            }
        },
        "/v1/privacy/forget": {
            "post": {
                "summary": "Erase a person from every local store",
                "requestBody": {"required": True, **_ref("ForgetRequest")},
                "responses": _answers(
                    {"200": ("Done", "ForgetAnswer")}, ("400", "413", "415", *common)
                ),
            }
        },
        "/v1/contacts/sync": {
            "post": {
                "summary": "Run the contact sync now (what the timer runs)",
                "responses": {
                    "200": {"description": "Pages, changes and ghosts seen"},
                    **_answers({}, ("400", *common)),
                },
            }
        },
        "/v1/replay": {
            "post": {
                "summary": "Send a date range of delivered receipts again (low-priority lane)",
                "requestBody": {"required": True, **_ref("ReplayRequest")},
                "responses": _answers(
                    {
                        "202": ("Queued again", "ReplayAnswer"),
                        "200": ("dryRun: what would be queued, nothing queued", "ReplayPlan"),
                    },
                    ("400", "413", "415", *common),
                ),
            }
        },
        "/v1/delivery/retry-now": {
            "post": {
                "summary": "Skip the back-off now: of one destination, or of every destination",
                "requestBody": {"required": False, **_ref("RetryNowRequest")},
                "responses": _answers(
                    {"202": ("Hurried", "RetryNowAnswer")}, ("400", "404", "413", "415", *common)
                ),
            }
        },
        "/v1/set-aside": {
            "get": {
                "summary": "Items set aside after failing on their own, with the reason in words",
                "parameters": [
                    _query("destination", "Only this destination (default: all)", False)
                ],
                "responses": _answers(
                    {"200": ("The items", "SetAsideList")}, ("400", "404", *common)
                ),
            }
        },
        "/v1/set-aside/{id}": {
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "get": {
                "summary": "One set-aside item (id: queue:number, as listed)",
                "responses": _answers({"200": ("The item", "SetAsideView")}, ("404", *common)),
            },
        },
        "/v1/set-aside/{id}/release": {
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "post": {
                "summary": "Try a set-aside item now, ahead of its back-off",
                "responses": {"202": {"description": "Released"}, **_answers({}, ("404", *common))},
            },
        },
        "/v1/set-aside/{id}/dead-letter": {
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "post": {
                "summary": "Give up on a set-aside item: it becomes a dead letter",
                "responses": {
                    "202": {"description": "Dead-lettered"},
                    **_answers({}, ("404", *common)),
                },
            },
        },
        "/v1/reconciliation": {
            "get": {
                "summary": "Per store-day and destination: taken, delivered, pending, differences",
                "parameters": [
                    _query("from", "First day (YYYY-MM-DD, the till's local date)", True),
                    _query("to", "Last day, included (default: from)", False),
                    _query("destination", "Only this destination (default: all)", False),
                    _query("verify", VERIFY_HELP, False),
                ],
                "responses": _answers({"200": ("Reconciled", "Reconciliation")}, ("400", *common)),
            }
        },
        "/v1/qa-report": {
            "get": {
                "summary": "The go-live QA report of a date range, as JSON",
                "parameters": [
                    _query("from", "First day (YYYY-MM-DD, the till's local date)", True),
                    _query("to", "Last day, included (default: from)", False),
                    _query("verify", VERIFY_HELP, False),
                ],
                "responses": _answers({"200": ("The report", "QaReport")}, ("400", *common)),
            }
        },
        "/v1/dead-letters": {
            "get": {
                "summary": "Every dead letter (ids, reasons, cloud error ids; no personal data)",
                "responses": {
                    "200": {
                        "description": "The dead letters",
                        "content": {
                            JSON_TYPE: {
                                "schema": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/DeadLetterView"},
                                }
                            }
                        },
                    },
                    **_answers({}, common),
                },
            }
        },
        "/v1/dead-letters/{id}": {
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "get": {
                "summary": "One dead letter",
                "responses": _answers({"200": ("Found", "DeadLetterView")}, ("404", *common)),
            },
            "delete": {
                "summary": "Delete a dead letter for good",
                "responses": {
                    "200": {"description": "Deleted"},
                    **_answers({}, ("404", *common)),
                },
            },
        },
        "/v1/dead-letters/{id}/retry": {
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "post": {
                "summary": "Put a dead letter back in its destination's queue",
                "responses": {
                    "202": {"description": "Queued again"},
                    **_answers({}, ("404", *common)),
                },
            },
        },
        "/": {
            "get": {
                "summary": "The technician's status page (HTML; no token, no personal data)",
                "security": [],
                "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (no token, no personal data)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/v1/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1", "content": {JSON_TYPE: {}}}},
            }
        },
    }


JSON_TYPE = "application/json"
