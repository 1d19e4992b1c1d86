"""Redis client factory: timeouts on connect and command, a short bounded retry, secrets from files."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .config import read_secret_file


def redact_url(url: str) -> str:
    """A Redis URL with any password replaced by ``***``."""
    return re.sub(r"(://[^:@/]*:)[^@/]*@", r"\1***@", re.sub(r"(://)([^:@/]+)@", r"\1***@", url))


def create_redis(
    url: str,
    *,
    connect_timeout: float = 0.5,
    command_timeout: float = 0.5,
    password_file: str | None = None,
    sentinel_master: str | None = None,
    sentinels: Sequence[str] = (),
    cluster: bool = False,
) -> Any:
    """A ``redis.asyncio`` client (or Sentinel master / Cluster client) that never hangs."""
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    password = read_secret_file(password_file) if password_file else None
    common: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": command_timeout,
        "retry": Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": 30,
    }
    if password:
        common["password"] = password
    if cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(url, **common)
    if sentinel_master:
        from redis.asyncio.sentinel import Sentinel

        hosts = []
        for s in sentinels:
            host, _, port = s.rpartition(":")
            hosts.append((host.strip("[]"), int(port)))
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            hosts, socket_timeout=command_timeout, socket_connect_timeout=connect_timeout
        )
        return sentinel.master_for(sentinel_master, **common)
    return Redis.from_url(url, **common)
