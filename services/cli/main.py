"""``pfm``: the Postfix Manager admin CLI (``main(argv) -> int``, one module per group)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import exitcodes
from .commands import (
    admin,
    alias,
    alias_domain,
    app_password,
    audit,
    auth,
    backup,
    completion,
    config,
    dns,
    domain,
    limit,
    mailbox,
    policy,
    queue,
    totp,
    transfer,
)

GROUPS = (
    domain,
    mailbox,
    alias,
    alias_domain,
    limit,
    totp,
    app_password,
    admin,
    audit,
    policy,
    auth,
    queue,
    dns,
    transfer,
    backup,
    config,
    completion,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pfm",
        description="Postfix Manager admin CLI.",
        epilog="exit codes: 0 ok, 1 failure, 2 usage, 3 not found, 5 exists already, "
        "6 conflict (e.g. domain not empty, alias loop), 65 invalid input, "
        "69 service unavailable, 75 directory temporarily unavailable, 78 bad config.",
    )
    p.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="configuration file (default: $PFM_CONFIG, else /etc/pfm/pfm.toml)",
    )
    sub = p.add_subparsers(dest="group", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one CLI command; returns its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args, os.environ))
    except exitcodes.CliError as exc:
        print(f"pfm: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (``pfm audit | head``): stop quietly, as Unix tools do
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return exitcodes.BROKEN_PIPE


def run() -> None:
    """Console-script wrapper."""
    sys.exit(main())


if __name__ == "__main__":
    run()
