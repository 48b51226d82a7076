"""Freezes the three Windows programs with PyInstaller into one folder: the MSI's input.

Run by the Windows build machine's Python (docs/install.md, "Build the MSI") and, under Wine,
by `make test-windows`: one recipe, so the two cannot drift. The Python must hold the lock
file's packages, PyInstaller among them, and this project.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

# program name -> (the module whose file is its entry script, imports PyInstaller cannot see)
PROGRAMS: dict[str, tuple[str, tuple[str, ...]]] = {
    # pywin32 imports win32timezone at run time, by name, to convert dates.
    "till-agent-service": ("service.windows", ("win32timezone",)),
    "till-agent": ("agent.__main__", ()),
    "till-install": ("installer.__main__", ()),
}


class FreezeError(Exception):
    """PyInstaller failed, or a program is missing from its output."""


def entry_script(module: str) -> Path:
    """The file of a module, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FreezeError(f"{module} is not installed in this Python")
    return Path(spec.origin)


def pyinstaller_command(name: str, work: Path) -> list[str]:
    """The PyInstaller command line for one program (--onedir: no unpacking at each start)."""
    module, hidden = PROGRAMS[name]
    command = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--onedir", "--console"]
    command += ["--log-level", "WARN", "--name", name]
    command += ["--distpath", str(work / "dist"), "--workpath", str(work / "build")]
    command += ["--specpath", str(work)]
    for hidden_import in hidden:
        command += ["--hidden-import", hidden_import]
    return [*command, str(entry_script(module))]


def freeze(output: Path, work: Path) -> Path:
    """Each program frozen, then the three output folders merged into output (they share
    _internal); till-install.exe finds till-agent-service.exe beside itself."""
    for name in PROGRAMS:
        done = subprocess.run(pyinstaller_command(name, work), capture_output=True, text=True)
        if done.returncode != 0:
            said = (done.stderr or done.stdout)[-3000:]
            raise FreezeError(f"PyInstaller failed for {name} ({done.returncode}):\n{said}")
    shutil.rmtree(output, ignore_errors=True)
    for name in PROGRAMS:
        shutil.copytree(work / "dist" / name, output, dirs_exist_ok=True)
    missing = [f"{name}.exe" for name in PROGRAMS if not (output / f"{name}.exe").is_file()]
    if missing:
        raise FreezeError(f"{output} lacks {', '.join(missing)} after PyInstaller")
    return output


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m installer.windows.freeze", description=__doc__.splitlines()[0]
    )
    parser.add_argument("output", type=Path, help="the folder for the three programs")
    parser.add_argument(
        "--work", type=Path, help="PyInstaller's build folder (default: OUTPUT.work)"
    )
    args = parser.parse_args(argv)
    work = args.work or args.output.with_name(args.output.name + ".work")
    try:
        frozen = freeze(args.output.resolve(), work.resolve())
    except FreezeError as exc:
        sys.stderr.write(f"freeze: {exc}\n")
        return 1
    sys.stdout.write(f"{frozen}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
