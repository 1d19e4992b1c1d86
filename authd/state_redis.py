"""pfm-authd state in Redis, shared by every host of a fleet.

Key layout (``P`` = the configured prefix; the braces are Redis Cluster hash tags, one
per subject, and every key is written by a single-key Lua script or a SET with a TTL):

* ``P:authd:totp:{<user>}``   hash ``s`` (last used step), ``d`` (drift); TTL ~3.5 min
* ``P:authd:fail:{<subject>}`` sorted set: member = keyed hash of a wrong password,
  score = last seen; trimmed to the window and to ``max_members``; TTL = the window
* ``P:authd:acl:{<subject>}``  string ``<action> <until> <reason>``; TTL = until - now

Each operation is atomic per key (the Lua script does check-and-set or prune-add-count),
several keys go out in one pipeline (Cluster: concurrent single-key calls), so nothing
needs cross-slot atomicity. The caller's clock is passed to the scripts. Every Redis
failure becomes :class:`~authd.state.StateError` within the command timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from .state import Clock, Entry, StateError, Window

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    from services.config import RedisConfig

# KEYS[1] = step hash; ARGV = step, drift, ttl_ms. 1 when the step was newer and is now used.
USE_STEP = """
local last = tonumber(redis.call('HGET', KEYS[1], 's'))
if last and last >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 's', ARGV[1], 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS[1] = window zset; ARGV = now, cutoff (scores <= cutoff are out), member, cap, ttl_ms.
ADD_FAILURE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
local n = redis.call('ZCARD', KEYS[1])
local cap = tonumber(ARGV[4])
if n > cap then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - cap - 1)
  n = cap
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return n
"""

_GLOB = str.maketrans({c: "\\" + c for c in "*?[]\\"})


class RedisState:
    """The :class:`~authd.state.AuthState` of a fleet."""

    name = "redis"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "pfm",
        connect_timeout: float = 0.5,
        command_timeout: float = 0.5,
        password_file: str | None = None,
        sentinel_master: str | None = None,
        sentinels: Sequence[str] = (),
        cluster: bool = False,
        clock: Clock = time.time,
        max_members: int = 1000,
        max_inflight: int = 64,
        client: Redis | RedisCluster | None = None,
    ) -> None:
        if client is None:
            from services.redis import create_redis

            client = create_redis(
                url,
                connect_timeout=connect_timeout,
                command_timeout=command_timeout,
                password_file=password_file,
                sentinel_master=sentinel_master,
                sentinels=sentinels,
                cluster=cluster,
            )
        self.client: Any = client
        self.cluster = cluster
        self.prefix = prefix
        self.clock = clock
        self.max_members = max_members
        # Worst case of one call: connect + command, plus one fast retry.
        self.deadline = max(command_timeout * 3, connect_timeout + command_timeout * 2)
        # redis-py's pool refuses (MaxConnectionsError) past 100 connections instead of
        # waiting: queue here, inside the deadline, so a login burst is not a store error.
        self._inflight = asyncio.Semaphore(max_inflight)
        self._ready = not cluster
        self._ready_lock = asyncio.Lock()
        self._use_step = self.client.register_script(USE_STEP)
        self._add_failure = self.client.register_script(ADD_FAILURE)

    @classmethod
    def from_config(cls, config: RedisConfig, **options: Any) -> RedisState:
        """A store from the ``[redis]`` section (timeouts, password file, Sentinel, Cluster)."""
        return cls(
            config.url,
            prefix=config.prefix,
            connect_timeout=float(config.connect_timeout),
            command_timeout=float(config.command_timeout),
            password_file=config.password_file or None,
            sentinel_master=config.sentinel_master or None,
            sentinels=config.sentinels,
            cluster=config.cluster,
            **options,
        )

    def __repr__(self) -> str:
        return f"RedisState(prefix={self.prefix!r}, cluster={self.cluster})"

    # -- keys -----------------------------------------------------------------------------

    def _key(self, kind: str, subject: str) -> str:
        return f"{self.prefix}:authd:{kind}:{{{subject}}}"

    def _acl_prefix(self) -> str:
        return f"{self.prefix}:authd:acl:{{"

    # -- plumbing ---------------------------------------------------------------------------

    async def _prepare(self) -> None:
        """Cluster: discover the nodes and load the scripts once, before concurrent calls.

        (redis-py's async cluster client, hit by many concurrent first calls that each
        miss the script cache, was seen to break a connection mid-handshake.)
        """
        async with self._ready_lock:
            if not self._ready:
                await self.client.initialize()
                for script in (USE_STEP, ADD_FAILURE):
                    await self.client.script_load(script)
                self._ready = True

    async def _guarded(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``call()`` (started only once a slot is free) within the deadline."""
        try:
            async with asyncio.timeout(self.deadline), self._inflight:
                if not self._ready:
                    await self._prepare()
                return await call()
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateError(f"redis: {type(exc).__name__}: {_short(exc)}") from exc

    async def _many(self, calls: Sequence[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """Plain commands in one pipeline (Cluster: one concurrent call per key)."""
        if not calls:
            return []
        if self.cluster:

            async def concurrent() -> list[Any]:
                return list(await asyncio.gather(*(getattr(self.client, m)(*a) for m, a in calls)))

            return list(await self._guarded(concurrent))

        async def pipelined() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for method, args in calls:
                getattr(pipe, method)(*args)
            return list(await pipe.execute())

        return list(await self._guarded(pipelined))

    async def _scripts(
        self, script: Any, calls: Sequence[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        """One script call per key, pipelined (Cluster: concurrent)."""
        if self.cluster or len(calls) == 1:

            async def concurrent() -> list[Any]:
                return list(await asyncio.gather(*(script(keys=k, args=a) for k, a in calls)))

            return list(await self._guarded(concurrent))

        async def pipelined() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for keys, args in calls:
                await script(keys=keys, args=args, client=pipe)
            return list(await pipe.execute())

        return list(await self._guarded(pipelined))

    # -- TOTP replay guard ---------------------------------------------------------------------

    async def use_step(self, user: str, step: int, drift: int, ttl: float) -> bool:
        key = self._key("totp", user)
        (raw,) = await self._scripts(self._use_step, [([key], [step, drift, _ms(ttl)])])
        return int(raw) == 1

    async def drift(self, user: str) -> int | None:
        raw = await self._guarded(lambda: self.client.hget(self._key("totp", user), "d"))
        return None if raw is None else int(raw)

    # -- failure windows -------------------------------------------------------------------------

    async def add_failure(self, windows: Sequence[Window], member: str) -> list[int]:
        now = self.clock()
        calls = [
            (
                [self._key("fail", w.key)],
                [repr(now), repr(now - w.seconds), member, self.max_members, _ms(w.seconds)],
            )
            for w in windows
        ]
        return [int(n) for n in await self._scripts(self._add_failure, calls)]

    async def failure_counts(self, windows: Sequence[Window]) -> list[int]:
        now = self.clock()
        calls = [
            ("zcount", (self._key("fail", w.key), f"({now - w.seconds!r}", "+inf")) for w in windows
        ]
        return [int(n) for n in await self._many(calls)]

    async def clear_windows(self, keys: Sequence[str]) -> None:
        await self._many([("delete", (self._key("fail", k),)) for k in keys])

    # -- allow / deny entries ----------------------------------------------------------------------

    async def set_entry(self, entry: Entry) -> None:
        key = self._key("acl", entry.subject)
        left = entry.until - self.clock()
        if left <= 0:
            await self._guarded(lambda: self.client.delete(key))
            return
        value = f"{entry.action} {entry.until!r} {entry.reason}"
        await self._guarded(lambda: self.client.set(key, value, px=_ms(left)))

    def _decode(self, subject: str, raw: Any, now: float) -> Entry | None:
        if raw is None:
            return None
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        action, _, rest = text.partition(" ")
        until_text, _, reason = rest.partition(" ")
        try:
            until = float(until_text)
        except ValueError:
            return None
        if action not in ("allow", "block") or until <= now:
            return None
        return Entry(subject, "allow" if action == "allow" else "block", until, reason)

    async def get_entries(self, subjects: Sequence[str]) -> list[Entry | None]:
        raw = await self._many([("get", (self._key("acl", s),)) for s in subjects])
        now = self.clock()
        return [self._decode(s, r, now) for s, r in zip(subjects, raw, strict=True)]

    async def delete_entry(self, subject: str) -> bool:
        key = self._key("acl", subject)
        raw = await self._guarded(lambda: self.client.getdel(key))
        return self._decode(subject, raw, self.clock()) is not None

    async def entries(self) -> list[Entry]:
        head = self._acl_prefix()
        pattern = head.translate(_GLOB) + "*"

        async def scan() -> list[Any]:
            return [k async for k in self.client.scan_iter(match=pattern, count=1000)]

        try:
            async with asyncio.timeout(max(self.deadline, 10.0)):
                keys = await scan()
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateError(f"redis: {type(exc).__name__}: {_short(exc)}") from exc
        names = sorted({k.decode("utf-8", "replace") if isinstance(k, bytes) else k for k in keys})
        subjects = [n[len(head) : -1] for n in names if n.startswith(head) and n.endswith("}")]
        found = await self.get_entries(subjects)
        return [e for e in found if e is not None]

    async def ping(self) -> None:
        await self._guarded(self.client.ping)

    async def aclose(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()


def _ms(seconds: float) -> int:
    """A TTL in milliseconds, at least 1."""
    return max(1, math.ceil(seconds * 1000))


def _short(exc: BaseException) -> str:
    """An error text without URLs (which could hold a password)."""
    text = str(exc).split("\n", 1)[0][:200]
    if "://" in text:
        return "connection failed"
    return text or type(exc).__name__
