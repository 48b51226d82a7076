"""The next lever for each target a benchmark can miss, named in the run's one table.

Keyed by benchmark (the results file's name) and the start of a figure. A missed target
with no lever here fails the `make bench` run (tests/perf/conftest.py): each miss must say
what is to be tried next (issue 21). Keep them true with docs/performance.md.
"""

from __future__ import annotations

INTAKE_CPU = (
    "a lighter HTTP front for the POS route (waitress is a third of intake's Python time); "
    "then fewer statements per receipt (day_totals, counters) and msgspec for the queue item"
)
DELIVERY_COMMITS = (
    "the ack folded into the ledger's commit and claims batched: one commit per delivered "
    "item instead of three (claim, ledger, ack)"
)
DOWNLOAD_YIELDS = (
    "the first download's apply yielding to sales: smaller transactions and a pause between "
    "pages while sales wait, as the purge does"
)

P1 = {
    "sequential p50": INTAKE_CPU,
    "sequential p99": INTAKE_CPU,
    "KiB written to storage per receipt": (
        "fewer B-tree pages per receipt: day_totals and the counters rewritten per sale, "
        "receipt_revisions' extra index"
    ),
    "agent CPU ms per receipt": INTAKE_CPU,
    "end to end (intake + delivery): agent CPU": (
        DELIVERY_COMMITS + "; then urllib3's pool for the send (requests' per-call preparation)"
    ),
    "end to end: KiB written": (
        DELIVERY_COMMITS + ", the item deleted in that commit (no delivered rows, no ready index)"
    ),
    "8 clients": (
        "a writer thread that group-commits across POS clients; intake's CPU per receipt "
        "(the agent is CPU-bound on the core the GIL gives it)"
    ),
}
LEVERS: dict[str, dict[str, str]] = {
    "p1_intake": P1,
    "p1_intake_delivery_on": P1,
    "p2_vs_direct": {
        "direct p99 / agent p99": (
            "intake's tail while delivery runs: " + DELIVERY_COMMITS + " (fewer writer turns)"
        ),
        "cloud down": "a defect: the agent must take every sale with the cloud down",
    },
    "p2_vs_direct_delivery_off": {
        "direct p99 / agent p99": INTAKE_CPU,
        "cloud down": "a defect: the agent must take every sale with the cloud down",
    },
    "p3_drain": {
        "drain time": "the send window (issue 21 §0) at the rate budget's pace",
        "answered 429": "the rate budget's pacing against the cloud's window",
        "bulk calls": "a defect in contact batching (agent/delivery/bulk.py)",
        "contact changes sent alone": "a defect in contact batching (agent/delivery/bulk.py)",
    },
    "p4_cache": {
        "local apply rate": "bigger apply transactions; fewer indexes during the load",
        "peak RSS": "a smaller writer cache during the download (decision 0006)",
        "bytes on disk per contact": "shorter blind keys or sealed fields (decision 0006)",
        "lookup by phone over HTTP p99": (
            "the round trip, not the lookup (in-process p99 0.12 ms): answer lookups without "
            "waitress' task queue; compare with the yardstick's p99 of the same run"
        ),
    },
    "p5_footprint": {
        "healthy after restart": "count the queues from the ready index instead of scanning",
        "idle RSS": "fewer threads and smaller SQLite caches while idle",
        "idle CPU": "longer sleeps in the backing-off workers while idle",
    },
    "p6_purge": {
        "purge": "delete delivered items in the ledger's own commit (nothing left to purge)",
        "intake p99 during purge": "smaller purge chunks and a longer pause between them",
    },
    "p7_first_download": {
        "share of the allowed rate": "apply pages while the next is fetched (overlap)",
        "requests answered 429": "a defect: the budget must follow the source's window",
        "lookups lost again": "a defect: an applied page must stay findable",
    },
    "p8_worst_case": {
        "intake p99": DOWNLOAD_YIELDS,
        "intake p99.9": DOWNLOAD_YIELDS,
        "agent CPU": (
            "the download dominates (P4: ~35 s of CPU for a million contacts); then the "
            "per-receipt levers of P1: " + DELIVERY_COMMITS
        ),
        "agent KiB written": (
            "the download's cache pages and indexes dominate; then " + DELIVERY_COMMITS
        ),
    },
}
