"""pfm-authd state on a private real redis-server: the TOTP and guard scenarios, key layout and
TTLs, use_step atomicity under concurrency, Redis Cluster, and StateError when Redis is down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pyotp
import pytest
import redis

from authd.guard import Guard, GuardConfig
from authd.state import AuthState, Entry, MemoryState, StateError, Window
from authd.state_redis import RedisState
from services.config import RedisConfig
from tests.conftest import free_port
from tests.integration.redis_server import RedisCluster, RedisServer

pytestmark = pytest.mark.integration

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


class FakeClock:
    """A settable clock starting at the real time (Redis TTLs are real)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    """The injected time."""
    return FakeClock()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain synchronous client on the private server, to look at the keys."""
    r = redis.Redis.from_url(redis_server.url)
    yield r
    r.close()


@pytest.fixture(params=["memory", "redis"])
async def state(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[AuthState]:
    """The same scenarios on MemoryState and on RedisState (private redis-server)."""
    if request.param == "memory":
        yield MemoryState(clock=clock)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    s = RedisState.from_config(RedisConfig(url=server.url, prefix="t"), clock=clock)
    yield s
    await s.aclose()


def guard_on(state: AuthState, clock: FakeClock) -> Guard:
    """A guard with default thresholds and no trusted networks."""
    return Guard(state, GuardConfig(trusted_networks=()), key=b"k" * 32, clock=clock)


async def test_totp_single_use_and_drift(state: AuthState, clock: FakeClock) -> None:
    """Codes of steps -1/0/+1 are accepted once each in order; replays and old steps refused."""
    from authd.totp import TotpVerifier

    v = TotpVerifier(state, clock=clock)
    codes = {o: pyotp.TOTP(SECRET).at(int(clock.now) + 30 * o) for o in (-1, 0, 1)}
    assert (await v.verify("alice", SECRET, codes[-1])).drift == -1
    assert (await v.verify("alice", SECRET, codes[-1])).reason == "replayed"
    assert (await v.verify("alice", SECRET, codes[1])).ok
    assert await v.drift("alice") == 1
    assert (await v.verify("alice", SECRET, codes[0])).reason == "replayed"  # older than +1
    assert (await v.verify("bob", SECRET, codes[0])).ok


async def test_concurrent_use_step_exactly_one_wins(state: AuthState) -> None:
    """Many concurrent uses of one step (a replay race across hosts): exactly one succeeds."""
    results = await asyncio.gather(*(state.use_step("alice", 1000, 0, 60) for _ in range(200)))
    assert results.count(True) == 1


async def test_concurrent_verifies_of_one_code(state: AuthState, clock: FakeClock) -> None:
    """Fifty concurrent logins with the same valid code: one ok, the rest replayed."""
    from authd.totp import TotpVerifier

    v = TotpVerifier(state, clock=clock)
    code = pyotp.TOTP(SECRET).at(int(clock.now))
    results = await asyncio.gather(*(v.verify("alice", SECRET, code) for _ in range(50)))
    assert sorted(r.reason for r in results) == ["ok"] + ["replayed"] * 49


async def test_distinct_counting_and_spraying(state: AuthState, clock: FakeClock) -> None:
    """One stale password counts once; one password over ten logins blocks the IP."""
    guard = guard_on(state, clock)
    for _ in range(20):
        v = await guard.record_failure("192.0.2.1", "alice@example.org", "stale")
        assert v.action == "tarpit" and v.delay == 0.5
    for i in range(9):
        assert not (await guard.record_failure("192.0.2.2", f"u{i}@x.org", "Summer")).blocked
    v = await guard.record_failure("192.0.2.2", "u9@x.org", "Summer")
    assert v.blocked and v.reason == "ip_failures"


async def test_tarpit_grows_and_blocks_expire(state: AuthState, clock: FakeClock) -> None:
    """Delays double to the cap, the 10th distinct failure blocks, the block lapses in time."""
    guard = guard_on(state, clock)
    delays = [(await guard.record_failure("192.0.2.1", f"u{i}@x.org", "p")).delay for i in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert (await guard.check("192.0.2.1", "new@x.org")).delay == 8.0
    for i in range(6, 10):
        v = await guard.record_failure("192.0.2.1", f"u{i}@x.org", "p")
    assert v.blocked
    clock.now += 899
    assert (await guard.check("192.0.2.1", "new@x.org")).blocked
    clock.now += 2
    assert (await guard.check("192.0.2.1", "new@x.org")).action == "allow"


async def test_success_clears_pair_not_ip(state: AuthState, clock: FakeClock) -> None:
    """record_success empties the IP+login window and leaves the IP window."""
    guard = guard_on(state, clock)
    for pw in "ab":
        await guard.record_failure("192.0.2.1", "alice@example.org", pw)
    await guard.record_success("192.0.2.1", "alice@example.org")
    counts = await state.failure_counts(
        [Window("pair:alice@example.org|192.0.2.1", 300), Window("ip:192.0.2.1", 600)]
    )
    assert counts == [0, 2]


async def test_known_device_survives_login_lockout(state: AuthState, clock: FakeClock) -> None:
    """After a success from an IP, a login block caused elsewhere does not lock that device out."""
    guard = guard_on(state, clock)
    await guard.record_success("192.0.2.1", "alice@example.org")
    for i in range(5):
        v = await guard.record_failure(f"10.{i}.0.1", "alice@example.org", f"g{i}")
    assert v.blocked and v.reason == "login_failures"
    assert (await guard.check("203.0.113.9", "alice@example.org")).blocked
    assert not (await guard.check("192.0.2.1", "alice@example.org")).blocked
    assert [e.reason for e in await guard.blocks(known_devices=True)].count("known_device") == 1


async def test_admin_lists(state: AuthState, clock: FakeClock) -> None:
    """block/allow/unblock/blocks round-trip through the store and expire."""
    guard = guard_on(state, clock)
    await guard.block("alice@example.org", 60, reason="admin")
    await guard.block("198.51.100.0/24", 120, reason="abuse report")
    await guard.allow("2001:db8::1", 30)
    listed = await guard.blocks()
    assert [(e.key, e.action, e.reason) for e in listed] == [
        ("2001:db8::1", "allow", "admin"),
        ("alice@example.org", "block", "admin"),
        ("198.51.100.0/24", "block", "abuse report"),
    ]
    assert (await guard.check("198.51.100.9", "bob@x.org")).reason == "abuse report"
    assert (await guard.check("2001:db8::1", "alice@example.org")).reason == "allowlisted"
    assert await guard.unblock("alice@example.org")
    clock.now += 121
    assert await guard.blocks() == []


async def test_prefix_window_ipv6(state: AuthState, clock: FakeClock) -> None:
    """Thirty distinct failures inside one IPv6 /64 block the /64."""
    guard = guard_on(state, clock)
    for i in range(1, 31):
        v = await guard.record_failure(f"2001:db8:1:2::{i:x}", f"u{i}@x.org", "p")
    assert v.blocked and v.reason == "prefix_failures"
    assert (await guard.check("2001:db8:1:2:aaaa::1", "z@x.org")).blocked


# -- Redis specifics ---------------------------------------------------------------------------


async def test_keys_have_ttls_hash_tags_and_no_passwords(
    redis_server: RedisServer, raw: redis.Redis, clock: FakeClock
) -> None:
    """Every key is namespaced P:authd:*, hash-tagged per subject, expiring, password-free."""
    s = RedisState(redis_server.url, prefix="t", clock=clock)
    try:
        guard = guard_on(s, clock)
        from authd.totp import TotpVerifier

        await TotpVerifier(s, clock=clock).verify("alice", SECRET, pyotp.TOTP(SECRET).now())
        for pw in ("Hunter2-secret", "b", "c"):
            await guard.record_failure("192.0.2.1", "alice@example.org", pw)
        keys = sorted(k.decode() if isinstance(k, bytes) else k for k in raw.keys("*"))
        assert keys == [
            "t:authd:acl:{pair:alice@example.org|192.0.2.1}",
            "t:authd:fail:{ip:192.0.2.1}",
            "t:authd:fail:{login:alice@example.org}",
            "t:authd:fail:{net:192.0.2.0/24}",
            "t:authd:fail:{pair:alice@example.org|192.0.2.1}",
            "t:authd:totp:{alice}",
        ]
        for k in keys:
            ttl = raw.pttl(k)
            assert 0 < ttl <= 900_000, k
            assert b"Hunter2" not in repr(raw.dump(k)).encode()
        assert raw.pttl("t:authd:totp:{alice}") <= 210_000
        members = raw.zrange("t:authd:fail:{ip:192.0.2.1}", 0, -1)
        assert all(len(m) == 32 for m in members)
    finally:
        await s.aclose()


async def test_window_members_are_capped(redis_server: RedisServer, clock: FakeClock) -> None:
    """A window never holds more than max_members entries."""
    s = RedisState(redis_server.url, prefix="t", clock=clock, max_members=8)
    try:
        counts = [await s.add_failure([Window("ip:x", 600)], f"m{i}") for i in range(20)]
        assert counts[-1] == [8]
    finally:
        await s.aclose()


async def test_entries_survive_script_flush_and_odd_subjects(
    redis_server: RedisServer, raw: redis.Redis, clock: FakeClock
) -> None:
    """Scripts reload after SCRIPT FLUSH; subjects with braces, globs and spaces round-trip."""
    s = RedisState(redis_server.url, prefix="p*[x]", clock=clock)
    try:
        assert await s.use_step("u", 1, 0, 60)
        raw.script_flush()
        assert not await s.use_step("u", 1, 0, 60)
        assert await s.add_failure([Window("a", 60), Window("b", 60)], "m") == [1, 1]
        raw.script_flush()
        assert await s.add_failure([Window("a", 60), Window("b", 60)], "n") == [2, 2]
        odd = Entry("login:we{ir}d*?[x] name", "block", clock.now + 60, "why not")
        await s.set_entry(odd)
        await s.set_entry(Entry("login:other", "block", clock.now + 60, ""))
        assert await s.entries() == [Entry("login:other", "block", clock.now + 60, ""), odd] or (
            await s.entries() == [odd, Entry("login:other", "block", clock.now + 60, "")]
        )
        assert await s.delete_entry(odd.subject)
        assert await s.get_entries([odd.subject]) == [None]
    finally:
        await s.aclose()


async def test_redis_down_raises_state_error_quickly(own_redis: RedisServer) -> None:
    """With redis-server stopped every operation raises StateError within the timeout; it recovers."""
    clock = FakeClock()
    s = RedisState(own_redis.url, prefix="o", connect_timeout=0.3, command_timeout=0.3, clock=clock)
    guard = guard_on(s, clock)
    try:
        assert await s.use_step("u", 1, 0, 60)
        own_redis.stop()
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: s.use_step("u", 2, 0, 60),
            lambda: s.drift("u"),
            lambda: guard.check("192.0.2.1", "alice@example.org"),
            lambda: guard.record_failure("192.0.2.1", "alice@example.org", "pw"),
            lambda: guard.record_success("192.0.2.1", "alice@example.org"),
            lambda: guard.block("192.0.2.1", 60),
            lambda: guard.blocks(),
            lambda: s.ping(),
        ]
        for call in calls:
            start = time.monotonic()
            with pytest.raises(StateError) as info:
                await call()
            assert time.monotonic() - start < s.deadline + 0.5
            assert own_redis.url not in str(info.value)
        own_redis.start()
        for _ in range(50):
            try:
                await s.ping()
                break
            except StateError:
                await asyncio.sleep(0.1)
        assert await s.use_step("u", 2, 0, 60)  # state was lost: lenient, not locked out
    finally:
        await s.aclose()


async def test_unreachable_redis_is_a_state_error() -> None:
    """A closed port gives StateError, not a raw socket error, and hides the password."""
    url = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"
    s = RedisState(url, connect_timeout=0.2, command_timeout=0.2)
    try:
        with pytest.raises(StateError) as info:
            await s.failure_counts([Window("ip:x", 60)])
        assert "s3cret" not in str(info.value) and "s3cret" not in repr(s)
    finally:
        await s.aclose()


async def test_guard_and_totp_on_redis_cluster(redis_cluster: RedisCluster) -> None:
    """On a 3-node Cluster the per-subject keys spread over slots and everything works."""
    from authd.totp import TotpVerifier

    clock = FakeClock()
    s = RedisState(redis_cluster.url, prefix="c", cluster=True, clock=clock)
    try:
        guard = guard_on(s, clock)
        v = TotpVerifier(s, clock=clock)
        code = pyotp.TOTP(SECRET).at(int(clock.now))
        results = await asyncio.gather(*(v.verify("alice", SECRET, code) for _ in range(20)))
        assert [r.reason for r in results].count("ok") == 1
        for i in range(10):
            verdict = await guard.record_failure("192.0.2.1", f"u{i}@x.org", "p")
        assert verdict.blocked
        assert (await guard.check("192.0.2.1", "z@x.org")).blocked
        await guard.block("carol@example.org", 60)
        keys = {e.key for e in await guard.blocks()}
        assert {"carol@example.org", "192.0.2.1"} <= keys
        assert await guard.unblock("192.0.2.1")
        assert not (await guard.check("192.0.2.1", "z@x.org")).blocked
    finally:
        await s.aclose()
