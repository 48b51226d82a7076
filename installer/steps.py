"""Idempotent install steps on an explicit root: directories, files, owners, stores, erasure."""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import requests

from agent import app, connectors
from agent.core import acl, config, paths
from installer import tomlfile
from installer.services import SERVICE_USER
from installer.system import Commands

STORE_FILES = ("outbox.db", "contacts.db")
BACKUP_SUFFIX = ".pre-upgrade"


@dataclass(frozen=True)
class Layout:
    """Where an install puts things: the system locations, under `root` when one is given.

    What is written *into* files (the config, the unit, its drop-in) always names the target
    system's paths, so an image staged under a root works once booted from it."""

    root: Path | None
    config_dir: Path
    data_dir: Path
    log_dir: Path
    credentials_dir: Path
    unit_dir: Path
    platform: str = sys.platform

    @property
    def config_file(self) -> Path:
        return self.config_dir / paths.CONFIG_FILE_NAME

    @property
    def token_file(self) -> Path:
        return self.credentials_dir / paths.TOKEN_FILE_NAME

    def target(self, path: Path) -> Path:
        """The path as the target system will see it (the root taken off, when under it)."""
        if self.root is None or not path.is_relative_to(self.root):
            return path
        return Path(path.anchor) / path.relative_to(self.root)

    def environ(self) -> dict[str, str]:
        """What systemd gives the agent (the *_DIRECTORY variables), here: how the installer
        itself finds the agent's folders when it reads the config it wrote."""
        if self.root is None or self.platform == "win32":
            return {}
        return {
            "CONFIGURATION_DIRECTORY": str(self.config_dir),
            "STATE_DIRECTORY": str(self.data_dir),
            "LOGS_DIRECTORY": str(self.log_dir),
            "CREDENTIALS_DIRECTORY": str(self.credentials_dir),
        }

    def config_paths(self) -> dict[str, dict[str, str]]:
        """Paths to write into the config: none on Linux (systemd gives the target's); on
        Windows, staged under a root, the paths under it."""
        if self.root is None or self.platform != "win32":
            return {}
        names = ("data_dir", "log_dir", "credentials_dir")
        return {"agent": {n: str(getattr(self, n)) for n in names}}


def layout(root: Path | None, platform: str = sys.platform) -> Layout:
    system = paths.system_paths({}, platform)

    def under(path: Path) -> Path:
        return path if root is None else root / path.relative_to(path.anchor)

    return Layout(
        root=root,
        config_dir=under(system.config_dir),
        data_dir=under(system.data_dir),
        log_dir=under(system.log_dir),
        credentials_dir=under(system.credentials_dir),
        unit_dir=under(Path("/etc/systemd/system")),
        platform=platform,
    )


# Who a file or directory belongs to: the service user; root with the service's group (it may
# read); root alone (systemd reads it as root: the agent may not change it, nor read it directly).
Holder = Literal["service", "group", "root"]


@dataclass(frozen=True)
class Owner:
    """The service account's ids, when we run as root and it exists; else files stay ours."""

    uid: int | None = None
    gid: int | None = None

    def own(self, path: Path, holder: Holder = "service") -> None:
        if self.uid is None or self.gid is None:
            return
        uid = self.uid if holder == "service" else 0
        os.chown(path, uid, 0 if holder == "root" else self.gid)


def ensure_user(commands: Commands, layout: Layout) -> Owner:
    """The dedicated system user (Linux, as root): made once, no login, no home of its own."""
    if not commands.is_admin() or sys.platform == "win32":
        return Owner()
    if commands.account(SERVICE_USER) is None and layout.root is None:
        commands.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                str(layout.data_dir),
                "--shell",
                "/usr/sbin/nologin",
                SERVICE_USER,
            ]
        )
    return owner_of(commands)


def owner_of(commands: Commands) -> Owner:
    """The service account's ids when we may chown to it (root, and it exists)."""
    ids = commands.account(SERVICE_USER) if commands.is_admin() else None
    return Owner() if ids is None else Owner(*ids)


def program_path(platform: str = sys.platform) -> Path:
    """The program the service runs: till-agent beside this Python on Linux; on Windows the
    frozen till-agent-service.exe beside till-install.exe, or, in a Python installed from the
    wheel, the service script (run by this Python: services.image_path)."""
    here = Path(sys.executable).parent
    if platform != "win32":
        return here / "till-agent"
    if getattr(sys, "frozen", False):
        return here / "till-agent-service.exe"
    return Path(__file__).resolve().parents[1] / "service" / "windows.py"  # same wheel


# The unit hides these from the agent (ProtectHome=yes; PrivateTmp=yes gives it an empty /tmp):
# a program, or the Python it runs on, under one of them fails to start (status=203/EXEC).
HIDDEN_FROM_SERVICE = ("/root", "/home", "/run/user", "/tmp", "/var/tmp")


def hidden_from_service(program: Path, python: Path, python_home: Path) -> list[str]:
    """What of the agent's program lies where the service cannot see it (real paths)."""
    places = {"the program": program, "its Python": python, "the Python's library": python_home}
    found = []
    for what, path in places.items():
        real = Path(os.path.realpath(path))
        hidden = [h for h in HIDDEN_FROM_SERVICE if real.is_relative_to(h)]
        if hidden:
            found.append(f"{what} is under {hidden[0]} ({real})")
    return found


def interpreter_problems() -> list[str]:
    """hidden_from_service for the program this installer would register."""
    return hidden_from_service(program_path(), Path(sys.executable), Path(sys.base_prefix))


def make_dirs(layout: Layout, owner: Owner) -> None:
    """config 0750 (root, the service's group), credentials 0700 root's, data 0700 and logs
    0750 the service's; on Windows each folder SYSTEM and Administrators only instead
    (agent.core.acl). Files already in the log directory become the service's too: one left
    by a run as root would otherwise refuse every log line the service writes."""
    dirs: tuple[tuple[Path, int, Holder], ...] = (
        (layout.config_dir, 0o750, "group"),
        (layout.credentials_dir, 0o700, "root"),
        (layout.data_dir, 0o700, "service"),
        (layout.log_dir, 0o750, "service"),
    )
    for path, mode, holder in dirs:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        owner.own(path, holder)
        _restrict_on_windows(path)
    for stale in layout.log_dir.iterdir():
        if stale.is_file() and not stale.is_symlink():
            owner.own(stale)


def _restrict_on_windows(path: Path) -> None:
    if sys.platform == "win32":
        acl.restrict(path)


def write_file(path: Path, text: str, owner: Owner, *, mode: int, holder: Holder) -> None:
    """Replace path atomically; the new file has its mode and owner before it gets its name."""
    temporary = path.with_name(f".{path.name}.new")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)  # the umask may have taken bits off
        owner.own(temporary, holder)
        _restrict_on_windows(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_secrets(layout: Layout, values: Mapping[str, str], owner: Owner) -> list[Path]:
    """Each secret a 0600 file named by its key, root's: systemd hands the agent a read-only
    copy (LoadCredential=), so the agent can neither change nor leak the file itself."""
    written = []
    for name, value in values.items():
        path = layout.credentials_dir / name
        write_file(path, value + "\n", owner, mode=0o600, holder="root")
        written.append(path)
    return written


def ensure_token(layout: Layout, owner: Owner) -> Path:
    """The POS token: made once (a re-install keeps it, so the POS need not be told again)."""
    path = layout.token_file
    if not path.exists():
        write_file(path, secrets.token_urlsafe(32) + "\n", owner, mode=0o600, holder="root")
    for existing in layout.credentials_dir.iterdir():  # an earlier version gave them the service
        if existing.is_file() and not existing.is_symlink():
            owner.own(existing, "root")
    return path


def write_config(layout: Layout, raw: Mapping[str, Any], owner: Owner) -> None:
    """The config file, 0640: root writes it, the service's group reads it. No secret in it."""
    text = tomlfile.dumps(raw)
    write_file(layout.config_file, text, owner, mode=0o640, holder="group")


def check_config(
    raw: Mapping[str, Any], layout: Layout, new_secrets: Mapping[str, str] | None = None
) -> config.Settings:
    """The whole config as the agent would take it, every connector built: ConfigError lists
    every problem of every kind at once. new_secrets (not written yet) are read first."""
    return app.checked_settings(raw, layout.environ(), pending_first(layout, new_secrets or {}))


def pending_first(layout: Layout, new_secrets: Mapping[str, str]) -> Callable[[str], str]:
    """A secret reader that sees secrets not written yet before those on disk."""
    on_disk = config.secret_reader(layout.credentials_dir)
    pending = dict(new_secrets)

    def read(name: str) -> str:
        return pending[name] if name in pending else on_disk(name)

    return read


def load_settings(layout: Layout) -> config.Settings:
    """The installed config as the agent under systemd reads it (its folders under the root)."""
    return config.load(layout.config_file, layout.environ(), connectors.KINDS)


def agent_url(settings: config.Settings) -> str:
    host, port = config.parse_listen(settings.api.listen)
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def health_url(settings: config.Settings) -> str:
    return agent_url(settings) + "/v1/health"


def wait_healthy(url: str, timeout_seconds: float, poll_seconds: float = 0.2) -> int | None:
    """200 as soon as GET url answers it (the agent took its stores and serves the POS); at the
    deadline the last status it answered (503: running, but failing), or None (no answer)."""
    deadline = time.monotonic() + timeout_seconds
    status = None
    while True:
        with contextlib.suppress(requests.RequestException):
            status = requests.get(url, timeout=2).status_code
            if status == 200:
                return status
        if time.monotonic() >= deadline:
            return status
        time.sleep(poll_seconds)


def backup_stores(data_dir: Path) -> list[Path]:
    """A consistent copy of each store (sqlite3's backup API: the WAL included), owner-only."""
    made = []
    for name in STORE_FILES:
        source_path = data_dir / name
        if not source_path.exists():
            continue
        target_path = data_dir / (name + BACKUP_SUFFIX)
        target_path.unlink(missing_ok=True)
        _copy_database(source_path, target_path)
        target_path.chmod(0o600)
        made.append(target_path)
    return made


def restore_stores(backups: Iterable[Path]) -> None:
    """Each store back as it was before the upgrade (written through sqlite3, WAL and all)."""
    for backup in backups:
        _copy_database(backup, backup.with_name(backup.name.removesuffix(BACKUP_SUFFIX)))


def _copy_database(source_path: Path, target_path: Path) -> None:
    source = sqlite3.connect(source_path)
    try:
        target = sqlite3.connect(target_path)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()


def migrate_stores(settings: config.Settings) -> None:
    """Open every store the way the agent does: each applies its pending migrations."""
    with app.maintenance(settings):
        pass


def upgrade_stores(settings: config.Settings, migrate: Callable[[], None]) -> list[Path]:
    """Back the stores up, migrate; on failure put them back as they were and re-raise."""
    backups = backup_stores(settings.agent.data_dir)
    try:
        migrate()
    except BaseException:
        restore_stores(backups)
        raise
    return backups


def waiting(settings: config.Settings) -> dict[str, int]:
    """Items not delivered yet, per destination (the agent stopped): ready, claimed, set aside."""
    return app.undelivered(settings)


def waiting_now(settings: config.Settings) -> dict[str, int]:
    """As waiting(), asked of the running agent (GET /v1/status); of the stores when nothing
    answers (the agent is stopped, so they are ours to open)."""
    token = settings.api.token_file.read_text(encoding="ascii").strip()
    try:
        answer = requests.get(
            agent_url(settings) + "/v1/status",
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        )
    except requests.RequestException:
        return waiting(settings)
    answer.raise_for_status()
    return {
        d["name"]: d["depth"] + d["inFlight"] + d["setAside"] for d in answer.json()["destinations"]
    }


def erase_file(path: Path) -> None:
    """Overwrite with zeros, flush to disk, then unlink (on flash, erasure is best effort)."""
    size = path.stat().st_size
    with path.open("r+b") as handle:
        block = b"\0" * 65536
        left = size
        while left > 0:
            left -= handle.write(block[: min(left, len(block))])
        handle.flush()
        os.fsync(handle.fileno())
    path.unlink()


def erase_tree(directory: Path) -> int:
    """Erase every file under directory, then the directories; the number of files erased."""
    if not directory.exists():
        return 0
    files = [p for p in directory.rglob("*") if p.is_file() and not p.is_symlink()]
    for path in files:
        erase_file(path)
    for path in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        path.unlink() if path.is_symlink() or not path.is_dir() else path.rmdir()
    directory.rmdir()
    return len(files)


def remove_config(layout: Layout) -> None:
    """The config file and every secret (erased), then their directories if empty."""
    erase_tree(layout.credentials_dir)
    layout.config_file.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        layout.config_dir.rmdir()


def purge(commands: Commands, layout: Layout) -> int:
    """Erase the data and log directories; remove the service user (Linux, system install)."""
    erased = erase_tree(layout.data_dir) + erase_tree(layout.log_dir)
    if layout.root is None and commands.is_admin() and commands.account(SERVICE_USER):
        commands.run(["userdel", SERVICE_USER])
    return erased
