"""Dovecot logins through pfm-authd: the Lua passdb and pfm-checkpassword in a real Dovecot.

The authd under test is the ``authd`` fixture: the real pfm-authd over a seeded SQLite
directory by default (``PFM_E2E_AUTHD=ldap`` for LDAP-bind mode, ``fake`` for the stand-in,
see dovecot_fixtures.py); both Dovecot instances ask it over its unix socket. Tests that need
a misbehaving (hanging) or request-counting authd start their own fake. Failed logins cost ≥ 0.5 s each (Dovecot
answers failures on a 500 ms timer), so the module keeps them few.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.dovecot_fixtures import (
    USERS,
    AuthdHandle,
    DovecotFactory,
    authd,
    dovecot_checkpassword,
    dovecot_factory,
    dovecot_lua,
    fresh_ip,
    imap_login,
    pop3_login,
    start_fake_authd,
)
from tests.e2e.dovecot_instance import DovecotInstance, checkpassword_passdb, lua_passdb
from tests.e2e.postfix_instance import world_dir
from tests.fixtures.fake_authd import FakeAuthd

__all__ = ["authd", "dovecot_checkpassword", "dovecot_factory", "dovecot_lua"]

pytestmark = pytest.mark.e2e

ALICE = "alice@example.org"
PATHS = ["dovecot_lua", "dovecot_checkpassword"]


def _instance(request: pytest.FixtureRequest, name: str) -> DovecotInstance:
    instance = request.getfixturevalue(name)
    assert isinstance(instance, DovecotInstance)
    return instance


@contextlib.contextmanager
def _removed(directory: Path) -> Iterator[None]:
    """Remove ``directory`` when the block ends."""
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("path", PATHS)
def test_imap_login_with_good_password(request: pytest.FixtureRequest, path: str) -> None:
    """IMAP LOGIN with the right password succeeds through the Lua passdb and checkpassword."""
    instance = _instance(request, path)
    result, _ = imap_login(instance, ALICE, USERS[ALICE])
    assert result == "OK", instance.log_text()[-2000:]
    instance.wait_for_log(rf"imap-login: Info: Login: user=<{ALICE}>, method=PLAIN")


@pytest.mark.parametrize("path", PATHS)
def test_imap_login_with_wrong_password_is_refused(
    request: pytest.FixtureRequest, path: str
) -> None:
    """A wrong password gets NO [AUTHENTICATIONFAILED], answered no sooner than 0.5 s."""
    instance = _instance(request, path)
    result, seconds = imap_login(instance, ALICE, "not-the-password")
    assert "[AUTHENTICATIONFAILED]" in result
    assert seconds >= 0.5


def test_lua_passdb_sends_the_login_context(
    authd: AuthdHandle, dovecot_lua: DovecotInstance
) -> None:
    """The Lua passdb hands authd service, mechanism, addresses, ports and client id."""
    with dovecot_lua.auth_client() as client:
        rip = fresh_ip()
        result = client.plain(
            ALICE, USERS[ALICE], rip=rip, extra=("client_id=pfm-test", "rport=5555")
        )
    assert result.ok
    if authd.fake is None:  # the real daemon logs what it got (never the password)
        line = _logged(authd, rip)
        assert (line["user"], line["service"], line["result"]) == (ALICE, "imap", "ok")
        return
    request = authd.fake.requests[-1]
    assert (request.user, request.service, request.mechanism) == (ALICE, "imap", "PLAIN")
    assert (request.remote_ip, request.remote_port, request.local_ip) == (rip, 5555, "127.0.0.1")
    assert (request.client_id, request.secured) == ("pfm-test", "secured")
    assert request.password == USERS[ALICE]


def _logged(authd: AuthdHandle, rip: str, timeout: float = 5.0) -> dict[str, Any]:
    """The real daemon's log record of the attempt from ``rip``."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in authd.log_records() if r.get("rip") == rip]
        if found:
            return found[-1]
        if time.monotonic() > deadline:
            raise AssertionError(f"pfm-authd logged nothing with rip={rip}")
        time.sleep(0.02)


def test_auth_client_socket_reports_ok_fail_and_fields(dovecot_lua: DovecotInstance) -> None:
    """Dovecot's auth-client socket answers OK with the user and FAIL for an unknown user."""
    with dovecot_lua.auth_client() as client:
        assert "PLAIN" in client.mechanisms
        ok = client.plain(ALICE, USERS[ALICE], rip=fresh_ip())
        unknown = client.plain("nobody@example.org", "whatever", rip=fresh_ip())
    assert ok.ok and ok.fields["user"] == ALICE
    assert not unknown.ok and not unknown.temporary


@pytest.mark.parametrize("path", PATHS)
def test_pop3_login(request: pytest.FixtureRequest, path: str) -> None:
    """POP3 USER/PASS works for the pop3 service through both passdbs."""
    instance = _instance(request, path)
    assert pop3_login(instance, ALICE, USERS[ALICE]).startswith("+OK")
    instance.wait_for_log(rf"pop3-login: Info: Login: user=<{ALICE}>")


def test_doveadm_auth_test_shows_userdb_fields(
    authd: AuthdHandle, dovecot_lua: DovecotInstance
) -> None:
    """``doveadm auth test`` accepts the user; ``auth login`` shows the userdb fields authd sent."""
    proc = dovecot_lua.auth_test(ALICE, USERS[ALICE])
    assert proc.returncode == 0, proc.stderr
    assert f"passdb: {ALICE} auth succeeded" in proc.stdout
    login = dovecot_lua.doveadm("auth", "login", ALICE, USERS[ALICE])  # passdb + prefetch userdb
    assert login.returncode == 0, login.stderr
    assert f"quota_rule={authd.extra['quota_rule']}" in login.stdout
    assert f"home={authd.extra['home']}" in login.stdout
    assert dovecot_lua.auth_test(ALICE, "wrong").returncode != 0


def test_doveadm_auth_test_through_checkpassword(dovecot_checkpassword: DovecotInstance) -> None:
    """``doveadm auth test`` works through pfm-checkpassword too."""
    proc = dovecot_checkpassword.auth_test(ALICE, USERS[ALICE])
    assert proc.returncode == 0, proc.stderr + dovecot_checkpassword.log_text()[-2000:]
    assert f"passdb: {ALICE} auth succeeded" in proc.stdout


def test_lua_passdb_lookup_answers_existence(dovecot_lua: DovecotInstance) -> None:
    """``doveadm auth lookup`` (auth_passdb_lookup) finds a known user and not an unknown one."""
    found = dovecot_lua.doveadm("auth", "lookup", ALICE)
    assert found.returncode == 0, found.stderr
    assert f"user      : {ALICE}" in found.stdout
    missing = dovecot_lua.doveadm("auth", "lookup", "nobody@example.org")
    assert missing.returncode != 0


def test_authd_unreachable_is_a_temporary_failure(
    authd: AuthdHandle,
    dovecot_lua: DovecotInstance,
    dovecot_checkpassword: DovecotInstance,
) -> None:
    """With authd down both paths answer [UNAVAILABLE]; once it is back logins work again."""
    for instance in (dovecot_lua, dovecot_checkpassword):  # warm Lua's persistent connection
        assert imap_login(instance, ALICE, USERS[ALICE])[0] == "OK"
    authd.stop()
    try:
        for instance in (dovecot_lua, dovecot_checkpassword):
            result, _ = imap_login(instance, ALICE, USERS[ALICE])
            assert "[UNAVAILABLE]" in result
            assert "Temporary authentication failure" in result
            with instance.auth_client() as client:
                assert client.plain(ALICE, USERS[ALICE], rip=fresh_ip()).temporary
    finally:
        authd.start()
    for instance in (dovecot_lua, dovecot_checkpassword):
        assert imap_login(instance, ALICE, USERS[ALICE])[0] == "OK"
    dovecot_lua.wait_for_log(r"pfm-authd unreachable: connect .*authd\.sock")
    authd.stop()  # a restart between two logins leaves the Lua worker a dead connection,
    authd.start()  # which it must replace without failing the next login
    assert imap_login(dovecot_lua, ALICE, USERS[ALICE])[0] == "OK"


def test_hanging_authd_times_out_as_temporary_failure(dovecot_factory: DovecotFactory) -> None:
    """An authd that never answers becomes a temporary failure after the passdb's timeout."""
    directory = world_dir("authd-hang-")
    sock = directory / "authd.sock"
    with FakeAuthd(sock, mode="hang"), _removed(directory):
        sock.chmod(0o666)
        lua = dovecot_factory(
            lua_passdb(), authd_env={"PFM_AUTHD_SOCKET": str(sock), "PFM_AUTHD_TIMEOUT": "1"}
        )
        cp = dovecot_factory(checkpassword_passdb(sock, timeout=1))
        for instance in (lua, cp):
            began = time.monotonic()
            with instance.auth_client() as client:
                assert client.plain(ALICE, USERS[ALICE], rip=fresh_ip()).temporary
            assert 0.9 <= time.monotonic() - began < 5
        lua.wait_for_log(r"pfm-authd unreachable: receive: timeout")


def test_checkpassword_helper_runs_as_dovecot_and_lua_as_root(
    dovecot_lua: DovecotInstance, dovecot_checkpassword: DovecotInstance
) -> None:
    """Dovecot's auth process (which forks checkpassword) runs as dovecot, its auth workers as root."""
    ps = subprocess.run(
        ["ps", "-eo", "user=,args="], capture_output=True, text=True, check=True
    ).stdout
    mine = [line.split(None, 1) for line in ps.splitlines() if dovecot_lua.name in line]
    users = {args.strip(): user for user, args in mine}
    assert users.get(f"dovecot-{dovecot_lua.name}/auth") == "dovecot"
    assert users.get(f"dovecot-{dovecot_lua.name}/auth -w") == "root"


def test_auth_cache_serves_repeats_without_asking_authd(dovecot_factory: DovecotFactory) -> None:
    """With Dovecot's auth cache on, a repeated login never reaches authd (README's warning)."""
    directory = world_dir("authd-cache-")
    handle = start_fake_authd(directory)  # its own fake: this test counts requests
    try:
        instance = dovecot_factory(
            lua_passdb(cache_key="%u%s%r%{sha256:password}"),
            userdb="prefetch",
            authd_env={"PFM_AUTHD_SOCKET": str(handle.socket)},
            extra="auth_cache_size = 1M\nauth_cache_ttl = 60s\nauth_cache_negative_ttl = 0\n",
        )
        assert handle.fake is not None
        _count_cached_logins(instance, handle.fake)
    finally:
        handle.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _count_cached_logins(instance: DovecotInstance, fake: FakeAuthd) -> None:
    rip, other = fresh_ip(), fresh_ip()
    with instance.auth_client() as client:
        before = len(fake.requests)
        assert client.plain(ALICE, USERS[ALICE], rip=rip).ok
        assert client.plain(ALICE, USERS[ALICE], rip=rip).ok  # a replay: served from the cache
        assert len(fake.requests) == before + 1
        assert client.plain(ALICE, USERS[ALICE], rip=other).ok  # %r in the key: asked again
        assert len(fake.requests) == before + 2


def test_lua_lookup_never_lets_cram_md5_succeed(
    authd: AuthdHandle, dovecot_factory: DovecotFactory
) -> None:
    """CRAM-MD5 gets no credentials from auth_passdb_lookup: even the right password fails."""
    instance = dovecot_factory(
        lua_passdb(),
        userdb="prefetch",
        authd_env={"PFM_AUTHD_SOCKET": str(authd.socket)},
        extra="auth_mechanisms = plain login cram-md5\n",
    )
    with instance.auth_client() as client:
        assert "CRAM-MD5" in client.mechanisms
        result = client.cram_md5(ALICE, USERS[ALICE], rip=fresh_ip())
    assert result.status == "FAIL" and not result.temporary
    instance.wait_for_log(r"Requested CRAM-MD5 scheme, but we have a NULL password")
