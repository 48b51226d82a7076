"""`make dist`: the wheel and sdist, built offline from the locked backend, versioned by git tag."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def build(source: Path, out: Path) -> list[Path]:
    """What `make dist` runs: python -m build without isolation (the backend is in the lock)."""
    command = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return sorted(out.iterdir())


def tagged_copy(target: Path, tag: str) -> Path:
    """The working tree's tracked files (as they are now) in a new repository tagged tag."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    who = ("-c", "user.name=test", "-c", "user.email=test@example.com")
    git("init", "--quiet", cwd=target)
    git("add", "--all", cwd=target)
    git(*who, "commit", "--quiet", "--message", "release", cwd=target)
    git(*who, "tag", tag, cwd=target)
    return target


def test_dist_is_versioned_by_the_latest_git_tag_and_holds_the_product(tmp_path):
    clone = tagged_copy(tmp_path / "src", "v9.8.7")
    built = build(clone, tmp_path / "dist")
    assert [path.name for path in built] == [
        "till_agent-9.8.7-py3-none-any.whl",
        "till_agent-9.8.7.tar.gz",
    ]
    with zipfile.ZipFile(built[0]) as wheel:
        names = set(wheel.namelist())
        version_file = wheel.read("agent/_version.py").decode()
    assert "__version__ = version = '9.8.7'" in version_file
    assert {"agent/app.py", "installer/cli.py", "service/linux/till-agent.service"} <= names
    assert not any(name.startswith("tests/") for name in names)
