"""The support bundle: config without secrets, status, logs, versions, store checks; no PII."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import platform
import re
import sqlite3
import zipfile
from pathlib import Path
from typing import Any

from agent import __version__
from agent.core import db
from agent.core.config import Settings
from agent.core.logs import LOG_FILE_PREFIX, redact

LOG_DAYS = 2
SECRET_KEY = re.compile(r"(?i)^\s*[\w.-]*(secret|token|password|api_?key)[\w.-]*\s*=")
STORES = ("outbox.db", "contacts.db")
PACKAGES = ("till-agent", "persist-queue", "waitress", "msgspec", "cryptography", "requests")


def write_bundle(
    settings: Settings, config_path: Path, status: dict[str, Any] | None, target: Path
) -> Path:
    """Write the zip; every text in it went through the log redaction as a last net."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("config.toml", config_without_secrets(config_path))
        bundle.writestr("status.json", json.dumps(status, indent=2) if status else "null\n")
        bundle.writestr("versions.json", json.dumps(versions(), indent=2))
        bundle.writestr("stores.json", json.dumps(store_checks(settings.agent.data_dir), indent=2))
        for name, text in recent_logs(settings.agent.log_dir):
            bundle.writestr(f"logs/{name}", redact(text))
    return target


def config_without_secrets(path: Path) -> str:
    """The config file, any line naming a secret, token, password or key removed."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        return f"# config unreadable: {exc}\n"
    kept = [
        "# (removed: a line naming a secret)" if SECRET_KEY.match(line) else line for line in lines
    ]
    return redact("\n".join(kept) + "\n")


def versions() -> dict[str, str]:
    found = {"till-agent": __version__, "python": platform.python_version()}
    found |= {"platform": platform.platform(), "sqlite": sqlite3.sqlite_version}
    for package in PACKAGES[1:]:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def store_checks(data_dir: Path) -> dict[str, Any]:
    """quick_check of each store, and the data directory's files with their sizes."""
    checks: dict[str, Any] = {
        name: db.check_file(data_dir / name) or "ok"
        for name in STORES
        if (data_dir / name).exists()
    }
    checks["files"] = (
        {p.name: p.stat().st_size for p in sorted(data_dir.iterdir()) if p.is_file()}
        if data_dir.exists()
        else {}
    )
    return checks


def recent_logs(log_dir: Path) -> list[tuple[str, str]]:
    if not log_dir.exists():
        return []
    cutoff = (dt.datetime.now(dt.UTC) - dt.timedelta(days=LOG_DAYS)).date().isoformat()
    files = sorted(log_dir.glob(f"{LOG_FILE_PREFIX}*.log"))
    chosen = [p for p in files if p.stem.removeprefix(LOG_FILE_PREFIX) >= cutoff]
    return [(p.name, p.read_text(encoding="utf-8", errors="replace")) for p in chosen]


def bundle_name(settings: Settings) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"till-agent-support-{settings.agent.store_id}-{settings.agent.till_id}-{stamp}.zip"
