"""The ledger's tables beside the queues in outbox.db: one migration step per change."""

from __future__ import annotations

STEPS = [
    """
    CREATE TABLE receipts (
        unique_receipt_id TEXT PRIMARY KEY,
        revision INTEGER NOT NULL,
        received_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        warnings TEXT NOT NULL DEFAULT '[]'
    );
    CREATE TABLE receipt_revisions (
        unique_receipt_id TEXT NOT NULL,
        revision INTEGER NOT NULL,
        content_hash TEXT NOT NULL,
        received_at REAL NOT NULL,
        PRIMARY KEY (unique_receipt_id, revision)
    );
    CREATE INDEX receipt_revisions_by_hash ON receipt_revisions (unique_receipt_id, content_hash);
    CREATE TABLE deliveries (
        record_key TEXT NOT NULL,
        destination TEXT NOT NULL,
        revision INTEGER NOT NULL,
        queue_id INTEGER NOT NULL,
        state TEXT NOT NULL,
        updated_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        last_error_id TEXT,
        cloud_error_id TEXT,
        PRIMARY KEY (record_key, destination, revision)
    );
    CREATE TABLE outbound_contacts (
        local_id TEXT PRIMARY KEY,
        content_hash TEXT NOT NULL UNIQUE,
        received_at REAL NOT NULL,
        cloud_contact_id TEXT
    );
    CREATE TABLE quarantine (
        error_id TEXT PRIMARY KEY,
        received_at REAL NOT NULL,
        route TEXT NOT NULL,
        code TEXT NOT NULL,
        reason TEXT NOT NULL,
        sealed_body TEXT,
        redacted_at REAL
    );
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)
    """,
    """
    CREATE TABLE subjects (
        subject TEXT NOT NULL,
        kind TEXT NOT NULL,
        record_key TEXT NOT NULL,
        PRIMARY KEY (subject, kind, record_key)
    );
    CREATE INDEX subjects_by_record ON subjects (kind, record_key)
    """,
    """
    ALTER TABLE deliveries ADD COLUMN first_failed_at REAL;
    ALTER TABLE deliveries ADD COLUMN last_error TEXT;
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        destination TEXT NOT NULL,
        kind TEXT NOT NULL,
        record_key TEXT NOT NULL,
        revision INTEGER NOT NULL,
        item TEXT NOT NULL,
        status INTEGER,
        reason TEXT NOT NULL,
        error_id TEXT NOT NULL,
        cloud_error_id TEXT,
        body_excerpt TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        redacted_at REAL,
        notified_at REAL
    )
    """,
    """
    ALTER TABLE deliveries ADD COLUMN delivered_body TEXT
    """,
    """
    ALTER TABLE deliveries ADD COLUMN queue TEXT
    """,
    """
    CREATE TABLE journal (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        destination TEXT NOT NULL,
        record_key TEXT NOT NULL,
        revision INTEGER NOT NULL,
        business_date TEXT NOT NULL,
        item TEXT NOT NULL,
        delivered_at REAL NOT NULL
    );
    CREATE INDEX journal_by_date ON journal (business_date, destination)
    """,
    """
    CREATE TABLE receipt_figures (
        unique_receipt_id TEXT NOT NULL,
        revision INTEGER NOT NULL,
        business_date TEXT NOT NULL,
        created_date TEXT NOT NULL,
        receipt_number TEXT NOT NULL,
        store_id TEXT NOT NULL,
        currency TEXT NOT NULL,
        order_id TEXT,
        refund_of TEXT,
        amounts TEXT NOT NULL,
        PRIMARY KEY (unique_receipt_id, revision)
    );
    CREATE INDEX receipt_figures_by_date ON receipt_figures (business_date);
    ALTER TABLE deliveries ADD COLUMN sent_key TEXT;
    ALTER TABLE deliveries ADD COLUMN sent_amounts TEXT;
    ALTER TABLE deliveries ADD COLUMN delivered_at REAL;
    CREATE INDEX deliveries_waiting ON deliveries (destination)
        WHERE state IN ('queued', 'retrying');
    CREATE TABLE day_totals (
        business_date TEXT NOT NULL,
        destination TEXT NOT NULL,
        taken_count INTEGER NOT NULL DEFAULT 0,
        taken_gross TEXT NOT NULL DEFAULT '0',
        delivered_count INTEGER NOT NULL DEFAULT 0,
        delivered_gross TEXT NOT NULL DEFAULT '0',
        PRIMARY KEY (business_date, destination)
    )
    """,
    """
    ALTER TABLE quarantine ADD COLUMN content_hash TEXT;
    ALTER TABLE quarantine ADD COLUMN times INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE quarantine ADD COLUMN last_at REAL;
    CREATE INDEX quarantine_by_hash ON quarantine (content_hash);
    INSERT OR REPLACE INTO counters VALUES
        ('quarantine_bytes', (SELECT COALESCE(SUM(LENGTH(sealed_body)), 0) FROM quarantine));
    CREATE TRIGGER quarantine_bytes_in AFTER INSERT ON quarantine BEGIN
        UPDATE counters SET value = value + COALESCE(LENGTH(NEW.sealed_body), 0)
        WHERE name = 'quarantine_bytes';
    END;
    CREATE TRIGGER quarantine_bytes_out AFTER DELETE ON quarantine BEGIN
        UPDATE counters SET value = value - COALESCE(LENGTH(OLD.sealed_body), 0)
        WHERE name = 'quarantine_bytes';
    END;
    CREATE TRIGGER quarantine_bytes_change AFTER UPDATE OF sealed_body ON quarantine BEGIN
        UPDATE counters SET value = value - COALESCE(LENGTH(OLD.sealed_body), 0)
            + COALESCE(LENGTH(NEW.sealed_body), 0)
        WHERE name = 'quarantine_bytes';
    END;
    INSERT OR REPLACE INTO counters VALUES
        ('dead_letters_kept', (SELECT COUNT(*) FROM dead_letters));
    CREATE TRIGGER dead_letters_kept_in AFTER INSERT ON dead_letters BEGIN
        UPDATE counters SET value = value + 1 WHERE name = 'dead_letters_kept';
    END;
    CREATE TRIGGER dead_letters_kept_out AFTER DELETE ON dead_letters BEGIN
        UPDATE counters SET value = value - 1 WHERE name = 'dead_letters_kept';
    END
    """,
]
