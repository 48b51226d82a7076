"""Generated requests from our own OpenAPI document (schemathesis): no 5xx, one error shape.

CI sends ~60 requests per operation; `make test-long` sends 800 per operation (> 10,000).
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from agent.api.schemas import openapi_document
from tests.conftest import base_config

schemathesis.experimental.OPEN_API_3_1.enable()  # schemathesis 3.x reads 3.1 behind a flag
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
ERROR_KEYS = {"code", "message", "errorId", "details"}
OPERATIONS = [
    result.ok()  # type: ignore[union-attr]  # an Err would mean our own document is broken
    for result in schemathesis.from_dict(openapi_document()).get_all_operations()
]


@pytest.fixture(scope="module")
def live_agent(tmp_path_factory):
    from agent import app, config

    agent = app.start(config.from_mapping(base_config(tmp_path_factory.mktemp("fuzz")), {}))
    yield agent
    agent.stop()


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.verbose_name)
def test_generated_requests_never_break_the_api(operation, live_agent):
    headers = {"Authorization": f"Bearer {live_agent.token}"}

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def call(case):
        response = case.call(base_url=live_agent.url, headers=headers, timeout=10)
        assert response.status_code < 500, (case.method, case.path, response.text[:500])
        if response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) == ERROR_KEYS
            assert error["errorId"].startswith("err_")

    call()
