"""The Windows service adapter on Linux, against small fakes of the pywin32 surface."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time

import pytest
import requests

from agent import app
from agent.connectors import KINDS
from agent.core import config, crypto
from agent.core.errors import ConfigError
from service import windows
from tests.conftest import base_config


class Reports:
    """ReportServiceStatus as the SCM sees it: (status, wait hint) in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int | None]] = []
        self.running = threading.Event()

    def __call__(self, status: int, waitHint: int | None = None) -> None:  # noqa: N803
        self.seen.append((status, waitHint))
        if status == windows.RUNNING:
            self.running.set()


class FakeAgent:
    def __init__(self) -> None:
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


def run_in_thread(runner):
    errors: list[BaseException] = []

    def target():
        try:
            runner.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, errors


def test_runner_reports_each_state_and_stops_the_agent():
    reports, agent = Reports(), FakeAgent()
    runner = windows.ServiceRunner(reports, lambda: config.Settings(), lambda s: agent)
    thread, errors = run_in_thread(runner)
    assert reports.running.wait(5)
    runner.stop()
    thread.join(5)
    assert not errors
    assert agent.stopped
    assert reports.seen == [
        (windows.START_PENDING, windows.START_WAIT_HINT_MS),
        (windows.RUNNING, None),
        (windows.STOP_PENDING, windows.STOP_WAIT_HINT_MS),
        (windows.STOP_PENDING, windows.STOP_WAIT_HINT_MS),
    ]


def test_runner_fails_loudly_so_the_scm_restarts_it(restore_logging):
    reports, written = Reports(), Collect()
    logging.getLogger().addHandler(written)

    def bad_config():
        raise ConfigError(["agent.store_id: required (got '')"])

    runner = windows.ServiceRunner(reports, bad_config, lambda s: FakeAgent())
    with pytest.raises(ConfigError):
        runner.run()
    assert reports.seen == [(windows.START_PENDING, windows.START_WAIT_HINT_MS)]
    (record,) = written.records  # what the log file and the Event Log get
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "the service could not start"
    assert record.exc_info is not None
    assert "agent.store_id: required" in str(record.exc_info[1])


def test_the_event_log_message_file_is_where_win32service_really_is(tmp_path):
    frozen = tmp_path / "TillAgent" / "_internal" / "win32" / "win32service.pyd"
    frozen.parent.mkdir(parents=True)
    frozen.write_bytes(b"MZ")
    assert windows.message_file(str(frozen)) == str(frozen.resolve())


@pytest.mark.linux_only(
    "the system log folder from LOGS_DIRECTORY; on Windows it is C:\\ProgramData's (tests/wine)"
)
def test_logging_starts_in_the_system_log_folder_before_the_config_loads(
    tmp_path, monkeypatch, restore_logging
):
    """A config that does not load is written down where a technician looks for it."""
    monkeypatch.setenv("LOGS_DIRECTORY", str(tmp_path / "logs"))  # the system log folder
    monkeypatch.setenv("TILL_AGENT_CONFIG", str(tmp_path / "missing.toml"))
    reports = Reports()
    runner = windows.ServiceRunner(reports, windows.load_settings, lambda s: FakeAgent())
    with pytest.raises(ConfigError):
        runner.run()
    written = "".join(p.read_text() for p in (tmp_path / "logs").iterdir())
    assert "the service could not start" in written
    assert "missing.toml" in written


def test_runner_runs_the_real_agent(tmp_path):
    settings = config.from_mapping(base_config(tmp_path), {}, KINDS)
    started: list[app.Agent] = []

    def start(s):
        started.append(app.start(s))
        return started[0]

    reports = Reports()
    runner = windows.ServiceRunner(reports, lambda: settings, start)
    thread, errors = run_in_thread(runner)
    try:
        assert reports.running.wait(15)
        assert requests.get(started[0].url + "/v1/health", timeout=5).status_code == 200
    finally:
        began = time.monotonic()
        runner.stop()
        thread.join(30)
    assert not errors
    assert time.monotonic() - began < settings.api.stop_timeout_seconds
    assert started[0].stopped


class FakeFramework:
    """win32serviceutil.ServiceFramework as far as the adapter touches it."""

    def __init__(self, args) -> None:
        self.args = args
        self.reports = Reports()

    def ReportServiceStatus(self, status, waitHint=None):  # noqa: N802, N803
        self.reports(status, waitHint)


def test_service_class_wires_the_scm_calls_to_the_runner():
    service_type = windows.service_class(FakeFramework)
    assert service_type._svc_name_ == "TillAgent"
    service = service_type(("TillAgent",))
    service.SvcStop()
    assert service.reports.seen == [(windows.STOP_PENDING, windows.STOP_WAIT_HINT_MS)]
    assert service.runner.stop_event.is_set()


class FakeWin32Crypt:
    """win32crypt's two DPAPI calls: a reversible scramble that insists on our entropy."""

    def CryptProtectData(self, data, description, entropy, reserved, prompt, flags):  # noqa: N802
        assert (entropy, flags) == (windows.DPAPI_ENTROPY, windows.DPAPI_UI_FORBIDDEN)
        return b"DPAPI" + bytes(b ^ 0x5A for b in data)

    def CryptUnprotectData(self, data, entropy, reserved, prompt, flags):  # noqa: N802
        assert entropy == windows.DPAPI_ENTROPY
        assert data.startswith(b"DPAPI")
        return "TillAgent", bytes(b ^ 0x5A for b in data[5:])


def test_dpapi_wraps_the_key_file(tmp_path):
    protector = windows.Dpapi(FakeWin32Crypt())
    path = tmp_path / "keyring.json"
    made = crypto.load_or_create(path, may_create=True, protector=protector)
    text = path.read_text()
    assert json.loads(text)["protected_by"] == "dpapi"
    for key in made.data_keys():
        assert key.secret.hex() not in text
        assert base64.b64encode(key.secret).decode() not in text
    again = crypto.load_or_create(path, may_create=False, protector=protector)
    sealed = made.seal_bytes(b"a receipt", "R-1")
    assert again.open_bytes(sealed, "R-1") == b"a receipt"


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler not in handlers:
            handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_logging_goes_to_a_file_and_warnings_to_the_event_log(tmp_path, restore_logging):
    settings = config.from_mapping(base_config(tmp_path), {}, KINDS)
    event_log = Collect()
    windows.setup_logging(settings, event_log)
    logging.getLogger("agent.test").info("an ordinary day")
    logging.getLogger("agent.test").warning("a cloud refused the key")
    assert [r.getMessage() for r in event_log.records] == ["a cloud refused the key"]
    written = "".join(p.read_text() for p in settings.agent.log_dir.iterdir())
    assert "an ordinary day" in written


@pytest.mark.linux_only("what main() says off Windows")
def test_main_refuses_off_windows():
    with pytest.raises(SystemExit, match="Windows only"):
        windows.main(["x"])
