"""till-install through click's runner."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from installer.cli import main
from tests.conftest import ROOT


@pytest.mark.linux_only("systemd's directory variables")
def test_paths_follow_systemd_directories(monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/till-agent-t")
    monkeypatch.setenv("CONFIGURATION_DIRECTORY", "/etc/till-agent-t")
    result = CliRunner().invoke(main, ["paths", "--json"])
    assert result.exit_code == 0, result.output
    locations = json.loads(result.output)
    assert locations["data_dir"] == "/var/lib/till-agent-t"
    assert locations["config_file"] == "/etc/till-agent-t/config.toml"


def test_every_command_has_help():
    for name, command in main.commands.items():
        assert command.help, name


def test_every_command_is_documented_in_install_md():
    text = (ROOT / "docs" / "install.md").read_text(encoding="utf-8")
    for name, command in main.commands.items():
        if not command.hidden and name != "paths":
            assert f"till-install {name}" in text, name
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    assert "till-install paths" in operations


def test_wait_healthy_tells_a_failing_agent_from_a_silent_one():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from installer import steps
    from tests.conftest import free_port

    class Failing(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/health"
        assert steps.wait_healthy(url, 0.3, poll_seconds=0.05) == 503
    finally:
        server.shutdown()
        server.server_close()
    assert steps.wait_healthy(f"http://127.0.0.1:{free_port()}/v1/health", 0.3, 0.05) is None
