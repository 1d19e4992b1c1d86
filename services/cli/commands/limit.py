"""``pfm limit``: per-mailbox and per-domain overrides of pfm-policyd's sending limits."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from .. import common
from ..exitcodes import OK

EPILOG = """\
LIMIT is the name of a [policyd.limits.NAME] section of pfm.toml; WINDOW is COUNT/PERIOD.
A domain's override applies to each of its mailboxes that has none of its own.

examples:
  pfm limit set alice@example.org outbound 500/1d 50/1h
  pfm limit set example.org outbound 2000/1d
  pfm limit set newsletter@example.org outbound unlimited
  pfm limit show alice@example.org --json
  pfm limit clear alice@example.org outbound
  pfm limit clear example.org                  # every override of the domain
"""


def register(sub: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "limit",
        help="sending-limit overrides for a mailbox or domain: set, show, clear",
        description="Override pfm-policyd limits for one mailbox or for a domain's mailboxes.",
        epilog=EPILOG,
        formatter_class=fmt,
    )
    ps = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    s = ps.add_parser(
        "set",
        help="set the windows of one limit for SUBJECT",
        epilog="example:\n  pfm limit set alice@example.org outbound 500/1d 50/1h",
        formatter_class=fmt,
    )
    s.add_argument("subject", metavar="SUBJECT", help="a mailbox address or a domain")
    s.add_argument("limit", metavar="LIMIT", help="a limit name from [policyd.limits]")
    s.add_argument(
        "windows", metavar="WINDOW", nargs="+", help="COUNT/PERIOD (500/1d), or 'unlimited'"
    )
    common.add_output_flags(s)
    s.set_defaults(func=cmd_set)

    sh = ps.add_parser("show", help="the overrides of SUBJECT")
    sh.add_argument("subject", metavar="SUBJECT", help="a mailbox address or a domain")
    common.add_output_flags(sh, change=False)
    sh.set_defaults(func=cmd_show)

    c = ps.add_parser(
        "clear",
        help="remove one override (or all) of SUBJECT",
        epilog="example:\n  pfm limit clear alice@example.org outbound",
        formatter_class=fmt,
    )
    c.add_argument("subject", metavar="SUBJECT", help="a mailbox address or a domain")
    c.add_argument("limit", metavar="LIMIT", nargs="?", help="only this limit")
    common.add_output_flags(c)
    c.set_defaults(func=cmd_clear)


def cmd_set(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    windows: list[str] | str = args.windows[0] if len(args.windows) == 1 else list(args.windows)
    return common.run_change(
        args,
        environ,
        lambda d: d.set_limit(args.subject, args.limit, windows, dry_run=args.dry_run),
    )


def cmd_show(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with common.open_directory(args, environ, read_only=True) as d:
        subject, limits = d.show_limits(args.subject)
    data = {name: list(windows) for name, windows in sorted(limits.items())}
    if args.json:
        common.print_json({"subject": subject, "limits": data})
        return OK
    if not data:
        print(
            f"no overrides for {common.display_address(subject)}: "
            "the [policyd.limits] defaults apply"
        )
        return OK
    common.print_table(
        ("LIMIT", "WINDOWS"),
        [(name, ", ".join(w) if w else "unlimited") for name, w in data.items()],
    )
    return OK


def cmd_clear(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    return common.run_change(
        args,
        environ,
        lambda d: d.clear_limit(args.subject, args.limit, dry_run=args.dry_run),
    )
