"""``pfm``: the Postfix Manager admin CLI (``main(argv) -> int``, one module per group)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

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


class _Inert:
    """Accepts any call and attribute, returning another _Inert (cheap stand-in parsers)."""

    def __getattr__(self, _name: str) -> Any:
        return self

    def __call__(self, *_args: Any, **_kwargs: Any) -> Any:
        return self


class _Probe:
    """Stands in for the subparsers action: records each top-level command a group adds."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, dict[str, Any]]] = []

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        keep = {k: v for k, v in kwargs.items() if k in ("help", "aliases")}
        self.commands.append((name, keep))
        return _Inert()


def _summary(group: Any) -> list[tuple[str, dict[str, Any]]]:
    """A group's command names with their help and aliases, without building argparse trees."""
    probe = _Probe()
    group.register(probe)
    return probe.commands


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with ``only`` the full tree of that one command group.

    Building every group's subcommands costs ~40 ms of the ~150 ms budget for
    ``pfm mailbox show``; the other groups then appear by name and help only.
    """
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
        if only is None:
            group.register(sub)
            continue
        commands = _summary(group)
        if any(name == only or only in kw.get("aliases", ()) for name, kw in commands):
            group.register(sub)
        else:
            for name, kw in commands:
                sub.add_parser(name, **kw)
    return p


def _group_named(argv: Sequence[str]) -> str | None:
    """The command group argv asks for (after the global options), if any."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-c", "--config"):
            i += 2
            continue
        if a.startswith("--config=") or (a.startswith("-c") and len(a) > 2):
            i += 1
            continue
        if a.startswith("-"):
            return None  # -h and friends: the full parser
        return a
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one CLI command; returns its exit code."""
    arglist = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_group_named(arglist))
    args = parser.parse_args(arglist)
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
