"""The till-agent command line: a few lines per command over the library."""

from __future__ import annotations

import json
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import msgspec
import requests
from tqdm import tqdm

from agent import __version__, app, connectors
from agent.api.routes import replay_plan
from agent.core import config, filemodes, logs, wording
from agent.core.errors import (
    AgentError,
    AlreadyRunningError,
    ConfigError,
    InvalidRequestError,
    NotFoundError,
)
from agent.core.reasons import printable
from agent.intake import backfill
from agent.ops import qareport, render, support
from agent.ops.reconcile import Reconciler
from agent.ops.status import describe_cache

CONFIG_OPTION = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"The TOML config file (default: ${config.CONFIG_ENV}, then the system location).",
)


@click.group()
@click.version_option(__version__, prog_name="till-agent")
def main() -> None:
    """Till Agent: durable local intake for POS tills, delivered to the cloud when it answers."""
    filemodes.owner_only_from_now_on()  # stores, logs, bundles, exports: owner-only


@main.command()
@CONFIG_OPTION
def run(config_file: str | None) -> None:
    """Run the agent in the foreground until SIGTERM or SIGINT."""
    settings = load_settings(config_file, every_connector=True)
    logs.setup(
        settings.agent.log_level,
        log_dir=settings.agent.log_dir,
        retention_days=settings.privacy.log_retention_days,
    )
    stop = _stop_on_signals()
    try:
        app.run(settings, stop)  # READY/WATCHDOG/STOPPING to systemd when it runs us
    except AgentError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the raw /v1/status answer.")
def status(config_file: str | None, as_json: bool) -> None:
    """Show what the running agent is doing (queues, destinations, counters)."""
    settings = load_settings(config_file)
    answer = fetch_status(settings)
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    click.echo(format_status(answer))


@main.command()
@click.option("--seconds", default=30.0, show_default=True, help="How long the till sells.")
def demo(seconds: float) -> None:
    """Sandbox cloud, agent and a selling till, through an outage and a 429 storm (~30 s)."""
    from agent import demo as demo_run  # the sandbox is for the demo and tests only

    logs.setup("ERROR")
    if not demo_run.run_demo(seconds, click.echo):
        raise click.ClickException("some receipt did not arrive exactly once (see above)")


@main.command()
@click.option("--port", default=8900, show_default=True, help="Loopback port to listen on.")
@click.option("--seed", default=1, show_default=True, help="Seed for generated data and faults.")
@click.option(
    "--lightspeed-customers",
    default=0,
    show_default=True,
    help="Synthetic customers to start with.",
)
@click.option(
    "--lightspeed-rate-limit",
    default=350,
    show_default=True,
    help="Lightspeed requests per window.",
)
@click.option(
    "--lightspeed-rate-window",
    default=300.0,
    show_default=True,
    help="Lightspeed's rate window in seconds (5 minutes, as Lightspeed's).",
)
def sandbox(
    port: int,
    seed: int,
    lightspeed_customers: int,
    lightspeed_rate_limit: int,
    lightspeed_rate_window: float,
) -> None:
    """The sandbox cloud alone (Engage, Loaded-style analytics, Lightspeed, webhook) on loopback."""
    from agent.sandbox import SandboxCloud  # the sandbox is for rehearsals, the demo and tests

    logs.setup("WARNING")
    _check_port_free(port)  # before any server starts: a clean one-line refusal
    cloud = SandboxCloud(
        seed=seed,
        lightspeed_rate_limit=lightspeed_rate_limit,
        lightspeed_rate_window_seconds=lightspeed_rate_window,
    )
    cloud.lightspeed.seed_customers(lightspeed_customers)
    cloud.serve(port=port)
    click.echo(f"sandbox cloud at {cloud.url} (Ctrl-C stops it); see docs/sandbox.md")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        cloud.stop()


def _check_port_free(port: int) -> None:
    if port == 0:
        return
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise click.ClickException(
                f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc} (choose another --port)"
            ) from exc


@main.command("serve-demo")
@click.option(
    "--port", default=8765, show_default=True, help="Loopback port for the agent (0: any free)."
)
def serve_demo(port: int) -> None:
    """The agent and the sandbox cloud on throw-away folders, in the foreground; prints the
    agent's URL and token and a curl to try. Nothing outside its temporary folder is touched."""
    from agent import demo as demo_run  # the sandbox is for the demo and tests only
    from agent.sandbox import SandboxCloud

    _check_port_free(port)
    with tempfile.TemporaryDirectory(prefix="till-agent-demo-") as directory:
        cloud = SandboxCloud(seed=1).serve()
        try:
            settings = demo_run.demo_settings(Path(directory), cloud.url, port=port)
            logs.setup("WARNING", log_dir=settings.agent.log_dir)
            serve_until_signalled(
                settings, announce=lambda url, token: announcement(url, token, directory, cloud.url)
            )
        finally:
            cloud.stop()


@main.command()
@CONFIG_OPTION
def purge(config_file: str | None) -> None:
    """Run the retention purge now (the running agent's, or on the stores if it is stopped)."""
    settings = load_settings(config_file)
    report = on_stores_or_agent(
        settings, ("POST", "/v1/privacy/purge", {}), lambda m: asdict(m.privacy.purge())
    )
    click.echo(json.dumps(report, indent=2))


@main.command()
@CONFIG_OPTION
@click.option("--email", default=None, help="The person's email address.")
@click.option("--mobile-phone", default=None, help="The person's mobile phone number.")
def forget(config_file: str | None, email: str | None, mobile_phone: str | None) -> None:
    """Erase one person from every local store (queue, quarantine, ledger, cache)."""
    if not email and not mobile_phone:
        raise click.UsageError("give --email, --mobile-phone or both")
    settings = load_settings(config_file)
    body = {"email": email, "mobilePhone": mobile_phone}
    report = on_stores_or_agent(
        settings,
        ("POST", "/v1/privacy/forget", {k: v for k, v in body.items() if v}),
        lambda m: asdict(m.privacy.forget(email=email, mobile_phone=mobile_phone)),
    )
    click.echo(json.dumps(report, indent=2))


@main.group("dead-letters")
def dead_letters() -> None:
    """Items a cloud refused for good: list, show, retry (re-queue) or purge them."""


@dead_letters.command("list")
@CONFIG_OPTION
def dead_letters_list(config_file: str | None) -> None:
    """One line per dead letter: id, destination, record, status, reason, error ids."""
    settings = load_settings(config_file)
    letters = on_stores_or_agent(
        settings,
        ("GET", "/v1/dead-letters", None),
        lambda m: [wire(d) for d in m.dead_letters.all()],
    )
    for d in letters:  # printable(): ids and words from a POS or a cloud reach a terminal
        click.echo(
            f"{d['id']:>5}  {d['destination']:<12} {d['kind']:<8} "
            f"{printable(d['recordKey'], 60):<28} {d['status'] or '-':>4}  {d['errorId']}  "
            f"{printable(d['cloudErrorId'] or '-')}  {printable(d['reason'])}"
        )
    if not letters:
        click.echo("no dead letters")


@dead_letters.command("show")
@CONFIG_OPTION
@click.argument("dead_letter_id", type=int)
def dead_letters_show(config_file: str | None, dead_letter_id: int) -> None:
    """Everything kept about one dead letter (never its personal fields)."""
    settings = load_settings(config_file)
    letter = on_stores_or_agent(
        settings,
        ("GET", f"/v1/dead-letters/{dead_letter_id}", None),
        lambda m: wire(m.dead_letters.get(dead_letter_id)),
    )
    click.echo(json.dumps(letter, indent=2))


@dead_letters.command("retry")
@CONFIG_OPTION
@click.argument("dead_letter_id", type=int)
def dead_letters_retry(config_file: str | None, dead_letter_id: int) -> None:
    """Put a dead letter back at the end of its destination's queue."""
    settings = load_settings(config_file)
    on_stores_or_agent(
        settings,
        ("POST", f"/v1/dead-letters/{dead_letter_id}/retry", {}),
        lambda m: m.dead_letters.retry(dead_letter_id),
    )
    click.echo(f"dead letter {dead_letter_id} queued again")


@dead_letters.command("purge")
@CONFIG_OPTION
@click.argument("dead_letter_id", type=int)
def dead_letters_purge(config_file: str | None, dead_letter_id: int) -> None:
    """Delete a dead letter for good."""
    settings = load_settings(config_file)
    on_stores_or_agent(
        settings,
        ("DELETE", f"/v1/dead-letters/{dead_letter_id}", None),
        lambda m: m.dead_letters.purge(dead_letter_id),
    )
    click.echo(f"dead letter {dead_letter_id} deleted")


def wire(value: Any) -> dict[str, Any]:
    """A dataclass as the API shows it (camelCase keys)."""
    return {_camel(k): v for k, v in asdict(value).items()}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


ApiCall = tuple[str, str, dict[str, str] | None]


def on_stores_or_agent(
    settings: config.Settings, call: ApiCall, action: Callable[[app.Maintenance], Any]
) -> Any:
    """Run an action on the stores directly, or ask the running agent (which holds them)."""
    try:
        with app.maintenance(settings) as stores:
            return action(stores)
    except AlreadyRunningError:
        return call_agent(settings, *call)
    except NotFoundError as exc:
        raise click.ClickException(str(exc)) from exc


class AgentNotRunning(click.ClickException):
    """Nothing answers at the agent's address: a caller may say what that means for it."""


def call_agent(
    settings: config.Settings,
    method: str,
    path: str,
    body: dict[str, str] | None,
    read_timeout_seconds: float | None = 120,
) -> Any:
    """ask_agent for work that takes long: None waits however long it takes (a first
    contact download), while connecting still gives up after 5 s."""
    return ask_agent(settings, method, path, body, read_timeout_seconds=read_timeout_seconds)


def ask_agent(
    settings: config.Settings,
    method: str,
    path: str,
    body: dict[str, str] | None = None,
    *,
    read_timeout_seconds: float | None = 5,
) -> Any:
    """One call on the running agent's API; every way it can fail is one line of words.
    Connecting gives up after 5 s; the answer is awaited read_timeout_seconds (None: no limit)."""
    url = agent_url(settings) + path
    headers = auth_header(settings)
    try:
        response = requests.request(
            method,
            url,
            json=body,
            headers=headers,
            timeout=(5, read_timeout_seconds),
        )
    except requests.ConnectionError as exc:
        raise AgentNotRunning(
            f"the agent is not running: nothing answers at {agent_url(settings)} (start it: "
            "`systemctl start till-agent`, or `sc.exe start TillAgent` on Windows)"
        ) from exc
    except requests.Timeout as exc:
        raise click.ClickException(
            f"the agent at {agent_url(settings)} did not answer within "
            f"{read_timeout_seconds or 0:.0f} s; it may be stuck: see "
            "`journalctl -u till-agent` (Linux) or its log folder"
        ) from exc
    if response.status_code >= 300:
        raise click.ClickException(_refusal(url, response))
    return response.json()


def _refusal(url: str, response: requests.Response) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    return f"{url} answered HTTP {response.status_code}: {message}"


@main.command()
@CONFIG_OPTION
@click.option("--from", "first_day", required=True, type=click.DateTime(["%Y-%m-%d"]))
@click.option("--to", "last_day", required=True, type=click.DateTime(["%Y-%m-%d"]))
@click.option("--destination", default=None, help="Only this destination (default: all).")
@click.option(
    "--dry-run", is_flag=True, help="Only say what would be sent and what each cloud will do."
)
def replay(
    config_file: str | None,
    first_day: Any,
    last_day: Any,
    destination: str | None,
    dry_run: bool,
) -> None:
    """Send the receipts of a date range again (by their createdDate), at low priority."""
    settings = load_settings(config_file)
    start, end = first_day.date().isoformat(), last_day.date().isoformat()
    body: dict[str, Any] = {"from": start, "to": end}
    body |= ({"destination": destination} if destination else {}) | (
        {"dryRun": True} if dry_run else {}
    )
    answer = on_stores_or_agent(
        settings,
        ("POST", "/v1/replay", body),
        lambda m: (
            msgspec.to_builtins(replay_plan(m.journal.plan(start, end, destination)))
            if dry_run
            else {"queued": m.journal.replay(start, end, destination)}
        ),
    )
    if dry_run:
        click.echo(format_plan(answer))
        return
    click.echo(f"queued {answer['queued']} receipts again, behind live sales")


@main.command("retry-now")
@CONFIG_OPTION
@click.argument("destination", required=False)
def retry_now(config_file: str | None, destination: str | None) -> None:
    """Skip the back-off: try DESTINATION (or every destination) now, set-aside items too."""
    settings = load_settings(config_file)
    body = {"destination": destination} if destination else {}
    try:
        answer = call_agent(settings, "POST", "/v1/delivery/retry-now", body)
    except AgentNotRunning as exc:
        raise click.ClickException(
            "the agent is not running: everything waiting is tried as soon as it starts"
        ) from exc
    click.echo(f"trying now: {', '.join(answer['destinations']) or 'no destination delivers'}")


@main.group("set-aside")
def set_aside() -> None:
    """Items that failed on their own and wait their own back-off: list, show, release, or
    dead-letter them (the agent must be running)."""


def _on_agent(settings: config.Settings, method: str, path: str) -> Any:
    try:
        return call_agent(settings, method, path, {} if method == "POST" else None)
    except AgentNotRunning as exc:
        raise click.ClickException(
            "the agent is not running: set-aside items go back in line when it starts"
        ) from exc


@set_aside.command("list")
@CONFIG_OPTION
@click.option("--destination", default=None, help="Only this destination (default: all).")
def set_aside_list(config_file: str | None, destination: str | None) -> None:
    """One line per item: id, destination, record, attempts, next try, the reason in words."""
    settings = load_settings(config_file)
    query = f"?destination={quote(destination, safe='')}" if destination else ""
    items = _on_agent(settings, "GET", f"/v1/set-aside{query}")["items"]
    for item in items:
        click.echo(
            f"{item['id']:<18} {item['destination']:<12} {printable(item['recordKey'], 40):<28} "
            f"{item['attempts']:>3}  {item['nextAttemptAt'] or '-':<29}  "
            f"{printable(item['reason'] or '-')}"
        )
    if not items:
        click.echo("nothing is set aside")


@set_aside.command("show")
@CONFIG_OPTION
@click.argument("item_id")
def set_aside_show(config_file: str | None, item_id: str) -> None:
    """Everything known about one set-aside item (never its personal fields)."""
    settings = load_settings(config_file)
    item = _on_agent(settings, "GET", f"/v1/set-aside/{quote(item_id, safe='')}")
    click.echo(json.dumps(item, indent=2))


@set_aside.command("release")
@CONFIG_OPTION
@click.argument("item_id")
def set_aside_release(config_file: str | None, item_id: str) -> None:
    """Try ITEM_ID now, ahead of its back-off (it keeps its place in line)."""
    settings = load_settings(config_file)
    _on_agent(settings, "POST", f"/v1/set-aside/{quote(item_id, safe='')}/release")
    click.echo(f"{item_id} is tried now")


@set_aside.command("dead-letter")
@CONFIG_OPTION
@click.argument("item_id")
def set_aside_dead_letter(config_file: str | None, item_id: str) -> None:
    """Give up on ITEM_ID: it becomes a dead letter (`till-agent dead-letters retry` undoes it)."""
    settings = load_settings(config_file)
    _on_agent(settings, "POST", f"/v1/set-aside/{quote(item_id, safe='')}/dead-letter")
    click.echo(f"{item_id} is dead-lettered")


def format_plan(plan: Mapping[str, Any]) -> str:
    """A replay's dry run: each item, the id it goes out under, what the cloud will do."""
    lines = [
        f"{step['destination']:<12} {step['uniqueReceiptId']:<28} rev {step['revision']:<3} "
        f"as {step['sendsAs']:<32} {EFFECTS[step['effect']]}"
        for step in plan["steps"]
    ]
    lines.append(
        f"would queue {plan['wouldQueue']}: {plan['replaces']} replace what the cloud holds, "
        f"{plan['duplicates']} the cloud has and will ignore as duplicates (nothing queued)"
    )
    return "\n".join(lines)


EFFECTS = {
    "replaces": "replaces the cloud's copy",
    "duplicate": "ignored: the cloud has this id",
}


VERIFY_OPTION = click.option(
    "--verify",
    is_flag=True,
    help="Read back what each cloud holds, where it can be read (a small share of its rate).",
)


def _reconciler(stores: app.Maintenance, verify: bool) -> Reconciler:
    return stores.verifying_reconciler() if verify else stores.reconciler


@main.command()
@CONFIG_OPTION
@click.option("--date", "first_day", required=True, type=click.DateTime(["%Y-%m-%d"]))
@click.option("--to", "last_day", default=None, type=click.DateTime(["%Y-%m-%d"]))
@click.option("--destination", default=None, help="Only this destination (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print the /v1/reconciliation answer.")
@VERIFY_OPTION
def reconcile(
    config_file: str | None,
    first_day: Any,
    last_day: Any,
    destination: str | None,
    as_json: bool,
    verify: bool,
) -> None:
    """Did the day's takings arrive in each cloud to the cent? What differs, and how to fix it."""
    settings = load_settings(config_file)
    start = first_day.date().isoformat()
    end = (last_day or first_day).date().isoformat()
    query = f"from={start}&to={end}" + (f"&destination={destination}" if destination else "")
    query += "&verify=true" if verify else ""
    try:
        answer = on_stores_or_agent(
            settings,
            ("GET", f"/v1/reconciliation?{query}", None),
            lambda m: _reconciler(m, verify).reconcile(start, end, destination, verify=verify),
        )
    except InvalidRequestError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(json.dumps(answer, indent=2) if as_json else render.reconciliation_text(answer))


@main.command("qa-report")
@CONFIG_OPTION
@click.option("--from", "first_day", required=True, type=click.DateTime(["%Y-%m-%d"]))
@click.option("--to", "last_day", default=None, type=click.DateTime(["%Y-%m-%d"]))
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="The file to write (default: qa-report-STORE-TILL-FROM-TO.md or .json here).",
)
@click.option(
    "--format",
    "form",
    type=click.Choice(["md", "json"]),
    default="md",
    show_default=True,
    help="md: Markdown with the JSON at its end; json: the JSON alone.",
)
@VERIFY_OPTION
def qa_report(
    config_file: str | None,
    first_day: Any,
    last_day: Any,
    output: str | None,
    form: str,
    verify: bool,
) -> None:
    """The go-live QA report for a vendor: what was tested, when, and whether it all arrived."""
    settings = load_settings(config_file)
    start = first_day.date().isoformat()
    end = (last_day or first_day).date().isoformat()
    query = f"from={start}&to={end}" + ("&verify=true" if verify else "")
    try:
        report = on_stores_or_agent(
            settings,
            ("GET", f"/v1/qa-report?{query}", None),
            lambda m: qareport.qa_report(_reconciler(m, verify), start, end, verify=verify),
        )
    except InvalidRequestError as exc:
        raise click.UsageError(str(exc)) from exc
    agent = settings.agent
    target = Path(output or f"qa-report-{agent.store_id}-{agent.till_id}-{start}-{end}.{form}")
    text = render.qa_markdown(report) if form == "md" else json.dumps(report, indent=2) + "\n"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    verdict = "every number adds up" if report["allMatch"] else "some numbers differ"
    click.echo(f"wrote {target}: {len(report['receipts'])} receipts, {verdict}")


@main.group()
def contacts() -> None:
    """The local contact cache."""


@contacts.command("sync")
@CONFIG_OPTION
def contacts_sync(config_file: str | None) -> None:
    """Sync the contact cache from [contacts] source now (the first run downloads everything)."""
    settings = load_settings(config_file)
    if not settings.contacts.source:
        raise click.ClickException("no contact source: set [contacts] source in the config")
    try:
        with app.maintenance(settings) as stores, tqdm(unit="contact") as bar:
            sync = stores.contact_sync()
            assert sync is not None
            report = sync.run_once(
                progress=lambda changes: follow(bar, sync.tracker.snapshot()["progress"], changes)
            )
        answer: dict[str, Any] = asdict(report)
    except AlreadyRunningError:
        answer = sync_on_the_agent(settings)
    except AgentError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(answer, indent=2))


def follow(bar: tqdm[Any], download: Mapping[str, Any] | None, changes: int = 0) -> None:
    """The bar at the first download's count (its total once the source said it), or moved on
    by a delta run's changes; tqdm shows the rate and, with a total, the time left."""
    if download is None:
        bar.update(changes)
        return
    if download["total"] is not None and bar.total != download["total"]:
        bar.total = download["total"]
    bar.update(max(0, download["contacts"] - bar.n))


def sync_on_the_agent(settings: config.Settings) -> Any:
    """POST /v1/contacts/sync on the running agent (however long a first download takes),
    its progress followed on a bar from /v1/status meanwhile."""
    with ThreadPoolExecutor(1) as pool, tqdm(unit="contact") as bar:
        answer = pool.submit(call_agent, settings, "POST", "/v1/contacts/sync", {}, None)
        while not answer.done():
            follow(bar, fetch_status(settings)["contacts"].get("firstDownload"))
            wait([answer], timeout=0.5)
    return answer.result()


@main.command("import")
@CONFIG_OPTION
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def import_history(config_file: str | None, file: str) -> None:
    """Load a site's history (JSONL or CSV of receipts) in the low-priority lane; re-runnable."""
    settings = load_settings(config_file)
    path = Path(file)
    with tqdm(total=backfill.count_receipts(path), unit="receipt") as bar:
        try:
            with app.maintenance(settings) as stores:
                summary = backfill.run_import(path, local_submitter(stores), bar.update)
        except AlreadyRunningError:
            summary = backfill.run_import(path, api_submitter(settings), bar.update)
    click.echo(
        f"accepted {summary.accepted}, duplicates {summary.duplicates}, "
        f"amended {summary.amended}, invalid {summary.invalid}"
    )
    for line in summary.invalid_lines:
        click.echo(f"  {line}")


def local_submitter(stores: app.Maintenance) -> backfill.Submit:
    def submit(body: dict[str, Any]) -> str:
        return stores.intake.put_receipt(backfill.check(body), low_priority=True).status

    return submit


def api_submitter(settings: config.Settings) -> backfill.Submit:
    session = requests.Session()
    session.headers.update(auth_header(settings))
    url = agent_url(settings) + "/v1/receipts?lane=low"

    def submit(body: dict[str, Any]) -> str:
        response = session.post(url, json=body, timeout=30)
        if response.status_code == 422:
            raise InvalidRequestError(response.json()["error"]["message"], code="invalid_body")
        if response.status_code >= 300:
            raise click.ClickException(f"{url} answered {response.status_code}")
        return str(response.json()["status"])

    return submit


@main.command()
@CONFIG_OPTION
def doctor(config_file: str | None) -> None:
    """Check this till: data directory, disk, stores, keys, token, the agent, each cloud, clock."""
    from agent.ops import doctor as checks

    settings = load_settings(config_file)
    results = checks.examine(settings)
    for check in results:
        click.echo(f"{'ok  ' if check.ok else 'FAIL'}  {check.name:<24} {check.detail}")
    if not all(check.ok for check in results):
        raise click.ClickException("some checks failed (see above)")


@main.command("support-bundle")
@CONFIG_OPTION
@click.option(
    "--output", type=click.Path(file_okay=False), default=".", help="Directory for the zip."
)
def support_bundle(config_file: str | None, output: str) -> None:
    """A zip for support: config (no secrets), status, recent logs, versions, store checks."""
    environ = config.environment()
    path = config.config_path(config_file, environ)
    settings = load_settings(config_file)
    try:
        status_answer: dict[str, Any] | None = fetch_status(settings)
    except click.ClickException:
        status_answer = None  # the agent is stopped: the bundle says so
    target = Path(output) / support.bundle_name(settings)
    target.parent.mkdir(parents=True, exist_ok=True)  # owner-only, as everything we make
    support.write_bundle(settings, path, status_answer, target)
    click.echo(f"wrote {target}")


@main.command()
def openapi() -> None:
    """Print the OpenAPI 3.1 document of the local API (docs/openapi.json is this output)."""
    from agent.api.schemas import openapi_document

    click.echo(json.dumps(openapi_document(), indent=2, sort_keys=True))


def load_settings(config_file: str | None, *, every_connector: bool = False) -> config.Settings:
    """The settings; with every_connector, each connector's keys and secrets checked too, in
    the same pass (what `run` needs before it starts anything)."""
    environ = config.environment()
    path = config.config_path(config_file, environ)
    try:
        if every_connector:
            return app.load_checked(path, environ)
        return config.load(path, environ, connectors.KINDS)
    except ConfigError as exc:
        lines = "\n".join(f"  - {problem}" for problem in exc.problems)
        raise click.ClickException(f"the configuration in {path} has problems:\n{lines}") from exc


def serve_until_signalled(
    settings: config.Settings, *, announce: Callable[[str, str], str] | None = None
) -> None:
    """Start the agent, stop it cleanly on SIGTERM/SIGINT."""
    stop = _stop_on_signals()
    try:
        agent = app.start(settings)
    except AgentError as exc:
        raise click.ClickException(str(exc)) from exc
    if announce is not None:
        click.echo(announce(agent.url, agent.token))
    try:
        stop.wait()
    finally:
        agent.stop()


def _stop_on_signals() -> threading.Event:
    """An event that SIGTERM (the service manager) or SIGINT (Ctrl-C) sets."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


DEMO_RECEIPT = (
    '{"uniqueReceiptId": "DEMO-0001", "receiptNumber": "0001", '
    '"createdDate": "2026-11-23T10:15:00+01:00", "storeExternalId": "demo-store", '
    '"currency": "SEK", "totalGrossPrice": "249.00", '
    '"paymentMethods": [{"type": "card", "value": "249.00"}], '
    '"items": [{"type": "PURCHASE", "sku": "1001", "articleNumber": "A-1001", '
    '"articleName": "Mug", "quantity": 1, "grossPaidPrice": "249.00", '
    '"taxAmount": "49.80", "taxPercent": "25"}]}'
)


def announcement(url: str, token: str, directory: str, cloud_url: str) -> str:
    """What serve-demo prints: where to call, the token, and calls to paste."""
    auth = f"-H 'Authorization: Bearer {token}'"
    return "\n".join(
        [
            "Till Agent is running (Ctrl-C stops it and removes its folder).",
            f"  URL:     {url}",
            f"  Token:   {token}",
            f"  Folder:  {directory} (data, logs, throw-away credentials)",
            f"  Cloud:   the sandbox cloud at {cloud_url} (docs/sandbox.md)",
            "Try (docs/api.md has more):",
            f"  curl -s {auth} -H 'Content-Type: application/json' \\",
            f"       -d '{DEMO_RECEIPT}' \\",
            f"       {url}/v1/receipts",
            f"  curl -s {auth} {url}/v1/receipts/DEMO-0001",
            f"  open {url}/ in a browser for the status page",
        ]
    )


def agent_url(settings: config.Settings) -> str:
    host, port = config.parse_listen(settings.api.listen)
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def auth_header(settings: config.Settings) -> dict[str, str]:
    path = settings.api.token_file
    try:
        token = path.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise click.ClickException(
            f"cannot read the POS token {path}: {exc.strerror or exc} (run as root, or give "
            "--config of the agent you mean)"
        ) from exc
    return {"Authorization": f"Bearer {token}"}


def fetch_status(settings: config.Settings) -> dict[str, Any]:
    answer: dict[str, Any] = ask_agent(settings, "GET", "/v1/status")
    return answer


def format_status(answer: Mapping[str, Any]) -> str:
    """The /v1/status answer as a technician reads it on a till's screen."""
    lines = [
        f"Till {answer['tillId']} of store {answer['storeId']}: {answer['status']}"
        f" (agent {answer['version']})",
        "",
        f"{'destination':<14}{'state':<16}{'queued':>7}{'oldest':>8}{'aside':>6}  last success",
    ]
    for d in answer["destinations"]:
        oldest = "-" if d["oldestAgeSeconds"] is None else wording.duration(d["oldestAgeSeconds"])
        lines.append(
            f"{d['name']:<14}{d['state']:<16}{d['depth']:>7}{oldest:>8}{d['setAside']:>6}"
            f"  {d['lastSuccessAt'] or '-'}"
        )
        if d["state"] not in ("online", "not delivering"):
            lines.append(f"{'':<14}{wording.destination_detail(d)}")
        if hint := wording.state_hint(d["state"]):
            lines.append(f"{'':<14}what to do: {hint}")
    problems = [c for c in answer["components"] if c["state"] != "ok"]
    lines += ["", "problems: none" if not problems else "problems:"]
    lines += [f"  {c['name']}: {c['state']} - {c['detail']}" for c in problems]
    lines.append(f"contact cache: {describe_cache(answer['contacts'])}")
    counters = answer["counters"]
    lines.append("since install: " + ", ".join(f"{k} {v}" for k, v in counters.items()))
    lines.append("storage: " + wording.storage(answer["storage"]))
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
