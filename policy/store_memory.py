"""In-process state store: exact sliding-window logs, bounded by an LRU cap on counters.

Synchronous at heart (``*_now`` methods, what the server calls on its hot path when
``store.sync`` is true); the async methods wrap them for the common
:class:`~policy.store.Store` interface. Dropping a counter (cap reached, restart) only ever
makes limits more lenient.

Layout per counter (:class:`_Log`), lean for the common case of a counter holding a single
committed entry (one sender, one message an hour): that entry lives inline in slots; more
committed entries go to an ``OrderedDict`` (O(1) expiry from the front however many entries
were deleted before); pending reservations live in a small dict ordered by the moment they
die. A running total makes every check O(1) plus the entries that expire.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from itertools import islice

from .store import Charge, Clock, Counter, Outcome

# Outcomes are immutable: share the common small ones instead of building one per charge.
_CACHED = 1024
_ALLOWED = tuple(Outcome(i, True) for i in range(_CACHED))
_REFUSED = tuple(Outcome(i, False) for i in range(_CACHED))


def _vts(item: tuple[str, tuple[int, float]]) -> float:
    return item[1][1]


class _Log:
    """One counter: committed entries (oldest inline) and pending reservations."""

    __slots__ = ("done", "m", "pend", "pmin", "t", "total", "w")

    def __init__(self) -> None:
        self.total = 0  # weight of every live entry, committed and pending
        self.m: str | None = None  # the oldest committed entry, inline: member ...
        self.t = 0.0  # ... timestamp ...
        self.w = 0  # ... and weight
        # newer committed entries, oldest first: member -> (timestamp, weight)
        self.done: OrderedDict[str, tuple[float, int]] | None = None
        # pending reservations, ordered by death: member -> (weight, virtual timestamp); the
        # virtual timestamp now + min(ttl, window) - window leaves the window when the ttl
        # ends (the arithmetic of the Redis script, so both backends decide alike)
        self.pend: dict[str, tuple[int, float]] | None = None
        self.pmin = 0.0  # no pending virtual timestamp is below this (a bound: scans are rare)

    def expire(self, now: float, window: float) -> None:
        """Drop committed entries older than the window and pending ones past their death."""
        cutoff = now - window
        if self.m is None or self.t <= cutoff:
            # the inline entry (the oldest) is gone or going, so newer ones may be too
            if self.m is not None:
                self.total -= self.w
                self.m = None
            done = self.done
            if done is not None:
                while done:
                    member = next(iter(done))
                    ts, w = done[member]
                    if ts > cutoff:
                        break
                    del done[member]
                    self.total -= w
                if not done:
                    self.done = None
        pend = self.pend
        if pend is not None and self.pmin <= cutoff:
            dead: list[str] = []
            for member, (w, vts) in pend.items():  # one pass: deleted slots are skipped once
                if vts > cutoff:
                    self.pmin = vts
                    break
                dead.append(member)
                self.total -= w
            for member in dead:
                del pend[member]
            if not pend:
                self.pend = None

    def has(self, member: str) -> bool:
        return (
            member == self.m
            or (self.done is not None and member in self.done)
            or (self.pend is not None and member in self.pend)
        )

    def add_done(self, member: str, now: float, weight: int) -> None:
        if self.m is None and self.done is None:
            self.m, self.t, self.w = member, now, weight
            return
        if self.done is None:
            self.done = OrderedDict()
        self.done[member] = (now, weight)

    def add_pending(self, member: str, weight: int, vts: float) -> None:
        pend = self.pend
        if pend is None:
            self.pend = {member: (weight, vts)}
            self.pmin = vts
            return
        last = next(reversed(pend.values()))[1]
        pend[member] = (weight, vts)
        if vts < last:  # a shorter ttl than before: keep the order of death
            self.pend = dict(sorted(pend.items(), key=_vts))
            self.pmin = min(self.pmin, vts)

    def drop(self, member: str) -> None:
        """Forget one member, pending or committed (a missing one is ignored)."""
        pend = self.pend
        if pend is not None:
            entry = pend.pop(member, None)
            if entry is not None:
                self.total -= entry[0]
                if not pend:
                    self.pend = None
                return
        if member == self.m:
            self.total -= self.w
            self.m = None
            return
        done = self.done
        if done is not None:
            gone = done.pop(member, None)
            if gone is not None:
                self.total -= gone[1]
                if not done:
                    self.done = None

    def empty(self) -> bool:
        return self.m is None and self.done is None and self.pend is None

    def split(self) -> tuple[int, int]:
        """(committed, pending) weight."""
        pending = sum(e[0] for e in self.pend.values()) if self.pend else 0
        return self.total - pending, pending


class MemoryStore:
    """State in this process; fast and bounded."""

    name = "memory"
    sync = True

    def __init__(self, *, max_keys: int = 1_000_000, clock: Clock = time.time) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        self.clock = clock
        self._logs: OrderedDict[tuple[str, float], _Log] = OrderedDict()
        self._exempt: dict[str, float] = {}
        self._last = float("-inf")
        self.evicted = 0  # counters dropped by the cap (each one made limits more lenient)

    def __len__(self) -> int:
        return len(self._logs)

    def _now(self) -> float:
        """The clock, never going backwards (entries stay in time order for front expiry)."""
        now = self.clock()
        if now < self._last:
            return self._last
        self._last = now
        return now

    # ------------------------------------------------------------------ sync core

    def _apply(self, charges: Sequence[Charge], now: float, ttl: float | None) -> list[Outcome]:
        """Check every charge; add all (pending when ``ttl`` is set) if every enforce one fits.

        Weights go onto the running totals as the check proceeds (so two charges on one
        counter see each other) and are rolled back when the batch is refused.
        """
        logs = self._logs
        outs: list[Outcome] = []
        added: list[tuple[_Log, Charge]] = []
        ok = True
        for ch in charges:
            c = ch.counter
            key = (c.key, c.window)
            log = logs.get(key)
            if log is None:
                log = logs[key] = _Log()
                if len(logs) > self.max_keys:
                    logs.popitem(last=False)
                    self.evicted += 1
            else:
                logs.move_to_end(key)
                log.expire(now, c.window)
            used = log.total
            member = ch.member
            present = log.has(member)
            if not present and added:
                for a in added:
                    if a[0] is log and a[1].member == member:
                        present = True  # the same member twice in one batch counts once
                        break
            if present:
                outs.append(_ALLOWED[used] if 0 <= used < _CACHED else Outcome(used, True))
                continue
            weight = ch.weight
            if used + weight <= c.limit:
                outs.append(_ALLOWED[used] if 0 <= used < _CACHED else Outcome(used, True))
            else:
                outs.append(_REFUSED[used] if 0 <= used < _CACHED else Outcome(used, False))
                if ch.enforce:
                    ok = False
                    continue
            log.total = used + weight
            added.append((log, ch))
        if not ok:
            for log, ch in added:
                log.total -= ch.weight
                if log.empty():  # created for this batch: do not keep it empty
                    c = ch.counter
                    if logs.get((c.key, c.window)) is log:
                        del logs[(c.key, c.window)]
            return outs
        if ttl is None:
            for log, ch in added:
                log.add_done(ch.member, now, ch.weight)
        else:
            for log, ch in added:
                w = ch.counter.window
                log.add_pending(ch.member, ch.weight, now + min(ttl, w) - w)
        return outs

    def reserve_now(self, charges: Sequence[Charge], ttl: float) -> list[Outcome]:
        """Synchronous :meth:`reserve`."""
        if not charges:
            return []
        return self._apply(charges, self._now(), ttl)

    def commit_now(
        self, charges: Sequence[Charge], release: Sequence[tuple[Counter, str]] = ()
    ) -> list[Outcome]:
        """Synchronous :meth:`commit`: release first, then check and add as committed."""
        if release:
            self.release_now(release)
        if not charges:
            return []
        return self._apply(charges, self._now(), None)

    def release_now(self, members: Sequence[tuple[Counter, str]]) -> None:
        """Synchronous :meth:`release`; counters left empty are dropped."""
        logs = self._logs
        for c, member in members:
            key = (c.key, c.window)
            log = logs.get(key)
            if log is not None:
                log.drop(member)
                if log.empty():
                    del logs[key]

    def usage_now(self, counters: Sequence[Counter]) -> list[tuple[int, int]]:
        """Synchronous :meth:`usage`."""
        now = self._now()
        out = []
        for c in counters:
            key = (c.key, c.window)
            log = self._logs.get(key)
            if log is None:
                out.append((0, 0))
                continue
            log.expire(now, c.window)
            out.append(log.split())
            if log.empty():
                del self._logs[key]
        return out

    def reset_now(self, counters: Sequence[Counter]) -> None:
        """Synchronous :meth:`reset`."""
        for c in counters:
            self._logs.pop((c.key, c.window), None)

    def set_exemption_now(self, subject: str, seconds: float) -> None:
        """Synchronous :meth:`set_exemption`."""
        if seconds <= 0:
            self._exempt.pop(subject, None)
        else:
            self._exempt[subject] = self._now() + seconds

    def exemptions_now(self) -> dict[str, float]:
        """Synchronous :meth:`exemptions`."""
        now = self._now()
        for s in [s for s, until in self._exempt.items() if until <= now]:
            del self._exempt[s]
        return {s: until - now for s, until in self._exempt.items()}

    def sweep(self, limit: int = 10000) -> int:
        """Drop up to ``limit`` least recently used counters whose entries all expired.

        The least recently used counters are the likeliest to be empty, and they sit at the
        front of the LRU order, so a bounded look at the front keeps idle memory low without
        ever scanning every counter.
        """
        now = self._now()
        dropped = 0
        logs = self._logs
        for key in list(islice(logs, limit)):
            log = logs[key]
            log.expire(now, key[1])
            if log.empty():
                del logs[key]
                dropped += 1
        return dropped

    # ------------------------------------------------------------------ async interface

    async def reserve(self, charges: Sequence[Charge], ttl: float) -> list[Outcome]:
        return self.reserve_now(charges, ttl)

    async def commit(
        self, charges: Sequence[Charge], release: Sequence[tuple[Counter, str]]
    ) -> list[Outcome]:
        return self.commit_now(charges, release)

    async def release(self, members: Sequence[tuple[Counter, str]]) -> None:
        self.release_now(members)

    async def usage(self, counters: Sequence[Counter]) -> list[tuple[int, int]]:
        return self.usage_now(counters)

    async def reset(self, counters: Sequence[Counter]) -> None:
        self.reset_now(counters)

    async def set_exemption(self, subject: str, seconds: float) -> None:
        self.set_exemption_now(subject, seconds)

    async def exemptions(self) -> dict[str, float]:
        return self.exemptions_now()

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
