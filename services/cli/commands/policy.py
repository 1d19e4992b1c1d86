"""``pfm policy``: look at and adjust pfm-policyd's live counters through its admin socket."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from .. import common
from ..exitcodes import CONFIG, OK, CliError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "policy",
        help="pfm-policyd counters: usage, reset, exempt",
        description="Query and adjust the running pfm-policyd (memory or Redis state) "
        "through its admin socket ([policyd] admin_socket).",
    )
    p.add_argument("--socket", help="admin socket path (default: from the config file)")
    ps = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    u = ps.add_parser("usage", help="counters and remaining budget per limit and window for KEY")
    u.add_argument("key", metavar="KEY", help="a SASL user, sender, domain, client IP or prefix")
    u.add_argument("--limit", default="", help="only this limit")
    u.add_argument("--json", action="store_true", help="print JSON")
    u.set_defaults(func=cmd_usage)

    r = ps.add_parser("reset", help="forget the counters of KEY (all limits, or --limit)")
    r.add_argument("key", metavar="KEY")
    r.add_argument("--limit", default="", help="only this limit")
    r.add_argument("--dry-run", action="store_true", help="show which counters would be reset")
    r.add_argument("--json", action="store_true", help="print JSON")
    r.set_defaults(func=cmd_reset)

    e = ps.add_parser("exempt", help="exempt KEY from every limit for a while")
    e.add_argument("key", metavar="KEY")
    e.add_argument(
        "--for", dest="duration", default="1h", help="how long, e.g. 30m, 2h, 1d (0 ends it)"
    )
    e.add_argument("--dry-run", action="store_true", help="show what would be done")
    e.add_argument("--json", action="store_true", help="print JSON")
    e.set_defaults(func=cmd_exempt)

    x = ps.add_parser("exemptions", help="list active exemptions")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_exemptions)

    s = ps.add_parser("status", help="daemon status: store, limits, connections")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_status)


def _socket_path(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    if args.socket:
        return str(args.socket)
    from services.config import ConfigError, config_path, load_config

    try:
        cfg = load_config(config_path(args.config, environ))
    except ConfigError as exc:
        raise CliError(f"invalid configuration: {exc}", CONFIG) from None
    if not cfg.policyd.admin_socket:
        raise CliError("[policyd] admin_socket is empty: the admin endpoint is disabled", CONFIG)
    return cfg.policyd.admin_socket


def call(path: str, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one admin request to pfm-policyd and return the decoded answer."""
    return common.admin_call("pfm-policyd", path, request, timeout)


def _fmt_window(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def cmd_usage(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    ans = call(_socket_path(args, environ), {"cmd": "usage", "key": args.key, "limit": args.limit})
    if args.json:
        print(json.dumps(ans, indent=2))
        return OK
    rows = ans["usage"]
    if ans.get("exempt_for_s"):
        print(f"{ans['subject']} is exempt for another {int(ans['exempt_for_s'])} s")
    if not rows:
        print(f"no limit counts {ans['subject']!r}")
        return OK
    header = ("LIMIT", "UNIT", "WINDOW", "USED", "PENDING", "MAX", "REMAINING", "MODE")
    table = [header] + [
        (
            r["limit"],
            r["unit"],
            _fmt_window(r["window_s"]),
            str(r["used"]),
            str(r["pending"]),
            str(r["max"]),
            str(r["remaining"]),
            r["mode"],
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return OK


def cmd_reset(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    path = _socket_path(args, environ)
    if args.dry_run:
        ans = call(path, {"cmd": "usage", "key": args.key, "limit": args.limit})
        if args.json:
            print(json.dumps({"dry_run": True, "would_reset": ans["usage"]}, indent=2))
        else:
            for r in ans["usage"]:
                print(f"would reset {r['limit']} {_fmt_window(r['window_s'])} (used {r['used']})")
        return OK
    ans = call(path, {"cmd": "reset", "key": args.key, "limit": args.limit})
    print(json.dumps(ans) if args.json else f"reset {ans['reset']} counters of {ans['subject']}")
    return OK


def cmd_exempt(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from services.config import Duration

    try:
        seconds = float(Duration.parse(args.duration))
    except ValueError as exc:
        raise CliError(str(exc), 2) from None
    path = _socket_path(args, environ)
    if args.dry_run:
        print(f"would exempt {args.key.lower()} for {seconds:g} s")
        return OK
    ans = call(path, {"cmd": "exempt", "key": args.key, "seconds": seconds})
    if args.json:
        print(json.dumps(ans))
    elif seconds:
        print(f"{ans['subject']} exempt from all limits for {seconds:g} s")
    else:
        print(f"exemption of {ans['subject']} removed")
    return OK


def cmd_exemptions(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    ans = call(_socket_path(args, environ), {"cmd": "exemptions"})
    if args.json:
        print(json.dumps(ans["exemptions"], indent=2))
    else:
        for subject, left in sorted(ans["exemptions"].items()):
            print(f"{subject}  {int(left)} s left")
    return OK


def cmd_status(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    ans = call(_socket_path(args, environ), {"cmd": "status"})
    if args.json:
        print(json.dumps(ans, indent=2))
    else:
        print(f"state: {ans['state']} ({'up' if ans['store_up'] else 'DOWN, using fallback'})")
        print(f"listen: {', '.join(ans['listen'])}  connections: {ans['connections']}")
        print(f"limits: {', '.join(ans['limits']) or '(none)'}")
    return OK
