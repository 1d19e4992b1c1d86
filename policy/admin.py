"""pfm-policyd's admin endpoint: a unix socket speaking one JSON object per line.

Behind ``pfm policy usage|reset|exempt|exemptions``. Works on whichever store is running,
so with Redis an exemption or reset made on one host applies to the whole fleet.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from services.adminsock import AdminSocket
from services.logging import get_logger

from .rules import Rule
from .store import Counter, StoreError

if TYPE_CHECKING:
    from .server import PolicyService

log = get_logger("pfm.policyd.admin")


def subject_kinds(subject: str) -> set[str]:
    """Which key parts a subject typed by an admin can stand for."""
    try:
        ipaddress.ip_address(subject)
        return {"client_address"}
    except ValueError:
        pass
    if "/" in subject:
        try:
            ipaddress.ip_network(subject, strict=False)
            return {"client_prefix"}
        except ValueError:
            pass
    if subject in ("*", "global"):
        return {"global"}
    if "@" in subject:
        return {"sasl_username", "sender", "recipient"}
    return {"sasl_username", "sender_domain", "recipient_domain"}


def counters_for(
    rules: tuple[Rule, ...], subject: str, limit: str = ""
) -> list[tuple[Rule, Counter]]:
    """The counters a subject has under every matching limit (all windows)."""
    kinds = subject_kinds(subject)
    if subject == "global":
        subject = "*"
    out: list[tuple[Rule, Counter]] = []
    for rule in rules:
        if limit and rule.name != limit:
            continue
        parts = rule.cfg.key
        if "|" in subject:
            if len(parts) != subject.count("|") + 1:
                continue
        elif len(parts) != 1 or (parts[0] not in kinds and not limit):
            continue
        out.extend((rule, c) for c, _ in rule.counters(subject))
    return out


class AdminServer(AdminSocket):
    """The admin socket of this daemon (see :mod:`services.adminsock`)."""

    unavailable = (StoreError,)

    def __init__(self, path: str, service: PolicyService) -> None:
        super().__init__(path)
        self.service = service

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        """Run one admin command."""
        cmd = req.get("cmd")
        service = self.service
        store = service.active_store()
        rules = service.engine.rules
        if cmd == "usage":
            subject = str(req["key"]).strip().lower()
            pairs = counters_for(rules, subject, str(req.get("limit", "")))
            usage = await store.usage([c for _, c in pairs]) if pairs else []
            rows = []
            for (rule, c), (used, pending) in zip(pairs, usage, strict=True):
                rows.append(
                    {
                        "limit": rule.name,
                        "key": "+".join(rule.cfg.key),
                        "subject": subject,
                        "unit": rule.cfg.unit,
                        "window_s": c.window,
                        "max": c.limit,
                        "used": used,
                        "pending": pending,
                        "remaining": max(c.limit - used - pending, 0),
                        "mode": rule.cfg.mode,
                    }
                )
            exempt = service.engine.exempt.get(subject)
            return {"ok": True, "subject": subject, "usage": rows, "exempt_for_s": exempt}
        if cmd == "reset":
            subject = str(req["key"]).strip().lower()
            pairs = counters_for(rules, subject, str(req.get("limit", "")))
            await store.reset([c for _, c in pairs])
            log.info("admin_reset", subject=subject, counters=len(pairs))
            return {"ok": True, "subject": subject, "reset": len(pairs)}
        if cmd == "exempt":
            subject = str(req["key"]).strip().lower()
            seconds = float(req.get("seconds", 3600))
            if seconds < 0 or seconds > 366 * 86400:
                raise ValueError("seconds must be between 0 and one year")
            await store.set_exemption(subject, seconds)
            service.engine.exempt = await store.exemptions()
            log.info("admin_exempt", subject=subject, seconds=seconds)
            return {"ok": True, "subject": subject, "seconds": seconds}
        if cmd == "exemptions":
            return {"ok": True, "exemptions": await store.exemptions()}
        if cmd == "status":
            net = service.net
            return {
                "ok": True,
                "state": service.cfg.state,
                "store_up": not service.store_down_until,
                "limits": [r.name for r in rules],
                "connections": net.connection_count if net else 0,
                "listen": net.addresses if net else [],
            }
        raise ValueError(f"unknown command {cmd!r}: use usage, reset, exempt, exemptions or status")
