"""The MSI: built by wixl from stand-ins for the PyInstaller output, read back with msitools."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent import __version__
from installer.windows import build_msi
from tests.ci import need
from tests.conftest import ROOT

TOOLS = ("wixl", "msibuild", "msiinfo", "msiextract")
MISSING = (
    "wixl/msitools not installed (`make test` installs them as root, or apt-get install wixl "
    "msitools): the MSI is not built or checked"
)
# wixl runs on Linux; under Windows (make test-windows) the real MSI is built and installed.
built_on_linux = pytest.mark.linux_only("wixl builds the MSI on Linux; tests/wine installs it")

# Stand-ins for the three --onedir outputs merged into one folder, with PyInstaller's
# _internal folder nested one level deeper.
DIST = {
    "till-install.exe": b"MZ stand-in for till-install",
    "till-agent-service.exe": b"MZ stand-in for till-agent-service",
    "till-agent.exe": b"MZ stand-in for till-agent",
    "_internal/python311.dll": b"stand-in python311.dll",
    "_internal/certifi/cacert.pem": b"stand-in bundle",
}
DEFERRED, NO_IMPERSONATE, RETURN_IGNORE, ROLLBACK = 0x400, 0x800, 0x40, 0x100
EXE_FROM_FILE = 18  # msidbCustomActionTypeExe + msidbCustomActionTypeSourceFile


def make_dist(root: Path) -> Path:
    for relative, content in DIST.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(content)
    return root


def table(msi: Path, name: str) -> list[dict[str, str]]:
    """msiinfo export: column names, column types, the table's name and keys, then rows."""
    lines = subprocess.run(
        ["msiinfo", "export", str(msi), name], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    columns = lines[0].split("\t")
    return [dict(zip(columns, line.split("\t"), strict=True)) for line in lines[3:]]


def keyed(msi: Path, name: str, key: str) -> dict[str, dict[str, str]]:
    return {row[key]: row for row in table(msi, name)}


@pytest.fixture(scope="module")
def msi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need(all(shutil.which(tool) for tool in TOOLS), MISSING)
    dist = make_dist(tmp_path_factory.mktemp("dist"))
    return build_msi.build(dist, tmp_path_factory.mktemp("out") / "TillAgent.msi")


@built_on_linux
def test_the_public_properties_reach_the_elevated_side_and_the_product_is_upgradable(msi):
    properties = {name: row["Value"] for name, row in keyed(msi, "Property", "Property").items()}
    assert properties["ProductVersion"] == build_msi.msi_version(__version__)
    assert properties["UpgradeCode"] == "{3D1F0A52-6C2E-4B8F-9A47-1E5C2B7D9F10}"
    assert properties["ALLUSERS"] == "1"
    secure = properties["SecureCustomProperties"].split(";")
    assert {"ANSWERS", "OFFLINE", "PURGEDATA", "INSTALLFOLDER", "WIX_UPGRADE_DETECTED"} <= set(
        secure
    )
    assert "ANSWERS" not in properties  # no default: a silent install must give it
    upgrades = {row["ActionProperty"]: row for row in table(msi, "Upgrade")}
    assert upgrades["WIX_UPGRADE_DETECTED"]["VersionMax"] == build_msi.msi_version(__version__)
    assert upgrades["WIX_DOWNGRADE_DETECTED"]["VersionMin"] == build_msi.msi_version(__version__)
    conditions = {row["Condition"] for row in table(msi, "LaunchCondition")}
    assert conditions == {
        "NOT WIX_DOWNGRADE_DETECTED",
        "Installed OR ANSWERS OR WIX_UPGRADE_DETECTED",
    }


@built_on_linux
def test_the_custom_actions_run_till_install_deferred_elevated_and_checked(msi):
    actions = keyed(msi, "CustomAction", "Action")
    assert {name: row["Target"] for name, row in actions.items()} == {
        "TillInstall": 'install --non-interactive --answers "[ANSWERS]"',
        "TillInstallOffline": 'install --non-interactive --answers "[ANSWERS]" --offline',
        "TillUpgrade": "upgrade",
        "TillUninstallCheck": "uninstall --check",
        "TillUninstall": "uninstall",
        "TillUninstallPurge": "uninstall --purge-data",
    }
    files = keyed(msi, "File", "File")
    for name, row in actions.items():
        kind = int(row["Type"])
        assert kind & 0x3F == EXE_FROM_FILE
        assert not kind & (RETURN_IGNORE | ROLLBACK)  # a non-zero exit fails the install
        assert files[row["Source"]]["FileName"] == "till-install.exe"
        # The check changes nothing and runs before the script: a refusal needs no rollback.
        immediate = name == "TillUninstallCheck"
        assert bool(kind & DEFERRED) != immediate
        assert immediate or kind & NO_IMPERSONATE  # deferred ones run as LocalSystem


@built_on_linux
def test_install_runs_after_the_files_and_uninstall_before_they_go(msi):
    sequence = keyed(msi, "InstallExecuteSequence", "Action")
    at = {name: int(row["Sequence"]) for name, row in sequence.items()}
    assert at["InstallValidate"] < at["RemoveExistingProducts"] < at["InstallInitialize"]
    for action in ("TillInstall", "TillInstallOffline", "TillUpgrade"):
        assert at["InstallFiles"] < at[action] < at["StartServices"] < at["InstallFinalize"]
    assert at["InstallValidate"] < at["TillUninstallCheck"] < at["InstallInitialize"]
    for action in ("TillUninstall", "TillUninstallPurge"):
        assert at["InstallInitialize"] < at["StopServices"] < at[action] < at["RemoveFiles"]
    when = {name: row["Condition"] for name, row in sequence.items()}
    assert when["TillInstall"] == 'NOT Installed AND NOT WIX_UPGRADE_DETECTED AND OFFLINE<>"1"'
    assert (
        when["TillInstallOffline"] == 'NOT Installed AND NOT WIX_UPGRADE_DETECTED AND OFFLINE="1"'
    )
    assert when["TillUpgrade"] == "NOT Installed AND WIX_UPGRADE_DETECTED"
    removal = 'REMOVE~="ALL" AND NOT UPGRADINGPRODUCTCODE'
    assert when["TillUninstallCheck"] == removal
    assert when["TillUninstall"] == removal + ' AND PURGEDATA<>"1"'
    assert when["TillUninstallPurge"] == removal + ' AND PURGEDATA="1"'
    (stop,) = table(msi, "ServiceControl")
    assert (stop["Name"], int(stop["Event"]), stop["Wait"]) == ("TillAgent", 0x2 | 0x20, "1")


@built_on_linux
def test_the_program_goes_to_program_files_64_and_every_file_is_in_the_package(msi, tmp_path):
    directories = keyed(msi, "Directory", "Directory")
    assert directories["INSTALLFOLDER"]["Directory_Parent"] == "ProgramFiles64Folder"
    assert directories["INSTALLFOLDER"]["DefaultDir"] == "TillAgent"
    info = subprocess.run(["msiinfo", "suminfo", str(msi)], capture_output=True, text=True).stdout
    assert "Template: x64;1033" in info
    for component in table(msi, "Component"):
        assert int(component["Attributes"]) & 0x100  # msidbComponentAttributes64bit
    subprocess.run(["msiextract", "-C", str(tmp_path), str(msi)], check=True, capture_output=True)
    extracted = {
        path.relative_to(tmp_path / "TillAgent").as_posix(): path.read_bytes()
        for path in (tmp_path / "TillAgent").rglob("*")
        if path.is_file()
    }
    assert extracted == DIST


@built_on_linux
def test_component_guids_do_not_change_between_builds(msi, tmp_path):
    again = build_msi.build(make_dist(tmp_path / "dist"), tmp_path / "again.msi")
    guids = {row["Component"]: row["ComponentId"] for row in table(msi, "Component")}
    assert guids == {row["Component"]: row["ComponentId"] for row in table(again, "Component")}
    product_codes = [keyed(m, "Property", "Property")["ProductCode"]["Value"] for m in (msi, again)]
    assert product_codes[0] != product_codes[1]  # Id="*": each build is a new product


def test_the_builder_refuses_a_folder_without_the_programs(tmp_path):
    make_dist(tmp_path)
    (tmp_path / "till-install.exe").unlink()
    with pytest.raises(build_msi.BuildError, match=r"lacks till-install\.exe"):
        build_msi.build(tmp_path, tmp_path / "x.msi")
    assert build_msi.main([str(tmp_path), "-o", str(tmp_path / "x.msi")]) == 1
    assert not (tmp_path / "x.msi").exists()


@pytest.mark.parametrize(
    ("version", "expected"),
    [("0.1.0", "0.1.0"), ("0.2.1.dev3+g1a2b3c4", "0.2.1"), ("1!2.3", "2.3.0"), ("0.0.0", "0.0.0")],
)
def test_a_package_version_becomes_its_release_numbers_for_msi(version, expected):
    assert build_msi.msi_version(version) == expected


@pytest.mark.parametrize("version", ["0.1", "0.1.0.dev1", "256.0.0", "1.2.65536"])
def test_the_builder_refuses_a_version_msi_cannot_hold(tmp_path, version):
    with pytest.raises(build_msi.BuildError, match="not an MSI ProductVersion"):
        build_msi.build(make_dist(tmp_path), tmp_path / "x.msi", version)


def test_the_fragment_names_the_programs_for_the_custom_actions(tmp_path):
    text = build_msi.fragment(make_dist(tmp_path))
    assert 'Id="TillInstallExe" Name="till-install.exe"' in text
    assert 'Source="$(var.SourceDir)/_internal/certifi/cacert.pem"' in text
    assert build_msi.main([str(tmp_path), "--fragment-only", str(tmp_path / "f.wxs")]) == 0
    assert (tmp_path / "f.wxs").read_text(encoding="utf-8") == text


def test_the_documented_windows_build_is_the_one_make_test_windows_runs():
    """docs/install.md's recipe and tests/wine run the same two modules, nothing else."""
    from tests.wine.test_windows import FREEZE

    docs = (ROOT / "docs" / "install.md").read_text(encoding="utf-8")
    recipe = docs[docs.index("### Building the MSI") : docs.index("### What ran, and where")]
    assert f"python {' '.join(FREEZE)} C:\\build\\TillAgent" in recipe
    assert "-m pip install --require-hashes --no-deps -r requirements.lock" in recipe
    assert "python -m installer.windows.build_msi /path/to/TillAgent -o" in recipe
    wine_tests = (ROOT / "tests" / "wine" / "test_windows.py").read_text(encoding="utf-8")
    assert "*FREEZE, windows_path(output)" in wine_tests
    assert 'build_msi.main([str(frozen), "-o", str(output)])' in wine_tests
