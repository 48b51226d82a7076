"""The till-install command line (click): the technician's installer."""

from __future__ import annotations

import json

import click

from agent import __version__, config, paths


@click.group()
@click.version_option(__version__, prog_name="till-install")
def main() -> None:
    """Install, check and remove the Till Agent on this till."""


@main.command("paths")
@click.option("--json", "as_json", is_flag=True, help="Print the locations as JSON.")
def show_paths(as_json: bool) -> None:
    """Show where the agent keeps its config, data, logs and secrets on this machine."""
    system = paths.system_paths(config.environment())
    locations = {
        "config_file": str(system.config_file),
        "data_dir": str(system.data_dir),
        "log_dir": str(system.log_dir),
        "credentials_dir": str(system.credentials_dir),
    }
    if as_json:
        click.echo(json.dumps(locations, indent=2))
        return
    for name, location in locations.items():
        click.echo(f"{name:<16} {location}")
