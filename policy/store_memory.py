"""In-process state store: exact sliding-window logs, bounded by an LRU cap on counters.

Synchronous at heart (``*_now`` methods, what the server calls on its hot path); the async
methods wrap them for the common :class:`~policy.store.Store` interface. Dropping a counter
(cap reached, restart) only ever makes limits more lenient.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from itertools import islice
from typing import Any

from .store import Charge, Clock, Counter, Outcome


class _Log:
    """One counter: committed entries and pending reservations, oldest first."""

    __slots__ = ("done", "pend", "total")

    def __init__(self) -> None:
        self.done: dict[str, tuple[float, int]] | None = None  # member -> (ts, weight)
        self.pend: dict[str, tuple[float, int, float]] | None = (
            None  # member -> (ts, weight, deadline)
        )
        self.total = 0

    def expire(self, now: float, window: float) -> None:
        cutoff = now - window
        done = self.done
        if done:
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
        if pend:
            while pend:
                member = next(iter(pend))
                ts, w, deadline = pend[member]
                if deadline > now and ts > cutoff:
                    break
                del pend[member]
                self.total -= w
            if not pend:
                self.pend = None

    def drop(self, member: str) -> None:
        pend = self.pend
        if pend:
            entry = pend.pop(member, None)
            if entry is not None:
                self.total -= entry[1]
                if not pend:
                    self.pend = None
                return
        done = self.done
        if done:
            gone = done.pop(member, None)
            if gone is not None:
                self.total -= gone[1]
                if not done:
                    self.done = None

    def split(self) -> tuple[int, int]:
        pending = sum(e[1] for e in self.pend.values()) if self.pend else 0
        return self.total - pending, pending


class MemoryStore:
    """State in this process; fast and bounded."""

    name = "memory"
    sync = True

    def __init__(self, *, max_keys: int = 1_000_000, clock: Clock = time.time) -> None:
        self.max_keys = max_keys
        self.clock = clock
        self._logs: OrderedDict[tuple[str, float], _Log] = OrderedDict()
        self._exempt: dict[str, float] = {}
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._logs)

    # ------------------------------------------------------------------ sync core

    def _apply(
        self, charges: Sequence[Charge], now: float, deadline: float | None
    ) -> list[Outcome]:
        """Check every charge; add them all (pending when ``deadline``) if every enforce one fits.

        Weights are added to the running totals as the check goes (so two charges on one
        counter see each other) and rolled back when the batch is refused.
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
                if log.done or log.pend:
                    log.expire(now, c.window)
            used = log.total
            member = ch.member
            done, pend = log.done, log.pend
            if (done is not None and member in done) or (pend is not None and member in pend):
                outs.append(Outcome(used, True))
                continue
            if added and any(a is log and b.member == member for a, b in added):
                outs.append(Outcome(used, True))  # the same member twice in one batch
                continue
            weight = ch.weight
            if used + weight <= c.limit:
                outs.append(Outcome(used, True))
            else:
                outs.append(Outcome(used, False))
                if ch.enforce:
                    ok = False
                    continue
            log.total = used + weight
            added.append((log, ch))
        if not ok:
            for log, ch in added:
                log.total -= ch.weight
            return outs
        for log, ch in added:
            member = ch.member
            if deadline is None:
                if log.done is None:
                    log.done = {}
                target: dict[str, Any] = log.done
                entry: tuple[Any, ...] = (now, ch.weight)
            else:
                if log.pend is None:
                    log.pend = {}
                target = log.pend
                entry = (now, ch.weight, deadline)
            target[member] = entry
        return outs

    def reserve_now(self, charges: Sequence[Charge], ttl: float) -> list[Outcome]:
        """Synchronous :meth:`reserve`."""
        if not charges:
            return []
        now = self.clock()
        return self._apply(charges, now, now + ttl)

    def commit_now(
        self, charges: Sequence[Charge], release: Sequence[tuple[Counter, str]] = ()
    ) -> list[Outcome]:
        """Synchronous :meth:`commit`."""
        if release:
            self.release_now(release)
        if not charges:
            return []
        return self._apply(charges, self.clock(), None)

    def release_now(self, members: Sequence[tuple[Counter, str]]) -> None:
        """Synchronous :meth:`release`."""
        logs = self._logs
        for c, member in members:
            log = logs.get((c.key, c.window))
            if log is not None:
                log.drop(member)
                if not log.total and not log.done and not log.pend:
                    del logs[(c.key, c.window)]

    def usage_now(self, counters: Sequence[Counter]) -> list[tuple[int, int]]:
        now = self.clock()
        out = []
        for c in counters:
            log = self._logs.get((c.key, c.window))
            if log is None:
                out.append((0, 0))
                continue
            log.expire(now, c.window)
            out.append(log.split())
        return out

    def reset_now(self, counters: Sequence[Counter]) -> None:
        for c in counters:
            self._logs.pop((c.key, c.window), None)

    def set_exemption_now(self, subject: str, seconds: float) -> None:
        if seconds <= 0:
            self._exempt.pop(subject, None)
        else:
            self._exempt[subject] = self.clock() + seconds

    def exemptions_now(self) -> dict[str, float]:
        now = self.clock()
        for s in [s for s, until in self._exempt.items() if until <= now]:
            del self._exempt[s]
        return {s: until - now for s, until in self._exempt.items()}

    def sweep(self, limit: int = 10000) -> int:
        """Drop up to ``limit`` least recently used counters whose entries all expired.

        The least recently used counters are the likeliest to be empty, and they sit at the
        front of the LRU order, so a bounded look at the front keeps idle memory low without
        ever scanning every counter.
        """
        now = self.clock()
        dropped = 0
        logs = self._logs
        for key in list(islice(logs, limit)):
            log = logs[key]
            log.expire(now, key[1])
            if not log.done and not log.pend:
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
