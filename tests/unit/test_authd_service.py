"""pfm-authd's decision layer with a fake directory (pure logic: no sockets, no hashing)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pyotp
import pytest
from prometheus_client import CollectorRegistry

from authd.guard import Guard
from authd.server import guard_config
from authd.service import AuthService, GraceCache, looks_like_app_password
from authd.state import MemoryState, StateError
from authd.telemetry import AuthMetrics
from authd.totp import TotpVerifier
from authd.verify import Account, Checked, DirectoryDown, VerifyCache
from authd.wire import ReplyKind, Request, RequestKind
from services.config import ConfigError, build_config
from services.directory.model import AppPassword, Mailbox

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


class FakeVerifier:
    """Mailboxes in a dict, plain-text passwords; ``down`` simulates an outage."""

    def __init__(self) -> None:
        self.accounts = {
            "alice@example.org": Account(Mailbox("alice@example.org", password_hash="pw-a"), True),
            "tina@example.org": Account(
                Mailbox("tina@example.org", password_hash="pw-t", totp_secret=SECRET), True
            ),
            "dom@off.example": Account(Mailbox("dom@off.example", password_hash="pw-d"), False),
        }
        self.apps: dict[tuple[str, str], AppPassword] = {}
        self.down = False
        self.checks = 0
        self.cache = VerifyCache(60)

    async def equalise_unknown_user(self, password: str) -> None:
        self.dummy_checks = getattr(self, "dummy_checks", 0) + 1

    async def account(self, address: str) -> Account | None:
        if self.down:
            raise DirectoryDown("directory down")
        return self.accounts.get(address)

    async def check_password(self, account: Account, password: str) -> Checked:
        self.checks += 1
        return Checked(password == account.mailbox.password_hash)

    async def app_password(self, address: str, secret: str, service: str) -> AppPassword | None:
        ap = self.apps.get((address, secret))
        return ap if ap is not None and service in ap.scopes else None

    async def record_app_password_use(self, id: str, ip: str) -> None:
        return None

    async def rehash(self, address: str, password: str) -> bool:
        return False


class BrokenState(MemoryState):
    """A state store that is down (every call raises StateError)."""

    def __getattribute__(self, name: str) -> Any:
        if name in {"use_step", "add_failure", "failure_counts", "get_entries", "set_entry"}:

            async def fail(*args: Any, **kw: Any) -> Any:
                raise StateError("redis down")

            return fail
        return super().__getattribute__(name)


def make_service(state: MemoryState | None = None, **authd: Any) -> tuple[AuthService, list[float]]:
    """An AuthService over the fake verifier; returns it and the list of tarpit sleeps."""
    config = build_config({"authd": {"metrics_listen": "", **authd}})
    st = state or MemoryState()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    service = AuthService(
        config.authd,
        config.directory,
        verifier=FakeVerifier(),  # type: ignore[arg-type]
        guard=Guard(st, guard_config(config.authd)),
        totp=TotpVerifier(st),
        metrics=AuthMetrics(CollectorRegistry()),
        sleep=sleep,
    )
    return service, slept


def auth(user: str, password: str, service: str = "imap", ip: str = "192.0.2.1") -> Request:
    """An AUTH request."""
    return Request(RequestKind.AUTH, user=user, password=password, service=service, remote_ip=ip)


async def test_right_and_wrong_password() -> None:
    """The right password is OK with userdb fields; a wrong one FAIL; an unknown user NOUSER."""
    service, _ = make_service()
    ok = await service.handle(auth("Alice@Example.org", "pw-a"))
    assert (ok.kind, ok.user, ok.home) == (
        ReplyKind.OK,
        "alice@example.org",
        "/var/vmail/example.org/alice",
    )
    assert (await service.handle(auth("alice@example.org", "x"))).kind is ReplyKind.FAIL
    assert (await service.handle(auth("ghost@example.org", "x"))).kind is ReplyKind.NOUSER
    # an unknown user costs a hash verification too, so timing does not reveal which exist
    assert getattr(service.verifier, "dummy_checks", 0) == 1
    assert (await service.handle(auth("not an address", "x"))).kind is ReplyKind.NOUSER


async def test_inactive_domain_fails() -> None:
    """A mailbox of an inactive domain is refused even with the right password."""
    service, _ = make_service()
    r = await service.handle(auth("dom@off.example", "pw-d"))
    assert (r.kind, r.reason) == (ReplyKind.FAIL, "domain_disabled")


async def test_directory_down_is_tempfail_and_counts_nothing() -> None:
    """A directory outage answers TEMPFAIL and records no guard failure."""
    service, _ = make_service()
    service.verifier.down = True  # type: ignore[attr-defined]
    for _ in range(5):
        r = await service.handle(auth("alice@example.org", "x"))
        assert (r.kind, r.reason) == (ReplyKind.TEMPFAIL, "directory_unavailable")
    counts = await service.guard.state.failure_counts(
        [service.guard._subjects("192.0.2.1", "alice@example.org").windows["login"]]
    )
    assert counts == [0]


async def test_state_down_fails_open_for_password_users() -> None:
    """With the state store down, password users still log in (guard skipped)."""
    service, _ = make_service(BrokenState())
    assert (await service.handle(auth("alice@example.org", "pw-a"))).kind is ReplyKind.OK
    assert (await service.handle(auth("alice@example.org", "x"))).kind is ReplyKind.FAIL


async def test_state_down_is_tempfail_for_totp_users() -> None:
    """With the replay guard unavailable, a TOTP login is TEMPFAIL (never accepted twice)."""
    service, _ = make_service(BrokenState())
    code = pyotp.TOTP(SECRET).now()
    r = await service.handle(auth("tina@example.org", "pw-t" + code))
    assert (r.kind, r.reason) == (ReplyKind.TEMPFAIL, "totp_replay_guard_unavailable")


async def test_totp_wrong_password_does_not_burn_the_code() -> None:
    """A wrong password with the current code fails before the code is checked."""
    service, _ = make_service()
    code = pyotp.TOTP(SECRET).now()
    bad = await service.handle(auth("tina@example.org", "nope" + code))
    assert (bad.kind, bad.reason) == (ReplyKind.FAIL, "wrong_password")
    good = await service.handle(auth("tina@example.org", "pw-t" + code))
    assert good.kind is ReplyKind.OK


async def test_totp_missing_code_and_bad_code() -> None:
    """A TOTP user without a code, or with a wrong code, is refused with a reason."""
    service, _ = make_service()
    r = await service.handle(auth("tina@example.org", "pw-t"))
    assert (r.kind, r.reason) == (ReplyKind.FAIL, "totp_code_missing")
    wrong = "000000" if pyotp.TOTP(SECRET).now() != "000000" else "111111"
    r = await service.handle(auth("tina@example.org", "pw-t" + wrong, ip="192.0.2.2"))
    assert r.kind is ReplyKind.FAIL and r.reason.startswith("totp_")


async def test_blocked_subject_is_refused_without_checking_password() -> None:
    """An admin block refuses the login before any password check."""
    service, _ = make_service()
    await service.guard.block("192.0.2.66", 600)
    r = await service.handle(auth("alice@example.org", "pw-a", ip="192.0.2.66"))
    assert (r.kind, r.reason) == (ReplyKind.FAIL, "blocked")
    assert service.verifier.checks == 0  # type: ignore[attr-defined]


async def test_tarpit_sleeps_before_checking() -> None:
    """After distinct failures the next attempt sleeps the tarpit delay first."""
    service, slept = make_service(guard={"tarpit_start": "1s", "tarpit_max": "4s"})
    for pw in ("a", "b", "c"):
        await service.handle(auth("alice@example.org", pw))
    assert slept == [1.0, 2.0]


async def test_app_password_only_in_its_scope() -> None:
    """An app password opens its scoped services only, and only when enabled."""
    service, _ = make_service()
    ap = AppPassword("ap-1", "alice@example.org", scopes=("imap",))
    service.verifier.apps[("alice@example.org", "abcd-efgh-ijkm-npqr")] = ap  # type: ignore[attr-defined]
    assert (
        await service.handle(auth("alice@example.org", "abcd-efgh-ijkm-npqr"))
    ).kind is ReplyKind.OK
    r = await service.handle(auth("alice@example.org", "abcd-efgh-ijkm-npqr", service="pop3"))
    assert r.kind is ReplyKind.FAIL
    off, _ = make_service(app_passwords=False)
    off.verifier.apps[("alice@example.org", "abcd-efgh-ijkm-npqr")] = ap  # type: ignore[attr-defined]
    assert (
        await off.handle(auth("alice@example.org", "abcd-efgh-ijkm-npqr"))
    ).kind is ReplyKind.FAIL


async def test_lookup_and_ping() -> None:
    """LOOKUP answers userdb fields (NOUSER when unknown); PING an empty OK."""
    service, _ = make_service()
    r = await service.handle(Request(RequestKind.LOOKUP, user="alice@example.org"))
    assert (r.kind, r.uid, r.gid) == (ReplyKind.OK, "5000", "5000")
    r = await service.handle(Request(RequestKind.LOOKUP, user="x@example.org"))
    assert r.kind is ReplyKind.NOUSER
    assert (await service.handle(Request(RequestKind.PING))).kind is ReplyKind.OK


def test_looks_like_app_password() -> None:
    """Only the xxxx-xxxx-... shape (any case, spaces or no dashes) looks like an app password."""
    assert looks_like_app_password("abcd-efgh-ijkm-npqr")
    assert looks_like_app_password("ABCD EFGH IJKM NPQR")
    assert not looks_like_app_password("correct horse battery")
    assert not looks_like_app_password("abcd-efgh-ijkl-0000")  # l and 0 are not our symbols


def test_verify_cache_expiry_and_stamp() -> None:
    """The verify cache hits only for the same password and stamp, before expiry."""
    now = [0.0]
    cache = VerifyCache(10, clock=lambda: now[0])
    cache.add("u", "pw", (1.0, 1.0, "h"))
    assert cache.hit("u", "pw", (1.0, 1.0, "h"))
    assert not cache.hit("u", "other", (1.0, 1.0, "h"))
    assert not cache.hit("u", "pw", (2.0, 2.0, "h2"))  # password changed: entry dropped
    assert not cache.hit("u", "pw", (1.0, 1.0, "h"))
    cache.add("u", "pw", (1.0, 1.0, "h"))
    now[0] = 11.0
    assert not cache.hit("u", "pw", (1.0, 1.0, "h"))
    assert "pw" not in repr(cache)


def test_grace_cache_keys_on_client_and_prefix() -> None:
    """A grace entry needs the same typed string, client id and network prefix."""
    now = [0.0]
    grace = GraceCache(300, clock=lambda: now[0])
    grace.add("u", "pw123456", "thunderbird", "192.0.2.0/24", "s")
    assert grace.hit("u", "pw123456", "thunderbird", "192.0.2.0/24", "s")
    assert not grace.hit("u", "pw123456", "other", "192.0.2.0/24", "s")
    assert not grace.hit("u", "pw123456", "thunderbird", "198.51.100.0/24", "s")
    now[0] = 301
    assert not grace.hit("u", "pw123456", "thunderbird", "192.0.2.0/24", "s")


def test_guard_config_mapping_and_validation() -> None:
    """[authd.guard] maps onto GuardConfig; a bad value names the key."""
    cfg = build_config(
        {
            "authd": {
                "guard": {"per_ip": "7/2m", "block_time": "1h"},
                "trusted_networks": ["10.0.0.0/8"],
            }
        }
    ).authd
    g = guard_config(cfg)
    assert (g.per_ip.failures, g.per_ip.seconds, g.block_seconds) == (7, 120.0, 3600.0)
    assert [str(n) for n in g.trusted_networks] == ["10.0.0.0/8"]
    with pytest.raises(ConfigError, match="authd.guard.ipv4_prefix"):
        build_config({"authd": {"guard": {"ipv4_prefix": 4}}})
    with pytest.raises(ConfigError, match="authd.totp_services"):
        build_config({"authd": {"totp_services": ["IMAP now"]}})
    with pytest.raises(ConfigError, match="authd.listen"):
        build_config({"authd": {"listen": ["nohost"]}})


def test_account_stamp_changes_with_password() -> None:
    """The password stamp differs when the hash or its change time differ."""
    mb = Mailbox("a@example.org", password_hash="{X}1", password_changed=1.0)
    a = Account(mb, True)
    b = Account(dataclasses.replace(mb, password_hash="{X}2"), True)
    assert a.stamp != b.stamp
    assert "{X}1" not in repr(a)


def test_check_config_cli(tmp_path: Any, capsys: Any) -> None:
    """`pfm-authd --check-config` prints a summary (0) or names the bad key (78)."""
    from authd.__main__ import main

    good = tmp_path / "pfm.toml"
    good.write_text('[authd]\ntotp_services = ["imap"]\n[authd.guard]\nper_ip = "5/1m"\n')
    assert main(["--config", str(good), "--check-config"]) == 0
    assert "per_ip=5/1m" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[authd]\nverify_workers = "many"\n')
    assert main(["--config", str(bad), "--check-config"]) == 78
    assert "authd.verify_workers" in capsys.readouterr().err
