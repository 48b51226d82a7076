"""Settings: frozen dataclasses with defaults, loaded from one TOML file, validated all at once."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from agent.core import paths
from agent.core.errors import ConfigError

CONFIG_ENV = "TILL_AGENT_CONFIG"

# What a destination may take from the till. "receipts": every receipt; "receipts_with_contact":
# only receipts that carry a contact; "contacts": contact changes.
TAKES_VALUES = frozenset({"receipts", "receipts_with_contact", "contacts"})
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Destination names become queue table names: keep them to plain identifiers.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
LOOPBACK_NAMES = ("localhost",)
Amends = Literal["replace", "difference"]


@dataclass(frozen=True)
class CloudKind:
    """What one kind of cloud is, declared as KIND by its module under agent/connectors/.

    agent.connectors.KINDS collects them and hands them to parse(): config reads the facts
    here and never imports a connector (decision 14), so the POS path stays off the network.
    """

    name: str  # the [destinations.<name>] kind that picks it
    takes: frozenset[str]  # what it takes from the till unless told; empty: sends nothing
    amends: Amends  # a changed receipt: "replace" (upserts by id) or "difference" (append-only)
    requests_per_second: float  # its vendor's documented rate limit ...
    rate_window_seconds: float = 1.0  # ... counted over this window (a sliding window)
    contact_source: bool = False  # it has a contact delta feed: [contacts] source may name it
    finds_contacts: bool = False  # finds a contact's id by email or phone (resolver, live lookup)
    writes_in_bulk: bool = False  # has a bulk endpoint for contact changes (agent/delivery/bulk.py)
    stores_tokens: bool = False  # its connector keeps tokens in the vault (connectors/vault.py)

    @property
    def sends(self) -> bool:
        """It takes something from the till, so it is a Sender; otherwise a contact source only."""
        return bool(self.takes)


Kinds = Mapping[str, CloudKind]


@dataclass(frozen=True)
class AgentSettings:
    """[agent]: who this till is and where it keeps its data."""

    store_id: str = ""
    till_id: str = ""
    data_dir: Path = Path()  # default: the OS data directory (agent.core.paths)
    log_dir: Path = Path()  # default: the OS log directory (agent.core.paths)
    credentials_dir: Path = Path()  # default: the OS credentials directory (agent.core.paths)
    log_level: str = "INFO"
    default_region: str = "SE"


@dataclass(frozen=True)
class ApiSettings:
    """[api]: the local HTTP API the POS calls."""

    listen: str = "127.0.0.1:8765"
    token_file: Path = Path()  # default: <credentials dir>/pos-token
    max_body_bytes: int = 1_048_576
    threads: int = 8
    stop_timeout_seconds: float = 10.0
    max_connections: int = 4096  # held at once; slow ones never block a sale (issue 14)
    idle_timeout_seconds: float = 30.0  # a connection that sends nothing this long is closed


@dataclass(frozen=True)
class IntakeSettings:
    """[intake]: how receipts are checked before they are queued."""

    strict_totals: bool = False
    totals_tolerance: Decimal = Decimal("0.05")
    quarantine_max_mb: int = 64  # refused bodies kept, sealed; the oldest go past this

    @property
    def quarantine_max_bytes(self) -> int:
        return self.quarantine_max_mb * 1024 * 1024


@dataclass(frozen=True)
class StorageSettings:
    """[storage]: the local SQLite files."""

    max_size_mb: int = 2048
    busy_timeout_seconds: float = 5.0
    retry_after_seconds: int = 5


@dataclass(frozen=True)
class ContactsSettings:
    """[contacts]: where the local contact cache comes from, and how often it is refreshed."""

    source: str = ""  # the name of a [destinations.<name>] that is a contact source; "": none
    sync_interval_minutes: int = 15
    page_size: int = 200
    ghost_sweep_batch: int = 10
    lookup_timeout_seconds: float = 0.8
    # A sync run waits out 429s and failures (Retry-After, backoff) up to this much in all, then
    # ends; the next run goes on from the saved cursor. Pacing to the rate budget is not counted.
    max_wait_seconds: float = 900.0


@dataclass(frozen=True)
class DeliverySettings:
    """[delivery]: how items are sent, retried, set aside and given up on."""

    enabled: bool = True  # false: take and keep everything, send nothing (a till being set up)
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 300.0
    set_aside_after_attempts: int = 3
    max_attempts: int = 10
    max_age_hours: float = 168.0
    auth_probe_seconds: float = 300.0
    recovery_probe_seconds: float = 15.0  # during an outage, how often the cloud is probed
    stalled_alarm_seconds: float = 3600.0  # items waiting this long with nothing delivered: red


@dataclass(frozen=True)
class AlertsSettings:
    """[alerts]: where dead letters and halted destinations are reported, as a digest."""

    digest_minutes: int = 15
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_from: str = ""
    smtp_to: tuple[str, ...] = ()
    webhook_url: str = ""
    timeout_seconds: float = 10.0
    store_full_warning_hours: float = 24.0  # the forecast says full sooner: alert


@dataclass(frozen=True)
class PrivacySettings:
    """[privacy]: how long personal data may stay, and the key file that seals it."""

    key_file: Path = Path()  # default: <data_dir>/keyring.json
    quarantine_retention_days: int = 14
    dead_letter_retention_days: int = 30
    ledger_retention_days: int = 90
    contact_ttl_days: int = 30
    log_retention_days: int = 14
    journal_retention_days: int = 30
    key_rotation_days: int = 30
    purge_interval_minutes: int = 60


@dataclass(frozen=True)
class DestinationSettings:
    """[destinations.<name>]: one cloud to deliver to. Other keys belong to the connector."""

    name: str
    kind: str
    base_url: str
    enabled: bool = True
    takes: frozenset[str] = frozenset()
    requests_per_second: float = 0.0  # unless set, its kind's documented limit (CloudKind)
    rate_window_seconds: float = 1.0  # the rate is counted over this window (its kind's)
    daily_call_budget: int = 0  # 0: none
    monthly_call_budget: int = 0  # 0: none
    options: Mapping[str, Any] = field(default_factory=dict)
    amends: Amends = "replace"  # not a key: how its kind takes a changed receipt (CloudKind)


@dataclass(frozen=True)
class Settings:
    """The whole configuration of one agent."""

    agent: AgentSettings = AgentSettings()
    api: ApiSettings = ApiSettings()
    intake: IntakeSettings = IntakeSettings()
    storage: StorageSettings = StorageSettings()
    contacts: ContactsSettings = ContactsSettings()
    delivery: DeliverySettings = DeliverySettings()
    alerts: AlertsSettings = AlertsSettings()
    privacy: PrivacySettings = PrivacySettings()
    destinations: tuple[DestinationSettings, ...] = ()

    @property
    def longest_retention_days(self) -> int:
        """No sealed value may need a key older than this; older keys are destroyed."""
        privacy = self.privacy
        return max(
            privacy.quarantine_retention_days,
            privacy.dead_letter_retention_days,
            privacy.contact_ttl_days,
            privacy.journal_retention_days,
        )

    @property
    def enabled_destinations(self) -> tuple[DestinationSettings, ...]:
        return tuple(d for d in self.destinations if d.enabled)


SECTIONS: dict[str, type] = {
    "agent": AgentSettings,
    "api": ApiSettings,
    "intake": IntakeSettings,
    "storage": StorageSettings,
    "contacts": ContactsSettings,
    "delivery": DeliverySettings,
    "alerts": AlertsSettings,
    "privacy": PrivacySettings,
}
DESTINATION_KEYS = (
    "kind",
    "base_url",
    "enabled",
    "takes",
    "requests_per_second",
    "rate_window_seconds",
    "daily_call_budget",
    "monthly_call_budget",
)


def config_path(cli_path: str | None, environ: Mapping[str, str]) -> Path:
    """The config file to read: --config, then $TILL_AGENT_CONFIG, then the OS location."""
    if cli_path:
        return Path(cli_path)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    return paths.system_paths(environ).config_file


def load(path: Path, environ: Mapping[str, str], kinds: Kinds) -> Settings:
    """Read, fill OS defaults, validate. Raises ConfigError with every problem found.

    kinds: the clouds a destination may be (agent.connectors.KINDS)."""
    return from_mapping(read(path), environ, kinds)


def read(path: Path) -> dict[str, Any]:
    """The parsed TOML file; ConfigError (one line) when it is missing or not TOML."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError([f"config: file not found (got {path})"]) from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([f"config: cannot read {path}: {exc}"]) from exc


def from_mapping(raw: Mapping[str, Any], environ: Mapping[str, str], kinds: Kinds) -> Settings:
    """Build Settings from a parsed TOML table; raise ConfigError with every problem."""
    settings, problems = parse(raw, environ, kinds)
    if problems:
        raise ConfigError(problems)
    return settings


def parse(
    raw: Mapping[str, Any], environ: Mapping[str, str], kinds: Kinds
) -> tuple[Settings, list[str]]:
    """Settings as far as they can be built, and every problem (structure, values, unknown
    keys) found on the way: a caller can check more (the connectors) in the same pass."""
    problems: list[str] = []
    for unknown in sorted(set(raw) - set(SECTIONS) - {"destinations"}):
        problems.append(f"{unknown}: unknown section")
    sections = {
        name: _build_section(name, cls, raw.get(name, {}), problems)
        for name, cls in SECTIONS.items()
    }
    destinations = _build_destinations(raw.get("destinations", {}), kinds, problems)
    settings = _with_os_defaults(
        Settings(**sections, destinations=destinations),
        environ,
    )
    problems.extend(validate(settings, kinds))
    return settings, problems


def validate(settings: Settings, kinds: Kinds) -> list[str]:
    """Every semantic problem, each as '<section.key>: <problem> (got <value>)'."""
    problems: list[str] = []
    problems += _validate_agent(settings.agent)
    problems += _validate_api(settings.api)
    problems += _positive(
        "intake.totals_tolerance", settings.intake.totals_tolerance, allow_zero=True
    )
    problems += _positive("intake.quarantine_max_mb", settings.intake.quarantine_max_mb)
    problems += _positive("storage.max_size_mb", settings.storage.max_size_mb)
    problems += _positive("storage.busy_timeout_seconds", settings.storage.busy_timeout_seconds)
    problems += _positive("storage.retry_after_seconds", settings.storage.retry_after_seconds)
    for name in (
        "backoff_max_seconds",
        "set_aside_after_attempts",
        "max_attempts",
        "stalled_alarm_seconds",
    ):
        problems += _positive(f"delivery.{name}", getattr(settings.delivery, name))
    for name in (
        "backoff_initial_seconds",
        "max_age_hours",
        "auth_probe_seconds",
        "recovery_probe_seconds",
    ):
        problems += _positive(f"delivery.{name}", getattr(settings.delivery, name), allow_zero=True)
    for name in (
        "quarantine_retention_days",
        "dead_letter_retention_days",
        "ledger_retention_days",
        "contact_ttl_days",
        "log_retention_days",
        "journal_retention_days",
        "key_rotation_days",
        "purge_interval_minutes",
    ):
        problems += _positive(f"privacy.{name}", getattr(settings.privacy, name))
    problems += _validate_alerts(settings.alerts)
    problems += _validate_contacts(settings, kinds)
    for destination in settings.destinations:
        problems += _validate_destination(destination, kinds)
    return problems


def _validate_contacts(settings: Settings, kinds: Kinds) -> list[str]:
    contacts = settings.contacts
    problems = []
    for name in ("sync_interval_minutes", "ghost_sweep_batch"):
        problems += _positive(f"contacts.{name}", getattr(contacts, name))
    problems += _positive("contacts.max_wait_seconds", contacts.max_wait_seconds, allow_zero=True)
    if not 1 <= contacts.page_size <= 200:
        problems.append(f"contacts.page_size: 1 to 200 (got {contacts.page_size})")
    if not 0 < contacts.lookup_timeout_seconds <= 0.8:
        problems.append(
            f"contacts.lookup_timeout_seconds: above 0 and at most 0.8 "
            f"(got {contacts.lookup_timeout_seconds})"
        )
    names = {d.name: d for d in settings.destinations}
    if contacts.source and contacts.source not in names:
        problems.append(
            f"contacts.source: no [destinations.{contacts.source}] (got {contacts.source!r})"
        )
    elif contacts.source and not _is_source(kinds.get(names[contacts.source].kind)):
        problems.append(f"contacts.source: a {names[contacts.source].kind} cannot be a source")
    return problems


def _is_source(kind: CloudKind | None) -> bool:
    return kind is not None and kind.contact_source


def _validate_alerts(alerts: AlertsSettings) -> list[str]:
    problems = _positive("alerts.digest_minutes", alerts.digest_minutes)
    problems += _positive("alerts.store_full_warning_hours", alerts.store_full_warning_hours)
    if alerts.smtp_host and not (alerts.smtp_from and alerts.smtp_to):
        problems.append("alerts.smtp_host: smtp_from and smtp_to are needed too (got none)")
    if alerts.webhook_url and urlsplit(alerts.webhook_url).scheme not in ("http", "https"):
        problems.append(f"alerts.webhook_url: an http(s) URL (got {alerts.webhook_url!r})")
    return problems


def _validate_agent(agent: AgentSettings) -> list[str]:
    problems = []
    for key in ("store_id", "till_id"):
        if not getattr(agent, key).strip():
            problems.append(f"agent.{key}: required (got '')")
    if not re.fullmatch(r"[A-Z]{2}", agent.default_region):
        problems.append(f"agent.default_region: two capital letters (got {agent.default_region})")
    if agent.log_level.upper() not in LOG_LEVELS:
        problems.append(f"agent.log_level: one of {', '.join(LOG_LEVELS)} (got {agent.log_level})")
    return problems


def _validate_api(api: ApiSettings) -> list[str]:
    problems = []
    try:
        host, _ = parse_listen(api.listen)
        if not is_loopback(host):
            problems.append(f"api.listen: must be a loopback address (got {api.listen})")
    except ValueError as exc:
        problems.append(f"api.listen: {exc} (got {api.listen})")
    problems += _positive("api.max_body_bytes", api.max_body_bytes)
    problems += _positive("api.threads", api.threads)
    problems += _positive("api.stop_timeout_seconds", api.stop_timeout_seconds)
    problems += _positive("api.max_connections", api.max_connections)
    problems += _positive("api.idle_timeout_seconds", api.idle_timeout_seconds)
    return problems


def _validate_destination(destination: DestinationSettings, kinds: Kinds) -> list[str]:
    prefix = f"destinations.{destination.name}"
    problems = []
    if not NAME_PATTERN.match(destination.name):
        problems.append(
            f"{prefix}: a name is 1-32 of a-z, 0-9 and _, starting with a letter"
            f" (got {destination.name})"
        )
    if destination.kind not in kinds and destination.kind != "?":
        known = ", ".join(sorted(kinds))
        problems.append(f"{prefix}.kind: required, one of {known} (got {destination.kind!r})")
    parts = urlsplit(destination.base_url)
    bad_url = parts.scheme not in ("http", "https") or not parts.netloc
    if bad_url and destination.base_url != "?":
        problems.append(
            f"{prefix}.base_url: required, an http(s) URL (got {destination.base_url!r})"
        )
    for value in sorted(destination.takes - TAKES_VALUES):
        problems.append(
            f"{prefix}.takes: unknown value, expected {sorted(TAKES_VALUES)} (got {value})"
        )
    return problems


def parse_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:8765' or '[::1]:8765' -> (host, port)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError("expected host:port")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError("port out of range")
    return host.strip("[]"), port


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _positive(name: str, value: float | Decimal, *, allow_zero: bool = False) -> list[str]:
    if value > 0 or (allow_zero and value == 0):
        return []
    return [f"{name}: must be {'zero or more' if allow_zero else 'positive'} (got {value})"]


def _build_section(name: str, cls: type, table: object, problems: list[str]) -> Any:
    if not isinstance(table, Mapping):
        problems.append(f"{name}: must be a table (got {table!r})")
        return cls()
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            problems.append(f"{name}.{key}: unknown key")
            continue
        converted = _convert(value, hints[key])
        if converted is _INVALID:
            problems.append(f"{name}.{key}: expected {_type_name(hints[key])} (got {value!r})")
        else:
            values[key] = converted
    return cls(**values)


def _build_destinations(
    table: object, kinds: Kinds, problems: list[str]
) -> tuple[DestinationSettings, ...]:
    if not isinstance(table, Mapping):
        problems.append(f"destinations: must be a table of tables (got {table!r})")
        return ()
    built = []
    for name, raw in table.items():
        if not isinstance(raw, Mapping):
            problems.append(f"destinations.{name}: must be a table (got {raw!r})")
            continue
        built.append(_build_destination(name, raw, kinds, problems))
    return tuple(built)


def _build_destination(
    name: str, raw: Mapping[str, Any], kinds: Kinds, problems: list[str]
) -> DestinationSettings:
    """One destination; its takes, rate and amends are its kind's unless set (an unknown kind,
    which validate() reports, gets the plain defaults)."""
    prefix = f"destinations.{name}"
    kind = raw.get("kind", "")
    base_url = raw.get("base_url", "")
    enabled = raw.get("enabled", True)
    takes = raw.get("takes")
    if not isinstance(kind, str):
        problems.append(f"{prefix}.kind: expected a string (got {kind!r})")
        kind = "?"
    if not isinstance(base_url, str):
        problems.append(f"{prefix}.base_url: expected a string (got {base_url!r})")
        base_url = "?"
    if not isinstance(enabled, bool):
        problems.append(f"{prefix}.enabled: expected true or false (got {enabled!r})")
        enabled = True
    if takes is not None and not (
        isinstance(takes, list) and all(isinstance(t, str) for t in takes)
    ):
        problems.append(f"{prefix}.takes: expected a list of strings (got {takes!r})")
        takes = None
    cloud = kinds.get(kind)
    default_takes = cloud.takes if cloud else frozenset()
    options = {k: v for k, v in raw.items() if k not in DESTINATION_KEYS}
    limits = _destination_limits(prefix, cloud, raw, problems)
    return DestinationSettings(
        name=name,
        kind=kind,
        base_url=base_url,
        enabled=enabled,
        takes=frozenset(takes) if takes is not None else default_takes,
        requests_per_second=limits[0],
        rate_window_seconds=limits[3],
        daily_call_budget=int(limits[1]),
        monthly_call_budget=int(limits[2]),
        options=types.MappingProxyType(options),
        amends=cloud.amends if cloud else "replace",
    )


def _destination_limits(
    prefix: str, cloud: CloudKind | None, raw: Mapping[str, Any], problems: list[str]
) -> tuple[float, float, float, float]:
    """(requests/s, daily calls, monthly calls, rate window), each checked; the rate and its
    window default to the kind's documented limit."""
    values = []
    for key, default in (
        ("requests_per_second", cloud.requests_per_second if cloud else 10.0),
        ("daily_call_budget", 0),
        ("monthly_call_budget", 0),
        ("rate_window_seconds", cloud.rate_window_seconds if cloud else 1.0),
    ):
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            problems.append(f"{prefix}.{key}: a number, zero or more (got {value!r})")
            value = default
        values.append(float(value))
    for index, key in ((0, "requests_per_second"), (3, "rate_window_seconds")):
        if values[index] == 0:
            problems.append(f"{prefix}.{key}: must be positive (got 0)")
            values[index] = 1.0
    return values[0], values[1], values[2], values[3]


class _Invalid:
    pass


_INVALID = _Invalid()


def _convert(value: object, hint: object) -> object:
    """A TOML value converted to the field's type, or _INVALID."""
    if hint is bool:
        return value if isinstance(value, bool) else _INVALID
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _INVALID
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok else _INVALID  # type: ignore[arg-type]
    if hint is str:
        return value if isinstance(value, str) else _INVALID
    if hint is Path:
        return Path(value) if isinstance(value, str) and value else _INVALID
    if hint is Decimal:
        return _to_decimal(value)
    if hint == tuple[str, ...]:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return tuple(value) if ok else _INVALID  # type: ignore[arg-type]
    return _INVALID


def _to_decimal(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return _INVALID
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return _INVALID


def _type_name(hint: object) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    names |= {Path: "a path", Decimal: "a decimal number", tuple[str, ...]: "a list of strings"}
    return names.get(hint, str(hint))  # type: ignore[call-overload,no-any-return]


def _with_os_defaults(settings: Settings, environ: Mapping[str, str]) -> Settings:
    system = paths.system_paths(environ)
    agent = settings.agent
    if agent.data_dir == Path():
        agent = dataclasses.replace(agent, data_dir=system.data_dir)
    if agent.log_dir == Path():
        agent = dataclasses.replace(agent, log_dir=system.log_dir)
    if agent.credentials_dir == Path():
        agent = dataclasses.replace(agent, credentials_dir=system.credentials_dir)
    api = settings.api
    if api.token_file == Path():
        api = dataclasses.replace(api, token_file=agent.credentials_dir / paths.TOKEN_FILE_NAME)
    privacy = settings.privacy
    if privacy.key_file == Path():
        privacy = dataclasses.replace(privacy, key_file=agent.data_dir / "keyring.json")
    return dataclasses.replace(settings, agent=agent, api=api, privacy=privacy)


def environment() -> Mapping[str, str]:
    """The process environment: read here and handed to the functions above."""
    return os.environ


def secret_reader(credentials_dir: Path) -> Callable[[str], str]:
    """Secrets are files in the credentials directory (systemd LoadCredential, DPAPI'd files)."""

    def read(name: str) -> str:
        if "/" in name or "\\" in name or name.startswith("."):
            raise ValueError("a secret is named by a plain file name")
        return (credentials_dir / name).read_text(encoding="utf-8").strip()

    return read
