"""Freezes the Windows programs with PyInstaller into one folder: the MSI's input.

One PyInstaller build of installer/windows/frozen.py, its executable copied under the three
names the MSI installs (till-agent-service.exe, till-agent.exe, till-install.exe); each copy
runs the program its name says. Run by the Windows build machine's Python (docs/install.md,
"Building the MSI") and, under Wine, by `make test-windows`: one recipe, so they cannot drift.
The Python must hold the lock file's packages, PyInstaller among them, and this project.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from installer.windows import frozen

BUILD_NAME = "till-agent-service"
# Imports PyInstaller cannot see: pywin32 imports win32timezone by name at run time.
HIDDEN_IMPORTS = ("win32timezone",)


class FreezeError(Exception):
    """PyInstaller failed, or a program is missing from its output."""


def pyinstaller_command(work: Path) -> list[str]:
    """The PyInstaller command line (--onedir: nothing unpacked at each start; --clean: a module
    that once failed to import is otherwise left out of every later build from the same work
    folder, even once it imports)."""
    command = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--onedir"]
    command += ["--console"]
    command += ["--log-level", "WARN", "--name", BUILD_NAME]
    command += ["--distpath", str(work / "dist"), "--workpath", str(work / "build")]
    command += ["--specpath", str(work)]
    for hidden_import in HIDDEN_IMPORTS:
        command += ["--hidden-import", hidden_import]
    return [*command, str(Path(frozen.__file__).resolve())]


def freeze(output: Path, work: Path) -> Path:
    """The build in output, its executable under each program's name."""
    # PyInstaller's output goes where ours goes, not through a pipe of ours: a program it starts
    # may keep a pipe open after it exits (under Wine explorer.exe does), and a read would hang.
    done = subprocess.run(pyinstaller_command(work), check=False)
    if done.returncode != 0:
        raise FreezeError(f"PyInstaller failed ({done.returncode}); its output is above")
    shutil.rmtree(output, ignore_errors=True)
    shutil.copytree(work / "dist" / BUILD_NAME, output)
    built = output / f"{BUILD_NAME}.exe"
    if not built.is_file():
        raise FreezeError(f"PyInstaller wrote no {built.name} in {output}")
    for name in frozen.PROGRAMS:
        if name != BUILD_NAME:
            shutil.copy2(built, output / f"{name}.exe")
    return output


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m installer.windows.freeze", description=__doc__.splitlines()[0]
    )
    parser.add_argument("output", type=Path, help="the folder for the programs")
    parser.add_argument(
        "--work", type=Path, help="PyInstaller's build folder (default: OUTPUT.work)"
    )
    args = parser.parse_args(argv)
    work = args.work or args.output.with_name(args.output.name + ".work")
    try:
        made = freeze(args.output.resolve(), work.resolve())
    except FreezeError as exc:
        sys.stderr.write(f"freeze: {exc}\n")
        return 1
    sys.stdout.write(f"{made}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
