"""The Windows service: a thin pywin32 ServiceFramework adapter around agent.app, and DPAPI."""

from __future__ import annotations

import io
import logging
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from agent import app, connectors
from agent.core import config, logs, paths

log = logging.getLogger(__name__)

ON_WINDOWS = sys.platform == "win32"  # a variable, so type checkers see both branches

SERVICE_NAME = "TillAgent"
DISPLAY_NAME = "Till Agent"
# The SCM's status codes (winsvc.h); pywin32's win32service has the same numbers.
STOPPED, START_PENDING, STOP_PENDING, RUNNING = 1, 2, 3, 4
# What the SCM is told to wait for. Starting opens and checks the stores; stopping waits
# for the API, the scheduler and each destination's worker in turn (the unit's 90 s too).
START_WAIT_HINT_MS = 120_000
STOP_WAIT_HINT_MS = 90_000
DPAPI_UI_FORBIDDEN = 0x1  # CRYPTPROTECT_UI_FORBIDDEN: a service has no desktop to prompt on
DPAPI_ENTROPY = b"TillAgent keyring v1"


class StartedAgent(Protocol):
    def stop(self) -> None: ...


Report = Callable[..., None]  # ServiceFramework.ReportServiceStatus(status, waitHint=...)
StartAgent = Callable[[config.Settings], StartedAgent]


class ServiceRunner:
    """The service's life: start-pending, the agent started, running, stop-pending, stopped.

    Everything pywin32 does is in `report`; the rest runs, and is tested, anywhere.
    """

    def __init__(
        self,
        report: Report,
        load_settings: Callable[[], config.Settings],
        start_agent: StartAgent,
    ) -> None:
        self._report = report
        self._load_settings = load_settings
        self._start_agent = start_agent
        self.stop_event = threading.Event()

    def run(self) -> None:
        """Blocks until stop(). An exception (bad config, a store that will not open) is logged,
        to the file and the Event Log, and leaves here, so the SCM records a failure and applies
        the restart actions set at install."""
        self._report(START_PENDING, waitHint=START_WAIT_HINT_MS)
        try:
            agent = self._start_agent(self._load_settings())
        except BaseException:
            log.exception("the service could not start")
            raise
        try:
            self._report(RUNNING)
            log.info("service running")
            self.stop_event.wait()
            self._report(STOP_PENDING, waitHint=STOP_WAIT_HINT_MS)
        finally:
            agent.stop()
        log.info("service stopped")

    def stop(self) -> None:
        """The SCM's stop (or shutdown): say how long it may take, then let run() finish."""
        self._report(STOP_PENDING, waitHint=STOP_WAIT_HINT_MS)
        self.stop_event.set()


class Dpapi:
    """Wraps the key file with DPAPI for the service's account (crypto.KeyProtector)."""

    name = "dpapi"

    def __init__(self, crypt: Any = None) -> None:
        if crypt is None:
            import win32crypt  # a plain import, so that PyInstaller sees it and freezes it

            crypt = win32crypt
        self._crypt = crypt

    def protect(self, data: bytes) -> bytes:
        blob: bytes = self._crypt.CryptProtectData(
            data, SERVICE_NAME, DPAPI_ENTROPY, None, None, DPAPI_UI_FORBIDDEN
        )
        return blob

    def unprotect(self, data: bytes) -> bytes:
        _description, plain = self._crypt.CryptUnprotectData(
            data, DPAPI_ENTROPY, None, None, DPAPI_UI_FORBIDDEN
        )
        return bytes(plain)


def load_settings() -> config.Settings:
    """The system config (or $TILL_AGENT_CONFIG), logging set up to a file and the Event Log.

    Logging starts first, in the system log folder, so that a config that does not load is
    written down where a technician looks; then it follows the config."""
    environ = config.environment()
    setup_logging(config.Settings(agent=config.AgentSettings(log_dir=_system_log_dir(environ))))
    settings = config.load(config.config_path(None, environ), environ, connectors.KINDS)
    setup_logging(settings)
    return settings


def _system_log_dir(environ: Mapping[str, str]) -> Path:
    return paths.system_paths(environ).log_dir


def setup_logging(settings: config.Settings, event_log: logging.Handler | None = None) -> None:
    """Daily files in agent.log_dir; warnings and errors also to the Event Log."""
    # A service has no console: the stream handler logs.setup always adds writes to nowhere.
    logs.setup(
        settings.agent.log_level,
        _Discard(),
        log_dir=settings.agent.log_dir,
        retention_days=settings.privacy.log_retention_days,
    )
    handler = event_log if event_log is not None else _event_log_handler()
    if handler is not None:
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logs.JsonFormatter())  # redacted, like the files
        logging.getLogger().addHandler(handler)


class _Discard(io.StringIO):
    """A stream that keeps nothing (no file handle to leak)."""

    def write(self, text: str) -> int:
        return len(text)


def _event_log_handler() -> logging.Handler | None:
    if not ON_WINDOWS:
        return None
    from logging.handlers import NTEventLogHandler

    import win32service

    return NTEventLogHandler(SERVICE_NAME, dllname=message_file(win32service.__file__))


def message_file(win32service_file: str) -> str:
    """The Event Log's message file for our source: win32service.pyd where it really is.

    NTEventLogHandler's default looks two folders above win32evtlogutil, which is right in a
    site-packages and wrong when frozen (PyInstaller keeps the .pyd in _internal\\win32)."""
    return str(Path(win32service_file).resolve())


def start_agent(settings: config.Settings) -> StartedAgent:
    """The agent, its key file wrapped with DPAPI."""
    return app.start(settings, key_protector=Dpapi())


def service_class(framework: type) -> type[Any]:
    """The ServiceFramework subclass the SCM runs, built on pywin32's (or a test's fake) base."""

    class TillAgentService(framework):  # type: ignore[misc]
        _svc_name_ = SERVICE_NAME
        _svc_display_name_ = DISPLAY_NAME
        _svc_description_ = "Takes each sale from the POS and delivers it to the clouds."
        # What `windows.py install` (pywin32's command line) registers: the frozen
        # till-agent-service.exe, or python.exe with this script. pywin32 quotes the exe.
        _exe_name_ = sys.executable
        _exe_args_ = None if getattr(sys, "frozen", False) else f'"{Path(__file__).resolve()}"'

        def __init__(self, args: Any) -> None:
            super().__init__(args)
            self.runner = ServiceRunner(self.ReportServiceStatus, load_settings, start_agent)

        def SvcRun(self) -> None:  # noqa: N802 (pywin32's name)
            self.runner.run()

        def SvcStop(self) -> None:  # noqa: N802
            self.runner.stop()

        def SvcShutdown(self) -> None:  # noqa: N802 (the machine is shutting down)
            self.runner.stop()

    return TillAgentService


def main(argv: list[str] | None = None) -> None:
    """Entry of the frozen service exe: no arguments, the SCM is starting us; else install etc."""
    if not ON_WINDOWS:
        raise SystemExit("the Windows service runs on Windows only; on Linux use systemd")
    import servicemanager
    import win32serviceutil

    args = sys.argv if argv is None else argv
    if len(args) == 1:
        servicemanager.Initialize()
        servicemanager.PrepareToHostSingle(TillAgentService)
        servicemanager.StartServiceCtrlDispatcher()
    else:
        win32serviceutil.HandleCommandLine(TillAgentService, argv=args)


if ON_WINDOWS:
    import win32serviceutil

    # At module level, as pywin32 names it in the registry (service.windows.TillAgentService).
    TillAgentService = service_class(win32serviceutil.ServiceFramework)

if __name__ == "__main__":
    main()
