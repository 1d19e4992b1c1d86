"""pfm-authd for real: in-process daemon on a tmp unix socket, real SQLite or slapd directory.

Clients are the real pfm-checkpassword shim (a subprocess with fd 3/4 pipes, exec-ing
Dovecot's real checkpassword-reply) and direct wire clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp
import pytest
from prometheus_client import CollectorRegistry

from authd.server import AuthDaemon
from authd.wire import FrameDecoder, Reply, ReplyKind, Request, RequestKind
from services.config import Config, build_config
from services.directory.credentials import Credentials
from services.directory.ops import Directory
from services.directory.sqlite import SqliteBackend
from tests.conftest import require_binary
from tests.integration.test_checkpassword import fields, run_shim

pytestmark = pytest.mark.integration

PW = "correct horse battery 1"
BOB_PW = "bob's secret pass 2"
TOTP_PW = "totp user password 3"


@dataclass
class Env:
    """One test's directory, config and running daemon."""

    tmp: Path
    config: Config
    daemon: AuthDaemon
    secrets: dict[str, str]

    @property
    def socket(self) -> Path:
        return self.tmp / "authd.sock"

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return float(self.daemon.registry.get_sample_value(name, labels or {}) or 0.0)

    def directory(self) -> Directory:
        """A second writer on the same SQLite file (what `pfm` would do)."""
        return Directory(SqliteBackend(str(self.tmp / "dir.db")), actor="test")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A temp dir with a short path (unix socket paths are limited to 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="pfa-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def reply_program() -> str:
    """Dovecot's real checkpassword-reply."""
    return require_binary("/usr/lib/dovecot/checkpassword-reply")


def seed_sqlite(tmp: Path) -> dict[str, str]:
    """A SQLite directory: alice (quota), bob, carol (disabled), tina (TOTP), an app password."""
    d = Directory(SqliteBackend(str(tmp / "dir.db")), actor="test")
    d.add_domain("example.org")
    d.add_mailbox("alice@example.org", password=PW, quota=1_000_000)
    d.add_mailbox("bob@example.org", password=BOB_PW)
    d.add_mailbox("carol@example.org", password=PW, active=False)
    d.add_mailbox("tina@example.org", password=TOTP_PW)
    creds = Credentials(d)
    _, secret, _ = creds.enroll_totp("tina@example.org")
    _, app = creds.add_app_password("bob@example.org", name="phone", scopes=["imap"])
    d.backend.close()
    return {"totp": secret, "app": app}


def make_config(tmp: Path, directory: dict[str, Any], **authd: Any) -> Config:
    """A config with every socket in tmp and a fast guard."""
    guard = {
        "per_ip": "50/10m",
        "per_login": "50/10m",
        "per_ip_login": "50/10m",
        "per_prefix": "100/10m",
        "tarpit_start": "50ms",
        "tarpit_max": "1s",
        **authd.pop("guard", {}),
    }
    section = {
        "listen": [f"unix:{tmp}/authd.sock:0660"],
        "admin_socket": str(tmp / "admin.sock"),
        "metrics_listen": "",
        "verify_workers": 4,
        "guard": guard,
        **authd,
    }
    return build_config(
        {
            "directory": {
                "mail_root": "/srv/vmail",
                "mail_uid": 5000,
                "mail_gid": 5001,
                **directory,
            },
            "authd": section,
        }
    )


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[AuthDaemon]:
    """A started AuthDaemon with its own registry, stopped afterwards."""
    daemon = AuthDaemon(config, registry=CollectorRegistry())
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop(1.0)


@contextlib.asynccontextmanager
async def sqlite_env(tmp: Path, **authd: Any) -> AsyncIterator[Env]:
    """Seeded SQLite directory plus a running daemon."""
    secrets = await asyncio.to_thread(seed_sqlite, tmp)
    authd.setdefault("account_cache_ttl", 0)  # tests see directory changes at once
    config = make_config(tmp, {"backend": "sqlite", "path": str(tmp / "dir.db")}, **authd)
    async with running(config) as daemon:
        yield Env(tmp, config, daemon, secrets)


class WireClient:
    """A direct pfm-authd client: many requests on one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder()
        self.pending: list[Reply] = []

    @classmethod
    async def connect(cls, path: Path) -> WireClient:
        reader, writer = await asyncio.open_unix_connection(str(path))
        return cls(reader, writer)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self) -> Reply:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                raise ConnectionError("closed")
            self.pending.extend(Reply.from_frame(f) for f in self.decoder.feed(data))
        return self.pending.pop(0)

    async def auth(
        self,
        user: str,
        password: str,
        *,
        service: str = "imap",
        ip: str = "192.0.2.7",
        client_id: str = "c1",
    ) -> Reply:
        req = Request(
            RequestKind.AUTH, user=user, password=password, service=service, remote_ip=ip,
            client_id=client_id,
        )  # fmt: skip
        await self.send_raw(req.encode())
        return await self.reply()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def auth(env: Env, user: str, password: str, **kw: Any) -> Reply:
    """One AUTH on a fresh connection."""
    client = await WireClient.connect(env.socket)
    try:
        return await client.auth(user, password, **kw)
    finally:
        await client.close()


async def shim(env: Env, reply_program: str, user: str, password: str, **envvars: str) -> Any:
    """Run the real shim against the daemon, off the loop."""
    data = user.encode() + b"\0" + password.encode() + b"\0\0"
    return await asyncio.to_thread(run_shim, reply_program, env.socket, data, envvars)


# --------------------------------------------------------------------------- shim path


async def test_shim_right_password_ok_with_userdb_fields(
    short_dir: Path, reply_program: str
) -> None:
    """A right password through the real shim execs checkpassword-reply with userdb fields."""
    async with sqlite_env(short_dir) as env:
        out = await shim(env, reply_program, "Alice@Example.org", PW)
        assert out.code == 0, out.stderr
        assert fields(out.reply) == {
            "user": "alice@example.org",
            "userdb_home": "/srv/vmail/example.org/alice",
            "userdb_uid": "5000",
            "userdb_gid": "5001",
            "userdb_quota_rule": "*:bytes=1000000",
        }
        ok = {"service": "imap", "mechanism": "password", "result": "ok"}
        assert env.metric("pfm_authd_logins_total", ok) == 1


async def test_shim_wrong_password_unknown_and_disabled_exit_1(
    short_dir: Path, reply_program: str
) -> None:
    """Wrong password, unknown user and a disabled mailbox all exit 1 (no reply program)."""
    async with sqlite_env(short_dir) as env:
        for user, pw in (
            ("alice@example.org", "nope nope"),
            ("ghost@example.org", PW),
            ("carol@example.org", PW),
        ):
            out = await shim(env, reply_program, user, pw)
            assert out.code == 1, (user, out.stderr)
            assert out.reply == b""
            assert pw not in out.stderr
        assert (await auth(env, "ghost@example.org", PW)).kind is ReplyKind.NOUSER
        disabled = await auth(env, "carol@example.org", PW)
        assert (disabled.kind, disabled.reason) == (ReplyKind.FAIL, "disabled")


async def test_shim_sqlite_file_removed_is_tempfail(short_dir: Path, reply_program: str) -> None:
    """Removing the SQLite directory file makes logins a temporary failure (111), not a FAIL."""
    async with sqlite_env(short_dir) as env:
        assert (await auth(env, "alice@example.org", PW)).kind is ReplyKind.OK
        (short_dir / "dir.db").unlink()
        out = await shim(env, reply_program, "alice@example.org", PW)
        assert out.code == 111, out.stderr
        reply = await auth(env, "alice@example.org", "wrong one")
        assert (reply.kind, reply.reason) == (ReplyKind.TEMPFAIL, "directory_unavailable")
        assert env.metric("pfm_authd_directory_errors_total") == 2
        blocks = await env.daemon.guard.blocks()
        assert blocks == []  # an outage locks nobody out


# --------------------------------------------------------------------------- wire path


async def test_wire_many_requests_answered_in_order_and_lookup(short_dir: Path) -> None:
    """Pipelined requests on one connection are answered in order; LOOKUP gives userdb fields."""
    async with sqlite_env(short_dir) as env:
        client = await WireClient.connect(env.socket)
        reqs = [
            Request(RequestKind.PING),
            Request(
                RequestKind.AUTH, user="bob@example.org", password="bad bad", remote_ip="192.0.2.9"
            ),
            Request(RequestKind.LOOKUP, user="alice@example.org"),
            Request(RequestKind.LOOKUP, user="nobody@example.org"),
            Request(
                RequestKind.AUTH, user="bob@example.org", password=BOB_PW, remote_ip="192.0.2.9"
            ),
        ]
        await client.send_raw(b"".join(r.encode() for r in reqs))
        kinds = [(await client.reply()) for _ in reqs]
        assert [r.kind for r in kinds] == [
            ReplyKind.OK, ReplyKind.FAIL, ReplyKind.OK, ReplyKind.NOUSER, ReplyKind.OK,
        ]  # fmt: skip
        assert kinds[2].home == "/srv/vmail/example.org/alice"
        assert kinds[4].user == "bob@example.org"
        await client.close()


async def test_wire_bad_frame_gets_error_then_close(short_dir: Path) -> None:
    """A frame with a bad magic is answered ERROR after earlier requests, then the socket closes."""
    async with sqlite_env(short_dir) as env:
        client = await WireClient.connect(env.socket)
        await client.send_raw(Request(RequestKind.PING).encode() + b"HTTP/1.0 GET /\r\n\r\n")
        assert (await client.reply()).kind is ReplyKind.OK
        assert (await client.reply()).kind is ReplyKind.ERROR
        assert await asyncio.wait_for(client.reader.read(), 5) == b""
        await client.close()
        assert env.metric("pfm_authd_bad_requests_total") == 1


async def test_totp_code_ok_replay_refused_grace_for_same_client(short_dir: Path) -> None:
    """Password+code logs in; the same client reconnects in grace; the code replayed elsewhere fails."""
    from services.logging import configure_logging, flush_logs

    buf = io.StringIO()
    configure_logging("info", "json", stream=buf)  # whatever an earlier test configured
    async with sqlite_env(short_dir) as env:
        code = pyotp.TOTP(env.secrets["totp"]).now()
        user = "tina@example.org"
        first = await auth(env, user, TOTP_PW + code, ip="198.51.100.4")
        assert first.kind is ReplyKind.OK, first.reason
        again = await auth(env, user, TOTP_PW + code, ip="198.51.100.5")  # same /24 + client id
        assert again.kind is ReplyKind.OK
        assert (
            env.metric(
                "pfm_authd_logins_total",
                {"service": "imap", "mechanism": "totp_grace", "result": "ok"},
            )
            == 1
        )
        replay = await auth(env, user, TOTP_PW + code, ip="203.0.113.8", client_id="other")
        assert (replay.kind, replay.reason) == (ReplyKind.FAIL, "totp_replayed")
        bare = await auth(env, user, TOTP_PW, ip="203.0.113.8")
        assert bare.kind is ReplyKind.FAIL
        # services outside totp_services take the password alone
        pop = await auth(env, user, TOTP_PW, service="pop3", ip="203.0.113.8")
        assert pop.kind is ReplyKind.OK
        flush_logs()
        logged = buf.getvalue()
        configure_logging("info", "json")  # back to stderr for the tests after this one
        assert '"rip":"203.0.113.8"' in logged
        assert TOTP_PW not in logged and env.secrets["totp"] not in logged


async def test_app_password_scoped_to_imap(short_dir: Path) -> None:
    """An app password scoped to imap opens imap and is refused for pop3."""
    async with sqlite_env(short_dir) as env:
        app = env.secrets["app"]
        ok = await auth(env, "bob@example.org", app, service="imap")
        assert ok.kind is ReplyKind.OK
        assert (
            env.metric(
                "pfm_authd_logins_total",
                {"service": "imap", "mechanism": "app_password", "result": "ok"},
            )
            == 1
        )
        refused = await auth(env, "bob@example.org", app, service="pop3")
        assert refused.kind is ReplyKind.FAIL
        await env.daemon.service.drain(2.0)
        d = env.directory()
        (ap,) = d.backend.list_app_passwords("bob@example.org")
        assert ap.last_ip == "192.0.2.7" and ap.last_used > 0
        d.backend.close()


async def test_tarpit_grows_then_block(short_dir: Path) -> None:
    """Distinct wrong passwords from one IP slow each next attempt, then block the pair."""
    guard = {"per_ip_login": "4/10m", "tarpit_start": "100ms", "tarpit_max": "2s"}
    async with sqlite_env(short_dir, guard=guard) as env:
        client = await WireClient.connect(env.socket)
        took = []
        for i in range(4):
            t0 = time.perf_counter()
            r = await client.auth("alice@example.org", f"wrong password {i}", ip="192.0.2.50")
            took.append(time.perf_counter() - t0)
            assert r.kind is ReplyKind.FAIL
        # attempt n waits tarpit_start * 2**(n-2) for the n-1 failures before it
        assert took[1] > 0.09 and took[2] > 0.19 and took[3] > 0.39, took
        blocked = await client.auth("alice@example.org", PW, ip="192.0.2.50")
        assert (blocked.kind, blocked.reason) == (ReplyKind.FAIL, "blocked")
        assert env.metric("pfm_authd_guard_blocks_total", {"reason": "ip_login_failures"}) >= 1
        # another IP is not affected
        assert (await client.auth("alice@example.org", PW, ip="192.0.2.51")).kind is ReplyKind.OK
        await client.close()


async def test_phone_retrying_one_stale_password_is_not_blocked(short_dir: Path) -> None:
    """Ten retries of one stale password count once: no block, the right password still works."""
    guard = {"per_ip_login": "3/10m", "per_ip": "3/10m", "per_login": "3/10m"}
    async with sqlite_env(short_dir, guard=guard) as env:
        client = await WireClient.connect(env.socket)
        for _ in range(10):
            r = await client.auth("bob@example.org", "old password", ip="192.0.2.60")
            assert (r.kind, r.reason) == (ReplyKind.FAIL, "wrong_password")
        ok = await client.auth("bob@example.org", BOB_PW, ip="192.0.2.60")
        assert ok.kind is ReplyKind.OK
        assert await env.daemon.guard.blocks() == []
        await client.close()


async def test_verify_cache_hit_skips_hash_and_password_change_invalidates(short_dir: Path) -> None:
    """A repeat login is served from the cache (no argon2); a password change drops it."""
    async with sqlite_env(short_dir) as env:
        verifier = env.daemon.verifier
        assert (await auth(env, "alice@example.org", PW)).kind is ReplyKind.OK
        hashes = verifier.hashes
        t0 = time.perf_counter()
        assert (await auth(env, "alice@example.org", PW)).kind is ReplyKind.OK
        hit_ms = (time.perf_counter() - t0) * 1000
        assert verifier.hashes == hashes
        assert env.metric("pfm_authd_cache_hits_total") == 1
        # a wrong password is never cached and never served from the cache
        assert (await auth(env, "alice@example.org", "nope")).kind is ReplyKind.FAIL
        d = env.directory()
        d.set_password("alice@example.org", "brand new password 9")
        d.backend.close()
        assert (await auth(env, "alice@example.org", PW)).kind is ReplyKind.FAIL
        assert env.metric("pfm_authd_cache_hits_total") == 1
        ok = await auth(env, "alice@example.org", "brand new password 9")
        assert ok.kind is ReplyKind.OK
        assert hit_ms < 50


async def test_cli_block_unblock_blocks_via_admin_socket(short_dir: Path) -> None:
    """`pfm auth block/blocks/unblock` change what the running daemon answers."""
    from services.cli.main import main as pfm

    async with sqlite_env(short_dir) as env:
        admin = str(short_dir / "admin.sock")

        def cli(*argv: str) -> tuple[int, str]:
            out = io.StringIO()
            with redirect_stdout(out):
                code = pfm(["auth", "--socket", admin, *argv])
            return code, out.getvalue()

        code, _ = await asyncio.to_thread(
            cli, "block", "192.0.2.99", "--for", "1h", "--reason", "test"
        )
        assert code == 0
        r = await auth(env, "alice@example.org", PW, ip="192.0.2.99")
        assert (r.kind, r.reason) == (ReplyKind.FAIL, "blocked")
        code, out = await asyncio.to_thread(cli, "blocks", "--json")
        assert code == 0
        (entry,) = json.loads(out)
        assert (entry["key"], entry["action"], entry["reason"]) == ("192.0.2.99", "block", "test")
        code, out = await asyncio.to_thread(cli, "unblock", "192.0.2.99")
        assert code == 0 and "unblocked" in out
        assert (await auth(env, "alice@example.org", PW, ip="192.0.2.99")).kind is ReplyKind.OK
        code, _ = await asyncio.to_thread(cli, "block", "not an ip or login")
        assert code == 1


async def test_cli_auth_test_reads_password_and_prints_result(short_dir: Path) -> None:
    """`pfm auth test USER --password-file` sends an AUTH over the daemon socket."""
    from services.cli.main import main as pfm

    async with sqlite_env(short_dir) as env:
        pwfile = short_dir / "pw"
        pwfile.write_text(PW + "\n")
        pwfile.chmod(0o600)

        def cli(*argv: str) -> tuple[int, str]:
            out = io.StringIO()
            with redirect_stdout(out):
                code = pfm(["auth", "test", *argv, "--auth-socket", str(env.socket)])
            return code, out.getvalue()

        code, out = await asyncio.to_thread(
            cli, "alice@example.org", "--password-file", str(pwfile)
        )
        assert code == 0 and "\nOK in " in "\n" + out and PW not in out
        code, out = await asyncio.to_thread(
            cli, "ghost@example.org", "--password-file", str(pwfile)
        )
        assert code == 3 and "\nNOUSER (unknown_user)" in "\n" + out


# --------------------------------------------------------------------------- LDAP


async def test_ldap_bind_verify_and_outage_is_tempfail(short_dir: Path, reply_program: str) -> None:
    """LDAP: bind OK/FAIL; slapd stopped -> TEMPFAIL (111) and nobody blocked; back -> OK."""
    from services.config import LdapConfig
    from services.directory.ldap import LdapBackend
    from tests.integration.slapd_server import SlapdServer

    server = SlapdServer(short_dir / "slapd", binary=require_binary("slapd"))
    await asyncio.to_thread(server.start)
    try:
        ldap_cfg = {
            "uris": [server.uri],
            "base_dn": server.base_dn,
            "bind_dn": server.service_dn,
            "bind_password_file": str(server.password_file),
            "connect_timeout": 1,
            "timeout": 2,
        }

        def seed() -> None:
            backend = LdapBackend(build_config({"directory": {"ldap": ldap_cfg}}).directory.ldap)
            d = Directory(backend, actor="test")
            d.add_domain("example.org")
            d.add_mailbox("alice@example.org", password=PW)
            backend.close()

        await asyncio.to_thread(seed)
        assert isinstance(
            build_config({"directory": {"ldap": ldap_cfg}}).directory.ldap, LdapConfig
        )
        config = make_config(
            short_dir,
            {"backend": "ldap", "ldap": ldap_cfg},
            verify_cache_ttl=0,
            account_cache_ttl=0,
        )
        async with running(config) as daemon:
            env = Env(short_dir, config, daemon, {})
            assert (await auth(env, "alice@example.org", PW)).kind is ReplyKind.OK
            assert (await auth(env, "alice@example.org", "wrong pass")).kind is ReplyKind.FAIL
            out = await shim(env, reply_program, "alice@example.org", PW)
            assert out.code == 0, out.stderr
            await asyncio.to_thread(server.stop)
            out = await shim(env, reply_program, "alice@example.org", PW)
            assert out.code == 111, out.stderr
            down = await auth(env, "alice@example.org", "wrong pass")
            assert down.kind is ReplyKind.TEMPFAIL
            assert await daemon.guard.blocks() == []
            await asyncio.to_thread(server.start)
            back = await auth(env, "alice@example.org", PW)
            assert back.kind is ReplyKind.OK, back.reason
    finally:
        await asyncio.to_thread(server.stop)


# --------------------------------------------------------------------------- Redis state


async def test_redis_state_shared_replay_guard_and_outage(short_dir: Path) -> None:
    """With Redis: TOTP works; Redis stopped -> password users fail open, TOTP users TEMPFAIL."""
    from tests.integration.redis_server import RedisServer

    redis = RedisServer(require_binary("redis-server"), short_dir / "redis")
    (short_dir / "redis").mkdir()
    await asyncio.to_thread(redis.start)
    try:
        secrets = await asyncio.to_thread(seed_sqlite, short_dir)
        config = build_config(
            {
                "redis": {"url": redis.url, "prefix": "authdtest"},
                "directory": {"path": str(short_dir / "dir.db")},
                "authd": {
                    "listen": [f"unix:{short_dir}/authd.sock:0660"],
                    "admin_socket": "",
                    "metrics_listen": "",
                    "state": "redis",
                    "grace_ttl": 0,
                },
            }
        )
        async with running(config) as daemon:
            env = Env(short_dir, config, daemon, secrets)
            code = pyotp.TOTP(secrets["totp"]).now()
            assert (await auth(env, "tina@example.org", TOTP_PW + code)).kind is ReplyKind.OK
            replay = await auth(env, "tina@example.org", TOTP_PW + code)
            assert (replay.kind, replay.reason) == (ReplyKind.FAIL, "totp_replayed")
            await asyncio.to_thread(redis.stop)
            assert (await auth(env, "alice@example.org", PW)).kind is ReplyKind.OK
            assert (await auth(env, "alice@example.org", "bad one")).kind is ReplyKind.FAIL
            down = await auth(env, "tina@example.org", TOTP_PW + code)
            assert (down.kind, down.reason) == (ReplyKind.TEMPFAIL, "totp_replay_guard_unavailable")
            assert env.metric("pfm_authd_state_errors_total") >= 1
    finally:
        await asyncio.to_thread(redis.stop)


async def test_account_cache_reuses_entries_and_sees_changes_after_its_ttl(short_dir: Path) -> None:
    """With account_cache_ttl the directory is read once per TTL; a disable applies after it."""
    async with sqlite_env(short_dir, account_cache_ttl=0.3) as env:
        verifier = env.daemon.verifier
        for _ in range(3):
            assert (await auth(env, "alice@example.org", PW)).kind is ReplyKind.OK
        assert verifier.account_hits == 2
        d = env.directory()
        d.update_mailbox("alice@example.org", active=False)
        d.backend.close()
        await asyncio.sleep(0.35)
        assert (await auth(env, "alice@example.org", PW)).kind is ReplyKind.FAIL
