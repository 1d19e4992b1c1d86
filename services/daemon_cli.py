"""The command line every daemon shares (``--config``, ``--check-config``, log and loop options)."""

from __future__ import annotations

import argparse


def daemon_parser(prog: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """An argument parser with the options common to pfm-policyd, pfm-authd and pfm-metricsd.

    A daemon adds its own options to the parser this returns.
    """
    p = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="configuration file (default: $PFM_CONFIG, else /etc/pfm/pfm.toml)",
    )
    p.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration, print a summary and exit (0 valid, 78 invalid)",
    )
    p.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="override [log] level"
    )
    p.add_argument(
        "--log-format", choices=["auto", "json", "console"], help="override [log] format"
    )
    p.add_argument("--no-uvloop", action="store_true", help="use the default asyncio event loop")
    p.add_argument("--version", action="version", version="%(prog)s 0.1.0")
    return p
