"""R6: generated requests from our own OpenAPI document (schemathesis): no 5xx, one error shape.

Each operation is called four ways: with the POS token and requests that fit the document
(positive generation); with the token and requests that break it on purpose (negative: wrong
types, missing fields, values out of range, stray headers); with no token at all; and with the
tokens schemathesis makes up for the bearer scheme. Without the right token every operation but
the public ones must answer 401. Every answer is below 500 and every error is in the one shape
with an `errorId`. Generation is derandomized: each run sends the same requests, so a failure
found here is found again.

One known gap is counted, not failed, in the fuzz, and pinned by a strict xfail instead
(`test_a_header_waitress_refuses_is_answered_in_the_one_error_shape`): a header that waitress
itself refuses (a control character) gets waitress's plain-text 400. When the xfail passes, drop
WAITRESS_REFUSAL here too.

CI generates up to FUZZ_EXAMPLES (40) per operation and way; `make test-long` 800 (> 10,000
requests in all; the counts of the last run are in build/reliability/fuzz.json).
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import DataGenerationMethod

from agent.api.schemas import openapi_document
from agent.connectors import KINDS
from tests.conftest import ROOT, base_config

schemathesis.experimental.OPEN_API_3_1.enable()  # schemathesis 3.x reads 3.1 behind a flag
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
ERROR_KEYS = {"code", "message", "errorId", "details"}
OPERATIONS = [
    result.ok()  # type: ignore[union-attr]  # an Err would mean our own document is broken
    for result in schemathesis.from_dict(openapi_document()).get_all_operations()
]
POSITIVE, NEGATIVE = DataGenerationMethod.positive, DataGenerationMethod.negative
WAYS = {  # name: (generation, the Authorization header sent)
    "valid": (POSITIVE, "token"),
    "invalid": (NEGATIVE, "token"),
    "no-token": (POSITIVE, "none"),
    "made-up-token": (POSITIVE, "generated"),
}
WAITRESS_REFUSAL = b"Invalid header"  # waitress's own 400 page (issue 14 §3)
CALLS: Counter[str] = Counter()  # requests sent, by way and status class


def is_public(operation) -> bool:
    return operation.definition.raw.get("security") == []


def cases():
    """Every operation and way schemathesis can generate for, with the known failures marked.

    Negative generation cannot break a path parameter (it is a string either way) nor an
    operation that takes nothing at all: those get the positive ways only."""
    for operation in OPERATIONS:
        for way, (method, auth) in WAYS.items():
            takes_nothing = is_public(operation) or "{" in operation.path
            if method is NEGATIVE and takes_nothing:
                continue
            marks = []
            if auth == "generated" and not is_public(operation):
                marks.append(
                    pytest.mark.xfail(
                        strict=True,
                        reason="issue 14 (poison, in progress): a bearer token with a non-ASCII "
                        "character is answered 500 (hmac.compare_digest raises TypeError), "
                        "not 401",
                    )
                )
            yield pytest.param(operation, way, marks=marks, id=f"{operation.verbose_name}-{way}")


@pytest.fixture(scope="module")
def live_agent(tmp_path_factory) -> Iterator[object]:
    from agent import app
    from agent.core import config

    agent = app.start(config.from_mapping(base_config(tmp_path_factory.mktemp("fuzz")), {}, KINDS))
    yield agent
    agent.stop()
    results = ROOT / "build" / "reliability"
    results.mkdir(parents=True, exist_ok=True)
    figures = {"examples_per_operation_and_way": EXAMPLES, "requests": dict(sorted(CALLS.items()))}
    (results / "fuzz.json").write_text(json.dumps(figures, indent=2), encoding="utf-8")


@pytest.mark.timeout(60 + EXAMPLES // 2)  # 800 examples of a receipt take about a minute
@pytest.mark.parametrize(("operation", "way"), list(cases()))
def test_generated_requests_never_break_the_api(operation, way, live_agent):
    method, auth = WAYS[way]
    headers = {"Authorization": f"Bearer {live_agent.token}"} if auth == "token" else {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],  # no shrinking: the failing request is in the message as is
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(data_generation_method=method))
    def call(case):
        if auth == "none" and case.headers:
            case.headers.pop("Authorization", None)
        response = case.call(base_url=live_agent.url, headers=headers, timeout=10)
        CALLS[way] += 1
        CALLS[f"{way} {response.status_code // 100}xx"] += 1
        what = (case.method, case.path, case.headers, case.query, response.status_code)
        assert response.status_code < 500, (what, response.text[:500])
        if response.status_code == 400 and WAITRESS_REFUSAL in response.content:
            CALLS[f"{way} refused by waitress (known gap)"] += 1
            return
        if auth != "token" and not is_public(operation):
            assert response.status_code == 401, what
        if response.status_code >= 400:
            assert response.headers["Content-Type"].startswith("application/json"), what
            error = response.json()["error"]
            assert set(error) == ERROR_KEYS
            assert error["errorId"].startswith("err_")

    call()


@pytest.mark.xfail(
    strict=True,
    reason="issue 14 §3 (poison, in progress): a header waitress refuses itself (a control "
    "character) is answered with waitress's plain-text 400, not the one error shape; when "
    "this passes, drop WAITRESS_REFUSAL from the fuzz",
)
def test_a_header_waitress_refuses_is_answered_in_the_one_error_shape(live_agent):
    request = (
        f"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {live_agent.token}\r\nX-Odd: a\x1bb\r\nConnection: close\r\n\r\n"
    )
    host, port = live_agent.server.host, live_agent.server.port
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(request.encode("latin-1"))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"application/json" in head.lower(), head
    assert json.loads(body)["error"]["errorId"].startswith("err_")
