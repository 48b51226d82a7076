"""Per-OS system locations (config, data, logs, credentials): the one place that knows them."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP_NAME = "TillAgent"
CONFIG_FILE_NAME = "config.toml"
TOKEN_FILE_NAME = "pos-token"


@dataclass(frozen=True)
class SystemPaths:
    """Where an installed agent keeps things on this OS."""

    config_dir: Path
    data_dir: Path
    log_dir: Path
    credentials_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / CONFIG_FILE_NAME


def system_paths(environ: Mapping[str, str], platform: str = sys.platform) -> SystemPaths:
    """The system locations, honouring systemd's *_DIRECTORY variables on Linux."""
    if platform == "win32":
        return _windows_paths()
    return _posix_paths(environ)


def _posix_paths(environ: Mapping[str, str]) -> SystemPaths:
    # systemd sets these from ConfigurationDirectory=, StateDirectory=, LogsDirectory= and
    # LoadCredential=; each may hold several colon-separated paths, the first is ours.
    config_dir = _first(environ.get("CONFIGURATION_DIRECTORY")) or Path("/etc/till-agent")
    return SystemPaths(
        config_dir=config_dir,
        data_dir=_first(environ.get("STATE_DIRECTORY")) or Path("/var/lib/till-agent"),
        log_dir=_first(environ.get("LOGS_DIRECTORY")) or Path("/var/log/till-agent"),
        credentials_dir=_first(environ.get("CREDENTIALS_DIRECTORY")) or config_dir / "credentials",
    )


def _windows_paths() -> SystemPaths:
    # C:\ProgramData\TillAgent: machine-wide, writable by the service account, not per user.
    base = Path(platformdirs.site_data_dir(APP_NAME, appauthor=False))
    return SystemPaths(
        config_dir=base,
        data_dir=base / "data",
        log_dir=base / "logs",
        credentials_dir=base / "credentials",
    )


def _first(value: str | None) -> Path | None:
    if not value:
        return None
    return Path(value.split(":")[0])
