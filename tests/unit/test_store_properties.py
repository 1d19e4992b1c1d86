"""Properties of the sliding-window algorithm (memory store, injected clock), checked by hypothesis."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from policy.store import Charge, Counter
from policy.store_memory import MemoryStore

WINDOW = 10.0
TTL = 4.0
COUNTERS = [Counter("a|x|10", WINDOW, 3), Counter("b|x|10", WINDOW, 5)]


@dataclass
class Model:
    """The reference: every entry with its time, weight and pending deadline (None = committed)."""

    entries: dict[tuple[int, str], tuple[float, int, float | None]] = field(default_factory=dict)

    def used(self, ci: int, now: float) -> int:
        total = 0
        for (c, _), (ts, w, deadline) in self.entries.items():
            if c != ci or now - ts >= WINDOW:
                continue
            if deadline is not None and deadline <= now:
                continue
            total += w
        return total

    def live(self, ci: int, member: str, now: float) -> bool:
        e = self.entries.get((ci, member))
        if e is None:
            return False
        ts, _, deadline = e
        return now - ts < WINDOW and (deadline is None or deadline > now)


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("reserve"),
            st.lists(
                st.tuples(st.integers(0, 1), st.integers(0, 4), st.integers(0, 6)),
                min_size=1,
                max_size=3,
            ),
        ),
        st.tuples(
            st.just("commit"),
            st.lists(
                st.tuples(st.integers(0, 1), st.integers(0, 4), st.integers(0, 6)),
                min_size=1,
                max_size=3,
            ),
        ),
        st.tuples(
            st.just("release"),
            st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=1, max_size=3),
        ),
        st.tuples(st.just("advance"), st.floats(0.0, 6.0, allow_nan=False)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_matches_reference_and_never_exceeds(sequence: list[tuple[object, ...]]) -> None:
    """The store agrees with a brute-force model: no window over its limit, no refusal under it."""
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    model = Model()
    for op in sequence:
        kind = op[0]
        if kind == "advance":
            now[0] += float(op[1])  # type: ignore[arg-type]
            continue
        t = now[0]
        # Drop dead entries from the model the way the store does (window or deadline passed).
        model.entries = {
            k: v
            for k, v in model.entries.items()
            if t - v[0] < WINDOW and (v[2] is None or v[2] > t)
        }
        if kind == "release":
            pairs = [(COUNTERS[ci], f"m{m}") for ci, m in op[1]]  # type: ignore[union-attr]
            store.release_now(pairs)
            for ci, m in op[1]:  # type: ignore[union-attr]
                model.entries.pop((ci, f"m{m}"), None)
            continue
        batch = [(ci, w, f"m{m}") for ci, w, m in op[1]]  # type: ignore[union-attr]
        charges = [Charge(COUNTERS[ci], w, member) for ci, w, member in batch]
        outs = store.reserve_now(charges, TTL) if kind == "reserve" else store.commit_now(charges)
        # Reference decision, in order, seeing earlier charges of the same batch.
        extra = [0, 0]
        expect_ok = True
        seen: set[tuple[int, str]] = set()
        for (ci, w, member), out in zip(batch, outs, strict=True):
            present = model.live(ci, member, t) or (ci, member) in seen
            used = model.used(ci, t) + extra[ci]
            allowed = present or used + w <= COUNTERS[ci].limit
            assert out.allowed == allowed
            if not present:
                assert out.used == used
            if allowed and not present:
                extra[ci] += w
                seen.add((ci, member))
            if not allowed:
                expect_ok = False
        if expect_ok:
            deadline = t + TTL if kind == "reserve" else None
            for ci, w, member in batch:
                if not model.live(ci, member, t) and (ci, member) not in model.entries:
                    model.entries[(ci, member)] = (t, w, deadline)
        for ci, c in enumerate(COUNTERS):
            committed, pending = store.usage_now([c])[0]
            assert committed + pending == model.used(ci, t)
            assert committed + pending <= c.limit  # never more than the limit in any window


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(1, 3)), min_size=1, max_size=20))
def test_reservations_always_released(reservations: list[tuple[int, int]]) -> None:
    """Whatever is reserved and never committed is gone after the TTL."""
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    for i, (ci, w) in enumerate(reservations):
        store.reserve_now([Charge(COUNTERS[ci], w, f"r{i}")], TTL)
        now[0] += 0.1
    now[0] += TTL
    assert store.usage_now(COUNTERS) == [(0, 0), (0, 0)]
    assert store.sweep() >= 0
    assert len(store) == 0


def test_cap_on_keys_evicts_least_recently_used() -> None:
    """Beyond max_keys the least recently used counter is dropped (leniency, never strictness)."""
    store = MemoryStore(max_keys=1000)
    for i in range(1500):
        store.commit_now([Charge(Counter(f"k|{i}|60", 60.0, 1), 1, "m")])
    assert len(store) == 1000
    assert store.evicted == 500
    (out,) = store.commit_now([Charge(Counter("k|0|60", 60.0, 1), 1, "m2")])
    assert out.allowed  # its history was evicted: more lenient, not stricter


def test_sweep_drops_only_expired_counters() -> None:
    """sweep() removes counters whose entries all left their window and keeps live ones."""
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    store.commit_now([Charge(Counter("old|a|10", 10.0, 5), 1, "m")])
    now[0] = 5.0
    store.commit_now([Charge(Counter("new|b|10", 10.0, 5), 1, "m")])
    now[0] = 12.0
    assert store.sweep() == 1
    assert len(store) == 1
    assert store.usage_now([Counter("new|b|10", 10.0, 5)]) == [(1, 0)]
