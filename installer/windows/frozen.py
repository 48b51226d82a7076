"""The entry of the frozen Windows programs: one build, named three ways (see freeze.py).

Which program runs is the executable's own name: till-agent-service.exe hosts the service,
till-agent.exe is the agent's command line, till-install.exe the installer's.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

PROGRAMS = ("till-agent-service", "till-agent", "till-install")


def program(name: str) -> Callable[[], object]:
    """The main function of the program called name (the executable's stem)."""
    if name == "till-agent-service":
        from service.windows import main as service_main

        return service_main
    if name == "till-agent":
        from agent.cli import main as agent_main

        return agent_main
    if name == "till-install":
        from installer.cli import main as installer_main

        return installer_main
    raise SystemExit(f"{name}: not one of {', '.join(PROGRAMS)} (the executable was renamed?)")


def main() -> None:
    program(Path(sys.executable).stem.lower())()


if __name__ == "__main__":
    main()
