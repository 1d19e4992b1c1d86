"""A TCP + unix-socket server for asyncio.Protocol handlers, shared by the daemons.

Tracks every connection, enforces ``max_connections`` and an idle timeout (one periodic
sweep, not a timer per read), and drains gracefully: stop accepting, wait until no
connection is busy with a request or the grace time passes, then close the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .logging import get_logger

log = get_logger("pfm.netserver")


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where to listen: a TCP host/port or a unix socket path with its mode."""

    kind: str  # "tcp" | "unix"
    host: str = ""
    port: int = 0
    path: str = ""
    mode: int = 0o660

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(spec: str) -> ListenAddress:
    """``127.0.0.1:10040``, ``[::1]:10040``, ``localhost:10040``, ``unix:/path[:0660]``."""
    spec = spec.strip()
    if spec.startswith("unix:"):
        rest = spec[5:]
        mode = 0o660
        head, sep, tail = rest.rpartition(":")
        if sep and head and tail.isdigit() and len(tail) in (3, 4):
            rest, mode = head, int(tail, 8)
        if not rest.startswith("/") and not rest:
            raise ValueError(f"invalid unix socket address {spec!r}")
        return ListenAddress("unix", path=rest, mode=mode)
    if spec.startswith("["):
        host, sep, port = spec[1:].partition("]:")
        if not sep:
            raise ValueError(f"invalid listen address {spec!r}: use [IPv6]:PORT")
    else:
        host, sep, port = spec.rpartition(":")
        if not sep or not host:
            raise ValueError(f"invalid listen address {spec!r}: use HOST:PORT or unix:/path")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid port in listen address {spec!r}")
    return ListenAddress("tcp", host=host, port=int(port))


def prepare_unix_path(path: str) -> None:
    """Make a unix socket path bindable: create its directory, remove a stale socket.

    A socket file some live process still answers on is left alone (EADDRINUSE), and a
    path that is not a socket is never removed.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        if not stat.S_ISSOCK(p.lstat().st_mode):
            return
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
    except OSError:
        p.unlink()  # stale socket of a dead process
    else:
        raise OSError(errno.EADDRINUSE, "in use")
    finally:
        probe.close()


class Connection(asyncio.Protocol):
    """Base protocol: registers with its server, tracks activity and a busy flag."""

    server: NetServer | None = None

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.last_active = time.monotonic()
        self.peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = f"{peer[0]}:{peer[1]}"
        else:
            self.peer = "unix"
        if self.server is not None:
            self.server._register(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()

    def close(self) -> None:
        """Close the connection (pending output is flushed)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.server is not None:
            self.server._unregister(self)
        self.transport = None


class NetServer:
    """Listens on several addresses and manages the connections of one protocol."""

    def __init__(
        self,
        listen: Sequence[str],
        factory: Callable[[], Connection],
        *,
        max_connections: int = 1000,
        idle_timeout: float = 300.0,
        backlog: int = 1024,
        on_reject: Callable[[asyncio.BaseTransport], None] | None = None,
        on_idle_close: Callable[[], None] | None = None,
    ) -> None:
        self.specs = [parse_listen(s) for s in listen]
        self.factory = factory
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.backlog = backlog
        self.on_reject = on_reject
        self.on_idle_close = on_idle_close
        self.idle_closed = 0
        self.connections: set[Connection] = set()
        self.servers: list[asyncio.base_events.Server] = []
        self.rejected = 0
        self._unix_paths: list[str] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False

    def _make(self) -> asyncio.Protocol:
        if len(self.connections) >= self.max_connections or self._closing:
            return _Rejector(self)
        conn = self.factory()
        conn.server = self
        return conn

    def _register(self, conn: Connection) -> None:
        self.connections.add(conn)

    def _unregister(self, conn: Connection) -> None:
        self.connections.discard(conn)

    async def start(self) -> None:
        """Bind every address; a clear error when one is in use."""
        loop = asyncio.get_running_loop()
        for spec in self.specs:
            try:
                if spec.kind == "unix":
                    server = await self._start_unix(loop, spec)
                else:
                    server = await loop.create_server(
                        self._make, spec.host, spec.port, backlog=self.backlog, reuse_address=True
                    )
            except OSError as exc:
                await self.close()
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(
                        exc.errno, f"cannot listen on {spec}: address already in use"
                    ) from None
                raise OSError(exc.errno, f"cannot listen on {spec}: {exc.strerror}") from None
            self.servers.append(server)
        self._sweeper = asyncio.create_task(self._sweep())

    async def _start_unix(self, loop: asyncio.AbstractEventLoop, spec: ListenAddress) -> Any:
        prepare_unix_path(spec.path)
        server = await loop.create_unix_server(self._make, spec.path, backlog=self.backlog)
        os.chmod(spec.path, spec.mode)
        self._unix_paths.append(spec.path)
        return server

    @property
    def addresses(self) -> list[str]:
        """The addresses really bound (ports resolved when 0 was asked)."""
        out = []
        for server in self.servers:
            for sock in server.sockets:
                name = sock.getsockname()
                if sock.family == socket.AF_UNIX:
                    out.append(f"unix:{name}")
                elif sock.family == socket.AF_INET6:
                    out.append(f"[{name[0]}]:{name[1]}")
                else:
                    out.append(f"{name[0]}:{name[1]}")
        return out

    @property
    def connection_count(self) -> int:
        return len(self.connections)

    async def _sweep(self) -> None:
        interval = max(min(self.idle_timeout / 4, 5.0), 0.05)
        while True:
            await asyncio.sleep(interval)
            cutoff = time.monotonic() - self.idle_timeout
            for conn in [c for c in self.connections if c.last_active < cutoff and not c.busy]:
                log.info(
                    "idle_close",
                    peer=conn.peer,
                    idle_s=round(time.monotonic() - conn.last_active, 1),
                )
                conn.close()
                self.idle_closed += 1
                if self.on_idle_close is not None:
                    self.on_idle_close()

    async def drain(self, grace: float) -> None:
        """Stop accepting; wait for busy connections up to ``grace``; close everything."""
        self._closing = True
        for server in self.servers:
            server.close()
        deadline = time.monotonic() + grace
        while any(c.busy for c in self.connections) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        await self.close()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.close()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self.servers.clear()
        for path in self._unix_paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._unix_paths.clear()


class _Rejector(asyncio.Protocol):
    """Answers a connection over the limit (via on_reject) and closes it."""

    def __init__(self, server: NetServer) -> None:
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.server.rejected += 1
        if self.server.on_reject is not None:
            try:
                self.server.on_reject(transport)
            except Exception:  # the reject hook must never break the accept loop
                log.exception("reject_hook_failed")
        transport.close()
