"""``pfm alias``: forward addresses (or a whole domain, ``@domain``) to other addresses."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from .. import common
from ..exitcodes import OK

EPILOG = """\
examples:
  pfm alias add info@example.org alice@example.org bob@example.org
  pfm alias add info@example.org carol@example.org --replace   # exactly these targets
  pfm alias add @example.org postmaster@example.org            # catch-all
  pfm alias add alice@example.org alice@example.org alice@backup.example  # keep a copy
  pfm alias list example.org --json
  pfm alias remove info@example.org bob@example.org            # one target
  pfm alias remove info@example.org                            # the whole alias
"""


def register(sub: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "alias",
        help="aliases (forwardings, catch-alls): add, list, show, remove",
        description="Manage aliases. SOURCE is an address or @DOMAIN (catch-all). Loops "
        "through other aliases are refused.",
        epilog=EPILOG,
        formatter_class=fmt,
    )
    ps = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = ps.add_parser(
        "add",
        help="add targets to an alias (creating it)",
        epilog="example:\n  pfm alias add info@example.org alice@example.org --dry-run",
        formatter_class=fmt,
    )
    a.add_argument("source", metavar="SOURCE", help="address or @domain (catch-all)")
    a.add_argument("targets", metavar="TARGET", nargs="+", help="where the mail goes")
    a.add_argument(
        "--replace", action="store_true", help="set exactly these targets (drop the others)"
    )
    common.add_output_flags(a)
    a.set_defaults(func=cmd_add)

    ls = ps.add_parser("list", help="list aliases, of one domain or all")
    ls.add_argument("domain", metavar="DOMAIN", nargs="?")
    common.add_output_flags(ls, change=False)
    ls.set_defaults(func=cmd_list)

    s = ps.add_parser("show", help="one alias and its targets")
    s.add_argument("source", metavar="SOURCE")
    common.add_output_flags(s, change=False)
    s.set_defaults(func=cmd_show)

    r = ps.add_parser(
        "remove",
        help="remove some targets of an alias, or the whole alias",
        epilog="examples:\n  pfm alias remove info@example.org bob@example.org\n"
        "  pfm alias remove @example.org",
        formatter_class=fmt,
    )
    r.add_argument("source", metavar="SOURCE")
    r.add_argument("targets", metavar="TARGET", nargs="*", help="only these targets")
    common.add_output_flags(r)
    r.set_defaults(func=cmd_remove)


def cmd_add(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    return common.run_change(
        args,
        environ,
        lambda d: d.add_alias(
            args.source, args.targets, replace=args.replace, dry_run=args.dry_run
        ),
    )


def _alias_data(al: Any) -> dict[str, Any]:
    from services.directory.model import public

    data = public(al)
    data["display_address"] = common.display_address(al.address)
    return data


def cmd_list(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with common.open_directory(args, environ, read_only=True) as d:
        rows = [_alias_data(al) for al in d.list_aliases(args.domain)]
    if args.json:
        common.print_json(rows)
        return OK
    common.print_table(
        ("SOURCE", "ACTIVE", "TARGETS"),
        [
            (
                common.human_address(r["address"]),
                common.fmt_value("active", r["active"]),
                ", ".join(common.display_address(t) for t in r["targets"]),
            )
            for r in rows
        ],
    )
    return OK


def cmd_show(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with common.open_directory(args, environ, read_only=True) as d:
        data = _alias_data(d.get_alias(args.source))
    if args.json:
        common.print_json(data)
        return OK
    data["address"] = common.human_address(data["address"])
    del data["display_address"]
    common.print_fields(data, ("address", "active", "targets"))
    return OK


def cmd_remove(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    return common.run_change(
        args,
        environ,
        lambda d: d.remove_alias(args.source, args.targets, dry_run=args.dry_run),
    )
