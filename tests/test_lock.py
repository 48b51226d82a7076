"""requirements.lock and pyproject.toml agree: every range is pinned inside it, nothing stale."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT

LOCK = ROOT / "requirements.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^\s;\\]+)\s*(?:;\s*(?P<marker>[^\\]+))?"
)
FIX = "run `make lock` and commit requirements.lock"


@dataclass(frozen=True)
class Pin:
    version: Version
    marker: Marker | None
    direct: bool
    hashes: int


def pins() -> dict[str, Pin]:
    """The lock, one entry per package: version, marker, whether pyproject asked for it."""
    found: dict[str, Pin] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text(encoding="utf-8")):
        head = PIN.match(block)
        if head is None:
            continue
        marker = head["marker"].strip() if head["marker"] else None
        found[canonicalize_name(head["name"])] = Pin(
            version=Version(head["version"]),
            marker=Marker(marker) if marker else None,
            direct="till-agent (pyproject.toml)" in block,
            hashes=block.count("--hash=sha256:"),
        )
    return found


def wanted() -> list[Requirement]:
    """What pyproject.toml asks for: runtime, the dev extra, and the build backend."""
    texts = [
        *PYPROJECT["project"]["dependencies"],
        *PYPROJECT["project"]["optional-dependencies"]["dev"],
        *PYPROJECT["build-system"]["requires"],
    ]
    return [Requirement(text) for text in texts]


def test_every_requirement_of_pyproject_is_pinned_within_its_range():
    locked = pins()
    for requirement in wanted():
        pin = locked.get(canonicalize_name(requirement.name))
        assert pin is not None, f"{requirement} is not in requirements.lock: {FIX}"
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"the lock pins {requirement.name}=={pin.version}, outside {requirement}: {FIX}"
        )


def test_a_platform_only_requirement_keeps_its_marker():
    locked = pins()
    for requirement in wanted():
        if requirement.marker is not None:
            pin = locked[canonicalize_name(requirement.name)]
            assert str(pin.marker) == str(requirement.marker), f"{requirement.name}: {FIX}"


def test_nothing_pyproject_dropped_stays_locked_as_a_direct_requirement():
    asked = {canonicalize_name(requirement.name) for requirement in wanted()}
    stale = sorted(name for name, pin in pins().items() if pin.direct and name not in asked)
    assert not stale, f"requirements.lock still lists {stale} for pyproject.toml: {FIX}"


def test_every_pin_carries_hashes():
    unhashed = sorted(name for name, pin in pins().items() if pin.hashes == 0)
    assert not unhashed, f"pins without --hash (pip install --require-hashes refuses): {unhashed}"


def test_the_lock_is_read_whole():
    """The parser above must see the whole file, or the tests above prove nothing."""
    text = LOCK.read_text(encoding="utf-8")
    assert len(pins()) == len(re.findall(r"^[A-Za-z0-9][^\n]*==", text, flags=re.MULTILINE))
    assert {"requests", "persist-queue", "pywin32", "hatchling"} <= set(pins())
