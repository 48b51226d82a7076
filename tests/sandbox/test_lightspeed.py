"""Simulated Lightspeed X-Series over loopback: version cursor, page size, rate-limit headers."""

from __future__ import annotations

import email.utils
import itertools

from agent.sandbox import SandboxCloud

AUTH = {"Authorization": "Bearer sandbox-lightspeed-token"}


def page(http, cloud: SandboxCloud, **params):
    return http.get(f"{cloud.url}/api/2.0/customers", params=params, headers=AUTH)


def test_lightspeed_cursor_paging_sees_every_customer_once(sandbox: SandboxCloud, http):
    ids = sandbox.lightspeed.seed_customers(450)
    gone = ids[10]
    sandbox.lightspeed.delete_customer(gone)
    seen: list[str] = []
    deleted: list[str] = []
    after, pages = 0, 0
    while True:
        body = page(http, sandbox, after=after, page_size=200, deleted="true").json()
        if body["version"]["max"] is None:
            assert body["data"] == []
            break
        versions = [c["version"] for c in body["data"]]
        assert versions == sorted(versions)
        assert (body["version"]["min"], body["version"]["max"]) == (versions[0], versions[-1])
        seen += [c["id"] for c in body["data"]]
        deleted += [c["id"] for c in body["data"] if c["deleted_at"]]
        after, pages = body["version"]["max"], pages + 1
    assert sorted(seen) == sorted(ids)
    assert deleted == [gone]
    assert pages == 3


def test_lightspeed_versions_are_global_not_per_customer(sandbox: SandboxCloud, http):
    sandbox.lightspeed.seed_customers(50)
    versions = [c["version"] for c in page(http, sandbox, page_size=50).json()["data"]]
    steps = {b - a for a, b in itertools.pairwise(versions)}
    assert steps != {1}
    assert min(steps) >= 1


def test_lightspeed_customer_fields(sandbox: SandboxCloud, http):
    sandbox.lightspeed.upsert_customer(first_name="Test", last_name="Person", phone="+46700")
    customer = page(http, sandbox).json()["data"][0]
    expected = {"id", "first_name", "last_name", "phone", "version", "deleted_at"}
    assert expected <= set(customer)


def test_lightspeed_page_size_over_200_is_400(sandbox: SandboxCloud, http):
    assert page(http, sandbox, page_size=201).status_code == 400
    assert page(http, sandbox, page_size=200).status_code == 200


def test_lightspeed_needs_the_bearer_token(sandbox: SandboxCloud, http):
    response = http.get(f"{sandbox.url}/api/2.0/customers", headers={"Authorization": "Bearer x"})
    assert response.status_code == 401


def test_lightspeed_rate_limit_headers_and_429_with_an_http_date(clocked, clock, http):
    answers = [page(http, clocked) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[0].headers["X-RateLimit-Limit"] == "3"
    assert [a.headers["X-RateLimit-Remaining"] for a in answers[:3]] == ["2", "1", "0"]
    assert "X-RateLimit-Reset" not in answers[0].headers  # not documented by Lightspeed
    limited = answers[3]
    assert limited.json() == {"error": "Too Many Requests", "message": "Rate limiting enforced"}
    retry_at = email.utils.parsedate_to_datetime(limited.headers["Retry-After"]).timestamp()
    assert clock.now + 8 <= retry_at <= clock.now + 10
    clock.now += 10
    assert page(http, clocked).status_code == 200


def test_lightspeed_lists_active_customers_unless_asked_for_deleted_ones(sandbox, http):
    ids = sandbox.lightspeed.seed_customers(5)
    sandbox.lightspeed.delete_customer(ids[1])
    active = [c["id"] for c in page(http, sandbox).json()["data"]]
    everyone = [c["id"] for c in page(http, sandbox, deleted="true").json()["data"]]
    assert ids[1] not in active
    assert len(active) == 4
    assert sorted(everyone) == sorted(ids)


def test_lightspeed_one_customer_by_id(sandbox: SandboxCloud, http):
    ids = sandbox.lightspeed.seed_customers(3)
    url = f"{sandbox.url}/api/2.0/customers"
    found = http.get(f"{url}/{ids[0]}", headers=AUTH)
    assert found.status_code == 200
    assert found.json()["data"]["id"] == ids[0]
    assert found.json()["data"]["phone"] == sandbox.lightspeed.customers[ids[0]]["phone"]
    sandbox.lightspeed.delete_customer(ids[1])
    assert sandbox.lightspeed.forget_customer(ids[2])
    for gone in (ids[1], ids[2], "00000000-0000-4000-8000-000000000000"):
        answer = http.get(f"{url}/{gone}", headers=AUTH)
        assert answer.status_code == 404
        assert answer.json() == {"error": "Not Found", "message": "customer not found"}
    assert http.get(f"{url}/{ids[0]}", headers={"Authorization": "Bearer x"}).status_code == 401


def test_a_forgotten_customer_leaves_no_tombstone_in_the_feed(sandbox: SandboxCloud, http):
    ids = sandbox.lightspeed.seed_customers(4)
    version = sandbox.lightspeed.version
    answer = http.post(f"{sandbox.admin_url}/_sandbox/lightspeed/forget", json={"id": ids[3]})
    assert answer.status_code == 200
    assert sandbox.lightspeed.version == version
    listed = page(http, sandbox, deleted="true").json()["data"]
    assert [c["id"] for c in listed] == ids[:3]
    again = http.post(f"{sandbox.admin_url}/_sandbox/lightspeed/forget", json={"id": ids[3]})
    assert again.status_code == 404


def test_seeding_customers_through_the_admin_route(sandbox: SandboxCloud, http):
    url = f"{sandbox.admin_url}/_sandbox/lightspeed/seed"
    answer = http.post(url, json={"count": 250})
    assert answer.status_code == 200
    assert answer.json()["customers"] == 250
    assert answer.json()["version"] == sandbox.lightspeed.version
    assert http.post(url, json={"count": -1}).status_code == 400
    assert http.post(url, json={"count": "many"}).status_code == 400
    seen, after = 0, 0
    while True:
        body = page(http, sandbox, after=after, page_size=200).json()
        if body["version"]["max"] is None:
            break
        seen, after = seen + len(body["data"]), body["version"]["max"]
    assert seen == 250


def test_an_updated_customer_moves_to_the_end_of_the_feed_once(sandbox: SandboxCloud, http):
    ids = sandbox.lightspeed.seed_customers(3)
    sandbox.lightspeed.upsert_customer(ids[0], first_name="Changed")
    listed = page(http, sandbox).json()["data"]
    assert [c["id"] for c in listed] == [ids[1], ids[2], ids[0]]
    assert listed[-1]["first_name"] == "Changed"
