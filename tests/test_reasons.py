"""Every failure reads as words a technician understands, never as a Python class name."""

from __future__ import annotations

import pytest
import requests

from agent.connectors.base import translate_http_errors
from agent.core.errors import (
    AuthError,
    CloudError,
    RejectedError,
    RetryableError,
    StorageError,
    UnreadableAnswerError,
)
from agent.core.reasons import reason_in_words


def raised_by_translation(exc: Exception) -> BaseException:
    """What the connectors' one translation point makes of a requests exception."""
    with pytest.raises(CloudError) as caught, translate_http_errors("loaded"):
        raise exc
    return caught.value


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (
            RetryableError("loaded: could not connect", connector="loaded"),
            "no answer from the cloud: could not connect",
        ),
        (
            RetryableError("engage: 503", connector="engage", status=503),
            "the cloud failed (HTTP 503 Service Unavailable)",
        ),
        (
            AuthError("engage: refused", connector="engage", status=401),
            "credentials refused (HTTP 401 Unauthorized); check the secret",
        ),
        (
            RejectedError("loaded: bad", connector="loaded", status=400, cloud_error_id="E-1"),
            "the cloud refused it (HTTP 400 Bad Request), its error E-1",
        ),
        (StorageError("disk full"), "the local store failed: disk full"),
        (KeyError("x"), "an unexpected error in the agent (its details are in the log)"),
    ],
)
def test_each_failure_in_words(error: BaseException, words: str) -> None:
    assert reason_in_words(error) == words


def test_an_answer_that_is_not_json_is_an_answer_not_silence() -> None:
    error = raised_by_translation(
        requests.exceptions.JSONDecodeError("Expecting value", "<html>", 0)
    )
    assert isinstance(error, UnreadableAnswerError)  # still retried like any failed exchange
    assert isinstance(error, RetryableError)
    assert reason_in_words(error) == "the cloud's answer could not be read: the answer was not JSON"
