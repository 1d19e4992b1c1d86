"""The shared network server: addresses, limits, idle sweep, graceful drain, unix sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import pytest

from services.netserver import Connection, NetServer, parse_listen, prepare_unix_path
from tests.conftest import free_port


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


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("10040", "listen address"),
        (":10040", "listen address"),
        ("host:port", "port"),
        ("[::1]10040", "listen address"),
        ("1.2.3.4:99999", "port"),
        ("::1:10040", "brackets"),
        ("", "listen address"),
        ("unix:relative.sock", "absolute"),
        ("unix:", "absolute"),
        ("unix:/run/p.sock:0999", "socket mode"),
        ("unix:/run/p.sock:66", "socket mode"),
        ("unix:/" + "x" * 120, "longer than"),
    ],
)
def test_parse_listen_rejects(bad: str, why: str) -> None:
    """Malformed listen specs raise ValueError with the spec and the reason in the message."""
    with pytest.raises(ValueError, match=why) as err:
        parse_listen(bad)
    assert repr(bad) in str(err.value)


def test_listen_address_str_round_trips() -> None:
    """str() of a parsed address is a valid spec naming the same address (used in errors)."""
    for spec in ("127.0.0.1:10040", "[::1]:10040", "unix:/run/pfm/p.sock"):
        assert str(parse_listen(spec)) == spec


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
    with pytest.raises(OSError, match="not a socket"):
        prepare_unix_path(str(regular))
    assert regular.read_text() == "x"
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


async def test_drain_closes_idle_connections_at_once() -> None:
    """drain() closes connections with no request in flight without waiting for the grace time."""
    srv = NetServer(["127.0.0.1:0"], Echo)
    await srv.start()
    host, port = srv.addresses[0].rsplit(":", 1)
    r, w = await asyncio.open_connection(host, int(port))
    w.write(b"hi\n")
    assert await r.readline() == b"hi\n"
    loop = asyncio.get_running_loop()
    began = loop.time()
    await srv.drain(30.0)
    assert loop.time() - began < 2.0
    assert await asyncio.wait_for(r.read(), 5) == b""
    assert srv.connection_count == 0
    w.close()


async def test_drain_gives_up_after_grace() -> None:
    """A connection still busy when the grace time ends is closed anyway."""

    class Stuck(Connection):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self.busy = True  # never answers

    srv = NetServer(["127.0.0.1:0"], Stuck)
    await srv.start()
    host, port = srv.addresses[0].rsplit(":", 1)
    r, w = await asyncio.open_connection(host, int(port))
    w.write(b"x")
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await srv.drain(0.3)
    assert 0.25 <= loop.time() - began < 3.0
    assert await asyncio.wait_for(r.read(), 5) == b""
    w.close()


async def test_over_limit_without_hook_is_closed_and_counted() -> None:
    """Without on_reject, a connection over max_connections is closed at once and counted."""
    srv = NetServer(["127.0.0.1:0"], Echo, max_connections=2)
    await srv.start()
    try:
        host, port = srv.addresses[0].rsplit(":", 1)
        keep = [await asyncio.open_connection(host, int(port)) for _ in range(2)]
        await asyncio.sleep(0.05)
        r, w = await asyncio.open_connection(host, int(port))
        assert await asyncio.wait_for(r.read(), 5) == b""
        assert srv.rejected == 1 and srv.connection_count == 2
        keep[0][1].close()
        await asyncio.sleep(0.1)
        r2, w2 = await asyncio.open_connection(host, int(port))
        w2.write(b"back\n")
        assert await asyncio.wait_for(r2.readline(), 5) == b"back\n"
        for _, kw in keep:
            kw.close()
        w.close()
        w2.close()
    finally:
        await srv.close()


async def test_busy_connection_is_not_idle_closed() -> None:
    """The idle sweep spares a connection whose request is still in flight."""

    class Slow(Connection):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self.busy = True

            def done() -> None:
                self.busy = False
                if self.transport is not None:
                    self.transport.write(b"late\n")

            asyncio.get_running_loop().call_later(0.5, done)

    srv = NetServer(["127.0.0.1:0"], Slow, idle_timeout=0.1)
    await srv.start()
    try:
        host, port = srv.addresses[0].rsplit(":", 1)
        r, w = await asyncio.open_connection(host, int(port))
        w.write(b"q")
        assert await asyncio.wait_for(r.readline(), 5) == b"late\n"
        assert await asyncio.wait_for(r.read(), 5) == b""  # idle afterwards: closed
        assert srv.idle_closed == 1
        w.close()
    finally:
        await srv.close()


async def test_start_replaces_stale_socket_and_refuses_regular_file(tmp_path: Path) -> None:
    """A stale socket file is replaced; a regular file at the path is a clear startup error."""
    stale = tmp_path / "run" / "stale.sock"
    stale.parent.mkdir()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    srv = NetServer([f"unix:{stale}"], Echo)
    await srv.start()
    try:
        r, w = await asyncio.open_unix_connection(str(stale))
        w.write(b"ok\n")
        assert await r.readline() == b"ok\n"
        assert stat.S_IMODE(os.stat(stale).st_mode) == 0o660
        w.close()
    finally:
        await srv.close()
    regular = tmp_path / "regular"
    regular.write_text("data")
    srv2 = NetServer([f"unix:{regular}"], Echo)
    with pytest.raises(
        OSError, match=f"cannot listen on unix:{regular}: exists and is not a socket"
    ):
        await srv2.start()
    assert regular.read_text() == "data"


async def test_live_unix_socket_is_address_in_use(tmp_path: Path) -> None:
    """A unix socket another server listens on is never stolen: 'address already in use'."""
    path = str(tmp_path / "live.sock")
    first = NetServer([f"unix:{path}"], Echo)
    await first.start()
    try:
        second = NetServer([f"unix:{path}"], Echo)
        with pytest.raises(OSError, match="address already in use"):
            await second.start()
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"still\n")
        assert await r.readline() == b"still\n"
        w.close()
    finally:
        await first.close()


async def test_close_leaves_a_successors_socket(tmp_path: Path) -> None:
    """close() removes its own socket file but not one a successor bound at the same path."""
    path = tmp_path / "s.sock"
    srv = NetServer([f"unix:{path}"], Echo)
    await srv.start()
    path.unlink()
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))
        await srv.close()
        assert path.exists()


async def test_failed_bind_releases_earlier_listeners() -> None:
    """When a later address fails to bind, the ones already bound are released."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        free = free_port()
        srv = NetServer([f"127.0.0.1:{free}", f"127.0.0.1:{port}"], Echo)
        with pytest.raises(OSError, match=f"127.0.0.1:{port}: address already in use"):
            await srv.start()
        with socket.socket() as again:
            again.bind(("127.0.0.1", free))  # released
