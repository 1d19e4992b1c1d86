#!/usr/bin/python3 -IS
"""pfm-checkpassword: the Dovecot checkpassword helper that asks pfm-authd.

Dovecot forks it once per login (``passdb { driver = checkpassword args = PATH }``), so it is
built to start fast: run it as ``python3 -I -S /path/authd/checkpassword.py`` (no site
imports) and it imports only builtin C modules (``posix`` via ``os``, ``_socket``, ``select``,
``time``). The ``socket`` wrapper module alone would cost ~9 ms of imports, hence ``_socket``.
It cannot import :mod:`authd.wire` either, so a minimal client half of the wire format
(documented there) is embedded here; the unit tests prove both agree on golden frames.

The file carries the shebang ``#!/usr/bin/python3 -IS``, so it can be named directly in
Dovecot's ``args``. A script is compiled on every run (~2 ms); a three-line launcher that
imports this module from its directory uses the cached ``.pyc`` instead.

Usage (Dovecot appends the reply program, normally checkpassword-reply, to ``args``)::

    pfm-checkpassword [--socket PATH] [--timeout SECONDS] [--] REPLY-PROGRAM [ARGS...]

Socket: ``--socket``, else env ``PFM_AUTHD_SOCKET``, else ``/run/pfm/authd.sock``.
Deadline for everything (fd 3, connect, answer): ``--timeout``, else env ``PFM_AUTHD_TIMEOUT``,
else 10 s; Dovecot itself waits 150 s, so this one makes a hung daemon a quick exit 111.

Contract: read ``user\\0password\\0[timestamp\\0]...`` (at most 512 bytes) from fd 3, always to
the end (Dovecot fails the login with a broken pipe otherwise); forward it with SERVICE,
TCPREMOTEIP/PORT, TCPLOCALIP/PORT, MASTER_USER and the ``AUTH_*`` environment. On OK set
USER, HOME (unset if none), ``userdb_uid``/``userdb_gid`` and the extra fields as environment
variables listed in EXTRA, then exec the reply program. With ``AUTHORIZED=1`` (a lookup, no
password) send a LOOKUP instead and set ``AUTHORIZED=2`` before the exec.

Exit codes: 1 wrong password, unknown user or unusable input; 3 unknown user in a lookup;
111 any temporary trouble (daemon unreachable, timeout, TEMPFAIL, protocol error).
Errors go to stderr (Dovecot logs it) as one line without secrets.
"""

from __future__ import annotations

import _socket
import os
import select
import sys
import time

DEFAULT_SOCKET = "/run/pfm/authd.sock"
DEFAULT_TIMEOUT = 10.0
MAX_INPUT = 512
MAX_PAYLOAD = 65536

EXIT_FAIL = 1
EXIT_NOUSER = 3
EXIT_TEMPFAIL = 111

PREFIX = b"PFA1"
T_AUTH, T_LOOKUP = b"A", b"L"
T_OK, T_FAIL, T_NOUSER, T_TEMPFAIL, T_ERROR = b"O", b"F", b"N", b"T", b"E"
REPLY_TYPES = (T_OK, T_FAIL, T_NOUSER, T_TEMPFAIL, T_ERROR)

# Dovecot environment -> wire field name (AUTH_* not listed here go as auth_<name>).
ENV_FIELDS = (
    ("SERVICE", "service"),
    ("TCPREMOTEIP", "remote_ip"),
    ("TCPREMOTEPORT", "remote_port"),
    ("TCPLOCALIP", "local_ip"),
    ("TCPLOCALPORT", "local_port"),
    ("AUTH_CLIENT_ID", "client_id"),
    ("MASTER_USER", "master_user"),
    ("AUTH_MECH", "mechanism"),
    ("AUTH_SECURED", "secured"),
)
_MAPPED = frozenset(name for name, _ in ENV_FIELDS)
_KEY_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_")
_FIXED_REPLY = ("user", "home", "uid", "gid", "reason")


class Trouble(Exception):
    """Ends the helper with an exit code and a one-line message (never a secret)."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- wire (client)


def valid_key(key: bytes) -> bool:
    """True for a wire field name: [a-z][a-z0-9_]{0,63}."""
    return 0 < len(key) <= 64 and 97 <= key[0] <= 122 and all(c in _KEY_CHARS for c in key)


def encode_request(ftype: bytes, fields: list[tuple[bytes, bytes]]) -> bytes:
    """One request frame: PFA1, type, 4-byte big-endian length, key\\0value\\0 fields."""
    payload = b"".join(k + b"\0" + v + b"\0" for k, v in fields)
    if len(payload) > MAX_PAYLOAD:
        raise Trouble(EXIT_TEMPFAIL, "request too large for the wire format")
    return PREFIX + ftype + len(payload).to_bytes(4, "big") + payload


def decode_header(header: bytes) -> tuple[bytes, int]:
    """Check a 9-byte reply header; return (type, payload length)."""
    if header[:3] != b"PFA":
        raise Trouble(EXIT_TEMPFAIL, "protocol error: authd reply has no PFA magic")
    if header[3:4] != b"1":
        raise Trouble(EXIT_TEMPFAIL, "protocol error: unsupported authd wire version")
    ftype = header[4:5]
    if ftype not in REPLY_TYPES:
        raise Trouble(EXIT_TEMPFAIL, "protocol error: unknown reply type")
    length = int.from_bytes(header[5:9], "big")
    if length > MAX_PAYLOAD:
        raise Trouble(EXIT_TEMPFAIL, "protocol error: authd reply too large")
    return ftype, length


def decode_payload(payload: bytes) -> dict[str, str]:
    """The fields of a reply payload; any rule broken is a protocol error."""
    if not payload:
        return {}
    parts = payload[:-1].split(b"\0")
    if payload[-1:] != b"\0" or len(parts) % 2:
        raise Trouble(EXIT_TEMPFAIL, "protocol error: malformed authd reply payload")
    out: dict[str, str] = {}
    for i in range(0, len(parts), 2):
        key = parts[i]
        if not valid_key(key) or key.decode() in out:
            raise Trouble(EXIT_TEMPFAIL, "protocol error: bad field name in authd reply")
        try:
            out[key.decode()] = parts[i + 1].decode("utf-8")
        except UnicodeDecodeError:
            raise Trouble(EXIT_TEMPFAIL, "protocol error: authd reply is not UTF-8") from None
    return out


# --------------------------------------------------------------------------- helpers


class Deadline:
    """The helper's total time budget."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, what: str) -> float:
        """Seconds left; Trouble(111) once the budget is spent."""
        rest = self.end - time.monotonic()
        if rest <= 0:
            raise Trouble(EXIT_TEMPFAIL, f"timeout {what}")
        return rest


def read_input(fd: int, deadline: Deadline) -> tuple[bytes, bool]:
    """Read fd to EOF; return (first MAX_INPUT bytes, True if there was more)."""
    data = b""
    oversized = False
    while True:
        try:
            ready, _, _ = select.select([fd], [], [], deadline.left("reading fd 3"))
            if not ready:
                continue
            chunk = os.read(fd, 4096)
        except OSError as exc:
            raise Trouble(EXIT_TEMPFAIL, f"cannot read fd 3: {exc.strerror}") from None
        if not chunk:
            return data, oversized
        if not oversized:
            data += chunk
            if len(data) > MAX_INPUT:
                data, oversized = data[:MAX_INPUT], True


def parse_input(data: bytes) -> tuple[bytes, bytes]:
    """Split ``user\\0password\\0...`` into (user, password)."""
    parts = data.split(b"\0")
    if len(parts) < 3 or not parts[0]:
        raise Trouble(EXIT_FAIL, "malformed input on fd 3 (expected user NUL password NUL)")
    return parts[0], parts[1]


def parse_args(argv: list[str], environ: dict[str, str]) -> tuple[str, float, list[str]]:
    """Return (socket path, timeout seconds, reply program argv)."""
    path = environ.get("PFM_AUTHD_SOCKET") or DEFAULT_SOCKET
    raw_timeout = environ.get("PFM_AUTHD_TIMEOUT", "")
    i = 0
    while i < len(argv) and argv[i].startswith("--"):
        opt = argv[i]
        if opt == "--":
            i += 1
            break
        name, eq, value = opt.partition("=")
        if name not in ("--socket", "--timeout"):
            raise Trouble(EXIT_TEMPFAIL, f"unknown option {name}")
        if not eq:
            if i + 1 >= len(argv):
                raise Trouble(EXIT_TEMPFAIL, f"option {name} needs a value")
            i += 1
            value = argv[i]
        if name == "--socket":
            path = value
        else:
            raw_timeout = value
        i += 1
    timeout = DEFAULT_TIMEOUT
    if raw_timeout:
        try:
            timeout = float(raw_timeout)
        except ValueError:
            timeout = -1.0
        if not 0 < timeout <= 3600:
            raise Trouble(EXIT_TEMPFAIL, "PFM_AUTHD_TIMEOUT/--timeout must be 0 < seconds <= 3600")
    if i >= len(argv):
        raise Trouble(EXIT_TEMPFAIL, "usage: pfm-checkpassword [--socket PATH] REPLY-PROGRAM")
    return path, timeout, argv[i:]


def request_fields(
    user: bytes, password: bytes | None, environ: dict[str, str]
) -> list[tuple[bytes, bytes]]:
    """The wire fields of the request: credentials, then Dovecot's environment."""
    fields = [(b"user", user)]
    if password is not None:
        fields.append((b"password", password))
    for env, key in ENV_FIELDS:
        value = environ.get(env, "")
        if value:
            fields.append((key.encode(), value.encode("utf-8", "replace")))
    for env in sorted(environ):
        if env.startswith("AUTH_") and env not in _MAPPED and env != "AUTH_PASSWORD":
            raw_key = env.lower().encode("ascii", "replace")
            if valid_key(raw_key):
                fields.append((raw_key, environ[env].encode("utf-8", "replace")))
    return fields


def ask(path: str, frame: bytes, deadline: Deadline) -> tuple[bytes, dict[str, str]]:
    """Send one request frame to pfm-authd and return (reply type, fields)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(deadline.left("connecting to authd"))
        sock.connect(path)
        sock.settimeout(deadline.left("sending to authd"))
        sock.sendall(frame)
        header = _recv(sock, 9, deadline)
        ftype, length = decode_header(header)
        return ftype, decode_payload(_recv(sock, length, deadline))
    except TimeoutError:
        raise Trouble(EXIT_TEMPFAIL, f"timeout talking to authd at {path}") from None
    except OSError as exc:
        raise Trouble(
            EXIT_TEMPFAIL, f"authd unreachable at {path}: {exc.strerror or exc}"
        ) from None
    finally:
        sock.close()


def _recv(sock: _socket.socket, size: int, deadline: Deadline) -> bytes:
    data = b""
    while len(data) < size:
        sock.settimeout(deadline.left("waiting for authd"))
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise Trouble(EXIT_TEMPFAIL, "protocol error: authd closed the connection")
        data += chunk
    return data


def _valid_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def reply_environment(fields: dict[str, str], user: str, lookup: bool) -> dict[str, str | None]:
    """Environment changes for checkpassword-reply on OK (None = unset)."""
    changes: dict[str, str | None] = {"USER": fields.get("user") or user}
    changes["HOME"] = fields.get("home") or None
    names: list[str] = []
    for key, env in (("uid", "userdb_uid"), ("gid", "userdb_gid")):
        if fields.get(key):
            changes[env] = fields[key]
            names.append(env)
    for key, value in fields.items():
        if key not in _FIXED_REPLY and key not in changes:
            changes[key] = value
            names.append(key)
    changes["EXTRA"] = " ".join(names) or None
    if lookup:
        changes["AUTHORIZED"] = "2"
    return changes


def check(argv: list[str], environ: dict[str, str]) -> tuple[list[str], dict[str, str | None]]:
    """Do the whole exchange; return (reply argv, env changes) to exec, or raise Trouble."""
    try:
        path, timeout, reply_argv = parse_args(argv, environ)
    except Trouble:
        _drain(3)
        raise
    deadline = Deadline(timeout)
    data, oversized = read_input(3, deadline)
    if oversized:
        raise Trouble(EXIT_FAIL, f"input on fd 3 longer than {MAX_INPUT} bytes")
    raw_user, raw_password = parse_input(data)
    if not (_valid_utf8(raw_user) and _valid_utf8(raw_password)):
        raise Trouble(EXIT_FAIL, "user or password on fd 3 is not UTF-8")
    lookup = environ.get("AUTHORIZED") == "1"
    fields = request_fields(raw_user, None if lookup else raw_password, environ)
    ftype = T_LOOKUP if lookup else T_AUTH
    try:
        frame = encode_request(ftype, fields)
    except Trouble:  # oversized AUTH_* extras: send the core fields only
        frame = encode_request(ftype, [f for f in fields if not f[0].startswith(b"auth_")])
    ftype, reply = ask(path, frame, deadline)
    if ftype == T_OK:
        return reply_argv, reply_environment(reply, raw_user.decode(), lookup)
    if ftype == T_NOUSER:
        raise Trouble(EXIT_NOUSER if lookup else EXIT_FAIL)
    if ftype == T_FAIL:
        raise Trouble(EXIT_FAIL)
    reason = "".join(c if c.isprintable() else "?" for c in reply.get("reason", "")[:200])
    what = "temporary failure" if ftype == T_TEMPFAIL else "protocol error reported"
    raise Trouble(EXIT_TEMPFAIL, f"authd {what}" + (f": {reason}" if reason else ""))


def _drain(fd: int) -> None:
    """Read fd to EOF (bounded) so Dovecot never sees a broken pipe, even on a usage error."""
    try:  # noqa: SIM105 - contextlib would cost import time on every login
        read_input(fd, Deadline(DEFAULT_TIMEOUT))
    except Trouble:
        pass


def _say(message: str) -> None:
    try:  # noqa: SIM105 - contextlib would cost import time on every login
        os.write(2, f"pfm-checkpassword: {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def main(argv: list[str]) -> int:
    """Run the helper; exec the reply program on success, else return the exit code."""
    try:
        reply_argv, changes = check(argv, dict(os.environ))
    except Trouble as trouble:
        if str(trouble):
            _say(str(trouble))
        return trouble.code
    for key, value in changes.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        os.execvp(reply_argv[0], reply_argv)  # noqa: S606 - the reply program Dovecot named
    except OSError as exc:
        _say(f"cannot exec {reply_argv[0]}: {exc.strerror}")
    return EXIT_TEMPFAIL


def run() -> None:
    """Console-script entry point."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    run()
