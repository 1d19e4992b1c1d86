"""create_redis against a real private redis-server: password file, bounded failures."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from redis.exceptions import AuthenticationError, ConnectionError, TimeoutError

from services.redis import create_redis
from tests.conftest import free_port
from tests.integration.redis_server import RedisServer

pytestmark = pytest.mark.integration


def set_requirepass(server: RedisServer, password: str) -> None:
    with socket.create_connection(("127.0.0.1", server.port), 1) as s:
        s.sendall(f"CONFIG SET requirepass {password}\r\n".encode())
        assert s.recv(16).startswith(b"+OK")


async def test_password_file_authenticates(own_redis: RedisServer, tmp_path: Path) -> None:
    """With requirepass set, the password from the file authenticates; without it Redis refuses."""
    set_requirepass(own_redis, "file-pass-123")
    pw = tmp_path / "redis.pw"
    pw.write_text("file-pass-123\n")
    client = create_redis(own_redis.url, password_file=str(pw))
    try:
        assert await client.ping()
        await client.set("pfm:test", "1")
        assert await client.get("pfm:test") == b"1"
    finally:
        await client.aclose()
    anonymous = create_redis(own_redis.url)
    try:
        with pytest.raises((AuthenticationError, ConnectionError)):
            await anonymous.set("pfm:test", "2")
    finally:
        await anonymous.aclose()


async def test_dead_server_fails_fast() -> None:
    """Nothing listening: the command fails within a second, it never hangs."""
    client = create_redis(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.3)
    began = time.monotonic()
    try:
        with pytest.raises(ConnectionError):
            await client.ping()
    finally:
        await client.aclose()
    assert time.monotonic() - began < 1.0


async def test_unresponsive_server_is_bounded_by_timeouts() -> None:
    """A server that accepts but never answers costs about command_timeout, not more."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)
    port = hung.getsockname()[1]
    client = create_redis(f"redis://127.0.0.1:{port}/0", connect_timeout=0.3, command_timeout=0.3)
    began = time.monotonic()
    try:
        with pytest.raises((TimeoutError, ConnectionError)):
            await client.ping()
    finally:
        await client.aclose()
        hung.close()
    assert time.monotonic() - began < 1.5


async def test_recovers_after_redis_restart(own_redis: RedisServer) -> None:
    """A pooled connection broken by a Redis restart is replaced by the retry: no error surfaces."""
    client = create_redis(own_redis.url)
    try:
        assert await client.ping()
        own_redis.stop()
        own_redis.start()
        await asyncio.sleep(0.05)
        assert await client.ping()
    finally:
        await client.aclose()
