"""A fake of the OS boundary: commands recorded; systemctl or sc.exe runs the agent in-process."""

from __future__ import annotations

from collections.abc import Sequence

from agent import app
from installer import steps
from installer.services import WINDOWS_NAME
from installer.system import CommandError, Completed


class FakeHost:
    """What `systemctl start` would do, done for real: the agent on the installed config, with
    the folders systemd would give it under the install's root."""

    def __init__(
        self,
        layout: steps.Layout,
        *,
        admin: bool = False,
        account: tuple[int, int] | None = None,
        failing: Sequence[str] = (),
        systemd: bool = True,
    ) -> None:
        self.layout = layout
        self.systemd = systemd
        self.admin = admin
        self.ids = account
        self.failing = set(failing)
        self.calls: list[list[str]] = []
        self.agent: app.Agent | None = None
        self.image_path: str | None = None  # sc.exe's service, once created

    # -- Commands ----------------------------------------------------------------------

    def run(self, argv: Sequence[str], *, check: bool = True) -> Completed:
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == "systemctl":
            return self._systemctl(argv[1:])
        if argv[0] == "sc.exe":
            return self._sc(argv[1:], check)
        returncode = 1 if self.failing & set(argv) else 0
        if check and returncode:
            raise CommandError(f"{' '.join(argv[:3])} failed ({returncode})")
        return Completed(returncode, "")

    def account(self, name: str) -> tuple[int, int] | None:
        return self.ids

    def is_admin(self) -> bool:
        return self.admin

    def systemd_running(self) -> bool:
        return self.systemd

    # -- the service -------------------------------------------------------------------

    def _systemctl(self, args: list[str]) -> Completed:
        if args[0].startswith("--root="):
            return Completed(0, "")  # offline: symlinks under a root, no service touched
        if not self.systemd:
            raise CommandError("System has not been booted with systemd as init system (PID 1)")
        verb = args[0]
        if verb in ("stop", "restart") or (verb == "disable" and "--now" in args):
            self.stop()
        if verb in ("start", "restart"):
            self.start()
        if verb == "is-active":
            running = self.agent is not None
            return Completed(0 if running else 3, "active\n" if running else "inactive\n")
        return Completed(0, "")

    def _sc(self, args: list[str], check: bool) -> Completed:
        """sc.exe as Windows answers it: 1060 for a service that does not exist."""
        verb = args[0]
        if verb == "create":
            self.image_path = args[args.index("binPath=") + 1]
        elif self.image_path is None:
            if check:
                raise CommandError(f"sc.exe {verb} {WINDOWS_NAME} failed (1060)")
            return Completed(1060, "[SC] OpenService FAILED 1060:\n\nThe service does not exist.")
        if verb == "config":
            self.image_path = args[args.index("binPath=") + 1]
        if verb in ("stop", "delete"):
            self.stop()
        if verb == "start":
            self.start()
        if verb == "delete":
            self.image_path = None
        state = "4  RUNNING" if self.agent is not None else "1  STOPPED"
        return Completed(0, f"SERVICE_NAME: {WINDOWS_NAME}\n        STATE              : {state}\n")

    def start(self) -> None:
        if self.agent is None:
            self.agent = app.start(steps.load_settings(self.layout))

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.stop()
            self.agent = None

    def commands_named(self, word: str) -> list[list[str]]:
        return [c for c in self.calls if word in c]
