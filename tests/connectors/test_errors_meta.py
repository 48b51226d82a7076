"""Every exception class requests.exceptions exports is translated, none escapes as itself."""

from __future__ import annotations

import inspect

import pytest
import requests
import requests.exceptions

from agent.connectors.base import translate_http_errors
from agent.core.errors import AgentError, ConfigError, RetryableError, UnsendableError

EXPORTED = sorted(
    (
        cls
        for cls in vars(requests.exceptions).values()
        if inspect.isclass(cls)
        and issubclass(cls, BaseException)
        and cls.__module__.startswith("requests")
    ),
    key=lambda cls: cls.__name__,
)


def test_the_list_is_not_empty():
    assert len(EXPORTED) >= 20


@pytest.mark.parametrize("cls", EXPORTED, ids=lambda cls: cls.__name__)
def test_every_requests_exception_becomes_an_agent_error(cls: type[BaseException]):
    try:
        error = cls("boom")
    except TypeError:
        error = cls("boom", "{", 0)  # JSONDecodeError takes (msg, doc, pos)
    with pytest.raises(AgentError) as raised, translate_http_errors("engage"):
        raise error
    assert isinstance(raised.value, ConfigError | RetryableError | UnsendableError)
    assert raised.value.__cause__ is error


@pytest.mark.parametrize(
    "cls",
    [
        requests.exceptions.InvalidURL,
        requests.exceptions.MissingSchema,
        requests.exceptions.InvalidSchema,
    ],
)
def test_a_bad_url_is_a_config_error(cls: type[BaseException]):
    with pytest.raises(ConfigError), translate_http_errors("engage"):
        raise cls("bad")


@pytest.mark.parametrize(
    "cls",
    [
        requests.Timeout,
        requests.ConnectionError,
        requests.exceptions.ChunkedEncodingError,
        requests.exceptions.ContentDecodingError,
        requests.exceptions.ReadTimeout,
    ],
)
def test_network_trouble_is_retryable(cls: type[BaseException]):
    with pytest.raises(RetryableError) as raised, translate_http_errors("engage"):
        raise cls("down")
    assert raised.value.connector == "engage"


@pytest.mark.parametrize(
    "error",
    [
        requests.exceptions.InvalidJSONError("Out of range float values are not JSON compliant"),
        UnicodeEncodeError("latin-1", "S042-\u0141", 5, 6, "ordinal not in range(256)"),
    ],
    ids=["json", "header"],
)
def test_a_request_we_could_not_build_is_the_items_problem(error: BaseException):
    """Issue 14: this was retried as an outage for good; it is one item's problem."""
    with pytest.raises(UnsendableError) as raised, translate_http_errors("loaded"):
        raise error
    assert raised.value.connector == "loaded"


def test_an_answer_that_is_not_json_is_retryable():
    error = requests.exceptions.JSONDecodeError("Expecting value", "<html>", 0)
    with pytest.raises(RetryableError), translate_http_errors("loaded"):
        raise error


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (requests.ConnectionError("[Errno 111] Connection refused"), "connection was refused"),
        (requests.exceptions.ConnectTimeout("x"), "timed out connecting"),
        (requests.exceptions.ReadTimeout("x"), "timed out waiting"),
        (requests.exceptions.SSLError("x"), "TLS"),
        (requests.exceptions.ChunkedEncodingError("x"), "cut off"),
    ],
)
def test_network_failures_are_told_in_words(error: BaseException, words: str):
    with pytest.raises(RetryableError) as raised, translate_http_errors("engage"):
        raise error
    assert words in str(raised.value)
    assert "Error" not in str(raised.value)
