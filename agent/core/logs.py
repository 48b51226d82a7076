"""Structured JSON logs: one object per line, redacted, to stderr and to daily files kept N days."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

# Attributes every LogRecord has; anything else was passed with extra= and becomes a field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
REDACTED = "[redacted]"
# What personal data and secrets look like in free text. The code never logs them on purpose;
# this is the net under that rule (an exception message quoting a body, a library's debug line).
# Every pattern runs in linear time on any input: each may only start where a run of its
# characters starts (a lookbehind), repeats possessively where it needs no backtracking, and
# backtracks over a bounded stretch where it does — a hostile 40,000-character path costs
# microseconds, not seconds.
_SECRET = re.compile(
    r"(?i)(bearer|apikey|api[_-]?key|secret|token|password)([\"':= ]++)[^\s\"',}]++"
)
_QUERY = re.compile(r"(?<=[\w/])\?[\w.~%-]++=[^\s\"'<>]*+")  # a URL's query string
_PATTERNS = [
    # email addresses, written plainly or percent-encoded (%40)
    re.compile(r"(?<![\w.+%-])[\w.+-]++(?:@|%40)[\w-]++(?:\.[\w-]++)++"),
    # phone-number-like runs of digits (a leading + or %2B), not inside an id (S042-T03-000123)
    # or a decimal number; at most 24 characters, so the backtracking has a bound
    re.compile(r"(?<![\w.-])(?:\+|%2[Bb])?\d[\d ()-]{6,24}\d(?![\w-]|\.\d)"),
]
LOG_FILE_PREFIX = "till-agent-"
MESSAGE_CHARS = 4000  # a log line's message, each extra field and the traceback, at most
FIELD_CHARS = 1000
EXCEPTION_CHARS = 16000
log = logging.getLogger(__name__)


def redact(text: str) -> str:
    """The text with anything shaped like an email, a phone number, a secret or a URL's query
    string replaced (in linear time, whatever the input)."""
    text = _SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _QUERY.sub(f"?{REDACTED}", text)
    for pattern in _PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


def bounded(value: object, limit: int = FIELD_CHARS) -> object:
    """A log field cut to limit characters (a hostile client picks its own lengths)."""
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"…[{len(value) - limit} more]"
    return value


class JsonFormatter(logging.Formatter):
    """time, level, logger, message, the extra= fields, the exception — all redacted."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": bounded(record.getMessage(), MESSAGE_CHARS),
        }
        entry.update({k: bounded(v) for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = bounded(self.formatException(record.exc_info), EXCEPTION_CHARS)
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


class DailyFileHandler(logging.Handler):
    """till-agent-YYYY-MM-DD.log, one file per UTC day; files older than retention are deleted.

    No file is ever renamed, so it works on Windows where an open file cannot be renamed.
    """

    def __init__(self, directory: Path, retention_days: int) -> None:
        super().__init__()
        self._directory = directory
        self._retention_days = retention_days
        self._day: dt.date | None = None
        self._stream: TextIO | None = None
        self._io_lock = threading.Lock()
        self._failed_day: dt.date | None = None
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def emit(self, record: logging.LogRecord) -> None:
        day = dt.datetime.fromtimestamp(record.created, dt.UTC).date()
        if day == self._failed_day:
            return  # said once already; stderr (the journal) still has every line
        try:
            line = self.format(record)
            with self._io_lock:
                self._stream_for(day)
                assert self._stream is not None
                self._stream.write(line + "\n")
                self._stream.flush()
        except OSError as exc:
            self._give_up(day, exc)
        except Exception:  # logging must never take the agent down
            self.handleError(record)

    def _give_up(self, day: dt.date, exc: OSError) -> None:
        """One warning through the other handlers instead of a traceback for every line (a file
        left by another user, a full disk); the file is tried again the next day."""
        self._failed_day = day
        with self._io_lock:
            if self._stream is not None:
                self._stream.close()
            self._stream, self._day = None, None
        log.warning(
            "cannot write the log file in %s (%s); logging to stderr only until tomorrow",
            self._directory,
            exc.strerror or exc,
        )

    def _stream_for(self, day: dt.date) -> None:
        if day == self._day and self._stream is not None:
            return
        if self._stream is not None:
            self._stream.close()
        self._day = day
        self._stream = (self._directory / f"{LOG_FILE_PREFIX}{day.isoformat()}.log").open(
            "a", encoding="utf-8"
        )
        self.remove_expired(day)

    def remove_expired(self, today: dt.date) -> list[Path]:
        """Delete the day files older than the retention; returns what it deleted."""
        removed = []
        for path in self._directory.glob(f"{LOG_FILE_PREFIX}*.log"):
            try:
                day = dt.date.fromisoformat(path.stem.removeprefix(LOG_FILE_PREFIX))
            except ValueError:
                continue
            if (today - day).days > self._retention_days:
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def close(self) -> None:
        with self._io_lock:
            if self._stream is not None:
                self._stream.close()
                self._stream = None
        super().close()


def setup(
    level: str = "INFO",
    stream: TextIO | None = None,
    *,
    log_dir: Path | None = None,
    retention_days: int = 14,
) -> None:
    """JSON lines to stderr (the journal or the service's console) and, given a directory, files."""
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stderr)]
    if log_dir is not None:
        handlers.append(DailyFileHandler(log_dir, retention_days))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
        existing.close()
    for handler in handlers:
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    root.setLevel(level.upper())
    # waitress logs each client disconnect at INFO; keep its warnings only (or less, if asked).
    logging.getLogger("waitress").setLevel(max(logging.WARNING, root.level))
