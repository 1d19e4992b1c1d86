"""The real pfm-authd behind a real Dovecot: the issue's login scenarios on both passdb paths.

Each scenario runs through the Lua passdb (configs/dovecot/pfm-passdb.lua) and through
pfm-checkpassword, against ``python -m authd`` over a SQLite directory seeded through
``services.directory`` (password, TOTP and app-password users), and then against the same
daemon in LDAP-bind mode with a private slapd. Codes come from pyotp at test time.

Timing facts this module relies on: Dovecot answers a failed login no sooner than 0.5 s, and
then delays every login from that IP by ~4 s (its auth penalty), so each login comes from its
own loopback address; pfm-authd sees that address as ``rip`` (both paths forward it).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pyotp
import pytest

from tests.e2e.dovecot_fixtures import (
    APP_USER,
    TOTP_USERS,
    TRAP_USERS,
    USERS,
    AuthdHandle,
    DovecotFactory,
    authd_running,
    checkpassword_instance,
    dovecot_checkpassword,
    dovecot_factory,
    dovecot_lua,
    fresh_ip,
    imap_login,
    lua_instance,
    other_network_ip,
    pop3_login,
    start_ldap_authd,
    start_real_authd,
)
from tests.e2e.dovecot_instance import DovecotInstance

__all__ = ["dovecot_checkpassword", "dovecot_factory", "dovecot_lua"]

pytestmark = pytest.mark.e2e

ALICE = "alice@example.org"
PATHS = ["dovecot_lua", "dovecot_checkpassword"]
LDAP_PATHS = ["ldap_lua", "ldap_checkpassword"]
TOTP_USER = dict(zip(PATHS, TOTP_USERS, strict=True))  # each path its own replay guard
TRAP_USER = dict(zip(PATHS, TRAP_USERS, strict=True))
TARPIT_START = 0.3
# The login window tarpits too: every attempt here comes from a new address, as a botnet's do.
GUARD = {"tarpit_windows": ["ip", "ip_login", "login"], "tarpit_start": "300ms"}


@pytest.fixture(scope="module")
def authd(request: pytest.FixtureRequest) -> Iterator[AuthdHandle]:
    """The real pfm-authd over SQLite, tarpitting per login as well as per IP."""

    def start(directory: Path) -> AuthdHandle:
        return start_real_authd(directory, guard=GUARD)

    yield from authd_running(start, request)


@pytest.fixture(scope="module")
def ldap_authd(request: pytest.FixtureRequest) -> Iterator[AuthdHandle]:
    """The real pfm-authd in LDAP-bind mode against its own private slapd."""
    yield from authd_running(start_ldap_authd, request)


@pytest.fixture(scope="module")
def ldap_lua(ldap_authd: AuthdHandle, dovecot_factory: DovecotFactory) -> DovecotInstance:
    """A Dovecot with the Lua passdb asking the LDAP-mode pfm-authd."""
    return lua_instance(dovecot_factory, ldap_authd)


@pytest.fixture(scope="module")
def ldap_checkpassword(ldap_authd: AuthdHandle, dovecot_factory: DovecotFactory) -> DovecotInstance:
    """A Dovecot with pfm-checkpassword asking the LDAP-mode pfm-authd."""
    return checkpassword_instance(dovecot_factory, ldap_authd)


def _instance(request: pytest.FixtureRequest, name: str) -> DovecotInstance:
    instance = request.getfixturevalue(name)
    assert isinstance(instance, DovecotInstance)
    return instance


def logged(handle: AuthdHandle, rip: str, count: int = 1, timeout: float = 5.0) -> list[Any]:
    """The daemon's ``auth`` log records for attempts from ``rip`` (waits for ``count``)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [
            r for r in handle.log_records() if r.get("rip") == rip and r.get("event") == "auth"
        ]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"pfm-authd logged {len(found)} attempts from {rip}")
        time.sleep(0.02)


def blocks(handle: AuthdHandle) -> list[Any]:
    """``pfm auth blocks --json`` against the daemon's admin socket."""
    from services.cli.main import main as pfm

    assert handle.log is not None
    out = io.StringIO()
    with redirect_stdout(out):
        code = pfm(["auth", "--socket", str(handle.log.parent / "admin.sock"), "blocks", "--json"])
    assert code == 0
    result = json.loads(out.getvalue())
    assert isinstance(result, list)
    return result


# --------------------------------------------------------------------------- SQLite directory


@pytest.mark.parametrize("path", PATHS)
def test_password_login_reaches_authd_with_client_address(
    request: pytest.FixtureRequest, authd: AuthdHandle, path: str
) -> None:
    """IMAP LOGIN with the password works and pfm-authd logs the IMAP client's address as rip."""
    instance = _instance(request, path)
    rip = fresh_ip()
    result, _ = imap_login(instance, ALICE, USERS[ALICE], source=rip)
    assert result == "OK", instance.log_text()[-2000:]
    (record,) = logged(authd, rip)
    assert (record["user"], record["service"], record["result"]) == (ALICE, "imap", "ok")
    assert record["mechanism"] == "password"
    assert authd.log is not None and USERS[ALICE] not in authd.log.read_text()


@pytest.mark.parametrize("path", PATHS)
def test_totp_code_logs_in_once_and_replay_elsewhere_is_refused(
    request: pytest.FixtureRequest, authd: AuthdHandle, path: str
) -> None:
    """Password+TOTP code logs in; the same code from another network is refused, no code too."""
    instance = _instance(request, path)
    user = TOTP_USER[path]
    password = TOTP_USERS[user]
    code = pyotp.TOTP(authd.totp[user]).now()
    first = fresh_ip()
    assert imap_login(instance, user, password + code, source=first)[0] == "OK"
    (record,) = logged(authd, first)
    assert (record["mechanism"], record["totp_used"]) == ("password_totp", True)
    # the same client reconnecting from its network rides the grace cache, no new code
    near = fresh_ip()
    assert imap_login(instance, user, password + code, source=near)[0] == "OK"
    assert logged(authd, near)[0]["mechanism"] == "totp_grace"
    # another client elsewhere replaying the code: refused as a replay (RFC 6238 §5.2)
    far = other_network_ip()
    replay, _ = imap_login(instance, user, password + code, source=far)
    assert "[AUTHENTICATIONFAILED]" in replay
    assert logged(authd, far)[0]["reason"] == "totp_replayed"
    bare, _ = imap_login(instance, user, password)
    assert "[AUTHENTICATIONFAILED]" in bare
    assert authd.log is not None and password not in authd.log.read_text()


@pytest.mark.parametrize("path", PATHS)
def test_app_password_scoped_to_imap_is_refused_for_pop3(
    request: pytest.FixtureRequest, authd: AuthdHandle, path: str
) -> None:
    """An app password scoped to imap opens IMAP and is refused by POP3."""
    instance = _instance(request, path)
    user = APP_USER[0]
    app = authd.app_passwords[user]
    rip = fresh_ip()
    assert imap_login(instance, user, app, source=rip)[0] == "OK"
    assert logged(authd, rip)[0]["mechanism"] == "app_password"
    refused = pop3_login(instance, user, app)
    assert refused.startswith("-ERR") and "[AUTH]" in refused, refused
    assert pop3_login(instance, user, APP_USER[1]).startswith("+OK")  # the password still works


@pytest.mark.parametrize("path", PATHS)
def test_distinct_wrong_passwords_tarpit_grows(
    request: pytest.FixtureRequest, authd: AuthdHandle, path: str
) -> None:
    """Distinct wrong passwords, each from a new address, are answered slower and slower."""
    instance = _instance(request, path)
    user = TRAP_USER[path]
    took, rips = [], []
    for i in range(4):
        rips.append(fresh_ip())
        result, seconds = imap_login(instance, user, f"guess number {i}", source=rips[-1])
        assert "[AUTHENTICATIONFAILED]" in result
        took.append(seconds)
    # attempt n waits TARPIT_START * 2**(n-2) in pfm-authd, on top of Dovecot's 0.5 s
    tarpit = [logged(authd, rip)[0].get("tarpit_s", 0.0) for rip in rips]
    assert tarpit == pytest.approx([0.0, TARPIT_START, 2 * TARPIT_START, 4 * TARPIT_START])
    assert took[0] < took[2] < took[3], took
    assert took[3] - took[0] > 3 * TARPIT_START, took
    assert blocks(authd) == []  # below every threshold: slowed down, not blocked


def test_doveadm_auth_test_for_totp_user(authd: AuthdHandle, dovecot_lua: DovecotInstance) -> None:
    """``doveadm auth test`` with password+code succeeds for a TOTP user on the imap service."""
    user = "tina@example.org"
    code = pyotp.TOTP(authd.totp[user]).at(time.time() + 30)  # the earlier test used "now"
    proc = dovecot_lua.doveadm("auth", "test", "-x", "service=imap", user, TOTP_USERS[user] + code)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"passdb: {user} auth succeeded" in proc.stdout
    # doveadm's own service ("doveadm") is not in totp_services: the password alone works
    assert dovecot_lua.auth_test(user, TOTP_USERS[user]).returncode == 0


# --------------------------------------------------------------------------- LDAP directory


@pytest.mark.parametrize("path", LDAP_PATHS)
def test_ldap_bind_mode_login(request: pytest.FixtureRequest, path: str) -> None:
    """In LDAP-bind mode the right password logs in over IMAP and a wrong one is refused."""
    instance = _instance(request, path)
    assert imap_login(instance, ALICE, USERS[ALICE])[0] == "OK", instance.log_text()[-2000:]
    assert "[AUTHENTICATIONFAILED]" in imap_login(instance, ALICE, "not it")[0]


def test_ldap_doveadm_auth_test(
    ldap_lua: DovecotInstance, ldap_checkpassword: DovecotInstance
) -> None:
    """``doveadm auth test`` works for an LDAP mailbox through both passdbs."""
    for instance in (ldap_lua, ldap_checkpassword):
        proc = instance.auth_test(ALICE, USERS[ALICE])
        assert proc.returncode == 0, proc.stderr
        assert f"passdb: {ALICE} auth succeeded" in proc.stdout


def test_ldap_down_is_temporary_and_locks_nobody_out(
    ldap_authd: AuthdHandle, ldap_lua: DovecotInstance, ldap_checkpassword: DovecotInstance
) -> None:
    """slapd stopped: [UNAVAILABLE] on both paths, nothing counted; slapd back: logins at once."""
    slapd = ldap_authd.slapd
    assert slapd is not None and slapd.pid is not None
    paths = (ldap_lua, ldap_checkpassword)
    for instance in paths:  # warm: connections to slapd exist before it goes away
        assert imap_login(instance, ALICE, USERS[ALICE])[0] == "OK"
    slapd.stop()
    try:
        for instance in paths:
            for password in (USERS[ALICE], "a wrong one"):  # each costs Dovecot 0.5 s
                result, _ = imap_login(instance, ALICE, password)
                assert "[UNAVAILABLE]" in result, result
            with instance.auth_client() as client:
                assert client.plain(ALICE, USERS[ALICE], rip=fresh_ip()).temporary
    finally:
        slapd.start()
    assert blocks(ldap_authd) == []
    for instance in paths:
        result, seconds = imap_login(instance, ALICE, USERS[ALICE])
        assert result == "OK", ldap_authd.log.read_text()[-2000:] if ldap_authd.log else ""
        assert seconds < 1.0  # no tarpit: the outage counted no failure
    assert any(r.get("reason") == "directory_unavailable" for r in ldap_authd.log_records())
