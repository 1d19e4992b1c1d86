"""``pfm totp``: enrol, disable and show TOTP (RFC 6238 one-time codes) for mailboxes.

``enroll`` prints the ``otpauth://`` URI and, on a terminal, a QR code to scan with an
authenticator app; the secret is shown only then. ``--json`` prints the URI and the secret:
that output is sensitive (anyone holding it can make codes), so don't log or keep it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any

from .. import common
from ..exitcodes import OK

EPILOG = """\
examples:
  pfm totp enroll alice@example.org                 # URI + QR code on a terminal
  pfm totp enroll alice@example.org --force         # new secret, the old one stops working
  pfm totp enroll alice@example.org --json          # uri + secret: sensitive output
  pfm totp status alice@example.org
  pfm totp disable alice@example.org --dry-run
"""


def register(sub: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "totp",
        help="TOTP second factor: enroll, disable, status",
        description="Manage TOTP one-time codes for mailboxes. Users with TOTP log in with "
        "their password followed by the 6-digit code, or with an app password.",
        epilog=EPILOG,
        formatter_class=fmt,
    )
    ps = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    e = ps.add_parser(
        "enroll",
        help="give a mailbox a new TOTP secret and print its otpauth URI and QR code",
        epilog="examples:\n  pfm totp enroll alice@example.org\n"
        "  pfm totp enroll alice@example.org --issuer 'Example Mail' --force",
        formatter_class=fmt,
    )
    e.add_argument("address", metavar="ADDRESS")
    e.add_argument(
        "--force", action="store_true", help="replace an existing secret (re-enrol a new phone)"
    )
    e.add_argument(
        "--issuer",
        default=None,
        help="name the authenticator app shows (default: Postfix Manager)",
    )
    qr = e.add_mutually_exclusive_group()
    qr.add_argument(
        "--qr", dest="qr", action="store_true", default=None, help="always print the QR code"
    )
    qr.add_argument("--no-qr", dest="qr", action="store_false", help="never print the QR code")
    common.add_output_flags(e)
    e.set_defaults(func=cmd_enroll)

    d = ps.add_parser(
        "disable",
        help="remove a mailbox's TOTP secret (password-only logins again)",
        epilog="example:\n  pfm totp disable alice@example.org",
        formatter_class=fmt,
    )
    d.add_argument("address", metavar="ADDRESS")
    common.add_output_flags(d)
    d.set_defaults(func=cmd_disable)

    s = ps.add_parser("status", help="whether a mailbox uses TOTP (never the secret)")
    s.add_argument("address", metavar="ADDRESS")
    common.add_output_flags(s, change=False)
    s.set_defaults(func=cmd_status)


def _stdout_is_tty() -> bool:
    try:
        return bool(sys.stdout.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def group_secret(secret: str) -> str:
    """``ABCD EFGH ...``: the base32 secret in groups of 4 for typing it by hand."""
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def cmd_enroll(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from services.directory.credentials import DEFAULT_ISSUER, Credentials

    with common.open_directory(args, environ) as d:
        enrolment = Credentials(d).enroll_totp(
            args.address,
            issuer=args.issuer if args.issuer is not None else DEFAULT_ISSUER,
            force=args.force,
            dry_run=args.dry_run,
        )
    result = enrolment.result
    if args.json:
        data = result.as_dict()
        data["otpauth_uri"] = enrolment.uri or None
        data["secret"] = enrolment.secret or None
        common.print_json(data)
        return OK
    if result.dry_run:
        return common.render_result(result, False)
    who = common.human_address(result.object)
    print(f"TOTP enrolled for {who}" + (f" ({result.message})" if result.message else ""))
    show_qr = _stdout_is_tty() if args.qr is None else args.qr
    if show_qr:
        from ..qr import terminal_qr

        color = "NO_COLOR" not in environ and os.environ.get("TERM") != "dumb"
        print("\nScan this with an authenticator app:\n")
        sys.stdout.write(terminal_qr(enrolment.uri, color=color))
    print(f"\nURI:    {enrolment.uri}")
    print(f"secret: {group_secret(enrolment.secret)}  (SHA1, 6 digits, 30 s)")
    print(
        "\nThe secret is shown only now and cannot be shown again; re-enrol with --force "
        "if it is lost. Log in with the password followed by the current 6-digit code."
    )
    return OK


def cmd_disable(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from services.directory.credentials import Credentials

    return common.run_change(
        args,
        environ,
        lambda d: Credentials(d).disable_totp(args.address, dry_run=args.dry_run),
    )


def cmd_status(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from services.directory.credentials import Credentials

    with common.open_directory(args, environ, read_only=True) as d:
        status = Credentials(d).totp_status(args.address)
    data = status.as_dict()
    if args.json:
        common.print_json(data)
        return OK
    data["address"] = common.human_address(status.address)
    del data["last_step"]
    common.print_fields(data, ("address", "enrolled", "last_used"))
    return OK
