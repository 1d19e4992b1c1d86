"""A private real Dovecot 2.3: own config, base_dir and log in a temp dir, loopback ports.

:class:`DovecotInstance` writes ``dovecot.conf`` (IMAP and POP3 on free 127.0.0.1 ports, no
SSL, plaintext auth allowed, auth cache off, no extra failure delay), starts ``dovecot -c
FILE``, waits until it listens and stops it by the PID in ``base_dir/master.pid``. The passdb
under test is a parameter (text of one or more ``passdb { }`` blocks, see the ``*_passdb``
helpers), so the same tests run against pfm-checkpassword, the Lua passdb, a static passdb or
Dovecot's own LDAP passdb. :class:`AuthClient` speaks Dovecot's auth-client protocol on the
instance's ``auth-client`` socket, for fast login checks without IMAP.

Facts (Dovecot 2.3.19, Debian 12, as root): checkpassword helpers and Lua passdb scripts
(``blocking = yes``) both run as user ``dovecot`` in ``auth-worker`` or ``auth`` processes,
so the pfm-authd socket and every directory above it must admit that user; failed logins are
answered on a 500 ms timer even with ``auth_failure_delay = 0``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tests.conftest import free_port, pid_alive
from tests.e2e.postfix_instance import world_dir

REPO = Path(__file__).resolve().parents[2]
LUA_PASSDB = REPO / "configs" / "dovecot" / "pfm-passdb.lua"
CHECKPASSWORD = REPO / "authd" / "checkpassword.py"
PYTHON = "/usr/bin/python3"
DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
LUA_MODULE = Path("/usr/lib/dovecot/modules/auth/libauthdb_lua.so")
POP3_BINARY = Path("/usr/lib/dovecot/pop3")


# --------------------------------------------------------------------------- passdb blocks


def static_passdb(password: str = "secret") -> str:
    """A static passdb accepting any user with ``password`` (the benchmark baseline)."""
    return f"passdb {{\n  driver = static\n  args = password={password}\n}}\n"


def checkpassword_passdb(
    authd_socket: Path | str,
    *,
    helper: Path | str = CHECKPASSWORD,
    python: str = PYTHON,
    timeout: float = 10.0,
) -> str:
    """A checkpassword passdb running pfm-checkpassword against ``authd_socket``."""
    args = f"{python} -I -S {helper} --socket {authd_socket} --timeout {timeout:g}"
    return f"passdb {{\n  driver = checkpassword\n  args = {args}\n}}\n"


def lua_passdb(script: Path | str = LUA_PASSDB, *, cache_key: str = "") -> str:
    """A Lua passdb (``blocking = yes``: runs in auth workers) loading ``script``.

    The script finds pfm-authd through ``PFM_AUTHD_SOCKET`` (see ``authd_env`` of
    :class:`DovecotInstance`, which sets ``import_environment``).
    """
    args = f"file={script} blocking=yes"
    if cache_key:
        args += f" cache_key={cache_key}"
    return f"passdb {{\n  driver = lua\n  args = {args}\n}}\n"


def ldap_passdb(conf_file: Path | str) -> str:
    """Dovecot's native LDAP passdb with the settings in ``conf_file`` (``auth_bind = yes``)."""
    return f"passdb {{\n  driver = ldap\n  args = {conf_file}\n}}\n"


def ldap_bind_conf(
    uri: str, base: str, *, filter_: str = "(&(objectClass=inetOrgPerson)(mail=%u))"
) -> str:
    """The text of a ``dovecot-ldap.conf.ext`` that authenticates by binding as the user."""
    return (
        f"uris = {uri}\n"
        "ldap_version = 3\n"
        f"base = {base}\n"
        "scope = subtree\n"
        "auth_bind = yes\n"
        f"pass_filter = {filter_}\n"
        "pass_attrs = mail=user\n"
    )


# --------------------------------------------------------------------------- instance


def _listening(port: int) -> bool:
    """True when something listens on 127.0.0.1:port (read from /proc, no connection made)."""
    needle = f"0100007F:{port:04X} 00000000:0000 0A"
    try:
        with open("/proc/net/tcp") as f:
            return any(needle in line for line in f)
    except OSError:
        return False


class DovecotInstance:
    """One private Dovecot; :meth:`start` writes the config and starts it, :meth:`stop` ends it.

    ``passdb`` is the text of the passdb block(s) under test. ``userdb`` is ``static`` (uid
    and gid 65534, home under the instance's mail dir) or ``prefetch`` (the passdb's
    ``userdb_*`` fields; a static userdb follows it for lookups that bring none).
    ``authd_env`` entries go into ``import_environment`` so the Lua passdb can read them.
    ``extra`` is appended to ``dovecot.conf`` as it is. Mail processes run as uid/gid 65534
    (``mail_uid``/``mail_gid``) unless the userdb says otherwise.
    """

    def __init__(
        self,
        passdb: str,
        *,
        userdb: str = "static",
        authd_env: dict[str, str] | None = None,
        extra: str = "",
        root: Path | None = None,
    ) -> None:
        if userdb not in {"static", "prefetch"}:
            raise ValueError(f"userdb must be 'static' or 'prefetch', not {userdb!r}")
        self.dir = root if root is not None else world_dir("dovecot-")
        self.base = self.dir / "base"
        self.state = self.dir / "state"
        self.mail = self.dir / "mail"
        self.conf = self.dir / "dovecot.conf"
        self.log = self.dir / "dovecot.log"
        self.passdb = passdb
        self.userdb = userdb
        self.authd_env = dict(authd_env or {})
        self.extra = extra
        self.imap_port = free_port()
        self.pop3_port = free_port()
        self.name = f"pfm-test-{self.dir.name}"
        self._pid: int | None = None

    # ------------------------------------------------------------------ config

    @property
    def auth_client_socket(self) -> Path:
        """Dovecot's auth-client socket (mode 0666), for :class:`AuthClient` and doveadm."""
        return self.base / "auth-client"

    def userdb_text(self) -> str:
        """The userdb block(s)."""
        static = (
            "userdb {\n  driver = static\n"
            f"  args = uid=65534 gid=65534 home={self.mail}/%u allow_all_users=yes\n}}\n"
        )
        if self.userdb == "prefetch":
            return "userdb {\n  driver = prefetch\n}\n" + static
        return static

    def config_text(self) -> str:
        """The whole ``dovecot.conf``."""
        env = " ".join(["TZ", *(f"{k}={v}" for k, v in sorted(self.authd_env.items()))])
        return f"""# private test instance written by tests/e2e/dovecot_instance.py
base_dir = {self.base}
state_dir = {self.state}
instance_name = {self.name}
log_path = {self.log}
import_environment = {env}
protocols = imap pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_cache_size = 0
auth_failure_delay = 0
auth_verbose = yes
mail_location = maildir:{self.mail}/%u
default_login_user = dovenull
default_internal_user = dovecot
mail_uid = 65534
mail_gid = 65534
first_valid_uid = 100
login_greeting = pfm test dovecot ready
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service auth {{
  unix_listener auth-client {{
    mode = 0666
  }}
}}
{self.passdb}
{self.userdb_text()}
{self.extra}
"""

    def write_config(self) -> None:
        """Write ``dovecot.conf`` and create the mail dir (writable by the static uid)."""
        self.mail.mkdir(exist_ok=True)
        self.mail.chmod(0o1777)
        self.conf.write_text(self.config_text(), encoding="utf-8")
        self.conf.chmod(0o644)

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 15.0) -> DovecotInstance:
        """Write the config, start Dovecot and wait until IMAP, POP3 and auth-client are up."""
        self.write_config()
        # The daemonized master keeps inherited stdio open: no pipes here, or run() hangs.
        errors = self.dir / "start.err"
        with errors.open("wb") as err:
            proc = subprocess.run(
                [DOVECOT, "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                check=False,
                timeout=timeout,
            )
        if proc.returncode != 0:
            raise RuntimeError(
                f"dovecot -c {self.conf} exited {proc.returncode}: "
                f"{errors.read_text(errors='replace').strip()}\n{self.log_text()[-2000:]}"
            )
        deadline = time.monotonic() + timeout
        while True:
            self._pid = self._pid or self.master_pid()
            if (
                self._pid is not None
                and _listening(self.imap_port)
                and _listening(self.pop3_port)
                and self.auth_client_socket.exists()
            ):
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"dovecot not ready after {timeout} s:\n{self.log_text()}")
            time.sleep(0.01)

    def master_pid(self) -> int | None:
        """The PID in ``base_dir/master.pid``, if any."""
        try:
            return int((self.base / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the master PID and wait until it (and so its children) are gone (~1 s)."""
        pid = self.terminate()
        if pid is None:
            return
        deadline = time.monotonic() + timeout
        while pid_alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + timeout
            time.sleep(0.01)

    def terminate(self) -> int | None:
        """SIGTERM the master without waiting; return its PID (None if it was not running).

        Stopping takes Dovecot about a second; terminate several instances, then
        :meth:`stop` each, to wait for them in parallel.
        """
        pid = self._pid or self.master_pid()
        if pid is None or not pid_alive(pid):
            self._pid = None
            return None
        self._pid = pid
        os.kill(pid, signal.SIGTERM)
        return pid

    def cleanup(self) -> None:
        """Stop Dovecot and remove the instance's temp dir."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def reload(self) -> None:
        """Rewrite the config and SIGHUP the master (auth processes restart with it)."""
        self.write_config()
        pid = self._pid or self.master_pid()
        if pid is None:
            raise RuntimeError("dovecot is not running")
        os.kill(pid, signal.SIGHUP)

    def __enter__(self) -> DovecotInstance:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ tools

    def log_text(self) -> str:
        """Everything Dovecot logged so far."""
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float = 5.0) -> str:
        """Wait until a log line matches the regex ``pattern``; return that line."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_text().splitlines():
                if rx.search(line):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line matches {pattern!r}:\n{self.log_text()[-3000:]}")
            time.sleep(0.02)

    def doveadm(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``doveadm -c CONF ARGS`` against this instance."""
        return subprocess.run(
            [DOVEADM, "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def auth_test(self, user: str, password: str, *fields: str) -> subprocess.CompletedProcess[str]:
        """``doveadm auth test USER PASS [FIELD=VALUE ...]`` (exit 0 = login accepted)."""
        return self.doveadm("auth", "test", user, password, *fields)

    def auth_client(self, timeout: float = 10.0) -> AuthClient:
        """A connected :class:`AuthClient` on this instance's auth-client socket."""
        return AuthClient.connect(self.auth_client_socket, timeout=timeout)


# --------------------------------------------------------------------------- auth-client


@dataclass(frozen=True)
class AuthResult:
    """Dovecot's answer to one AUTH: ``OK`` or ``FAIL`` and its fields (``temp``, ``user`` ...)."""

    status: str
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when Dovecot accepted the login."""
        return self.status == "OK"

    @property
    def temporary(self) -> bool:
        """True for a temporary failure (Dovecot 2.3 adds ``code=temp_fail``)."""
        return self.status == "FAIL" and (
            self.fields.get("code") == "temp_fail" or "temp" in self.fields
        )


class AuthClient:
    """A client of Dovecot's auth-client protocol (``VERSION 1 2``) on a unix socket.

    Requests are answered in any order; this client sends one at a time and reads until
    the answer with its id comes back, so use one client per thread.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._next_id = 1
        self.mechanisms: list[str] = []

    @classmethod
    def connect(cls, path: Path | str, timeout: float = 10.0) -> AuthClient:
        """Connect, send VERSION and CPID and read the server handshake up to DONE."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(str(path))
        client = cls(sock)
        sock.sendall(f"VERSION\t1\t2\nCPID\t{os.getpid()}\n".encode())
        while True:
            line = client._line()
            if line.startswith("MECH\t"):
                client.mechanisms.append(line.split("\t")[1])
            elif line == "DONE":
                return client

    def _line(self) -> str:
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("auth-client connection closed by dovecot")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode("utf-8", "replace")

    def plain(
        self,
        user: str,
        password: str,
        *,
        service: str = "imap",
        rip: str = "127.0.0.1",
        lip: str = "127.0.0.1",
        extra: tuple[str, ...] = (),
    ) -> AuthResult:
        """One PLAIN login; return OK/FAIL and the fields Dovecot sent with it."""
        rid = self._next_id
        self._next_id += 1
        resp = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()
        params = [f"service={service}", f"lip={lip}", f"rip={rip}", "secured", *extra]
        self._sock.sendall(
            "\t".join(["AUTH", str(rid), "PLAIN", *params, f"resp={resp}"]).encode() + b"\n"
        )
        while True:
            parts = self._line().split("\t")
            if len(parts) < 2 or parts[1] != str(rid):
                continue
            fields: dict[str, str] = {}
            for part in parts[2:]:
                key, _, value = part.partition("=")
                fields[key] = value
            if parts[0] == "CONT":
                raise RuntimeError("dovecot asked for more data in a PLAIN exchange")
            return AuthResult(parts[0], fields)

    def cram_md5(
        self, user: str, password: str, *, service: str = "imap", rip: str = "127.0.0.1"
    ) -> AuthResult:
        """One CRAM-MD5 login (challenge, then ``user hex(HMAC-MD5(password, challenge))``)."""
        rid = self._next_id
        self._next_id += 1
        self._sock.sendall(f"AUTH\t{rid}\tCRAM-MD5\tservice={service}\trip={rip}\n".encode())
        while True:
            parts = self._line().split("\t")
            if len(parts) >= 2 and parts[1] == str(rid):
                break
        if parts[0] != "CONT":
            return AuthResult(parts[0], dict(p.partition("=")[::2] for p in parts[2:]))
        challenge = base64.b64decode(parts[2])
        digest = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
        answer = base64.b64encode(f"{user} {digest}".encode()).decode()
        self._sock.sendall(f"CONT\t{rid}\t{answer}\n".encode())
        while True:
            parts = self._line().split("\t")
            if len(parts) >= 2 and parts[1] == str(rid):
                return AuthResult(parts[0], dict(p.partition("=")[::2] for p in parts[2:]))

    def close(self) -> None:
        """Close the connection."""
        self._sock.close()

    def __enter__(self) -> AuthClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
