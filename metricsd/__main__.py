"""pfm-metricsd: Prometheus exporter for Postfix and Dovecot logs and the Postfix queue."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from services.config import Config, ConfigError, config_path, load_config
from services.daemon_cli import daemon_parser

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78  # EX_CONFIG

DESCRIPTION = """\
Prometheus exporter for Postfix and Dovecot: counts every Postfix and Dovecot log line
(file tail that survives rotation, syslog over UDP, journald), scrapes the mail queue with
`postqueue -j` at scrape time, and reports whether Postfix runs (`postfix_up`).

Prometheus scrape config:
  - job_name: mail
    static_configs: [{targets: ["mx1.example.org:9154"]}]

Signals: SIGTERM/SIGINT stop gracefully (a second one forces), SIGHUP reloads the config
(sources added or removed on the fly; the running config stays when the new one is invalid).
"""

EPILOG = """\
exit codes: 0 ok, 1 runtime failure, 2 usage error, 78 invalid configuration.
examples:
  pfm-metricsd --config /etc/pfm/pfm.toml
  pfm-metricsd --check-config
  curl -s http://127.0.0.1:9154/metrics | grep ^postfix_up
"""


def build_parser() -> argparse.ArgumentParser:
    p = daemon_parser("pfm-metricsd", DESCRIPTION, EPILOG)
    return p


def main(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> int:
    """Entry point; returns the exit code."""
    import os

    args = build_parser().parse_args(argv)
    path = config_path(args.config, os.environ if environ is None else environ)
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"pfm-metricsd: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        return check_config(config, path)

    from services.logging import configure_logging

    configure_logging(args.log_level or config.log.level, args.log_format or config.log.format)

    from services.lifecycle import run_daemon

    from .server import MetricsService

    service = MetricsService(config, config_path=path)
    return run_daemon(
        service,
        grace=float(config.metricsd.grace),
        use_uvloop=not args.no_uvloop,
        name="pfm-metricsd",
    )


def check_config(config: Config, path: str) -> int:
    """Print a summary of a valid configuration."""
    from .server import source_name

    m = config.metricsd
    print(f"{path}: ok")
    print(f"  listen: {m.listen}  dovecot: {'yes' if m.dovecot else 'no'}")
    for src in m.sources:
        extra = " (from start)" if src.type == "file" and src.from_start else ""
        print(f"  source {source_name(src)}{extra}")
    if not m.sources:
        print("  no log sources: only the queue and postfix_up are exported")
    queue = (
        f"postqueue -c {m.postfix_config_dir} -j, timeout {m.queue_timeout:g}s, "
        f"cache {m.queue_cache:g}s"
        if m.queue_scrape
        else "off"
    )
    print(f"  queue: {queue}")
    print(f"  top domains: {m.top_domains}  sasl usernames: {m.max_sasl_usernames or 'off'}")
    return EXIT_OK


def run() -> None:
    """Console-script wrapper."""
    sys.exit(main())


if __name__ == "__main__":
    run()
