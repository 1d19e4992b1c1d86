"""Fixtures for Dovecot end-to-end tests: a pfm-authd under test and private Dovecot instances.

Import the fixtures into a test module (``from tests.e2e.dovecot_fixtures import *``-style,
naming them) or into ``tests/e2e/conftest.py``.

The pfm-authd under test is a socket path: :class:`AuthdHandle` holds it, the logins it
accepts (``users``: login -> password) and how to stop and restart it. :func:`start_fake_authd`
starts tests/fixtures/fake_authd.py; a starter for the real daemon returns the same handle
and replaces it in :data:`AUTHD_STARTERS` (``PFM_E2E_AUTHD=<name>`` picks one).

Permissions: Dovecot runs checkpassword helpers as user ``dovecot`` and Lua passdb workers
as ``root`` (2.3 defaults), so the socket's directory is world-traversable (0755) and the
socket itself mode 0666 — as the real daemon's socket must be for the ``dovecot`` user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import integration_required, require_binary
from tests.e2e.dovecot_instance import (
    CHECKPASSWORD,
    DOVECOT,
    LUA_MODULE,
    LUA_PASSDB,
    POP3_BINARY,
    DovecotInstance,
    checkpassword_passdb,
    lua_passdb,
)
from tests.e2e.postfix_instance import world_dir
from tests.fixtures.fake_authd import FakeAuthd, FakeUser

# Logins the authd under test must accept (a real-daemon starter seeds its directory so).
USERS: dict[str, str] = {
    "alice@example.org": "alice-Secret-1",
    "bob@example.org": "bob-Secret-2",
}
LUA_SOCKET = Path("/usr/lib/x86_64-linux-gnu/lua/5.4/socket/unix.so")
USER_EXTRA = (("userdb_quota_rule", "*:storage=1G"),)


@dataclass
class AuthdHandle:
    """A running pfm-authd (real or fake) that Dovecot reaches at ``socket``."""

    socket: Path
    users: dict[str, str]
    stop: Callable[[], None]
    start: Callable[[], None]
    fake: FakeAuthd | None = None
    extra: dict[str, str] = field(default_factory=dict)


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
        login: FakeUser(password, home=f"/srv/mail/{login}", extra=USER_EXTRA)
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

    handle = AuthdHandle(sock, dict(USERS), stop=stop, start=start)
    start()
    return handle


AUTHD_STARTERS: dict[str, Callable[[Path], AuthdHandle]] = {"fake": start_fake_authd}


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
def authd() -> Iterator[AuthdHandle]:
    """The pfm-authd under test on a socket Dovecot can reach (``PFM_E2E_AUTHD``, default fake)."""
    name = os.environ.get("PFM_E2E_AUTHD", "fake")
    directory = world_dir("authd-")
    handle = AUTHD_STARTERS[name](directory)
    try:
        yield handle
    finally:
        handle.stop()
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


@pytest.fixture(scope="module")
def dovecot_lua(authd: AuthdHandle, dovecot_factory: DovecotFactory) -> DovecotInstance:
    """A Dovecot whose passdb is configs/dovecot/pfm-passdb.lua asking ``authd``."""
    return dovecot_factory(
        lua_passdb(LUA_PASSDB),
        userdb="prefetch",
        authd_env={"PFM_AUTHD_SOCKET": str(authd.socket), "PFM_AUTHD_TIMEOUT": "5"},
    )


@pytest.fixture(scope="module")
def dovecot_checkpassword(authd: AuthdHandle, dovecot_factory: DovecotFactory) -> DovecotInstance:
    """A Dovecot whose passdb is pfm-checkpassword asking ``authd``."""
    return dovecot_factory(checkpassword_passdb(authd.socket, helper=CHECKPASSWORD, timeout=5))
