"""The frozen programs' recipe, on Linux: one build, three names, each its own program.

PyInstaller itself runs under Wine (tests/wine): there the programs are built and started.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import cli as agent_cli
from installer import cli as installer_cli
from installer.windows import build_msi, freeze, frozen
from service import windows


def test_each_name_runs_its_own_program():
    assert frozen.program("till-agent") is agent_cli.main
    assert frozen.program("till-install") is installer_cli.main
    assert frozen.program("till-agent-service") is windows.main
    with pytest.raises(SystemExit, match="renamed"):
        frozen.program("till-agent (2)")


def test_the_three_names_are_the_ones_the_msi_installs():
    assert {f"{name}.exe" for name in frozen.PROGRAMS} == set(build_msi.PROGRAMS)


def test_pyinstaller_is_told_what_it_cannot_see(tmp_path):
    command = freeze.pyinstaller_command(tmp_path)
    assert command[1:3] == ["-m", "PyInstaller"]
    assert "--onedir" in command
    assert "--clean" in command  # a stale work folder once left agent.ops.doctor out
    assert command[command.index("--hidden-import") + 1] == "win32timezone"
    assert Path(command[-1]) == Path(frozen.__file__).resolve()
