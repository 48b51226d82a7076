"""Every fault switch, seen by a real client over loopback."""

from __future__ import annotations

import email.utils
import threading
import time
from typing import Any

import pytest
import requests

from agent.sandbox import SandboxCloud
from tests.sandbox.test_engage import HEADERS, receipt

COUNT = "/api/v2/contacts/count"


def get(http, cloud: SandboxCloud, path: str = COUNT) -> requests.Response:
    return http.get(f"{cloud.url}{path}", headers=HEADERS, timeout=5)


def test_fail_next_answers_the_status_count_times_then_recovers(sandbox: SandboxCloud, http):
    sandbox.faults.fail_next(503, count=2, api="engage")
    assert [get(http, sandbox).status_code for _ in range(3)] == [503, 503, 200]
    assert [r.status for r in sandbox.requests] == [503, 503, 200]


def test_fail_next_for_one_api_leaves_the_others_alone(sandbox: SandboxCloud, http):
    sandbox.faults.fail_next(500, api="loaded")
    assert get(http, sandbox).status_code == 200
    token = http.post(f"{sandbox.url}/oauth/token", data={"grant_type": "x"})
    assert token.status_code == 500
    assert "errorId" in token.json()


@pytest.mark.parametrize("form", ["seconds", "date", "absent"])
def test_storm_429_in_each_retry_after_form(form: Any, sandbox: SandboxCloud, http):
    sandbox.faults.storm_429(3, api="engage", retry_after_form=form, retry_after_seconds=30)
    answers = [get(http, sandbox) for _ in range(4)]
    assert [a.status_code for a in answers] == [429, 429, 429, 200]
    header = answers[0].headers.get("Retry-After")
    if form == "seconds":
        assert header == "30"
    elif form == "date":
        assert header is not None
        ahead = email.utils.parsedate_to_datetime(header).timestamp() - time.time()
        assert 25 <= ahead <= 31
    else:
        assert header is None


def test_fail_next_with_a_retry_after_date(sandbox: SandboxCloud, http):
    sandbox.faults.fail_next(503, retry_after="date", retry_after_seconds=120)
    header = get(http, sandbox).headers["Retry-After"]
    assert email.utils.parsedate_to_datetime(header).timestamp() > time.time() + 100


def test_offline_refused_refuses_connections_until_back(sandbox: SandboxCloud, http):
    assert get(http, sandbox).status_code == 200  # a pooled keep-alive connection exists
    sandbox.faults.set_offline("refused")
    with pytest.raises(requests.ConnectionError):
        get(http, sandbox)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{sandbox.url}{COUNT}", headers=HEADERS, timeout=5)
    admin = requests.get(f"{sandbox.admin_url}/_sandbox/state", timeout=5)
    assert admin.status_code == 200
    sandbox.faults.set_offline(None)
    assert get(http, sandbox).status_code == 200


def test_offline_reset_resets_the_connection_and_is_recorded(sandbox: SandboxCloud, http):
    sandbox.faults.set_offline("reset")
    with pytest.raises(requests.ConnectionError):
        get(http, sandbox)
    assert sandbox.requests[-1].status == 0
    assert sandbox.requests[-1].path == COUNT
    sandbox.faults.clear()
    assert get(http, sandbox).status_code == 200


def test_latency_delays_answers(sandbox: SandboxCloud, http):
    sandbox.faults.set_latency(0.04, api="engage")
    started = time.monotonic()
    get(http, sandbox)
    assert time.monotonic() - started >= 0.04
    sandbox.faults.set_latency(0.05)
    with pytest.raises(requests.Timeout):
        http.get(f"{sandbox.url}{COUNT}", headers=HEADERS, timeout=0.01)


def test_error_rate_fails_about_that_fraction(sandbox: SandboxCloud, http):
    sandbox.faults.set_error_rate(0.5, status=502, api="engage", seed=7)
    codes = [get(http, sandbox).status_code for _ in range(60)]
    assert set(codes) == {200, 502}
    assert 15 <= codes.count(502) <= 45


def test_reject_ids_rejects_only_those_receipts(sandbox: SandboxCloud, http):
    sandbox.faults.reject_ids({"R-BAD"}, status=422, api="engage")
    url = f"{sandbox.url}/api/v2/receipts"
    bad = http.post(url, json=receipt("R-BAD"), headers=HEADERS)
    good = http.post(url, json=receipt("R-GOOD"), headers=HEADERS)
    assert (bad.status_code, good.status_code) == (422, 202)
    assert "errorCode" in bad.json()
    assert set(sandbox.engage.receipts) == {"R-GOOD"}


def test_reject_ids_for_loaded_carries_an_error_id(sandbox: SandboxCloud, http):
    sandbox.faults.reject_ids(["S-BAD"], api="loaded")
    token = http.post(
        f"{sandbox.url}/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "sandbox-client",
            "client_secret": "sandbox-secret",
        },
    ).json()["access_token"]
    answer = http.patch(
        f"{sandbox.url}/v1/pos/orders/eid:S-BAD",
        json={"status": "Completed"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 400
    assert answer.json()["errorId"]


def test_auth_failure_answers_401_until_switched_off(sandbox: SandboxCloud, http):
    sandbox.faults.set_auth_failure("engage")
    assert get(http, sandbox).status_code == 401
    assert get(http, sandbox).status_code == 401
    sandbox.faults.set_auth_failure("engage", on=False)
    assert get(http, sandbox).status_code == 200


def test_malformed_next_is_a_200_that_is_not_json(sandbox: SandboxCloud, http):
    sandbox.faults.malformed_next()
    response = get(http, sandbox)
    assert response.status_code == 200
    with pytest.raises(requests.JSONDecodeError):
        response.json()
    assert get(http, sandbox).json() == 0


def test_truncated_next_breaks_the_body_and_the_connection(sandbox: SandboxCloud, http):
    sandbox.faults.truncated_next(api="engage")
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        get(http, sandbox)
    assert get(http, sandbox).status_code == 200


def test_clear_turns_every_switch_off(sandbox: SandboxCloud, http):
    sandbox.faults.fail_next(500, count=5)
    sandbox.faults.set_auth_failure("engage")
    sandbox.faults.set_offline("refused")
    sandbox.faults.clear()
    assert get(http, sandbox).status_code == 200


def test_a_fixed_port_is_kept_across_an_outage(http):
    cloud = SandboxCloud().serve()
    port = cloud.url.rsplit(":", 1)[1]
    cloud.stop()
    again = SandboxCloud().serve(port=int(port))
    try:
        again.faults.set_offline("refused")
        again.faults.set_offline(None)
        assert again.url.endswith(f":{port}")
        assert get(http, again).status_code == 200
    finally:
        again.stop()


def test_offline_mode_is_validated(sandbox: SandboxCloud):
    with pytest.raises(ValueError, match="offline"):
        sandbox.faults.set_offline("down")  # type: ignore[arg-type]


def test_stop_leaves_no_sandbox_thread_behind(http):
    before = set(threading.enumerate())
    cloud = SandboxCloud().serve()
    get(http, cloud)
    http.close()
    cloud.faults.set_offline("refused")
    cloud.faults.set_offline(None)
    cloud.stop()
    assert [t for t in threading.enumerate() if t not in before and t.is_alive()] == []


def test_lost_next_does_the_work_then_cuts_the_answer_off(sandbox: SandboxCloud, http):
    sandbox.faults.lost_next(api="engage")
    url = sandbox.url + "/api/v2/receipts"
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        http.post(url, json=receipt("LOST-1"), headers=HEADERS, timeout=5)
    assert "LOST-1" in sandbox.engage.receipts  # done, though the client saw a failure
    assert http.post(url, json=receipt("LOST-1"), headers=HEADERS, timeout=5).ok
    assert sandbox.engage.duplicate_receipts == 1
