"""``pfm auth``: pfm-authd's brute-force guard lists and a login test.

``block``/``unblock``/``blocks``/``status`` go through the admin socket ([authd]
admin_socket); ``test`` sends one AUTH request over the daemon's own socket, exactly as
pfm-checkpassword would, and prints the answer (never the password).
"""

from __future__ import annotations

import argparse
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .. import common
from ..exitcodes import CONFIG, FAILURE, NOT_FOUND, OK, TEMPFAIL, UNAVAILABLE, USAGE, CliError

if TYPE_CHECKING:
    from services.config import Config


def register(sub: Any) -> None:
    p = sub.add_parser(
        "auth",
        help="pfm-authd: block/unblock clients and logins, test a login",
        description="Adjust the brute-force guard of the running pfm-authd through its admin "
        "socket ([authd] admin_socket), or test a login through its auth socket.",
    )
    p.add_argument("--socket", help="admin socket path (default: from the config file)")
    ps = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    b = ps.add_parser(
        "block",
        help="refuse logins from an IP, a network, a login or a login|ip pair for a while",
        epilog="KEY: 192.0.2.7, 192.0.2.0/24 (the guard's prefix length), alice@example.org "
        "or alice@example.org|192.0.2.7",
    )
    b.add_argument("key", metavar="KEY")
    b.add_argument("--for", dest="duration", default="1h", help="how long, e.g. 30m, 2h, 1d")
    b.add_argument("--reason", default="admin", help="shown by `pfm auth blocks`")
    b.add_argument("--dry-run", action="store_true", help="show what would be done")
    b.add_argument("--json", action="store_true", help="print JSON")
    b.set_defaults(func=cmd_block)

    u = ps.add_parser("unblock", help="remove a block (or allow entry) and forget its failures")
    u.add_argument("key", metavar="KEY")
    u.add_argument("--dry-run", action="store_true", help="show what would be done")
    u.add_argument("--json", action="store_true", help="print JSON")
    u.set_defaults(func=cmd_unblock)

    ls = ps.add_parser("blocks", help="list active blocks and allow entries")
    ls.add_argument("--known-devices", action="store_true", help="also list known devices")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=cmd_blocks)

    s = ps.add_parser("status", help="daemon status: state store, directory, connections")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_status)

    t = ps.add_parser(
        "test",
        help="check a login through pfm-authd (as Dovecot would) and print the answer",
        description="Send one AUTH request for USER over pfm-authd's socket. The password is "
        "read from --password-file, --password-stdin or a prompt; it is never printed. The "
        "request comes from 127.0.0.1 (a trusted network by default: no guard counting).",
    )
    t.add_argument("user", metavar="USER")
    t.add_argument("--service", default="imap", help="Dovecot service name (default imap)")
    t.add_argument("--remote-ip", default="127.0.0.1", help="client IP to claim")
    t.add_argument("--auth-socket", help="pfm-authd socket (default: first [authd] listen)")
    t.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    t.add_argument("--json", action="store_true", help="print JSON")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--password-file", metavar="FILE", help="read the password from FILE")
    g.add_argument("--password-stdin", action="store_true", help="read it from stdin")
    t.set_defaults(func=cmd_test)


def _config(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    from services.config import ConfigError, config_path, load_config

    try:
        return load_config(config_path(args.config, environ))
    except ConfigError as exc:
        raise CliError(f"invalid configuration: {exc}", CONFIG) from None


def _socket_path(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    if args.socket:
        return str(args.socket)
    cfg = _config(args, environ)
    if not cfg.authd.admin_socket:
        raise CliError("[authd] admin_socket is empty: the admin endpoint is disabled", CONFIG)
    return cfg.authd.admin_socket


def call(path: str, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one admin request to pfm-authd and return the decoded answer."""
    return common.admin_call("pfm-authd", path, request, timeout)


def cmd_block(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from services.config import Duration

    try:
        seconds = float(Duration.parse(args.duration))
    except ValueError as exc:
        raise CliError(f"--for: {exc}", USAGE) from None
    if seconds <= 0:
        raise CliError("--for: must be more than 0 (use `pfm auth unblock` to end a block)", USAGE)
    path = _socket_path(args, environ)
    if args.dry_run:
        print(f"would block {args.key} for {seconds:g} s")
        return OK
    ans = call(path, {"cmd": "block", "key": args.key, "seconds": seconds, "reason": args.reason})
    if args.json:
        common.print_json(ans["entry"])
    else:
        print(f"blocked {ans['entry']['key']} for {seconds:g} s ({ans['entry']['reason']})")
    return OK


def cmd_unblock(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    path = _socket_path(args, environ)
    if args.dry_run:
        print(f"would unblock {args.key} and forget its failures")
        return OK
    ans = call(path, {"cmd": "unblock", "key": args.key})
    if args.json:
        common.print_json(ans)
    elif ans["removed"]:
        print(f"unblocked {args.key}")
    else:
        print(f"{args.key} was not blocked (its failure counts were reset)")
    return OK


def cmd_blocks(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    ans = call(_socket_path(args, environ), {"cmd": "blocks", "known_devices": args.known_devices})
    entries = ans["entries"]
    if args.json:
        common.print_json(entries)
        return OK
    if not entries:
        print("no active blocks")
        return OK
    rows = [
        (e["key"], e["action"], f"{max(int(e['until'] - time.time()), 0)}s", e["reason"])
        for e in entries
    ]
    common.print_table(("KEY", "ACTION", "LEFT", "REASON"), rows)
    return OK


def cmd_status(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    ans = call(_socket_path(args, environ), {"cmd": "status"})
    if args.json:
        common.print_json(ans)
    else:
        print(f"state: {ans['state']}  directory: {ans['directory']}  workers: {ans['workers']}")
        print(f"listen: {', '.join(ans['listen'])}  connections: {ans['connections']}")
    return OK


def _read_password(args: argparse.Namespace) -> str:
    if args.password_file:
        return common.read_secret_file(args.password_file, "password")
    import sys

    if args.password_stdin or not common.stdin_is_tty(sys.stdin):
        line = sys.stdin.readline().split("\n", 1)[0].rstrip("\r")
        if not line:
            raise CliError("no password on stdin", USAGE)
        return line
    import getpass

    return getpass.getpass("Password: ")


def _auth_socket(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    if args.auth_socket:
        return str(args.auth_socket)
    cfg = _config(args, environ)
    for spec in cfg.authd.listen:
        return spec
    raise CliError("[authd] listen is empty", CONFIG)


def _connect(spec: str, timeout: float) -> socket.socket:
    from services.netserver import parse_listen

    if spec.startswith("/"):
        spec = f"unix:{spec}"
    try:
        where = parse_listen(spec)
    except ValueError as exc:
        raise CliError(str(exc), CONFIG) from None
    try:
        if where.kind == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(where.path)
            return s
        return socket.create_connection((where.host, where.port), timeout=timeout)
    except OSError as exc:
        raise CliError(
            f"cannot reach pfm-authd at {where}: {exc.strerror or exc}", UNAVAILABLE
        ) from None


def cmd_test(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from authd.wire import FrameDecoder, Reply, ReplyKind, Request, RequestKind, WireError

    spec = _auth_socket(args, environ)
    password = _read_password(args)
    try:
        request = Request(
            RequestKind.AUTH,
            user=args.user,
            password=password,
            service=args.service,
            remote_ip=args.remote_ip,
            client_id="pfm-auth-test",
        )
    except WireError as exc:
        raise CliError(f"cannot send this request: {exc}", USAGE) from None
    began = time.perf_counter()
    with _connect(spec, args.timeout) as s:
        try:
            s.sendall(request.encode())
            decoder = FrameDecoder()
            frames: list[Any] = []
            while not frames:
                chunk = s.recv(65536)
                if not chunk:
                    raise CliError("pfm-authd closed the connection without answering", UNAVAILABLE)
                frames = decoder.feed(chunk)
            reply = Reply.from_frame(frames[0])
        except TimeoutError:
            raise CliError(
                f"pfm-authd did not answer within {args.timeout:g} s", TEMPFAIL
            ) from None
        except WireError as exc:
            raise CliError(f"unreadable answer from pfm-authd: {exc}", UNAVAILABLE) from None
        except OSError as exc:
            raise CliError(
                f"pfm-authd connection failed: {exc.strerror or exc}", UNAVAILABLE
            ) from None
    ms = round((time.perf_counter() - began) * 1000, 1)
    data: dict[str, Any] = {"result": reply.kind.name, "reason": reply.reason, "ms": ms}
    if reply.kind is ReplyKind.OK:
        data.update(user=reply.user, home=reply.home, uid=reply.uid, gid=reply.gid)
        data.update(dict(reply.extra))
    if args.json:
        common.print_json(data)
    else:
        print(f"{reply.kind.name}{f' ({reply.reason})' if reply.reason else ''} in {ms} ms")
        for key in ("user", "home", "uid", "gid", *dict(reply.extra)):
            if data.get(key):
                print(f"  {key}: {data[key]}")
    return {
        ReplyKind.OK: OK,
        ReplyKind.NOUSER: NOT_FOUND,
        ReplyKind.TEMPFAIL: TEMPFAIL,
    }.get(reply.kind, FAILURE)
