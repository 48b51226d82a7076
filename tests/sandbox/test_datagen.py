"""The synthetic contact generator: deterministic by seed, obviously synthetic, fast."""

from __future__ import annotations

import itertools
import re
import time

import pytest

from agent.sandbox import datagen


def test_datagen_same_seed_same_contacts():
    assert list(datagen.contacts(100, seed=3)) == list(datagen.contacts(100, seed=3))
    assert list(datagen.contacts(100, seed=3)) != list(datagen.contacts(100, seed=4))


def test_datagen_values_are_obviously_synthetic():
    for person in datagen.contacts(1000, seed=1):
        assert person.last_name == f"Person {person.index:06d}"
        assert person.email.endswith("@example.com")
        assert re.fullmatch(r"\+46700\d{7}", person.mobile_phone)
        assert person.member_number.startswith("SBX")
    first = next(datagen.contacts(1))
    assert (first.first_name, first.mobile_phone) == ("Test", "+467000000000")


def test_datagen_keys_are_unique():
    people = list(datagen.contacts(20_000, seed=2))
    for key in ("email", "mobile_phone", "member_number"):
        assert len({getattr(p, key) for p in people}) == len(people)


def test_datagen_is_a_generator_fast_enough_for_a_million():
    stream = datagen.contacts(1_000_000, seed=1)
    started = time.monotonic()
    count = sum(1 for _ in itertools.islice(stream, 100_000))
    assert count == 100_000
    assert time.monotonic() - started < 2.0  # ~ a million in well under 20 s


def test_datagen_refuses_impossible_ranges():
    with pytest.raises(ValueError, match="at most"):
        next(datagen.contacts(1, start=datagen.MAX_CONTACTS))
