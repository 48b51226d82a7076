"""The service managers' commands, against a fake of the OS: systemctl and sc.exe."""

from __future__ import annotations

from pathlib import Path

import pytest

from installer import steps
from installer.services import Systemd, WindowsServices, image_path, windows_state
from installer.system import CommandError, Completed, HostCommands
from tests.conftest import ROOT

RUNNING = (
    "SERVICE_NAME: TillAgent\n        TYPE : 10  WIN32_OWN_PROCESS\n        STATE : 4  RUNNING\n"
)
STOPPED = "SERVICE_NAME: TillAgent\n        STATE              : 1  STOPPED\n"


class ScriptedCommands:
    """Answers `sc.exe query` from a script of states; records every command."""

    def __init__(self, queries: list[tuple[int, str]]) -> None:
        self.queries = queries
        self.calls: list[list[str]] = []

    def run(self, argv, *, check=True):
        self.calls.append(list(argv))
        if argv[1] == "query":
            return (
                Completed(*self.queries.pop(0))
                if len(self.queries) > 1
                else Completed(*self.queries[0])
            )
        return Completed(0, "")

    def account(self, name):
        return None

    def is_admin(self):
        return True

    def systemd_running(self):
        return True


def test_windows_register_creates_the_service_with_restart_actions():
    commands = ScriptedCommands([(1060, "The specified service does not exist")])
    program = Path("C:/Program Files/TillAgent/till-agent-service.exe")
    WindowsServices(commands).register(program, [])
    create = commands.calls[1]
    assert create[:3] == ["sc.exe", "create", "TillAgent"]
    assert create[create.index("binPath=") + 1] == f'"{program}"'  # quoted: it has a space
    assert "delayed-auto" in create
    failure = next(c for c in commands.calls if c[1] == "failure")
    assert failure[-1] == "restart/5000/restart/5000/restart/60000"
    assert ["sc.exe", "failureflag", "TillAgent", "1"] in commands.calls


def test_windows_register_again_reconfigures_instead_of_creating():
    commands = ScriptedCommands([(0, STOPPED)])
    WindowsServices(commands).register(Path("C:/new/till-agent-service.exe"), [])
    assert commands.calls[1][:3] == ["sc.exe", "config", "TillAgent"]


def test_windows_register_stops_when_sc_query_fails_for_another_reason():
    """Access denied (5) says nothing about the service: neither create nor config it."""
    commands = ScriptedCommands([(5, "[SC] OpenService FAILED 5:\n\nAccess is denied.")])
    with pytest.raises(CommandError, match=r"failed \(5\): Access is denied"):
        WindowsServices(commands).register(Path("C:/TillAgent/till-agent-service.exe"), [])
    assert [c[1] for c in commands.calls] == ["query"]


def test_the_image_path_quotes_every_path():
    exe = Path("C:/Program Files/TillAgent/till-agent-service.exe")
    assert image_path(exe) == f'"{exe}"'
    script = Path("C:/Program Files/Python311/Lib/site-packages/service/windows.py")
    python = Path("C:/Program Files/Python311/python.exe")
    assert image_path(script, python) == f'"{python}" "{script}"'


def test_windows_stop_waits_until_stopped():
    commands = ScriptedCommands([(0, RUNNING), (0, RUNNING), (0, STOPPED)])
    WindowsServices(commands, poll_seconds=0.01).stop()
    assert ["sc.exe", "stop", "TillAgent"] in commands.calls


def test_windows_start_gives_up_after_its_wait():
    commands = ScriptedCommands([(0, STOPPED)])
    with pytest.raises(CommandError, match="inactive, not active"):
        WindowsServices(commands, wait_seconds=0.05, poll_seconds=0.01).start()


@pytest.mark.parametrize(
    ("returncode", "stdout", "state"),
    [
        (0, RUNNING, "active"),
        (0, STOPPED, "inactive"),
        (0, "        STATE : 2  START_PENDING\n", "activating"),
        (1060, "", "not-installed"),
        (0, "gibberish", "unknown"),
    ],
)
def test_windows_state_reads_sc_query(returncode, stdout, state):
    assert windows_state(returncode, stdout) == state


def test_windows_state_refuses_to_guess_when_sc_query_fails():
    with pytest.raises(CommandError, match=r"sc.exe query TillAgent failed \(1722\)"):
        windows_state(1722, "[SC] OpenSCManager FAILED 1722:\n\nThe RPC server is unavailable.")


def test_a_script_install_runs_the_service_script_with_this_python():
    """Not a bare python.exe: the script is what hosts the service (pywin32's dispatcher)."""
    script = steps.program_path("win32")
    assert script == ROOT / "service" / "windows.py"
    assert script.is_file()
    assert image_path(script).endswith(f' "{script}"')


def test_systemd_unregister_is_idempotent(tmp_path):
    commands = ScriptedCommands([(0, "")])
    manager = Systemd(commands, tmp_path, tmp_path / "credentials")
    manager.unregister()
    manager.unregister()
    assert ["systemctl", "disable", "--now", "till-agent.service"] in commands.calls


@pytest.mark.linux_only("`true` and `false`")
def test_host_commands_report_a_failing_command():
    with pytest.raises(CommandError, match="failed"):
        HostCommands().run(["false"])
    with pytest.raises(CommandError, match="no-such-program"):
        HostCommands().run(["no-such-program-till-agent"])
    assert HostCommands().run(["true"]).returncode == 0
