"""Fixtures for integration tests: a private redis-server per session."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_binary
from tests.integration.redis_server import RedisCluster, RedisServer


@pytest.fixture(scope="session")
def redis_server_session() -> Iterator[RedisServer]:
    """One private redis-server for the whole run."""
    binary = require_binary("redis-server")
    with tempfile.TemporaryDirectory(prefix="pfm-redis-") as d:
        server = RedisServer(binary, Path(d))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def redis_server(redis_server_session: RedisServer) -> RedisServer:
    """The private redis-server, running and empty."""
    if redis_server_session.pid is None:
        redis_server_session.start()
    redis_server_session.flush()
    return redis_server_session


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, free to be stopped and restarted."""
    server = RedisServer(require_binary("redis-server"), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A private 3-node Redis Cluster for the whole run."""
    binary = require_binary("redis-server")
    require_binary("redis-cli")
    with tempfile.TemporaryDirectory(prefix="pfm-cluster-") as d:
        cluster = RedisCluster(binary, Path(d))
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()
