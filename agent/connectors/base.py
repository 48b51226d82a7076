"""The connector contract: two Protocols, the one HTTP status table, and the settings helpers."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol, TypeAlias
from urllib.parse import quote, urlsplit

import msgspec
import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from agent.core.config import DestinationSettings
from agent.core.errors import (
    AuthError,
    CloudError,
    ConfigError,
    RejectedError,
    RetryableError,
    StoppingError,
    ThrottledError,
    UnreadableAnswerError,
    UnsendableError,
)
from agent.core.models import ContactPage, OutboundMessage, SourceContact

log = logging.getLogger(__name__)

ReadSecret = Callable[[str], str]
EXCERPT_CHARS = 500
DEFAULT_THROTTLE_SECONDS = 60.0
EPOCH_THRESHOLD = 1_000_000_000.0  # a reset value above this is a Unix time
RETRYABLE_STATUSES = frozenset({408, 500, 502, 503, 504})
AUTH_STATUSES = frozenset({401, 403})
# Keys a cloud's JSON error body names its error by, most specific first.
ERROR_ID_KEYS = ("errorId", "error_id", "errorCode", "code", "name", "error")
# What can be an error's id or name and is provably no one's data: one token, no spaces, no
# '@', no markup; anything else (a message, a name, an address) is not kept as an id.
REASON_PHRASES = frozenset(status.phrase for status in HTTPStatus)
ERROR_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}\Z")


@dataclass(frozen=True)
class SendResult:
    """What the cloud said that dispatch needs: its rate-limit headers and the id it gave."""

    status: int | None = None
    cloud_id: str | None = None
    rate_limit_remaining: int | None = None
    rate_limit_reset_seconds: float | None = None


class Sender(Protocol):
    """A cloud that takes messages from the till."""

    name: str

    def send(self, message: OutboundMessage) -> SendResult:
        """Deliver one message; raises RetryableError, ThrottledError, AuthError, RejectedError."""
        ...

    def probe(self) -> None:
        """One cheap authenticated call; raises AuthError or RetryableError."""
        ...


class ContactSource(Protocol):
    """A cloud that reports contact changes after a cursor."""

    name: str
    # True: the feed from its start is every contact, so walking it re-verifies the cache
    # (Lightspeed); False: it holds changes only, and ghosts are found by fetch_contact alone.
    lists_everything: bool

    def fetch_contact_changes(self, cursor: str | None, limit: int) -> ContactPage:
        """The next page after cursor (None: from the start); raises CloudError subclasses."""
        ...

    def fetch_contact(self, contact_id: str) -> SourceContact | None:
        """One contact by the source's id (the ghost sweep); None when the source has it no more."""
        ...

    def count_contacts(self) -> int | None:
        """How many contacts the source holds (the first download's estimate); None: unknown."""
        ...


Connector: TypeAlias = Sender | ContactSource


# --- the HTTP session -------------------------------------------------------------------


BeforeRequest = Callable[[float], float]  # the timeout a request has -> the one it may have


class TimeoutSession(requests.Session):
    """A Session whose every request has a timeout, never follows a redirect, never retries.

    before_request, when given, is asked before every request: the destination's rate budget
    (agent/core/ratelimit.py) charges it there and may shorten its timeout to a caller's deadline.
    """

    def __init__(
        self,
        timeout_seconds: float,
        before_request: BeforeRequest | None = None,
        stopping: threading.Event | None = None,
    ) -> None:
        super().__init__()
        self.timeout_seconds = timeout_seconds
        self._before_request = before_request
        # Set when the agent stops: a send of several requests (Loaded's catalogue, then the
        # order) ends at its next request with StoppingError, and its item goes back in line.
        self.stopping = stopping or threading.Event()
        for prefix in ("http://", "https://"):
            self.mount(prefix, HTTPAdapter(max_retries=0))

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        if self.stopping.is_set():
            raise StoppingError("the agent is stopping: the request was not sent")
        kwargs.setdefault("timeout", self.timeout_seconds)
        # A redirect is never followed: a POST redirected to a page that answers 200 (a captive
        # portal, a proxy's login) would look delivered. The 3xx is a retryable failure instead.
        kwargs.setdefault("allow_redirects", False)
        if kwargs["timeout"] is None:
            kwargs["timeout"] = self.timeout_seconds
        if self._before_request is not None:
            kwargs["timeout"] = self._before_request(float(kwargs["timeout"]))
        return super().request(method, url, *args, **kwargs)


def make_session(
    user_agent: str,
    timeout_seconds: float = 30.0,
    before_request: BeforeRequest | None = None,
    stopping: threading.Event | None = None,
) -> TimeoutSession:
    """The one Session: timeouts always, no retries, a User-Agent, ids-only response logging."""
    session = TimeoutSession(timeout_seconds, before_request, stopping)
    session.headers["User-Agent"] = user_agent
    session.hooks["response"].append(_log_response)
    return session


class Sessions:
    """The agent's HTTP sessions, one per destination (each charging its own rate budget),
    stopped together when the agent stops and closed together after."""

    def __init__(self, user_agent: str) -> None:
        self.user_agent = user_agent
        self.stopping = threading.Event()
        self._made: list[TimeoutSession] = []

    def new(self, before_request: BeforeRequest | None = None) -> TimeoutSession:
        session = make_session(
            self.user_agent, before_request=before_request, stopping=self.stopping
        )
        self._made.append(session)
        return session

    def close(self) -> None:
        for session in self._made:
            session.close()


def _log_response(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    """Method, path (never the query: it can hold an email or phone) and status; no bodies."""
    log.debug(
        "cloud %s %s -> %s in %.0f ms",
        response.request.method,
        urlsplit(str(response.request.url)).path,
        response.status_code,
        response.elapsed.total_seconds() * 1000,
    )


# --- errors -----------------------------------------------------------------------------

_CONFIG_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.URLRequired,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidHeader,
)
# Everything else requests (or urllib3 underneath) can raise is a failed exchange: network,
# timeout, TLS, proxy, redirects, a broken or undecodable body. Retrying never loses data.
_RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.RequestException,
    requests.exceptions.RequestsWarning,
    urllib3.exceptions.HTTPError,
)


# What went wrong in words, most specific first (the reason a technician reads).
_NETWORK_WORDS: tuple[tuple[type[BaseException], str], ...] = (
    (requests.exceptions.ConnectTimeout, "timed out connecting"),
    (requests.exceptions.ReadTimeout, "timed out waiting for the answer"),
    (requests.exceptions.Timeout, "timed out"),
    (requests.exceptions.SSLError, "the TLS handshake failed"),
    (requests.exceptions.ProxyError, "the proxy failed"),
    (requests.exceptions.ChunkedEncodingError, "the answer was cut off"),
    (requests.exceptions.ContentDecodingError, "the answer could not be decoded"),
    (requests.exceptions.TooManyRedirects, "too many redirects"),
    (requests.exceptions.ConnectionError, "could not connect"),
)
_CONNECTION_DETAIL = (
    ("refused", "the connection was refused"),
    ("reset", "the connection was reset"),
    ("resolve", "the name did not resolve"),
    ("name or service", "the name did not resolve"),
    ("aborted", "the connection was closed"),
    ("remote end closed", "the connection was closed"),
)


def network_words(exc: BaseException) -> str:
    """A failed exchange in words: 'could not connect (the connection was refused)'."""
    words = next((w for cls, w in _NETWORK_WORDS if isinstance(exc, cls)), "the exchange failed")
    text = str(exc).lower()[:2000]
    detail = next((d for needle, d in _CONNECTION_DETAIL if needle in text), None)
    return f"{words} ({detail})" if detail else words


@contextmanager
def translate_http_errors(connector: str) -> Iterator[None]:
    """Map requests' exceptions to ours, at this one point.

    A request we could not even build from this item (a body that is not JSON, a value no
    header can carry) is the item's problem: UnsendableError. A bad base URL is the
    configuration's: ConfigError. Everything else is a failed exchange: RetryableError.
    """
    try:
        yield
    except CloudError:
        raise
    except requests.exceptions.JSONDecodeError as exc:  # an answer, not our request
        raise UnreadableAnswerError(
            f"{connector}: the answer was not JSON", connector=connector
        ) from exc
    except (requests.exceptions.InvalidJSONError, UnicodeError) as exc:
        raise UnsendableError(
            f"{connector}: the request could not be encoded", connector=connector
        ) from exc
    except _CONFIG_ERRORS as exc:
        raise ConfigError(
            [f"destinations.{connector}.base_url: not a usable URL or header value"]
        ) from exc
    except _RETRYABLE_ERRORS as exc:
        raise RetryableError(f"{connector}: {network_words(exc)}", connector=connector) from exc


# A cloud's error body is kept only as what is provably no one's data: its shape (field
# names), codes under the keys that carry codes, and small numbers. Any other text — a
# message that may quote a name, an address, an email — is kept as "[text]".
CODE_KEYS = frozenset(
    {"code", "errorcode", "error_code", "errorid", "error_id", "error", "status", "type",
     "field", "path", "propertyname", "property", "param", "parameter", "reason"}
)  # fmt: skip
CAMEL_NAME = re.compile(r"^[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*){2,}\Z")  # InvalidEmailAddress
FIELD_NAME = re.compile(r"^[A-Za-z_$][\w.$\[\]-]{0,63}\Z")
EXCERPT_DEPTH, EXCERPT_ITEMS = 6, 20


def excerpt(text: str) -> str:
    """A cloud's error body as it may be kept (≤ 500 chars): for JSON its field names, the
    codes under code-like keys and small numbers, every other text as "[text]"; for anything
    else only its length."""
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        return f"(not JSON, {len(text.encode('utf-8', 'replace'))} bytes)" if text else ""
    return json.dumps(_skeleton(body, "", 0), ensure_ascii=False)[:EXCERPT_CHARS]


def _skeleton(value: Any, key: str, depth: int) -> Any:
    if depth > EXCERPT_DEPTH:
        return "[…]"
    if isinstance(value, dict):
        return {
            (k if FIELD_NAME.match(k) else "[key]"): _skeleton(v, k, depth + 1)
            for k, v in list(value.items())[:EXCERPT_ITEMS]
            if isinstance(k, str)
        }
    if isinstance(value, list):
        return [_skeleton(v, key, depth + 1) for v in value[:EXCERPT_ITEMS]]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return value if abs(value) < 10**6 else "[number]"
    if isinstance(value, str) and _is_code(key, value):
        return value
    return "[text]"


def _is_code(key: str, value: str) -> bool:
    """A code under a code-like key ("name" only when it reads as a code: NoSuchContact)."""
    if key.lower() == "name":
        return CAMEL_NAME.match(value) is not None
    return key.lower() in CODE_KEYS and is_id(value) and not value.isdigit()


def cloud_error_id(text: str) -> str | None:
    """The cloud's own id or name for the error, from a JSON body (Loaded errorId, Voyado name)."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    for candidate in (body, body.get("error") if isinstance(body, dict) else None):
        if not isinstance(candidate, dict):
            continue
        for key in ERROR_ID_KEYS:
            value = candidate.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool) and is_id(value):
                return str(value)
    return None


def is_id(value: str | int) -> bool:
    """One token, or an HTTP reason phrase ("Too Many Requests"): nothing else is kept."""
    return ERROR_ID.match(str(value)) is not None or str(value) in REASON_PHRASES


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or HTTP-date, by urllib3's parser); None if absent."""
    if not value:
        return None
    try:
        return max(0.0, float(Retry().parse_retry_after(value)))
    except urllib3.exceptions.InvalidHeader:
        return None


def raise_for_response(response: requests.Response, *, connector: str) -> None:
    """The one status table (DESIGN §3): return on 2xx, else raise the class the status means."""
    status = response.status_code
    if 200 <= status < 300:
        return
    text = response.text
    details: dict[str, Any] = {
        "connector": connector,
        "status": status,
        "cloud_error_id": cloud_error_id(text),
        "body_excerpt": excerpt(text),
    }
    message = f"{connector}: HTTP {status}"
    wait = retry_after_seconds(response.headers.get("Retry-After"))
    if status == 429 or (status == 503 and wait is not None):
        seconds = DEFAULT_THROTTLE_SECONDS if wait is None else wait
        raise ThrottledError(message, retry_after_seconds=seconds, **details)
    if status in AUTH_STATUSES:
        raise AuthError(message, **details)
    if status in RETRYABLE_STATUSES or status >= 500:
        raise RetryableError(message, **details)
    if 400 <= status < 500:
        raise RejectedError(message, **details)
    raise RetryableError(message, **details)  # 1xx/3xx that requests did not follow


def json_body(response: requests.Response, *, connector: str) -> Any:
    """A 2xx reply's JSON; a malformed one is the cloud's fault of the moment: RetryableError."""
    try:
        return response.json()
    except ValueError as exc:
        raise RetryableError(
            f"{connector}: malformed JSON in a {response.status_code} reply",
            connector=connector,
            status=response.status_code,
            body_excerpt=excerpt(response.text),
        ) from exc


def call(
    http: requests.Session, method: str, url: str, *, connector: str, **kwargs: Any
) -> requests.Response:
    """One request, errors translated and the status table applied; the response is closed.

    A `json=` body is written by wire_json (exact decimals) with its Content-Type.
    """
    if "json" in kwargs:
        kwargs["data"] = wire_json(kwargs.pop("json"))
        kwargs["headers"] = {**kwargs.get("headers", {}), "Content-Type": "application/json"}
    with translate_http_errors(connector), http.request(method, url, **kwargs) as response:
        response.content  # noqa: B018 - read it all inside the translation, then close
        raise_for_response(response, connector=connector)
        return response


def rate_limit(response: requests.Response) -> tuple[int | None, float | None]:
    """(X-RateLimit-Remaining, seconds until X-RateLimit-Reset) when the cloud sends them."""
    remaining = response.headers.get("X-RateLimit-Remaining", "")
    reset = response.headers.get("X-RateLimit-Reset", "")
    left = int(remaining) if remaining.strip().isdigit() else None
    try:
        seconds: float | None = float(reset) if reset else None
    except ValueError:
        seconds = retry_after_seconds(reset)  # an HTTP-date
    if seconds is not None and seconds > EPOCH_THRESHOLD:  # an epoch time, not a duration
        seconds = max(0.0, seconds - time.time())
    return left, seconds


# --- settings ---------------------------------------------------------------------------


class Options:
    """Reads a destination's connector keys, profile applied, collecting every problem."""

    def __init__(self, destination: DestinationSettings, read_secret: ReadSecret) -> None:
        self.prefix = f"destinations.{destination.name}"
        self.problems: list[str] = []
        self._read_secret = read_secret
        raw = dict(destination.options)
        self._profile_missing = False
        profiles = raw.pop("profiles", {})
        self.profile = raw.pop("profile", "")
        self.values, self.base_url = raw, destination.base_url
        self._apply_profile(profiles)
        self._used: set[str] = set()

    def _apply_profile(self, profiles: object) -> None:
        if not isinstance(profiles, Mapping):
            self.problems.append(f"{self.prefix}.profiles: must be a table (got {profiles!r})")
            return
        if not self.profile:
            return
        chosen = profiles.get(self.profile)
        if not isinstance(chosen, Mapping):
            known = ", ".join(sorted(profiles)) or "none"
            self.problems.append(
                f"{self.prefix}.profile: no [profiles.{self.profile}] table (known: {known})"
            )
            self._profile_missing = True  # its secrets are unknown: no second, misleading error
            return
        self.values.update(chosen)
        self.base_url = str(chosen.get("base_url", self.base_url))
        self.values.pop("base_url", None)

    def _get(self, key: str, default: Any, kinds: tuple[type, ...], expected: str) -> Any:
        self._used.add(key)
        value = self.values.get(key, default)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            self.problems.append(f"{self.prefix}.{key}: expected {expected} (got {value!r})")
            return default
        return value

    def text(self, key: str, default: str) -> str:
        return str(self._get(key, default, (str,), "a string"))

    def choice(self, key: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.text(key, default)
        if value not in allowed:
            self.problems.append(f"{self.prefix}.{key}: one of {allowed} (got {value!r})")
            return default
        return value

    def number(self, key: str, default: float, *, low: float = 0.0, high: float = 1e12) -> float:
        value = float(self._get(key, default, (int, float), "a number"))
        if not low <= value <= high:
            self.problems.append(f"{self.prefix}.{key}: between {low} and {high} (got {value})")
            return default
        return value

    def flag(self, key: str, default: bool) -> bool:
        return bool(self._get(key, default, (bool,), "true or false"))

    def secret(self, key: str, default_name: str) -> str:
        """The secret named by `key` (never the secret itself), read from the credential store."""
        name = self.text(key, default_name)
        if self._profile_missing:
            return ""
        try:
            value = self._read_secret(name)
        except (ConfigError, OSError, KeyError, ValueError) as exc:
            self.problems.append(f"{self.prefix}.{key}: secret {name!r} unreadable ({exc})")
            return ""
        if not value:
            self.problems.append(f"{self.prefix}.{key}: secret {name!r} is empty")
        return value.strip()

    def finish(self) -> None:
        """Unknown keys are problems too; raise ConfigError with all of them."""
        for key in sorted(set(self.values) - self._used):
            self.problems.append(f"{self.prefix}.{key}: unknown key")
        if self.problems:
            raise ConfigError(self.problems)


# --- header and URL safety -------------------------------------------------------------


def idempotency_header(key: str) -> str:
    """The Idempotency-Key header for an idempotency key: its SHA-256 in hex.

    An id from the till can be any text (Łódź, a leading space, a bidi mark) and no header
    carries that as it is; its digest is ASCII, as unique, and the same on every retry.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def header_value(value: str) -> str | None:
    """value when a header can carry it as it is (visible ASCII, no space around), else None."""
    safe = value.isascii() and value.isprintable() and value == value.strip() != ""
    return value if safe else None


def path_segment(value: str, *, connector: str) -> str:
    """Any id as one URL path segment: percent-quoted, '/', '?', '#' and '%' included.

    A segment of dots only would be resolved away ('..' is the parent) and requests unquotes
    '%2E' back to '.', so such an id (and an empty one) is UnsendableError: it names nothing.
    """
    if not value.strip("."):
        raise UnsendableError(
            f"{connector}: an id of dots only names no record", connector=connector
        )
    return quote(value, safe="")


def join(base_url: str, path: str) -> str:
    """base_url (with or without a trailing slash, maybe with a path prefix) + '/api/...'."""
    return base_url.rstrip("/") + "/" + path.lstrip("/")


_WIRE = msgspec.json.Encoder(decimal_format="number", order="sorted")


def wire_json(body: Any) -> bytes:
    """JSON for a cloud: every Decimal written as a number from its own text (never a float)."""
    return _WIRE.encode(body)


class Vault(Protocol):
    """What a connector keeps between runs (vault.py): its token, the records it made."""

    durable: bool

    def load_token(self, destination: str) -> dict[str, Any] | None: ...

    def save_token(self, destination: str, token: dict[str, Any]) -> None: ...

    def links(self, destination: str, kind: str) -> dict[str, str]: ...

    def save_link(self, destination: str, kind: str, key: str, fingerprint: str) -> None: ...


class MemoryVault:
    """A vault that forgets at exit: for a probe from the installer or the doctor."""

    durable = False

    def __init__(self) -> None:
        self._tokens: dict[str, dict[str, Any]] = {}
        self._links: dict[tuple[str, str], dict[str, str]] = {}

    def load_token(self, destination: str) -> dict[str, Any] | None:
        return self._tokens.get(destination)

    def save_token(self, destination: str, token: dict[str, Any]) -> None:
        self._tokens[destination] = dict(token)

    def links(self, destination: str, kind: str) -> dict[str, str]:
        return dict(self._links.get((destination, kind), {}))

    def save_link(self, destination: str, kind: str, key: str, fingerprint: str) -> None:
        self._links.setdefault((destination, kind), {})[key] = fingerprint
