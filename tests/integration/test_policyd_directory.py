"""pfm-policyd enforces per-mailbox and per-domain overrides kept in a real SQLite directory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from policy.server import PolicyService
from services.config import Config, build_config
from services.directory.ops import Directory
from services.directory.sqlite import SqliteBackend
from tests.fixtures.policy_requests import PolicyClient
from tests.integration.policyd_harness import address, running

pytestmark = pytest.mark.integration

HASH = "{PLAIN}not-used-here"
LIMITS = {
    "user_messages": {"key": "sasl_username", "windows": ["5/1h"], "applies_to": "authenticated"}
}


def config(tmp: Path, db: Path, refresh: str = "100ms") -> Config:
    return build_config(
        {
            "directory": {"path": str(db), "maps_group": ""},
            "policyd": {
                "listen": ["127.0.0.1:0"],
                "admin_socket": str(tmp / "admin.sock"),
                "metrics_listen": "",
                "directory_refresh": refresh,
                "limits": LIMITS,
            },
        }
    )


def directory(db: Path) -> tuple[Directory, SqliteBackend]:
    backend = SqliteBackend(str(db), maps_group="")
    d = Directory(
        backend,
        actor="test",
        known_limits=build_config({"policyd": {"limits": LIMITS}}).policyd.limits,
    )
    return d, backend


async def messages_accepted(c: PolicyClient, user: str, n: int, tag: str) -> int:
    """Send up to n one-recipient messages as user; how many were accepted."""
    accepted = 0
    for i in range(n):
        inst = f"{tag}{i}"
        a = await c.ask(instance=inst, user=user, sender=user, recipient="x@elsewhere.test")
        if a != "DUNNO":
            break
        await c.ask(
            state="END-OF-MESSAGE", instance=inst, user=user, sender=user, recipient_count=1
        )
        accepted += 1
    return accepted


async def wait_loaded(svc: PolicyService, subjects: int) -> None:
    """Until the service has read `subjects` overrides from the directory."""
    for _ in range(200):
        if sum(len(v) for v in svc.dir_found.values()) == subjects:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"directory overrides not loaded: {svc.dir_found}")


async def test_directory_overrides_are_enforced_and_refreshed(tmp_path: Path) -> None:
    """A mailbox override, a domain default and a later change all take effect within the refresh."""
    db = tmp_path / "directory.db"
    d, backend = directory(db)
    d.add_domain("example.org")
    d.add_domain("example.com")
    for addr in ("alice@example.org", "bob@example.org", "carol@example.com"):
        d.add_mailbox(addr, password_hash=HASH)
    d.set_limit("alice@example.org", "user_messages", "2/1h")
    d.set_limit("example.com", "user_messages", "unlimited")
    async with running(config(tmp_path, db)) as svc:
        await wait_loaded(svc, 2)
        c = await PolicyClient.connect(*address(svc))
        assert await messages_accepted(c, "alice@example.org", 4, "a") == 2
        assert await messages_accepted(c, "bob@example.org", 7, "b") == 5
        assert await messages_accepted(c, "carol@example.com", 8, "c") == 8
        d.set_limit("bob@example.org", "user_messages", "unlimited")
        await wait_loaded(svc, 3)
        assert await messages_accepted(c, "bob@example.org", 2, "b2") == 2
        # the directory going away keeps the overrides last read, never the stricter defaults
        backend.close()
        db.unlink()
        await asyncio.sleep(0.3)
        assert await messages_accepted(c, "carol@example.com", 2, "c2") == 2
        assert await messages_accepted(c, "alice@example.org", 1, "a2") == 0
        await c.close()


async def test_no_directory_means_config_limits_only(tmp_path: Path) -> None:
    """Without a directory file pfm-policyd runs on pfm.toml's limits and creates nothing."""
    db = tmp_path / "missing.db"
    async with running(config(tmp_path, db)) as svc:
        await asyncio.sleep(0.3)
        c = await PolicyClient.connect(*address(svc))
        assert await messages_accepted(c, "dave@example.org", 7, "d") == 5
        await c.close()
    assert not db.exists()
