"""The shared network server: addresses, limits, idle sweep, graceful drain, unix sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import pytest

from services.netserver import Connection, NetServer, parse_listen, prepare_unix_path


class Echo(Connection):
    """Echoes lines; 'slow' keeps the connection busy for a while."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if data.startswith(b"slow"):
            self.busy = True

            def done() -> None:
                self.busy = False
                if self.transport is not None:
                    self.transport.write(b"done\n")

            asyncio.get_running_loop().call_later(0.3, done)
        elif self.transport is not None:
            self.transport.write(data)


@pytest.mark.parametrize(
    ("spec", "expect"),
    [
        ("127.0.0.1:10040", ("tcp", "127.0.0.1", 10040, "", 0o660)),
        ("[::1]:10040", ("tcp", "::1", 10040, "", 0o660)),
        ("localhost:1", ("tcp", "localhost", 1, "", 0o660)),
        ("unix:/run/pfm/p.sock", ("unix", "", 0, "/run/pfm/p.sock", 0o660)),
        ("unix:/run/pfm/p.sock:0666", ("unix", "", 0, "/run/pfm/p.sock", 0o666)),
    ],
)
def test_parse_listen(spec: str, expect: tuple[object, ...]) -> None:
    """Listen specs parse into kind, host, port, path and mode."""
    a = parse_listen(spec)
    assert (a.kind, a.host, a.port, a.path, a.mode) == expect


@pytest.mark.parametrize("bad", ["10040", ":10040", "host:port", "[::1]10040", "1.2.3.4:99999"])
def test_parse_listen_rejects(bad: str) -> None:
    """Malformed listen specs raise ValueError with the spec in the message."""
    with pytest.raises(ValueError, match="listen address|port"):
        parse_listen(bad)


async def test_tcp_and_unix_echo(tmp_path: Path) -> None:
    """Both TCP and unix listeners serve; the unix socket gets its mode."""
    path = str(tmp_path / "s.sock")
    srv = NetServer(["127.0.0.1:0", f"unix:{path}:0600"], Echo)
    await srv.start()
    try:
        host, port = srv.addresses[0].rsplit(":", 1)
        r, w = await asyncio.open_connection(host, int(port))
        w.write(b"hi\n")
        assert await r.readline() == b"hi\n"
        r2, w2 = await asyncio.open_unix_connection(path)
        w2.write(b"yo\n")
        assert await r2.readline() == b"yo\n"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert srv.connection_count == 2
        w.close()
        w2.close()
    finally:
        await srv.close()
    assert not os.path.exists(path)


async def test_max_connections_calls_reject_hook() -> None:
    """Past max_connections the reject hook answers and the connection is closed."""
    rejected: list[bool] = []

    def on_reject(t: asyncio.BaseTransport) -> None:
        rejected.append(True)
        t.write(b"busy\n")  # type: ignore[attr-defined]

    srv = NetServer(["127.0.0.1:0"], Echo, max_connections=1, on_reject=on_reject)
    await srv.start()
    try:
        host, port = srv.addresses[0].rsplit(":", 1)
        _, w1 = await asyncio.open_connection(host, int(port))
        await asyncio.sleep(0.05)
        r2, w2 = await asyncio.open_connection(host, int(port))
        assert await asyncio.wait_for(r2.read(), 5) == b"busy\n"
        assert rejected == [True] and srv.rejected == 1
        w1.close()
        w2.close()
    finally:
        await srv.close()


async def test_idle_connections_closed() -> None:
    """A connection idle past idle_timeout is closed by the sweep."""
    srv = NetServer(["127.0.0.1:0"], Echo, idle_timeout=0.2)
    await srv.start()
    try:
        host, port = srv.addresses[0].rsplit(":", 1)
        r, w = await asyncio.open_connection(host, int(port))
        assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()
    finally:
        await srv.close()


async def test_drain_waits_for_busy_connection() -> None:
    """drain() lets a busy connection finish its answer before closing it."""
    srv = NetServer(["127.0.0.1:0"], Echo)
    await srv.start()
    host, port = srv.addresses[0].rsplit(":", 1)
    r, w = await asyncio.open_connection(host, int(port))
    w.write(b"slow\n")
    await asyncio.sleep(0.05)
    await srv.drain(5.0)
    assert await asyncio.wait_for(r.read(), 5) == b"done\n"
    w.close()


async def test_address_in_use_is_clear() -> None:
    """Binding a port in use raises OSError naming the address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        srv = NetServer([f"127.0.0.1:{port}"], Echo)
        with pytest.raises(OSError, match="address already in use"):
            await srv.start()


def test_prepare_unix_path_keeps_live_and_non_sockets(tmp_path: Path) -> None:
    """A stale socket is removed, a live one refused, a regular file never touched."""
    regular = tmp_path / "file"
    regular.write_text("x")
    prepare_unix_path(str(regular))
    assert regular.exists()
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    prepare_unix_path(str(stale))
    assert not stale.exists()
    live = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(str(live))
        srv.listen()
        with pytest.raises(OSError):
            prepare_unix_path(str(live))
