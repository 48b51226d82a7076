"""The sandbox's admin routes under /_sandbox/: faults, recorded requests, reset, state."""

from __future__ import annotations

import base64
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from agent.sandbox.http import Request, Response, json_response

if TYPE_CHECKING:
    from agent.sandbox.server import SandboxCloud

SWITCHES = frozenset(
    {
        "fail_next",
        "storm_429",
        "set_offline",
        "set_latency",
        "set_error_rate",
        "reject_ids",
        "set_auth_failure",
        "malformed_next",
        "truncated_next",
        "lost_next",
        "clear",
    }
)


def handle(cloud: SandboxCloud, request: Request) -> Response:
    """Route one admin request; the admin routes are never faulted."""
    route = (request.method, request.path.rstrip("/"))
    if route == ("POST", "/_sandbox/faults"):
        return apply_faults(cloud, request.json)
    if route == ("GET", "/_sandbox/requests"):
        return json_response(200, [recorded(r) for r in list(cloud.requests)])
    if route == ("POST", "/_sandbox/reset"):
        cloud.reset()
        return json_response(200, {"status": "reset"})
    if route == ("GET", "/_sandbox/state"):
        return json_response(200, {name: api.counts() for name, api in cloud.apis().items()})
    if route == ("POST", "/_sandbox/lightspeed/seed"):
        return seed_lightspeed(cloud, request.json)
    if route == ("POST", "/_sandbox/lightspeed/forget"):
        return forget_lightspeed(cloud, request.json)
    return json_response(404, {"message": f"no admin route {request.method} {request.path}"})


def apply_faults(cloud: SandboxCloud, body: Any) -> Response:
    """Body: {"action": "<switch>", ...its keyword arguments} or a list of those."""
    steps = body if isinstance(body, list) else [body]
    for step in steps:
        if not isinstance(step, dict) or step.get("action") not in SWITCHES:
            return json_response(400, {"message": f"action must be one of {sorted(SWITCHES)}"})
        arguments = {k: v for k, v in step.items() if k != "action"}
        try:
            getattr(cloud.faults, step["action"])(**arguments)
        except (TypeError, ValueError) as exc:
            return json_response(400, {"message": f"{step['action']}: {exc}"})
    return json_response(200, {"status": "ok", "applied": len(steps)})


def seed_lightspeed(cloud: SandboxCloud, body: Any) -> Response:
    """Body: {"count": N}: N more synthetic customers (a million in about seven seconds);
    with "realistic": true, shaped like a retailer's (both numbers in local formats)."""
    count = body.get("count") if isinstance(body, dict) else None
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        return json_response(400, {"message": "count must be a non-negative integer"})
    realistic = isinstance(body, dict) and body.get("realistic") is True
    try:
        if realistic:
            cloud.lightspeed.seed_realistic_customers(count)
        else:
            cloud.lightspeed.seed_customers(count)
    except ValueError as exc:
        return json_response(400, {"message": str(exc)})
    return json_response(200, {"seeded": count, **cloud.lightspeed.counts()})


def forget_lightspeed(cloud: SandboxCloud, body: Any) -> Response:
    """Body: {"id": "<customer id>"}: removed with no tombstone, so the feed never says so."""
    customer_id = body.get("id") if isinstance(body, dict) else None
    if not isinstance(customer_id, str) or not cloud.lightspeed.forget_customer(customer_id):
        return json_response(404, {"message": "no such customer"})
    return json_response(200, {"forgotten": customer_id})


def recorded(request: Any) -> dict[str, Any]:
    """A RecordedRequest as JSON (the body base64-encoded)."""
    out = asdict(request)
    out["body"] = base64.b64encode(request.body).decode("ascii")
    return out
