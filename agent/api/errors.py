"""The HTTP edge's one error table: each AgentError type to a status, and the one error body."""

from __future__ import annotations

from typing import Any

from agent.core.errors import (
    AgentError,
    AmbiguousError,
    CloudError,
    InvalidRequestError,
    KeyStoreError,
    NotFoundError,
    RetryableError,
    StoppingError,
    StorageError,
    new_error_id,
)

__all__ = ["new_error_id"]


class HttpError(AgentError):
    """A request refused at the HTTP edge itself (auth, host, size, route, media type)."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers or {}


class BadRequestError(HttpError):
    status, code = 400, "bad_request"


class NotJsonError(HttpError):
    status, code = 400, "not_json"


class UnauthorizedError(HttpError):
    status, code = 401, "unauthorized"


class ForbiddenHostError(HttpError):
    status, code = 403, "forbidden_host"


class RouteNotFoundError(HttpError):
    status, code = 404, "not_found"


class MethodNotAllowedError(HttpError):
    status, code = 405, "method_not_allowed"


class PayloadTooLargeError(HttpError):
    status, code = 413, "payload_too_large"


class UriTooLongError(HttpError):
    status, code = 414, "uri_too_long"


class UnsupportedMediaTypeError(HttpError):
    status, code = 415, "unsupported_media_type"


STATUS_FOR: dict[type[AgentError], tuple[int, str]] = {
    InvalidRequestError: (422, "invalid_request"),
    NotFoundError: (404, "not_found"),
    AmbiguousError: (409, "ambiguous"),
    StorageError: (503, "storage_unavailable"),  # the POS goes on selling and retries later
    KeyStoreError: (503, "storage_unavailable"),
    # A cloud asked on the caller's behalf (POST /v1/contacts/sync): its refusal is not ours.
    RetryableError: (503, "cloud_unavailable"),  # 5xx, 429, the link: try again later
    CloudError: (502, "cloud_refused"),  # 401/403 (credentials), 404 and other 4xx
    StoppingError: (503, "stopping"),
}
# Errors whose words are safe and useful to show: ours, or a cloud's status and error id
# (a connector's message never carries a body's free text).
SAID_IN_WORDS = (StorageError, CloudError, StoppingError)
INTERNAL = (500, "internal_error")


def status_and_code(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and error code for an exception (500 for anything unexpected)."""
    if isinstance(exc, HttpError):
        return exc.status, exc.code
    if isinstance(exc, InvalidRequestError):
        return 422, exc.code
    for error_type, mapped in STATUS_FOR.items():
        if isinstance(exc, error_type):
            return mapped
    return INTERNAL


def error_body(exc: BaseException, code: str, error_id: str) -> dict[str, Any]:
    """{"error": {"code", "message", "errorId", "details": [{"path", "message"}]}}."""
    status, _ = status_and_code(exc)
    message = str(exc) if status < 500 or isinstance(exc, SAID_IN_WORDS) else "internal error"
    if isinstance(exc, KeyStoreError):
        message = "the local store cannot seal data right now"
    details = []
    if isinstance(exc, InvalidRequestError):
        details.append({"path": exc.path, "message": str(exc)})
    return {"error": {"code": code, "message": message, "errorId": error_id, "details": details}}
