"""The core every layer stands on; it imports no other folder of the agent.

Settings (config.py) and per-OS paths, the shapes shared across layers (models.py), the error
tree and its reasons in words, SQLite opened the one durable way (db.py), the keyring that seals
personal data (crypto.py) and who may read secrets (acl.py, filemodes.py), logs, health and
metrics, the clock the workers read (timebase.py), timed jobs (scheduler.py), systemd's notify
protocol, the rate budgets and backoff every call to a cloud obeys, match keys, takings figures,
the crash points of the crash tests, and the words a person reads (wording.py).
"""
