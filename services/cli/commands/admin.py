"""``pfm admin``: who may administer the directory (global, or some domains)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from .. import common
from ..exitcodes import OK

EPILOG = """\
examples:
  pfm admin add alice --role global
  pfm admin add bob --role domain --domain example.org --domain example.net
  pfm admin list --json
  pfm admin remove bob --dry-run
"""


def register(sub: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "admin",
        help="directory administrators: add, list, remove",
        description="Manage administrators (used by the REST API and web console).",
        epilog=EPILOG,
        formatter_class=fmt,
    )
    ps = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = ps.add_parser(
        "add",
        help="add an administrator",
        epilog="example:\n  pfm admin add bob --role domain --domain example.org",
        formatter_class=fmt,
    )
    a.add_argument("name", metavar="NAME", help="login name")
    a.add_argument("--role", choices=("global", "domain"), required=True)
    a.add_argument(
        "--domain",
        dest="domains",
        action="append",
        default=[],
        metavar="DOMAIN",
        help="a domain a domain admin manages (repeat for more)",
    )
    a.add_argument(
        "--ensure", action="store_true", help="idempotent: succeed if it exists, updating it"
    )
    common.add_output_flags(a)
    a.set_defaults(func=cmd_add)

    ls = ps.add_parser("list", help="list administrators")
    common.add_output_flags(ls, change=False)
    ls.set_defaults(func=cmd_list)

    r = ps.add_parser("remove", help="remove an administrator")
    r.add_argument("name", metavar="NAME")
    common.add_output_flags(r)
    r.set_defaults(func=cmd_remove)


def cmd_add(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    return common.run_change(
        args,
        environ,
        lambda d: d.add_admin(
            args.name,
            role=args.role,
            domains=args.domains,
            ensure=args.ensure,
            dry_run=args.dry_run,
        ),
    )


def cmd_list(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from services.directory.model import public

    with common.open_directory(args, environ, read_only=True) as d:
        rows = [public(a) for a in d.list_admins()]
    if args.json:
        common.print_json(rows)
        return OK
    common.print_table(
        ("NAME", "ROLE", "ACTIVE", "DOMAINS"),
        [
            (
                r["name"],
                r["role"],
                common.fmt_value("active", r["active"]),
                ", ".join(common.display_domain(x) for x in r["domains"]) or "-",
            )
            for r in rows
        ],
    )
    return OK


def cmd_remove(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    return common.run_change(
        args, environ, lambda d: d.remove_admin(args.name, dry_run=args.dry_run)
    )
