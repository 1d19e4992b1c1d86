"""sd_notify over a real unix datagram socket."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from services import sdnotify


def test_notify_sends_states(tmp_path: Path) -> None:
    """READY=1 and RELOADING=1 (with MONOTONIC_USEC) reach $NOTIFY_SOCKET."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        env = {"NOTIFY_SOCKET": path}
        assert sdnotify.notify(sdnotify.READY, env)
        assert s.recv(100) == b"READY=1"
        assert sdnotify.notify(sdnotify.reloading(), env)
        msg = s.recv(100).decode()
        assert msg.startswith("RELOADING=1\nMONOTONIC_USEC=")


def test_abstract_socket(tmp_path: Path) -> None:
    """An abstract-namespace address ('@name') works."""
    name = f"pfm-test-{tmp_path.name}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        assert sdnotify.notify(sdnotify.STOPPING, {"NOTIFY_SOCKET": "@" + name})
        assert s.recv(100) == b"STOPPING=1"


def test_no_socket_is_a_noop() -> None:
    """Without $NOTIFY_SOCKET, or with a dead one, notify returns False and never raises."""
    assert not sdnotify.notify(sdnotify.READY, {})
    assert not sdnotify.notify(sdnotify.READY, {"NOTIFY_SOCKET": "/nonexistent/sock"})


def test_environment_variable_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an explicit mapping, $NOTIFY_SOCKET from the process environment is used."""
    path = str(tmp_path / "env.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sdnotify.notify(sdnotify.status("serving\n2 listeners"))
        assert s.recv(100) == b"STATUS=serving 2 listeners"
        monkeypatch.delenv("NOTIFY_SOCKET")
        assert not sdnotify.notify(sdnotify.READY)


def test_reloading_timestamp_is_monotonic_usec() -> None:
    """reloading() carries RELOADING=1 and CLOCK_MONOTONIC in microseconds (systemd's clock)."""
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = sdnotify.reloading().split("\n")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert first == sdnotify.RELOADING == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after
