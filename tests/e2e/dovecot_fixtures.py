"""Fixtures for Dovecot end-to-end tests: a pfm-authd under test and private Dovecot instances.

Import the fixtures into a test module (``from tests.e2e.dovecot_fixtures import *``-style,
naming them) or into ``tests/e2e/conftest.py``.

The pfm-authd under test is a socket path: :class:`AuthdHandle` holds it, the logins it
accepts (``users``: login -> password) and how to stop and restart it. Starters
(:data:`AUTHD_STARTERS`, ``PFM_E2E_AUTHD=<name>`` picks one, default ``real``):

* ``real`` (:func:`start_real_authd`): the real daemon, ``python -m authd --config FILE``, as
  a subprocess over a SQLite directory seeded through ``services.directory`` with
  :data:`USERS`, TOTP users (:data:`TOTP_USERS`) and an app password user (:data:`APP_USER`);
* ``ldap`` (:func:`start_ldap_authd`): the same daemon with ``[directory] backend = "ldap"``
  against a private slapd (tests/integration/slapd_server.py), mailboxes written through the
  LDAP backend;
* ``fake`` (:func:`start_fake_authd`): tests/fixtures/fake_authd.py, for tests that need a
  misbehaving or request-counting authd.

Permissions: Dovecot runs checkpassword helpers as user ``dovecot`` and Lua passdb workers
as ``root`` (2.3 defaults), so the socket's directory is world-traversable (0755) and the
socket itself mode 0666 — as the real daemon's socket must be for the ``dovecot`` user.
"""

from __future__ import annotations

import contextlib
import imaplib
import itertools
import json
import os
import poplib
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import integration_required, pid_alive, require_binary
from tests.e2e.dovecot_instance import (
    CHECKPASSWORD,
    DOVECOT,
    LUA_MODULE,
    LUA_PASSDB,
    POP3_BINARY,
    REPO,
    DovecotInstance,
    checkpassword_passdb,
    lua_passdb,
)
from tests.e2e.postfix_instance import world_dir
from tests.fixtures.fake_authd import FakeAuthd, FakeUser
from tests.integration.slapd_server import SlapdServer

# Logins the authd under test must accept (every starter serves them).
USERS: dict[str, str] = {
    "alice@example.org": "alice-Secret-1",
    "bob@example.org": "bob-Secret-2",
}
# TOTP users of the real directory (password, then the 6-digit code): one per passdb path,
# so each path's test has its own replay guard step.
TOTP_USERS: dict[str, str] = {
    "tina@example.org": "tina-Secret-3",
    "tom@example.org": "tom-Secret-4",
}
# A mailbox with an app password scoped to imap (the secret is in AuthdHandle.app_passwords).
APP_USER = ("appy@example.org", "appy-Secret-5")
# Mailboxes that only ever get wrong passwords (tarpit tests), one per passdb path.
TRAP_USERS: dict[str, str] = {
    "trap1@example.org": "trap1-Secret-6",
    "trap2@example.org": "trap2-Secret-7",
}
QUOTA = 1 << 30  # alice's quota; the real daemon sends userdb_quota_rule=*:bytes=QUOTA
MAIL_ROOT = "/srv/mail"
LUA_SOCKET = Path("/usr/lib/x86_64-linux-gnu/lua/5.4/socket/unix.so")
USER_EXTRA = (("userdb_quota_rule", "*:storage=1G"),)
# A guard that never blocks the shared test logins (every test address is in 127.0.0.0/8,
# which the daemon trusts by default: here nothing is trusted, so the guard really runs).
TEST_GUARD: dict[str, Any] = {
    "per_ip": "50/10m",
    "per_login": "50/10m",
    "per_ip_login": "20/10m",
    "per_prefix": "1000/10m",
    "tarpit_start": "100ms",
    "tarpit_max": "2s",
}


@dataclass
class AuthdHandle:
    """A running pfm-authd (real or fake) that Dovecot reaches at ``socket``.

    ``extra`` holds what Dovecot should show for alice (``home``, ``quota_rule``);
    ``totp`` maps TOTP logins to their secrets, ``app_passwords`` logins to an app password
    scoped to imap; ``log`` is the real daemon's JSON log file.
    """

    socket: Path
    users: dict[str, str]
    stop: Callable[[], None]
    start: Callable[[], None]
    fake: FakeAuthd | None = None
    extra: dict[str, str] = field(default_factory=dict)
    totp: dict[str, str] = field(default_factory=dict)
    app_passwords: dict[str, str] = field(default_factory=dict)
    log: Path | None = None
    slapd: SlapdServer | None = None
    cleanup: Callable[[], None] | None = None

    def log_records(self) -> list[dict[str, Any]]:
        """The real daemon's JSON log lines so far (empty for the fake)."""
        if self.log is None or not self.log.exists():
            return []
        records = []
        for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records

    def close(self) -> None:
        """Stop the daemon and whatever it depends on (slapd)."""
        self.stop()
        if self.cleanup is not None:
            self.cleanup()


def _admit_dovecot(path: Path) -> None:
    """Let every Dovecot user connect: a unix socket needs write permission to connect."""
    os.chmod(path, 0o666)


class StoppableFakeAuthd(FakeAuthd):
    """The fake, but :meth:`stop` also closes open connections, as a stopping daemon does."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def _handle(self, conn: socketserver.BaseRequestHandler) -> None:
        sock = conn.request
        with self._lock:
            self._conns.add(sock)
        try:
            super()._handle(conn)
        except OSError:
            pass  # shut down under us by stop()
        finally:
            with self._lock:
                self._conns.discard(sock)

    def stop(self) -> None:
        """Stop listening, then shut down every open connection."""
        super().stop()
        with self._lock:
            for sock in self._conns:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def start_fake_authd(directory: Path) -> AuthdHandle:
    """Start the fake pfm-authd on ``directory/authd.sock`` serving :data:`USERS`."""
    sock = directory / "authd.sock"
    users = {
        login: FakeUser(password, home=f"{MAIL_ROOT}/{login}", extra=USER_EXTRA)
        for login, password in USERS.items()
    }
    state: dict[str, FakeAuthd] = {}

    def start() -> None:
        fake = StoppableFakeAuthd(sock, users)
        fake.start()
        _admit_dovecot(sock)
        state["fake"] = fake
        handle.fake = fake

    def stop() -> None:
        fake = state.pop("fake", None)
        if fake is not None:
            fake.stop()

    handle = AuthdHandle(
        sock,
        dict(USERS),
        stop=stop,
        start=start,
        extra={"home": f"{MAIL_ROOT}/alice@example.org", "quota_rule": "*:storage=1G"},
    )
    start()
    return handle


# --------------------------------------------------------------------------- real daemon


@dataclass(frozen=True)
class Seeded:
    """Secrets created while seeding a directory (shown once, as `pfm` would)."""

    totp: dict[str, str]
    app_passwords: dict[str, str]


def seed_directory(directory: Any, *, full: bool = True) -> Seeded:
    """Write the test mailboxes through the directory ops layer (any backend).

    Always :data:`USERS` (alice with a quota); with ``full`` also :data:`TOTP_USERS` (enrolled),
    :data:`APP_USER` (an app password scoped to imap) and :data:`TRAP_USERS`.
    """
    from services.directory.credentials import Credentials

    directory.add_domain("example.org")
    for login, password in USERS.items():
        quota = QUOTA if login.startswith("alice@") else None
        directory.add_mailbox(login, password=password, quota=quota)
    if not full:
        return Seeded({}, {})
    for login, password in {**TOTP_USERS, APP_USER[0]: APP_USER[1], **TRAP_USERS}.items():
        directory.add_mailbox(login, password=password)
    creds = Credentials(directory)
    totp = {login: creds.enroll_totp(login).secret for login in TOTP_USERS}
    app = creds.add_app_password(APP_USER[0], name="phone", scopes=["imap"]).secret
    return Seeded(totp, {APP_USER[0]: app})


def _toml(value: Any) -> str:
    """A TOML value for str, bool, int, float, list or table (strings JSON-escaped)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML for {type(value).__name__}")


def config_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """``pfm.toml`` text from ``{"section" or "a.b": {key: value}}`` (tables in order)."""
    out = []
    for name, table in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{key} = {_toml(value)}" for key, value in table.items())
        out.append("")
    return "\n".join(out)


def authd_config(
    directory: Path,
    dir_section: Mapping[str, Any],
    *,
    guard: Mapping[str, Any] | None = None,
    ldap: Mapping[str, Any] | None = None,
    **authd: Any,
) -> Path:
    """Write ``directory/pfm.toml`` for a test pfm-authd; return its path.

    The socket is ``directory/authd.sock`` with mode 0666 (checkpassword runs as dovecot),
    nothing is trusted (the test addresses are loopback ones), no metrics listener.
    """
    sections: dict[str, Mapping[str, Any]] = {
        "log": {"level": "info", "format": "json"},
        "directory": {
            "mail_root": MAIL_ROOT,
            "mail_uid": 65534,
            "mail_gid": 65534,
            **dir_section,
        },
    }
    if ldap is not None:
        sections["directory.ldap"] = ldap
    sections["authd"] = {
        "listen": [f"unix:{directory}/authd.sock:0666"],
        "admin_socket": str(directory / "admin.sock"),
        "metrics_listen": "",
        "trusted_networks": [],
        "verify_workers": 4,
        **authd,
    }
    sections["authd.guard"] = {**TEST_GUARD, **(guard or {})}
    path = directory / "pfm.toml"
    path.write_text(config_toml(sections), encoding="utf-8")
    return path


class AuthdProcess:
    """``python -m authd --config FILE`` as a subprocess, stopped by its PID."""

    def __init__(self, config: Path, sock: Path, log: Path) -> None:
        self.config = config
        self.sock = sock
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        """Start the daemon and wait until its socket accepts connections."""
        self.sock.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "authd", "--config", str(self.config)],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pfm-authd exited {self.proc.returncode}:\n{self.log_tail()}")
            if self.sock.exists():
                with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(str(self.sock))
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"pfm-authd not listening after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the daemon's PID and wait for it (SIGKILL after ``timeout``)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    @property
    def pid(self) -> int | None:
        """The running daemon's PID."""
        proc = self.proc
        return proc.pid if proc is not None and pid_alive(proc.pid) else None

    def log_tail(self, size: int = 3000) -> str:
        """The end of the daemon's log."""
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-size:]
        except FileNotFoundError:
            return ""


def _real_handle(
    directory: Path, config: Path, seeded: Seeded, users: dict[str, str]
) -> AuthdHandle:
    sock = directory / "authd.sock"
    process = AuthdProcess(config, sock, directory / "authd.log")
    handle = AuthdHandle(
        sock,
        users,
        stop=process.stop,
        start=process.start,
        extra={
            "home": f"{MAIL_ROOT}/example.org/alice",
            "quota_rule": f"*:bytes={QUOTA}",
        },
        totp=dict(seeded.totp),
        app_passwords=dict(seeded.app_passwords),
        log=process.log,
    )
    process.start()
    return handle


def start_real_authd(
    directory: Path, *, guard: Mapping[str, Any] | None = None, **authd: Any
) -> AuthdHandle:
    """The real pfm-authd over a seeded SQLite directory in ``directory`` (0755, under /tmp)."""
    from services.directory.ops import Directory
    from services.directory.sqlite import SqliteBackend

    db = directory / "directory.db"
    d = Directory(SqliteBackend(str(db)), actor="e2e")
    try:
        seeded = seed_directory(d)
    finally:
        d.backend.close()
    config = authd_config(directory, {"backend": "sqlite", "path": str(db)}, guard=guard, **authd)
    users = {**USERS, **TOTP_USERS, APP_USER[0]: APP_USER[1], **TRAP_USERS}
    return _real_handle(directory, config, seeded, users)


def ldap_settings(slapd: SlapdServer) -> dict[str, Any]:
    """``[directory.ldap]`` for pfm-authd against ``slapd`` (short timeouts)."""
    return {
        "uris": [slapd.uri],
        "base_dn": slapd.base_dn,
        "bind_dn": slapd.service_dn,
        "bind_password_file": str(slapd.password_file),
        "connect_timeout": 1,
        "timeout": 2,
    }


def start_ldap_authd(
    directory: Path, *, guard: Mapping[str, Any] | None = None, **authd: Any
) -> AuthdHandle:
    """The real pfm-authd in LDAP-bind mode against a private slapd seeded with :data:`USERS`.

    The handle's ``slapd`` can be stopped and started (same port, same data); ``close``
    stops both. Mailboxes are written through the LDAP backend, as `pfm` would.
    """
    from services.config import build_config
    from services.directory.ldap import LdapBackend
    from services.directory.ops import Directory

    slapd = SlapdServer(directory / "slapd", binary=require_binary("slapd"))
    slapd.start()
    try:
        settings = ldap_settings(slapd)
        backend = LdapBackend(build_config({"directory": {"ldap": settings}}).directory.ldap)
        try:
            seeded = seed_directory(Directory(backend, actor="e2e"), full=False)
        finally:
            backend.close()
        authd.setdefault("verify_cache_ttl", 0)  # every login binds
        config = authd_config(directory, {"backend": "ldap"}, ldap=settings, guard=guard, **authd)
        handle = _real_handle(directory, config, seeded, dict(USERS))
    except BaseException:
        slapd.stop()
        raise
    handle.slapd = slapd
    handle.cleanup = slapd.stop
    return handle


AUTHD_STARTERS: dict[str, Callable[[Path], AuthdHandle]] = {
    "real": start_real_authd,
    "ldap": start_ldap_authd,
    "fake": start_fake_authd,
}


def require_dovecot() -> None:
    """Skip (fail under CI=true) unless dovecot, imapd, pop3d, the Lua module and luasocket exist."""
    require_binary("dovecot")
    require_binary("doveadm")
    for path in (LUA_MODULE, POP3_BINARY, LUA_SOCKET):
        if not path.exists():
            msg = f"required file not installed: {path} (run `.ci/install-deps dovecot` as root)"
            if integration_required():
                pytest.fail(msg)
            pytest.skip(msg)


@pytest.fixture(scope="module")
def authd(request: pytest.FixtureRequest) -> Iterator[AuthdHandle]:
    """The pfm-authd under test on a socket Dovecot can reach (``PFM_E2E_AUTHD``, default real)."""
    name = os.environ.get("PFM_E2E_AUTHD", "real")
    if name not in AUTHD_STARTERS:
        pytest.fail(f"PFM_E2E_AUTHD={name!r}: pick one of {', '.join(AUTHD_STARTERS)}")
    yield from authd_running(AUTHD_STARTERS[name], request)


def authd_running(
    starter: Callable[[Path], AuthdHandle], request: pytest.FixtureRequest
) -> Iterator[AuthdHandle]:
    """Start an authd with ``starter`` in a fresh world-readable dir; close and remove it after.

    The dir is kept (and the daemon's log printed) when a test of the session failed.
    """
    require_dovecot()
    directory = world_dir("authd-")
    handle = starter(directory)
    try:
        yield handle
    finally:
        handle.close()
        if request.session.testsfailed > 0 and handle.log is not None:
            print(f"--- pfm-authd log {handle.log} ---\n{handle.log.read_text()[-6000:]}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


DovecotFactory = Callable[..., DovecotInstance]


@pytest.fixture(scope="module")
def dovecot_factory(request: pytest.FixtureRequest) -> Iterator[DovecotFactory]:
    """``make(passdb, **kwargs) -> started DovecotInstance``; all stopped at module teardown."""
    require_dovecot()
    assert Path(DOVECOT).exists()
    started: list[DovecotInstance] = []

    def make(passdb: str, **kwargs: object) -> DovecotInstance:
        instance = DovecotInstance(passdb, **kwargs)  # type: ignore[arg-type]
        started.append(instance)
        return instance.start()

    try:
        yield make
    finally:
        for instance in started:
            instance.terminate()
        for instance in started:
            instance.stop()
        failed = request.session.testsfailed > 0
        for instance in started:
            if failed:  # keep the dir for a look; print the log
                print(f"--- dovecot log of {instance.dir} ---\n{instance.log_text()[-6000:]}")
            else:
                instance.cleanup()


# --------------------------------------------------------------------------- clients

_addresses = itertools.count(2)
_networks = itertools.count(1)


def fresh_ip() -> str:
    """A loopback source address no test used yet (all in 127.0.0.0/16).

    Dovecot's auth penalty delays every login from an IP that just failed one (by 4 s here,
    ``login_trusted_networks`` or not), so each test logs in from its own address.
    """
    n = next(_addresses)
    return f"127.0.{n // 250}.{n % 250 + 2}"


def other_network_ip() -> str:
    """A fresh loopback address in a /24 that :func:`fresh_ip` never uses (127.200.N.2)."""
    return f"127.200.{next(_networks)}.2"


class SourceIMAP4(imaplib.IMAP4):
    """imaplib's IMAP4 connecting from a chosen local address."""

    def __init__(self, port: int, source: str) -> None:
        self.source = source
        super().__init__("127.0.0.1", port, timeout=20)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source, 0)
        )


class SourcePOP3(poplib.POP3):
    """poplib's POP3 connecting from a chosen local address."""

    def __init__(self, port: int, source: str) -> None:
        self.source = source
        super().__init__("127.0.0.1", port, timeout=20)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source, 0)
        )


def imap_login(
    instance: DovecotInstance, user: str, password: str, *, source: str = ""
) -> tuple[str, float]:
    """LOGIN over IMAP from ``source`` (default a fresh address); 'OK' or the NO text, seconds."""
    began = time.monotonic()
    with SourceIMAP4(instance.imap_port, source or fresh_ip()) as imap:
        try:
            typ, _ = imap.login(user, password)
        except imaplib.IMAP4.error as exc:
            return str(exc), time.monotonic() - began
        imap.logout()
    return typ, time.monotonic() - began


def pop3_login(instance: DovecotInstance, user: str, password: str, *, source: str = "") -> str:
    """USER/PASS over POP3 from ``source`` (default a fresh address); '+OK...' or the -ERR text."""
    pop = SourcePOP3(instance.pop3_port, source or fresh_ip())
    try:
        pop.user(user)
        try:
            return pop.pass_(password).decode(errors="replace")
        except poplib.error_proto as exc:
            reply = exc.args[0] if exc.args else b""
            return reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    finally:
        with contextlib.suppress(OSError, poplib.error_proto):
            pop.quit()


def lua_instance(factory: DovecotFactory, handle: AuthdHandle) -> DovecotInstance:
    """A Dovecot whose passdb is configs/dovecot/pfm-passdb.lua asking ``handle``."""
    return factory(
        lua_passdb(LUA_PASSDB),
        userdb="prefetch",
        authd_env={"PFM_AUTHD_SOCKET": str(handle.socket), "PFM_AUTHD_TIMEOUT": "5"},
    )


def checkpassword_instance(factory: DovecotFactory, handle: AuthdHandle) -> DovecotInstance:
    """A Dovecot whose passdb is pfm-checkpassword asking ``handle``."""
    return factory(checkpassword_passdb(handle.socket, helper=CHECKPASSWORD, timeout=5))


@pytest.fixture(scope="module")
def dovecot_lua(authd: AuthdHandle, dovecot_factory: DovecotFactory) -> DovecotInstance:
    """A Dovecot whose passdb is configs/dovecot/pfm-passdb.lua asking ``authd``."""
    return lua_instance(dovecot_factory, authd)


@pytest.fixture(scope="module")
def dovecot_checkpassword(authd: AuthdHandle, dovecot_factory: DovecotFactory) -> DovecotInstance:
    """A Dovecot whose passdb is pfm-checkpassword asking ``authd``."""
    return checkpassword_instance(dovecot_factory, authd)
