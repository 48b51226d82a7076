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


_DIGITS_WITH_PLUS = re.compile(r"^\+\d{4,17}$")
_UNDECIDED = object()
_SPECIAL_USE = frozenset(email_validator.SPECIAL_USE_DOMAIN_NAMES)


def normalise_phone(value: str, default_region: str) -> str | None:
    """E.164 ('+46701234567'), or None when it is not a possible phone number."""
    if _DIGITS_WITH_PLUS.match(value):
        fast = _e164_fast(value[1:])
        if fast is not _UNDECIDED:
            return fast  # type: ignore[return-value]
    try:
        number = phonenumbers.parse(value, default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_email(value: str) -> str | None:
    """email-validator's normalised form (no DNS lookup), lower-cased, without the spaces a
    till may leave around it; None when invalid."""
    value = value.strip()
    if _is_plain(value):
        return value.lower()
    try:
        checked = email_validator.validate_email(value, check_deliverability=False)
    except email_validator.EmailNotValidError:
        return None
    return checked.normalized.lower()


def _e164_fast(digits: str) -> str | object | None:
    """'+' and digits only: the checks phonenumbers.parse makes, without its general parser.

    Undecided (anything a national prefix could hide in, no known country code) goes to the
    full parser; tests/test_matchkeys.py checks both give the same answers.
    """
    if digits[0] == "0":
        return _UNDECIDED  # no country code starts with 0
    for length in (1, 2, 3):
        code = int(digits[:length])
        if code not in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            continue
        national = digits[length:]
        region = phonenumbers.region_code_for_country_code(code)
        meta = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, region)
        prefix = meta.national_prefix_for_parsing if meta is not None else None
        if not national or national[0] == "0" or (prefix and re.match(prefix, national)):
            return _UNDECIDED
        number = phonenumbers.PhoneNumber(country_code=code, national_number=int(national))
        return f"+{digits}" if phonenumbers.is_possible_number(number) else None
    return _UNDECIDED


def _is_plain(value: str) -> bool:
    if len(value) > 254 or not _PLAIN_EMAIL.match(value):
        return False
    local, _, domain = value.rpartition("@")
    domain = domain.lower()
    if len(local) > 64 or any(label[2:4] == "--" for label in domain.split(".")):
        return False  # "ab--" labels are IDNA's (xn--): the validator decides
    return domain.rpartition(".")[2] not in _SPECIAL_USE  # all special-use names are one label


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


def match_key_problem(key_type: str, key: str, default_region: str) -> str | None:
    """Why a match key can never match in any cloud, or None: a phone must parse to a possible
    E.164 number, an email must be an address email-validator accepts, any key must be text."""
    kind = key_type.lower()
    if kind == "mobilephone" and normalise_phone(key, default_region) is None:
        return "a MobilePhone match key must be a phone number"
    if kind == "email" and normalise_email(key) is None:
        return "an Email match key must be an email address"
    if not key.strip():
        return "a match key must not be empty"
    return None


def contact_key_problem(
    *, email: str | None, mobile_phone: str | None, default_region: str
) -> tuple[str, str] | None:
    """(JSON path, why) of a contact's email or phone no cloud can take, or None."""
    if email is not None and normalise_email(email) is None:
        return "$.email", "must be an email address"
    if mobile_phone is not None and normalise_phone(mobile_phone, default_region) is None:
        return "$.mobilePhone", "must be a phone number"
    return None
