"""``pfm app-password``: add, list and revoke app passwords of mailboxes.

An app password is a random ``xxxx-xxxx-xxxx-xxxx`` secret for one device or program, limited
to some services (imap, pop3, smtp = submission, sieve) and optionally expiring. ``add``
prints it once; only a hash is stored, so it can never be shown again. Users with TOTP use
app passwords for mail clients that can't ask for a code. Changing the mailbox password
(``pfm mailbox passwd``) revokes them all.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from typing import Any

from .. import common
from ..exitcodes import INVALID, OK, CliError

EPILOG = """\
examples:
  pfm app-password add alice@example.org --name "Thunderbird on laptop"
  pfm app-password add alice@example.org --name Phone --scope imap --scope smtp --expires 90d
  pfm app-password list alice@example.org --json
  pfm app-password revoke alice@example.org ap-3f9c2a1b
  pfm app-password revoke alice@example.org --all --dry-run
"""


def parse_expires(text: str, now: float) -> float:
    """A Unix time from ``--expires``: a duration from now (``90d``, ``12h``, ``2w``), an ISO
    date (local time when no zone is given), or ``never``/``0`` for 0.

    Raises ``ValueError`` naming the accepted forms.
    """
    value = text.strip().lower()
    if value in ("never", "0", "none"):
        return 0.0
    if value and value[0].isdigit() and not any(c in value for c in "-:t "):
        from services.config import Duration

        try:
            span = float(Duration.parse(value))
        except ValueError:
            pass
        else:
            if span > 0:
                return now + span
    from datetime import datetime

    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"invalid --expires {text!r}: use a duration from now (90d, 12h, 2w), an ISO date "
            "(2027-01-31 or 2027-01-31T12:00) or never"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()
    return when.timestamp()


def register(sub: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "app-password",
        help="app passwords: add, list, revoke",
        description="Manage app passwords: random secrets for one device or program, scoped to "
        "services, shown once, stored hashed.",
        epilog=EPILOG,
        formatter_class=fmt,
    )
    ps = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = ps.add_parser(
        "add",
        help="create an app password and print it once",
        epilog="examples:\n  pfm app-password add alice@example.org --name Thunderbird\n"
        "  pfm app-password add alice@example.org --name Phone --scope imap --expires 90d",
        formatter_class=fmt,
    )
    a.add_argument("address", metavar="ADDRESS")
    a.add_argument("--name", required=True, help="which device or program uses it")
    a.add_argument(
        "--scope",
        action="append",
        metavar="SCOPE",
        help="imap, pop3, smtp (= submission) or sieve; repeat for several (default: all)",
    )
    a.add_argument(
        "--expires",
        metavar="WHEN",
        help="a duration from now (90d, 12h), an ISO date, or never (default: never)",
    )
    common.add_output_flags(a)
    a.set_defaults(func=cmd_add)

    ls = ps.add_parser("list", help="a mailbox's app passwords (never a secret or hash)")
    ls.add_argument("address", metavar="ADDRESS")
    common.add_output_flags(ls, change=False)
    ls.set_defaults(func=cmd_list)

    r = ps.add_parser(
        "revoke",
        help="revoke one app password by id, or all of a mailbox's",
        epilog="examples:\n  pfm app-password revoke alice@example.org ap-3f9c2a1b\n"
        "  pfm app-password revoke alice@example.org --all",
        formatter_class=fmt,
    )
    r.add_argument("address", metavar="ADDRESS")
    r.add_argument("id", metavar="ID", nargs="?", help="the id shown by list (ap-...)")
    r.add_argument("--all", action="store_true", help="revoke every app password of ADDRESS")
    common.add_output_flags(r)
    r.set_defaults(func=cmd_revoke)


def cmd_add(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from services.directory.credentials import Credentials
    from services.directory.model import SCOPES

    expires = 0.0
    if args.expires is not None:
        try:
            expires = parse_expires(args.expires, time.time())
        except ValueError as exc:
            raise CliError(f"expires: {exc}", INVALID) from None
    with common.open_directory(args, environ) as d:
        new = Credentials(d).add_app_password(
            args.address,
            name=args.name,
            scopes=args.scope or SCOPES,
            expires=expires,
            dry_run=args.dry_run,
        )
    result = new.result
    if args.json:
        data = result.as_dict()
        data["secret"] = new.secret or None
        common.print_json(data)
        return OK
    if result.dry_run:
        return common.render_result(result, False)
    ap = new.app_password
    print(f"app password {ap.id} ({ap.name}) added for {common.human_address(ap.address)}")
    print(f"scopes:  {', '.join(ap.scopes)}")
    print(f"expires: {common.fmt_time(ap.expires) if ap.expires else 'never'}")
    print(f"\n    {new.secret}\n")
    print(
        "Enter it in the mail client instead of the account password. It is shown only "
        "now and cannot be shown again (only a hash is stored)."
    )
    return OK


def cmd_list(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from services.directory.credentials import Credentials, app_password_data

    with common.open_directory(args, environ, read_only=True) as d:
        rows = [app_password_data(ap) for ap in Credentials(d).list_app_passwords(args.address)]
    if args.json:
        common.print_json(rows)
        return OK
    now = time.time()
    common.print_table(
        ("ID", "NAME", "SCOPES", "CREATED", "EXPIRES", "LAST USED", "LAST IP"),
        [
            (
                r["id"],
                r["name"],
                ",".join(r["scopes"]),
                common.fmt_value("created", r["created"]),
                (
                    "never"
                    if not r["expires"]
                    else common.fmt_value("expires", r["expires"])
                    + (" (expired)" if r["expires"] <= now else "")
                ),
                common.fmt_value("last_used", r["last_used"]),
                r["last_ip"] or "-",
            )
            for r in rows
        ],
    )
    return OK


def cmd_revoke(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from services.directory.credentials import Credentials

    if (args.id is None) == (not args.all):
        raise CliError("give an app password ID or --all (not both)", INVALID)
    return common.run_change(
        args,
        environ,
        lambda d: Credentials(d).revoke_app_password(
            args.address, args.id, all=args.all, dry_run=args.dry_run
        ),
    )
