"""Match keys: the fast paths agree with email-validator and phonenumbers."""

from __future__ import annotations

import email_validator
import phonenumbers
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core import matchkeys

LOCAL = st.text(alphabet="abcXYZ019._+-!#'", min_size=1, max_size=20)
LABEL = st.text(alphabet="abcdeXYZ019-", min_size=1, max_size=12)
TLD = st.sampled_from(["com", "SE", "co", "invalid", "local", "test", "museum", "x"])


def validator_form(value: str) -> str | None:
    try:
        checked = email_validator.validate_email(value, check_deliverability=False)
    except email_validator.EmailNotValidError:
        return None
    return checked.normalized.lower()


@settings(max_examples=400, deadline=None)
@given(local=LOCAL, labels=st.lists(LABEL, min_size=1, max_size=3), tld=TLD)
def test_fast_email_path_agrees_with_email_validator(local, labels, tld):
    address = f"{local}@{'.'.join(labels)}.{tld}"
    assert matchkeys.normalise_email(address) == validator_form(address)


def parser_form(value: str) -> str | None:
    try:
        parsed = phonenumbers.parse(value, "SE")
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


COUNTRIES = ["46", "44", "1", "358", "47", "39", "7", "36", "976", "86", "49", "33", "999", "0"]


@settings(max_examples=1500, deadline=None)
@given(country=st.sampled_from(COUNTRIES), rest=st.text("0123456789", min_size=0, max_size=15))
def test_the_fast_phone_path_agrees_with_phonenumbers(country, rest):
    value = f"+{country}{rest}"
    assert matchkeys.normalise_phone(value, "SE") == parser_form(value)


def test_local_formats_become_e164_with_the_default_region():
    assert matchkeys.normalise_phone("070-000 00 01", "SE") == "+46700000001"
    assert matchkeys.normalise_phone("07700 900123", "GB") == "+447700900123"
    assert matchkeys.normalise_phone("not a number", "SE") is None
