"""The route table of the local API, then its handlers: parse, one call, render."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import msgspec

from agent import __version__
from agent.api import page, schemas
from agent.api.errors import BadRequestError, NotJsonError, RouteNotFoundError
from agent.api.http import Request, Response, check_json_media_type
from agent.contacts.lookup import KINDS, Lookup
from agent.core import models
from agent.core.errors import InvalidRequestError
from agent.core.health import FAILING, Health
from agent.core.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from agent.core.metrics import Metrics
from agent.intake import LISTED_STATES, Accepted, Intake, ReceiptState
from agent.ledger import DUPLICATE, REPLACES, DeadLetter, DeadLetters, Journal, ReplayStep
from agent.ops import qareport
from agent.ops.reconcile import Reconciler
from agent.ops.status import StatusReporter
from agent.privacy import Privacy


@dataclass(frozen=True)
class Services:
    """What the handlers may call: the intake, the status reader, the health board."""

    intake: Intake
    status: StatusReporter
    health: Health
    privacy: Privacy
    dead_letters: DeadLetters
    journal: Journal
    lookup: Lookup
    metrics: Metrics
    sync_now: Callable[[], dict[str, float] | None]
    openapi: bytes
    reconciler: Reconciler
    retry_now: Callable[[str | None], list[str]] = lambda destination: []
    set_aside: SetAsideDesk | None = None


class SetAsideDesk(Protocol):
    """The dispatchers' set-aside items, for a technician (agent.app puts it together)."""

    def items(self, destination: str | None, limit: int = -1) -> list[dict[str, Any]]: ...

    def ask(self, action: str, item_id: str) -> None: ...


Handler = Callable[[Request, Services], Response]
PAGE_MAX_AGE_SECONDS = 1.0
MAX_ID_DIGITS = 18  # below 2**63


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    handler: Handler
    needs_token: bool = True

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.template) + "$")


def post_receipt(request: Request, services: Services) -> Response:
    receipt = decode(request, models.Receipt)
    models.check_receipt(receipt)
    low = urllib.parse.parse_qs(str(request.environ.get("QUERY_STRING", ""))).get("lane") == ["low"]
    accepted = services.intake.put_receipt(receipt, low_priority=low)
    return Response.json(receipt_accepted(accepted), status=_accepted_status(accepted))


def list_receipts(request: Request, services: Services) -> Response:
    state, since, after, limit = receipt_query(request)
    page, more = services.intake.list_receipts(state, since, after, limit)
    cursor = None if more is None else encode_cursor(more)
    return Response.json(schemas.ReceiptList([receipt_status(r) for r in page], cursor))


def get_receipt(request: Request, services: Services) -> Response:
    state = services.intake.receipt_state(request.params["uniqueReceiptId"])
    return Response.json(receipt_status(state))


def post_contact(request: Request, services: Services) -> Response:
    contact = decode(request, models.Contact)
    models.check_contact(contact)
    services.intake.check_contact(contact)
    found = None if contact.contact_id is not None else services.lookup.existing(contact)
    if found is not None and found.contact is not None:
        return Response.json(existing_contact(found.source, found.contact))
    # Nobody found, or the cloud did not answer in time (the safe path: delivery looks the
    # member up before creating one, so a slow cloud never makes a duplicate).
    accepted = services.intake.put_contact(contact)
    status: Literal["queued", "duplicate"] = (
        "duplicate" if accepted.status == "duplicate" else "queued"
    )
    timed_out: Literal["timeout"] | None = "timeout" if found is not None else None
    answer = schemas.ContactAccepted(
        status, accepted.key, list(accepted.destinations), source=timed_out
    )
    return Response.json(answer, status=_accepted_status(accepted))


def existing_contact(source: str, contact: dict[str, Any]) -> schemas.ContactAccepted:
    """The member the till already knows (a new registration would duplicate it)."""
    return schemas.ContactAccepted(
        "existing",
        contact.get("localId"),
        [],
        contact_id=contact.get("contactId"),
        source=source,  # type: ignore[arg-type]
    )


def get_health(request: Request, services: Services) -> Response:
    overall = services.health.overall()
    answer = schemas.HealthAnswer(overall, __version__)  # type: ignore[arg-type]
    return Response.json(answer, status=503 if overall == FAILING else 200)


def get_status(request: Request, services: Services) -> Response:
    return Response.json(services.status.report())


def get_openapi(request: Request, services: Services) -> Response:
    return Response(200, services.openapi)


def post_purge(request: Request, services: Services) -> Response:
    return Response.json(dataclasses.asdict(services.privacy.purge()))


def post_forget(request: Request, services: Services) -> Response:
    subject = decode_private(request, schemas.ForgetRequest)
    if not subject.email and not subject.mobile_phone:
        raise BadRequestError("email or mobilePhone is required")
    report = services.privacy.forget(email=subject.email, mobile_phone=subject.mobile_phone)
    return Response.json(dataclasses.asdict(report))


def post_replay(request: Request, services: Services) -> Response:
    span = decode_private(request, schemas.ReplayRequest)
    if span.last_day < span.first_day:
        raise BadRequestError("to is before from")
    days = (span.first_day.isoformat(), span.last_day.isoformat(), span.destination)
    if span.dry_run:
        return Response.json(replay_plan(services.journal.plan(*days)))
    return Response.json({"queued": services.journal.replay(*days)}, status=202)


def replay_plan(steps: list[ReplayStep]) -> schemas.ReplayPlan:
    return schemas.ReplayPlan(
        len(steps),
        sum(1 for step in steps if step.effect == REPLACES),
        sum(1 for step in steps if step.effect == DUPLICATE),
        [
            schemas.ReplayStepView(
                s.destination,
                s.key,
                s.revision,
                s.sends_as,
                s.effect,  # type: ignore[arg-type]
            )
            for s in steps
        ],
    )


def post_contacts_sync(request: Request, services: Services) -> Response:
    report = services.sync_now()
    if report is None:
        raise BadRequestError("no contact source: set [contacts] source in the config")
    return Response.json(report)


def post_retry_now(request: Request, services: Services) -> Response:
    """Skip the back-off of one destination (or every one): set-aside items are due now."""
    ask = decode_private(request, schemas.RetryNowRequest) if request.body() else None
    hurried = services.retry_now(ask.destination if ask else None)
    return Response.json(schemas.RetryNowAnswer(hurried), status=202)


def get_page(request: Request, services: Services) -> Response:
    """The status page: anyone on the till can load it, so it costs one report a second at
    most however often it is asked for, and its counts are O(1)."""
    report = services.status.report(max_age_seconds=PAGE_MAX_AGE_SECONDS)
    dead_letters = services.dead_letters.count()
    desk = services.set_aside
    set_aside = desk.items(None, page.SET_ASIDE_SHOWN + 1) if desk is not None else []
    return Response(200, page.render(report, dead_letters, set_aside), page.CONTENT_TYPE)


def get_metrics(request: Request, services: Services) -> Response:
    return Response(200, services.metrics.render(), METRICS_CONTENT_TYPE)


def lookup_contact(request: Request, services: Services) -> Response:
    kind, value = lookup_key(request)
    found = services.lookup.find(kind, value)
    age = None if found.age_seconds is None else round(found.age_seconds, 1)
    state = services.lookup.cache_state()
    return Response.json(
        {
            "source": found.source,
            "ageSeconds": age,
            "contact": found.contact,
            "cacheState": state["cacheState"],
            "cacheProgress": state["progress"],
        }
    )


def lookup_key(request: Request) -> tuple[str, str]:
    """Exactly one of mobilePhone, email, memberNumber, non-empty."""
    query = urllib.parse.parse_qs(str(request.environ.get("QUERY_STRING", "")))
    given = [(KINDS[name], values[-1]) for name, values in query.items() if name in KINDS]
    if len(given) != 1 or not given[0][1].strip() or set(query) - set(KINDS):
        raise BadRequestError("give exactly one of mobilePhone, email or memberNumber")
    return given[0]


def get_reconciliation(request: Request, services: Services) -> Response:
    query = single_values(request, required=("from",), optional=("to", "destination", "verify"))
    try:
        answer = services.reconciler.reconcile(
            query["from"],
            query.get("to", query["from"]),
            query.get("destination"),
            verify=verify_flag(query),
        )
    except InvalidRequestError as exc:
        raise BadRequestError(str(exc)) from None
    return Response.json(answer)


def get_qa_report(request: Request, services: Services) -> Response:
    query = single_values(request, required=("from",), optional=("to", "verify"))
    try:
        report = qareport.qa_report(
            services.reconciler,
            query["from"],
            query.get("to", query["from"]),
            verify=verify_flag(query),
        )
    except InvalidRequestError as exc:
        raise BadRequestError(str(exc)) from None
    return Response.json(report)


def verify_flag(query: dict[str, str]) -> bool:
    """verify=true: read back from the clouds that allow it; false (the default): do not."""
    value = query.get("verify", "false")
    if value not in ("true", "false"):
        raise BadRequestError(f"verify is true or false (got {value!r})")
    return value == "true"


def single_values(
    request: Request, *, required: tuple[str, ...], optional: tuple[str, ...]
) -> dict[str, str]:
    """The query string as one value per name; BadRequestError names what is missing or odd."""
    query = urllib.parse.parse_qs(str(request.environ.get("QUERY_STRING", "")))
    unknown = sorted(set(query) - set(required) - set(optional))
    missing = [name for name in required if name not in query]
    if unknown or missing or any(len(values) > 1 for values in query.values()):
        raise BadRequestError(
            f"give {', '.join(required)} once each (optional: {', '.join(optional)})"
        )
    return {name: values[0] for name, values in query.items()}


LIST_LIMIT, LIST_LIMIT_MAX = 100, 500


def receipt_query(request: Request) -> tuple[str, float, tuple[float, str] | None, int]:
    """state (required), since (ISO 8601 with an offset), limit, cursor: BadRequestError if off."""
    query = single_values(request, required=("state",), optional=("since", "limit", "cursor"))
    state = query["state"]
    if state not in LISTED_STATES:
        raise BadRequestError("state must be undelivered or dead_lettered")
    limit_text = query.get("limit", str(LIST_LIMIT))
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= LIST_LIMIT_MAX:
        raise BadRequestError(f"limit must be 1 to {LIST_LIMIT_MAX}")
    cursor = decode_cursor(query["cursor"]) if "cursor" in query else None
    return state, since_timestamp(query.get("since")), cursor, int(limit_text)


def since_timestamp(text: str | None) -> float:
    if text is None:
        return 0.0
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise BadRequestError("since must be ISO 8601 with an offset, e.g. 2026-11-23T00:00:00Z")
    return moment.timestamp()


def encode_cursor(position: tuple[float, str]) -> str:
    raw = json.dumps([position[0], position[1]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[float, str]:
    try:
        received_at, key = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        return float(received_at), str(key)
    except (ValueError, TypeError):
        raise BadRequestError("cursor is not one this agent gave") from None


def _desk(services: Services) -> SetAsideDesk:
    if services.set_aside is None:
        raise RouteNotFoundError("delivery is off: nothing is set aside")
    return services.set_aside


def list_set_aside(request: Request, services: Services) -> Response:
    """Items that failed on their own and wait their own back-off, with why in words."""
    query = single_values(request, required=(), optional=("destination",))
    items = _desk(services).items(query.get("destination"))
    return Response.json(schemas.SetAsideList([schemas.SetAsideView(**_item(i)) for i in items]))


def get_set_aside(request: Request, services: Services) -> Response:
    wanted = request.params["id"]
    for item in _desk(services).items(None):
        if item["id"] == wanted:
            return Response.json(schemas.SetAsideView(**_item(item)))
    raise RouteNotFoundError("no such set-aside item")


def release_set_aside(request: Request, services: Services) -> Response:
    """Try it now, ahead of its back-off (it keeps its place in line)."""
    _desk(services).ask("release", request.params["id"])
    return Response.json({"status": "released"}, status=202)


def dead_letter_set_aside(request: Request, services: Services) -> Response:
    """Give up on it: a dead letter, with "dead-lettered by a technician" as its reason."""
    _desk(services).ask("dead_letter", request.params["id"])
    return Response.json({"status": "dead_lettered"}, status=202)


def _item(item: dict[str, Any]) -> dict[str, Any]:
    at = item.get("next_attempt_at")
    return item | {"next_attempt_at": iso(at)}


def list_dead_letters(request: Request, services: Services) -> Response:
    return Response.json([dead_letter_view(d) for d in services.dead_letters.all()])


def get_dead_letter(request: Request, services: Services) -> Response:
    return Response.json(dead_letter_view(services.dead_letters.get(dead_letter_id(request))))


def retry_dead_letter(request: Request, services: Services) -> Response:
    services.dead_letters.retry(dead_letter_id(request))
    return Response.json({"status": "queued"}, status=202)


def delete_dead_letter(request: Request, services: Services) -> Response:
    services.dead_letters.purge(dead_letter_id(request))
    return Response.json({"status": "deleted"})


def dead_letter_id(request: Request) -> int:
    """A dead letter's id from the path: ASCII digits that SQLite can hold, else 404."""
    text = request.params["id"]
    if not (text.isascii() and text.isdigit() and len(text) <= MAX_ID_DIGITS):
        raise RouteNotFoundError("no such dead letter")
    return int(text)


def dead_letter_view(letter: DeadLetter) -> schemas.DeadLetterView:
    return schemas.DeadLetterView(
        letter.id,
        letter.destination,
        letter.kind,
        letter.record_key,
        letter.revision,
        letter.status,
        letter.reason,
        letter.error_id,
        letter.cloud_error_id,
        letter.body_excerpt,
        iso(letter.created_at) or "",
        letter.redacted,
    )


ROUTES = (
    Route("GET", "/v1/receipts", list_receipts),
    Route("POST", "/v1/receipts", post_receipt),
    Route("GET", "/v1/receipts/{uniqueReceiptId}", get_receipt),
    Route("POST", "/v1/contacts", post_contact),
    Route("GET", "/v1/contacts/lookup", lookup_contact),
    Route("POST", "/v1/contacts/sync", post_contacts_sync),
    Route("GET", "/v1/health", get_health, needs_token=False),
    Route("GET", "/metrics", get_metrics, needs_token=False),
    Route("GET", "/", get_page, needs_token=False),
    Route("GET", "/v1/status", get_status),
    Route("GET", "/v1/openapi.json", get_openapi),
    Route("POST", "/v1/privacy/purge", post_purge),
    Route("POST", "/v1/privacy/forget", post_forget),
    Route("POST", "/v1/replay", post_replay),
    Route("POST", "/v1/delivery/retry-now", post_retry_now),
    Route("GET", "/v1/reconciliation", get_reconciliation),
    Route("GET", "/v1/qa-report", get_qa_report),
    Route("GET", "/v1/set-aside", list_set_aside),
    Route("GET", "/v1/set-aside/{id}", get_set_aside),
    Route("POST", "/v1/set-aside/{id}/release", release_set_aside),
    Route("POST", "/v1/set-aside/{id}/dead-letter", dead_letter_set_aside),
    Route("GET", "/v1/dead-letters", list_dead_letters),
    Route("GET", "/v1/dead-letters/{id}", get_dead_letter),
    Route("POST", "/v1/dead-letters/{id}/retry", retry_dead_letter),
    Route("DELETE", "/v1/dead-letters/{id}", delete_dead_letter),
)

Shape = TypeVar("Shape", bound=msgspec.Struct)


def decode(request: Request, shape: type[Shape]) -> Shape:
    """JSON body -> shape: NotJsonError (400) if not JSON, InvalidRequestError (422) if invalid."""
    check_json_media_type(request)
    body = request.body()
    try:
        return msgspec.json.decode(body, type=shape)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `")
        raise InvalidRequestError(
            message, code="invalid_body", path=path.rstrip("`") or "$"
        ) from exc
    except msgspec.DecodeError as exc:
        raise NotJsonError(f"the body is not JSON: {exc}") from exc


def decode_private(request: Request, shape: type[Shape]) -> Shape:
    """Like decode, but a failure is a plain 400: a body naming a person is never quarantined."""
    try:
        return decode(request, shape)
    except InvalidRequestError as exc:
        raise BadRequestError(f"{exc} at {exc.path}") from None


def receipt_accepted(accepted: Accepted) -> schemas.ReceiptAccepted:
    return schemas.ReceiptAccepted(
        accepted.status,
        accepted.key,
        accepted.revision,
        list(accepted.destinations),
        list(accepted.warnings),
    )


def receipt_status(state: ReceiptState) -> schemas.ReceiptStatus:
    return schemas.ReceiptStatus(
        state.unique_receipt_id,
        state.revision,
        iso(state.received_at) or "",
        list(state.warnings),
        [
            schemas.DeliveryState(
                d.destination,
                d.revision,
                d.state,  # type: ignore[arg-type]
                d.attempts,
                iso(d.next_attempt_at),
                d.last_error_id,
                d.cloud_error_id,
                iso(d.updated_at) or "",
            )
            for d in state.deliveries
        ],
    )


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="milliseconds")


def _accepted_status(accepted: Accepted) -> int:
    return 200 if accepted.status == "duplicate" else 202
