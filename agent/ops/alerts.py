"""Alerts: dead letters, halted clouds, damaged or filling stores, one digest, SMTP or webhook."""

from __future__ import annotations

import logging
import smtplib
import time
from dataclasses import dataclass
from email.message import EmailMessage

import requests

from agent.core.config import AlertsSettings
from agent.core.health import DEGRADED, FAILING, Health
from agent.core.logs import redact
from agent.ledger import DeadLetter, DeadLetters

log = logging.getLogger(__name__)

DESTINATION_PREFIX = "destination:"
STORE_PREFIX = "store:"  # a store found damaged at start and moved aside (app.py)
FORECAST = "storage:forecast"  # agent.ops.forecast.COMPONENT: the store is filling up
MAX_LINES = 50


@dataclass(frozen=True)
class News:
    """What one digest tells: each part empty when there is nothing new of its kind."""

    letters: list[DeadLetter]
    halted: dict[str, str]  # destination -> detail
    damaged: dict[str, str]  # store file -> what was wrong
    filling: str | None  # the forecast's words, when under the warning

    def __bool__(self) -> bool:
        return bool(self.letters or self.halted or self.damaged or self.filling)


class Alerts:
    """Collects what a person must know since the last digest and sends it once."""

    def __init__(
        self,
        settings: AlertsSettings,
        dead_letters: DeadLetters,
        board: Health,
        identity: tuple[str, str],
    ) -> None:
        self._settings = settings
        self._dead_letters = dead_letters
        self._health = board
        self._identity = identity
        self._told: set[str] = set()  # failing components already in a digest
        self._forecast_told = False

    @property
    def enabled(self) -> bool:
        return bool(self._settings.smtp_host or self._settings.webhook_url)

    def send_digest(self) -> bool:
        """Send one digest if anything is new; raise if sending fails (kept for the next run)."""
        news = News(
            letters=self._dead_letters.unnotified(),
            halted=self._newly_failing(DESTINATION_PREFIX),
            damaged=self._newly_failing(STORE_PREFIX),
            filling=self._new_forecast(),
        )
        if not self.enabled or not news:
            return False
        subject, text = self._compose(news)
        if self._settings.smtp_host:
            self._send_mail(subject, text)
        if self._settings.webhook_url:
            self._send_webhook(subject, news)
        self._dead_letters.mark_notified([d.id for d in news.letters], time.time())
        self._told |= {DESTINATION_PREFIX + name for name in news.halted}
        self._told |= {STORE_PREFIX + store for store in news.damaged}
        self._forecast_told = self._forecast_told or news.filling is not None
        log.info(
            "sent an alert digest",
            extra={
                "deadLetters": len(news.letters),
                "halted": sorted(news.halted),
                "damaged": sorted(news.damaged),
            },
        )
        return True

    def _new_forecast(self) -> str | None:
        """The forecast's words once it falls under the setting (again after it recovered)."""
        state = self._health.get(FORECAST)
        if state is None or state.state != DEGRADED:
            self._forecast_told = False
            return None
        return None if self._forecast_told else state.detail

    def _newly_failing(self, prefix: str) -> dict[str, str]:
        """Components under prefix that are failing and not told yet: name -> detail."""
        failing = {
            c.name: c.detail
            for c in self._health.snapshot()
            if c.name.startswith(prefix) and c.state == FAILING
        }
        # One that recovered may be told again later.
        self._told = {n for n in self._told if not n.startswith(prefix) or n in failing}
        return {
            name.removeprefix(prefix): detail
            for name, detail in sorted(failing.items())
            if name not in self._told
        }

    def _compose(self, news: News) -> tuple[str, str]:
        store, till = self._identity
        letters, halted, damaged = news.letters, news.halted, news.damaged
        parts = [news.filling] if news.filling else []
        if damaged:
            parts.append(f"damaged store: {', '.join(damaged)}")
        if letters:
            parts.append(f"{len(letters)} dead letter{'s' if len(letters) != 1 else ''}")
        if halted:
            parts.append(f"halted: {', '.join(halted)}")
        subject = f"[till-agent] store {store} till {till}: {'; '.join(parts)}"
        lines = [subject, ""]
        if news.filling:
            lines.append(
                f"storage: {news.filling} (warned below "
                f"{self._settings.store_full_warning_hours:g} hours): see the status page"
            )
        lines += [
            f"store {name}: {detail}; it may hold sales not yet sent: salvage it "
            "(docs/operations.md)"
            for name, detail in damaged.items()
        ]
        lines += [f"destination {name}: credentials refused, queue kept" for name in halted]
        lines += [_line(d) for d in letters[:MAX_LINES]]
        if len(letters) > MAX_LINES:
            lines.append(f"... and {len(letters) - MAX_LINES} more: till-agent dead-letters list")
        return subject, redact("\n".join(lines) + "\n")

    def _send_mail(self, subject: str, text: str) -> None:
        settings = self._settings
        message = EmailMessage()
        message["Subject"] = subject
        message["From"] = settings.smtp_from
        message["To"] = ", ".join(settings.smtp_to)
        message.set_content(text)
        with smtplib.SMTP(
            settings.smtp_host, settings.smtp_port, timeout=settings.timeout_seconds
        ) as smtp:
            if settings.smtp_starttls:
                smtp.starttls()
            smtp.send_message(message)

    def _send_webhook(self, subject: str, news: News) -> None:
        body = {
            "summary": subject,
            "store": self._identity[0],
            "till": self._identity[1],
            "halted": list(news.halted),
            "storeFilling": news.filling,
            "damagedStores": [{"file": name, "detail": d} for name, d in news.damaged.items()],
            "deadLetters": [
                {
                    "id": d.id,
                    "destination": d.destination,
                    "recordKey": d.record_key,
                    "status": d.status,
                    "errorId": d.error_id,
                    "cloudErrorId": d.cloud_error_id,
                    "reason": redact(d.reason),
                }
                for d in news.letters
            ],
        }
        response = requests.post(
            self._settings.webhook_url, json=body, timeout=self._settings.timeout_seconds
        )
        response.close()
        response.raise_for_status()


def _line(letter: DeadLetter) -> str:
    return (
        f"dead letter {letter.id}: {letter.destination} {letter.kind} {letter.record_key} "
        f"status {letter.status or '-'} errorId {letter.error_id} "
        f"cloudErrorId {letter.cloud_error_id or '-'}: {letter.reason}"
    )
