"""The lean RESP client against a real redis-server and against a server that never answers."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.resp import ReplyError, RespClient, RespError
from tests.integration.redis_server import RedisServer


async def test_pipelined_commands_match_their_replies(redis_server: RedisServer) -> None:
    """Hundreds of concurrent commands on one connection each get their own reply."""
    c = RespClient(redis_server.url)
    await asyncio.gather(*(c.execute("SET", f"k{i}", f"v{i}") for i in range(300)))
    values = await asyncio.gather(*(c.execute("GET", f"k{i}") for i in range(300)))
    assert values == [f"v{i}".encode() for i in range(300)]
    await c.aclose()


async def test_error_reply_keeps_connection_usable(redis_server: RedisServer) -> None:
    """An error reply raises ReplyError; the next command on the same client works."""
    c = RespClient(redis_server.url)
    await c.execute("SET", "s", "x")
    with pytest.raises(ReplyError, match="WRONGTYPE"):
        await c.execute("HGET", "s", "f")
    assert await c.execute("GET", "s") == b"x"
    await c.aclose()


async def test_silent_server_times_out_everything_in_flight() -> None:
    """A server that accepts but never answers fails every pending command within the timeout."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    c = RespClient(f"redis://127.0.0.1:{port}/0", command_timeout=0.3)
    t0 = time.monotonic()
    results = await asyncio.gather(*(c.execute("PING") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, RespError) and "timeout" in str(r) for r in results)
    assert time.monotonic() - t0 < 2.0
    await c.aclose()
    server.close()
    await server.wait_closed()


async def test_connection_refused_is_resp_error() -> None:
    """Nothing listening: a clear RespError, no hang."""
    from tests.conftest import free_port

    c = RespClient(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.3)
    with pytest.raises(RespError, match="cannot connect"):
        await c.execute("PING")
    await c.aclose()


async def test_reconnects_after_server_restart(own_redis: RedisServer) -> None:
    """After the server restarts, the same client reconnects on the next command."""
    c = RespClient(own_redis.url, command_timeout=0.5, connect_timeout=0.5)
    assert await c.execute("PING") == b"PONG"
    own_redis.stop()
    with pytest.raises(RespError):
        await c.execute("PING")
    own_redis.start()
    assert await c.execute("PING") == b"PONG"
    await c.aclose()
