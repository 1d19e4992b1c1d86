"""Rate-limit state: the store interface, its value types and the backend factory.

An exact sliding-window log with two-phase accounting: charges are first *pending*
reservations (they count, and vanish after a TTL unless committed or released), then
*committed* entries that leave the window by age only. Backends: ``memory`` (one host) and
``redis`` (fleets; one Lua script per operation). Both pass the same contract suite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Clock = Callable[[], float]


class StoreError(Exception):
    """The state backend failed (connection, timeout, script error)."""


@dataclass(frozen=True, slots=True)
class Counter:
    """One window of one limit for one subject."""

    key: str  # unique per limit and subject, e.g. "sender_hourly|alice@example.org"
    window: float  # seconds, > 0
    limit: int  # max total weight inside any window of `window` seconds, >= 0


@dataclass(frozen=True, slots=True)
class Charge:
    """A weight to add to a counter under a member id (idempotent per member)."""

    counter: Counter
    weight: int  # >= 0: 1 per message or recipient, or a byte count
    member: str  # id of the charge inside its counter, e.g. "r:<instance>/<rcpt>"
    enforce: bool = True  # False: reported, never blocks, always added with its batch


@dataclass(frozen=True, slots=True)
class Outcome:
    """A charge's view of its counter before it was added."""

    used: int  # total weight in the window before this charge (pending included)
    allowed: bool  # used + weight <= limit, or the member was already present


class Store(Protocol):
    """What pfm-policyd needs from a state backend."""

    name: str
    sync: bool

    async def reserve(self, charges: Sequence[Charge], ttl: float) -> list[Outcome]:
        """Check all; if every enforce charge fits, add all as pending (expiring after ttl)."""
        ...

    async def commit(
        self, charges: Sequence[Charge], release: Sequence[tuple[Counter, str]]
    ) -> list[Outcome]:
        """Release members, then check all; if every enforce charge fits, add all."""
        ...

    async def release(self, members: Sequence[tuple[Counter, str]]) -> None:
        """Remove members, pending or committed (missing ones are ignored)."""
        ...

    async def usage(self, counters: Sequence[Counter]) -> list[tuple[int, int]]:
        """(committed, pending) weight inside each counter's window now."""
        ...

    async def reset(self, counters: Sequence[Counter]) -> None:
        """Forget everything about these counters."""
        ...

    async def set_exemption(self, subject: str, seconds: float) -> None:
        """Exempt a subject for a while (0 removes the exemption)."""
        ...

    async def exemptions(self) -> dict[str, float]:
        """Active exemptions: subject -> seconds left."""
        ...

    async def ping(self) -> None:
        """Raise StoreError when the backend is unreachable."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def open_store(name: str, **options: Any) -> Store:
    """Create a store by name; backends are imported lazily."""
    if name == "memory":
        from .store_memory import MemoryStore

        return MemoryStore(**options)
    if name == "redis":
        from .store_redis import RedisStore

        return RedisStore(**options)
    raise ValueError(f"unknown state store {name!r}: use 'memory' or 'redis'")
