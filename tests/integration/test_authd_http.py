"""pfm-authd's HTTP endpoint for real: in-process daemon, real SQLite directory, http.client.

The daemon runs in the test's event loop; http.client (blocking) runs in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_authd_daemon import BOB_PW, PW, auth, short_dir, sqlite_env

pytestmark = pytest.mark.integration
__all__ = ["short_dir"]  # the fixture, re-exported for this module's tests


class Http:
    """A keep-alive http.client connection to the daemon's HTTP endpoint."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.headers = {"Content-Type": "application/json", **(headers or {})}

    def _post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.conn.request("POST", path, json.dumps(body), self.headers)
        resp = self.conn.getresponse()
        return resp.status, json.loads(resp.read())

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST JSON, return status and decoded answer (blocking client in a thread)."""
        return await asyncio.to_thread(self._post, path, body)

    def close(self) -> None:
        self.conn.close()


async def test_http_auth_and_lookup_against_sqlite(short_dir: Path) -> None:
    """/v1/auth and /v1/lookup answer from the SQLite directory like the unix socket does."""
    async with sqlite_env(short_dir, http_listen="127.0.0.1:0") as env:
        client = Http(env.daemon.http.port)
        try:
            status, ok = await client.post(
                "/v1/auth",
                {
                    "user": "Alice@example.org",
                    "password": PW,
                    "service": "imap",
                    "remote_ip": "192.0.2.9",
                    "remote_port": 40000,
                    "secured": True,
                },
            )
            assert status == 200 and ok["result"] == "ok" and ok["user"] == "alice@example.org"
            assert ok["fields"] == {
                "userdb_home": "/srv/vmail/example.org/alice",
                "userdb_uid": "5000",
                "userdb_gid": "5001",
                "userdb_quota_rule": "*:bytes=1000000",
            }
            _, wrong = await client.post(
                "/v1/auth", {"user": "bob@example.org", "password": "nope", "service": "imap"}
            )
            assert wrong == {"result": "fail", "reason": "wrong_password"}
            _, app = await client.post(
                "/v1/auth",
                {"user": "bob@example.org", "password": env.secrets["app"], "service": "pop3"},
            )
            assert app["result"] == "fail"  # the app password is scoped to imap
            _, disabled = await client.post(
                "/v1/auth", {"user": "carol@example.org", "password": PW, "service": "imap"}
            )
            assert disabled["result"] == "fail"
            _, look = await client.post("/v1/lookup", {"user": "bob@example.org"})
            assert look["result"] == "ok" and look["fields"]["userdb_uid"] == "5000"
            _, nobody = await client.post("/v1/lookup", {"user": "nobody@example.org"})
            assert nobody["result"] == "nouser"
        finally:
            client.close()
        logins = env.metric(
            "pfm_authd_logins_total", {"service": "imap", "mechanism": "password", "result": "ok"}
        )
        assert logins == 1.0


async def test_http_and_socket_share_one_guard(short_dir: Path) -> None:
    """Failures over HTTP count in the same guard as the unix socket: the pair gets blocked."""
    guard = {"per_ip_login": "3/5m", "tarpit_start": "10ms", "tarpit_max": "20ms"}
    async with sqlite_env(
        short_dir, http_listen="127.0.0.1:0", trusted_networks=[], guard=guard
    ) as env:
        client = Http(env.daemon.http.port)
        try:
            for i in range(3):
                _, r = await client.post(
                    "/v1/auth",
                    {"user": "bob@example.org", "password": f"bad-{i}", "remote_ip": "203.0.113.5"},
                )
                assert r["result"] == "fail"
        finally:
            client.close()
        reply = await auth(env, "bob@example.org", BOB_PW, ip="203.0.113.5")
        assert reply.kind.name == "FAIL" and reply.reason == "blocked"


async def test_policy_reports_drive_the_guard_to_a_block(short_dir: Path) -> None:
    """Dovecot-style allow/report: distinct wrong pwhashes tarpit, then allow answers -1."""
    guard = {"per_ip": "100/10m", "per_ip_login": "3/5m", "per_login": "50/10m"}
    async with sqlite_env(
        short_dir, http_listen="127.0.0.1:0", trusted_networks=[], guard=guard
    ) as env:
        client = Http(env.daemon.http.port)
        base = {
            "login": "alice@example.org",
            "remote": "198.51.100.20",
            "device_id": "",
            "protocol": "imap",
            "session_id": "abc",
        }
        try:
            status, first = await client.post("/v1/policy?command=allow", {**base, "pwhash": "a1"})
            assert (status, first) == (200, {"status": 0, "msg": ""})
            for pwhash in ("a1", "a1", "b2"):  # a retried password counts once
                status, _ = await client.post(
                    "/v1/policy?command=report",
                    {**base, "pwhash": pwhash, "success": False, "policy_reject": False},
                )
                assert status == 200
            _, tarpit = await client.post("/v1/policy?command=allow", {**base, "pwhash": "c3"})
            assert tarpit["status"] > 0
            await client.post(
                "/v1/policy?command=report",
                {**base, "pwhash": "c3", "success": False, "policy_reject": False},
            )
            _, blocked = await client.post("/v1/policy?command=allow", {**base, "pwhash": "d4"})
            assert blocked["status"] < 0 and blocked["msg"]
            # the same guard refuses the login on the unix socket too, even with the right password
            reply = await auth(env, "alice@example.org", PW, ip="198.51.100.20")
            assert reply.reason == "blocked"
            # another IP is still fine (the login window has room)
            _, other = await client.post(
                "/v1/policy?command=allow", {**base, "remote": "198.51.100.99", "pwhash": "x"}
            )
            assert other["status"] == 0
        finally:
            client.close()
        assert env.metric("pfm_authd_guard_blocks_total", {"reason": "ip_login_failures"}) >= 1


async def test_policy_success_report_clears_the_pair(short_dir: Path) -> None:
    """A success report clears the IP+login failures, so the pair is no longer tarpitted."""
    async with sqlite_env(
        short_dir,
        http_listen="127.0.0.1:0",
        trusted_networks=[],
        guard={"tarpit_windows": ["ip_login"]},
    ) as env:
        client = Http(env.daemon.http.port)
        base = {"login": "bob@example.org", "remote": "198.51.100.30", "protocol": "imap"}
        try:
            await client.post(
                "/v1/policy?command=report", {**base, "pwhash": "z", "success": "false"}
            )
            _, before = await client.post("/v1/policy?command=allow", base)
            assert before["status"] > 0
            await client.post("/v1/policy?command=report", {**base, "pwhash": "y", "success": True})
            _, after = await client.post("/v1/policy?command=allow", base)
            assert after["status"] == 0
        finally:
            client.close()


async def test_api_key_file_enforced(short_dir: Path) -> None:
    """With http_api_key_file, requests without the key get 401; Basic auth with it works."""
    key_file = short_dir / "http.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"k3y-for-dovecot\n")
    os.close(fd)
    async with sqlite_env(
        short_dir, http_listen="127.0.0.1:0", http_api_key_file=str(key_file)
    ) as env:
        port = env.daemon.http.port
        anonymous = Http(port)
        basic = base64.b64encode(b"dovecot:k3y-for-dovecot").decode()
        keyed = Http(port, {"Authorization": f"Basic {basic}"})
        try:
            status, err = await anonymous.post(
                "/v1/auth", {"user": "alice@example.org", "password": PW}
            )
            assert status == 401 and "API key" in err["error"]
            status, ok = await keyed.post("/v1/auth", {"user": "alice@example.org", "password": PW})
            assert status == 200 and ok["result"] == "ok"
        finally:
            anonymous.close()
            keyed.close()


async def test_http_listen_stops_with_the_daemon(short_dir: Path) -> None:
    """Stopping the daemon closes the HTTP port."""
    async with sqlite_env(short_dir, http_listen="127.0.0.1:0") as env:
        port = env.daemon.http.port
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
