"""``pfm queue``: list, show, hold, release, requeue and delete mail in the Postfix queue.

Thin: argument parsing and rendering only. Parsing and filtering live in
``services.mailqueue``, running Postfix's tools in ``services.queue_ops`` (both imported
inside the commands, so ``pfm`` starts fast).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from ..exitcodes import CONFIG, FAILURE, NOT_FOUND, OK, TEMPFAIL, UNAVAILABLE, USAGE, CliError

if TYPE_CHECKING:
    from services.mailqueue import QueueFilter, QueueMessage
    from services.queue_ops import Action, PostfixQueue, QueueOpsError

QUEUES = ("active", "deferred", "hold", "incoming", "maildrop", "corrupt")
FILTER_HELP = """\
filters (all given criteria must hold; a repeated option means any of its values):
  patterns match whole addresses, case-insensitively: exact ('bob@example.org') or a
  shell glob ('*@example.org', 'bob@*'); --sender '<>' selects bounces (MAILER-DAEMON).
  --recipient, --domain and --reason must hold for the same recipient.
"""
_ACTION_DESCR = {
    "hold": "Put matching mail on hold (postsuper -h): no delivery until released.",
    "release": "Release matching mail from hold (postsuper -H) into the deferred queue.",
    "requeue": "Requeue matching mail (postsuper -r): re-run cleanup; it gets a new queue id.",
    "delete": "Delete matching mail from the queue (postsuper -d). There is no undo.",
}


def _add_filters(p: argparse.ArgumentParser, qids: bool = True) -> None:
    p.add_argument(
        "--postfix-config",
        metavar="DIR",
        help="Postfix config directory (default: [postfix] config_dir, /etc/postfix)",
    )
    f = p.add_argument_group("filters")
    f.add_argument(
        "--sender",
        action="append",
        default=[],
        metavar="PATTERN",
        help="exact or glob; <> = bounces",
    )
    f.add_argument(
        "--recipient", action="append", default=[], metavar="PATTERN", help="exact or glob"
    )
    f.add_argument("--domain", action="append", default=[], metavar="D", help="recipient domain")
    f.add_argument("--older-than", metavar="AGE", help="arrived at least AGE ago (30m, 2h, 1d)")
    f.add_argument("--younger-than", metavar="AGE", help="arrived less than AGE ago")
    f.add_argument(
        "--queue", action="append", default=[], choices=QUEUES, help="queue name (repeatable)"
    )
    f.add_argument(
        "--reason", action="append", default=[], metavar="TEXT", help="text in a delay reason"
    )
    if qids:
        f.add_argument("qids", nargs="*", metavar="QID", help="only these queue ids")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "queue",
        help="Postfix mail queue: list, show, hold, release, requeue, delete",
        description="Inspect and manage the Postfix mail queue (postqueue -j, postcat, "
        "postsuper) of the instance in [postfix] config_dir or --postfix-config.",
    )
    ps = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    ls = ps.add_parser("list", help="list queued mail", epilog=FILTER_HELP, formatter_class=fmt)
    _add_filters(ls)
    ls.add_argument("--json", action="store_true", help="print full JSON (postqueue -j fields)")
    ls.set_defaults(func=cmd_list)

    sh = ps.add_parser("show", help="envelope and headers of one message (postcat)")
    sh.add_argument("qid", metavar="QID")
    sh.add_argument(
        "--postfix-config", metavar="DIR", help="Postfix config directory (default: /etc/postfix)"
    )
    sh.add_argument("--body", action="store_true", help="include the message body")
    sh.add_argument("--json", action="store_true", help="print JSON")
    sh.set_defaults(func=cmd_show)

    for action, descr in _ACTION_DESCR.items():
        a = ps.add_parser(
            action,
            help=descr.split(" (")[0].split(":")[0].lower(),
            description=descr + " Needs a filter, queue ids or --all.",
            epilog=FILTER_HELP,
            formatter_class=fmt,
        )
        _add_filters(a)
        a.add_argument("--all", action="store_true", help="act on every message (no filter)")
        a.add_argument("--dry-run", action="store_true", help="list what would be affected")
        a.add_argument("--json", action="store_true", help="print JSON")
        a.set_defaults(func=cmd_action, queue_action=action)


# --------------------------------------------------------------------------- helpers


def _config_dir(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    if args.postfix_config:
        return str(args.postfix_config)
    from services.config import DEFAULT_PATH, ConfigError, PostfixConfig, config_path, load_config

    path = config_path(args.config, environ)
    if path == DEFAULT_PATH and not args.config and not environ.get("PFM_CONFIG"):
        import os

        if not os.path.exists(path):  # no pfm.toml at all: Postfix's own default
            return PostfixConfig().config_dir
    try:
        return load_config(path).postfix.config_dir
    except ConfigError as exc:
        raise CliError(f"invalid configuration: {exc}", CONFIG) from None


def _queue(args: argparse.Namespace, environ: Mapping[str, str]) -> PostfixQueue:
    from services.queue_ops import PostfixQueue

    return PostfixQueue(_config_dir(args, environ))


def _ops_error(exc: QueueOpsError) -> CliError:
    code = {
        "missing": UNAVAILABLE,
        "config": CONFIG,
        "permission": FAILURE,
        "not_found": NOT_FOUND,
        "timeout": TEMPFAIL,
    }.get(exc.kind, FAILURE)
    return CliError(str(exc), code)


def _filter(args: argparse.Namespace) -> QueueFilter:
    from services.config import Duration
    from services.mailqueue import QueueFilter

    def age(opt: str, value: str | None) -> float | None:
        if value is None:
            return None
        try:
            return float(Duration.parse(value))
        except ValueError as exc:
            raise CliError(f"--{opt}: {exc}", USAGE) from None

    try:
        return QueueFilter(
            senders=tuple(args.sender),
            recipients=tuple(args.recipient),
            domains=tuple(args.domain),
            reasons=tuple(args.reason),
            queues=tuple(args.queue),
            queue_ids=tuple(args.qids),
            older_than=age("older-than", args.older_than),
            younger_than=age("younger-than", args.younger_than),
        )
    except ValueError as exc:
        raise CliError(str(exc), USAGE) from None


def _select(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[PostfixQueue, list[QueueMessage], float]:
    from services.queue_ops import QueueOpsError

    flt = _filter(args)
    q = _queue(args, environ)
    try:
        result = q.list()
    except QueueOpsError as exc:
        raise _ops_error(exc) from None
    if result.bad_lines:
        print(f"pfm: warning: {result.bad_lines} unreadable postqueue -j lines", file=sys.stderr)
    now = time.time()
    return q, flt.select(result.messages, now), now


def _table(messages: list[QueueMessage], now: float) -> list[str]:
    from services.mailqueue import format_age, format_size, short_reason, shorten

    header = ("QID", "QUEUE", "AGE", "SIZE", "SENDER", "RECIPIENTS", "REASON")
    rows = [header]
    for m in messages:
        first = m.recipients[0] if m.recipients else None
        rcpt = first.address if first else "-"
        if len(m.recipients) > 1:
            rcpt = f"{shorten(rcpt, 34)} (+{len(m.recipients) - 1})"
        reason = next((r.delay_reason for r in m.recipients if r.delay_reason), "")
        rows.append(
            (
                m.queue_id + ("#" if m.forced_expire else ""),
                m.queue_name,
                format_age(m.age(now)),
                format_size(m.message_size),
                shorten(m.sender or "<>", 36),
                shorten(rcpt, 40),
                short_reason(reason, 60) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]


# --------------------------------------------------------------------------- commands


def cmd_list(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    _, messages, now = _select(args, environ)
    if args.json:
        print(json.dumps([m.to_dict() for m in messages], indent=1))
        return OK
    if not messages:
        print("no matching messages in the queue")
        return OK
    for line in _table(messages, now):
        print(line)
    total = sum(m.message_size for m in messages)
    from services.mailqueue import format_size

    n = len(messages)
    print(f"-- {n} message{'s' if n != 1 else ''}, {format_size(total)} bytes")
    return OK


def cmd_show(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from services.mailqueue import valid_queue_id
    from services.queue_ops import QueueOpsError

    if not valid_queue_id(args.qid):
        raise CliError(f"{args.qid!r} is not a Postfix queue id", USAGE)
    try:
        view = _queue(args, environ).show(args.qid, body=args.body)
    except QueueOpsError as exc:
        raise _ops_error(exc) from None
    if args.json:
        out: dict[str, Any] = {
            "queue_id": args.qid,
            "queue_name": view.queue_name,
            "queue_file": view.queue_path,
            "envelope": [list(r) for r in view.envelope],
            "headers": [list(h) for h in view.header_fields()],
        }
        if view.body is not None:
            out["body"] = view.body
        print(json.dumps(out, indent=1))
        return OK
    print(f"*** {view.queue_path} ***")
    for name, value in view.envelope:
        print(f"{name}: {value}")
    print()
    print(view.headers)
    if view.body is not None:
        print()
        print(view.body)
    return OK


def cmd_action(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from services.queue_ops import QueueOpsError

    action: str = args.queue_action
    if _filter(args).is_empty() and not args.all:
        raise CliError(
            f"refusing to {action} every message: give a filter, queue ids or --all", USAGE
        )
    q, messages, now = _select(args, environ)
    ids = [m.queue_id for m in messages]
    if not ids:
        if args.json:
            print(json.dumps({"action": action, "dry_run": args.dry_run, "matched": 0}))
        else:
            print("no matching messages in the queue")
        return NOT_FOUND
    if args.dry_run:
        if args.json:
            print(
                json.dumps(
                    {
                        "action": action,
                        "dry_run": True,
                        "matched": len(ids),
                        "messages": [m.to_dict() for m in messages],
                    },
                    indent=1,
                )
            )
        else:
            for line in _table(messages, now):
                print(line)
            print(f"-- would {action} {len(ids)} message{'s' if len(ids) != 1 else ''}")
        return OK
    try:
        res = q.act(cast("Action", action), ids)
    except QueueOpsError as exc:
        raise _ops_error(exc) from None
    for w in res.warnings:
        print(f"pfm: warning: postsuper: {w}", file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "action": action,
                    "dry_run": False,
                    "matched": len(ids),
                    "affected": res.affected,
                    "queue_ids": ids,
                }
            )
        )
    else:
        verb = {"hold": "held", "release": "released", "requeue": "requeued", "delete": "deleted"}
        print(f"{verb[action]} {res.affected} of {len(ids)} matching messages")
    return OK if res.affected else NOT_FOUND
