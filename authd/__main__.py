"""pfm-authd: the Dovecot authentication daemon behind pfm-checkpassword and the Lua passdb."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from services.config import Config, ConfigError, config_path, load_config
from services.daemon_cli import daemon_parser

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 78  # EX_CONFIG

DESCRIPTION = """\
Dovecot authentication daemon: checks passwords against the directory (SQLite hashes or an
LDAP bind), TOTP codes, app passwords, with a brute-force guard and a verify cache.

Wire it into Dovecot (checkpassword path):
  passdb {
    driver = checkpassword
    args = /usr/bin/pfm-checkpassword
  }
  userdb { driver = prefetch }

Or the Lua passdb (configs/dovecot/pfm-passdb.lua over the unix socket, pfm-passdb-http.lua
over [authd] http_listen), and Dovecot's auth policy hook (configs/dovecot/auth-policy.conf.ext:
auth_policy_server_url = http://127.0.0.1:10042/v1/policy) for any passdb.

Signals: SIGTERM/SIGINT stop gracefully (a second one forces), SIGHUP reloads the config.
"""

EPILOG = """\
exit codes: 0 ok, 1 runtime failure, 78 invalid configuration.
examples:
  pfm-authd --config /etc/pfm/pfm.toml
  pfm-authd --check-config
"""


def build_parser() -> argparse.ArgumentParser:
    p = daemon_parser("pfm-authd", DESCRIPTION, EPILOG)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    path = config_path(args.config, os.environ)
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"pfm-authd: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        return check_config(config, path)

    from services.logging import configure_logging

    configure_logging(args.log_level or config.log.level, args.log_format or config.log.format)

    from services.lifecycle import run_daemon

    from .server import AuthDaemon

    try:
        daemon = AuthDaemon(config, config_path=path)
    except (ConfigError, ValueError) as exc:
        print(f"pfm-authd: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return run_daemon(
        daemon, grace=float(config.authd.grace), use_uvloop=not args.no_uvloop, name="pfm-authd"
    )


def check_config(config: Config, path: str) -> int:
    """Validate deeper than the schema (guard settings) and print a summary."""
    from .server import guard_config

    try:
        guard_config(config.authd)
    except ValueError as exc:
        print(f"pfm-authd: invalid configuration: {path}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    a = config.authd
    d = config.directory
    print(f"{path}: ok")
    print(f"  listen: {', '.join(a.listen)}  state: {a.state}  directory: {d.backend}")
    if a.http_listen:
        key = "API key required" if a.http_api_key_file else "no API key"
        print(f"  http: {a.http_listen} (/v1/auth, /v1/lookup, /v1/policy; {key})")
    print(
        f"  totp services: {', '.join(a.totp_services) or '(none)'}  "
        f"app passwords: {'on' if a.app_passwords else 'off'}  "
        f"verify cache: {float(a.verify_cache_ttl):g} s  grace: {float(a.grace_ttl):g} s"
    )
    g = a.guard
    print(
        f"  guard: {'on' if g.enabled else 'off'} per_ip={g.per_ip} per_login={g.per_login} "
        f"per_ip_login={g.per_ip_login} per_prefix={g.per_prefix} block={float(g.block_time):g} s"
    )
    return EXIT_OK


def run() -> None:
    """Console-script wrapper."""
    sys.exit(main())


if __name__ == "__main__":
    run()
