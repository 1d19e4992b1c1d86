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


_USAGE = "use HOST:PORT, [IPv6]:PORT or unix:/absolute/path[:MODE]"
_UNIX_PATH_MAX = 107  # sizeof(sun_path) - 1 on Linux


def parse_listen(spec: str) -> ListenAddress:
    """``127.0.0.1:10040``, ``[::1]:10040``, ``localhost:10040``, ``unix:/path[:0660]``.

    Raises ValueError naming the spec and the expected forms.
    """
    s = spec.strip()
    if s.startswith("unix:"):
        path, mode = s[5:], 0o660
        head, sep, tail = path.rpartition(":")
        if sep and tail.isascii() and tail.isdigit():
            if len(tail) not in (3, 4) or any(c not in "01234567" for c in tail):
                raise ValueError(
                    f"invalid socket mode {tail!r} in listen address {spec!r}: {_USAGE}"
                )
            path, mode = head, int(tail, 8)
            if mode > 0o777:
                raise ValueError(f"invalid socket mode {tail!r} in listen address {spec!r}")
        if not path.startswith("/"):
            raise ValueError(
                f"invalid listen address {spec!r}: the unix socket path must be absolute"
            )
        if len(os.fsencode(path)) > _UNIX_PATH_MAX:
            raise ValueError(
                f"invalid listen address {spec!r}: unix socket path longer than "
                f"{_UNIX_PATH_MAX} bytes"
            )
        return ListenAddress("unix", path=path, mode=mode)
    if s.startswith("["):
        host, sep, port = s[1:].partition("]:")
        if not sep or not host:
            raise ValueError(f"invalid listen address {spec!r}: {_USAGE}")
    else:
        host, sep, port = s.rpartition(":")
        if not sep or not host:
            raise ValueError(f"invalid listen address {spec!r}: {_USAGE}")
        if ":" in host:
            raise ValueError(
                f"invalid listen address {spec!r}: IPv6 addresses need brackets, [::1]:PORT"
            )
    if any(c.isspace() for c in host):
        raise ValueError(f"invalid listen address {spec!r}: {_USAGE}")
    if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid port in listen address {spec!r}: 0-65535")
    return ListenAddress("tcp", host=host, port=int(port))


def prepare_unix_path(path: str) -> None:
    """Make a unix socket path bindable: create its directory, remove a stale socket.

    A socket file some live process still answers on is left alone (EADDRINUSE), and a
    path that is not a socket is never removed (EEXIST, "exists and is not a socket").
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        if not stat.S_ISSOCK(p.lstat().st_mode):
            raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        p.unlink()  # stale socket of a dead process: nobody listens on it
    except FileNotFoundError:
        pass
    except OSError as exc:  # a busy live listener (full backlog) is still a live one
        raise OSError(errno.EADDRINUSE, "in use") from exc
    else:
        raise OSError(errno.EADDRINUSE, "in use")
    finally:
        probe.close()


class Connection(asyncio.Protocol):
    """Base protocol: registers with its server, tracks activity and a busy flag.

    Subclasses call ``super().data_received(data)`` (or set ``last_active`` themselves):
    one clock read per read, no timer re-armed; the server's sweep closes idle ones.
    Set ``busy`` while a request is in flight so a graceful drain waits for its answer.
    """

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
        """Close the connection (pending output is flushed first)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """Close at once, dropping pending output."""
        if self.transport is not None:
            self.transport.abort()

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
        self.rejected = 0
        self.connections: set[Connection] = set()
        self.servers: list[asyncio.base_events.Server] = []
        self._unix_paths: list[tuple[str, int, int]] = []  # path, st_dev, st_ino
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
        """Bind every address; OSError naming the address when one fails (all are released)."""
        loop = asyncio.get_running_loop()
        self._closing = False
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
                reason = exc.strerror or str(exc)
                raise OSError(exc.errno, f"cannot listen on {spec}: {reason}") from None
            self.servers.append(server)
        self._sweeper = asyncio.create_task(self._sweep())

    async def _start_unix(self, loop: asyncio.AbstractEventLoop, spec: ListenAddress) -> Any:
        prepare_unix_path(spec.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(spec.path)
            # the mode is set before listen(): nobody can connect through a looser mode
            os.chmod(spec.path, spec.mode)
            st = os.stat(spec.path)
            server = await loop.create_unix_server(self._make, sock=sock, backlog=self.backlog)
        except BaseException:
            sock.close()
            raise
        self._unix_paths.append((spec.path, st.st_dev, st.st_ino))
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
        """Connections currently open (rejected ones never count)."""
        return len(self.connections)

    async def _sweep(self) -> None:
        interval = max(min(self.idle_timeout / 4, 5.0), 0.05)
        while True:
            await asyncio.sleep(interval)
            try:
                self._close_idle(time.monotonic())
            except Exception:  # the sweep must survive a broken hook
                log.exception("idle_sweep_failed")

    def _close_idle(self, now: float) -> None:
        cutoff = now - self.idle_timeout
        for conn in [c for c in self.connections if c.last_active < cutoff and not c.busy]:
            log.info("idle_close", peer=conn.peer, idle_s=round(now - conn.last_active, 1))
            conn.close()
            self.idle_closed += 1
            if self.on_idle_close is not None:
                self.on_idle_close()

    async def drain(self, grace: float) -> None:
        """Stop accepting; close idle connections now and busy ones once their answer is
        written, for up to ``grace`` seconds; then close everything."""
        self._closing = True
        for server in self.servers:
            server.close()
        deadline = time.monotonic() + grace
        while True:
            busy = False
            for conn in list(self.connections):
                if conn.busy:
                    busy = True
                else:
                    conn.close()
            if not busy or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.01)
        await self.close()

    async def close(self, linger: float = 1.0) -> None:
        """Stop listening, close every connection (aborting any still open after ``linger``
        seconds), remove the unix socket files this server created."""
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.close()
        deadline = time.monotonic() + linger
        while self.connections and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.abort()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self.servers.clear()
        for path, dev, ino in self._unix_paths:
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == (dev, ino):  # never remove a successor's socket
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
