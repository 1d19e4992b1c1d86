"""MemoryStore specifics: sync API, LRU cap, dropping empty counters, lean memory, factory."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tracemalloc

import pytest

from policy.store import Charge, Counter, Outcome, open_store
from policy.store_memory import MemoryStore

C = Counter("lim|alice", 60.0, 3)
D = Counter("lim|bob", 60.0, 3)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_value_types_are_frozen_and_hashable() -> None:
    """Counter, Charge and Outcome are immutable values usable as dict keys."""
    ch = Charge(C, 1, "m")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ch.weight = 2  # type: ignore[misc]
    assert {C: 1}[Counter("lim|alice", 60.0, 3)] == 1
    assert ch.enforce is True
    assert Outcome(1, True) == Outcome(1, True)


def test_open_store_by_name() -> None:
    """open_store builds the memory store with options and rejects unknown names."""
    s = open_store("memory", max_keys=10)
    assert isinstance(s, MemoryStore) and s.name == "memory" and s.sync is True
    assert s.max_keys == 10
    with pytest.raises(ValueError, match="unknown state store"):
        open_store("memcached")


def test_store_module_does_not_import_redis() -> None:
    """Importing policy.store and the memory backend does not load redis (lazy imports)."""
    code = (
        "import sys, policy.store, policy.store_memory;"
        "policy.store.open_store('memory');"
        "sys.exit('redis' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


async def test_async_methods_share_the_sync_state() -> None:
    """The async interface and the *_now methods act on the same state."""
    s = MemoryStore(clock=Clock())
    s.reserve_now([Charge(C, 1, "r:1")], 600)
    assert await s.usage([C]) == [(0, 1)]
    await s.commit([Charge(C, 1, "c:1")], [(C, "r:1")])
    assert s.usage_now([C]) == [(1, 0)]
    await s.set_exemption("alice", 30)
    assert s.exemptions_now() == {"alice": 30}
    await s.ping()
    await s.aclose()


def test_empty_counters_are_dropped() -> None:
    """Release, usage after expiry and a refused batch leave no empty counter behind."""
    clock = Clock()
    s = MemoryStore(clock=clock)
    s.reserve_now([Charge(C, 1, "r")], 600)
    assert len(s) == 1
    s.release_now([(C, "r")])
    assert len(s) == 0
    s.commit_now([Charge(C, 1, "c")])
    clock.t += 60
    assert s.usage_now([C]) == [(0, 0)]
    assert len(s) == 0
    s.commit_now([Charge(C, 3, "full")])
    s.reserve_now([Charge(D, 1, "x"), Charge(C, 1, "x")], 600)
    assert len(s) == 1  # D was created for the refused batch and removed again


def test_lru_keeps_recently_used_counters() -> None:
    """At the cap the least recently used counter goes, not one just used."""
    s = MemoryStore(max_keys=2)
    a, b, c = (Counter(f"k|{n}", 60.0, 1) for n in "abc")
    s.commit_now([Charge(a, 1, "m")])
    s.commit_now([Charge(b, 1, "m")])
    s.commit_now([Charge(a, 0, "touch")])  # a is now the most recently used
    s.commit_now([Charge(c, 1, "m")])
    assert len(s) == 2 and s.evicted == 1
    assert s.usage_now([a, c]) == [(1, 0), (1, 0)]
    (out,) = s.commit_now([Charge(b, 1, "m2")])
    assert out.allowed and out.used == 0  # b's history was evicted: lenient, never stricter


def test_max_keys_must_be_positive() -> None:
    """A cap below one counter is a configuration error."""
    with pytest.raises(ValueError, match="max_keys"):
        MemoryStore(max_keys=0)


def test_clock_going_backwards_keeps_counting() -> None:
    """A clock stepping back (NTP) neither loses entries nor breaks expiry order."""
    clock = Clock(1000.0)
    s = MemoryStore(clock=clock)
    s.commit_now([Charge(C, 1, "a")])
    clock.t = 990.0
    s.commit_now([Charge(C, 1, "b")])
    assert s.usage_now([C]) == [(2, 0)]
    clock.t = 1060.0
    assert s.usage_now([C]) == [(0, 0)]


def test_shorter_ttl_later_still_expires_exactly() -> None:
    """Reservations with mixed TTLs each leave at their own deadline."""
    clock = Clock(0.0)
    s = MemoryStore(clock=clock)
    big = Counter("big|x", 3600.0, 100)
    s.reserve_now([Charge(big, 1, "long")], 50)
    s.reserve_now([Charge(big, 2, "short")], 10)
    clock.t = 10.0
    assert s.usage_now([big]) == [(0, 1)]
    clock.t = 50.0
    assert s.usage_now([big]) == [(0, 0)]


def test_large_used_values_are_reported_exactly() -> None:
    """Outcomes beyond the shared small-value cache carry the exact used weight."""
    s = MemoryStore()
    b = Counter("bytes|x", 60.0, 10_000)
    s.commit_now([Charge(b, 5000, "a")])
    (out,) = s.commit_now([Charge(b, 5001, "b")])
    assert out == Outcome(5000, False)
    (out,) = s.commit_now([Charge(b, 5000, "c")])
    assert out == Outcome(5000, True)


def test_many_entries_on_one_counter_stay_consistent() -> None:
    """A busy counter (thousands of entries, releases in order) keeps an exact total."""
    clock = Clock(0.0)
    s = MemoryStore(clock=clock)
    busy = Counter("ip|192.0.2.1", 100.0, 1_000_000)
    for i in range(5000):
        clock.t = i * 0.01
        s.reserve_now([Charge(busy, 1, f"r:{i}")], 30)
        s.commit_now([Charge(busy, 2, f"c:{i}")], [(busy, f"r:{i - 1}")])
    assert s.usage_now([busy]) == [(10_000, 1)]
    clock.t = 49.99 + 100.0
    assert s.usage_now([busy]) == [(0, 0)]
    assert len(s) == 0


def test_memory_per_counter_is_small() -> None:
    """A counter holding one committed entry costs a few hundred bytes at most."""
    n = 20_000
    counters = [Counter(f"sender|user{i}@example.org", 3600.0, 100) for i in range(n)]
    charges = [[Charge(c, 1, "c:q1")] for c in counters]
    s = MemoryStore()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for batch in charges:
            s.commit_now(batch)
        per_counter = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert len(s) == n
    assert per_counter < 300, per_counter
