"""Reasons in words: what a technician reads about a delivery error, never a class name."""

from __future__ import annotations

import re
import unicodedata
from http import HTTPStatus

from agent.core.errors import (
    AuthError,
    CloudError,
    ConfigError,
    KeyStoreError,
    RejectedError,
    RetryableError,
    StorageError,
    ThrottledError,
    UnreadableAnswerError,
    UnsendableError,
)

REASON_CHARS = 300
# A terminal escape sequence (CSI ... final byte, or OSC ... BEL/ST): removed whole, so no
# leftover "[31m" reaches a screen. Linear: each part is one character class.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*+[ -/]*+[@-~]?|\][^\x07\x1b]*+(?:\x07|\x1b\\)?)?")
_SPACES = re.compile(r"\s++")


def printable(text: str, limit: int = REASON_CHARS) -> str:
    """Text from outside (a cloud, a file) made safe for a terminal or a page: no escape
    sequences, no control, bidi or zero-width characters, whitespace runs as one space."""
    text = _ESCAPES.sub("", text[: limit * 4])
    kept = "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cf", "Cs"))
    return _SPACES.sub(" ", kept).strip()[:limit]


def reason_in_words(error: BaseException) -> str:
    """Why a delivery attempt failed, as a technician reads it (status page, CLI, logs).

    Built from what the error carries (status, the cloud's error id, our own words), never
    from its Python class name; cloud-supplied text is made printable.
    """
    if isinstance(error, CloudError):
        return printable(_cloud_reason(error))
    if isinstance(error, UnsendableError):
        return printable(f"cannot be sent as it is: {_own_words(error, error.connector)}")
    if isinstance(error, ConfigError):
        return printable(f"configuration problem: {'; '.join(error.problems)}")
    if isinstance(error, KeyStoreError):
        return "cannot be read back: the key that sealed it is missing or unreadable"
    if isinstance(error, StorageError):
        return printable(f"the local store failed: {error}")
    return "an unexpected error in the agent (its details are in the log)"


def _cloud_reason(error: CloudError) -> str:
    """The words for each class of cloud answer (the outcome table of docs/connectors.md)."""
    said = _own_words(error, error.connector)
    if isinstance(error, ThrottledError):
        if error.status is None:
            return f"held back by our own request budget: {said}"
        return f"the cloud asked us to wait {error.retry_after_seconds:.0f} s ({http(error)})"
    if isinstance(error, AuthError):
        return f"credentials refused ({http(error)}); check the secret"
    if isinstance(error, RejectedError):
        if error.status is None:
            return f"refused before sending: {said}"
        return f"the cloud refused it ({http(error)}){_their_id(error)}"
    if isinstance(error, UnreadableAnswerError):
        return f"the cloud's answer could not be read: {said}"
    if isinstance(error, RetryableError) and error.status is None:
        return f"no answer from the cloud: {said}"
    if error.status is None:
        return f"the cloud failed: {said}"
    return f"the cloud failed ({http(error)}){_their_id(error)}"


def http(error: CloudError) -> str:
    """'HTTP 503 Service Unavailable'."""
    try:
        phrase = HTTPStatus(error.status or 0).phrase
    except ValueError:
        phrase = ""
    return f"HTTP {error.status} {phrase}".strip()


def _their_id(error: CloudError) -> str:
    return f", its error {error.cloud_error_id}" if error.cloud_error_id else ""


def _own_words(error: BaseException, connector: str) -> str:
    """Our message without the '<connector>: ' prefix every connector message starts with."""
    text = str(error)
    prefix = f"{connector}: "
    return text[len(prefix) :] if connector and text.startswith(prefix) else text
