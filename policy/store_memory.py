"""In-process state store: exact sliding-window logs, bounded by an LRU cap on counters.

Synchronous at heart (``*_now`` methods, what the server calls on its hot path); the async
methods wrap them for the common :class:`~policy.store.Store` interface. Dropping a counter
(cap reached, restart) only ever makes limits more lenient.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

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

    def has(self, member: str) -> bool:
        return bool((self.done and member in self.done) or (self.pend and member in self.pend))

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

    def _log(self, c: Counter, now: float) -> _Log:
        key = (c.key, c.window)
        logs = self._logs
        log = logs.get(key)
        if log is None:
            log = logs[key] = _Log()
            if len(logs) > self.max_keys:
                logs.popitem(last=False)
                self.evicted += 1
        else:
            logs.move_to_end(key)
            log.expire(now, c.window)
        return log

    def _check(
        self, charges: Sequence[Charge], now: float
    ) -> tuple[list[Outcome], list[_Log], bool]:
        outs: list[Outcome] = []
        logs: list[_Log] = []
        ok = True
        extra: dict[int, int] | None = None
        for ch in charges:
            c = ch.counter
            log = self._log(c, now)
            used = log.total
            if extra is not None:
                used += extra.get(id(log), 0)
            if log.has(ch.member):
                allowed = True
            else:
                allowed = used + ch.weight <= c.limit
                if allowed and len(charges) > 1:
                    if extra is None:
                        extra = {}
                    extra[id(log)] = extra.get(id(log), 0) + ch.weight
            if not allowed and ch.enforce:
                ok = False
            outs.append(Outcome(used, allowed))
            logs.append(log)
        return outs, logs, ok

    def reserve_now(self, charges: Sequence[Charge], ttl: float) -> list[Outcome]:
        """Synchronous :meth:`reserve`."""
        if not charges:
            return []
        now = self.clock()
        outs, logs, ok = self._check(charges, now)
        if ok:
            deadline = now + ttl
            for ch, log in zip(charges, logs, strict=True):
                if not log.has(ch.member):
                    if log.pend is None:
                        log.pend = {}
                    log.pend[ch.member] = (now, ch.weight, deadline)
                    log.total += ch.weight
        return outs

    def commit_now(
        self, charges: Sequence[Charge], release: Sequence[tuple[Counter, str]] = ()
    ) -> list[Outcome]:
        """Synchronous :meth:`commit`."""
        if release:
            self.release_now(release)
        if not charges:
            return []
        now = self.clock()
        outs, logs, ok = self._check(charges, now)
        if ok:
            for ch, log in zip(charges, logs, strict=True):
                if not log.has(ch.member):
                    if log.done is None:
                        log.done = {}
                    log.done[ch.member] = (now, ch.weight)
                    log.total += ch.weight
        return outs

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
        """Drop up to ``limit`` least recently used counters whose entries all expired."""
        now = self.clock()
        dropped = 0
        for key in list(self._logs)[:limit]:
            log = self._logs[key]
            log.expire(now, key[1])
            if not log.done and not log.pend:
                del self._logs[key]
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
