"""Redis store specifics: key layout and TTLs, outage errors and recovery, secrets kept out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from policy.store import Charge, Counter, StoreError, open_store
from policy.store_redis import RedisStore
from tests.conftest import free_port
from tests.integration.redis_server import RedisServer

pytestmark = pytest.mark.integration

C = Counter("lim|alice@example.org", 3600.0, 5)


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain synchronous client on the private server, to look at the keys."""
    r = redis.Redis.from_url(redis_server.url)
    yield r
    r.close()


@pytest.fixture
def now() -> list[float]:
    """The injected time: tests move it by changing now[0]."""
    return [1_700_000_000.0]


@pytest.fixture
async def store(redis_server: RedisServer, now: list[float]) -> AsyncIterator[RedisStore]:
    """A RedisStore on the private server, reading the injected time."""
    s = RedisStore(redis_server.url, prefix="t", clock=lambda: now[0])
    yield s
    await s.aclose()


async def test_every_key_has_a_ttl_and_a_hash_tag(store: RedisStore, raw: redis.Redis) -> None:
    """Every key written carries a TTL of at most window + 60 s and the counter's hash tag."""
    await store.reserve([Charge(C, 1, "r:a")], 600)
    await store.commit([Charge(C, 1, "c:b")], [])
    await store.set_exemption("bob@example.org", 60)
    keys = sorted(raw.keys("t:*"))
    base = b"t:rl:{lim|alice@example.org}:3600"
    assert keys == [b"t:ex", base + b":l", base + b":s", base + b":w"]
    for k in keys:
        ttl = raw.pttl(k)
        assert 0 < ttl <= (3600 + 60) * 1000, k


async def test_every_operation_leaves_ttls(
    store: RedisStore, raw: redis.Redis, now: list[float]
) -> None:
    """After usage, release, commit-with-release and expiry no key is left without a TTL."""
    d = Counter("d|x", 10.0, 100)
    await store.reserve([Charge(d, 1, f"r:{i}") for i in range(5)], 600)
    now[0] += 5
    await store.commit([Charge(d, 2, "c:1")], [(d, "r:0"), (d, "r:1")])
    await store.release([(d, "r:2")])
    now[0] += 6
    assert await store.usage([d]) == [(2, 0)]
    keys = raw.keys("t:*")
    assert keys
    assert all(raw.pttl(k) > 0 for k in keys)


async def test_zero_sum_with_entries_keeps_ttls(store: RedisStore, raw: redis.Redis) -> None:
    """A counter whose total drops to 0 while weight-0 entries remain keeps a TTL on every key."""
    d = Counter("z|x", 60.0, 5)
    await store.commit([Charge(d, 0, "zero"), Charge(d, 2, "two")], [])
    await store.release([(d, "two")])
    assert await store.usage([d]) == [(0, 0)]
    keys = raw.keys("t:*")
    assert len(keys) == 3
    assert all(raw.pttl(k) > 0 for k in keys)


async def test_lost_sum_key_is_repaired(store: RedisStore, raw: redis.Redis) -> None:
    """If the sum key vanished (eviction), totals never go negative and keys keep TTLs."""
    await store.commit([Charge(C, 2, "a"), Charge(C, 1, "b")], [])
    (s_key,) = raw.keys("t:*:s")
    raw.delete(s_key)
    await store.release([(C, "a")])
    assert await store.usage([C]) == [(0, 0)]  # lenient after state loss, never negative
    (out,) = await store.commit([Charge(C, 5, "c")], [])
    assert out.allowed
    assert all(raw.pttl(k) > 0 for k in raw.keys("t:*"))


async def test_expired_counters_leave_no_keys(
    store: RedisStore, raw: redis.Redis, now: list[float]
) -> None:
    """A counter whose entries all left the window is deleted, not kept empty."""
    c = Counter("x|y", 10.0, 5)
    await store.commit([Charge(c, 1, "a")], [])
    now[0] += 10
    assert await store.usage([c]) == [(0, 0)]
    assert raw.keys("t:*") == []


async def test_released_counters_leave_no_keys(store: RedisStore, raw: redis.Redis) -> None:
    """Releasing the last reservation of a counter deletes its keys."""
    await store.reserve([Charge(C, 1, "r:a")], 600)
    await store.release([(C, "r:a")])
    assert raw.keys("t:*") == []


async def test_member_named_like_internal_fields(store: RedisStore) -> None:
    """Members are opaque: odd names (braces, separators, unicode) count like any other."""
    odd = ["~sum", "{x}", "a|b", "", "é\u2603"]
    outs = await store.commit([Charge(C, 1, m) for m in odd], [])
    assert all(o.allowed for o in outs)
    assert await store.usage([C]) == [(5, 0)]


async def test_script_reloaded_after_script_flush(store: RedisStore, raw: redis.Redis) -> None:
    """When Redis forgets the script (restart, SCRIPT FLUSH) it is loaded again transparently."""
    await store.commit([Charge(C, 1, "a")], [])
    raw.script_flush()
    (out,) = await store.commit([Charge(C, 1, "b")], [])
    assert out.allowed and out.used == 1


async def test_outage_raises_quickly_and_recovers(own_redis: RedisServer) -> None:
    """With redis-server stopped calls fail fast with StoreError; after restart the same store works."""
    s = open_store(
        "redis", url=own_redis.url, prefix="out", command_timeout=0.3, connect_timeout=0.3
    )
    try:
        await s.reserve([Charge(C, 1, "r:1")], 600)
        own_redis.stop()
        for call in (
            lambda: s.reserve([Charge(C, 1, "r:2")], 600),
            lambda: s.usage([C]),
            s.exemptions,
            s.ping,
        ):
            t0 = time.monotonic()
            with pytest.raises(StoreError) as info:
                await call()
            assert time.monotonic() - t0 < 1.0
            assert "redis" in str(info.value)
            assert info.value.__cause__ is not None
        own_redis.start()
        outs = None
        for _ in range(50):
            try:
                outs = await s.reserve([Charge(C, 1, "r:3")], 600)
                break
            except StoreError:
                await asyncio.sleep(0.05)
        assert outs is not None
        assert outs[0].allowed and outs[0].used == 0  # state lost: more lenient, never stricter
        await s.ping()
    finally:
        await s.aclose()


async def test_unreachable_at_start_is_a_store_error() -> None:
    """A store pointed at a closed port raises StoreError, not a raw socket error."""
    s = open_store(
        "redis", url=f"redis://127.0.0.1:{free_port()}/0", command_timeout=0.2, connect_timeout=0.2
    )
    try:
        with pytest.raises(StoreError):
            await s.ping()
        with pytest.raises(StoreError):
            await s.reserve([Charge(C, 1, "r")], 600)
    finally:
        await s.aclose()


async def test_error_messages_hide_the_password() -> None:
    """A password in the URL never appears in a StoreError message or its repr."""
    secret = "s3cr3t-pw-123"
    s = open_store(
        "redis",
        url=f"redis://user:{secret}@127.0.0.1:{free_port()}/0",
        command_timeout=0.2,
        connect_timeout=0.2,
    )
    try:
        for call in (s.ping, lambda: s.reserve([Charge(C, 1, "r")], 600)):
            with pytest.raises(StoreError) as info:
                await call()
            assert secret not in str(info.value)
            assert secret not in repr(info.value)
    finally:
        await s.aclose()
