"""Dovecot login benchmark: pfm-authd paths against Dovecot's own passdbs, all in one run.

For each passdb — ``static`` (baseline), ``checkpassword`` (pfm-checkpassword -> authd),
``lua`` (configs/dovecot/pfm-passdb.lua -> authd) and ``ldap`` (Dovecot's native LDAP passdb,
``auth_bind = yes``, against a private slapd) — one private Dovecot is started with the auth
cache off (``auth_cache_size = 0``), and successful PLAIN logins are driven for ``--duration``
seconds at each concurrency (default 1, 8, 32):

* ``auth-client``: AUTH requests on Dovecot's auth-client socket (one connection per
  concurrent client, requests back to back) — the passdb cost alone;
* ``imap``: a full IMAP connection per login (greeting, LOGIN, LOGOUT) — what a client sees.

It prints logins/s, p50 and p99 latency per cell and the ratios to ``static`` and ``ldap``. The authd under
test is a parameter: ``--authd-cmd`` is run with ``{socket}`` replaced by the socket path
(default: the fake, ``python -m tests.fixtures.fake_authd {socket}``, serving alice/secret);
``--user``/``--password`` must be a login it accepts. The LDAP entry gets the same login.

Run: ``.venv/bin/python tests/bench/bench_authd_logins.py [--duration 3] [--json]``
(as root; needs dovecot-core, -imapd, -auth-lua, -ldap, lua-socket, slapd, ldap-utils).
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
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.e2e.dovecot_instance import (  # noqa: E402
    DovecotInstance,
    checkpassword_passdb,
    ldap_bind_conf,
    ldap_passdb,
    lua_passdb,
    static_passdb,
)
from tests.e2e.postfix_instance import world_dir  # noqa: E402
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


# --------------------------------------------------------------------------- servers


def ssha(password: str) -> str:
    """An LDAP ``{SSHA}`` hash (what slapd checks on a simple bind)."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def start_authd(cmd: str, directory: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """Run the authd command on ``directory/authd.sock``; wait for the socket, chmod it 0666."""
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


def start_slapd(user: str, password: str) -> tuple[SlapdServer, Path]:
    """A private slapd holding one mailbox entry ``uid=USER`` with an {SSHA} userPassword."""
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
    conf = slapd.tmp / "dovecot-ldap.conf.ext"
    conf.write_text(
        ldap_bind_conf(slapd.uri, slapd.base_dn, filter_="(&(objectClass=inetOrgPerson)(uid=%u))")
        + f"dn = {slapd.service_dn}\ndnpass = {SERVICE_PASSWORD}\n"
    )
    conf.chmod(0o644)
    return slapd, conf


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


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per cell")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--authd-cmd", default="{python} -m tests.fixtures.fake_authd {socket}")
    ap.add_argument("--user", default="alice")
    ap.add_argument("--password", default="secret")
    ap.add_argument("--passdbs", default="static,checkpassword,lua,ldap")
    ap.add_argument("--methods", default="auth-client,imap")
    ap.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    wanted = args.passdbs.split(",")
    methods = args.methods.split(",")

    authd_proc, sock = start_authd(args.authd_cmd, world_dir("authd-"))
    slapd: SlapdServer | None = None
    instances: dict[str, DovecotInstance] = {}
    rows: list[dict[str, Any]] = []
    try:
        passdbs = {
            "static": lambda: static_passdb(args.password),
            "checkpassword": lambda: checkpassword_passdb(sock),
            "lua": lambda: lua_passdb(),
        }
        if "ldap" in wanted:
            slapd, ldap_conf = start_slapd(args.user, args.password)
            passdbs["ldap"] = lambda: ldap_passdb(ldap_conf)
        for name in wanted:
            instances[name] = DovecotInstance(
                passdbs[name](),
                authd_env={"PFM_AUTHD_SOCKET": str(sock)},
                extra=BENCH_CONF,
            ).start()
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
                                inst.imap_port, args.user, args.password, deadline, lat, errors
                            )
                        return _auth_client_worker(
                            str(inst.auth_client_socket),
                            args.user,
                            args.password,
                            deadline,
                            lat,
                            errors,
                        )

                    run_load(worker, c, min(0.5, args.duration))  # warm up workers/connections
                    row = {"method": method, "passdb": name, "concurrency": c}
                    row |= run_load(worker, c, args.duration)
                    rows.append(row)
                    if not args.json:
                        print(_fmt(row), flush=True)
    finally:
        for inst in instances.values():
            inst.terminate()
        for inst in instances.values():
            inst.cleanup()
        os.killpg(authd_proc.pid, signal.SIGTERM)
        authd_proc.wait(10)
        shutil.rmtree(sock.parent, ignore_errors=True)
        if slapd is not None:
            slapd.stop()
            shutil.rmtree(slapd.tmp, ignore_errors=True)

    for ref in ("static", "ldap"):
        base = {
            (r["method"], r["concurrency"]): r["logins_per_s"] for r in rows if r["passdb"] == ref
        }
        for r in rows:
            b = base.get((r["method"], r["concurrency"]))
            r[f"vs_{ref}"] = r["logins_per_s"] / b if b else float("nan")
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print()
        print(f"{'method':<12}{'passdb':<15}{'conc':>5}{'logins/s':>11}{'p50 ms':>9}"
              f"{'p99 ms':>9}{'vs static':>10}{'vs ldap':>9}{'errors':>8}")  # fmt: skip
        for r in rows:
            print(_fmt(r))
    return 0


def _fmt(r: dict[str, Any]) -> str:
    vs = f"{r['vs_static']:>10.3f}{r['vs_ldap']:>9.3f}" if "vs_static" in r else " " * 19
    err = f"{r['errors']}" + (f" ({r['first_error'].strip()})" if r["errors"] else "")
    return (
        f"{r['method']:<12}{r['passdb']:<15}{r['concurrency']:>5}{r['logins_per_s']:>11.0f}"
        f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{vs}{err:>8}"
    )


if __name__ == "__main__":
    sys.exit(main())
