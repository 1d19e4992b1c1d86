"""pfm-policyd under a systemd-like supervisor: sd_notify states across reload and stop."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def recv_until(s: socket.socket, want: str, timeout: float = 15.0) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            msg = s.recv(4096).decode()
        except TimeoutError:
            break
        got.append(msg)
        if msg.startswith(want):
            return got
    raise AssertionError(f"no {want!r} in {got}")


def test_notify_ready_reloading_stopping(tmp_path: Path) -> None:
    """READY=1 after start, RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 on SIGTERM, exit 0."""
    conf = tmp_path / "pfm.toml"
    conf.write_text(
        f'[policyd]\nlisten = ["127.0.0.1:{free_port()}"]\nadmin_socket = "{tmp_path}/a.sock"\nmetrics_listen = ""\n'
    )
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        proc = subprocess.Popen(
            [sys.executable, "-m", "policy", "--config", str(conf), "--log-format", "json"],
            cwd=ROOT,
            env={"NOTIFY_SOCKET": path, "PATH": "/usr/bin:/bin"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            recv_until(s, "READY=1")
            proc.send_signal(signal.SIGHUP)
            got = recv_until(s, "READY=1")
            assert any(m.startswith("RELOADING=1\nMONOTONIC_USEC=") for m in got)
            proc.send_signal(signal.SIGTERM)
            recv_until(s, "STOPPING=1")
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_address_in_use_exits_1_with_clear_message(tmp_path: Path) -> None:
    """Starting on a port already taken exits 1 and says which address."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        conf = tmp_path / "pfm.toml"
        conf.write_text(
            f'[policyd]\nlisten = ["127.0.0.1:{port}"]\nadmin_socket = ""\nmetrics_listen = ""\n'
        )
        res = subprocess.run(
            [sys.executable, "-m", "policy", "--config", str(conf), "--log-format", "json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert res.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in res.stderr
    assert "Traceback" not in res.stderr
