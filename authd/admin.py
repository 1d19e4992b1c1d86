"""pfm-authd's admin endpoint: a unix socket (mode 0600) speaking one JSON object per line.

Behind ``pfm auth block|unblock|blocks|status``. Works on the running state store, so with
Redis a block made on one host applies to the whole fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING, Any

import orjson

from services.logging import get_logger
from services.netserver import prepare_unix_path

from .state import StateError

if TYPE_CHECKING:
    from .server import AuthDaemon

log = get_logger("pfm.authd.admin")
MAX_LINE = 65536
MAX_SECONDS = 366 * 86400.0


class AdminServer:
    """Answers admin commands on a unix socket only root (or the daemon's user) can open."""

    def __init__(self, path: str, daemon: AuthDaemon) -> None:
        self.path = path
        self.daemon = daemon
        self.server: asyncio.base_events.Server | None = None

    def __repr__(self) -> str:
        return f"AdminServer(path={self.path!r})"

    async def start(self) -> None:
        """Bind the socket with mode 0600 from the start (umask, no chmod window)."""
        prepare_unix_path(self.path)
        old = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(
                self._client, path=self.path, limit=MAX_LINE
            )
        finally:
            os.umask(old)

    async def aclose(self) -> None:
        """Stop listening and remove the socket."""
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), 30)
                except (asyncio.LimitOverrunError, ValueError):
                    writer.write(b'{"ok": false, "error": "request too long"}\n')
                    break
                if not line:
                    break
                try:
                    req = orjson.loads(line)
                    if not isinstance(req, dict):
                        raise ValueError("expected a JSON object")
                    answer = await self.handle(req)
                except (ValueError, KeyError, TypeError) as exc:
                    answer = {"ok": False, "error": str(exc)}
                except StateError as exc:
                    answer = {"ok": False, "error": f"state store unavailable: {exc}"}
                writer.write(orjson.dumps(answer) + b"\n")
                await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        """Run one admin command."""
        cmd = req.get("cmd")
        guard = self.daemon.guard
        if cmd == "block":
            seconds = float(req.get("seconds", 3600))
            if not 0 < seconds <= MAX_SECONDS:
                raise ValueError("seconds: must be between 1 second and one year")
            reason = str(req.get("reason") or "admin")[:200]
            entry = await guard.block(str(req["key"]), seconds, reason)
            log.info("admin_block", key=entry.key, seconds=seconds, reason=reason)
            return {"ok": True, "entry": _entry(entry)}
        if cmd == "allow":
            seconds = float(req.get("seconds", 3600))
            if not 0 < seconds <= MAX_SECONDS:
                raise ValueError("seconds: must be between 1 second and one year")
            entry = await guard.allow(str(req["key"]), seconds, str(req.get("reason") or "admin"))
            log.info("admin_allow", key=entry.key, seconds=seconds)
            return {"ok": True, "entry": _entry(entry)}
        if cmd == "unblock":
            key = str(req["key"])
            removed = await guard.unblock(key)
            log.info("admin_unblock", key=key, removed=removed)
            return {"ok": True, "key": key, "removed": removed}
        if cmd == "blocks":
            found = await guard.blocks(known_devices=bool(req.get("known_devices")))
            return {"ok": True, "entries": [_entry(e) for e in found]}
        if cmd == "status":
            d = self.daemon
            net = d.net
            return {
                "ok": True,
                "state": d.cfg.state,
                "directory": d.config.directory.backend,
                "workers": d.verifier.workers,
                "cache_entries": len(d.verifier.cache),
                "connections": net.connection_count if net else 0,
                "listen": net.addresses if net else [],
            }
        raise ValueError(f"unknown command {cmd!r}: use block, allow, unblock, blocks or status")


def _entry(e: Any) -> dict[str, Any]:
    return {"key": e.key, "action": e.action, "until": e.until, "reason": e.reason}
