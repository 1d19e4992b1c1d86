"""Redis state store: the same sliding-window log, one Lua script call per operation.

Keys are namespaced (``{prefix}:rl:{<counter key>}:<window>:l|w|s``), hash-tagged per counter so the
keys of a counter share a Cluster slot, and every write refreshes their TTL, so nothing
grows without bound. The caller's clock is passed into the script. Any Redis failure
becomes :class:`~policy.store.StoreError` within the command timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from services.resp import ReplyError as RespReplyError
from services.resp import RespClient, RespError
from services.resp import supported as resp_supported

from .store import Charge, Clock, Counter, Outcome, StoreError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

SCRIPT = resources.files("policy").joinpath("ratelimit.lua").read_text(encoding="utf-8")


class RedisStore:
    """Counters in Redis, shared by every pfm-policyd of a fleet."""

    name = "redis"
    sync = False

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "pfm",
        connect_timeout: float = 0.5,
        command_timeout: float = 0.5,
        clock: Clock = time.time,
        client: Redis | RedisCluster | None = None,
        password: str | None = None,
        fast: bool = True,
        cluster: bool = False,
    ) -> None:
        if client is None:
            from services.redis import create_redis

            made: Any = create_redis(
                url, connect_timeout=connect_timeout, command_timeout=command_timeout
            )
            if password:
                made.connection_pool.connection_kwargs["password"] = password
            client = made
        self.client: Any = client
        self.cluster = cluster
        # The decision path uses the lean pipelined client; admin calls use redis-py.
        self.fast: RespClient | None = None
        if fast and not cluster and resp_supported(url):
            self.fast = RespClient(
                url,
                password=password,
                connect_timeout=connect_timeout,
                command_timeout=command_timeout,
            )
        self.sha = hashlib.sha1(SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis' script id
        self.prefix = prefix
        self.clock = clock
        self.deadline = max(command_timeout * 3, connect_timeout + command_timeout * 2)
        self.script = client.register_script(SCRIPT)
        self._exempt_key = f"{prefix}:ex"

    def _keys(self, c: Counter) -> tuple[str, str, str]:
        """The counter's log, weights and sum keys; the counter key is the hash tag."""
        base = f"{self.prefix}:rl:{{{c.key}}}:{c.window:g}"
        return f"{base}:l", f"{base}:w", f"{base}:s"

    async def _call(self, keys: list[str], args: list[Any]) -> Any:
        fast = self.fast
        if fast is not None:
            try:
                try:
                    return await fast.execute("EVALSHA", self.sha, len(keys), *keys, *args)
                except RespReplyError as exc:
                    if not str(exc).startswith("NOSCRIPT"):
                        raise
                    await fast.execute("SCRIPT", "LOAD", SCRIPT)
                    return await fast.execute("EVALSHA", self.sha, len(keys), *keys, *args)
            except RespError as exc:
                raise StoreError(f"redis: {_short(exc)}") from exc
        try:
            async with asyncio.timeout(self.deadline):
                return await self.script(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {_short(exc)}") from exc

    def _encode(
        self,
        op: str,
        charges: Sequence[Charge],
        release: Sequence[tuple[Counter, str]],
        ttl: float,
        counters: Sequence[Counter] = (),
    ) -> tuple[list[str], list[Any]]:
        index: dict[Counter, int] = {}
        keys: list[str] = []
        cargs: list[Any] = []

        def idx(c: Counter) -> int:
            i = index.get(c)
            if i is None:
                i = index[c] = len(index) + 1
                keys.extend(self._keys(c))
                cargs.extend((repr(float(c.window)), c.limit))
            return i

        for c in counters:
            idx(c)
        charge_args: list[Any] = []
        for ch in charges:
            charge_args.extend((idx(ch.counter), ch.weight, ch.member, 1 if ch.enforce else 0))
        rel_args: list[Any] = []
        for c, member in release:
            rel_args.extend((idx(c), member))
        args = [op, repr(self.clock()), repr(float(ttl)), len(index), *cargs]
        args += [len(charges), *charge_args, len(release), *rel_args]
        return keys, args

    @staticmethod
    def _outcomes(raw: list[Any]) -> list[Outcome]:
        return [Outcome(int(raw[i]), raw[i + 1] == 1) for i in range(1, len(raw), 3)]

    async def reserve(self, charges: Sequence[Charge], ttl: float) -> list[Outcome]:
        if not charges:
            return []
        return await self._batch("reserve", charges, (), ttl)

    async def commit(
        self, charges: Sequence[Charge], release: Sequence[tuple[Counter, str]]
    ) -> list[Outcome]:
        if not charges and not release:
            return []
        return await self._batch("commit", charges, release, 0)

    async def release(self, members: Sequence[tuple[Counter, str]]) -> None:
        if members:
            await self._batch("release", (), members, 0)

    async def _batch(
        self,
        op: str,
        charges: Sequence[Charge],
        release: Sequence[tuple[Counter, str]],
        ttl: float,
    ) -> list[Outcome]:
        """One script call; on Redis Cluster one per counter (slot), kept all-or-nothing.

        In Cluster mode the counters of a decision live in different slots, so one script
        cannot see them all: each counter is checked and added on its own, and when any
        enforce charge was refused, what the other counters added is released again (a
        moment of extra strictness, never extra leniency).
        """
        if not self.cluster:
            keys, args = self._encode(op, charges, release, ttl)
            raw = await self._call(keys, args)
            return self._outcomes(raw) if op != "release" else []
        groups: dict[
            tuple[str, float], tuple[list[int], list[Charge], list[tuple[Counter, str]]]
        ] = {}
        for idx, ch in enumerate(charges):
            g = groups.setdefault((ch.counter.key, ch.counter.window), ([], [], []))
            g[0].append(idx)
            g[1].append(ch)
        for c, member in release:
            groups.setdefault((c.key, c.window), ([], [], []))[2].append((c, member))
        calls = [self._call(*self._encode(op, g[1], g[2], ttl)) for g in groups.values()]
        results = await asyncio.gather(*calls)
        if op == "release":
            return []
        outs: list[Outcome] = [Outcome(0, True)] * len(charges)
        ok = True
        added: list[tuple[Counter, str]] = []
        for g, raw in zip(groups.values(), results, strict=True):
            if not g[0]:
                continue
            if raw[0] != 1:
                ok = False
            for j, idx in enumerate(g[0]):
                outs[idx] = Outcome(int(raw[1 + 3 * j]), raw[2 + 3 * j] == 1)
                if raw[3 + 3 * j] == 1:
                    added.append((charges[idx].counter, charges[idx].member))
        if not ok and added:
            await self._batch("release", (), added, 0)
        return outs

    async def usage(self, counters: Sequence[Counter]) -> list[tuple[int, int]]:
        if not counters:
            return []
        if self.cluster:
            out = []
            for c in counters:  # one slot per counter
                keys, args = self._encode("usage", (), (), 0, [c])
                raw = await self._call(keys, args)
                out.append((int(raw[0]), int(raw[1])))
            return out
        keys, args = self._encode("usage", (), (), 0, counters)
        raw = await self._call(keys, args)
        return [(int(raw[i]), int(raw[i + 1])) for i in range(0, len(raw), 2)]

    async def reset(self, counters: Sequence[Counter]) -> None:
        for c in counters:  # keys of one counter share a slot
            await self._plain("delete", *self._keys(c))

    async def set_exemption(self, subject: str, seconds: float) -> None:
        if seconds <= 0:
            await self._plain("hdel", self._exempt_key, subject)
            return
        until = self.clock() + seconds
        await self._plain("hset", self._exempt_key, subject, repr(until))
        ttl_ms = int(seconds * 1000) + 60_000
        current = await self._plain("pttl", self._exempt_key)
        if current is None or int(current) < ttl_ms:
            await self._plain("pexpire", self._exempt_key, ttl_ms)

    async def exemptions(self) -> dict[str, float]:
        raw = await self._plain("hgetall", self._exempt_key)
        now = self.clock()
        out: dict[str, float] = {}
        stale = []
        for k, v in (raw or {}).items():
            subject = k.decode() if isinstance(k, bytes) else str(k)
            left = float(v) - now
            if left > 0:
                out[subject] = left
            else:
                stale.append(subject)
        if stale:
            await self._plain("hdel", self._exempt_key, *stale)
        return out

    async def _plain(self, method: str, *args: Any) -> Any:
        try:
            async with asyncio.timeout(self.deadline):
                return await getattr(self.client, method)(*args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {_short(exc)}") from exc

    async def ping(self) -> None:
        await self._plain("ping")

    async def aclose(self) -> None:
        if self.fast is not None:
            await self.fast.aclose()
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()


def _short(exc: BaseException) -> str:
    """An error text without URLs (which could hold a password)."""
    text = str(exc).split("\n", 1)[0][:200]
    if "://" in text:
        return "connection failed"
    return text or type(exc).__name__
