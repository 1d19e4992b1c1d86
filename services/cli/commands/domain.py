"""``pfm domain``: add, list, show, enable, disable and remove mail domains."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from .. import common
from ..exitcodes import OK

EPILOG = """\
examples:
  pfm domain add example.org --description "Example Inc." --default-quota 2G
  pfm domain add bücher.example --ensure      # stored as xn--bcher-kva.example
  pfm domain list --json
  pfm domain show example.org
  pfm domain disable example.org --dry-run
  pfm domain remove example.org --cascade --yes
"""


def register(sub: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "domain",
        help="mail domains: add, list, show, enable, disable, remove",
        description="Manage the mail domains of the directory (IDNs are stored as A-labels).",
        epilog=EPILOG,
        formatter_class=fmt,
    )
    ps = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = ps.add_parser(
        "add",
        help="add a domain",
        epilog="example:\n  pfm domain add example.org --max-mailboxes 50 --default-quota 1G",
        formatter_class=fmt,
    )
    a.add_argument("domain", metavar="DOMAIN")
    a.add_argument("--description", help="free text shown in listings")
    a.add_argument(
        "--max-mailboxes", type=common.count_arg, metavar="N", help="cap (0 = no cap, the default)"
    )
    a.add_argument(
        "--max-aliases", type=common.count_arg, metavar="N", help="cap (0 = no cap, the default)"
    )
    a.add_argument(
        "--default-quota",
        metavar="SIZE",
        help="quota of new mailboxes: 2G, 500M, 0 = unlimited (the default)",
    )
    a.add_argument("--disabled", action="store_true", help="add it disabled (receives no mail)")
    a.add_argument(
        "--ensure",
        action="store_true",
        help="idempotent: succeed if it exists, changing only the values given here",
    )
    common.add_output_flags(a)
    a.set_defaults(func=cmd_add)

    ls = ps.add_parser("list", help="list domains with mailbox counts")
    common.add_output_flags(ls, change=False)
    ls.set_defaults(func=cmd_list)

    s = ps.add_parser("show", help="one domain: settings, limits, counts")
    s.add_argument("domain", metavar="DOMAIN")
    common.add_output_flags(s, change=False)
    s.set_defaults(func=cmd_show)

    for name, active in (("enable", True), ("disable", False)):
        e = ps.add_parser(
            name,
            help=f"{name} a domain (a disabled domain receives no mail)",
            epilog=f"example:\n  pfm domain {name} example.org",
            formatter_class=fmt,
        )
        e.add_argument("domain", metavar="DOMAIN")
        common.add_output_flags(e)
        e.set_defaults(func=cmd_enable if active else cmd_disable)

    r = ps.add_parser(
        "remove",
        help="remove a domain (refused while it has mailboxes or aliases, unless --cascade)",
        epilog="examples:\n  pfm domain remove old.example\n"
        "  pfm domain remove old.example --cascade --dry-run",
        formatter_class=fmt,
    )
    r.add_argument("domain", metavar="DOMAIN")
    r.add_argument(
        "--cascade",
        action="store_true",
        help="also remove its mailboxes, aliases and alias domains",
    )
    r.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    common.add_output_flags(r)
    r.set_defaults(func=cmd_remove)


def cmd_add(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    return common.run_change(
        args,
        environ,
        lambda d: d.add_domain(
            args.domain,
            description=args.description,
            max_mailboxes=args.max_mailboxes,
            max_aliases=args.max_aliases,
            default_quota=common.size_value(args.default_quota, "default_quota"),
            active=False if args.disabled else None,
            ensure=args.ensure,
            dry_run=args.dry_run,
        ),
    )


def _domain_data(dom: Any) -> dict[str, Any]:
    from services.directory.model import public

    data = public(dom)
    data["display_name"] = common.display_domain(dom.name)
    return data


def cmd_list(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with common.open_directory(args, environ, read_only=True) as d:
        rows = []
        for dom in d.list_domains():
            data = _domain_data(dom)
            data["mailboxes"] = len(d.list_mailboxes(dom.name))
            data["aliases"] = len(d.list_aliases(dom.name))
            rows.append(data)
    if args.json:
        common.print_json(rows)
        return OK
    common.print_table(
        ("DOMAIN", "ACTIVE", "MAILBOXES", "ALIASES", "DEFAULT QUOTA", "DESCRIPTION"),
        [
            (
                common.human_domain(r["name"]),
                common.fmt_value("active", r["active"]),
                _of(r["mailboxes"], r["max_mailboxes"]),
                _of(r["aliases"], r["max_aliases"]),
                common.format_size(r["default_quota"]),
                r["description"],
            )
            for r in rows
        ],
    )
    return OK


def _of(n: int, cap: int) -> str:
    return f"{n}/{cap}" if cap else str(n)


def cmd_show(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with common.open_directory(args, environ, read_only=True) as d:
        dom = d.get_domain(args.domain)
        data = _domain_data(dom)
        data["mailboxes"] = len(d.list_mailboxes(dom.name))
        data["aliases"] = len(d.list_aliases(dom.name))
        data["alias_domains"] = sorted(
            a.name for a in d.list_alias_domains() if a.target == dom.name
        )
    if args.json:
        common.print_json(data)
        return OK
    data["name"] = common.human_domain(dom.name)
    del data["display_name"]
    common.print_fields(
        data,
        (
            "name",
            "active",
            "description",
            "mailboxes",
            "max_mailboxes",
            "aliases",
            "max_aliases",
            "alias_domains",
            "default_quota",
            "limits",
        ),
    )
    return OK


def cmd_enable(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    return common.run_change(
        args, environ, lambda d: d.update_domain(args.domain, active=True, dry_run=args.dry_run)
    )


def cmd_disable(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    return common.run_change(
        args, environ, lambda d: d.update_domain(args.domain, active=False, dry_run=args.dry_run)
    )


def cmd_remove(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with common.open_directory(args, environ) as d:
        if args.cascade and not args.dry_run and not args.yes and common.stdin_is_tty():
            preview = d.remove_domain(args.domain, cascade=True, dry_run=True)
            if len(preview.changes) > 1:
                common.confirm(
                    f"remove domain {common.human_domain(preview.object)} {preview.message}?",
                    assume_yes=False,
                )
        result = d.remove_domain(args.domain, cascade=args.cascade, dry_run=args.dry_run)
    return common.render_result(result, args.json)
