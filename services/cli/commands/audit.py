"""``pfm audit``: who changed what in the directory, and when (never any secret)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from .. import common
from ..exitcodes import INVALID, OK, CliError

EPILOG = """\
examples:
  pfm audit                         # the latest 50 changes
  pfm audit --since 2h
  pfm audit --since 2026-01-31 --limit 500 --json
"""

_SECRET_KEYS = frozenset({"password_hash", "totp_secret", "password", "secret"})


def register(sub: Any) -> None:
    p = sub.add_parser(
        "audit",
        help="the directory's audit log: who changed what, when",
        description="Show the audit log of directory changes: time, actor, action, object "
        "and the fields changed (before -> after). Secrets are never recorded.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--since", metavar="WHEN", help="a duration ago (30m, 2h, 7d) or an ISO date/time"
    )
    p.add_argument(
        "--limit",
        type=common.count_arg,
        default=50,
        metavar="N",
        help="at most N entries, the most recent (default 50, 0 = all)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_audit)


def _clean(data: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if data is None:
        return None
    return {k: v for k, v in data.items() if k not in _SECRET_KEYS}


def summary(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> str:
    """What an audit entry changed, in one line."""
    if before is None and after is not None:
        return "created"
    if after is None and before is not None:
        return "removed"
    parts = [
        f"{k}: {common.fmt_value(k, old)} -> {common.fmt_value(k, new)}"
        for k, old, new in common.diff_fields(before, after)
    ]
    return "; ".join(parts) or "-"


def cmd_audit(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    import time

    since = 0.0
    if args.since:
        try:
            since = common.parse_since(args.since, time.time())
        except ValueError as exc:
            raise CliError(str(exc), INVALID) from None
    with common.open_directory(args, environ, read_only=True) as d:
        entries = d.audit_log(since, args.limit)
    if args.json:
        common.print_json(
            [
                {
                    "id": e.id,
                    "ts": e.ts,
                    "actor": e.actor,
                    "action": e.action,
                    "object": e.object,
                    "before": _clean(e.before),
                    "after": _clean(e.after),
                }
                for e in entries
            ]
        )
        return OK
    common.print_table(
        ("TIME", "ACTOR", "ACTION", "OBJECT", "CHANGE"),
        [
            (
                common.fmt_time(e.ts),
                e.actor,
                e.action,
                common.display_address(e.object),
                summary(_clean(e.before), _clean(e.after)),
            )
            for e in entries
        ],
    )
    return OK
