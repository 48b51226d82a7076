"""Alerts: new dead letters, halted destinations and damaged stores, one digest, SMTP or webhook."""

from __future__ import annotations

import logging
import smtplib
import time
from email.message import EmailMessage

import requests

from agent.config import AlertsSettings
from agent.health import FAILING, Health
from agent.ledger import DeadLetter, DeadLetters
from agent.logs import redact

log = logging.getLogger(__name__)

DESTINATION_PREFIX = "destination:"
STORE_PREFIX = "store:"  # a store found damaged at start and moved aside (app.py)
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
        self._told: set[str] = set()  # failing components already in a digest

    @property
    def enabled(self) -> bool:
        return bool(self._settings.smtp_host or self._settings.webhook_url)

    def send_digest(self) -> bool:
        """Send one digest if anything is new; raise if sending fails (kept for the next run)."""
        letters = self._dead_letters.unnotified()
        halted = self._newly_failing(DESTINATION_PREFIX)
        damaged = self._newly_failing(STORE_PREFIX)
        if not self.enabled or not (letters or halted or damaged):
            return False
        subject, text = self._compose(letters, halted, damaged)
        if self._settings.smtp_host:
            self._send_mail(subject, text)
        if self._settings.webhook_url:
            self._send_webhook(subject, letters, halted, damaged)
        self._dead_letters.mark_notified([d.id for d in letters], time.time())
        self._told |= {DESTINATION_PREFIX + name for name in halted}
        self._told |= {STORE_PREFIX + store for store in damaged}
        log.info(
            "sent an alert digest",
            extra={"deadLetters": len(letters), "halted": halted, "damaged": sorted(damaged)},
        )
        return True

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

    def _compose(
        self, letters: list[DeadLetter], halted: dict[str, str], damaged: dict[str, str]
    ) -> tuple[str, str]:
        store, till = self._identity
        parts = []
        if damaged:
            parts.append(f"damaged store: {', '.join(damaged)}")
        if letters:
            parts.append(f"{len(letters)} dead letter{'s' if len(letters) != 1 else ''}")
        if halted:
            parts.append(f"halted: {', '.join(halted)}")
        subject = f"[till-agent] store {store} till {till}: {'; '.join(parts)}"
        lines = [subject, ""]
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

    def _send_webhook(
        self,
        subject: str,
        letters: list[DeadLetter],
        halted: dict[str, str],
        damaged: dict[str, str],
    ) -> None:
        body = {
            "summary": subject,
            "store": self._identity[0],
            "till": self._identity[1],
            "halted": list(halted),
            "damagedStores": [{"file": name, "detail": d} for name, d in damaged.items()],
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
