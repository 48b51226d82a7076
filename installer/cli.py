"""The till-install command line (click): the technician's installer."""

from __future__ import annotations

import json
import sqlite3
import sys
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
import requests

from agent import __version__, config, paths
from agent.doctor import Check
from agent.errors import AgentError, ConfigError
from installer import answers, checks, steps, tomlfile, wizard
from installer.services import ServiceManager, Systemd, WindowsServices
from installer.system import CommandError, Commands, HostCommands

T = TypeVar("T")

ROOT_OPTION = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Install under this directory instead of / (staging an image; tests).",
)
WAIT_OPTION = click.option(
    "--wait-seconds",
    default=60.0,
    show_default=True,
    help="How long to wait for the agent to answer /v1/health after a start.",
)
OFFLINE_OPTION = click.option(
    "--offline", is_flag=True, help="Do not contact the clouds (no credential or clock check)."
)


@click.group()
@click.version_option(__version__, prog_name="till-install")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Install, check and remove the Till Agent on this till."""
    if ctx.obj is None:
        ctx.obj = HostCommands()


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


@main.command()
@ROOT_OPTION
@click.option("--non-interactive", is_flag=True, help="Ask nothing: --answers gives everything.")
@click.option(
    "--answers",
    "answers_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A TOML answers file (docs/install.md lists its keys).",
)
@OFFLINE_OPTION
@WAIT_OPTION
@click.pass_obj
def install(
    commands: Commands,
    root: Path | None,
    non_interactive: bool,
    answers_file: Path | None,
    offline: bool,
    wait_seconds: float,
) -> None:
    """Install: config, secrets, POS token and service; start it, wait for it, check the clouds."""
    if non_interactive and answers_file is None:
        raise click.UsageError("--non-interactive needs --answers FILE.toml")
    given = _answers(answers_file) if answers_file else wizard.ask()
    where = steps.layout(root)
    raw, new_secrets = answers.config_and_secrets(given, where.config_paths())
    _guarded(lambda: steps.check_config(raw, where, new_secrets))
    owner = steps.ensure_user(commands, where)
    with _os_errors():
        steps.make_dirs(where, owner)
        steps.write_secrets(where, new_secrets, owner)
        token = steps.ensure_token(where, owner)
        steps.write_config(where, raw, owner)
        _register(commands, where).restart()
    settings = _settings(where)
    _wait(settings, wait_seconds)
    click.echo(f"Installed; the agent answers at {steps.health_url(settings)}")
    click.echo(f"POS token: in {token} (give it to the POS; it is not shown here)")
    if not offline:
        _report(checks.clouds(settings), failure="installed, but a cloud check failed")


@main.command()
@ROOT_OPTION
@OFFLINE_OPTION
@click.pass_obj
def verify(commands: Commands, root: Path | None, offline: bool) -> None:
    """Check this till: service, port, permissions, disk, each cloud's credentials and clock."""
    where = steps.layout(root)
    settings = _settings(where)
    found = checks.local(settings, where, _manager(commands, where), steps.owner_of(commands))
    if not offline:
        found += checks.clouds(settings)
    _report(found, failure="some checks failed")


@main.command()
@ROOT_OPTION
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="e.g. --set destinations.engage.profile=production (repeatable).",
)
@click.option(
    "--secret",
    "secret_names",
    multiple=True,
    metavar="NAME",
    help="Replace the secret file NAME; its value is asked for, not shown.",
)
@click.option("--no-restart", is_flag=True, help="Leave a running agent as it is.")
@WAIT_OPTION
@click.pass_obj
def configure(
    commands: Commands,
    root: Path | None,
    assignments: tuple[str, ...],
    secret_names: tuple[str, ...],
    no_restart: bool,
    wait_seconds: float,
) -> None:
    """Change settings or secrets, checked as a whole before writing; the queue is untouched."""
    where = steps.layout(root)
    raw = _read_config(where)
    _guarded(lambda: _apply(raw, assignments))
    new_secrets = {_secret_name(n): click.prompt(n, hide_input=True) for n in secret_names}
    settings = _guarded(lambda: steps.check_config(raw, where, new_secrets))
    owner = steps.owner_of(commands)
    with _os_errors():
        steps.write_secrets(where, new_secrets, owner)
        steps.write_config(where, raw, owner)
        manager = _register(commands, where) if new_secrets else _manager(commands, where)
        restart = manager.state() == "active" and not no_restart
        if restart:
            manager.restart()
    if restart:
        _wait(settings, wait_seconds)
    click.echo("Configuration written" + ("; the agent restarted" if restart else ""))


@main.command()
@ROOT_OPTION
@click.option(
    "--wheel",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A new till_agent wheel to install into this environment first.",
)
@WAIT_OPTION
@click.pass_obj
def upgrade(commands: Commands, root: Path | None, wheel: Path | None, wait_seconds: float) -> None:
    """Stop, replace the program, migrate the stores (backed up first), start; the queue stays."""
    where = steps.layout(root)
    settings = _settings(where)
    manager = _manager(commands, where)
    with _os_errors():
        manager.stop()
    try:
        backups = steps.upgrade_stores(settings, _migration(commands, root, wheel, settings))
    except (AgentError, CommandError, OSError, sqlite3.Error) as exc:
        raise click.ClickException(
            f"the upgrade failed and the stores are back as they were ({exc}). The service is "
            "stopped: put the previous version back (till-install upgrade --wheel OLD.whl)."
        ) from exc
    waiting = sum(steps.waiting(settings).values())
    with _os_errors():
        _register(commands, where).start()
    _wait(settings, wait_seconds)
    click.echo(f"Upgraded; {waiting} items waiting to be delivered are kept.")
    click.echo(f"Store backups from before the upgrade: {', '.join(str(p) for p in backups)}")


@main.command(hidden=True)
@ROOT_OPTION
def migrate(root: Path | None) -> None:
    """Migrate the stores with this program's code (upgrade runs it after replacing the wheel)."""
    settings = _settings(steps.layout(root))
    _guarded(lambda: steps.migrate_stores(settings))


@main.command()
@ROOT_OPTION
@click.option("--force", is_flag=True, help="Remove even though items are not delivered yet.")
@click.option(
    "--purge-data", is_flag=True, help="Also erase the data and log directories (overwritten)."
)
@click.option(
    "--check",
    is_flag=True,
    help="Change nothing: only refuse (exit 1) if items wait (the MSI asks before it starts).",
)
@click.pass_obj
def uninstall(
    commands: Commands, root: Path | None, force: bool, purge_data: bool, check: bool
) -> None:
    """Remove the service, config and secrets; refuses while items wait unless --force."""
    where = steps.layout(root)
    if check:
        _refuse_while_waiting(where)
        return
    manager = _manager(commands, where)
    with _os_errors():
        manager.stop()
    if where.config_file.exists():
        waiting = steps.waiting(_settings(where))
        if sum(waiting.values()) and not force:
            with _os_errors():
                manager.start()
            counts = ", ".join(f"{name} {n}" for name, n in waiting.items() if n)
            raise click.ClickException(
                f"items not delivered yet ({counts}); the agent is running again to send them. "
                "Watch `till-agent status`, or use --force."
            )
    with _os_errors():
        manager.unregister()
        steps.remove_config(where)
        erased = steps.purge(commands, where) if purge_data else 0
    click.echo("Uninstalled" + (f"; {erased} data and log files erased" if purge_data else ""))


def _refuse_while_waiting(where: steps.Layout) -> None:
    """uninstall --check: the running agent (or its stores) asked; nothing is stopped. What it
    cannot read (not elevated, nothing installed) it leaves to the removal, which counts again."""
    try:
        waiting = steps.waiting_now(steps.load_settings(where))
    except (AgentError, OSError, requests.RequestException, ValueError, KeyError) as exc:
        click.echo(f"Cannot tell from here what waits ({exc}); the removal counts again")
        return
    if sum(waiting.values()):
        counts = ", ".join(f"{name} {n}" for name, n in waiting.items() if n)
        raise click.ClickException(
            f"items not delivered yet ({counts}); nothing was removed and the agent keeps "
            "sending. Watch `till-agent status`, or use `till-install uninstall --force`."
        )
    click.echo("Nothing waits to be delivered")


# --- helpers ------------------------------------------------------------------------------


def _answers(path: Path) -> answers.Answers:
    try:
        return answers.load(path)
    except answers.AnswersError as exc:
        raise click.ClickException(_lines("the answers file has problems", exc.problems)) from exc


def _guarded(action: Callable[[], T]) -> T:
    """ConfigError and bad keys become one message listing every problem."""
    try:
        return action()
    except ConfigError as exc:
        raise click.ClickException(_lines("the configuration has problems", exc.problems)) from exc
    except (AgentError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


@contextmanager
def _os_errors() -> Iterator[None]:
    try:
        yield
    except (CommandError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


def _lines(title: str, problems: list[str]) -> str:
    return "\n".join([title + ":", *(f"  - {p}" for p in problems)])


def _settings(where: steps.Layout) -> config.Settings:
    return _guarded(lambda: steps.load_settings(where))


def _read_config(where: steps.Layout) -> dict[str, Any]:
    try:
        return tomllib.loads(where.config_file.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.ClickException(f"cannot read {where.config_file}: {exc}") from exc


def _apply(raw: dict[str, Any], assignments: tuple[str, ...]) -> None:
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep:
            raise ValueError(f"--set {assignment}: expected KEY=VALUE")
        tomlfile.set_key(raw, key.strip(), tomlfile.parse_value(value.strip()))


def _secret_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise click.UsageError(f"--secret {name!r}: a plain file name such as engage-test-api-key")
    return name


def _manager(commands: Commands, where: steps.Layout) -> ServiceManager:
    if sys.platform == "win32":
        return WindowsServices(commands)
    return Systemd(commands, where.unit_dir, where.credentials_dir)


def _register(commands: Commands, where: steps.Layout) -> ServiceManager:
    manager = _manager(commands, where)
    credentials = sorted(p for p in where.credentials_dir.glob("*") if p.is_file())
    manager.register(steps.program_path(), credentials)
    return manager


def _migration(
    commands: Commands, root: Path | None, wheel: Path | None, settings: config.Settings
) -> Callable[[], None]:
    """In this process, or (after a new wheel) in a new one that runs the new code."""
    if wheel is None:
        return lambda: steps.migrate_stores(settings)

    def replace_then_migrate() -> None:
        python = [sys.executable, "-m"]
        commands.run([*python, "pip", "install", "--upgrade", "--no-deps", str(wheel)])
        commands.run([*python, "installer", "migrate", *(["--root", str(root)] if root else [])])

    return replace_then_migrate


def _wait(settings: config.Settings, wait_seconds: float) -> None:
    url = steps.health_url(settings)
    status = steps.wait_healthy(url, wait_seconds)
    if status is not None and status != 200:
        raise click.ClickException(
            f"the agent runs but reports a problem at {url} (HTTP {status}): see "
            "`till-agent status` (a store, the disk, or a cloud nothing reached for long)"
        )
    if status is None:
        raise click.ClickException(
            f"the agent did not answer {url} within {wait_seconds:.0f} s; see "
            "`journalctl -u till-agent` (Linux) or the Event Log (Windows)"
        )


def _report(found: list[Check], *, failure: str) -> None:
    for check in found:
        click.echo(f"{'ok  ' if check.ok else 'FAIL'}  {check.name:<28} {check.detail}")
    failed = [c.name for c in found if not c.ok]
    if failed:
        raise click.ClickException(f"{failure}: {', '.join(failed)}")
