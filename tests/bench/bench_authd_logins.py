"""Dovecot login benchmark: the real pfm-authd paths against Dovecot's own passdbs, one run.

Passdbs, each in its own private Dovecot with the auth cache off (``auth_cache_size = 0``):

* ``static`` — Dovecot's static passdb (the baseline);
* ``ldap`` — Dovecot's native LDAP passdb, ``auth_bind = yes``, against a private slapd;
* ``lua-sqlite`` / ``checkpassword-sqlite`` — configs/dovecot/pfm-passdb.lua and
  pfm-checkpassword asking the real pfm-authd (``python -m authd``) over a SQLite directory
  (verify cache on, as shipped);
* ``lua-http-ldap`` — configs/dovecot/pfm-passdb-http.lua (Dovecot's ``dovecot.http``) to the
  LDAP-mode pfm-authd's HTTP endpoint;
* ``lua-ldap`` / ``checkpassword-ldap`` — the same, pfm-authd in LDAP-bind mode against the
  same slapd, as shipped: verify cache 300 s and account cache 5 s (Dovecot's own auth cache
  stays off everywhere). ``--ldap-verify-cache-ttl 0`` makes pfm-authd bind on every login
  (the account cache still saves the two searches within its 5 s).

The mailbox (written through the directory's own backends, with an imported ``{SSHA}`` hash so
slapd's bind is as cheap as the baseline's; ``rehash_on_login = false``) logs in with PLAIN for
``--duration`` seconds at each concurrency (default 1, 8, 32):

* ``auth-client``: AUTH requests on Dovecot's auth-client socket (one connection per
  concurrent client, requests back to back) — the passdb cost alone;
* ``imap``: a full IMAP connection per login (greeting, LOGIN, LOGOUT) — what a client sees.

pfm-authd's brute-force guard is on (nothing trusted). It prints logins/s, p50 and p99 per
cell with ratios to ``static`` and ``ldap``, then the TOTP cost (password+code logins of
enrolled users against password-only logins, both verify-cache hits, through the Lua path at
concurrency 1) and the issue's targets. ``--authd-cmd`` runs another authd instead (``{socket}``
is replaced, e.g. ``{python} -m tests.fixtures.fake_authd {socket}`` with ``--user alice
--password secret``): then the passdbs are ``static,checkpassword,lua,ldap``.

Run: ``.venv/bin/python tests/bench/bench_authd_logins.py [--duration 3] [--json]``
(as root; needs dovecot-core, -imapd, -pop3d, -auth-lua, -ldap, lua-socket, slapd, ldap-utils).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port  # noqa: E402
from tests.e2e.dovecot_fixtures import AuthdProcess, authd_config, ldap_settings  # noqa: E402
from tests.e2e.dovecot_instance import (  # noqa: E402
    DovecotInstance,
    checkpassword_passdb,
    ldap_bind_conf,
    ldap_passdb,
    lua_passdb,
    static_passdb,
)
from tests.e2e.postfix_instance import world_dir  # noqa: E402

LUA_HTTP_PASSDB = ROOT / "configs" / "dovecot" / "pfm-passdb-http.lua"
from tests.integration.slapd_server import ROOT_PASSWORD, SERVICE_PASSWORD, SlapdServer  # noqa: E402

BENCH_CONF = """
mail_max_userip_connections = 100000
service auth-worker {
  process_limit = 64
}
service imap {
  process_limit = 1024
}
"""
USER = "alice@example.org"
PASSWORD = "bench-Secret-1"
TOTP_PASSWORD = "totp-bench-Secret-2"
TOTP_USERS = 50
BENCH_GUARD = {"per_ip": "1000000/1m", "per_login": "1000000/1m", "per_prefix": "1000000/1m"}


# --------------------------------------------------------------------------- servers


def ssha(password: str) -> str:
    """An LDAP ``{SSHA}`` hash (what slapd checks on a simple bind)."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def start_authd(cmd: str, directory: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """Run an authd command on ``directory/authd.sock``; wait for the socket, chmod it 0666."""
    sock = directory / "authd.sock"
    argv = [a.replace("{socket}", str(sock)) for a in shlex.split(cmd)]
    argv = [sys.executable if a == "{python}" else a for a in argv]
    proc = subprocess.Popen(argv, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 15
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"authd did not create {sock}")
        time.sleep(0.01)
    os.chmod(sock, 0o666)  # Dovecot's auth process runs as dovecot
    return proc, sock


def start_slapd_inetorg(user: str, password: str) -> tuple[SlapdServer, Path]:
    """A private slapd holding one entry ``uid=USER`` with an {SSHA} userPassword (--authd-cmd)."""
    slapd = SlapdServer(world_dir("slapd-"))
    slapd.start()
    ldif = (
        f"dn: uid={user},ou=mailboxes,{slapd.base_dn}\n"
        "objectClass: inetOrgPerson\n"
        f"uid: {user}\ncn: {user}\nsn: {user}\n"
        f"userPassword: {ssha(password)}\n"
    )
    added = slapd.ldap("ldapadd", "-x", "-D", slapd.root_dn, "-w", ROOT_PASSWORD, input=ldif)
    if added.returncode != 0:
        raise RuntimeError(f"ldapadd failed: {added.stderr.strip()}")
    return slapd, native_ldap_conf(slapd, "(&(objectClass=inetOrgPerson)(uid=%u))")


def native_ldap_conf(slapd: SlapdServer, filter_: str) -> Path:
    """Write Dovecot's ``dovecot-ldap.conf.ext`` (auth_bind) for ``slapd``; return its path."""
    conf = slapd.tmp / "dovecot-ldap.conf.ext"
    conf.write_text(
        ldap_bind_conf(slapd.uri, slapd.base_dn, filter_=filter_)
        + f"dn = {slapd.service_dn}\ndnpass = {SERVICE_PASSWORD}\n"
    )
    conf.chmod(0o644)
    return conf


@dataclass
class RealAuthd:
    """The real daemons of one run: SQLite and LDAP-bind mode, plus the slapd they share."""

    slapd: SlapdServer
    processes: dict[str, AuthdProcess] = field(default_factory=dict)
    dirs: list[Path] = field(default_factory=list)
    totp: dict[str, str] = field(default_factory=dict)  # login -> secret
    http_port: int = 0  # the LDAP-mode pfm-authd's HTTP endpoint (Lua dovecot.http passdb)

    def socket(self, mode: str) -> Path:
        return self.processes[mode].sock

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()
        self.slapd.stop()
        for d in [*self.dirs, self.slapd.tmp]:
            shutil.rmtree(d, ignore_errors=True)


def start_real_authds(ldap_cache_ttl: float) -> RealAuthd:
    """slapd seeded through the LDAP backend, a seeded SQLite directory, two pfm-authds."""
    import pyotp  # noqa: F401  (fail early when the TOTP part could not run)

    from services.config import build_config
    from services.directory.credentials import Credentials
    from services.directory.ldap import LdapBackend
    from services.directory.ops import Directory
    from services.directory.passwords import hash_password
    from services.directory.sqlite import SqliteBackend

    slapd = SlapdServer(world_dir("slapd-"))
    slapd.start()
    real = RealAuthd(slapd)
    try:
        settings = ldap_settings(slapd)
        backend = LdapBackend(build_config({"directory": {"ldap": settings}}).directory.ldap)
        d = Directory(backend, actor="bench")
        d.add_domain("example.org")
        d.add_mailbox(USER, password_hash=ssha(PASSWORD))
        backend.close()

        sqlite_dir = world_dir("authd-sqlite-")
        real.dirs.append(sqlite_dir)
        d = Directory(SqliteBackend(str(sqlite_dir / "directory.db")), actor="bench")
        d.add_domain("example.org")
        d.add_mailbox(USER, password=PASSWORD)
        shared = hash_password(TOTP_PASSWORD, "SHA512-CRYPT")  # one hash, many users: fast seed
        creds = Credentials(d)
        for i in range(TOTP_USERS):
            login = f"totp{i}@example.org"
            d.add_mailbox(login, password_hash=shared)
            real.totp[login] = creds.enroll_totp(login).secret
        d.backend.close()
        common: dict[str, Any] = {"guard": BENCH_GUARD}
        config = authd_config(
            sqlite_dir,
            {
                "backend": "sqlite",
                "path": str(sqlite_dir / "directory.db"),
                "rehash_on_login": False,
            },
            **common,
        )
        real.processes["sqlite"] = AuthdProcess(
            config, sqlite_dir / "authd.sock", sqlite_dir / "authd.log"
        )

        ldap_dir = world_dir("authd-ldap-")
        real.dirs.append(ldap_dir)
        real.http_port = free_port()
        config = authd_config(
            ldap_dir,
            {"backend": "ldap", "rehash_on_login": False},
            ldap=settings,
            verify_cache_ttl=ldap_cache_ttl,
            http_listen=f"127.0.0.1:{real.http_port}",
            **common,
        )
        real.processes["ldap"] = AuthdProcess(
            config, ldap_dir / "authd.sock", ldap_dir / "authd.log"
        )
        for process in real.processes.values():
            process.start()
    except BaseException:
        real.stop()
        raise
    return real


# --------------------------------------------------------------------------- load


async def _auth_client_worker(
    path: str, user: str, password: str, deadline: float, lat: list[float], errors: list[str]
) -> None:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(f"VERSION\t1\t2\nCPID\t{os.getpid()}\n".encode())
    while (await reader.readline()).rstrip(b"\n") != b"DONE":
        pass
    resp = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()
    rid = 0
    while time.monotonic() < deadline:
        rid += 1
        began = time.perf_counter()
        writer.write(
            f"AUTH\t{rid}\tPLAIN\tservice=imap\tlip=127.0.0.1\trip=127.0.0.1\tresp={resp}\n".encode()
        )
        line = await reader.readline()
        if line.startswith(f"OK\t{rid}".encode()):
            lat.append(time.perf_counter() - began)
        else:
            errors.append(line[:80].decode(errors="replace"))
    writer.close()


async def _imap_worker(
    port: int, user: str, password: str, deadline: float, lat: list[float], errors: list[str]
) -> None:
    while time.monotonic() < deadline:
        began = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readline()  # greeting
        writer.write(f'a LOGIN "{user}" "{password}"\r\n'.encode())
        while True:
            line = await reader.readline()
            if not line or line.startswith(b"a "):
                break
        if line.startswith(b"a OK"):
            lat.append(time.perf_counter() - began)
        else:
            errors.append(line[:80].decode(errors="replace"))
        writer.write(b"b LOGOUT\r\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()


Worker = Callable[[float, list[float], list[str]], Awaitable[None]]


def run_load(worker: Worker, concurrency: int, duration: float) -> dict[str, Any]:
    """Run ``concurrency`` workers for ``duration`` s; logins/s and latency percentiles."""

    async def main() -> tuple[list[float], list[str], float]:
        lat: list[float] = []
        errors: list[str] = []
        began = time.monotonic()
        deadline = began + duration
        await asyncio.gather(*(worker(deadline, lat, errors) for _ in range(concurrency)))
        return lat, errors, time.monotonic() - began

    lat, errors, seconds = asyncio.run(main())
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    return {
        "logins": len(lat),
        "logins_per_s": len(lat) / seconds,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
    }


# --------------------------------------------------------------------------- TOTP cost


def totp_cost(instance: DovecotInstance, real: RealAuthd) -> dict[str, float]:
    """p50 of password+code logins minus password-only logins (both verify-cache hits), ms.

    Measured at concurrency 1 on the auth-client socket of the Lua/SQLite Dovecot, and as
    pfm-authd's own ``latency_ms`` log field; each TOTP user logs in once with a fresh code
    (a code is single use), after a POP3 login (not a TOTP service) warmed its verify cache.
    """
    import pyotp

    process = real.processes["sqlite"]
    with instance.auth_client() as client:
        for login in real.totp:
            assert client.plain(login, TOTP_PASSWORD, service="pop3").ok
        assert client.plain(USER, PASSWORD).ok
        plain, totp = [], []
        for _ in range(len(real.totp)):
            began = time.perf_counter()
            assert client.plain(USER, PASSWORD).ok
            plain.append(time.perf_counter() - began)
        for login, secret in real.totp.items():
            typed = TOTP_PASSWORD + pyotp.TOTP(secret).now()
            began = time.perf_counter()
            result = client.plain(login, typed)
            totp.append(time.perf_counter() - began)
            if not result.ok:
                raise RuntimeError(f"TOTP login of {login} failed: {result.fields}")
    logged: dict[str, list[float]] = {"password": [], "password_totp": []}
    time.sleep(0.2)
    for line in process.log.read_text(errors="replace").splitlines()[-4 * len(real.totp) :]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("service") == "imap" and record.get("mechanism") in logged:
            logged[record["mechanism"]].append(float(record["latency_ms"]))
    p50 = statistics.median
    return {
        "password_p50_ms": p50(plain) * 1000,
        "totp_p50_ms": p50(totp) * 1000,
        "added_ms": (p50(totp) - p50(plain)) * 1000,
        "authd_password_p50_ms": p50(logged["password"]) if logged["password"] else float("nan"),
        "authd_totp_p50_ms": p50(logged["password_totp"])
        if logged["password_totp"]
        else float("nan"),
    }


# --------------------------------------------------------------------------- main


def _cell(rows: list[dict[str, Any]], method: str, passdb: str, c: int) -> dict[str, Any] | None:
    for r in rows:
        if (r["method"], r["passdb"], r["concurrency"]) == (method, passdb, c):
            return r
    return None


def targets(
    rows: list[dict[str, Any]], levels: list[int], totp: dict[str, float] | None
) -> list[str]:
    """The issue's targets as PASS/MISS lines (only for cells that were measured)."""
    out = []

    def mark(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    for lua in ("lua-ldap", "lua-http-ldap", "lua-sqlite", "lua"):
        for c in levels:
            r = _cell(rows, "auth-client", lua, c)
            if r is not None and r.get("vs_ldap") == r.get("vs_ldap"):
                out.append(
                    f"{mark(r['vs_ldap'] >= 0.5)} {lua} auth-client c={c}: "
                    f"{r['vs_ldap']:.2f}x native LDAP auth_bind (target >= 0.5)"
                )
            r = _cell(rows, "imap", lua, c)
            if r is not None and r.get("vs_static") == r.get("vs_static"):
                out.append(
                    f"{mark(r['vs_static'] >= 0.9)} {lua} imap c={c}: "
                    f"{r['vs_static']:.2f}x static (target >= 0.9)"
                )
    for cp in ("checkpassword-ldap", "checkpassword-sqlite", "checkpassword"):
        for method in ("auth-client", "imap"):
            r = _cell(rows, method, cp, 1)
            if r is not None and method == "auth-client":
                out.append(
                    f"{mark(r['p50_ms'] <= 15)} {cp} {method} c=1: p50 {r['p50_ms']:.1f} ms "
                    "(target <= 15 ms)"
                )
    if totp is not None:
        out.append(
            f"{mark(totp['added_ms'] < 1)} TOTP adds {totp['added_ms']:.2f} ms per login "
            f"at the auth-client socket ({totp['authd_totp_p50_ms'] - totp['authd_password_p50_ms']:.2f}"
            " ms inside pfm-authd) (target < 1 ms)"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per cell")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument(
        "--authd-cmd", default="", help="run this authd instead of the real ones ({socket})"
    )
    ap.add_argument("--user", default=USER, help="login (with --authd-cmd)")
    ap.add_argument("--password", default=PASSWORD, help="password (with --authd-cmd)")
    ap.add_argument("--passdbs", default="", help="comma-separated subset of the passdbs")
    ap.add_argument("--methods", default="auth-client,imap")
    ap.add_argument(
        "--ldap-verify-cache-ttl",
        type=float,
        default=300.0,
        help="pfm-authd's verify cache in LDAP-bind mode (default 300 as shipped; 0: bind "
        "on every login)",
    )
    ap.add_argument("--no-totp", action="store_true", help="skip the TOTP cost measurement")
    ap.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    methods = args.methods.split(",")
    custom = bool(args.authd_cmd)
    default = (
        "static,checkpassword,lua,ldap"
        if custom
        else "static,ldap,lua-sqlite,checkpassword-sqlite,lua-ldap,lua-http-ldap,checkpassword-ldap"
    )
    wanted = (args.passdbs or default).split(",")
    user, password = (args.user, args.password) if custom else (USER, PASSWORD)

    authd_proc: subprocess.Popen[bytes] | None = None
    real: RealAuthd | None = None
    slapd: SlapdServer | None = None
    instances: dict[str, DovecotInstance] = {}
    rows: list[dict[str, Any]] = []
    totp: dict[str, float] | None = None
    try:
        passdbs: dict[str, tuple[str, dict[str, str]]] = {"static": (static_passdb(password), {})}
        if custom:
            authd_proc, sock = start_authd(args.authd_cmd, world_dir("authd-"))
            env = {"PFM_AUTHD_SOCKET": str(sock)}
            passdbs["checkpassword"] = (checkpassword_passdb(sock), {})
            passdbs["lua"] = (lua_passdb(), env)
            if "ldap" in wanted:
                slapd, conf = start_slapd_inetorg(user, password)
                passdbs["ldap"] = (ldap_passdb(conf), {})
        else:
            real = start_real_authds(args.ldap_verify_cache_ttl)
            slapd = real.slapd
            conf = native_ldap_conf(slapd, "(&(objectClass=pfmMailbox)(mail=%u))")
            passdbs["ldap"] = (ldap_passdb(conf), {})
            for mode in ("sqlite", "ldap"):
                sock = real.socket(mode)
                passdbs[f"checkpassword-{mode}"] = (checkpassword_passdb(sock), {})
                passdbs[f"lua-{mode}"] = (lua_passdb(), {"PFM_AUTHD_SOCKET": str(sock)})
            passdbs["lua-http-ldap"] = (
                lua_passdb(LUA_HTTP_PASSDB),
                {"PFM_AUTHD_URL": f"http://127.0.0.1:{real.http_port}"},
            )
        for name in wanted:
            passdb, env = passdbs[name]
            instances[name] = DovecotInstance(passdb, authd_env=env, extra=BENCH_CONF).start()
        for method in methods:
            for name in wanted:
                inst = instances[name]
                for c in levels:

                    def worker(
                        deadline: float,
                        lat: list[float],
                        errors: list[str],
                        inst: DovecotInstance = inst,
                        method: str = method,
                    ) -> Awaitable[None]:
                        if method == "imap":
                            return _imap_worker(
                                inst.imap_port, user, password, deadline, lat, errors
                            )
                        return _auth_client_worker(
                            str(inst.auth_client_socket), user, password, deadline, lat, errors
                        )

                    run_load(worker, c, min(0.5, args.duration))  # warm up workers/connections
                    row = {"method": method, "passdb": name, "concurrency": c}
                    row |= run_load(worker, c, args.duration)
                    rows.append(row)
                    if not args.json:
                        print(_fmt(row), flush=True)
        if real is not None and not args.no_totp and "lua-sqlite" in instances:
            totp = totp_cost(instances["lua-sqlite"], real)
    finally:
        for inst in instances.values():
            inst.terminate()
        for inst in instances.values():
            inst.cleanup()
        if authd_proc is not None:
            os.killpg(authd_proc.pid, signal.SIGTERM)
            authd_proc.wait(10)
        if real is not None:
            real.stop()
        elif slapd is not None:
            slapd.stop()
            shutil.rmtree(slapd.tmp, ignore_errors=True)

    for ref in ("static", "ldap"):
        base = {
            (r["method"], r["concurrency"]): r["logins_per_s"] for r in rows if r["passdb"] == ref
        }
        for r in rows:
            b = base.get((r["method"], r["concurrency"]))
            r[f"vs_{ref}"] = r["logins_per_s"] / b if b else float("nan")
    checks = targets(rows, levels, totp)
    if args.json:
        print(json.dumps({"rows": rows, "totp": totp, "targets": checks}, indent=1))
        return 0
    print()
    print(f"{'method':<12}{'passdb':<21}{'conc':>5}{'logins/s':>11}{'p50 ms':>9}"
          f"{'p99 ms':>9}{'vs static':>10}{'vs ldap':>9}{'errors':>8}")  # fmt: skip
    for r in rows:
        print(_fmt(r))
    if totp is not None:
        print()
        print(
            "TOTP (lua-sqlite, auth-client, c=1): password p50 "
            f"{totp['password_p50_ms']:.2f} ms, password+code p50 {totp['totp_p50_ms']:.2f} ms; "
            f"inside pfm-authd {totp['authd_password_p50_ms']:.2f} vs "
            f"{totp['authd_totp_p50_ms']:.2f} ms"
        )
    print()
    for line in checks:
        print(line)
    return 0


def _fmt(r: dict[str, Any]) -> str:
    vs = f"{r['vs_static']:>10.3f}{r['vs_ldap']:>9.3f}" if "vs_static" in r else " " * 19
    err = f"{r['errors']}" + (f" ({r['first_error'].strip()})" if r["errors"] else "")
    return (
        f"{r['method']:<12}{r['passdb']:<21}{r['concurrency']:>5}{r['logins_per_s']:>11.0f}"
        f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{vs}{err:>8}"
    )


if __name__ == "__main__":
    sys.exit(main())
