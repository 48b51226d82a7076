"""Retention and erasure: purge what outlived its retention, forget a person, rotate the keys.

This package is where personal data ends: the timed purge, `forget` of one person across every
store, and key rotation. The keyring that seals it (crypto.py) is in agent/core, as every layer
seals or opens with it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from agent.core import config, crypto
from agent.core.errors import StorageError
from agent.core.failpoints import failpoint
from agent.core.matchkeys import subject_keys
from agent.core.metrics import Metrics
from agent.ledger import LOW_PRIORITY, Outbox, Transaction, erasure

log = logging.getLogger(__name__)

DAY = 86400.0
# A wall clock that runs ahead of the monotonic clock by more than this between two purges
# has jumped: retention is then measured by the monotonic clock, so no mass purge follows.
CLOCK_JUMP_SECONDS = 3600.0


class SealedStore(Protocol):
    """Another store of sealed personal data (the contact cache): purge it, erase from it."""

    def purge_expired(self, now: float) -> int: ...

    def forget_person(self, *, email: str | None, mobile_phone: str | None) -> int: ...

    def sealed_count(self, key_id: str) -> int: ...

    def checkpoint(self) -> None: ...


@dataclass
class PurgeReport:
    """What one purge run did: counts only, never values."""

    delivered_deleted: int = 0
    quarantine_redacted: int = 0
    dead_letters_redacted: int = 0
    journal_deleted: int = 0
    cached_contacts_expired: int = 0
    ledger_deleted: int = 0
    resealed: int = 0
    key_rotated: bool = False
    keys_destroyed: list[str] = field(default_factory=list)
    pages_released: int = 0
    clock_jump_seconds: float = 0.0
    checkpoint_pending: bool = False  # the disk was full: the WAL is folded in at the next run


@dataclass
class ForgetReport:
    """What erasing one person touched."""

    records: int = 0
    queued_items_stripped: int = 0
    queued_items_removed: int = 0
    quarantine_deleted: int = 0
    dead_letters_redacted: int = 0
    cached_contacts_removed: int = 0
    in_flight: int = 0


class Privacy:
    """Runs the purge and erasure over the outbox file and the keyring.

    It decides what is due and whom to forget; the statements that delete, redact and re-seal
    the ledger's rows are agent/ledger/erasure.py's.
    """

    def __init__(
        self,
        outbox: Outbox,
        keyring: crypto.Keyring,
        settings: config.Settings,
        *,
        now: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        stores: Sequence[SealedStore] = (),
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._stores = tuple(stores)
        self._outbox = outbox
        self._keyring = keyring
        self._settings = settings
        self._now = now
        self._monotonic = monotonic
        self._last_run: tuple[float, float] | None = None

    @property
    def keyring(self) -> crypto.Keyring:
        return self._keyring

    # -- the timed purge -----------------------------------------------------------------

    def purge(self) -> PurgeReport:
        """Everything past its retention goes; then the WAL is truncated (and maybe VACUUM)."""
        report = PurgeReport()
        now = self._trusted_now(report)
        privacy = self._settings.privacy
        report.delivered_deleted = self._outbox.purge_acked()
        failpoint("purge.after_delete")
        report.quarantine_redacted = self._outbox.run(
            lambda tx: erasure.redact_quarantine(
                tx, now - privacy.quarantine_retention_days * DAY, now
            )
        )
        report.dead_letters_redacted = self._outbox.run(
            lambda tx: erasure.redact_dead_letters(
                tx, now - privacy.dead_letter_retention_days * DAY, now
            )
        )
        report.journal_deleted = self._outbox.run(
            lambda tx: erasure.delete_journal(tx, now - privacy.journal_retention_days * DAY)
        )
        report.ledger_deleted = self._outbox.run(
            lambda tx: erasure.purge_records(tx, now - privacy.ledger_retention_days * DAY)
        )
        report.cached_contacts_expired = sum(s.purge_expired(now) for s in self._stores)
        self._rotate_keys(now, report)
        report.pages_released = self._outbox.shrink()
        report.checkpoint_pending = not self._checkpoint()
        if self._metrics is not None:
            self._metrics.purge_runs.inc()
        log.info("purge done", extra={"report": report.__dict__})
        return report

    def _checkpoint(self) -> bool:
        """Fold every WAL into its file; False when that needs disk space there is none of.

        The deletes have committed by then (secure_delete zeroed them, no space needed), so a
        full disk postpones only the checkpoint: the purge must not fail because of it.
        """
        done = True
        stores: list[Outbox | SealedStore] = [self._outbox, *self._stores]
        for store in stores:
            try:
                store.checkpoint()
            except StorageError as exc:
                log.warning("purge done, but a WAL checkpoint waits for disk space: %s", exc)
                done = False
        return done

    def _trusted_now(self, report: PurgeReport) -> float:
        """The wall clock, unless it jumped ahead since the last run in this process."""
        wall, mono = self._now(), self._monotonic()
        if self._last_run is not None:
            last_wall, last_mono = self._last_run
            expected = last_wall + (mono - last_mono)
            if wall - expected > CLOCK_JUMP_SECONDS:
                report.clock_jump_seconds = wall - expected
                log.warning("wall clock jumped ahead; retention uses the monotonic clock")
                wall = expected
        self._last_run = (wall, mono)
        return wall

    # -- keys ----------------------------------------------------------------------------

    def _rotate_keys(self, now: float, report: PurgeReport) -> None:
        """New data key when the active one is due; destroy keys past the longest retention."""
        moment = dt.datetime.fromtimestamp(now, dt.UTC)
        age_days = (moment - self._keyring.active_created).total_seconds() / DAY
        if age_days >= self._settings.privacy.key_rotation_days:
            self._keyring.add(crypto.new_data_key(moment))
            report.key_rotated = True
        expiry = moment - dt.timedelta(days=self._settings.longest_retention_days)
        old = [
            k.key_id
            for k in self._keyring.data_keys()
            if k.key_id != self._keyring.active_key_id
            and dt.datetime.fromisoformat(k.created) <= expiry
        ]
        for key_id in old:
            self._destroy_when_unused(key_id, report)
        if report.key_rotated or report.keys_destroyed:
            crypto.save(self._settings.privacy.key_file, self._keyring)

    def _destroy_when_unused(self, key_id: str, report: PurgeReport) -> None:
        """Re-seal what the key still seals, then destroy it; an item in flight postpones it."""

        def reseal_and_count(tx: Transaction) -> int:
            report.resealed += self._reseal(tx, key_id)
            return erasure.sealed_count(tx, key_id)

        still_sealed = self._outbox.run(reseal_and_count)
        still_sealed += sum(s.sealed_count(key_id) for s in self._stores)
        if still_sealed == 0:
            self._keyring.remove(key_id)
            report.keys_destroyed.append(key_id)

    def _reseal(self, tx: Transaction, key_id: str) -> int:
        """Re-seal, under the active key, every live value still sealed with key_id."""
        count = 0
        for queue in self._outbox.queues:
            for queue_id, item in tx.pending_items(queue):
                token = item.get("personal")
                if token and crypto.key_id_of(token) == key_id:
                    aad = crypto.record_aad(item["kind"], item["key"])
                    item["personal"] = self._keyring.seal(self._keyring.open(token, aad), aad)
                    count += tx.replace(queue, queue_id, item)
        return count + erasure.reseal_rows(tx, self._keyring, key_id)

    # -- erasure on request --------------------------------------------------------------

    def forget(self, *, email: str | None = None, mobile_phone: str | None = None) -> ForgetReport:
        """Remove a person from every local store; queued receipts go on without them."""
        region = self._settings.agent.default_region
        subjects = [
            self._keyring.keyed_hash(s.encode())
            for s in subject_keys(email=email, mobile_phone=mobile_phone, default_region=region)
        ]
        report = self._outbox.run(lambda tx: self._forget(tx, subjects))
        report.cached_contacts_removed = sum(
            s.forget_person(email=email, mobile_phone=mobile_phone) for s in self._stores
        )
        for store in self._stores:
            store.checkpoint()
        self._outbox.purge_acked()  # delivered copies still on disk go now, not at the next purge
        self._outbox.checkpoint()
        log.info("forgot a person", extra={"report": report.__dict__})
        return report

    def _forget(self, tx: Transaction, subjects: list[str]) -> ForgetReport:
        report = ForgetReport()
        if not subjects:
            return report
        records = erasure.records_of(tx, subjects)
        report.records = len(records)
        for kind, key in records:
            if kind == "quarantine":
                report.quarantine_deleted += erasure.delete_quarantined(tx, key)
            else:
                self._forget_queued(tx, kind, key, report)
                report.dead_letters_redacted += erasure.strip_dead_letters(tx, key, time.time())
                erasure.strip_journal(tx, key)
            erasure.forget_subjects(tx, kind, key)
        return report

    def _forget_queued(self, tx: Transaction, kind: str, key: str, report: ForgetReport) -> None:
        """A receipt leaves without its buyer; a contact registration is withdrawn."""
        for queue in self._outbox.queues:
            for queue_id, item in tx.pending_items(queue):
                if item.get("key") != key or item.get("kind") != kind:
                    continue
                if kind == "receipt":
                    item["personal"], item["forgotten"] = None, True
                    report.queued_items_stripped += tx.replace(queue, queue_id, item)
                elif tx.remove(queue, queue_id):
                    report.queued_items_removed += 1
                    destination = queue.removesuffix(LOW_PRIORITY)
                    erasure.mark_forgotten(tx, key, destination, time.time())
            report.in_flight += self._outbox.claimed_count(queue, key)
