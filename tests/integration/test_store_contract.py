"""One contract, two backends: the memory and Redis stores behave identically."""

from __future__ import annotations

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
