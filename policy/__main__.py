"""pfm-policyd: the Postfix SMTP access policy server (``check_policy_service``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from services.config import Config, ConfigError, config_path, load_config, locate_error
from services.daemon_cli import daemon_parser

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78  # EX_CONFIG

DESCRIPTION = """\
Postfix SMTP access policy server: rate limits and quotas per SASL user, sender, domain,
client IP or prefix, with two-phase accounting (reserve at RCPT, commit at END-OF-MESSAGE).

Wire it into Postfix (main.cf):
  smtpd_recipient_restrictions = ..., reject_unauth_destination,
      check_policy_service { inet:127.0.0.1:10040, default_action=DUNNO }
  smtpd_end_of_data_restrictions =
      check_policy_service { inet:127.0.0.1:10040, default_action=DUNNO }

Signals: SIGTERM/SIGINT stop gracefully (a second one forces), SIGHUP reloads the config
(the running config stays when the new one is invalid).
"""

EPILOG = """\
exit codes: 0 ok, 1 runtime failure, 2 usage error, 78 invalid configuration.
examples:
  pfm-policyd --config /etc/pfm/pfm.toml
  pfm-policyd --check-config
  printf 'request=smtpd_access_policy\\nprotocol_state=RCPT\\nsender=a@example.org\\n\\n' | pfm-policyd --test
"""


def build_parser() -> argparse.ArgumentParser:
    p = daemon_parser("pfm-policyd", DESCRIPTION, EPILOG)
    p.add_argument(
        "--test",
        action="store_true",
        help="read policy requests from stdin, print each decision and its reasons, exit "
        "(uses a fresh in-memory state, never the live one)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    path = config_path(args.config, os.environ)
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"pfm-policyd: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    from .decide import Engine

    try:
        Engine(config.policyd)  # deeper checks: answers and reply texts
    except ConfigError as exc:
        print(f"pfm-policyd: invalid configuration: {locate_error(exc, path)}", file=sys.stderr)
        return EXIT_CONFIG

    from services.logging import configure_logging

    level = args.log_level or config.log.level
    fmt = args.log_format or config.log.format
    if args.check_config:
        return check_config(config, path)
    if args.test:
        configure_logging("error", fmt)
        return run_test(config, sys.stdin.buffer.read(), sys.stdout)
    configure_logging(level, fmt)

    from services.lifecycle import run_daemon

    from .server import PolicyService

    service = PolicyService(config, config_path=path)
    return run_daemon(
        service,
        grace=float(config.policyd.grace),
        use_uvloop=not args.no_uvloop,
        name="pfm-policyd",
    )


def check_config(config: Config, path: str) -> int:
    """Validate deeper than the schema (actions, rules) and print a summary."""
    from .decide import Engine

    try:
        engine = Engine(config.policyd)
    except ValueError as exc:
        print(f"pfm-policyd: invalid configuration: {path}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    p = config.policyd
    print(f"{path}: ok")
    print(f"  listen: {', '.join(p.listen)}  state: {p.state}  accounting: {p.accounting}")
    for rule in engine.rules:
        c = rule.cfg
        windows = ", ".join(str(w) for w in c.windows)
        extra = f"  overrides: {len(c.overrides)}" if c.overrides else ""
        print(
            f"  limit {rule.name}: key={'+'.join(c.key)} unit={c.unit} windows={windows} "
            f"action={c.action} mode={c.mode}{extra}"
        )
    if not engine.rules:
        print("  no limits configured: every request is answered DUNNO")
    return EXIT_OK


def run_test(config: Config, data: bytes, out: object) -> int:
    """Decide requests read from ``data`` against a fresh memory store and print the results."""
    from .decide import Session
    from .protocol import PolicyParser, ProtocolError
    from .server import PolicyService

    if not data.endswith(b"\n\n"):
        data = data.rstrip(b"\n") + b"\n\n"
    cfg = config.policyd
    import dataclasses

    test_cfg = dataclasses.replace(
        config,
        policyd=dataclasses.replace(cfg, state="memory", admin_socket="", metrics_listen=""),
    )
    service = PolicyService(test_cfg)

    async def go() -> int:
        service.store = service._open_store(test_cfg)
        session = Session()
        status = EXIT_OK
        parser = PolicyParser()
        write = out.write  # type: ignore[attr-defined]
        for item in parser.feed(data):
            if isinstance(item, ProtocolError):
                write(f"error: {item.reason}: {item}\n")
                status = EXIT_FAILURE
                continue
            plan = service.engine.plan(item, session)
            decision = await service.run_plan(plan, service.store)
            write(f"action={decision.action}\n")
            write(f"  state={item.protocol_state or '-'} reason={decision.reason}")
            write(f" limit={decision.rule}\n" if decision.rule else "\n")
            for rule, subject, used, weight, limit, window, breached, shadow in decision.hits:
                flag = "BREACH" if breached else "ok"
                mode = " (shadow)" if shadow else ""
                write(
                    f"  {rule} [{subject}] {used}+{weight} of {limit} per {window:g}s: {flag}{mode}\n"
                )
        await service.store.aclose()
        return status

    return asyncio.run(go())


def run() -> None:
    """Console-script wrapper."""
    sys.exit(main())


if __name__ == "__main__":
    run()
