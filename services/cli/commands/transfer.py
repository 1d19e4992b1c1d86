"""``pfm import`` and ``pfm export``: the directory as CSV or JSON files.

The formats and the rules (validate everything first, one all-or-nothing write, conflicts
unless ``--update``) are in :mod:`services.directory.transfer`.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Mapping
from typing import IO, Any

from .. import common
from ..exitcodes import INVALID, OK, USAGE, CliError

KIND_CHOICES = ("domains", "alias-domains", "mailboxes", "aliases")

IMPORT_EPILOG = """\
CSV columns (header line required; any order; empty cell = not given):
  domains        name,description,active,max_mailboxes,max_aliases,default_quota,limits
  alias-domains  name,target,active
  mailboxes      address,password_hash,name,quota,active,limits
  aliases        source,targets,active          (targets separated by spaces, ; or ,)
  limits: NAME=WINDOW[,WINDOW...] separated by ;  e.g. user_messages=500/1d,50/1h
  sizes: bytes or 1G/500M; active: true/false. Quote hashes: they contain commas.

Every row is checked first; every bad row is reported as FILE:LINE: field: problem and
nothing is written. A row equal to the stored object is left alone; one that differs is a
conflict unless --update. Existing password hashes are stored as they are.

examples:
  pfm import domains.csv mailboxes.csv aliases.csv --dry-run
  pfm import export-dir/            # the <kind>.csv files written by pfm export
  pfm import directory.json --update
"""

EXPORT_EPILOG = """\
TOTP secrets are never exported; password hashes only with --with-hashes (files are
always written mode 0600, atomically).

examples:
  pfm export --out directory.json --with-hashes
  pfm export --format csv --out export-dir/
  pfm export --format csv --kind mailboxes > mailboxes.csv
"""


def register(sub: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    i = sub.add_parser(
        "import",
        help="import domains, mailboxes, aliases from CSV or JSON (all-or-nothing)",
        description="Import directory objects from CSV files (one kind per file) or a JSON "
        "export document, validating everything before one all-or-nothing write.",
        epilog=IMPORT_EPILOG,
        formatter_class=fmt,
    )
    i.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="CSV or JSON files, directories holding <kind>.csv files, or - for stdin",
    )
    i.add_argument(
        "--kind", choices=KIND_CHOICES, help="the kind of the CSV rows (default: from the header)"
    )
    i.add_argument(
        "--format", choices=("auto", "csv", "json"), default="auto", help="default: by name"
    )
    i.add_argument(
        "--update", action="store_true", help="change existing objects that differ (else: conflict)"
    )
    common.add_output_flags(i)
    i.set_defaults(func=cmd_import)

    e = sub.add_parser(
        "export",
        help="export domains, mailboxes, aliases as JSON or CSV",
        description="Export the directory in the format pfm import reads.",
        epilog=EXPORT_EPILOG,
        formatter_class=fmt,
    )
    e.add_argument("--format", choices=("json", "csv"), default="json")
    e.add_argument("--kind", choices=KIND_CHOICES, help="only this kind (CSV: one file)")
    e.add_argument(
        "--out",
        metavar="FILE|DIR",
        help="output file (a directory for CSV of every kind); default: stdout",
    )
    e.add_argument("--with-hashes", action="store_true", help="include password hashes (secret!)")
    e.set_defaults(func=cmd_export)


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class _Progress:
    """``\\rimport: 42%`` on stderr, only when stderr is a terminal."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.last = -1

    def __call__(self, frac: float) -> None:
        pct = int(frac * 100)
        if pct != self.last:
            self.last = pct
            self.stream.write(f"\rimport: {pct:3d}%")
            self.stream.flush()

    def clear(self) -> None:
        if self.last >= 0:
            self.stream.write("\r" + " " * 14 + "\r")
            self.stream.flush()
            self.last = -1


def cmd_import(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from services.directory import transfer

    err = sys.stderr
    progress = _Progress(err) if _isatty(err) else None

    def on_error(msg: str) -> None:
        if progress is not None:
            progress.clear()
        print(msg, file=err)

    with common.open_directory(args, environ) as d:
        try:
            plan = transfer.plan_import(
                d.backend,
                args.files,
                kind=args.kind,
                fmt=args.format,
                update=args.update,
                known_limits=d.known_limits,
                on_error=on_error,
                progress=progress,
                stdin=sys.stdin.buffer,
            )
        except transfer.ImportError_ as exc:
            raise CliError(str(exc), INVALID) from None
        finally:
            if progress is not None:
                progress.clear()
        summary = plan.summary()
        if not plan.ok:
            if args.json:
                common.print_json({**summary, "applied": False, "dry_run": args.dry_run})
            raise CliError(f"{plan.errors} error(s) found: nothing written", INVALID)
        applied = False
        if not args.dry_run:
            applied = transfer.apply_plan(d.backend, plan, d.actor)
    if args.json:
        common.print_json({**summary, "applied": applied, "dry_run": args.dry_run})
        return OK
    rows = [
        [k, str(c["create"]), str(c["update"]), str(c["unchanged"])]
        for k, c in summary["counts"].items()
    ]
    common.print_table(("kind", "create", "update", "unchanged"), rows)
    if args.dry_run:
        print("dry run: nothing written")
    elif not applied:
        print("nothing to change")
    return OK


def _text_out(binary: IO[bytes]) -> io.TextIOWrapper:
    return io.TextIOWrapper(binary, encoding="utf-8", newline="")


def cmd_export(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from services.directory import transfer

    kinds = transfer.KINDS if args.kind is None else (transfer.parse_kind(args.kind),)
    to_stdout = not args.out or args.out == "-"
    if to_stdout and args.with_hashes and _isatty(sys.stdout):
        raise CliError("refusing to print password hashes on a terminal: use --out FILE", USAGE)
    if args.format == "csv" and args.kind is None and to_stdout:
        raise CliError("CSV of every kind needs --out DIR (or choose one --kind)", USAGE)
    with common.open_directory(args, environ) as d:
        backend = d.backend
        if args.format == "json":
            if to_stdout:
                transfer.write_json(sys.stdout, backend, kinds, with_hashes=args.with_hashes)
                return OK
            _write_file(
                args.out,
                lambda t: transfer.write_json(t, backend, kinds, with_hashes=args.with_hashes),
            )
            return OK
        if args.kind is not None:
            kind = kinds[0]
            if to_stdout:
                transfer.write_csv(sys.stdout, backend, kind, with_hashes=args.with_hashes)
                return OK
            _write_file(
                args.out,
                lambda t: transfer.write_csv(t, backend, kind, with_hashes=args.with_hashes),
            )
            return OK
        out_dir = args.out
        try:
            os.makedirs(out_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise CliError(f"cannot create {out_dir}: {exc.strerror}", INVALID) from None
        if not os.path.isdir(out_dir):
            raise CliError(f"{out_dir} is not a directory", USAGE)
        for k in kinds:
            path = os.path.join(out_dir, f"{k}.csv")
            _write_file(
                path,
                lambda t, k=k: transfer.write_csv(t, backend, k, with_hashes=args.with_hashes),
            )
            print(path, file=sys.stderr)
    return OK


def _write_file(path: str, write: Any) -> None:
    from services.directory.transfer import atomic_writer

    if os.path.isdir(path):
        raise CliError(f"{path} is a directory: give a file name", USAGE)
    try:
        with atomic_writer(path, 0o600) as fh:
            text = _text_out(fh)
            write(text)
            text.flush()
            text.detach()
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}", INVALID) from None
