"""pfm-authd's admin endpoint: a unix socket (mode 0600) speaking one JSON object per line.

Behind ``pfm auth block|unblock|blocks|status``. Works on the running state store, so with
Redis a block made on one host applies to the whole fleet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from services.adminsock import AdminSocket
from services.logging import get_logger

from .state import StateError

if TYPE_CHECKING:
    from .server import AuthDaemon

log = get_logger("pfm.authd.admin")
MAX_SECONDS = 366 * 86400.0


class AdminServer(AdminSocket):
    """The admin socket of this daemon (see :mod:`services.adminsock`)."""

    unavailable = (StateError,)

    def __init__(self, path: str, daemon: AuthDaemon) -> None:
        super().__init__(path)
        self.daemon = daemon

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
