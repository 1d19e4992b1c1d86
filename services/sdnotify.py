"""systemd readiness notification (sd_notify) without libsystemd.

``notify(READY)`` after start-up, ``notify(reloading())`` before a reload (``RELOADING=1``
plus ``MONOTONIC_USEC``, which ``Type=notify-reload`` units on systemd >= 253 require),
``notify(STOPPING)`` on shutdown. Without ``$NOTIFY_SOCKET`` every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

READY = "READY=1"
RELOADING = "RELOADING=1"
STOPPING = "STOPPING=1"


def monotonic_usec() -> str:
    """``MONOTONIC_USEC=<now>`` (CLOCK_MONOTONIC in microseconds, as systemd expects)."""
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


def reloading() -> str:
    """``RELOADING=1`` with the monotonic timestamp newer systemd (Type=notify-reload) wants."""
    return f"{RELOADING}\n{monotonic_usec()}"


def status(text: str) -> str:
    """``STATUS=<text>``: the free-form line ``systemctl status`` shows (one line)."""
    return "STATUS=" + text.replace("\n", " ")


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send a state to ``$NOTIFY_SOCKET``; False (and never an error) when there is none.

    ``environ`` defaults to ``os.environ``; an address starting with ``@`` is in the
    abstract namespace.
    """
    env = os.environ if environ is None else environ
    addr = env.get("NOTIFY_SOCKET", "")
    if not addr or addr[0] not in "/@":
        return False  # unset, or a vsock address we do not speak
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
        return True
    except OSError:
        return False
