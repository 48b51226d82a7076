"""Run in a child process by P4: sync N generated contacts into the cache, print rate and RSS."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from agent import crypto
from agent.contacts import ContactCache
from agent.health import Health
from agent.models import ContactPage, SourceContact
from agent.sync import ContactSync

PAGE = 200


def page(start: int) -> ContactPage:
    contacts = [
        SourceContact(
            contact_id=f"00000000-0000-4000-8000-{n:012d}",
            first_name="Test",
            last_name=f"Person {n}",
            email=f"test.person.{n}@example.com",
            mobile_phone=f"+4670{n:07d}",
            member_number=f"M{n:08d}",
        )
        for n in range(start, start + PAGE)
    ]
    return ContactPage(contacts=contacts, cursor=str(start + PAGE), has_more=True)


class GeneratedFeed:
    """A version-cursor feed of `count` synthetic contacts, pages of 200 (Lightspeed's maximum)."""

    name = "bench"

    def __init__(self, count: int) -> None:
        self.count = count

    def fetch_contact_changes(self, cursor: str | None, limit: int) -> ContactPage:
        start = int(cursor or 0)
        result = page(start)
        return ContactPage(
            contacts=result.contacts,
            cursor=str(start + PAGE),
            has_more=start + PAGE < self.count,
        )


def main(data_dir: Path, count: int) -> None:
    keyring = crypto.load_or_create(data_dir / "keyring.json", may_create=True)
    cache = ContactCache(data_dir, keyring, default_region="SE")
    started = time.perf_counter()
    ContactSync(GeneratedFeed(count), cache, Health(), page_size=PAGE).run_once()
    elapsed = time.perf_counter() - started
    cache.checkpoint()
    cache.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rate": count / elapsed, "peak_rss_mb": peak_mb, "seconds": elapsed}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
