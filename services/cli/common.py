"""Helpers shared by the directory command groups of ``pfm``.

Opening the directory (config -> backend -> :class:`~services.directory.ops.Directory`),
mapping directory errors to named exit codes, rendering results as text or JSON, reading
passwords without ever taking them from the command line, and the small pure parsers
(sizes, ``--since``) the commands need.

Only light stdlib modules are imported at module level: ``pfm`` must start fast, so the
directory packages are imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

from .exitcodes import (
    CONFIG,
    CONFLICT,
    EXISTS,
    FAILURE,
    INVALID,
    NOT_FOUND,
    TEMPFAIL,
    UNAVAILABLE,
    USAGE,
    CliError,
)

if TYPE_CHECKING:
    from services.config import Config
    from services.directory.ops import Directory, Result

# --------------------------------------------------------------------------- pure parsers

_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """Bytes of a size like ``2G``, ``500M``, ``1.5g``, ``750KiB``, ``1024``; ``0``/``unlimited`` = 0.

    Units are binary (K = 1024), as Dovecot's quota rules read them. Raises ``ValueError``
    with a message naming the accepted forms.
    """
    value = text.strip().lower().replace("_", "")
    if value in ("unlimited", "none"):
        return 0
    for suffix in ("ib", "b"):
        if value.endswith(suffix) and value[: -len(suffix)][-1:] in ("k", "m", "g", "t"):
            value = value[: -len(suffix)]
            break
    num, unit = value, ""
    if value and value[-1] in _SIZE_UNITS and value[-1].isalpha():
        num, unit = value[:-1], value[-1]
    try:
        amount = float(num.strip())
    except ValueError:
        raise ValueError(
            f"invalid size {text!r}: use bytes or a number with K, M, G or T (2G, 500M), "
            "0 for unlimited"
        ) from None
    if amount < 0 or amount != amount or amount == float("inf"):
        raise ValueError(f"invalid size {text!r}: must be 0 (unlimited) or more")
    return int(amount * _SIZE_UNITS[unit])


def format_size(n: int) -> str:
    """A byte count, exact, in the largest whole unit: ``2G``, ``1536M``, ``1000B``; 0 = unlimited."""
    if n <= 0:
        return "unlimited"
    for unit in ("T", "G", "M", "K"):
        size = _SIZE_UNITS[unit.lower()]
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"


def size_value(text: str | None, field_name: str) -> int | None:
    """A SIZE argument in bytes (None stays None); bad input exits INVALID naming the field."""
    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError as exc:
        raise CliError(f"{field_name}: {exc}", INVALID) from None


def count_arg(text: str) -> int:
    """argparse type for a cap or count: a whole number, 0 or more."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 or more")
    return n


def parse_since(text: str, now: float) -> float:
    """A Unix time from ``--since``: a duration ago (``2h``, ``30m``, ``7d``) or an ISO date.

    ISO dates without a zone are local time. Raises ``ValueError`` naming the accepted forms.
    """
    value = text.strip()
    if not value:
        raise ValueError("--since is empty: use e.g. 2h, 7d or 2026-01-31T12:00")
    if value[0].isdigit() and not any(c in value for c in "-:T "):
        from services.config import Duration

        try:
            return now - float(Duration.parse(value))
        except ValueError:
            pass
    from datetime import datetime

    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"invalid --since {text!r}: use a duration ago (30m, 2h, 7d) or an ISO date "
            "(2026-01-31 or 2026-01-31T12:00)"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()
    return when.timestamp()


def diff_fields(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> list[tuple[str, Any, Any]]:
    """``(field, old, new)`` for each field that differs (``created``/``modified`` left out)."""
    if before is None or after is None:
        return []
    out = []
    for key in sorted(set(before) | set(after)):
        if key in ("modified", "created"):
            continue
        old, new = before.get(key), after.get(key)
        if old != new:
            out.append((key, old, new))
    return out


def fmt_value(key: str, value: Any) -> str:
    """One field value for humans (sizes, timestamps, lists, limits)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key in ("quota", "default_quota") and isinstance(value, int):
        return format_size(value)
    if key in ("created", "modified", "password_changed", "expires", "last_used", "ts"):
        return fmt_time(float(value)) if value else "-"
    if isinstance(value, Mapping):
        if not value:
            return "-"
        return "; ".join(f"{k}={','.join(v) if v else 'unlimited'}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) if value else "-"
    if value == "":
        return "-"
    return str(value)


def fmt_time(ts: float) -> str:
    """A Unix time as local ``YYYY-MM-DD HH:MM:SS``."""
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


# --------------------------------------------------------------------------- display


def display_domain(name: str) -> str:
    """The U-label of a domain for humans (the A-label when it is plain ASCII)."""
    if "xn--" not in name:
        return name
    from services.directory.model import display_domain as _display

    return _display(name)


def display_address(address: str) -> str:
    """An address (or ``@domain``) with its domain shown as U-label."""
    local, at, domain = address.rpartition("@")
    if not at:
        return display_domain(address)
    return f"{local}@{display_domain(domain)}"


def human_domain(name: str) -> str:
    """``bücher.example (xn--bcher-kva.example)`` for IDNs, the name otherwise."""
    shown = display_domain(name)
    return name if shown == name else f"{shown} ({name})"


def human_address(address: str) -> str:
    """An address with its U-label form and, for IDNs, the stored A-label in parentheses."""
    shown = display_address(address)
    return address if shown == address else f"{shown} ({address})"


# --------------------------------------------------------------------------- output


def print_json(data: Any, out: IO[str] | None = None) -> None:
    """Indented JSON (non-ASCII kept readable) on stdout."""
    import json

    print(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False), file=out or sys.stdout)


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain aligned table; nothing but the header for no rows."""
    table = [tuple(header), *(tuple(r) for r in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def print_fields(data: Mapping[str, Any], order: Sequence[str] = ()) -> None:
    """``key: value`` lines, ``order`` first, then the rest alphabetically."""
    keys = [k for k in order if k in data] + sorted(k for k in data if k not in order)
    width = max((len(k) for k in keys), default=0)
    for k in keys:
        print(f"{k + ':':<{width + 1}} {fmt_value(k, data[k])}")


_OPS = {"create": "create", "replace": "update", "delete": "remove"}
_DONE = {"create": "created", "replace": "updated", "delete": "removed"}


def render_result(result: Result, as_json: bool) -> int:
    """Print what a change did (or would do on a dry run); returns exit code 0."""
    if as_json:
        print_json(result.as_dict())
        return 0
    desc = result.as_dict()["changes"]
    if not result.changed:
        print(f"{_what(result.action)} {human_address(result.object)} unchanged")
        return 0
    before = result.audit[0].before if result.audit else None
    after = result.audit[0].after if result.audit else None
    prefix = "would " if result.dry_run else ""
    for c in desc:
        verb = _OPS[c["op"]] if result.dry_run else _DONE[c["op"]]
        print(f"{prefix}{verb} {c['kind'].replace('_', ' ')} {human_address(c['key'])}")
        if c["op"] == "replace" and c["key"] == result.object:
            for key, old, new in diff_fields(before, after):
                print(f"  {key}: {fmt_value(key, old)} -> {fmt_value(key, new)}")
    if result.message:
        print(result.message)
    if result.dry_run:
        print("dry run: nothing written")
    return 0


def _what(action: str) -> str:
    return action.partition(".")[0].replace("_", " ")


def add_output_flags(p: argparse.ArgumentParser, change: bool = True) -> None:
    """``--json`` everywhere, ``--dry-run`` on changes."""
    p.add_argument("--json", action="store_true", help="print JSON")
    if change:
        p.add_argument(
            "-n", "--dry-run", action="store_true", help="show what would change, write nothing"
        )


# --------------------------------------------------------------------------- the directory


def load_cfg(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    """The configuration named by ``--config`` / ``$PFM_CONFIG``; errors exit with CONFIG."""
    from services.config import ConfigError, config_path, load_config

    try:
        return load_config(config_path(getattr(args, "config", None), environ))
    except ConfigError as exc:
        raise CliError(f"invalid configuration: {exc}", CONFIG) from None


@contextmanager
def directory_errors() -> Iterator[None]:
    """Turn directory errors into one-line CLI errors with named exit codes."""
    from services.directory.model import (
        AlreadyExists,
        Conflict,
        DirectoryError,
        InvalidInput,
        NotFound,
        Unavailable,
    )

    try:
        yield
    except InvalidInput as exc:
        raise CliError(str(exc), INVALID) from None
    except NotFound as exc:
        raise CliError(str(exc), NOT_FOUND) from None
    except AlreadyExists as exc:
        raise CliError(f"{exc} (use --ensure to accept an existing one)", EXISTS) from None
    except Conflict as exc:
        raise CliError(str(exc), CONFLICT) from None
    except Unavailable as exc:
        raise CliError(f"directory unavailable: {exc}", TEMPFAIL) from None
    except DirectoryError as exc:
        raise CliError(str(exc), FAILURE) from None


@contextmanager
def open_directory(
    args: argparse.Namespace, environ: Mapping[str, str], *, read_only: bool = False
) -> Iterator[Directory]:
    """The configured directory with the acting user recorded for the audit log.

    ``read_only`` commands (list, show, audit) refuse a missing SQLite file instead of
    creating an empty directory where a wrong ``[directory] path`` points.
    """
    cfg = load_cfg(args, environ)
    if read_only and cfg.directory.backend == "sqlite" and not os.path.exists(cfg.directory.path):
        raise CliError(
            f"directory database {cfg.directory.path} does not exist: check [directory] path "
            f"in {cfg.source or 'the configuration'}, or add a domain to create it",
            CONFIG,
        )
    from services.directory.backend import open_backend
    from services.directory.ops import Directory, current_actor

    with directory_errors():
        try:
            backend = open_backend(cfg.directory)
        except OSError as exc:
            where = cfg.directory.path if cfg.directory.backend == "sqlite" else "LDAP"
            raise CliError(
                f"cannot open the directory ({where}): {exc.strerror or exc}", TEMPFAIL
            ) from None
        try:
            yield Directory(
                backend,
                actor=current_actor(environ),
                password_scheme=cfg.directory.password_scheme,
                revoke_app_passwords_on_passwd=cfg.directory.revoke_app_passwords_on_passwd,
                known_limits=frozenset(cfg.policyd.limits),
            )
        finally:
            backend.close()


def run_change(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    op: Callable[[Directory], Result],
) -> int:
    """Open the directory, run one change operation, render its result."""
    with open_directory(args, environ) as d:
        result = op(d)
    return render_result(result, args.json)


# --------------------------------------------------------------------------- terminal input


def stdin_is_tty(stream: IO[str] | None = None) -> bool:
    """Whether stdin is an interactive terminal (False for anything odd)."""
    s = stream or sys.stdin
    try:
        return bool(s.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def confirm(question: str, assume_yes: bool) -> None:
    """On a terminal ask ``question [y/N]``; raise unless answered yes (or ``--yes``)."""
    if assume_yes or not stdin_is_tty():
        return
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise CliError("aborted, nothing changed", FAILURE)


def add_password_flags(p: argparse.ArgumentParser, allow_hash: bool) -> None:
    """The password sources: a file, stdin, a prompt; never a command-line argument."""
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--password-file",
        metavar="FILE",
        help="read the password from the first line of FILE (keep it mode 0600)",
    )
    g.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first stdin line"
    )
    if allow_hash:
        g.add_argument(
            "--password-hash-file",
            metavar="FILE",
            help="import an existing Dovecot hash ({ARGON2ID}..., {BLF-CRYPT}..., {SSHA512}...) "
            "from the first line of FILE",
        )


def _first_line(text: str) -> str:
    line = text.split("\n", 1)[0]
    return line[:-1] if line.endswith("\r") else line


def read_secret_file(path: str, what: str) -> str:
    """The first line of a file holding a secret; warns when others may read it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise CliError(f"cannot read {what} file {path}: {exc.strerror}", INVALID) from None
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077:
            print(
                f"pfm: warning: {path} is readable by group or others; "
                f"chmod 600 it (it holds a {what})",
                file=sys.stderr,
            )
        with os.fdopen(fd, "r", encoding="utf-8", closefd=False) as f:
            text = f.read(65536)
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {what} file {path}: {exc}", INVALID) from None
    finally:
        os.close(fd)
    value = _first_line(text)
    if not value:
        raise CliError(f"{what} file {path} is empty", INVALID)
    return value


def read_new_password(
    args: argparse.Namespace,
    stdin: IO[str] | None = None,
    prompt: Callable[[str], str] | None = None,
) -> str:
    """The new password from ``--password-file``, ``--password-stdin`` or a twice-asked prompt."""
    if getattr(args, "password_file", None):
        return read_secret_file(args.password_file, "password")
    stream = stdin or sys.stdin
    if getattr(args, "password_stdin", False):
        value = _first_line(stream.readline())
        if not value:
            raise CliError("no password on stdin", INVALID)
        return value
    if not stdin_is_tty(stream) and prompt is None:
        raise CliError(
            "no password given: use --password-file FILE or --password-stdin, or run on a "
            "terminal to be asked",
            USAGE,
        )
    if prompt is None:
        import getpass

        prompt = getpass.getpass
    first = prompt("New password: ")
    if not first:
        raise CliError("empty password, nothing changed", INVALID)
    if prompt("Repeat password: ") != first:
        raise CliError("the passwords do not match, nothing changed", INVALID)
    return first


def admin_call(
    daemon: str, path: str, request: dict[str, Any], timeout: float = 5.0
) -> dict[str, Any]:
    """One JSON request to a daemon's admin socket (``daemon`` names it in errors)."""
    import json
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except FileNotFoundError:
        raise CliError(
            f"{daemon} admin socket {path} does not exist: is {daemon} running?", UNAVAILABLE
        ) from None
    except PermissionError:
        raise CliError(
            f"no permission to use {path} (run as root or the pfm user)", UNAVAILABLE
        ) from None
    except OSError as exc:
        raise CliError(
            f"cannot reach {daemon} at {path}: {exc.strerror or exc}", UNAVAILABLE
        ) from None
    try:
        answer = json.loads(buf)
    except ValueError:
        raise CliError(f"{daemon} sent an unreadable answer", UNAVAILABLE) from None
    if not answer.get("ok"):
        raise CliError(str(answer.get("error", "request failed")))
    return dict(answer)
