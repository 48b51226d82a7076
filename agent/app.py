"""Composition root: build every object from Settings, start them in order, stop them in reverse."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import filelock
import msgspec

from agent import __version__, api, connectors
from agent.api import schemas
from agent.api.routes import Services
from agent.api.server import Server
from agent.connectors.base import Sender
from agent.connectors.vault import ConnectorVault
from agent.contacts import FILE_NAME as CACHE_FILE_NAME
from agent.contacts import ContactCache
from agent.contacts.lookup import LiveLookup, Lookup
from agent.contacts.sync import ContactSync, SyncWorker
from agent.contacts.sync_progress import ProgressTracker
from agent.core import config, crypto, db, filemodes, health, models, notify, ratelimit
from agent.core.errors import AlreadyRunningError, ConfigError, NotFoundError, StorageError
from agent.core.failpoints import ENV, failpoint, hooked
from agent.core.metrics import Metrics
from agent.core.ratelimit import RateBudget
from agent.core.scheduler import Job, Scheduler
from agent.core.timebase import REAL, Timebase
from agent.delivery.bulk import BulkContacts, BulkSettings, BulkWriter
from agent.delivery.dispatch import ContactResolver, Dispatcher, watch_backlog
from agent.intake import Intake
from agent.ledger import DeadLetters, Journal, Ledger, outbox
from agent.ops.alerts import Alerts
from agent.ops.forecast import Forecast
from agent.ops.reconcile import CloudReader, Reconciler, readers_of
from agent.ops.status import StatusReporter
from agent.privacy import Privacy

log = logging.getLogger(__name__)

LOCK_FILE = "till-agent.lock"
# A worker whose loop has not come round for this long is stuck, and the watchdog stops pinging.
# A dispatcher's pass is one send (bounded by the connector's HTTP timeout) or a 1 s wait; a
# scheduler job can be a long initial contact download.
DISPATCH_STUCK_SECONDS = 300.0
BACKLOG_CHECK_SECONDS = 60
FORECAST_SECONDS = 60
SCHEDULER_STUCK_SECONDS = 1800.0
# The contact sync beats on every batch and every few seconds of a wait; a page is bounded by
# the HTTP timeout, the index build of a million contacts by about a minute.
SYNC_STUCK_SECONDS = 300.0
Beats = Callable[[str, float], notify.Heartbeat | None]  # beat it by calling it


@dataclass
class Agent:
    """A running agent: its stores, its threads, and what stop() must close."""

    settings: config.Settings
    token: str
    server: Server
    scheduler: Scheduler
    outbox: outbox.Outbox
    intake: Intake
    ledger: Ledger
    privacy: Privacy
    contacts: ContactCache
    vault: ConnectorVault
    http: connectors.Sessions
    lookup: Lookup
    metrics: Metrics
    health: health.Health
    lock: filelock.BaseFileLock
    dispatchers: tuple[Dispatcher, ...] = ()
    status: StatusReporter | None = None
    sync: SyncWorker | None = None
    budgets: tuple[RateBudget, ...] = ()
    stopped: bool = False

    @property
    def url(self) -> str:
        host = self.server.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.server.port}"

    def stop(self) -> None:
        """API first (refuse new work), then the stores, then the lock. Safe to call twice."""
        if self.stopped:
            return
        self.stopped = True
        log.info("stopping")
        self.server.stop(self.settings.api.stop_timeout_seconds)
        self.http.stopping.set()  # a send in flight ends at its next request; its item goes back
        self.scheduler.stop(self.settings.api.stop_timeout_seconds)
        if self.sync is not None:
            self.sync.stop(self.settings.api.stop_timeout_seconds)
        for dispatcher in self.dispatchers:
            dispatcher.stop(self.settings.api.stop_timeout_seconds)
        self.http.close()
        for budget in self.budgets:
            budget.close()
        self.lookup.close()
        self.contacts.close()
        self.vault.close()
        self.outbox.close()
        self.lock.release()
        log.info("stopped")


def start(
    settings: config.Settings,
    *,
    key_protector: crypto.KeyProtector | None = None,
    watchdog: notify.Watchdog | None = None,
    timebase: Timebase = REAL,
) -> Agent:
    """Open the stores, then the API last; raises before serving anything if a part fails.

    key_protector wraps the key file with an OS secret store (DPAPI, given by the Windows
    service); without one the key file is an owner-only file. With a watchdog, each worker
    loop beats a heartbeat of its own, so a stuck worker stops the service manager's pings.
    timebase is the clock the delivery workers wait on (a test's simulated one, or the real).
    """
    data_dir = settings.agent.data_dir
    _make_private_dir(data_dir)
    lock = acquire_lock(data_dir)
    try:
        return _start_locked(settings, lock, key_protector, _beats(watchdog), timebase)
    except BaseException:
        lock.release()
        raise


def _start_locked(
    settings: config.Settings,
    lock: filelock.BaseFileLock,
    key_protector: crypto.KeyProtector | None,
    beats: Beats,
    timebase: Timebase,
) -> Agent:
    board = health.Health()
    metrics = Metrics()
    quarantine_damaged_stores(settings.agent.data_dir, board)
    keyring, box = open_stores(settings, key_protector)
    failpoint("startup.after_recovery")
    box.observe_commit = metrics.commit_seconds.observe
    cache: ContactCache | None = None
    vault: ConnectorVault | None = None
    try:
        cache = open_cache(settings, keyring)
        vault = open_vault(settings, keyring)
        return _start_services(
            settings, lock, board, metrics, keyring, box, (cache, vault), beats, timebase
        )
    except BaseException:
        # Nothing is running yet (the port is bound before any thread starts): close the files.
        for store in (vault, cache):
            if store is not None:
                store.close()
        box.close()
        raise


def _start_services(
    settings: config.Settings,
    lock: filelock.BaseFileLock,
    board: health.Health,
    metrics: Metrics,
    keyring: crypto.Keyring,
    box: outbox.Outbox,
    stores: tuple[ContactCache, ConnectorVault],
    beats: Beats,
    timebase: Timebase,
) -> Agent:
    """Build the workers and the API on open stores; bind the port, then start threads."""
    cache, vault = stores
    intake = Intake(
        box,
        keyring,
        settings.enabled_destinations,
        settings.intake,
        board,
        settings.agent.default_region,
    )
    _report_storage(board)
    privacy = Privacy(box, keyring, settings, stores=[cache, vault], metrics=metrics)
    budgets = rate_budgets(settings)
    http = connectors.Sessions(f"TillAgent/{__version__}")
    connectors_by_name = build_connectors(settings, budgets, vault, http)
    ledger = Ledger(box, keyring)
    dispatchers = (
        _dispatchers(
            settings, connectors_by_name, budgets, box, ledger, board, metrics, beats, timebase
        )
        if settings.delivery.enabled
        else []
    )
    sync = _contact_sync(
        settings,
        connectors_by_name,
        cache,
        board,
        privacy,
        stop=threading.Event(),
        heartbeat=beats("contacts-sync loop", SYNC_STUCK_SECONDS)
        if settings.contacts.source
        else None,
    )
    worker = None if sync is None else SyncWorker(sync, board, sync.stopping)
    lookup = Lookup(
        cache,
        intake,
        live=_live_lookup(settings, connectors_by_name),
        live_timeout_seconds=settings.contacts.lookup_timeout_seconds,
        # Every request thread may look up email and phone at once, each within the bound.
        workers=settings.api.threads * 2,
        cache_state=None if sync is None else sync.tracker.snapshot,
    )
    token = read_or_create_token(settings.api.token_file)
    forecast = store_forecast(settings, box, intake, board)
    services = _services(
        settings, box, intake, board, privacy, lookup, metrics, sync, dispatchers, forecast
    )
    services.reconciler.readers.update(readers_of(connectors_by_name))
    server = _server(settings, services, token)  # binds now: a taken port fails here
    scheduler = _scheduler(settings, box, board, privacy, worker, beats, dispatchers, forecast)
    for dispatcher in dispatchers:
        dispatcher.start()
    if worker is not None:
        worker.start()
    scheduler.start()
    server.start()
    return Agent(
        settings=settings,
        token=token,
        server=server,
        scheduler=scheduler,
        outbox=box,
        intake=intake,
        ledger=ledger,
        privacy=privacy,
        contacts=cache,
        vault=vault,
        http=http,
        lookup=lookup,
        metrics=metrics,
        health=board,
        lock=lock,
        dispatchers=tuple(dispatchers),
        status=services.status,
        sync=worker,
        budgets=tuple(budgets.values()),
    )


def _report_storage(board: health.Health) -> None:
    if not hooked(db.NO_FSYNC_HOOK):
        board.report("storage", health.OK, "durable writes (WAL, synchronous=FULL)")
        return
    # Only the power-loss test's control run sets it; were a till ever to, health is red.
    log.error("test hook %s is on (%s): commits are NOT durable", db.NO_FSYNC_HOOK, ENV)
    board.report("storage", health.OK, "writes (WAL, synchronous=OFF: test hook)")
    board.report("test-hook", health.FAILING, f"{db.NO_FSYNC_HOOK} ({ENV}): NOT durable")


def _scheduler(
    settings: config.Settings,
    box: outbox.Outbox,
    board: health.Health,
    privacy: Privacy,
    sync: SyncWorker | None,
    beats: Beats,
    dispatchers: Sequence[Dispatcher],
    forecast: Forecast,
) -> Scheduler:
    identity = (settings.agent.store_id, settings.agent.till_id)
    alerts = Alerts(settings.alerts, DeadLetters(box), board, identity)
    jobs = [
        Job("purge", settings.privacy.purge_interval_minutes * 60, privacy.purge),
        Job("forecast", FORECAST_SECONDS, forecast.sample, at_start=True),
        # At start too: a store found damaged and moved aside is told now, not a digest later.
        Job("alerts", settings.alerts.digest_minutes * 60, alerts.send_digest, at_start=True),
        Job(
            "backlog",
            BACKLOG_CHECK_SECONDS,
            lambda: watch_backlog(dispatchers, board, settings.delivery.stalled_alarm_seconds),
        ),
    ]
    if sync is not None:
        jobs.append(
            # At start too: a fresh till (or one that was off) is not left without its cache
            # for a whole interval. The run itself is on the sync's own thread.
            Job(
                "contacts-sync-wake",
                settings.contacts.sync_interval_minutes * 60,
                sync.wake,
                at_start=True,
            )
        )
    return Scheduler(jobs, board, heartbeat=beats("scheduler loop", SCHEDULER_STUCK_SECONDS))


def store_forecast(
    settings: config.Settings,
    box: outbox.Outbox,
    intake: Intake,
    board: health.Health,
    monotonic: Callable[[], float] = time.monotonic,
) -> Forecast:
    """Hours until the store is full at the intake rate: the size cap or the disk, first."""
    limit = settings.storage.max_size_mb * 1024 * 1024

    def measure() -> tuple[int, int]:
        used, free_inside = box.page_bytes()
        disk = shutil.disk_usage(settings.agent.data_dir).free + free_inside
        return used, max(0, min(limit - used, disk))

    def records() -> int:
        counters = intake.counters()
        return sum(counters[name] for name in ("accepted", "amended", "contacts", "quarantined"))

    return Forecast(
        measure=measure,
        records=records,
        health=board,
        warn_below_hours=settings.alerts.store_full_warning_hours,
        monotonic=monotonic,
    )


def _snapshots(
    workers: Mapping[str, Dispatcher],
) -> Callable[[str], Mapping[str, Any] | None]:
    def snapshot(name: str) -> Mapping[str, Any] | None:
        worker = workers.get(name)
        return None if worker is None else worker.snapshot()

    return snapshot


def load_checked(path: Path, environ: Mapping[str, str]) -> config.Settings:
    """The config file and every connector's settings and secrets, checked in one pass."""
    return checked_settings(config.read(path), environ)


def checked_settings(
    raw: Mapping[str, Any],
    environ: Mapping[str, str],
    read_secret: Callable[[str], str] | None = None,
) -> config.Settings:
    """Structure, values, unknown keys and each connector (its keys and secrets) at once:
    ConfigError lists every problem of every kind."""
    settings, problems = config.parse(raw, environ, connectors.KINDS)
    reader = read_secret or config.secret_reader(settings.agent.credentials_dir)
    session = connectors.make_session(f"TillAgent/{__version__}")
    try:
        for destination in settings.enabled_destinations:
            if destination.kind not in connectors.REGISTRY:
                continue  # config.parse said so already
            try:
                connectors.build(destination, session, reader)
            except ConfigError as exc:
                problems += exc.problems
    finally:
        session.close()
    if problems:
        raise ConfigError(problems)
    return settings


def rate_budgets(settings: config.Settings) -> dict[str, RateBudget]:
    """One rate budget per enabled destination: every call with its credentials is charged."""
    return {
        destination.name: RateBudget(
            destination.name,
            requests_per_second=destination.requests_per_second,
            window_seconds=destination.rate_window_seconds,
            daily_calls=destination.daily_call_budget,
            monthly_calls=destination.monthly_call_budget,
            budget_file=settings.agent.data_dir / "ratelimit.sqlite",
        )
        for destination in settings.enabled_destinations
    }


def build_connectors(
    settings: config.Settings,
    budgets: Mapping[str, RateBudget] | None = None,
    vault: connectors.Vault | None = None,
    sessions: connectors.Sessions | None = None,
) -> dict[str, connectors.Connector]:
    """One connector per enabled destination, each with an HTTP session that charges its rate
    budget (when given) before every request; ConfigError lists every problem."""
    sessions = sessions or connectors.Sessions(f"TillAgent/{__version__}")
    problems: list[str] = []
    built: dict[str, connectors.Connector] = {}
    for destination in settings.enabled_destinations:
        budget = (budgets or {}).get(destination.name)
        session = sessions.new(None if budget is None else budget.before_request)
        try:
            built[destination.name] = connectors.build(
                destination, session, config.secret_reader(settings.agent.credentials_dir), vault
            )
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return built


def _dispatchers(
    settings: config.Settings,
    built: Mapping[str, connectors.Connector],
    budgets: Mapping[str, RateBudget],
    box: outbox.Outbox,
    ledger: Ledger,
    board: health.Health,
    metrics: Metrics,
    beats: Beats,
    timebase: Timebase,
) -> list[Dispatcher]:
    """A worker for each destination that takes anything (a pure contact source takes nothing)."""
    workers = []
    for destination in settings.enabled_destinations:
        kind = connectors.KINDS[destination.kind]
        if not destination.takes or not kind.sends:
            continue
        connector = built[destination.name]
        budget = budgets[destination.name]
        resolver = cast(ContactResolver, connector) if kind.finds_contacts else None
        bulk = _bulk_contacts(
            destination.name, kind, connector, box, ledger, budget, settings.delivery.in_flight
        )
        beat = beats(f"dispatch-{destination.name} loop", DISPATCH_STUCK_SECONDS)
        workers.append(
            Dispatcher(
                destination.name,
                cast(Sender, connector),
                box,
                ledger,
                board,
                settings.delivery,
                budget=budget,
                amends=destination.amends,
                resolver=resolver,
                metrics=metrics,
                heartbeat=beat,
                begun=None if beat is None else beat.begun,  # a send stuck on its own thread
                bulk=bulk,
                in_flight=settings.delivery.in_flight,
                monotonic=timebase.monotonic,
                wait=timebase.wait,
                claim_wait_seconds=timebase.claim_wait_seconds,
            )
        )
    return workers


def _beats(watchdog: notify.Watchdog | None) -> Beats:
    """A heartbeat maker: each worker's beat, or no beat at all without a watchdog."""

    def beat(name: str, max_age_seconds: float) -> notify.Heartbeat | None:
        return None if watchdog is None else watchdog.heartbeat(name, max_age_seconds)

    return beat


def _bulk_contacts(
    name: str,
    kind: config.CloudKind,
    connector: object,
    box: outbox.Outbox,
    ledger: Ledger,
    budget: RateBudget,
    in_flight: int = 1,
) -> BulkContacts | None:
    """Contact changes in bulk calls where the kind has a bulk endpoint and it is on."""
    if not kind.writes_in_bulk:
        return None
    settings: Any = cast(Any, connector).settings  # the kind's own, with bulk_* keys
    if not settings.bulk_contacts:
        return None
    return BulkContacts(
        name,
        cast(BulkWriter, connector),
        box,
        ledger,
        BulkSettings(
            max_contacts=settings.bulk_max,
            min_contacts=settings.bulk_min,
            status_poll_seconds=settings.bulk_status_poll_seconds,
            status_timeout_seconds=settings.bulk_status_timeout_seconds,
            lookups_at_once=max(1, in_flight // 4),  # a run's lookups: a quarter of the window
            spaced=in_flight > 1,
        ),
        budget=budget,
    )


def forget_source_contact(privacy: Privacy, contact: models.SourceContact) -> None:
    """A contact deleted in the source: forgotten here by email and by each of its numbers."""
    privacy.forget(email=contact.email, mobile_phone=contact.mobile_phone)
    if contact.other_phone:
        privacy.forget(mobile_phone=contact.other_phone)


def _contact_sync(
    settings: config.Settings,
    built: Mapping[str, connectors.Connector],
    cache: ContactCache,
    board: health.Health,
    privacy: Privacy,
    *,
    stop: threading.Event | None = None,
    heartbeat: Callable[[], None] | None = None,
) -> ContactSync | None:
    """The cache's sync from [contacts] source, forgetting here whom the cloud deleted."""
    if not settings.contacts.source:
        return None
    source = cast(connectors.ContactSource, built[settings.contacts.source])
    limit = _destination(settings, settings.contacts.source)
    return ContactSync(
        source,
        cache,
        board,
        page_size=settings.contacts.page_size,
        ghost_batch=settings.contacts.ghost_sweep_batch,
        fetch_one=source.fetch_contact,
        on_deleted=lambda c: forget_source_contact(privacy, c),
        # Verified again well within the TTL, so the purge takes only what the cloud lost.
        verify_within_seconds=settings.privacy.contact_ttl_days * 86400 / 2,
        run_every_seconds=settings.contacts.sync_interval_minutes * 60,
        max_wait_seconds=settings.contacts.max_wait_seconds,
        stop=stop,
        heartbeat=heartbeat,
        tracker=ProgressTracker(limit.requests_per_second),
    )


def _live_lookup(
    settings: config.Settings, built: Mapping[str, connectors.Connector]
) -> LiveLookup | None:
    """A cache miss asks the source once, if it can find a contact by email or phone."""
    name = settings.contacts.source
    source = built.get(name) if name else None
    if source is None or not connectors.KINDS[_destination(settings, name).kind].finds_contacts:
        return None
    finder = cast(Any, source)  # its kind declares find_contact_id, and it has fetch_contact

    def live(kind: str, value: str, deadline: float) -> models.SourceContact | None:
        if kind not in ("email", "phone"):
            return None
        email, phone = (value, None) if kind == "email" else (None, value)
        # Each request is charged to the source's budget and times out at the deadline.
        with ratelimit.scope(ratelimit.Scope(wait=_sleep, deadline=deadline)):
            contact_id = finder.find_contact_id(email=email, mobile_phone=phone)
            return None if contact_id is None else finder.fetch_contact(contact_id)

    return live


def _destination(settings: config.Settings, name: str) -> config.DestinationSettings:
    """The enabled destination of this name (config checked that it exists)."""
    return next(d for d in settings.enabled_destinations if d.name == name)


def _sleep(seconds: float) -> bool:
    """A plain wait (a live lookup's wait is bounded by its deadline, not by a stop)."""
    time.sleep(seconds)
    return False


def open_vault(settings: config.Settings, keyring: crypto.Keyring) -> ConnectorVault:
    """The connectors' tokens and created-record links (agent/connectors/vault.py)."""
    return ConnectorVault(settings.agent.data_dir, keyring, settings.storage.busy_timeout_seconds)


def open_cache(settings: config.Settings, keyring: crypto.Keyring) -> ContactCache:
    return ContactCache(
        settings.agent.data_dir,
        keyring,
        default_region=settings.agent.default_region,
        ttl_days=settings.privacy.contact_ttl_days,
        busy_timeout_seconds=settings.storage.busy_timeout_seconds,
    )


def quarantine_damaged_stores(data_dir: Path, board: health.Health) -> list[Path]:
    """quick_check every store; a damaged one is moved aside and the agent starts afresh.

    Health stays red until a technician has looked: the moved file may hold receipts that
    had not left yet (salvage them with sqlite3's .recover).
    """
    moved = []
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for name in (outbox.FILE_NAME, CACHE_FILE_NAME):
        problem = db.check_file(data_dir / name)
        if problem is None:
            continue
        target = db.move_aside(data_dir / name, stamp)
        log.error("store %s was damaged (%s); moved to %s", name, problem, target.name)
        what = " ".join(problem.split())[:200]
        board.report(
            f"store:{name}", health.FAILING, f"damaged ({what}), moved aside to {target.name}"
        )
        moved.append(target)
    kept = sorted(p.name for p in data_dir.glob("*.corrupt-*") if p not in moved)
    if kept and not moved:
        board.report("store:salvage", health.DEGRADED, f"damaged stores kept: {', '.join(kept)}")
    return moved


def open_stores(
    settings: config.Settings, key_protector: crypto.KeyProtector | None = None
) -> tuple[crypto.Keyring, outbox.Outbox]:
    """The keyring (made on first start only) and the outbox, with every queue in the file."""
    data_dir = settings.agent.data_dir
    has_data = (data_dir / outbox.FILE_NAME).exists() or any(
        data_dir.glob(f"{outbox.FILE_NAME}.corrupt-*")
    )
    keyring = crypto.load_or_create(
        settings.privacy.key_file, may_create=not has_data, protector=key_protector
    )
    box = outbox.Outbox(
        data_dir,
        [d.name for d in settings.enabled_destinations],
        busy_timeout_seconds=settings.storage.busy_timeout_seconds,
        max_size_mb=settings.storage.max_size_mb,
    )
    return keyring, box


@dataclass(frozen=True)
class Maintenance:
    """What a command may do on the stores while the agent is stopped."""

    privacy: Privacy
    dead_letters: DeadLetters
    intake: Intake
    journal: Journal
    settings: config.Settings
    contacts: ContactCache
    reconciler: Reconciler
    vault: ConnectorVault

    def contact_sync(self) -> ContactSync | None:
        """The sync of [contacts] source, on these stores (None when no source is set)."""
        built = build_connectors(self.settings, rate_budgets(self.settings), self.vault)
        return _contact_sync(self.settings, built, self.contacts, health.Health(), self.privacy)

    def verifying_reconciler(self) -> Reconciler:
        """The reconciler with the connectors that can read back (each charging its budget)."""
        built = build_connectors(self.settings, rate_budgets(self.settings), self.vault)
        self.reconciler.readers.update(readers_of(built))
        return self.reconciler


@contextlib.contextmanager
def maintenance(settings: config.Settings) -> Iterator[Maintenance]:
    """The stores with the agent stopped: the lock held, nothing served, nothing sent."""
    lock = acquire_lock(settings.agent.data_dir)
    try:
        keyring, box = open_stores(settings)
        cache = open_cache(settings, keyring)
        vault = open_vault(settings, keyring)
        try:
            intake = Intake(
                box,
                keyring,
                settings.enabled_destinations,
                settings.intake,
                health.Health(),
                settings.agent.default_region,
            )
            privacy = Privacy(box, keyring, settings, stores=[cache, vault])
            yield Maintenance(
                privacy,
                DeadLetters(box, keyring),
                intake,
                Journal(box, amends_of(settings)),
                settings,
                cache,
                reconciler(settings, box),
                vault,
            )
        finally:
            vault.close()
            cache.close()
            box.close()
    finally:
        lock.release()


def _services(
    settings: config.Settings,
    box: outbox.Outbox,
    intake: Intake,
    board: health.Health,
    privacy: Privacy,
    lookup: Lookup,
    metrics: Metrics,
    sync: ContactSync | None = None,
    dispatchers: Sequence[Dispatcher] = (),
    forecast: Forecast | None = None,
) -> Services:
    reporter = StatusReporter(
        outbox=box,
        intake=intake,
        health=board,
        destinations=settings.enabled_destinations,
        identity=(settings.agent.store_id, settings.agent.till_id),
        data_dir=settings.agent.data_dir,
        limit_bytes=settings.storage.max_size_mb * 1024 * 1024,
        cache=lookup.cache,
        workers=_snapshots({d.destination: d for d in dispatchers}),
        forecast=forecast,
        cache_state=lookup.cache_state,
    )
    metrics.add_status(reporter.report)
    openapi = msgspec.json.encode(schemas.openapi_document())
    return Services(
        intake=intake,
        status=reporter,
        health=board,
        privacy=privacy,
        dead_letters=DeadLetters(box, privacy.keyring),
        journal=Journal(box, amends_of(settings)),
        lookup=lookup,
        metrics=metrics,
        sync_now=(lambda: dataclasses.asdict(sync.run_once())) if sync else (lambda: None),
        openapi=openapi,
        retry_now=_retry_now({d.destination: d for d in dispatchers}),
        set_aside=SetAsideDesk({d.destination: d for d in dispatchers}),
        reconciler=reconciler(settings, box),
    )


def amends_of(settings: config.Settings) -> dict[str, str]:
    """How each destination takes a changed receipt (its kind's, config.CloudKind.amends)."""
    return {d.name: d.amends for d in settings.destinations}


def reconciler(
    settings: config.Settings,
    box: outbox.Outbox,
    readers: Mapping[str, CloudReader] | None = None,
) -> Reconciler:
    identity = (settings.agent.store_id, settings.agent.till_id)
    return Reconciler(box, settings.enabled_destinations, DeadLetters(box), identity, readers)


class SetAsideDesk:
    """Every dispatcher's set-aside items; an item's id is "queue:number" (its lane's queue)."""

    def __init__(self, workers: Mapping[str, Dispatcher]) -> None:
        self._workers = workers

    def items(self, destination: str | None, limit: int = -1) -> list[dict[str, Any]]:
        if destination is not None and destination not in self._workers:
            raise NotFoundError(f"no destination {destination!r} is delivering")
        chosen = [destination] if destination is not None else sorted(self._workers)
        return [item for name in chosen for item in self._workers[name].set_aside(limit)]

    def ask(self, action: str, item_id: str) -> None:
        queue, _, number = item_id.rpartition(":")
        worker = self._workers.get(queue.removesuffix(outbox.LOW_PRIORITY))
        if worker is None or not (number.isascii() and number.isdigit() and len(number) < 19):
            raise NotFoundError("no such set-aside item")
        worker.ask(action, (queue, int(number)))


def _retry_now(workers: Mapping[str, Dispatcher]) -> Callable[[str | None], list[str]]:
    """retry-now for one destination (NotFoundError if none delivers under that name) or all."""

    def hurry(name: str | None) -> list[str]:
        if name is not None and name not in workers:
            raise NotFoundError(f"no destination {name!r} is delivering")
        chosen = [name] if name is not None else sorted(workers)
        for chosen_name in chosen:
            workers[chosen_name].retry_now()
        return chosen

    return hurry


def _server(settings: config.Settings, services: Services, token: str) -> Server:
    host, port = config.parse_listen(settings.api.listen)
    app = api.create_app(
        services,
        token=token,
        max_body_bytes=settings.api.max_body_bytes,
        retry_after_seconds=settings.storage.retry_after_seconds,
    )
    try:
        return Server(
            app,
            host,
            port,
            threads=settings.api.threads,
            max_body_bytes=settings.api.max_body_bytes,
            max_connections=settings.api.max_connections,
            idle_timeout_seconds=settings.api.idle_timeout_seconds,
        )
    except OSError as exc:
        problem = f"cannot listen on {settings.api.listen}: {exc.strerror or exc}"
        raise ConfigError([f"api.listen: {problem}"]) from exc


def acquire_lock(data_dir: Path) -> filelock.BaseFileLock:
    """One agent per data directory: a second one refuses instead of sharing the queue."""
    lock = filelock.FileLock(data_dir / LOCK_FILE, timeout=0, mode=0o600)
    try:
        lock.acquire()
    except filelock.Timeout as exc:
        raise AlreadyRunningError(
            f"another till-agent is already running on {data_dir}; stop it first"
        ) from exc
    return lock


def read_or_create_token(path: Path) -> str:
    """The POS token; made (owner-only) on first start when the installer has not made one."""
    if not path.exists():
        _make_private_dir(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        log.info("created the POS token file", extra={"path": str(path)})
    shared = filemodes.shared_with_others(path)
    if shared is not None:
        raise StorageError(filemodes.refusal("POS token file", path, shared))
    token = path.read_text(encoding="ascii").strip()
    if len(token) < 16:
        raise StorageError(f"the POS token in {path} is too short (16 characters at least)")
    return token


def _make_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)


def run(
    settings: config.Settings,
    stop: threading.Event,
    *,
    key_protector: crypto.KeyProtector | None = None,
) -> None:
    """Start, serve until stop is set, stop cleanly. The service wrappers call this.

    Under systemd (Type=notify) it says READY once serving, pings the watchdog from this
    thread while every worker loop beats, every worker thread is alive and the API answers,
    and says STOPPING first.
    """
    environ = config.environment()
    notifier = notify.Notifier.from_environ(environ)
    watchdog = notify.Watchdog(notifier, notify.watchdog_interval(environ))
    agent = start(settings, key_protector=key_protector, watchdog=watchdog)
    log.info(
        "till agent running", extra={"url": agent.url, "data_dir": str(settings.agent.data_dir)}
    )
    for thread in threading.enumerate():
        if thread.name in ("api", "scheduler", "contacts-sync") or thread.name.startswith(
            "dispatch-"
        ):
            watchdog.watch(thread.name, thread.is_alive)
    # The POS path itself: a wedged API (every worker blocked) stops the pings too.
    watchdog.watch("api answers", lambda: notify.answers_http(f"{agent.url}/v1/health", 5.0))
    try:
        notifier.ready(f"serving on {agent.url}")
        watchdog.run(stop)
    finally:
        notifier.stopping("stopping")
        agent.stop()


def undelivered(settings: config.Settings) -> dict[str, int]:
    """Items not yet delivered per destination, both lanes (the agent stopped).

    Ready, claimed (left by a crash) and set aside after failures: all of them still wait.
    """
    data_dir = settings.agent.data_dir
    if not (data_dir / outbox.FILE_NAME).exists():
        return {}
    queues = outbox.queue_names(data_dir)
    box = outbox.Outbox(
        data_dir, queues, busy_timeout_seconds=settings.storage.busy_timeout_seconds
    )
    try:
        destinations = [n for n in queues if not n.endswith(outbox.LOW_PRIORITY)]
        return {name: _waiting(box, name) for name in destinations}
    finally:
        box.close()


def _waiting(box: outbox.Outbox, destination: str) -> int:
    depth = box.depth(destination)
    return depth.pending + depth.claimed + len(box.set_aside_items(destination))
