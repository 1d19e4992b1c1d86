"""services.devrun (make run): every daemon started on one config and stopped together."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp: Path, pport: int, mport: int, bad: bool = False) -> Path:
    text = f"""
[directory]
path = "{tmp}/directory.db"
[policyd]
listen = ["127.0.0.1:{pport}"]
admin_socket = "{tmp}/admin.sock"
metrics_listen = ""
{"bogus = 1" if bad else ""}
[metricsd]
listen = "127.0.0.1:{mport}"
queue_scrape = false
[[metricsd.sources]]
type = "file"
path = "{tmp}/mail.log"
"""
    p = tmp / "pfm.toml"
    p.write_text(text)
    return p


def _wait_port(port: int, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def test_devrun_starts_policyd_and_metricsd_and_stops_them_on_sigterm(tmp_path: Path) -> None:
    """Both daemons listen on their ports; SIGTERM to devrun stops them and exits 0."""
    pport, mport = free_port(), free_port()
    cfg = _config(tmp_path, pport, mport)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.devrun",
            "--config",
            str(cfg),
            "--only",
            "pfm-policyd",
            "--only",
            "pfm-metricsd",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert _wait_port(pport) and _wait_port(mport)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    assert b"pfm-policyd" in out and b"pfm-metricsd" in out


def test_devrun_refuses_a_bad_config_naming_the_key(tmp_path: Path) -> None:
    """A config error stops devrun before anything starts, with the daemon and the key named."""
    cfg = _config(tmp_path, free_port(), free_port(), bad=True)
    proc = subprocess.run(
        [sys.executable, "-m", "services.devrun", "--config", str(cfg), "--only", "pfm-policyd"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 78
    assert "pfm-policyd" in proc.stderr and "policyd.bogus" in proc.stderr
