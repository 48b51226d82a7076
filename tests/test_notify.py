"""The notify protocol against a real datagram socket, and the watchdog's heartbeat gate."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent import app
from agent.connectors import KINDS
from agent.core import config, notify
from tests.conftest import Till, base_config, free_port, make_receipt, merged
from tests.service.listener import NotifyListener


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    made = NotifyListener()
    yield made
    made.close()


class Clock:
    """Monotonic time the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_notifier_sends_ready_with_status_to_abstract_socket(listener):
    notifier = notify.Notifier(listener.address)
    assert notifier.ready("serving on\nhttp://127.0.0.1:1")
    assert listener.receive(2.0) == "READY=1\nSTATUS=serving on http://127.0.0.1:1"


def test_notifier_sends_to_socket_file():
    with tempfile.TemporaryDirectory(prefix="tn-") as directory:
        path = str(Path(directory) / "notify")
        listener = NotifyListener(path)
        try:
            assert notify.Notifier(path).stopping()
            assert listener.receive(2.0) == "STOPPING=1"
        finally:
            listener.close()


def test_notifier_without_socket_is_a_no_op():
    notifier = notify.Notifier.from_environ({})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.watchdog()


def test_notifier_survives_a_socket_nobody_listens_on():
    assert not notify.Notifier("@till-agent-test-nobody-listens").watchdog()
    assert not notify.Notifier("vsock:2:1234").watchdog()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "junk"}, None),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "42"}, 2.0),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "43"}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(environ, expected):
    assert notify.watchdog_interval(environ, pid=42) == expected


def test_watchdog_stops_pinging_when_a_heartbeat_goes_stale(listener):
    clock = Clock()
    watchdog = notify.Watchdog(notify.Notifier(listener.address), 1.0, monotonic=clock)
    worker = watchdog.heartbeat("dispatch-engage", max_age_seconds=5.0)
    assert watchdog.tick()
    assert listener.receive(2.0) == "WATCHDOG=1"
    clock.now += 6.0  # the worker has not beaten for 6 s: it is stuck
    assert not watchdog.tick()
    assert listener.receive(2.0) == "STATUS=stuck: dispatch-engage"
    assert not watchdog.tick()
    assert listener.receive(0.05) is None  # no second status line, and above all no ping
    worker.beat()
    assert watchdog.tick()
    assert listener.receive(2.0) == "WATCHDOG=1"


def test_watchdog_stops_pinging_when_a_watched_thread_dies(listener):
    watchdog = notify.Watchdog(notify.Notifier(listener.address), 1.0)
    thread = threading.Thread(target=lambda: None, name="dispatch-loaded")
    thread.start()
    thread.join()
    watchdog.watch(thread.name, thread.is_alive)
    assert watchdog.stale() == ["dispatch-loaded"]
    assert not watchdog.tick()


def test_watchdog_run_pings_until_stuck_then_until_stopped(listener):
    clock = Clock()
    watchdog = notify.Watchdog(notify.Notifier(listener.address), 0.01, monotonic=clock)
    watchdog.heartbeat("worker", max_age_seconds=5.0)
    stop = threading.Event()
    runner = threading.Thread(target=watchdog.run, args=(stop,))
    runner.start()
    try:
        assert listener.receive(2.0) == "WATCHDOG=1"
        assert listener.receive(2.0) == "WATCHDOG=1"
        clock.now += 10.0
        listener.wait_for("STATUS=stuck: worker", timeout_seconds=2.0)
        assert listener.receive(0.05) is None
    finally:
        stop.set()
        runner.join(5.0)
    assert not runner.is_alive()


def test_watchdog_run_without_a_watchdog_just_waits_for_stop():
    stop = threading.Event()
    stop.set()
    notify.Watchdog(notify.Notifier(None), None).run(stop)  # returns at once


def test_answers_http_counts_any_answer_and_not_silence(agent_till):
    agent, _ = agent_till
    assert notify.answers_http(agent.url + "/v1/health", 5.0)
    assert notify.answers_http(agent.url + "/v1/no-such-thing", 5.0)  # a 404 is an answer
    assert not notify.answers_http(f"http://127.0.0.1:{free_port()}/v1/health", 1.0)


def test_a_dispatcher_stuck_in_a_send_stops_the_pings_of_a_real_agent(listener, tmp_path):
    """The agent's own loops beat: a send the cloud never answers makes dispatch-engage late."""
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    silent.settimeout(10.0)
    clock = Clock()
    watchdog = notify.Watchdog(notify.Notifier(listener.address), 1.0, monotonic=clock)
    raw = merged(
        base_config(tmp_path),
        {
            "delivery": {"enabled": True},
            "destinations": {
                "engage": {"base_url": f"http://127.0.0.1:{silent.getsockname()[1]}/"}
            },
        },
    )
    agent = app.start(config.from_mapping(raw, {}, KINDS), watchdog=watchdog)
    till = Till(agent.url, agent.token)
    try:
        assert till.post("/v1/receipts", make_receipt()).status_code == 202
        connection, _ = silent.accept()  # dispatch-engage is now inside its send
        clock.now += app.DISPATCH_STUCK_SECONDS + 1
        time.sleep(1.5)  # every loop that is not stuck beats within a second
        assert watchdog.stale() == ["dispatch-engage loop"]
        assert not watchdog.tick()
        # The send fails; the cloud is gone too, so the probe dispatch asks next is refused at
        # once (a silent cloud would hold the probe for its own timeout as well), and the loop
        # comes round and beats again.
        silent.close()
        connection.close()
        _wait_until(lambda: watchdog.stale() == [])
        assert watchdog.tick()
    finally:
        till.close()
        silent.close()
        agent.stop()


def _wait_until(condition: Callable[[], bool], timeout_seconds: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
