"""The AgentError tree: every error this agent raises on purpose, and nothing else."""

from __future__ import annotations

import secrets


def new_error_id() -> str:
    """An id for one failure, given to whoever sees it and written in the log line for it."""
    return f"err_{secrets.token_hex(8)}"


class AgentError(Exception):
    """Base for every error this agent raises on purpose."""


class ConfigError(AgentError):
    """Settings missing or invalid. Raised at start-up only; carries every problem found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class NotProbedError(ConfigError):
    """A check that must not run here (it would spend a single-use credential): not a fault."""


class StorageError(AgentError):
    """The local store failed: disk full, size limit, locked too long, corrupt, unwritable."""


class KeyStoreError(AgentError):
    """The key file is missing when data exists, unreadable or corrupt."""


class InvalidRequestError(AgentError):
    """Input from the POS failed validation."""

    def __init__(self, message: str, *, code: str, path: str = "$") -> None:
        super().__init__(message)
        self.code = code
        self.path = path


class NotFoundError(AgentError):
    """The local store has no such record."""


class AmbiguousError(AgentError):
    """A lookup key matches several records."""


class AlreadyRunningError(AgentError):
    """Another agent holds the data directory."""


class StoppingError(AgentError):
    """Shutdown interrupted the work; release it, never drop it."""


class UnsendableError(AgentError):
    """One item cannot be prepared, encoded or read back: our side, never the cloud's.

    It is that item's problem alone: it is set aside, dead-lettered after the configured
    attempts, and never counts as an outage.
    """

    def __init__(self, message: str, *, connector: str = "") -> None:
        super().__init__(message)
        self.connector = connector


class CloudError(AgentError):
    """A cloud API call failed; carries the connector, the HTTP status and the cloud's errorId."""

    def __init__(
        self,
        message: str,
        *,
        connector: str,
        status: int | None = None,
        cloud_error_id: str | None = None,
        body_excerpt: str = "",
    ) -> None:
        super().__init__(message)
        self.connector = connector
        self.status = status
        self.cloud_error_id = cloud_error_id
        self.body_excerpt = body_excerpt


class RetryableError(CloudError):
    """Try again later: network error, timeout, 408, 500, 502, 503, 504."""


class UnreadableAnswerError(RetryableError):
    """The cloud answered, but with a body we cannot read (not JSON where JSON was due)."""


class ThrottledError(RetryableError):
    """Retryable, but not before retry_after_seconds (429, or 503 with Retry-After)."""

    def __init__(
        self,
        message: str,
        *,
        connector: str,
        retry_after_seconds: float,
        status: int | None = None,
        cloud_error_id: str | None = None,
        body_excerpt: str = "",
    ) -> None:
        super().__init__(
            message,
            connector=connector,
            status=status,
            cloud_error_id=cloud_error_id,
            body_excerpt=body_excerpt,
        )
        self.retry_after_seconds = retry_after_seconds


class DeadlineError(RetryableError):
    """The call could not be made, or answered, within its caller's deadline (a live lookup)."""


class RejectedError(CloudError):
    """This message can never succeed as it is (other 4xx): dead-letter it."""


class AuthError(CloudError):
    """No message can succeed until the credentials change (401, 403): halt, keep the queue."""
