"""One contract, two backends: the memory and Redis stores behave identically."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator

import pytest

from policy.store import Charge, Counter, Store, open_store
from tests.integration.redis_server import RedisServer


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def store(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[Store]:
    """Each contract test runs against every backend: memory, Redis and Redis Cluster."""
    if request.param == "memory":
        s = open_store("memory", clock=clock)
    elif request.param == "redis-cluster":
        from redis.asyncio.cluster import RedisCluster as Client

        cluster = request.getfixturevalue("redis_cluster")
        client = Client.from_url(cluster.url, socket_timeout=1, socket_connect_timeout=1)
        s = open_store(
            "redis",
            url=cluster.url,
            client=client,
            cluster=True,
            fast=False,
            prefix=f"t{uuid.uuid4().hex[:8]}",
            clock=clock,
        )
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        s = open_store("redis", url=server.url, prefix=f"t{uuid.uuid4().hex[:8]}", clock=clock)
    yield s
    await s.aclose()


C = Counter("lim|alice|60", 60.0, 3)
D = Counter("other|alice|3600", 3600.0, 10)


async def test_allows_up_to_limit_then_refuses(store: Store) -> None:
    """Three charges fit a limit of three; the fourth is refused and not added."""
    for i in range(3):
        (out,) = await store.reserve([Charge(C, 1, f"m{i}")], 600)
        assert out.allowed and out.used == i
    (out,) = await store.reserve([Charge(C, 1, "m3")], 600)
    assert not out.allowed and out.used == 3
    assert await store.usage([C]) == [(0, 3)]


async def test_window_slides_exactly(store: Store, clock: Clock) -> None:
    """An entry counts until exactly `window` seconds have passed, not a moment less."""
    await store.commit([Charge(C, 3, "a")], [])
    clock.advance(59.999)
    (out,) = await store.commit([Charge(C, 1, "b")], [])
    assert not out.allowed and out.used == 3
    clock.advance(0.001)
    (out,) = await store.commit([Charge(C, 1, "b")], [])
    assert out.allowed and out.used == 0


async def test_reserve_is_all_or_nothing(store: Store) -> None:
    """When one enforce charge is refused, no charge of the batch is added."""
    await store.commit([Charge(C, 3, "full")], [])
    outs = await store.reserve([Charge(D, 1, "x"), Charge(C, 1, "x")], 600)
    assert [o.allowed for o in outs] == [True, False]
    assert await store.usage([D, C]) == [(0, 0), (3, 0)]


async def test_shadow_charges_never_block(store: Store) -> None:
    """A refused non-enforce charge is reported but the batch is still added."""
    await store.commit([Charge(C, 3, "full")], [])
    outs = await store.reserve([Charge(D, 1, "x"), Charge(C, 1, "x", enforce=False)], 600)
    assert [o.allowed for o in outs] == [True, False]
    assert await store.usage([D, C]) == [(0, 1), (3, 1)]


async def test_members_are_idempotent(store: Store) -> None:
    """Reserving the same member twice adds it once and counts as allowed."""
    await store.reserve([Charge(C, 1, "same")], 600)
    await store.commit([Charge(C, 2, "two")], [])
    (out,) = await store.reserve([Charge(C, 1, "same")], 600)
    assert out.allowed
    assert await store.usage([C]) == [(2, 1)]


async def test_pending_expires_after_ttl(store: Store, clock: Clock) -> None:
    """A reservation neither committed nor released disappears after its TTL."""
    await store.reserve([Charge(D, 4, "p")], 30)
    clock.advance(29)
    assert await store.usage([D]) == [(0, 4)]
    clock.advance(1.5)
    assert await store.usage([D]) == [(0, 0)]


async def test_commit_releases_then_adds(store: Store) -> None:
    """Commit turns a reservation into a committed entry of the final weight."""
    await store.reserve([Charge(D, 1, "r:t1/a"), Charge(D, 1, "r:t1/b")], 600)
    outs = await store.commit([Charge(D, 2, "c:t1", enforce=False)], [(D, "r:t1/a"), (D, "r:t1/b")])
    assert outs[0].allowed and outs[0].used == 0
    assert await store.usage([D]) == [(2, 0)]


async def test_refused_commit_still_releases(store: Store) -> None:
    """A commit over the limit adds nothing but its releases still happen."""
    await store.commit([Charge(D, 9, "old")], [])
    await store.reserve([Charge(D, 1, "r:t")], 600)
    (out,) = await store.commit([Charge(D, 5, "c:t")], [(D, "r:t")])
    assert not out.allowed and out.used == 9
    assert await store.usage([D]) == [(9, 0)]


async def test_release_ignores_missing(store: Store) -> None:
    """Releasing unknown members or counters is harmless."""
    await store.release([(C, "nope"), (Counter("nothing|x|5", 5.0, 1), "y")])
    await store.reserve([Charge(C, 1, "r")], 600)
    await store.release([(C, "r")])
    assert await store.usage([C]) == [(0, 0)]


async def test_zero_weight_and_zero_limit(store: Store) -> None:
    """Weight 0 always fits; limit 0 refuses any positive weight."""
    z = Counter("zero|x|60", 60.0, 0)
    outs = await store.reserve([Charge(z, 0, "a")], 600)
    assert outs[0].allowed
    outs = await store.reserve([Charge(z, 1, "b")], 600)
    assert not outs[0].allowed


async def test_two_members_same_counter_in_one_batch(store: Store) -> None:
    """Two charges on one counter in one batch see each other's weight."""
    outs = await store.reserve([Charge(C, 2, "a"), Charge(C, 2, "b")], 600)
    assert [o.allowed for o in outs] == [True, False]
    assert await store.usage([C]) == [(0, 0)]


async def test_reset_forgets(store: Store) -> None:
    """reset() empties counters."""
    await store.commit([Charge(C, 3, "a")], [])
    await store.reset([C])
    assert await store.usage([C]) == [(0, 0)]


async def test_exemptions_expire(store: Store, clock: Clock) -> None:
    """Exemptions are listed with time left and vanish when expired or removed."""
    await store.set_exemption("alice@example.org", 60)
    await store.set_exemption("bob@example.org", 10)
    ex = await store.exemptions()
    assert ex == {"alice@example.org": 60, "bob@example.org": 10}
    clock.advance(11)
    assert list(await store.exemptions()) == ["alice@example.org"]
    await store.set_exemption("alice@example.org", 0)
    assert await store.exemptions() == {}


async def test_empty_inputs_are_noops(store: Store) -> None:
    """Empty batches return empty results."""
    assert await store.reserve([], 600) == []
    assert await store.commit([], []) == []
    assert await store.usage([]) == []
    await store.release([])
    await store.ping()


async def test_release_removes_committed_members(store: Store) -> None:
    """A committed member can be taken back (a message Postfix rejected after END-OF-MESSAGE)."""
    await store.commit([Charge(C, 2, "c:t1"), Charge(D, 1, "c:t1")], [])
    await store.release([(C, "c:t1"), (D, "c:t1")])
    assert await store.usage([C, D]) == [(0, 0), (0, 0)]


async def test_same_member_twice_in_one_batch(store: Store) -> None:
    """A member repeated inside one batch counts once, and the repeat is allowed."""
    outs = await store.reserve([Charge(C, 2, "m"), Charge(C, 3, "m"), Charge(C, 1, "n")], 600)
    assert [o.allowed for o in outs] == [True, True, True]
    assert [o.used for o in outs] == [0, 2, 2]
    assert await store.usage([C]) == [(0, 3)]


async def test_pending_counts_toward_used(store: Store) -> None:
    """Open reservations count, so concurrent transactions cannot overshoot the limit."""
    await store.reserve([Charge(C, 2, "r:t1")], 600)
    (out,) = await store.reserve([Charge(C, 2, "r:t2")], 600)
    assert not out.allowed and out.used == 2
    (out,) = await store.reserve([Charge(C, 1, "r:t2")], 600)
    assert out.allowed and out.used == 2


async def test_refused_batch_leaves_no_trace(store: Store) -> None:
    """A refused batch adds nothing anywhere: usage is unchanged on every counter."""
    outs = await store.reserve([Charge(D, 1, "x"), Charge(C, 4, "x")], 600)
    assert [o.allowed for o in outs] == [True, False]
    assert await store.usage([D, C]) == [(0, 0), (0, 0)]
    (out,) = await store.reserve([Charge(C, 3, "x")], 600)
    assert out.allowed and out.used == 0


async def test_shadow_charge_counts_for_later_charges(store: Store) -> None:
    """A refused shadow charge is added with its batch, so later charges of the batch see it."""
    outs = await store.commit([Charge(C, 5, "s", enforce=False), Charge(C, 1, "e")], [])
    assert [(o.used, o.allowed) for o in outs] == [(0, False), (5, False)]
    assert await store.usage([C]) == [(0, 0)]
    outs = await store.commit([Charge(C, 5, "s", enforce=False), Charge(D, 1, "e")], [])
    assert [o.allowed for o in outs] == [False, True]
    assert await store.usage([C, D]) == [(5, 0), (1, 0)]


async def test_committed_member_is_idempotent(store: Store) -> None:
    """Committing a member twice (a retried END-OF-MESSAGE) counts it once."""
    await store.commit([Charge(D, 4, "c:t1")], [])
    (out,) = await store.commit([Charge(D, 4, "c:t1")], [])
    assert out.allowed and out.used == 4
    assert await store.usage([D]) == [(4, 0)]


async def test_byte_weights(store: Store) -> None:
    """Large weights (byte counts) add up exactly against a large limit."""
    b = Counter("bytes|alice", 3600.0, 50_000_000)
    (out,) = await store.commit([Charge(b, 30_000_000, "c:1")], [])
    assert out.allowed
    (out,) = await store.commit([Charge(b, 20_000_001, "c:2")], [])
    assert not out.allowed and out.used == 30_000_000
    (out,) = await store.commit([Charge(b, 20_000_000, "c:3")], [])
    assert out.allowed and out.used == 30_000_000


async def test_pending_never_outlives_window(store: Store, clock: Clock) -> None:
    """A reservation with a ttl longer than the window still leaves with the window."""
    await store.reserve([Charge(C, 3, "r:long")], 3600)
    clock.advance(59.9)
    assert await store.usage([C]) == [(0, 3)]
    clock.advance(0.1)
    assert await store.usage([C]) == [(0, 0)]


async def test_windows_are_separate_counters(store: Store, clock: Clock) -> None:
    """The same key with two windows keeps two independent logs."""
    short = Counter("k|alice", 10.0, 1)
    long = Counter("k|alice", 100.0, 2)
    outs = await store.commit([Charge(short, 1, "a"), Charge(long, 1, "a")], [])
    assert all(o.allowed for o in outs)
    clock.advance(10)
    outs = await store.commit([Charge(short, 1, "b"), Charge(long, 1, "b")], [])
    assert [(o.used, o.allowed) for o in outs] == [(0, True), (1, True)]
    outs = await store.commit([Charge(short, 1, "c"), Charge(long, 1, "c")], [])
    assert [(o.used, o.allowed) for o in outs] == [(1, False), (2, False)]


async def test_random_sequences_match_the_memory_store(store: Store, clock: Clock) -> None:
    """A seeded random mix of operations gives the same outcomes as the memory store."""
    rng = random.Random(7)
    ref_clock = Clock(clock.t)
    ref = open_store("memory", clock=ref_clock)
    counters = [Counter("rnd|a", 5.0, 4), Counter("rnd|b", 20.0, 7), Counter("rnd|a", 8.0, 3)]
    for step in range(300):
        kind = rng.choice(["reserve", "reserve", "commit", "release", "advance", "usage"])
        if kind == "advance":
            dt = rng.choice([0.5, 1.0, 2.5, 4.0])
            clock.advance(dt)
            ref_clock.advance(dt)
            continue
        if kind == "usage":
            assert await store.usage(counters) == await ref.usage(counters), step
            continue
        pairs = [(rng.choice(counters), f"m{rng.randrange(8)}") for _ in range(rng.randint(1, 3))]
        if kind == "release":
            await store.release(pairs)
            await ref.release(pairs)
            continue
        charges = [Charge(c, rng.randint(0, 3), m, rng.random() < 0.8) for c, m in pairs]
        if kind == "reserve":
            ttl = rng.choice([3.0, 6.0])
            got, want = await store.reserve(charges, ttl), await ref.reserve(charges, ttl)
        else:
            rel = [(rng.choice(counters), f"m{rng.randrange(8)}")]
            got, want = await store.commit(charges, rel), await ref.commit(charges, rel)
        assert got == want, (step, kind, charges)
