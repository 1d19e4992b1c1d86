"""pfm-authd's shared state: the store interface, its value types and the in-memory backend.

Three kinds of state, all expiring:

* TOTP replay guard: per user, the last accepted time step (and its drift); ``use_step``
  is an atomic check-and-set that succeeds only for a step greater than the stored one.
* Failure windows: sliding windows of *distinct* members (keyed hashes of wrong
  passwords); adding a member returns the window's distinct count.
* Allow/deny entries: per subject (``ip:…``, ``net:…``, ``login:…``, ``pair:…``) an
  ``allow`` or ``block`` entry with an end time.

Backends: :class:`MemoryState` (one host, bounded) and ``authd.state_redis.RedisState``
(fleets). Every backend failure is a :class:`StateError`; the daemon must then fail open
(state loss only ever makes the guard more lenient, never locks anyone out).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Clock = Callable[[], float]
EntryAction = Literal["allow", "block"]


class StateError(Exception):
    """The state backend failed (connection, timeout, script error); callers fail open."""


@dataclass(frozen=True, slots=True)
class Window:
    """One sliding window: its subject key and its length in seconds."""

    key: str  # e.g. "ip:192.0.2.1", "login:alice@example.org"
    seconds: float  # > 0


@dataclass(frozen=True, slots=True)
class Entry:
    """An allow-list or deny-list entry for a subject, active until ``until`` (epoch seconds)."""

    subject: str  # e.g. "ip:192.0.2.1", "net:192.0.2.0/24", "login:alice@example.org"
    action: EntryAction
    until: float
    reason: str = ""


class AuthState(Protocol):
    """What pfm-authd's TOTP verifier and brute-force guard need from a state backend."""

    name: str

    async def use_step(self, user: str, step: int, drift: int, ttl: float) -> bool:
        """Atomically: if ``step`` > the user's last used step, store it (and drift), True."""
        ...

    async def drift(self, user: str) -> int | None:
        """The step offset observed at the user's last accepted code, if still remembered."""
        ...

    async def add_failure(self, windows: Sequence[Window], member: str) -> list[int]:
        """Add ``member`` (now) to each window; the distinct members inside each window after."""
        ...

    async def failure_counts(self, windows: Sequence[Window]) -> list[int]:
        """The distinct members inside each window now."""
        ...

    async def clear_windows(self, keys: Sequence[str]) -> None:
        """Forget the windows with these keys."""
        ...

    async def set_entry(self, entry: Entry) -> None:
        """Store (or replace) the entry of its subject; it vanishes at ``entry.until``."""
        ...

    async def get_entries(self, subjects: Sequence[str]) -> list[Entry | None]:
        """The active entry of each subject, or None."""
        ...

    async def delete_entry(self, subject: str) -> bool:
        """Remove a subject's entry; True when there was an active one."""
        ...

    async def entries(self) -> list[Entry]:
        """Every active entry (admin listing; may scan)."""
        ...

    async def ping(self) -> None:
        """Raise StateError when the backend is unreachable."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


@dataclass(slots=True)
class _Step:
    step: int
    drift: int
    expires: float


@dataclass(slots=True)
class _Members:
    members: dict[str, float]  # member -> last seen, oldest first
    expires: float


class MemoryState:
    """State for one host, in dicts bounded by ``max_keys`` each (oldest evicted first).

    Eviction only forgets (a window restarts empty, a replay-guard step is forgotten after
    its code can no longer be valid anyway, unless the cap is hit by that many users at
    once); it never adds a block. Expired keys are swept when a table reaches its cap.
    """

    name = "memory"

    def __init__(
        self, *, clock: Clock = time.time, max_keys: int = 100_000, max_members: int = 1000
    ) -> None:
        if max_keys < 1 or max_members < 1:
            raise ValueError("max_keys and max_members must be >= 1")
        self.clock = clock
        self.max_keys = max_keys
        self.max_members = max_members
        self._steps: dict[str, _Step] = {}
        self._windows: dict[str, _Members] = {}
        self._entries: dict[str, Entry] = {}

    # -- bounding ---------------------------------------------------------------------

    def _make_room(self, table: dict[str, _Step] | dict[str, _Members], now: float) -> None:
        if len(table) < self.max_keys:
            return
        for key in [k for k, v in table.items() if v.expires <= now]:
            del table[key]
        while len(table) >= self.max_keys:
            del table[next(iter(table))]

    def _make_room_entries(self, now: float) -> None:
        if len(self._entries) < self.max_keys:
            return
        for key in [k for k, v in self._entries.items() if v.until <= now]:
            del self._entries[key]
        while len(self._entries) >= self.max_keys:
            del self._entries[next(iter(self._entries))]

    # -- TOTP replay guard --------------------------------------------------------------

    async def use_step(self, user: str, step: int, drift: int, ttl: float) -> bool:
        now = self.clock()
        current = self._steps.get(user)
        if current is not None and current.expires > now and current.step >= step:
            return False
        if current is None:
            self._make_room(self._steps, now)
        else:
            del self._steps[user]  # re-insert: keeps the dict ordered by last write
        self._steps[user] = _Step(step, drift, now + ttl)
        return True

    async def drift(self, user: str) -> int | None:
        current = self._steps.get(user)
        if current is None or current.expires <= self.clock():
            return None
        return current.drift

    # -- failure windows -----------------------------------------------------------------

    def _live(self, key: str, seconds: float, now: float) -> dict[str, float] | None:
        w = self._windows.get(key)
        if w is None:
            return None
        cutoff = now - seconds
        stale = [m for m, t in w.members.items() if t <= cutoff]
        for m in stale:
            del w.members[m]
        if not w.members:
            del self._windows[key]
            return None
        return w.members

    async def add_failure(self, windows: Sequence[Window], member: str) -> list[int]:
        now = self.clock()
        counts = []
        for win in windows:
            members = self._live(win.key, win.seconds, now)
            if members is None:
                self._make_room(self._windows, now)
                members = {}
                self._windows[win.key] = _Members(members, now + win.seconds)
            members.pop(member, None)
            members[member] = now
            while len(members) > self.max_members:
                del members[next(iter(members))]
            self._windows[win.key].expires = now + win.seconds
            counts.append(len(members))
        return counts

    async def failure_counts(self, windows: Sequence[Window]) -> list[int]:
        now = self.clock()
        out = []
        for win in windows:
            members = self._live(win.key, win.seconds, now)
            out.append(0 if members is None else len(members))
        return out

    async def clear_windows(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._windows.pop(key, None)

    # -- allow / deny entries ------------------------------------------------------------

    async def set_entry(self, entry: Entry) -> None:
        now = self.clock()
        if entry.until <= now:
            self._entries.pop(entry.subject, None)
            return
        if self._entries.pop(entry.subject, None) is None:
            self._make_room_entries(now)
        self._entries[entry.subject] = entry

    async def get_entries(self, subjects: Sequence[str]) -> list[Entry | None]:
        now = self.clock()
        out: list[Entry | None] = []
        for s in subjects:
            e = self._entries.get(s)
            if e is not None and e.until <= now:
                del self._entries[s]
                e = None
            out.append(e)
        return out

    async def delete_entry(self, subject: str) -> bool:
        e = self._entries.pop(subject, None)
        return e is not None and e.until > self.clock()

    async def entries(self) -> list[Entry]:
        now = self.clock()
        for key in [k for k, v in self._entries.items() if v.until <= now]:
            del self._entries[key]
        return list(self._entries.values())

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
