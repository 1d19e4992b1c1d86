"""Brute-force guard on MemoryState with a fake clock: thresholds, distinct counting, tarpit,
trusted networks, expiring blocks and allow entries, admin keys, and the state's bounds."""

from __future__ import annotations

import asyncio
import ipaddress
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authd.guard import Guard, GuardConfig, Verdict, WindowLimit, parse_networks
from authd.state import Entry, MemoryState, Window

T0 = 1_700_000_000.0


class FakeClock:
    """A settable clock."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(config: GuardConfig | None = None) -> tuple[Guard, MemoryState, FakeClock]:
    """A guard over a fresh MemoryState sharing one fake clock."""
    clock = FakeClock()
    state = MemoryState(clock=clock)
    return Guard(state, config, key=b"k" * 32, clock=clock), state, clock


IPS = ["192.0.2.1", "192.0.2.2", "198.51.100.7", "2001:db8::1", "2001:db8::2"]
LOGINS = ["alice@example.org", "bob@example.org", "carol@example.org"]


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.sampled_from(IPS), st.sampled_from(LOGINS), st.sampled_from("abcdefgh")),
        max_size=40,
    )
)
def test_blocks_exactly_when_a_threshold_is_reached(events: list[tuple[str, str, str]]) -> None:
    """With no time passing, a failure is blocked iff one of its windows holds >= limit distinct."""
    cfg = GuardConfig(trusted_networks=())
    guard, _, _ = make(cfg)
    seen: dict[str, set[tuple[str, str]]] = defaultdict(set)
    limits = {
        "ip": cfg.per_ip.failures,
        "login": cfg.per_login.failures,
        "pair": cfg.per_ip_login.failures,
        "net": cfg.per_prefix.failures,
    }

    async def run() -> None:
        for ip, login, pw in events:
            addr = ipaddress.ip_address(ip)
            net = guard.prefix_of(addr)
            subjects = {"ip": ip, "login": login, "pair": f"{login}|{ip}", "net": str(net)}
            for kind, subject in subjects.items():
                seen[f"{kind}:{subject}"].add((login, pw))
            reached = any(len(seen[f"{k}:{s}"]) >= limits[k] for k, s in subjects.items())
            verdict = await guard.record_failure(ip, login, pw)
            assert verdict.blocked == reached
            assert (await guard.check(ip, login)).blocked == reached

    asyncio.run(run())


async def test_one_stale_password_counts_once() -> None:
    """A phone retrying one wrong password 50 times is never blocked; the tarpit stays minimal."""
    guard, _, _ = make()
    for _ in range(50):
        v = await guard.record_failure("192.0.2.1", "alice@example.org", "old-password")
        assert v == Verdict("tarpit", delay=0.5, reason="ip_failures")
    assert (await guard.check("192.0.2.1", "alice@example.org")).delay == 0.5


async def test_spraying_one_password_counts_per_login() -> None:
    """One password tried against many logins from one IP counts once per login: the IP is blocked."""
    guard, _, _ = make()
    verdicts = [
        await guard.record_failure("192.0.2.1", f"u{i}@example.org", "Summer2026")
        for i in range(10)
    ]
    assert not any(v.blocked for v in verdicts[:9])
    assert verdicts[9].blocked and verdicts[9].reason == "ip_failures"
    assert (await guard.check("192.0.2.1", "someone@example.org")).blocked
    assert not (await guard.check("192.0.2.2", "someone@example.org")).blocked


async def test_tarpit_grows_then_blocks() -> None:
    """Distinct failures from one IP give 0.5, 1, 2, 4, 8, 8 … s, then a block at the 10th."""
    guard, _, clock = make()
    delays = []
    for i in range(9):
        v = await guard.record_failure("192.0.2.1", f"u{i}@example.org", "pw")
        assert v.action == "tarpit"
        delays.append(v.delay)
        assert (await guard.check("192.0.2.1", "x@example.org")).delay == v.delay
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0]
    v = await guard.record_failure("192.0.2.1", "u9@example.org", "pw")
    assert v.blocked and v.until == clock.now + 900


async def test_distinct_wrong_passwords_block_the_pair_first() -> None:
    """Three distinct wrong passwords for one login from one IP block that pair only."""
    guard, _, _ = make()
    for pw in ("a", "b"):
        assert not (await guard.record_failure("192.0.2.1", "alice@example.org", pw)).blocked
    v = await guard.record_failure("192.0.2.1", "alice@example.org", "c")
    assert v.blocked and v.reason == "ip_login_failures"
    assert (await guard.check("192.0.2.1", "alice@example.org")).blocked
    assert not (await guard.check("192.0.2.1", "bob@example.org")).blocked
    assert not (await guard.check("192.0.2.9", "alice@example.org")).blocked


async def test_login_window_counts_across_ips() -> None:
    """Five distinct wrong passwords for one login from five networks block the login."""
    guard, _, _ = make()
    for i in range(4):
        assert not (await guard.record_failure(f"10.{i}.0.1", "alice@example.org", f"p{i}")).blocked
    v = await guard.record_failure("10.9.0.1", "alice@example.org", "p9")
    assert v.blocked and v.reason == "login_failures"
    assert (await guard.check("203.0.113.5", "Alice@Example.org")).blocked


@pytest.mark.parametrize(
    ("base", "other"), [("192.0.2.", "192.0.2.250"), ("2001:db8:0:1::", "2001:db8:0:1:ffff::9")]
)
async def test_prefix_window_blocks_the_network(base: str, other: str) -> None:
    """Thirty distinct failures spread over one /24 (or /64) block the whole prefix."""
    guard, _, _ = make()
    for i in range(1, 31):
        v = await guard.record_failure(f"{base}{i}", f"u{i}@example.org", "pw")
    assert v.blocked and v.reason == "prefix_failures"
    assert (await guard.check(other, "new@example.org")).blocked
    assert not (await guard.check("203.0.113.5", "new@example.org")).blocked


async def test_trusted_networks_bypass() -> None:
    """Failures from a trusted network are never counted, tarpitted or blocked."""
    cfg = GuardConfig(trusted_networks=parse_networks(["10.0.0.0/8", "::1"]))
    guard, state, _ = make(cfg)
    for i in range(100):
        assert (
            await guard.record_failure("10.1.2.3", "alice@example.org", f"p{i}")
        ).action == "allow"
    assert await guard.check("10.1.2.3", "alice@example.org") == Verdict("allow", reason="trusted")
    assert await guard.check("::1", "alice@example.org") == Verdict("allow", reason="trusted")
    assert await state.failure_counts([Window("login:alice@example.org", 600)]) == [0]


async def test_blocks_expire() -> None:
    """A block lasts block_seconds; afterwards (windows aged out too) the login is allowed."""
    guard, _, clock = make()
    for pw in "abc":
        v = await guard.record_failure("192.0.2.1", "alice@example.org", pw)
    assert v.blocked
    clock.now += 899
    assert (await guard.check("192.0.2.1", "alice@example.org")).blocked
    clock.now += 2
    assert (await guard.check("192.0.2.1", "alice@example.org")).action == "allow"


async def test_windows_slide() -> None:
    """Failures older than the window no longer count toward a block."""
    guard, _, clock = make()
    for pw in "ab":
        await guard.record_failure("192.0.2.1", "alice@example.org", pw)
    clock.now += 301
    assert not (await guard.record_failure("192.0.2.1", "alice@example.org", "c")).blocked


async def test_success_clears_the_pair_window_only() -> None:
    """After a success the user gets fresh tries, but the IP's failures still count."""
    guard, state, _ = make()
    for pw in "ab":
        await guard.record_failure("192.0.2.1", "alice@example.org", pw)
    await guard.record_success("192.0.2.1", "alice@example.org")
    counts = await state.failure_counts(
        [Window("pair:alice@example.org|192.0.2.1", 300), Window("ip:192.0.2.1", 600)]
    )
    assert counts == [0, 2]
    assert not (await guard.record_failure("192.0.2.1", "alice@example.org", "c")).blocked


async def test_admin_block_unblock_and_listing() -> None:
    """block() denies a subject until it expires or unblock() removes it; blocks() lists them."""
    guard, _, clock = make()
    entry = await guard.block("Alice@Example.org", 60, reason="admin")
    assert entry.key == "alice@example.org" and entry.until == clock.now + 60
    await guard.block("198.51.100.0/24", 120)
    await guard.block("2001:db8::7", 30)
    v = await guard.check("192.0.2.1", "alice@example.org")
    assert v.blocked and v.reason == "admin"
    assert (await guard.check("198.51.100.77", "bob@example.org")).blocked
    assert [e.key for e in await guard.blocks()] == [
        "2001:db8::7",
        "alice@example.org",
        "198.51.100.0/24",
    ]
    assert await guard.unblock("alice@example.org") is True
    assert await guard.unblock("alice@example.org") is False
    assert (await guard.check("192.0.2.1", "alice@example.org")).action == "allow"
    clock.now += 121
    assert await guard.blocks() == []


async def test_unblock_forgets_the_subjects_window() -> None:
    """Unblocking an automatically blocked IP also forgets its failures (no instant re-block)."""
    guard, _, _ = make()
    for i in range(10):
        v = await guard.record_failure("192.0.2.1", f"u{i}@example.org", "pw")
    assert v.blocked
    assert await guard.unblock("192.0.2.1")
    assert not (await guard.record_failure("192.0.2.1", "z@example.org", "pw")).blocked


async def test_pair_block_is_listed_and_unblockable_by_its_key() -> None:
    """An automatic pair block is listed as login|ip and unblock takes that key back."""
    guard, _, _ = make()
    for pw in "abc":
        await guard.record_failure("192.0.2.1", "alice@example.org", pw)
    keys = [e.key for e in await guard.blocks()]
    assert keys == ["alice@example.org|192.0.2.1"]
    assert await guard.unblock("alice@example.org|192.0.2.1")
    assert (await guard.check("192.0.2.1", "alice@example.org")).action == "tarpit"  # IP window


async def test_allow_entry_bypasses_and_expires() -> None:
    """An expiring allow entry for an IP beats blocks and stops counting; then it lapses."""
    guard, state, clock = make()
    await guard.block("alice@example.org", 3600)
    await guard.allow("192.0.2.1", 60)
    assert await guard.check("192.0.2.1", "alice@example.org") == Verdict(
        "allow", reason="allowlisted"
    )
    await guard.record_failure("192.0.2.1", "bob@example.org", "pw")
    assert await state.failure_counts([Window("ip:192.0.2.1", 600)]) == [0]
    clock.now += 61
    assert (await guard.check("192.0.2.1", "alice@example.org")).blocked


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "empty"),
        ("192.0.2.0/16", "/24"),
        ("2001:db8::/48", "/64"),
        ("10.0.0.0/33", "network"),
        ("al ice", "spaces"),
        ("alice|notanip", "login|ip"),
    ],
)
async def test_bad_admin_keys_are_clear_errors(key: str, message: str) -> None:
    """Keys that are no IP, prefix-length network, login or pair raise ValueError saying why."""
    guard, _, _ = make()
    with pytest.raises(ValueError, match=message):
        await guard.block(key, 60)


async def test_allow_refuses_logins_and_nonpositive_durations() -> None:
    """allow() takes only IPs and networks; durations must be positive."""
    guard, _, _ = make()
    with pytest.raises(ValueError, match="IP or a network"):
        await guard.allow("alice@example.org", 60)
    with pytest.raises(ValueError, match="for_seconds"):
        await guard.block("192.0.2.1", 0)


async def test_admin_keys_normalize() -> None:
    """A /32 is an IP, an IPv4-mapped address is IPv4, a host bit set network is normalized."""
    guard, _, _ = make()
    assert guard.subject("192.0.2.1/32") == "ip:192.0.2.1"
    assert guard.subject("::ffff:192.0.2.1") == "ip:192.0.2.1"
    assert guard.subject("192.0.2.77/24") == "net:192.0.2.0/24"
    assert guard.subject("2001:DB8::1%eth0") == "ip:2001:db8::1"


async def test_mapped_ipv6_clients_count_as_ipv4() -> None:
    """::ffff:a.b.c.d and a.b.c.d are the same client."""
    guard, _, _ = make()
    for i in range(10):
        v = await guard.record_failure(
            "::ffff:192.0.2.1" if i % 2 else "192.0.2.1", f"u{i}@x.org", "p"
        )
    assert v.blocked and v.reason == "ip_failures"


async def test_no_password_reaches_the_state() -> None:
    """Only keyed hashes of wrong passwords are stored."""
    guard, state, _ = make()
    await guard.record_failure("192.0.2.1", "alice@example.org", "Tr0ub4dor&3")
    dump = repr(state._windows) + repr(state._entries) + repr(guard)
    assert "Tr0ub4dor" not in dump
    assert guard.member("alice@example.org", "x") != Guard(state, key=b"other" * 8).member(
        "alice@example.org", "x"
    )


async def test_unknown_client_address_still_counts_the_login() -> None:
    """Without a parsable IP only the login window counts."""
    guard, _, _ = make()
    for i in range(5):
        v = await guard.record_failure("", "alice@example.org", f"p{i}")
    assert v.blocked and v.reason == "login_failures"


async def test_disabled_guard_allows_everything() -> None:
    """enabled=false: every verdict is allow and nothing is stored."""
    guard, state, _ = make(GuardConfig(enabled=False))
    for i in range(20):
        assert (
            await guard.record_failure("192.0.2.1", "alice@example.org", f"p{i}")
        ).action == "allow"
    assert (await guard.check("192.0.2.1", "alice@example.org")).action == "allow"
    assert state._windows == {}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"per_ip": WindowLimit(0, 60)}, "per_ip"),
        ({"per_login": WindowLimit(3, 0)}, "per_login"),
        ({"ipv4_prefix": 40}, "ipv4_prefix"),
        ({"ipv6_prefix": 8}, "ipv6_prefix"),
        ({"tarpit_start": 2.0, "tarpit_max": 1.0}, "tarpit"),
        ({"block_seconds": 0}, "block_seconds"),
        ({"tarpit_windows": ("nope",)}, "tarpit_windows"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    """Invalid guard settings raise ValueError naming the setting."""
    with pytest.raises(ValueError, match=field):
        GuardConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_trusted_network_named() -> None:
    """parse_networks names the entry it cannot parse."""
    with pytest.raises(ValueError, match="'nonsense'"):
        parse_networks(["10.0.0.0/8", "nonsense"])


async def test_memory_state_is_bounded() -> None:
    """Windows, entries and members stay under their caps (oldest evicted first)."""
    clock = FakeClock()
    state = MemoryState(clock=clock, max_keys=50, max_members=5)
    for i in range(500):
        await state.add_failure([Window(f"ip:{i}", 600)], f"m{i}")
        await state.set_entry(Entry(f"ip:{i}", "block", clock.now + 60))
    assert len(state._windows) <= 50 and len(state._entries) <= 50
    counts = [await state.add_failure([Window("login:x", 600)], f"m{i}") for i in range(20)]
    assert counts[-1] == [5]
    for i in range(500):
        await state.use_step(f"user{i}", 1, 0, 60)
    assert len(state._steps) <= 50


async def test_memory_state_expired_keys_vanish() -> None:
    """Expired entries, windows and steps are neither reported nor kept."""
    clock = FakeClock()
    state = MemoryState(clock=clock)
    await state.add_failure([Window("ip:a", 10)], "m")
    await state.set_entry(Entry("ip:a", "block", clock.now + 10))
    assert await state.use_step("u", 5, 1, 10)
    assert not await state.use_step("u", 5, 1, 10)
    clock.now += 11
    assert await state.failure_counts([Window("ip:a", 10)]) == [0]
    assert await state.get_entries(["ip:a"]) == [None]
    assert await state.entries() == []
    assert await state.drift("u") is None
    assert await state.use_step("u", 5, 0, 10)  # the replay record has expired
    assert state._windows == {}


async def test_known_device_survives_a_login_lockout() -> None:
    """Failures others cause on a login block it everywhere except where it logged in before."""
    guard, _, _ = make()
    await guard.record_success("192.0.2.1", "alice@example.org")
    for i in range(5):
        v = await guard.record_failure(f"10.{i}.0.1", "alice@example.org", f"guess{i}")
    assert v.blocked and v.reason == "login_failures"
    assert (await guard.check("203.0.113.9", "alice@example.org")).blocked
    assert not (await guard.check("192.0.2.1", "alice@example.org")).blocked
    await guard.block("alice@example.org", 60, reason="admin")
    assert (await guard.check("192.0.2.1", "alice@example.org")).reason == "admin"


async def test_known_device_can_still_be_pair_blocked_and_is_listed_on_request() -> None:
    """A known pair is blocked by its own distinct failures; blocks() hides known devices."""
    guard, _, _ = make()
    await guard.record_success("192.0.2.1", "alice@example.org")
    assert await guard.blocks() == []
    listed = await guard.blocks(known_devices=True)
    assert [(e.key, e.action, e.reason) for e in listed] == [
        ("alice@example.org|192.0.2.1", "allow", "known_device")
    ]
    for pw in "abc":
        v = await guard.record_failure("192.0.2.1", "alice@example.org", pw)
    assert v.blocked and v.reason == "ip_login_failures"
    assert (await guard.check("192.0.2.1", "alice@example.org")).blocked


async def test_known_devices_can_be_disabled() -> None:
    """known_device_seconds = 0 stores nothing on success."""
    guard, state, _ = make(GuardConfig(known_device_seconds=0))
    await guard.record_success("192.0.2.1", "alice@example.org")
    assert await state.entries() == []
