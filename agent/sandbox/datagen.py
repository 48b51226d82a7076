"""Seedable generator of obviously synthetic contacts, fast enough for a million of them.

Values are never realistic personal data: names are "Test Person 000123", emails are under
example.com (RFC 2606, reserved), and phone numbers are E.164 +46 700 followed by the
contact's index in 7 digits (+467000000123 for contact 123; the first 10,000 are
+4670000xxxx), a run of zeros no one would mistake for a subscriber's number. Member
numbers are "SBX" + 8 digits, shuffled by the seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

PHONE_PREFIX = "+46700"
MAX_CONTACTS = 10_000_000


@dataclass(frozen=True, slots=True)
class SyntheticContact:
    """One synthetic contact."""

    index: int
    first_name: str
    last_name: str
    email: str
    mobile_phone: str
    member_number: str


def phone_for(index: int) -> str:
    """+46700 and the index in 7 digits: +4670000xxxx for the first 10,000."""
    return f"{PHONE_PREFIX}{index:07d}"


def contacts(count: int, seed: int = 1, start: int = 0) -> Iterator[SyntheticContact]:
    """count synthetic contacts, numbered from start; the seed shuffles which number is whose."""
    if start < 0 or count < 0 or start + count > MAX_CONTACTS:
        raise ValueError(f"at most {MAX_CONTACTS} contacts (got {start}+{count})")
    rng = random.Random(seed)
    offset = rng.randrange(MAX_CONTACTS)
    for index in range(start, start + count):
        number = (index + offset) % MAX_CONTACTS
        yield SyntheticContact(
            index=index,
            first_name="Test",
            last_name=f"Person {index:06d}",
            email=f"test.person.{index:06d}.{seed}@example.com",
            mobile_phone=phone_for(index),
            member_number=f"SBX{number:08d}",
        )
