"""A real Dovecot talking HTTP to a real pfm-authd: the auth policy hook and the Lua/HTTP passdb.

pfm-authd runs as a subprocess (``python -m authd``) on a seeded SQLite directory with its
HTTP endpoint on a free port. Dovecot penalises every IP that just failed a login (2^n s),
so each login comes from its own loopback address.
"""

from __future__ import annotations

import contextlib
import imaplib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.directory.ops import Directory
from services.directory.sqlite import SqliteBackend
from tests.conftest import free_port, pid_alive
from tests.e2e.dovecot_fixtures import DovecotFactory, dovecot_factory
from tests.e2e.dovecot_instance import REPO, DovecotInstance, lua_passdb, static_passdb
from tests.e2e.postfix_instance import world_dir

__all__ = ["dovecot_factory"]

pytestmark = pytest.mark.e2e

HTTP_LUA = REPO / "configs" / "dovecot" / "pfm-passdb-http.lua"
POLICY_CONF = REPO / "configs" / "dovecot" / "auth-policy.conf.ext"
ALICE, ALICE_PW = "alice@example.org", "alice-Secret-1"
STATIC_PW = "static-secret"
API_KEY = "e2e-api-key-7f3a"
_addresses = itertools.count(2)


def fresh_ip() -> str:
    """A loopback source address no login of this module used yet."""
    n = next(_addresses)
    return f"127.0.{100 + n // 250}.{n % 250 + 2}"


class SourceIMAP4(imaplib.IMAP4):
    """imaplib's IMAP4 connecting from a chosen local address."""

    def __init__(self, port: int, source: str) -> None:
        self.source = source
        super().__init__("127.0.0.1", port, timeout=20)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source, 0)
        )


def imap_login(instance: DovecotInstance, user: str, password: str) -> tuple[str, float]:
    """LOGIN from a fresh address; 'OK' or the NO text, and the seconds LOGIN took."""
    with SourceIMAP4(instance.imap_port, fresh_ip()) as imap:
        began = time.monotonic()
        try:
            typ, _ = imap.login(user, password)
        except imaplib.IMAP4.error as exc:
            return str(exc), time.monotonic() - began
        took = time.monotonic() - began
        imap.logout()
    return typ, took


@dataclass
class RealAuthd:
    """A pfm-authd subprocess; ``port`` is its HTTP endpoint."""

    dir: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dovecot_key_file(self) -> Path:
        """The API key, readable by Dovecot's auth worker (owner dovecot, 0600)."""
        return self.dir / "dovecot.key"

    def log_text(self) -> str:
        return (self.dir / "authd.log").read_text(errors="replace")


def _listening(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def real_authd() -> Iterator[RealAuthd]:
    """pfm-authd with alice in a SQLite directory, an API key, guard on, no trusted networks."""
    d = world_dir("authd-http-")
    directory = Directory(SqliteBackend(str(d / "dir.db")), actor="test")
    directory.add_domain("example.org")
    directory.add_mailbox(ALICE, password=ALICE_PW)
    directory.add_mailbox("bob@example.org", password="bob-Secret-2")
    directory.backend.close()
    port = free_port()
    (d / "mail").mkdir(mode=0o1777)
    for name in ("http.key", "dovecot.key"):
        fd = os.open(d / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, f"{API_KEY}\n".encode())
        os.close(fd)
    shutil.chown(d / "dovecot.key", user="dovecot")
    (d / "pfm.toml").write_text(
        f"""
[directory]
backend = "sqlite"
path = "{d}/dir.db"
mail_root = "{d}/mail"
mail_uid = 65534
mail_gid = 65534

[authd]
listen = ["unix:{d}/authd.sock:0666"]
http_listen = "127.0.0.1:{port}"
http_api_key_file = "{d}/http.key"
admin_socket = "{d}/admin.sock"
metrics_listen = ""
trusted_networks = []
verify_workers = 2

[authd.guard]
per_ip = "100/10m"
per_login = "3/10m"
per_ip_login = "100/10m"
per_prefix = "1000/10m"
tarpit_windows = ["login"]
tarpit_start = "50ms"
tarpit_max = "1s"
""",
        encoding="utf-8",
    )
    log = (d / "authd.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "authd", "--config", str(d / "pfm.toml"), "--no-uvloop"],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    handle = RealAuthd(d, port, proc)
    try:
        if not _listening(port, 15):
            raise RuntimeError(f"pfm-authd did not start:\n{handle.log_text()}")
        yield handle
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        assert not pid_alive(proc.pid)


def policy_extra(authd: RealAuthd) -> str:
    """configs/dovecot/auth-policy.conf.ext pointed at ``authd``."""
    text = POLICY_CONF.read_text(encoding="utf-8")
    # the key as URL user info: Dovecot sends it as Authorization: Basic
    text = text.replace(
        "http://127.0.0.1:10042", f"http://dovecot:{API_KEY}@127.0.0.1:{authd.port}"
    )
    return text.replace("CHANGE-ME-to-a-random-string", "e2e-test-nonce")


def test_policy_blocks_login_after_reported_failures(
    real_authd: RealAuthd, dovecot_factory: DovecotFactory
) -> None:
    """Dovecot reports wrong passwords to pfm-authd; past the threshold even the right one fails."""
    dovecot = dovecot_factory(static_passdb(STATIC_PW), extra=policy_extra(real_authd))
    user = "victim@example.net"
    assert imap_login(dovecot, "other@example.net", STATIC_PW)[0] == "OK"
    for i in range(3):
        result, _ = imap_login(dovecot, user, f"guess-{i}")
        assert "[AUTHENTICATIONFAILED]" in result
    result, _ = imap_login(dovecot, user, STATIC_PW)
    # Dovecot shows the policy's msg to the client: NO [ALERT] Too many failed logins, ...
    assert "[ALERT] Too many failed logins" in result, dovecot.log_text()[-3000:]
    dovecot.wait_for_log(r"Authentication failure due to policy server refusal")
    # other logins are untouched
    assert imap_login(dovecot, "other@example.net", STATIC_PW)[0] == "OK"
    log = real_authd.log_text()
    assert '"command":"report"' in log and '"outcome":"blocked"' in log
    assert STATIC_PW not in log and "guess-0" not in log


def test_policy_tarpit_delays_the_next_login(
    real_authd: RealAuthd, dovecot_factory: DovecotFactory
) -> None:
    """After one reported failure, pfm-authd's tarpit (status 1) delays the next login by ~1 s."""
    dovecot = dovecot_factory(static_passdb(STATIC_PW), extra=policy_extra(real_authd))
    user = "slow@example.net"
    assert "[AUTHENTICATIONFAILED]" in imap_login(dovecot, user, "wrong-once")[0]
    result, seconds = imap_login(dovecot, user, STATIC_PW)
    assert result == "OK"
    assert seconds >= 0.9, seconds


def test_lua_http_passdb_login_is_fast(
    real_authd: RealAuthd, dovecot_factory: DovecotFactory
) -> None:
    """The Lua dovecot.http passdb logs in through /v1/auth without the 2 s 100-continue stall."""
    dovecot = dovecot_factory(
        lua_passdb(HTTP_LUA),
        userdb="prefetch",
        authd_env={
            "PFM_AUTHD_URL": real_authd.url,
            "PFM_AUTHD_TIMEOUT": "5",
            "PFM_AUTHD_API_KEY_FILE": str(real_authd.dovecot_key_file),
        },
    )
    times = []
    for _ in range(3):
        result, seconds = imap_login(dovecot, ALICE, ALICE_PW)
        assert result == "OK", dovecot.log_text()[-3000:]
        times.append(seconds)
    # Without "100 Continue" the FIRST request on each new connection waits 2 s (measured:
    # 2.01 s, later ones on the kept-alive connection do not), so every login counts here.
    assert max(times) < 0.5, times
    assert "[AUTHENTICATIONFAILED]" in imap_login(dovecot, ALICE, "not-her-password")[0]
    assert "[AUTHENTICATIONFAILED]" in imap_login(dovecot, "nobody@example.org", "x")[0]
    test = dovecot.auth_test(ALICE, ALICE_PW)
    assert test.returncode == 0 and f"passdb: {ALICE} auth succeeded" in test.stdout
    login = dovecot.doveadm("auth", "login", ALICE, ALICE_PW)  # passdb + prefetch userdb
    assert login.returncode == 0, login.stdout + login.stderr
    assert f"home={real_authd.dir}/mail/example.org/alice" in login.stdout
    assert "uid=65534" in login.stdout
