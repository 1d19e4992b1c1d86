"""``pfm mailbox``: add, list, show, passwd, enable, disable, remove and quota of mailboxes.

Passwords never come from the command line: a twice-asked prompt on a terminal,
``--password-file FILE`` (first line) or ``--password-stdin``; an existing hash can be
imported with ``--password-hash-file``. No password or hash is ever printed.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from .. import common
from ..exitcodes import OK

EPILOG = """\
examples:
  pfm mailbox add alice@example.org --name "Alice" --quota 2G          # asks twice
  pfm mailbox add bob@example.org --password-file /root/bob.pw --ensure
  printf '%s\\n' "$PW" | pfm mailbox add carol@example.org --password-stdin
  pfm mailbox add dave@example.org --password-hash-file dave.hash      # import {SCHEME}...
  pfm mailbox list example.org --json
  pfm mailbox passwd alice@example.org
  pfm mailbox quota alice@example.org 5G
  pfm mailbox disable alice@example.org --dry-run
"""


def register(sub: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "mailbox",
        help="mailboxes: add, list, show, passwd, enable, disable, remove, quota",
        description="Manage mailboxes. Addresses are stored lower-case with the domain as "
        "A-label. Passwords are never taken as command-line arguments.",
        epilog=EPILOG,
        formatter_class=fmt,
    )
    ps = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = ps.add_parser(
        "add",
        help="add a mailbox",
        epilog="examples:\n  pfm mailbox add alice@example.org --quota 2G\n"
        "  pfm mailbox add bob@example.org --password-file bob.pw --ensure",
        formatter_class=fmt,
    )
    a.add_argument("address", metavar="ADDRESS")
    a.add_argument("--name", help="display name")
    a.add_argument(
        "--quota", metavar="SIZE", help="2G, 500M, 0 = unlimited (default: the domain's)"
    )
    common.add_password_flags(a, allow_hash=True)
    a.add_argument(
        "--disabled", action="store_true", help="add it disabled (no login, no delivery)"
    )
    a.add_argument(
        "--ensure",
        action="store_true",
        help="idempotent: succeed if it exists, bringing it to these values",
    )
    common.add_output_flags(a)
    a.set_defaults(func=cmd_add)

    ls = ps.add_parser("list", help="list mailboxes, of one domain or all")
    ls.add_argument("domain", metavar="DOMAIN", nargs="?")
    common.add_output_flags(ls, change=False)
    ls.set_defaults(func=cmd_list)

    s = ps.add_parser("show", help="one mailbox (never its password hash)")
    s.add_argument("address", metavar="ADDRESS")
    common.add_output_flags(s, change=False)
    s.set_defaults(func=cmd_show)

    pw = ps.add_parser(
        "passwd",
        help="set a new password (revokes the mailbox's app passwords)",
        epilog="examples:\n  pfm mailbox passwd alice@example.org\n"
        "  pfm mailbox passwd alice@example.org --password-file new.pw",
        formatter_class=fmt,
    )
    pw.add_argument("address", metavar="ADDRESS")
    common.add_password_flags(pw, allow_hash=False)
    common.add_output_flags(pw)
    pw.set_defaults(func=cmd_passwd)

    for name, active in (("enable", True), ("disable", False)):
        e = ps.add_parser(
            name,
            help=f"{name} a mailbox (a disabled one can't log in or receive mail)",
            epilog=f"example:\n  pfm mailbox {name} alice@example.org",
            formatter_class=fmt,
        )
        e.add_argument("address", metavar="ADDRESS")
        common.add_output_flags(e)
        e.set_defaults(func=cmd_enable if active else cmd_disable)

    r = ps.add_parser(
        "remove",
        help="remove a mailbox and its app passwords (mail on disk is kept)",
        epilog="example:\n  pfm mailbox remove alice@example.org --dry-run",
        formatter_class=fmt,
    )
    r.add_argument("address", metavar="ADDRESS")
    common.add_output_flags(r)
    r.set_defaults(func=cmd_remove)

    q = ps.add_parser(
        "quota",
        help="set a mailbox's quota",
        epilog="examples:\n  pfm mailbox quota alice@example.org 2G\n"
        "  pfm mailbox quota alice@example.org 0      # unlimited",
        formatter_class=fmt,
    )
    q.add_argument("address", metavar="ADDRESS")
    q.add_argument("size", metavar="SIZE", help="2G, 500M, 1024K, bytes; 0 = unlimited")
    common.add_output_flags(q)
    q.set_defaults(func=cmd_quota)


def cmd_add(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    quota = common.size_value(args.quota, "quota")
    password: str | None = None
    password_hash: str | None = None
    if args.password_hash_file:
        password_hash = common.read_secret_file(args.password_hash_file, "password hash")
    else:
        password = common.read_new_password(args)
    return common.run_change(
        args,
        environ,
        lambda d: d.add_mailbox(
            args.address,
            password=password,
            password_hash=password_hash,
            name=args.name,
            quota=quota,
            active=False if args.disabled else None,
            ensure=args.ensure,
            dry_run=args.dry_run,
        ),
    )


def _mailbox_data(mb: Any) -> dict[str, Any]:
    from services.directory.model import public

    data = public(mb)
    data["display_address"] = common.display_address(mb.address)
    return data


def cmd_list(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with common.open_directory(args, environ, read_only=True) as d:
        rows = [_mailbox_data(mb) for mb in d.list_mailboxes(args.domain)]
    if args.json:
        common.print_json(rows)
        return OK
    common.print_table(
        ("ADDRESS", "ACTIVE", "QUOTA", "TOTP", "NAME"),
        [
            (
                common.human_address(r["address"]),
                common.fmt_value("active", r["active"]),
                common.format_size(r["quota"]),
                common.fmt_value("totp", r["totp_enrolled"]),
                r["name"],
            )
            for r in rows
        ],
    )
    return OK


def cmd_show(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with common.open_directory(args, environ, read_only=True) as d:
        mb = d.get_mailbox(args.address)
        data = _mailbox_data(mb)
        data["app_passwords"] = len(d.backend.list_app_passwords(mb.address))
    if args.json:
        common.print_json(data)
        return OK
    data["address"] = common.human_address(mb.address)
    del data["display_address"]
    common.print_fields(
        data,
        (
            "address",
            "name",
            "active",
            "quota",
            "password_scheme",
            "password_changed",
            "totp_enrolled",
            "app_passwords",
            "limits",
        ),
    )
    return OK


def cmd_passwd(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    password = common.read_new_password(args)
    with common.open_directory(args, environ) as d:
        result = d.set_password(args.address, password, dry_run=args.dry_run)
    if args.json:
        return common.render_result(result, True)
    revoked = sum(1 for c in result.as_dict()["changes"] if c["kind"] == "app_password")
    who = common.human_address(result.object)
    if result.dry_run:
        print(f"would change the password of {who} and revoke {revoked} app password(s)")
        print("dry run: nothing written")
    else:
        print(f"password of {who} changed; {revoked} app password(s) revoked")
    return OK


def cmd_enable(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    return common.run_change(
        args, environ, lambda d: d.update_mailbox(args.address, active=True, dry_run=args.dry_run)
    )


def cmd_disable(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    return common.run_change(
        args,
        environ,
        lambda d: d.update_mailbox(args.address, active=False, dry_run=args.dry_run),
    )


def cmd_remove(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    return common.run_change(
        args, environ, lambda d: d.remove_mailbox(args.address, dry_run=args.dry_run)
    )


def cmd_quota(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    size = common.size_value(args.size, "quota") or 0
    return common.run_change(
        args,
        environ,
        lambda d: d.update_mailbox(args.address, quota=size, dry_run=args.dry_run),
    )
