"""The till-install command line (click): the technician's installer."""

from __future__ import annotations

import copy
import json
import sqlite3
import sys
import tomllib
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
import requests

from agent import __version__
from agent.core import config, paths
from agent.core.errors import AgentError, ConfigError
from agent.ops import doctor
from agent.ops.doctor import Check
from installer import answers, checks, environments, services, steps, tomlfile, wizard
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
@click.option(
    "--no-start",
    is_flag=True,
    help="Write and enable everything, start nothing (an image being staged; with --root).",
)
@click.pass_obj
def install(
    commands: Commands,
    root: Path | None,
    non_interactive: bool,
    answers_file: Path | None,
    offline: bool,
    wait_seconds: float,
    no_start: bool,
) -> None:
    """Install: config, secrets, POS token and service; start it, wait for it, check the clouds."""
    if non_interactive and answers_file is None:
        raise click.UsageError("--non-interactive needs --answers FILE.toml")
    where = steps.layout(root)
    _check_interpreter(where)
    given, problems = _answers(answers_file) if answers_file else (wizard.ask(), [])
    raw, new_secrets = answers.config_and_secrets(given, where.config_paths())
    try:
        steps.check_config(raw, where, new_secrets)
    except ConfigError as exc:
        problems += exc.problems
    if problems:  # every problem of every kind, in one pass; nothing is written
        title = "the answers file has problems" if answers_file else "the answers have problems"
        raise click.ClickException(_lines(title, problems))
    owner = steps.ensure_user(commands, where)
    with _os_errors():
        steps.make_dirs(where, owner)
        steps.write_secrets(where, new_secrets, owner)
        token = steps.ensure_token(where, owner)
        steps.write_config(where, raw, owner)
    click.echo(_token_line(where, token))
    manager = _manager(commands, where)
    not_starting = "--no-start was given" if no_start else manager.unavailable()
    with _os_errors():
        _register(commands, where, manager, offline=no_start and root is not None)
        if not_starting is None:
            manager.restart()
    if not_starting is not None:
        click.echo(_not_started(where, not_starting))
        return
    settings = _settings(where)
    _wait(settings, wait_seconds)
    click.echo(f"Installed; the agent answers at {steps.health_url(settings)}")
    if not offline:
        _report(doctor.clouds(settings), failure="installed, but a cloud check failed")


def _token_line(where: steps.Layout, token: Path) -> str:
    on_till = "" if where.root is None else f" (on the till: {where.target(token)})"
    return f"POS token: in {token}{on_till}; give it to the POS (it is not shown here)"


def _not_started(where: steps.Layout, reason: str) -> str:
    """What an install that could not start the agent did, did not do, and how to finish."""
    unit = where.target(where.unit_dir / services.UNIT_NAME)
    program = where.target(steps.program_path())
    return "\n".join(
        [
            f"Installed, not started: {reason}.",
            f"  written: {where.target(where.config_file)}, the secrets and the POS token in "
            f"{where.target(where.credentials_dir)}, the unit {unit} and its drop-in; the unit "
            "is enabled, so it starts at the next boot",
            "  not done: systemctl daemon-reload and start, the wait for the agent to answer, "
            "the cloud checks",
            "  to finish on the till once systemd runs: sudo systemctl daemon-reload && sudo "
            f"systemctl start till-agent && sudo {program.parent / 'till-install'} verify",
            f"  in a container without systemd: run `{program} run` as its main process "
            "(docs/install.md, Containers)",
        ]
    )


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
        found += doctor.clouds(settings)
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
@click.option(
    "--offline", is_flag=True, help="Do not check changed credentials against the clouds."
)
@WAIT_OPTION
@click.pass_obj
def configure(
    commands: Commands,
    root: Path | None,
    assignments: tuple[str, ...],
    secret_names: tuple[str, ...],
    no_restart: bool,
    offline: bool,
    wait_seconds: float,
) -> None:
    """Change settings or secrets, checked as a whole (and each changed cloud's credentials
    against it) before writing; the queue is untouched."""
    where = steps.layout(root)
    raw = _read_config(where)
    old = copy.deepcopy(raw)
    _guarded(lambda: _apply(raw, assignments))
    new_secrets = {_secret_name(n): click.prompt(n, hide_input=True) for n in secret_names}
    settings = _guarded(lambda: steps.check_config(raw, where, new_secrets))
    changed = environments.touched(old, raw, new_secrets)
    if changed and not offline:
        reader = steps.pending_first(where, new_secrets)
        _require_working(settings, reader, changed, "nothing was changed")
    restarted = _write_and_restart(
        commands, where, (raw, new_secrets), restart=not no_restart, wait_seconds=wait_seconds
    )
    click.echo("Configuration written" + ("; the agent restarted" if restarted else ""))


@main.command("switch-environment")
@ROOT_OPTION
@click.argument("environment", type=click.Choice(answers.ENVIRONMENTS))
@click.option(
    "--force", is_flag=True, help="Switch although items wait (they go to the new clouds)."
)
@click.option("--no-restart", is_flag=True, help="Leave a running agent as it is.")
@WAIT_OPTION
@click.pass_obj
def switch_environment(
    commands: Commands,
    root: Path | None,
    environment: str,
    force: bool,
    no_restart: bool,
    wait_seconds: float,
) -> None:
    """Put every cloud on its test or production credentials: each checked against its cloud
    first; nothing changes unless all work."""
    where = steps.layout(root)
    raw = _guarded(lambda: environments.switched(_read_config(where), environment))
    settings = _guarded(lambda: steps.check_config(raw, where))
    names = [d.name for d in settings.enabled_destinations]
    _require_working(settings, None, names, "the till stays as it was")
    waiting = sum(steps.waiting(settings).values())
    if waiting and not force:
        raise click.ClickException(
            f"{waiting} items wait to be delivered; they would go to the {environment} clouds. "
            "Let them drain (`till-agent status`), or add --force"
        )
    restarted = _write_and_restart(
        commands, where, (raw, {}), restart=not no_restart, wait_seconds=wait_seconds
    )
    click.echo(
        f"Switched to {environment}: {', '.join(names)}"
        + ("; the agent restarted" if restarted else " (restart the agent to use it)")
    )


def _require_working(
    settings: config.Settings,
    read_secret: Callable[[str], str] | None,
    names: Collection[str],
    otherwise: str,
) -> None:
    """Each named cloud accepts its (new) credentials, or the command stops: `otherwise`."""
    found = [c for c in doctor.clouds(settings, read_secret, names) if c.name.startswith("cloud")]
    for check in found:
        click.echo(f"{'ok  ' if check.ok else 'FAIL'}  {check.name:<28} {check.detail}")
    failed = [c.name for c in found if not c.ok]
    if failed:
        raise click.ClickException(
            f"the new settings do not work for {', '.join(failed)}; {otherwise}"
        )


def _write_and_restart(
    commands: Commands,
    where: steps.Layout,
    change: tuple[dict[str, Any], dict[str, str]],
    *,
    restart: bool,
    wait_seconds: float,
) -> bool:
    """Write the secrets and the config; restart a running agent and wait for it (True)."""
    raw, new_secrets = change
    owner = steps.owner_of(commands)
    with _os_errors():
        steps.write_secrets(where, new_secrets, owner)
        steps.write_config(where, raw, owner)
        manager = _register(commands, where) if new_secrets else _manager(commands, where)
        restarted = restart and manager.unavailable() is None and manager.state() == "active"
        if restarted:
            manager.restart()
    if restarted:
        _wait(steps.load_settings(where), wait_seconds)
    return restarted


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
        _register(commands, where, manager)
        if manager.unavailable() is None:
            manager.start()
    if manager.unavailable() is None:
        _wait(settings, wait_seconds)
    else:
        click.echo(f"Not started: {manager.unavailable()}.")
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
                if manager.unavailable() is None:
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


def _answers(path: Path) -> tuple[answers.Answers, list[str]]:
    try:
        return answers.check(answers.read(path))
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
    return Systemd(commands, where.unit_dir, where.credentials_dir, where.root)


def _register(
    commands: Commands,
    where: steps.Layout,
    manager: ServiceManager | None = None,
    *,
    offline: bool = False,
) -> ServiceManager:
    """The service definition, naming the target system's paths (a staged root taken off)."""
    manager = manager or _manager(commands, where)
    credentials = sorted(p for p in where.credentials_dir.glob("*") if p.is_file())
    targets = [where.target(p) for p in credentials]
    manager.register(where.target(steps.program_path()), targets, offline=offline)
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


def _check_interpreter(where: steps.Layout) -> None:
    """Refuse (warn, when staging) a program the unit's sandbox would hide from the service."""
    problems = steps.interpreter_problems()
    if not problems or sys.platform == "win32":
        return
    text = (
        f"the service could not start the agent installed here: {'; '.join(problems)}, which "
        "the unit hides from it (ProtectHome=yes, PrivateTmp=yes). Install it into an "
        "environment made with the system's Python: `sudo /usr/bin/python3 -m venv "
        "/opt/till-agent`, `sudo /opt/till-agent/bin/pip install till_agent-*.whl`, then run "
        "`sudo /opt/till-agent/bin/till-install install` (docs/install.md)"
    )
    if where.root is None:
        raise click.ClickException(text)
    click.echo(f"warning: {text}", err=True)


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
