"""systemd readiness notification (sd_notify) without libsystemd."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

READY = "READY=1"
STOPPING = "STOPPING=1"


def reloading() -> str:
    """RELOADING=1 with the monotonic timestamp newer systemd (Type=notify-reload) wants."""
    return f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}"


def status(text: str) -> str:
    return f"STATUS={text}"


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send a state to $NOTIFY_SOCKET; False (and no error) when there is none."""
    env = os.environ if environ is None else environ
    addr = env.get("NOTIFY_SOCKET", "")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
        return True
    except OSError:
        return False
