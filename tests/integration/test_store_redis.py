"""Redis store specifics: key TTLs, hash tags, outage errors and recovery."""

from __future__ import annotations

import time

import pytest
import redis

from policy.store import Charge, Counter, StoreError, open_store
from tests.integration.redis_server import RedisServer

C = Counter("lim|alice@example.org|3600", 3600.0, 5)


async def test_every_key_has_a_ttl_and_a_hash_tag(redis_server: RedisServer) -> None:
    """All keys written carry a TTL and share the counter's hash tag."""
    s = open_store("redis", url=redis_server.url, prefix="ttl")
    await s.reserve([Charge(C, 1, "r:a")], 600)
    await s.commit([Charge(C, 1, "c:b")], [])
    await s.set_exemption("bob@example.org", 60)
    r = redis.Redis.from_url(redis_server.url)
    keys = r.keys("ttl:*")
    assert len(keys) == 4
    for k in keys:
        ttl = r.pttl(k)
        assert ttl > 0, k
        if b":rl:" in k:
            assert b"{lim|alice@example.org|3600}" in k
            assert ttl <= (3600 + 600 + 60) * 1000
    r.close()
    await s.aclose()


async def test_expired_counters_leave_no_keys(redis_server: RedisServer) -> None:
    """A counter whose entries all left the window is deleted, not kept empty."""
    now = [1000.0]
    s = open_store("redis", url=redis_server.url, prefix="gone", clock=lambda: now[0])
    c = Counter("x|y|10", 10.0, 5)
    await s.commit([Charge(c, 1, "a")], [])
    now[0] += 11
    assert await s.usage([c]) == [(0, 0)]
    r = redis.Redis.from_url(redis_server.url)
    assert r.keys("gone:*") == []
    r.close()
    await s.aclose()


async def test_outage_raises_quickly_and_recovers(own_redis: RedisServer) -> None:
    """With redis-server stopped calls fail fast with StoreError; after restart the same store works."""
    s = open_store(
        "redis", url=own_redis.url, prefix="out", command_timeout=0.3, connect_timeout=0.3
    )
    await s.reserve([Charge(C, 1, "r:1")], 600)
    own_redis.stop()
    t0 = time.monotonic()
    with pytest.raises(StoreError) as info:
        await s.reserve([Charge(C, 1, "r:2")], 600)
    assert time.monotonic() - t0 < 2.0
    assert "redis" in str(info.value)
    own_redis.start()
    for _ in range(50):
        try:
            outs = await s.reserve([Charge(C, 1, "r:3")], 600)
            break
        except StoreError:
            time.sleep(0.05)
    assert outs[0].allowed and outs[0].used == 0  # state was lost: lenient, never stricter
    await s.aclose()


async def test_unreachable_at_start_is_a_store_error() -> None:
    """A store pointed at a closed port raises StoreError, not a raw socket error."""
    from tests.conftest import free_port

    s = open_store(
        "redis", url=f"redis://127.0.0.1:{free_port()}/0", command_timeout=0.2, connect_timeout=0.2
    )
    with pytest.raises(StoreError):
        await s.ping()
    await s.aclose()
