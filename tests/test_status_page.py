"""The status page: states, queues, problems at a glance; no personal data, nothing external."""

from __future__ import annotations

import re
import time

import requests

from tests.conftest import make_receipt
from tests.test_privacy_scan import PLANTED, plant_everything


def test_the_page_shows_every_destination_and_refreshes_itself(agent_till):
    _, till = agent_till
    till.post("/v1/receipts", make_receipt())
    response = requests.get(till.url + "/", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    page = response.text
    assert 'http-equiv="refresh"' in page
    assert "engage" in page
    assert "loaded" in page
    assert "Till till-test" in page


def test_the_page_loads_nothing_from_anywhere(agent_till):
    _, till = agent_till
    response = requests.get(till.url + "/", timeout=5)
    assert not re.search(r"(src|href)\s*=", response.text)
    assert "<script" not in response.text
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")


def test_the_page_holds_no_personal_data(agent_till):
    _, till = agent_till
    plant_everything(till)
    page = requests.get(till.url + "/", timeout=5).text
    assert [name for name, value in PLANTED.items() if value in page] == []


def test_problems_are_listed(agent_till):
    agent, till = agent_till
    agent.health.report("destination:loaded", "failing", "credentials refused (401)")
    page = requests.get(till.url + "/", timeout=5).text
    assert "credentials refused (401)" in page


def test_every_state_badge_has_a_colour(agent_till):
    _, till = agent_till
    page = requests.get(till.url + "/", timeout=5).text
    for css in re.findall(r'class="state ([a-z]+)"', page):
        assert f".{css}" in page or f",.{css}" in page, css


def test_the_page_in_a_real_headless_browser(agent_till, tmp_path):
    """Rendered by Debian's Chromium; the screenshot is kept in build/ as a test artefact."""
    import shutil
    import subprocess

    import pytest

    from tests.conftest import ROOT

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (make test installs it with apt-get where it can)")
    _, till = agent_till
    till.post("/v1/receipts", make_receipt())
    shot = ROOT / "build" / "status-page.png"
    shot.parent.mkdir(exist_ok=True)
    shot.unlink(missing_ok=True)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chrome'}",
        "--window-size=800,600",
    ]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", till.url + "/"], capture_output=True, text=True, timeout=60
    )
    assert "Till till-test" in dom.stdout
    assert "engage" in dom.stdout
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", till.url + "/"], capture_output=True, timeout=60
    )
    assert shot.stat().st_size > 10_000


def test_the_countdown_to_the_next_try_moves_and_storage_is_in_binary_units(start_agent):
    # Nothing listens on port 9: the first send fails, and the destination waits ~20 s.
    _, till = start_agent({"delivery": {"enabled": True, "backoff_initial_seconds": 20.0}})
    till.post("/v1/receipts", make_receipt())
    first = _waiting_engage(till)
    time.sleep(1.2)
    second = _waiting_engage(till)
    assert first["pausedSeconds"] - second["pausedSeconds"] >= 1.0  # live, not frozen
    page = requests.get(till.url + "/", timeout=5).text
    assert re.search(r"next try in \d+ s", page)
    assert "retrying in" not in page  # the old countdown, frozen when the failure happened
    assert "2.0 GiB allowed" in page  # storage.max_size_mb = 2048 (MiB)


def _waiting_engage(till):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        answer = till.get("/v1/status").json()
        engage = next(d for d in answer["destinations"] if d["name"] == "engage")
        if engage["pausedSeconds"] > 5:
            return engage
        time.sleep(0.1)
    raise AssertionError(f"engage never backed off: {engage}")


def test_a_halted_destination_says_what_to_do_on_the_page_and_in_status(start_agent):
    from agent.cli import format_status
    from agent.sandbox import SandboxCloud

    cloud = SandboxCloud(seed=3).serve()
    try:
        cloud.faults.set_auth_failure("engage")
        _, till = start_agent(
            {
                "delivery": {"enabled": True},
                "destinations": {
                    "engage": {"base_url": cloud.url},
                    "loaded": {"base_url": cloud.url + "/loaded"},
                },
            }
        )
        till.post("/v1/receipts", make_receipt())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            answer = till.get("/v1/status").json()
            states = {d["name"]: d["state"] for d in answer["destinations"]}
            if states["engage"] == "halted":
                break
            time.sleep(0.1)
        assert states == {"engage": "halted", "loaded": "online"}
        page = requests.get(till.url + "/", timeout=5).text
        assert "till-install configure --secret NAME" in page
        printed = format_status(answer)
        assert "what to do: put the right secret in place" in printed
        assert printed.count("what to do") == 1  # nothing to do for the online one
    finally:
        cloud.stop()
