"""The Windows path, executed: the Windows CPython, pywin32, DPAPI, the service and the MSI.

Run by `make test-windows` under Wine 8.0 (tests/wine/prepare.py). The tests run in file
order and build on each other's prefix: the script-installed service is removed before the
MSI installs the frozen one. What Wine cannot show is listed in docs/install.md.
"""

from __future__ import annotations

import json
import re
import stat
import time
import tomllib
from pathlib import Path

import pytest

from agent.sandbox import SandboxCloud
from installer.windows import build_msi
from service import windows
from tests.conftest import ROOT, base_config, free_port, merged, write_toml
from tests.wine import prepare
from tests.wine.prefix import Prefix, Ran, windows_path
from tests.wine.till import Till, cloud_received, json_line, wait_answering

pytestmark = pytest.mark.wine

ON_WINDOWS = Path(__file__).with_name("on_windows")
# The Windows build recipe of docs/install.md ("Building the MSI"); a test there keeps them one.
FREEZE = ("-m", "installer.windows.freeze")
# The project's tests meant for Windows: the modules that touch the OS (processes, files and
# their permissions, sockets, paths, the service and the installer). Inside them, a test of
# Linux behaviour is marked linux_only and skips on Windows, saying so.
WINDOWS_SUITE = (
    "tests/service/test_windows.py",
    "tests/installer",
    "tests/test_crypto.py",
    "tests/test_config.py",
    "tests/test_api.py",
    "tests/test_durability.py",
    "tests/test_doctor.py",
    "tests/test_outbox.py",
    "tests/test_logs.py",
    "tests/test_cli.py",
    "tests/test_support_bundle.py",
)
PROGRAM_DATA = ("ProgramData", "TillAgent")
INSTALLED_TILL_INSTALL = r"C:\Program Files\TillAgent\till-install.exe"
INSTALLED_TILL_AGENT = r"C:\Program Files\TillAgent\till-agent.exe"
STATE = re.compile(r"STATE\s+:\s+\d+\s+(\w+)")
IMAGE = re.compile(r"BINARY_PATH_NAME\s+:\s+(.*)")


def sc(prefix: Prefix, *args: str) -> Ran:
    return prefix.run(["sc", *args], timeout=60)


def service_state(prefix: Prefix) -> str:
    """RUNNING, STOPPED, ...; NOT-INSTALLED for sc's 1060 (Linux sees only its low byte)."""
    done = sc(prefix, "query", windows.SERVICE_NAME)
    if "FAILED 1060" in done.output:
        return "NOT-INSTALLED"
    found = STATE.search(done.output)
    assert done.returncode == 0, done
    assert found is not None, done
    return found[1]


def wait_state(prefix: Prefix, wanted: str, timeout_seconds: float) -> float:
    """Seconds until the service is in the wanted state."""
    began = time.monotonic()
    while (state := service_state(prefix)) != wanted:
        assert time.monotonic() - began < timeout_seconds, f"{state}, not {wanted}"
        time.sleep(0.5)
    return time.monotonic() - began


def image_path(prefix: Prefix) -> str:
    found = IMAGE.search(sc(prefix, "qc", windows.SERVICE_NAME).output)
    assert found is not None
    return found[1].strip()


# --- the Windows Python ---------------------------------------------------------------------


def test_pywin32_imports_under_the_windows_python(prefix: Prefix) -> None:
    modules = "win32service, win32serviceutil, servicemanager, win32crypt, win32security"
    done = prefix.python("-c", f"import sys, {modules}; print(sys.platform, sys.version)")
    assert done.returncode == 0, done
    assert done.output.startswith("win32 3.11.")


def test_dpapi_protects_and_reopens_the_real_key_file(prefix: Prefix, tmp_path: Path) -> None:
    key_file = tmp_path / "keyring.json"
    script = windows_path(ON_WINDOWS / "dpapi_round_trip.py")
    done = prefix.python(script, windows_path(key_file))
    assert done.returncode == 0, done
    found = json_line(done.output)
    assert found["protected_by"] == "dpapi"
    assert found["a_key_in_clear"] is False
    assert found["reopened"] == "a receipt"
    assert found["same_keys"] is True
    assert "only the account that created it" in str(found["without_dpapi"])
    assert str(found["examined"]).startswith("wrapped by dpapi")
    assert '"blob"' in key_file.read_text(encoding="utf-8")


def test_the_windows_suite_passes_under_the_windows_python(prefix: Prefix) -> None:
    done = prefix.python(
        "-m", "pytest", "-q", "-p", "no:randomly", "-rfEs", *WINDOWS_SUITE, cwd=ROOT, timeout=900
    )
    summary = done.output.strip().splitlines()[-1]
    assert done.returncode == 0, done
    assert re.search(r"\d+ passed", summary), summary
    assert "failed" not in summary, summary


def test_the_agent_under_wine_answers_a_receipt_and_delivers_it(
    prefix: Prefix, cloud: SandboxCloud, tmp_path: Path
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    raw = merged(
        base_config(tmp_path),
        {
            "api": {"listen": listen},
            "delivery": {"enabled": True},
            "destinations": {
                "engage": {"base_url": cloud.url},
                "loaded": {"base_url": cloud.url + "/loaded"},
            },
        },
    )
    for section in ("agent", "api"):  # the paths as the Windows agent reads them
        for key, value in raw[section].items():
            if key.endswith(("_dir", "_file")):
                raw[section][key] = windows_path(Path(value))
    config = windows_path(write_toml(tmp_path / "config.toml", raw))
    agent = prefix.start([str(prefix.python_exe), "-m", "agent", "run", "--config", config])
    try:
        till = Till(listen, tmp_path / "pos-token")
        assert wait_answering(till) == 200, agent.output
        _sell_and_see_it_delivered(till, cloud, "S042-T03-000101")
    finally:
        agent.stop()


def _sell_and_see_it_delivered(till: Till, cloud: SandboxCloud, receipt_id: str) -> None:
    till.sell(receipt_id)
    assert till.wait_delivered(receipt_id) == {"engage": "delivered", "loaded": "delivered"}
    assert cloud_received(cloud, receipt_id) >= {"engage", "loaded"}


# --- the service, installed from the Windows Python (a script install) ----------------------


def program_data(prefix: Prefix, *parts: str) -> Path:
    """C:\\ProgramData\\TillAgent\\<parts> as a Linux path."""
    return prefix.drive_c(*PROGRAM_DATA, *parts)


def logs_text(prefix: Prefix) -> str:
    return "".join(p.read_text(encoding="utf-8") for p in program_data(prefix, "logs").glob("*"))


def installed_till(prefix: Prefix, port: int) -> Till:
    return Till(f"127.0.0.1:{port}", program_data(prefix, "credentials", "pos-token"))


def test_the_script_installed_service_answers_and_stops_within_its_wait_hint(
    prefix: Prefix, cloud: SandboxCloud, answers: tuple[Path, int]
) -> None:
    path, port = answers
    done = prefix.python(
        "-m", "installer", "install", "--non-interactive", "--answers", windows_path(path),
        "--offline", timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done
    script = windows_path(ROOT / "service" / "windows.py")
    assert image_path(prefix) == f'"{windows_path(prefix.python_exe)}" "{script}"'
    assert service_state(prefix) == "RUNNING"
    till = installed_till(prefix, port)
    assert till.health() == 200
    _sell_and_see_it_delivered(till, cloud, "S042-T03-000201")

    assert sc(prefix, "stop", windows.SERVICE_NAME).returncode == 0
    took = wait_state(prefix, "STOPPED", windows.STOP_WAIT_HINT_MS / 1000)
    assert took < windows.STOP_WAIT_HINT_MS / 1000
    assert "WIN32_EXIT_CODE    : 0" in sc(prefix, "query", windows.SERVICE_NAME).output
    assert '"service stopped"' in logs_text(prefix)


def test_a_service_that_cannot_start_says_why_in_its_log_and_the_event_log(
    prefix: Prefix,
) -> None:
    config = program_data(prefix, "config.toml")
    good = config.read_text(encoding="utf-8")
    config.write_text(good.replace("[agent]", "[agent]\nno_such_setting = 1", 1), "utf-8")
    try:
        assert sc(prefix, "start", windows.SERVICE_NAME).returncode == 0
        wait_state(prefix, "STOPPED", 60)
        failure = [line for line in logs_text(prefix).splitlines() if "could not start" in line]
        assert failure, logs_text(prefix)[-3000:]
        assert "no_such_setting" in failure[-1]
        reported = [line for line in prefix.services_output.splitlines() if "eventlog" in line]
        assert any("the service could not start" in line for line in reported), reported
        assert Path(_event_message_file(prefix)).is_file()
    finally:
        config.write_text(good, encoding="utf-8")
    assert sc(prefix, "start", windows.SERVICE_NAME).returncode == 0
    wait_state(prefix, "RUNNING", 60)


def _event_message_file(prefix: Prefix) -> Path:
    """The registered message file of our Event Log source, as a Linux path."""
    key = r"SYSTEM\CurrentControlSet\Services\EventLog\Application\TillAgent"
    code = (
        "import winreg; print(winreg.QueryValueEx(winreg.OpenKey("
        f"winreg.HKEY_LOCAL_MACHINE, r'{key}'), 'EventMessageFile')[0])"
    )
    done = prefix.python("-c", code)
    assert done.returncode == 0, done
    return prefix.linux_path(done.output.strip().splitlines()[-1])


def test_the_script_install_is_removed_and_the_data_kept(prefix: Prefix) -> None:
    done = prefix.python("-m", "installer", "uninstall", timeout=300)
    assert done.returncode == 0, done
    assert service_state(prefix) == "NOT-INSTALLED"
    assert not program_data(prefix, "config.toml").exists()
    assert not program_data(prefix, "credentials").exists()
    assert program_data(prefix, "data", "outbox.db").is_file()


def test_pywin32s_own_command_line_registers_python_with_the_service_script(
    prefix: Prefix,
) -> None:
    script = windows_path(ROOT / "service" / "windows.py")
    done = prefix.python(script, "install")
    assert done.returncode == 0, done
    try:
        assert image_path(prefix) == f'"{windows_path(prefix.python_exe)}" "{script}"'
    finally:
        assert prefix.python(script, "remove").returncode == 0
    assert service_state(prefix) == "NOT-INSTALLED"


# --- the frozen programs and the MSI --------------------------------------------------------


@pytest.fixture(scope="module")
def frozen(prefix: Prefix) -> Path:
    """The programs frozen under Wine by the recipe docs/install.md gives a Windows build."""
    output = prepare.CACHE / "frozen"
    work = prepare.CACHE / "freeze-work"
    done = prefix.python(*FREEZE, windows_path(output), "--work", windows_path(work), timeout=600)
    assert done.returncode == 0, done
    return output


@pytest.fixture(scope="module")
def msi(frozen: Path) -> Path:
    """The MSI built from them with wixl, as docs/install.md says."""
    output = prepare.CACHE / "TillAgent.msi"
    assert build_msi.main([str(frozen), "-o", str(output)]) == 0
    return output


def test_the_frozen_programs_are_built_and_run(prefix: Prefix, frozen: Path) -> None:
    for name in ("till-agent-service.exe", "till-agent.exe", "till-install.exe"):
        assert (frozen / name).is_file(), name
    # win32crypt was once imported by a name PyInstaller cannot see: the service then died.
    assert list(frozen.glob("_internal/**/win32crypt.pyd"))
    version = prefix.run([str(frozen / "till-agent.exe"), "--version"])
    assert version.returncode == 0, version
    assert "till-agent, version" in version.output
    where = prefix.run([str(frozen / "till-install.exe"), "paths", "--json"])
    assert where.returncode == 0, where
    locations = json.loads(where.output[where.output.index("{") :])
    assert locations["data_dir"] == r"C:\ProgramData\TillAgent\data"


def msiexec(prefix: Prefix, *args: str) -> Ran:
    """msiexec's exit code (0, or 1603 for a failed action); it hands its output on to
    explorer.exe, so the run ends when msiexec exits, not when the output closes."""
    log = r"C:\windows\temp\msiexec.log"
    return prefix.run(["msiexec", *args, "/qn", "/l*v", log], timeout=600)


def test_the_msi_installs_silently_and_the_service_answers_and_delivers(
    prefix: Prefix, cloud: SandboxCloud, msi: Path, answers: tuple[Path, int]
) -> None:
    path, port = answers
    done = msiexec(prefix, "/i", windows_path(msi), f"ANSWERS={windows_path(path)}", "OFFLINE=1")
    assert done.returncode == 0, done
    assert service_state(prefix) == "RUNNING"
    program = r"C:\Program Files\TillAgent\till-agent-service.exe"
    assert image_path(prefix) == f'"{program}"'  # quoted: it holds a space
    till = installed_till(prefix, port)
    assert till.health() == 200
    _sell_and_see_it_delivered(till, cloud, "S042-T03-000301")
    # The Event Log's message file is the frozen win32service.pyd, where it really is.
    message_file = _event_message_file(prefix)
    assert message_file.is_file()
    assert "_internal" in message_file.parts


def test_the_installed_folders_and_secrets_are_closed_to_other_users(prefix: Prefix) -> None:
    """What Wine can show of the DACLs: it keeps one as Unix mode bits, an entry for the owner
    (SYSTEM and Administrators become the Wine user) and one for Everyone. Nothing is open to
    other users, where before every secret was readable by them."""
    closed = [
        program_data(prefix),
        program_data(prefix, "credentials"),
        program_data(prefix, "data"),
        program_data(prefix, "config.toml"),
        *program_data(prefix, "credentials").iterdir(),
    ]
    for path in closed:
        assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0, path
    verify = prefix.run([INSTALLED_TILL_INSTALL, "verify", "--offline"], timeout=120)
    checked = [line for line in verify.output.splitlines() if "SYSTEM and Administrators" in line]
    assert len(checked) == len(closed), verify
    assert not [line for line in checked if "Everyone" in line or "Users" in line], verify


def test_the_doctor_on_windows_checks_the_dpapi_key_file(prefix: Prefix) -> None:
    doctor = prefix.run([INSTALLED_TILL_AGENT, "doctor"], timeout=120)
    lines = {
        line[6:30].strip(): line
        for line in doctor.output.splitlines()
        if line[:4] in ("ok  ", "FAIL")
    }
    assert "wrapped by dpapi for the service's account" in lines["key file"], doctor
    for name in ("store outbox.db", "port", "health", "cloud engage", "cloud loaded"):
        assert lines[name].startswith("ok  "), doctor


def test_the_msi_refuses_removal_while_sales_wait(
    prefix: Prefix, cloud: SandboxCloud, msi: Path
) -> None:
    config = tomllib.loads(program_data(prefix, "config.toml").read_text(encoding="utf-8"))
    till = Till(config["api"]["listen"], program_data(prefix, "credentials", "pos-token"))
    cloud.faults.set_offline("refused")
    try:
        till.sell("S042-T03-000302")
        done = msiexec(prefix, "/x", windows_path(msi))
        # Windows exits 1603 (a custom action failed); Wine's msiexec 1627, of which Linux
        # sees the low byte. Either way the removal failed and was rolled back.
        assert done.returncode in (1603 & 0xFF, 1627 & 0xFF), done
        assert "items not delivered yet (engage 1, loaded 1)" in done.output
        assert prefix.drive_c("Program Files", "TillAgent", "till-install.exe").is_file()
        assert service_state(prefix) == "RUNNING"  # started again, to send them
        assert program_data(prefix, "config.toml").is_file()
    finally:
        cloud.faults.set_offline(None)
    till.wait_delivered("S042-T03-000302")


def test_the_msi_removes_the_service_config_and_secrets_and_keeps_the_data(
    prefix: Prefix, msi: Path
) -> None:
    done = msiexec(prefix, "/x", windows_path(msi))
    assert done.returncode == 0, done
    assert service_state(prefix) == "NOT-INSTALLED"
    assert not program_data(prefix, "config.toml").exists()
    assert not program_data(prefix, "credentials").exists()
    assert program_data(prefix, "data", "outbox.db").is_file()
    assert not prefix.drive_c("Program Files", "TillAgent", "till-install.exe").exists()


def test_a_reinstall_finds_the_kept_data_and_purgedata_erases_it(
    prefix: Prefix, msi: Path, answers: tuple[Path, int]
) -> None:
    path, port = answers
    done = msiexec(prefix, "/i", windows_path(msi), f"ANSWERS={windows_path(path)}", "OFFLINE=1")
    assert done.returncode == 0, done
    till = installed_till(prefix, port)
    assert till.states("S042-T03-000301") == {"engage": "delivered", "loaded": "delivered"}
    done = msiexec(prefix, "/x", windows_path(msi), "PURGEDATA=1")
    assert done.returncode == 0, done
    assert service_state(prefix) == "NOT-INSTALLED"
    assert not program_data(prefix, "data").exists()
    assert not program_data(prefix, "logs").exists()
