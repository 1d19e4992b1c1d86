"""pfm-policyd on Redis: shared counters, fail modes, local fallback and recovery."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.config import build_config
from tests.fixtures.policy_requests import PolicyClient
from tests.integration.policyd_harness import address, metric, running
from tests.integration.redis_server import RedisServer


def redis_config(tmp: Path, server: RedisServer, limits: dict[str, object], **policyd: object):  # type: ignore[no-untyped-def]
    return build_config(
        {
            "redis": {
                "url": server.url,
                "prefix": "e2e",
                "command_timeout": 0.3,
                "connect_timeout": 0.3,
            },
            "policyd": {
                "listen": ["127.0.0.1:0"],
                "state": "redis",
                "admin_socket": str(tmp / "admin.sock"),
                "metrics_listen": "",
                "store_retry": 0.3,
                "limits": limits,
                **policyd,
            },
        }
    )


async def txn(c: PolicyClient, instance: str, **kw: str) -> tuple[str, str | None]:
    first = await c.ask(instance=instance, **kw)  # type: ignore[arg-type]
    if first != "DUNNO":
        return first, None
    return first, await c.ask(state="END-OF-MESSAGE", instance=instance, recipient_count=1, **kw)  # type: ignore[arg-type]


async def test_two_daemons_share_counters(tmp_path: Path, redis_server: RedisServer) -> None:
    """Two pfm-policyd on one Redis enforce one limit together."""
    limits = {"two": {"key": "sender", "windows": ["2/1h"]}}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        running(redis_config(tmp_path / "a", redis_server, limits)) as a,
        running(redis_config(tmp_path / "b", redis_server, limits)) as b,
    ):
        ca = await PolicyClient.connect(*address(a))
        cb = await PolicyClient.connect(*address(b))
        assert (await txn(ca, "1"))[1] == "DUNNO"
        assert (await txn(cb, "2"))[1] == "DUNNO"
        assert (await ca.ask(instance="3")).startswith("DEFER 4.7.1")
        assert (await cb.ask(instance="4")).startswith("DEFER 4.7.1")
        await ca.close()
        await cb.close()


async def test_outage_falls_back_then_recovers(tmp_path: Path, own_redis: RedisServer) -> None:
    """Redis stopped: open limits use the local fallback (still enforced); Redis back: used again."""
    limits = {"two": {"key": "sender", "windows": ["2/1h"]}}
    async with running(redis_config(tmp_path, own_redis, limits)) as svc:
        c = await PolicyClient.connect(*address(svc))
        assert (await txn(c, "1"))[1] == "DUNNO"
        own_redis.stop()
        # fallback counts from the outage on: two more fit, the third is deferred
        assert (await txn(c, "2"))[1] == "DUNNO"
        assert (await txn(c, "3"))[1] == "DUNNO"
        assert (await c.ask(instance="4")).startswith("DEFER 4.7.1")
        assert metric(svc, "pfm_policyd_store_up") == 0
        assert metric(svc, "pfm_policyd_fallback_decisions_total") >= 3
        assert metric(svc, "pfm_policyd_store_errors_total", {"store": "redis"}) >= 1
        own_redis.start()
        await asyncio.sleep(0.4)  # store_retry
        answers = []
        for i in range(20):
            answers.append(await c.ask(instance=f"r{i}", sender=f"new{i}@x.test"))
            if metric(svc, "pfm_policyd_store_up") == 1:
                break
            await asyncio.sleep(0.1)
        assert metric(svc, "pfm_policyd_store_up") == 1
        assert all(a == "DUNNO" for a in answers)
        await c.close()


async def test_fail_closed_limit_tempfails(tmp_path: Path, own_redis: RedisServer) -> None:
    """A limit with on_store_error = closed answers the tempfail action while Redis is down."""
    limits = {"strict": {"key": "sender", "windows": ["100/1h"], "on_store_error": "closed"}}
    async with running(redis_config(tmp_path, own_redis, limits)) as svc:
        c = await PolicyClient.connect(*address(svc))
        assert await c.ask(instance="1") == "DUNNO"
        own_redis.stop()
        answer = await c.ask(instance="2")
        assert answer.startswith("DEFER_IF_PERMIT 4.3.0")
        await c.close()


async def test_fail_open_without_fallback_is_dunno(tmp_path: Path, own_redis: RedisServer) -> None:
    """With fallback disabled, open limits answer DUNNO while Redis is down."""
    limits = {"one": {"key": "sender", "windows": ["1/1h"]}}
    async with running(redis_config(tmp_path, own_redis, limits, fallback=False)) as svc:
        c = await PolicyClient.connect(*address(svc))
        own_redis.stop()
        for i in range(3):
            assert await c.ask(instance=f"{i}") == "DUNNO"
        await c.close()


async def test_daemon_on_redis_cluster(tmp_path: Path, redis_cluster: object) -> None:
    """pfm-policyd with [redis] cluster = true enforces limits whose counters span slots."""
    url = redis_cluster.url  # type: ignore[attr-defined]
    limits = {
        "two": {"key": "sender", "windows": ["2/1h", "5/1d"]},
        "ip": {"key": "client_address", "unit": "recipients", "windows": ["100/1h"]},
    }
    cfg = build_config(
        {
            "redis": {
                "url": url,
                "cluster": True,
                "prefix": "cl",
                "command_timeout": 1,
                "connect_timeout": 1,
            },
            "policyd": {
                "listen": ["127.0.0.1:0"],
                "state": "redis",
                "admin_socket": str(tmp_path / "admin.sock"),
                "metrics_listen": "",
                "limits": limits,
            },
        }
    )
    async with running(cfg) as svc:
        c = await PolicyClient.connect(*address(svc))
        assert (await txn(c, "1"))[1] == "DUNNO"
        assert (await txn(c, "2"))[1] == "DUNNO"
        assert (await c.ask(instance="3")).startswith("DEFER 4.7.1")
        assert metric(svc, "pfm_policyd_store_errors_total", {"store": "redis"}) == 0
        await c.close()
