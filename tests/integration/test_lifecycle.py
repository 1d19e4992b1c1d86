"""The lifecycle skeleton in a real process: signals, sd_notify states, exit codes."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "tiny_daemon.py"


class Harness:
    """One tiny daemon process with a NOTIFY_SOCKET we listen on."""

    def __init__(self, tmp: Path, mode: str) -> None:
        self.record = tmp / "calls.txt"
        self.notify_path = str(tmp / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.notify_path)
        self.stderr = tmp / "stderr.log"
        with self.stderr.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(TINY), str(self.record), mode],
                cwd=ROOT,
                env={
                    "NOTIFY_SOCKET": self.notify_path,
                    "PYTHONPATH": str(ROOT),
                    "PATH": "/usr/bin:/bin",
                },
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def expect(self, want: str, timeout: float = 15.0) -> list[str]:
        """Notifications received until one starting with ``want``."""
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            got.append(msg)
            if msg.startswith(want):
                return got
        raise AssertionError(f"no {want!r} notification in {got}")

    def calls(self) -> list[str]:
        return self.record.read_text().splitlines() if self.record.exists() else []

    def wait_call(self, want: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if want in self.calls():
                return
            time.sleep(0.01)
        raise AssertionError(f"no call {want!r} in {self.calls()}")

    def log_events(self) -> list[dict[str, object]]:
        return [json.loads(x) for x in self.stderr.read_text().splitlines() if x.startswith("{")]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()


@pytest.fixture
def harness() -> Iterator[list[Harness]]:
    """Daemons started by a test, killed (by their own PID) if still running at the end."""
    made: list[Harness] = []
    yield made
    for h in made:
        h.close()


def start(made: list[Harness], tmp: Path, mode: str) -> Harness:
    h = Harness(tmp, mode)
    made.append(h)
    return h


def test_reload_then_graceful_stop(tmp_path: Path, harness: list[Harness]) -> None:
    """READY after start (on uvloop); SIGHUP reloads between RELOADING and READY; SIGTERM stops with the grace, exit 0."""
    h = start(harness, tmp_path, "ok")
    h.expect("READY=1")
    h.proc.send_signal(signal.SIGHUP)
    got = h.expect("READY=1")
    assert any(m.startswith("RELOADING=1\nMONOTONIC_USEC=") for m in got)
    h.proc.send_signal(signal.SIGTERM)
    h.expect("STOPPING=1")
    assert h.proc.wait(15) == 0
    assert h.calls() == ["start:uvloop", "reload", "stop:2.5"]
    events = [e["event"] for e in h.log_events()]
    assert "reload_done" in events and "stopping" in events


def test_sigint_stops_like_sigterm(tmp_path: Path, harness: list[Harness]) -> None:
    """SIGINT (Ctrl-C) is a graceful stop too: no KeyboardInterrupt traceback, exit 0."""
    h = start(harness, tmp_path, "ok")
    h.expect("READY=1")
    h.proc.send_signal(signal.SIGINT)
    assert h.proc.wait(15) == 0
    assert h.calls() == ["start:uvloop", "stop:2.5"]
    assert "Traceback" not in h.stderr.read_text()


def test_failed_reload_keeps_serving(tmp_path: Path, harness: list[Harness]) -> None:
    """A reload that raises is logged with its reason, READY follows, and the daemon keeps running."""
    h = start(harness, tmp_path, "bad-reload")
    h.expect("READY=1")
    h.proc.send_signal(signal.SIGHUP)
    h.expect("READY=1")
    assert h.proc.poll() is None
    rejected = [e for e in h.log_events() if e["event"] == "reload_rejected"]
    assert rejected and "unknown key 'lisen'" in str(rejected[0]["error"])
    h.proc.send_signal(signal.SIGHUP)
    h.expect("READY=1")
    h.proc.send_signal(signal.SIGTERM)
    assert h.proc.wait(15) == 0
    assert h.calls() == ["start:uvloop", "reload", "reload", "stop:2.5"]


def test_second_sigterm_forces_exit(tmp_path: Path, harness: list[Harness]) -> None:
    """While stop() hangs, a second SIGTERM cancels it and the process exits 1 at once."""
    h = start(harness, tmp_path, "hang-stop")
    h.expect("READY=1")
    h.proc.send_signal(signal.SIGTERM)
    h.expect("STOPPING=1")
    h.wait_call("stop:2.5")
    time.sleep(0.1)
    assert h.proc.poll() is None
    began = time.monotonic()
    h.proc.send_signal(signal.SIGTERM)
    assert h.proc.wait(10) == 1
    assert time.monotonic() - began < 2.0
    assert any(e["event"] == "forced_stop" for e in h.log_events())


def test_address_in_use_exits_1_without_traceback(tmp_path: Path, harness: list[Harness]) -> None:
    """An expected start-up error exits 1 with one clear log line, no traceback and no READY."""
    h = start(harness, tmp_path, "bind-fail")
    assert h.proc.wait(15) == 1
    text = h.stderr.read_text()
    assert "Traceback" not in text
    failed = [e for e in h.log_events() if e["event"] == "startup_failed"]
    assert failed[0]["error"] == "cannot listen on 127.0.0.1:1: address already in use"
    assert "exception" not in failed[0]
    h.sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        h.sock.recv(100)
    assert h.calls() == ["start:uvloop", "stop:0"]


def test_unexpected_startup_error_is_logged_with_traceback(
    tmp_path: Path, harness: list[Harness]
) -> None:
    """An unexpected start-up exception exits 1 and its traceback is in the JSON log line."""
    h = start(harness, tmp_path, "crash")
    assert h.proc.wait(15) == 1
    failed = [e for e in h.log_events() if e["event"] == "startup_failed"]
    assert "RuntimeError: unexpected start-up bug" in str(failed[0]["exception"])
