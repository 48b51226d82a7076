"""Seedable generator of obviously synthetic contacts, fast enough for a million of them.

Values are never realistic personal data: names are "Test Person 000123", emails are under
example.com (RFC 2606, reserved), and phone numbers are E.164 +46 700 followed by the
contact's index in 7 digits (+467000000123 for contact 123; the first 10,000 are
+4670000xxxx), a run of zeros no one would mistake for a subscriber's number. Member
numbers are "SBX" + 8 digits, shuffled by the seed.

`lightspeed_customers` gives the shapes a real Lightspeed retailer's customers have (the
seed's "64-9-407-4472"): a `mobile` and a `phone`, each free text in one of several local
or international formats, or blank, or missing; names in many scripts. They stay obviously
fake: every number has 555 after its area code, emails are under example.org, names say
"test" and "person" in their script, with the index.
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


REALISTIC_MAX = 100_000  # mobiles unique up to here (+64 21 555 xxxxx)
# "Test" and "Person" in several scripts (first name, last name before the index).
NAMES = (
    ("Test", "Person"),
    ("Тест", "Персона"),
    ("テスト", "人物"),
    ("测试", "人员"),
    ("اختبار", "شخص"),
    ("Δοκιμή", "Πρόσωπο"),
    ("परीक्षण", "व्यक्ति"),
    ("בדיקה", "אדם"),
    ("테스트", "사람"),
    ("Tēhi", "Tangata"),
    ("Prüfung", "Persön"),
    ("ทดสอบ", "บุคคล"),
)


def mobile_digits(index: int) -> str:
    """A New Zealand mobile's national digits: 21 555 and the index in 5 digits."""
    return f"21555{index:05d}"


def landline_digits(index: int) -> str:
    """An Auckland number's national digits, 9 555 xxxx: shared past 10,000 (a shop's, a
    household's), as real landlines are."""
    return f"9555{index % 10_000:04d}"


def mobile_text(digits: str, style: int) -> str | None:
    """The mobile as a till operator typed it: one of the formats Lightspeed data holds."""
    a, b, c = digits[:2], digits[2:5], digits[5:]
    forms = (
        f"+64 {a} {b} {c}",
        f"0{a} {b} {c}",
        f"64-{a}-{b}-{c}",
        f"(0{a}) {b}{c}",
        f"+64{digits}",
        "",
        None,
    )
    return forms[style % len(forms)]


def landline_text(digits: str, style: int) -> str | None:
    """The landline as typed: the seed's "64-9-407-4472", "(09) 407 4472" and others."""
    a, b, c = digits[:1], digits[1:4], digits[4:]
    forms = (f"64-{a}-{b}-{c}", f"(0{a}) {b} {c}", None, f"0{a} {b} {c}", f"+64 {a} {b} {c}", " ")
    return forms[style % len(forms)]


def lightspeed_customers(
    count: int, seed: int = 1, start: int = 0
) -> Iterator[dict[str, str | None]]:
    """count customers' fields as Lightspeed keeps them (first_name, last_name, email, mobile,
    phone, customer_code), numbered from start; the seed shuffles which format is whose."""
    if start < 0 or count < 0 or start + count > REALISTIC_MAX:
        raise ValueError(f"at most {REALISTIC_MAX} realistic customers (got {start}+{count})")
    rng = random.Random(seed)
    for index in range(start, start + count):
        first, last = NAMES[index % len(NAMES)]
        style = rng.randrange(1_000)
        yield {
            "first_name": first,
            "last_name": f"{last} {index:06d}",
            "email": None if style % 5 == 4 else f"test.person.{index:06d}.{seed}@example.org",
            "mobile": mobile_text(mobile_digits(index), style),
            "phone": landline_text(landline_digits(index), style // 7),
            "customer_code": f"SBX{index:08d}",
        }
