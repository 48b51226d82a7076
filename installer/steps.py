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
from typing import Any

import requests

from agent import acl, app, config, connectors, paths
from agent.errors import ConfigError
from installer import tomlfile
from installer.services import SERVICE_USER
from installer.system import Commands

STORE_FILES = ("outbox.db", "contacts.db")
BACKUP_SUFFIX = ".pre-upgrade"


@dataclass(frozen=True)
class Layout:
    """Where an install puts things: the system locations, under `root` when one is given."""

    root: Path | None
    config_dir: Path
    data_dir: Path
    log_dir: Path
    credentials_dir: Path
    unit_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / paths.CONFIG_FILE_NAME

    @property
    def token_file(self) -> Path:
        return self.credentials_dir / paths.TOKEN_FILE_NAME

    def config_paths(self) -> dict[str, dict[str, str]]:
        """Paths to write into the config: none for a system install (systemd gives them)."""
        if self.root is None:
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
    )


@dataclass(frozen=True)
class Owner:
    """The service account's ids, when we run as root and it exists; else files stay ours."""

    uid: int | None = None
    gid: int | None = None

    def own(self, path: Path, *, group_only: bool = False) -> None:
        if self.uid is None or self.gid is None:
            return
        os.chown(path, 0 if group_only else self.uid, self.gid)


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


def make_dirs(layout: Layout, owner: Owner) -> None:
    """config 0750 (root, the service's group), credentials and data 0700, logs 0750; on
    Windows each folder SYSTEM and Administrators only instead (agent.acl)."""
    for path, mode, group_only in (
        (layout.config_dir, 0o750, True),
        (layout.credentials_dir, 0o700, False),
        (layout.data_dir, 0o700, False),
        (layout.log_dir, 0o750, False),
    ):
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        owner.own(path, group_only=group_only)
        _restrict_on_windows(path)


def _restrict_on_windows(path: Path) -> None:
    if sys.platform == "win32":
        acl.restrict(path)


def write_file(path: Path, text: str, owner: Owner, *, mode: int, group_only: bool) -> None:
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
        owner.own(temporary, group_only=group_only)
        _restrict_on_windows(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_secrets(layout: Layout, values: Mapping[str, str], owner: Owner) -> list[Path]:
    """Each secret a 0600 file named by its key, owned by the service user."""
    written = []
    for name, value in values.items():
        path = layout.credentials_dir / name
        write_file(path, value + "\n", owner, mode=0o600, group_only=False)
        written.append(path)
    return written


def ensure_token(layout: Layout, owner: Owner) -> Path:
    """The POS token: made once (a re-install keeps it, so the POS need not be told again)."""
    path = layout.token_file
    if not path.exists():
        write_file(path, secrets.token_urlsafe(32) + "\n", owner, mode=0o600, group_only=False)
    return path


def write_config(layout: Layout, raw: Mapping[str, Any], owner: Owner) -> None:
    """The config file, 0640: root writes it, the service's group reads it. No secret in it."""
    text = tomlfile.dumps(raw)
    write_file(layout.config_file, text, owner, mode=0o640, group_only=True)


def check_config(
    raw: Mapping[str, Any], layout: Layout, new_secrets: Mapping[str, str] | None = None
) -> config.Settings:
    """The whole config as the agent would take it, every connector built; ConfigError lists all.

    new_secrets are ones not yet written: they are looked up before the credentials directory.
    """
    settings = config.from_mapping(raw, {})
    on_disk = app.secret_reader(layout.credentials_dir)
    pending = dict(new_secrets or {})

    def read(name: str) -> str:
        return pending[name] if name in pending else on_disk(name)

    session = connectors.make_session("TillAgent-installer")
    problems: list[str] = []
    try:
        for destination in settings.enabled_destinations:
            try:
                connectors.build(destination, session, read)
            except ConfigError as exc:
                problems += exc.problems
    finally:
        session.close()
    if problems:
        raise ConfigError(problems)
    return settings


def load_settings(layout: Layout) -> config.Settings:
    return config.load(layout.config_file, {})


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
