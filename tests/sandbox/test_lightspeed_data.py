"""The sandbox's Lightspeed customers look like a real retailer's, and are obviously fake."""

from __future__ import annotations

import re
import unicodedata

import pytest

from agent.core.matchkeys import normalise_phone
from agent.sandbox import SandboxCloud, datagen


def test_realistic_customers_have_both_numbers_in_local_formats_and_many_scripts():
    cloud = SandboxCloud(seed=5)
    ids = cloud.lightspeed.seed_realistic_customers(120)
    customers = [cloud.lightspeed.customers[i] for i in ids]
    mobiles = [c["mobile"] for c in customers]
    phones = [c["phone"] for c in customers]
    assert None in mobiles
    assert "" in mobiles
    assert None in phones
    assert " " in phones
    typed = [m for m in mobiles + phones if m and m.strip()]
    assert any(t.startswith("+64 ") for t in typed)  # international, spaced
    assert any(t.startswith("0") for t in typed)  # local with the trunk 0
    assert any(re.fullmatch(r"64-\d+-\d{3}-\d+", t) for t in typed)  # the seed's 64-9-407-4472
    assert any(t.startswith("(0") for t in typed)  # the seed's (09) 407 4472
    scripts = {unicodedata.name(c["first_name"][0]).split()[0] for c in customers}
    assert len(scripts) >= 8, scripts
    for value in typed:  # obviously fake: 555 after the area code, every one
        assert "555" in re.sub(r"\D", "", value), value
        assert normalise_phone(value, "NZ") is not None, value
    emails = [c["email"] for c in customers if c["email"]]
    assert emails
    assert all(e.endswith("@example.org") for e in emails)
    assert any(c["email"] is None for c in customers)


def test_each_mobile_is_one_customers_and_the_bound_is_enforced():
    numbers = [datagen.mobile_digits(i) for i in range(datagen.REALISTIC_MAX)]
    assert len(set(numbers)) == datagen.REALISTIC_MAX
    with pytest.raises(ValueError, match="at most"):
        list(datagen.lightspeed_customers(2, start=datagen.REALISTIC_MAX - 1))


def test_the_admin_route_seeds_either_shape(sandbox: SandboxCloud, http):
    url = f"{sandbox.url}/_sandbox/lightspeed/seed"
    assert http.post(url, json={"count": 3}).status_code == 200
    assert http.post(url, json={"count": 4, "realistic": True}).json()["customers"] == 7
    shapes = [("mobile" in c, "phone" in c) for c in sandbox.lightspeed.customers.values()]
    assert shapes.count((True, True)) == 4
    assert shapes.count((False, True)) == 3
