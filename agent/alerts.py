"""Alerts: new dead letters and halted destinations, one digest per interval, by SMTP or webhook."""

from __future__ import annotations

import logging
import smtplib
import time
from email.message import EmailMessage

import requests

from agent.config import AlertsSettings
from agent.health import DEGRADED, FAILING, Health
from agent.ledger import DeadLetter, DeadLetters
from agent.logs import redact

log = logging.getLogger(__name__)

DESTINATION_PREFIX = "destination:"
FORECAST = "storage:forecast"  # agent.forecast.COMPONENT: the store is filling up
MAX_LINES = 50


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
        self._halts_told: set[str] = set()
        self._forecast_told = False

    @property
    def enabled(self) -> bool:
        return bool(self._settings.smtp_host or self._settings.webhook_url)

    def send_digest(self) -> bool:
        """Send one digest if anything is new; raise if sending fails (kept for the next run)."""
        letters = self._dead_letters.unnotified()
        halted = self._newly_halted()
        filling = self._new_forecast()
        if not self.enabled or not (letters or halted or filling):
            return False
        subject, text = self._compose(letters, halted, filling)
        if self._settings.smtp_host:
            self._send_mail(subject, text)
        if self._settings.webhook_url:
            self._send_webhook(subject, letters, halted, filling)
        self._dead_letters.mark_notified([d.id for d in letters], time.time())
        self._halts_told |= set(halted)
        self._forecast_told = self._forecast_told or filling is not None
        log.info("sent an alert digest", extra={"deadLetters": len(letters), "halted": halted})
        return True

    def _new_forecast(self) -> str | None:
        """The forecast's words once it falls under the setting (again after it recovered)."""
        state = self._health.get(FORECAST)
        if state is None or state.state != DEGRADED:
            self._forecast_told = False
            return None
        return None if self._forecast_told else state.detail

    def _newly_halted(self) -> list[str]:
        halted = {
            c.name.removeprefix(DESTINATION_PREFIX)
            for c in self._health.snapshot()
            if c.name.startswith(DESTINATION_PREFIX) and c.state == FAILING
        }
        self._halts_told &= halted  # a destination that recovered may be told again later
        return sorted(halted - self._halts_told)

    def _compose(
        self, letters: list[DeadLetter], halted: list[str], filling: str | None
    ) -> tuple[str, str]:
        store, till = self._identity
        parts = [filling] if filling else []
        if letters:
            parts.append(f"{len(letters)} dead letter{'s' if len(letters) != 1 else ''}")
        if halted:
            parts.append(f"halted: {', '.join(halted)}")
        subject = f"[till-agent] store {store} till {till}: {'; '.join(parts)}"
        lines = [subject, ""]
        if filling:
            lines.append(
                f"storage: {filling} (warned below "
                f"{self._settings.store_full_warning_hours:g} hours): see the status page"
            )
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

    def _send_webhook(
        self, subject: str, letters: list[DeadLetter], halted: list[str], filling: str | None
    ) -> None:
        body = {
            "summary": subject,
            "store": self._identity[0],
            "till": self._identity[1],
            "halted": halted,
            "storeFilling": filling,
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
                for d in letters
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
