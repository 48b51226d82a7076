"""The contact cache: blind-indexed, sealed, cursor-atomic; lookups over the API."""

from __future__ import annotations

from typing import Any

import pytest

from agent.contacts import ContactCache
from agent.core import crypto
from agent.core.errors import StorageError
from agent.core.models import ContactPage, SourceContact
from tests.test_privacy_scan import scan


def contact(n: int, **fields) -> SourceContact:
    values: dict[str, Any] = {
        "first_name": f"Testfirst{n}",
        "last_name": "Zyxqvörn",
        "email": f"zz.member.{n}@example.invalid",
        "mobile_phone": f"+4670000{n:04d}",
        "member_number": f"MBR-{n:05d}",
    }
    values.update(fields)
    return SourceContact(contact_id=f"c-{n}", **values)


@pytest.fixture
def cache(tmp_path):
    keyring = crypto.load_or_create(tmp_path / "keyring.json", may_create=True)
    store = ContactCache(tmp_path, keyring, default_region="SE", ttl_days=30)
    yield store
    store.close()


def test_a_contact_is_found_by_phone_in_any_format_by_email_and_by_member_number(cache):
    cache.apply_page("src", ContactPage(contacts=[contact(7)], cursor="v1", has_more=False))
    assert cache.find("phone", "070-000 00 07")[0].contact.contact_id == "c-7"
    assert cache.find("phone", "+46 70 000 0007")[0].contact.first_name == "Testfirst7"
    assert cache.find("member", "MBR-00007")[0].contact.contact_id == "c-7"
    assert cache.cursor("src") == "v1"


def test_emails_match_in_their_normalised_form(cache):
    cache.apply_page(
        "s",
        ContactPage(
            contacts=[contact(1, email="Anna.Test@Example.com")], cursor="1", has_more=False
        ),
    )
    assert [c.contact.contact_id for c in cache.find("email", "anna.test@example.com")] == ["c-1"]


def test_a_deletion_in_the_source_removes_the_contact(cache):
    cache.apply_page("s", ContactPage(contacts=[contact(1)], cursor="1", has_more=True))
    deleted = SourceContact(contact_id="c-1", deleted=True)
    cache.apply_page("s", ContactPage(contacts=[deleted], cursor="2", has_more=False))
    assert cache.find("member", "MBR-00001") == []
    assert cache.stats()["contacts"] == 0


def test_an_update_replaces_the_old_keys(cache):
    cache.apply_page("s", ContactPage(contacts=[contact(1)], cursor="1", has_more=False))
    moved = contact(1, mobile_phone="+46700009999")
    cache.apply_page("s", ContactPage(contacts=[moved], cursor="2", has_more=False))
    assert cache.find("phone", "+46700000001") == []
    assert cache.find("phone", "+46700009999")[0].contact.contact_id == "c-1"


def test_a_page_that_fails_leaves_neither_its_rows_nor_its_cursor(cache):
    cache.apply_page("s", ContactPage(contacts=[contact(1)], cursor="1", has_more=True))
    # A row the database refuses (an id that is NULL) makes the whole page fail.
    bad = SourceContact(contact_id=None)  # type: ignore[arg-type]
    broken = ContactPage(contacts=[contact(2), bad], cursor="2", has_more=False)
    with pytest.raises(StorageError):
        cache.apply_page("s", broken)
    assert cache.cursor("s") == "1"
    assert cache.find("member", "MBR-00002") == []


def test_the_cache_file_holds_no_phone_email_or_name(cache, tmp_path):
    cache.apply_page(
        "s", ContactPage(contacts=[contact(n) for n in range(20)], cursor="1", has_more=False)
    )
    cache.checkpoint()
    data = b"".join(p.read_bytes() for p in tmp_path.glob("contacts.db*"))
    for needle in ("+46700000003", "zz.member.3@example.invalid", "Zyxqv", "MBR-00003"):
        assert needle.encode() not in data
        assert needle.encode("utf-16-le") not in data


def test_contacts_not_verified_within_the_ttl_are_purged(tmp_path):
    keyring = crypto.load_or_create(tmp_path / "keyring.json", may_create=True)
    clock = [1_000_000.0]
    store = ContactCache(tmp_path, keyring, default_region="SE", ttl_days=30, now=lambda: clock[0])
    store.apply_page(
        "s", ContactPage(contacts=[contact(1), contact(2)], cursor="1", has_more=False)
    )
    clock[0] += 20 * 86400
    store.put(contact(2))  # re-verified by the ghost sweep
    assert store.least_recently_verified(1) == ["c-1"]
    assert store.purge_expired(clock[0] + 11 * 86400) == 1
    assert [c.contact.contact_id for c in store.find("member", "MBR-00002")] == ["c-2"]
    store.close()


def test_the_cache_survives_a_reopen(tmp_path):
    keyring = crypto.load_or_create(tmp_path / "keyring.json", may_create=True)
    store = ContactCache(tmp_path, keyring, default_region="SE")
    store.apply_page("s", ContactPage(contacts=[contact(1)], cursor="9", has_more=False))
    store.close()
    store = ContactCache(tmp_path, keyring, default_region="SE")
    assert store.cursor("s") == "9"
    assert store.find("member", "MBR-00001")[0].contact.last_name == "Zyxqvörn"
    store.close()


# -- the lookup API ------------------------------------------------------------------------


def test_lookup_answers_from_the_cache_with_its_age(agent_till):
    agent, till = agent_till
    agent.contacts.apply_page("s", ContactPage(contacts=[contact(5)], cursor="1", has_more=False))
    answer = till.get("/v1/contacts/lookup", params={"mobilePhone": "0700000005"})
    assert answer.status_code == 200
    body = answer.json()
    assert body["source"] == "cache"
    assert body["contact"]["contactId"] == "c-5"
    assert 0 <= body["ageSeconds"] < 60


def test_lookup_finds_a_member_registered_here_but_not_yet_in_the_cloud(agent_till):
    _, till = agent_till
    local_id = till.post("/v1/contacts", {"mobilePhone": "+46700001234"}).json()["localId"]
    body = till.get("/v1/contacts/lookup", params={"mobilePhone": "070-000 12 34"}).json()
    assert body["source"] == "pending"
    assert body["contact"]["localId"] == local_id


def test_lookup_of_nobody_is_404_and_of_several_is_409(agent_till):
    agent, till = agent_till
    assert (
        till.get("/v1/contacts/lookup", params={"email": "nobody@example.com"}).status_code == 404
    )
    twins = [contact(1, mobile_phone="+46700000100"), contact(2, mobile_phone="+46700000100")]
    agent.contacts.apply_page("s", ContactPage(contacts=twins, cursor="1", has_more=False))
    answer = till.get("/v1/contacts/lookup", params={"mobilePhone": "+46700000100"})
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "ambiguous"


@pytest.mark.parametrize(
    "params", [{}, {"email": ""}, {"email": "a@b.se", "memberNumber": "1"}, {"name": "x"}]
)
def test_lookup_needs_exactly_one_key(agent_till, params):
    _, till = agent_till
    assert till.get("/v1/contacts/lookup", params=params).status_code == 400


def test_forget_removes_a_person_from_the_cache(agent_till):
    agent, _ = agent_till
    agent.contacts.apply_page("s", ContactPage(contacts=[contact(3)], cursor="1", has_more=False))
    report = agent.privacy.forget(mobile_phone="+46700000003")
    assert report.cached_contacts_removed == 1
    assert agent.contacts.find("member", "MBR-00003") == []
    assert scan(agent.settings.agent.data_dir) == []


def test_registering_a_member_the_cache_knows_returns_them_and_queues_nothing(agent_till):
    agent, till = agent_till
    agent.contacts.apply_page("s", ContactPage(contacts=[contact(4)], cursor="1", has_more=False))
    answer = till.post("/v1/contacts", {"mobilePhone": "070-000 00 04", "firstName": "Again"})
    assert answer.status_code == 200
    assert answer.json()["status"] == "existing"
    assert answer.json()["contactId"] == "c-4"
    assert answer.json()["source"] == "cache"
    assert agent.outbox.depth("engage").pending == 0


def test_registering_twice_at_this_till_is_one_member(agent_till):
    agent, till = agent_till
    first = till.post("/v1/contacts", {"email": "one.member@example.com"}).json()
    second = till.post("/v1/contacts", {"email": "One.Member@example.com ", "firstName": "X"})
    assert second.json()["status"] == "existing"
    assert second.json()["localId"] == first["localId"]
    assert agent.outbox.depth("engage").pending == 1


def test_a_change_to_a_known_member_is_queued_as_a_change(agent_till):
    agent, till = agent_till
    agent.contacts.apply_page("s", ContactPage(contacts=[contact(4)], cursor="1", has_more=False))
    answer = till.post("/v1/contacts", {"contactId": "c-4", "email": "zz.new.4@example.com"})
    assert answer.status_code == 202
    assert agent.outbox.depth("engage").pending == 1


def test_a_contact_is_found_by_its_second_number_too(tmp_path):
    """Lightspeed keeps a mobile and a phone: a lookup by either finds the customer, in E.164
    or typed the local way, once the default region is the retailer's."""
    keyring = crypto.load_or_create(tmp_path / "keyring.json", may_create=True)
    store = ContactCache(tmp_path, keyring, default_region="NZ", ttl_days=30)
    try:
        both = contact(1, mobile_phone="021 555 00001", other_phone="64-9-555-0001")
        same = contact(2, mobile_phone="+64 21 555 00002", other_phone="0215550 0002")
        page = ContactPage(contacts=[both, same], cursor="1", has_more=False)
        store.apply_page("ls", page)
        typed_ways = ("+6495550001", "(09) 555 0001", "09 555 0001", "+64 21 555 00001")
        for typed in typed_ways:
            assert [c.contact.contact_id for c in store.find("phone", typed)] == ["c-1"], typed
        assert [c.contact.contact_id for c in store.find("phone", "+642155500002")] == ["c-2"]
        assert store.find("phone", "+6495550002") == []
        assert store.get("c-1").other_phone == "64-9-555-0001"  # type: ignore[union-attr]
        assert store.forget("phone", "(09) 555 0001") == 1  # erasure by the second number too
        assert store.find("phone", "021 555 00001") == []
    finally:
        store.close()


def test_a_row_sealed_before_the_second_number_still_opens(cache):
    import msgspec

    from agent.core import crypto as sealing

    cache.apply_page("s", ContactPage(contacts=[contact(3)], cursor="1", has_more=False))
    old = [None, None, None, "+46700000003", None]  # five fields, as before the second number
    sealed = cache._keyring.seal_bytes(msgspec.json.encode(old), sealing.record_aad("cache", "c-3"))
    cache._conn.execute("UPDATE contacts SET sealed = ? WHERE contact_id = 'c-3'", (sealed,))
    cache._conn.commit()
    opened = cache.get("c-3")
    assert opened is not None
    assert (opened.mobile_phone, opened.other_phone) == ("+46700000003", None)
