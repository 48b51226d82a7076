"""Dead letters: kept sealed, listed without personal data, re-queued, purged, redacted."""

from __future__ import annotations

import json

from agent.core.errors import RejectedError
from agent.privacy import Privacy
from tests.conftest import make_receipt
from tests.fakes.senders import Clock, ScriptedSender, raising
from tests.ledger_probe import LedgerProbe
from tests.test_cli import till_agent
from tests.test_dispatch import dispatcher_for, drain
from tests.test_privacy import FakeClocks
from tests.test_privacy_scan import PLANTED, scan


def rejected_rig(start_agent, overrides=None, refusal=None, receipt_id="R-DEAD"):
    """An agent whose one receipt (with a buyer) the cloud refuses: a dead letter.

    refusal: the RejectedError (default: a 400 whose body echoes the buyer's email)."""
    agent, till = start_agent(overrides or {"destinations": {"engage": {"enabled": False}}})
    sender = ScriptedSender()
    clock = Clock()
    dispatcher = dispatcher_for(agent, sender, monotonic=clock)
    receipt = make_receipt(receipt_id)
    receipt["contact"] = {"matchKey": PLANTED["email"], "matchKeyType": "email"}
    assert till.post("/v1/receipts", receipt).status_code == 202
    sender.rules[receipt_id] = raising(
        refusal
        or RejectedError(
            "400",
            connector="x",
            status=400,
            cloud_error_id="e-1",
            body_excerpt=f"invalid email {PLANTED['email']}",
        )
    )
    drain(dispatcher, clock)
    return agent, till, sender, clock, dispatcher


def test_dead_letters_are_listed_without_personal_data(start_agent):
    agent, till, *_ = rejected_rig(start_agent)
    (letter,) = till.get("/v1/dead-letters").json()
    assert letter["recordKey"] == "R-DEAD"
    assert letter["status"] == 400
    assert letter["cloudErrorId"] == "e-1"
    assert PLANTED["email"] not in json.dumps(letter)  # the cloud's body echoed it: redacted
    assert till.get(f"/v1/dead-letters/{letter['id']}").json() == letter
    assert scan(agent.settings.agent.data_dir) == []


def test_a_retried_dead_letter_is_delivered(start_agent):
    _, till, sender, clock, dispatcher = rejected_rig(start_agent)
    (letter,) = till.get("/v1/dead-letters").json()
    del sender.rules["R-DEAD"]
    assert till.post(f"/v1/dead-letters/{letter['id']}/retry", {}).status_code == 202
    drain(dispatcher, clock)
    assert sender.sent == ["R-DEAD"]
    assert till.get("/v1/dead-letters").json() == []
    assert till.get("/v1/receipts/R-DEAD").json()["destinations"][0]["state"] == "delivered"


def test_a_purged_dead_letter_is_gone(start_agent):
    _, till, *_ = rejected_rig(start_agent)
    (letter,) = till.get("/v1/dead-letters").json()
    assert till.session.delete(f"{till.url}/v1/dead-letters/{letter['id']}", timeout=5).ok
    assert till.get("/v1/dead-letters").json() == []
    assert till.get(f"/v1/dead-letters/{letter['id']}").status_code == 404


def test_dead_letters_lose_personal_fields_after_their_retention(start_agent):
    agent, till, *_ = rejected_rig(start_agent)
    clocks = FakeClocks(start=__import__("time").time())
    privacy = Privacy(
        agent.outbox,
        agent.privacy.keyring,
        agent.settings,
        now=lambda: clocks.wall,
        monotonic=lambda: clocks.mono,
    )
    assert privacy.purge().dead_letters_redacted == 0
    clocks.advance_days(31)
    assert privacy.purge().dead_letters_redacted == 1
    (letter,) = till.get("/v1/dead-letters").json()
    assert letter["redacted"] is True
    with LedgerProbe(agent) as ledger:
        (item,) = ledger.dead_letter_items()
    assert item.personal is None


def test_forget_strips_a_dead_letter(start_agent):
    agent, _, *_ = rejected_rig(start_agent)
    assert agent.privacy.forget(email=PLANTED["email"]).dead_letters_redacted == 1


def test_dead_letter_commands_work_on_a_stopped_agent(start_agent, tmp_path):
    from tests.conftest import base_config, write_toml

    agent, till, *_ = rejected_rig(start_agent)
    till.close()
    agent.stop()
    config = write_toml(tmp_path / "config.toml", base_config(tmp_path))
    listed = till_agent("dead-letters", "list", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    assert "R-DEAD" in listed.stdout
    assert "e-1" in listed.stdout
    letter_id = listed.stdout.split()[0]
    shown = till_agent("dead-letters", "show", letter_id, "--config", str(config))
    assert json.loads(shown.stdout)["recordKey"] == "R-DEAD"
    assert till_agent("dead-letters", "retry", letter_id, "--config", str(config)).returncode == 0
    missing = till_agent("dead-letters", "show", letter_id, "--config", str(config))
    assert missing.returncode != 0
    assert "no dead letter" in missing.stderr


def test_an_id_too_large_for_sqlite_is_simply_not_found(agent_till):
    _, till = agent_till
    huge = "9" * 30
    assert till.get(f"/v1/dead-letters/{huge}").status_code == 404
    assert till.post(f"/v1/dead-letters/{huge}/retry", {}).status_code == 404
    assert till.session.delete(f"{till.url}/v1/dead-letters/{huge}", timeout=5).status_code == 404


def test_a_dead_lettered_receipt_is_listed_by_state(start_agent):
    _, till, *_ = rejected_rig(start_agent)
    assert till.post("/v1/receipts", make_receipt("R-WAITING")).status_code == 202
    dead = till.get("/v1/receipts", params={"state": "dead_lettered"}).json()
    assert [r["uniqueReceiptId"] for r in dead["receipts"]] == ["R-DEAD"]
    assert dead["receipts"][0]["destinations"][0]["state"] == "dead_lettered"
    waiting = till.get("/v1/receipts", params={"state": "undelivered"}).json()
    assert [r["uniqueReceiptId"] for r in waiting["receipts"]] == ["R-WAITING"]


def test_the_list_reaches_a_terminal_without_control_or_bidi_characters(start_agent, tmp_path):
    """Issue 14 §5: an id from the POS with a bidi override, a reason from a cloud."""
    from tests.conftest import base_config, write_toml

    agent, till = start_agent({"destinations": {"engage": {"enabled": False}}})
    sender, clock = ScriptedSender(), Clock()
    dispatcher = dispatcher_for(agent, sender, monotonic=clock)
    assert till.post("/v1/receipts", make_receipt("R-\u202eDEAD\u200b")).status_code == 202
    sender.rules["R-\u202eDEAD\u200b"] = raising(
        RejectedError("\x1b[2J refused \x07", connector="x", status=None)
    )
    drain(dispatcher, clock)
    till.close()
    agent.stop()
    config = write_toml(tmp_path / "config.toml", base_config(tmp_path))
    listed = till_agent("dead-letters", "list", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    assert "R-DEAD" in listed.stdout
    assert "refused" in listed.stdout
    for invisible in ("\u202e", "\u200b", "\x1b", "\x07"):
        assert invisible not in listed.stdout


EXCERPT = '{"errorCode": "ZzExcerptCode7", "field": "contact.email", "message": "[text]"}'


def test_the_clouds_excerpt_is_sealed_at_rest_and_shown_opened_with_its_reason(
    start_agent, tmp_path
):
    """Issue 14 §4: the excerpt (an allow-listed skeleton) is sealed like the personal data."""
    from tests.conftest import base_config, write_toml

    refusal = RejectedError(
        "loaded: HTTP 400", connector="x", status=400, cloud_error_id="e-2", body_excerpt=EXCERPT
    )
    agent, till, *_ = rejected_rig(start_agent, refusal=refusal, receipt_id="R-SEALED")
    with LedgerProbe(agent) as ledger:
        (raw,) = ledger.dead_letter_excerpts()
    assert raw.startswith("s1.")  # sealed at rest ...
    data = b"".join(p.read_bytes() for p in agent.settings.agent.data_dir.rglob("*") if p.is_file())
    assert b"ZzExcerptCode7" not in data  # ... in every byte of the data directory
    (letter,) = till.get("/v1/dead-letters").json()
    assert letter["bodyExcerpt"] == EXCERPT  # ... and opened for the technician
    reason = "the cloud refused it (HTTP 400 Bad Request), its error e-2"
    assert letter["reason"] == reason  # the reason in words stays readable
    assert till.get(f"/v1/dead-letters/{letter['id']}").json()["bodyExcerpt"] == EXCERPT
    page = till.get("/").text
    assert "Dead letters" in page
    assert "ZzExcerptCode7" not in page  # the page counts them; it never shows an excerpt
    till.close()
    agent.stop()
    config = write_toml(tmp_path / "config.toml", base_config(tmp_path))
    listed = till_agent("dead-letters", "list", "--config", str(config))
    assert reason in listed.stdout
    shown = till_agent("dead-letters", "show", str(letter["id"]), "--config", str(config))
    assert json.loads(shown.stdout)["bodyExcerpt"] == EXCERPT  # opened on the stores too


def test_forget_takes_the_excerpt_of_that_persons_dead_letter_too(start_agent):
    agent, till, *_ = rejected_rig(start_agent)
    (before,) = till.get("/v1/dead-letters").json()
    assert before["bodyExcerpt"] != ""
    agent.privacy.forget(email=PLANTED["email"])
    (after,) = till.get("/v1/dead-letters").json()
    assert after["bodyExcerpt"] == ""
    assert after["reason"] == before["reason"]
    assert after["redacted"] is True
