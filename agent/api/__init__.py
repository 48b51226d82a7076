"""The local HTTP API as a WSGI app: route, check host and token, call a handler, map errors."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

from agent.api.errors import (
    MethodNotAllowedError,
    RouteNotFoundError,
    UriTooLongError,
    error_body,
    new_error_id,
    status_and_code,
)
from agent.api.http import Request, Response, check_host, check_token, status_line
from agent.api.routes import ROUTES, Route, Services
from agent.core.errors import InvalidRequestError, StorageError
from agent.core.reasons import reason_in_words

log = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
# No route is longer: a receipt id is at most 255 characters (765 bytes of UTF-8).
MAX_PATH_CHARS = 2048
LOGGED_PATH_CHARS = 120


class App:
    """The WSGI application; one instance serves every waitress thread."""

    def __init__(
        self, services: Services, *, token: str, max_body_bytes: int, retry_after_seconds: int
    ) -> None:
        self._services = services
        self._token = token
        self._max_body_bytes = max_body_bytes
        self._retry_after = str(retry_after_seconds)
        self._routes = [(route, route.pattern) for route in ROUTES]

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ, self._max_body_bytes)
        try:
            response = self._handle(request)
        except Exception as exc:  # the edge: every failure becomes the one error shape
            response = self._error(request, exc)
        start_response(status_line(response.status), response.wsgi_headers())
        return [response.body]

    def _handle(self, request: Request) -> Response:
        if len(request.path) > MAX_PATH_CHARS:
            raise UriTooLongError(f"the path is over {MAX_PATH_CHARS} characters")
        check_host(request)
        route = self._route(request)
        if route.needs_token:
            check_token(request, self._token)
        return route.handler(request, self._services)

    def _route(self, request: Request) -> Route:
        """The route for the path as sent (an id's %2F stays inside its segment), else for
        the decoded path; the parameters are decoded (UTF-8)."""
        allowed = []
        for route, pattern in self._routes:
            params = _match(pattern, request)
            if params is None:
                continue
            if route.method == request.method:
                request.params = params
                request.route = route.template
                return route
            allowed.append(route.method)
        if allowed:
            raise MethodNotAllowedError(
                f"{request.method} is not allowed here", headers={"Allow": ", ".join(allowed)}
            )
        raise RouteNotFoundError(f"no route {request.path}")

    def _error(self, request: Request, exc: Exception) -> Response:
        error_id = new_error_id()
        status, code = status_and_code(exc)
        headers = dict(getattr(exc, "headers", {}))
        if isinstance(exc, StorageError) or status == 503:
            headers["Retry-After"] = self._retry_after
        if isinstance(exc, InvalidRequestError):
            error_id = self._quarantine(request, exc, error_id, code)
        self._log_error(request, exc, error_id, status, code)
        return Response.json(error_body(exc, code, error_id), status=status, headers=headers)

    def _log_error(
        self, request: Request, exc: Exception, error_id: str, status: int, code: str
    ) -> None:
        # The route's template, never the path itself: a path is the client's to choose (ids,
        # a hostile 40,000 characters); an unknown path only as its first characters.
        route = request.route or request.path[:LOGGED_PATH_CHARS]
        fields = {"errorId": error_id, "status": status, "code": code, "route": route}
        if status >= 500:
            log.error(
                "request failed: %s", reason_in_words(exc), extra=fields, exc_info=status == 500
            )
        else:
            log.warning("request refused: %s", code, extra=fields)

    def _quarantine(
        self, request: Request, exc: InvalidRequestError, error_id: str, code: str
    ) -> str:
        """The errorId the refused body is kept under (the first one's, for the same body
        again); a store that cannot keep it never changes the answer."""
        route = request.route or request.path[:LOGGED_PATH_CHARS]
        try:
            return self._services.intake.quarantine(error_id, route, request.body(), code, str(exc))
        except StorageError:
            log.exception("could not quarantine a refused body", extra={"errorId": error_id})
            return error_id


def _match(pattern: re.Pattern[str], request: Request) -> dict[str, str] | None:
    raw = request.segments_path
    if raw is not None and (match := pattern.match(raw)) is not None:
        return {k: unquote(v, errors="replace") for k, v in match.groupdict().items()}
    match = pattern.match(request.path)
    return None if match is None else match.groupdict()


def create_app(
    services: Services, *, token: str, max_body_bytes: int, retry_after_seconds: int
) -> App:
    return App(
        services,
        token=token,
        max_body_bytes=max_body_bytes,
        retry_after_seconds=retry_after_seconds,
    )
