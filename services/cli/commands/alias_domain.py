"""``pfm alias-domain``: make every address of one domain an alias of the same user elsewhere."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from .. import common
from ..exitcodes import OK

EPILOG = """\
examples:
  pfm alias-domain add example.net example.org   # user@example.net -> user@example.org
  pfm alias-domain list --json
  pfm alias-domain remove example.net --dry-run
"""


def register(sub: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "alias-domain",
        help="alias domains: add, list, remove",
        description="Manage alias domains: mail to USER@ALIAS goes to USER@TARGET. TARGET "
        "must be a real domain of the directory.",
        epilog=EPILOG,
        formatter_class=fmt,
    )
    ps = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = ps.add_parser(
        "add",
        help="add (or re-point) an alias domain",
        epilog="example:\n  pfm alias-domain add example.net example.org",
        formatter_class=fmt,
    )
    a.add_argument("alias", metavar="ALIAS", help="the alias domain")
    a.add_argument("target", metavar="TARGET", help="the real domain it stands for")
    common.add_output_flags(a)
    a.set_defaults(func=cmd_add)

    ls = ps.add_parser("list", help="list alias domains")
    common.add_output_flags(ls, change=False)
    ls.set_defaults(func=cmd_list)

    r = ps.add_parser(
        "remove",
        help="remove an alias domain",
        epilog="example:\n  pfm alias-domain remove example.net",
        formatter_class=fmt,
    )
    r.add_argument("alias", metavar="ALIAS")
    common.add_output_flags(r)
    r.set_defaults(func=cmd_remove)


def cmd_add(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    return common.run_change(
        args,
        environ,
        lambda d: d.add_alias_domain(args.alias, args.target, dry_run=args.dry_run),
    )


def cmd_list(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from services.directory.model import public

    with common.open_directory(args, environ, read_only=True) as d:
        rows = []
        for ad in d.list_alias_domains():
            data = public(ad)
            data["display_name"] = common.display_domain(ad.name)
            data["display_target"] = common.display_domain(ad.target)
            rows.append(data)
    if args.json:
        common.print_json(rows)
        return OK
    common.print_table(
        ("ALIAS DOMAIN", "TARGET", "ACTIVE"),
        [
            (
                common.human_domain(r["name"]),
                common.human_domain(r["target"]),
                common.fmt_value("active", r["active"]),
            )
            for r in rows
        ],
    )
    return OK


def cmd_remove(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    return common.run_change(
        args, environ, lambda d: d.remove_alias_domain(args.alias, dry_run=args.dry_run)
    )
