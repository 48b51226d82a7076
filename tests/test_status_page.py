"""The status page: states, queues, problems at a glance; no personal data, nothing external."""

from __future__ import annotations

import re

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
