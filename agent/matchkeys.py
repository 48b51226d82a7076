"""Normalised match keys: phone numbers to E.164, emails to their canonical form."""

from __future__ import annotations

import re

import email_validator
import phonenumbers

# Plain addresses (ASCII dot-atom local part, letters-only top-level domain) take a fast path;
# everything else goes through email-validator. tests/test_matchkeys.py checks that both agree.
_PLAIN_EMAIL = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)


def normalise_phone(value: str, default_region: str) -> str | None:
    """E.164 ('+46701234567'), or None when it is not a possible phone number."""
    try:
        number = phonenumbers.parse(value, default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_email(value: str) -> str | None:
    """email-validator's normalised form (no DNS lookup), lower-cased; None when invalid."""
    if _is_plain(value):
        return value.lower()
    try:
        checked = email_validator.validate_email(value, check_deliverability=False)
    except email_validator.EmailNotValidError:
        return None
    return checked.normalized.lower()


def _is_plain(value: str) -> bool:
    if len(value) > 254 or not _PLAIN_EMAIL.match(value):
        return False
    local, _, domain = value.rpartition("@")
    domain = domain.lower()
    if len(local) > 64 or any(label[2:4] == "--" for label in domain.split(".")):
        return False  # "ab--" labels are IDNA's (xn--): the validator decides
    special = email_validator.SPECIAL_USE_DOMAIN_NAMES
    return not any(domain == s or domain.endswith("." + s) for s in special)


def subject_keys(*, email: str | None, mobile_phone: str | None, default_region: str) -> list[str]:
    """The normalised keys a person can be found (and forgotten) by: 'email:…', 'phone:…'."""
    keys = []
    if email:
        # An address the validator refuses is still someone's: keep it findable for erasure.
        keys.append(f"email:{normalise_email(email) or email.strip().lower()}")
    if mobile_phone:
        phone = normalise_phone(mobile_phone, default_region)
        keys.append(f"phone:{phone or ''.join(mobile_phone.split())}")
    return keys
