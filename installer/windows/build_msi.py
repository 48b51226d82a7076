"""Builds the Till Agent MSI from the PyInstaller output: the file list, wixl, secure properties."""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from agent import __version__

WXS = Path(__file__).with_name("TillAgent.wxs")
WIX_NS = "http://schemas.microsoft.com/wix/2006/wi"
# The three PyInstaller --onedir outputs, merged into one folder. The custom actions run
# till-install.exe by its File Id; till-install looks for till-agent-service.exe beside itself.
PROGRAMS = {
    "till-install.exe": "TillInstallExe",
    "till-agent-service.exe": "TillAgentServiceExe",
    "till-agent.exe": "TillAgentExe",
}
# Public properties passed from msiexec's command line to the elevated server side. wixl
# ignores Secure="yes", so the build writes the list itself (wixl's own two included).
SECURE_PROPERTIES = (
    "ANSWERS",
    "INSTALLFOLDER",
    "OFFLINE",
    "PURGEDATA",
    "WIX_DOWNGRADE_DETECTED",
    "WIX_UPGRADE_DETECTED",
)
# Component GUIDs derive from the path inside the folder, so they stay the same from build
# to build (Windows Installer's component rules).
GUID_NAMESPACE = uuid.UUID("3D1F0A52-6C2E-4B8F-9A47-1E5C2B7D9F10")
VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


class BuildError(Exception):
    """The dist folder, the version or a tool is not right; the message says what to do."""


def check_dist(dist: Path) -> None:
    """The folder must hold the three programs at its top."""
    missing = [name for name in PROGRAMS if not (dist / name).is_file()]
    if missing:
        raise BuildError(
            f"{dist} lacks {', '.join(missing)}: copy the three PyInstaller dist folders' "
            "contents into it (docs/install.md)"
        )


def msi_version(version: str) -> str:
    """The package's PEP 440 version as an MSI ProductVersion: its release numbers, three of them.

    A development build between tags (0.2.1.dev3+g1a2b3c) becomes 0.2.1: MSI compares only
    major.minor.build, so builds between two tags are one product version to Windows.
    """
    release = re.match(r"^(?:\d+!)?(\d+(?:\.\d+)*)", version)
    numbers = (release[1].split(".") if release else []) + ["0", "0", "0"]
    return ".".join(numbers[:3])


def check_version(version: str) -> None:
    """ProductVersion is major.minor.build, at most 255.255.65535."""
    found = VERSION.match(version)
    if not found or int(found[1]) > 255 or int(found[2]) > 255 or int(found[3]) > 65535:
        raise BuildError(f"version {version!r} is not an MSI ProductVersion (e.g. 0.1.0)")


def fragment(dist: Path) -> str:
    """The WiX fragment listing every file under dist: ComponentGroup AgentFiles."""
    ET.register_namespace("", WIX_NS)
    wix = ET.Element(f"{{{WIX_NS}}}Wix")
    frag = ET.SubElement(wix, f"{{{WIX_NS}}}Fragment")
    top = ET.SubElement(frag, f"{{{WIX_NS}}}DirectoryRef", Id="INSTALLFOLDER")
    group = ET.SubElement(
        ET.SubElement(wix, f"{{{WIX_NS}}}Fragment"), f"{{{WIX_NS}}}ComponentGroup"
    )
    group.set("Id", "AgentFiles")
    _add_folder(dist, dist, top, group)
    ET.indent(wix)
    return ET.tostring(wix, encoding="unicode", xml_declaration=True) + "\n"


def _add_folder(dist: Path, folder: Path, parent: ET.Element, group: ET.Element) -> None:
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        relative = entry.relative_to(dist).as_posix()
        if entry.is_dir():
            sub = ET.SubElement(parent, f"{{{WIX_NS}}}Directory", Id=_id("dir", relative))
            sub.set("Name", entry.name)
            _add_folder(dist, entry, sub, group)
            continue
        component_id = _id("cmp", relative)
        component = ET.SubElement(parent, f"{{{WIX_NS}}}Component", Id=component_id)
        component.set("Guid", str(uuid.uuid5(GUID_NAMESPACE, relative.lower())).upper())
        component.set("Win64", "yes")
        file_id = PROGRAMS.get(relative, _id("fil", relative))
        ET.SubElement(
            component,
            f"{{{WIX_NS}}}File",
            Id=file_id,
            Name=entry.name,
            Source=f"$(var.SourceDir)/{relative}",
            KeyPath="yes",
        )
        ET.SubElement(group, f"{{{WIX_NS}}}ComponentRef", Id=component_id)


def _id(kind: str, relative: str) -> str:
    return f"{kind}_{hashlib.sha1(relative.encode()).hexdigest()[:24]}"


def build(dist: Path, output: Path, version: str = msi_version(__version__)) -> Path:
    """wixl builds output from TillAgent.wxs and dist's file list; then the secure properties."""
    dist, output = dist.resolve(), output.resolve()
    check_dist(dist)
    check_version(version)
    tools = {name: shutil.which(name) for name in ("wixl", "msibuild")}
    if not all(tools.values()):
        raise BuildError("wixl and msibuild are needed (Debian: apt-get install wixl msitools)")
    files = output.with_suffix(".files.wxs")
    files.write_text(fragment(dist), encoding="utf-8")
    # wixl looks for each File's Source under its working directory: SourceDir is "." there.
    _run(
        [
            str(tools["wixl"]),
            "--arch",
            "x64",
            "-D",
            f"Version={version}",
            "-D",
            "SourceDir=.",
            "-o",
            str(output),
            str(WXS),
            str(files),
        ],
        cwd=dist,
    )
    secure = ";".join(SECURE_PROPERTIES)
    _run(
        [
            str(tools["msibuild"]),
            str(output),
            "-q",
            f"UPDATE `Property` SET `Value` = '{secure}' "
            "WHERE `Property` = 'SecureCustomProperties'",
        ],
        cwd=dist,
    )
    return output


def _run(command: list[str], cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    # wixl warns (GLib) about WiX attributes it does not know and still succeeds; it signals
    # a failure by its exit code, or only by not writing the file.
    if done.returncode != 0:
        raise BuildError(
            f"{Path(command[0]).name} failed ({done.returncode}): {done.stderr.strip()}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m installer.windows.build_msi", description=__doc__
    )
    parser.add_argument("dist", type=Path, help="the folder holding the three programs")
    parser.add_argument("-o", "--output", type=Path, help="the MSI (TillAgent-VERSION.msi)")
    parser.add_argument(
        "--version", default=msi_version(__version__), help="ProductVersion (the package's)"
    )
    parser.add_argument(
        "--fragment-only",
        type=Path,
        metavar="FILE",
        help="only write the file list (for WiX 3's candle/light on Windows)",
    )
    args = parser.parse_args(argv)
    try:
        if args.fragment_only:
            check_dist(args.dist)
            args.fragment_only.write_text(fragment(args.dist.resolve()), encoding="utf-8")
            return 0
        output = args.output or Path(f"TillAgent-{args.version}.msi")
        built = build(args.dist, output, args.version)
    except BuildError as exc:
        sys.stderr.write(f"build_msi: {exc}\n")
        return 1
    sys.stdout.write(f"{built}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
