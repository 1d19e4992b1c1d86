"""sd_notify over a real unix datagram socket."""

from __future__ import annotations

import socket
from pathlib import Path

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
