"""pfm-authd's HTTP endpoint: the pure request parser, then real loopback sockets.

The socket tests run :class:`authd.http.HttpServer` on 127.0.0.1:0 over a real AuthService
whose directory is the unit tests' fake verifier (no hashing, no SQLite).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from authd.http import (
    CONTINUE,
    ContinueNeeded,
    HttpApi,
    HttpError,
    HttpRequest,
    HttpServer,
    RequestParser,
    policy_command,
    reply_to_json,
    request_from_json,
)
from authd.wire import Reply, ReplyKind, RequestKind
from tests.unit.test_authd_service import make_service

BODY = json.dumps({"user": "alice@example.org", "password": "pw-a", "service": "imap"}).encode()


def post(path: str, body: bytes, *extra: str) -> bytes:
    """A raw POST with Content-Length."""
    head = [f"POST {path} HTTP/1.1", "Host: t", "Content-Type: application/json"]
    head += [*extra, f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def feed_in(parser: RequestParser, data: bytes, size: int) -> list[Any]:
    """Feed ``data`` in chunks of ``size`` bytes; all events."""
    out: list[Any] = []
    for i in range(0, len(data), size):
        out += parser.feed(data[i : i + size])
    return out


# --------------------------------------------------------------------------- parser


@pytest.mark.parametrize("size", [1, 16, 128, 4096])
def test_parser_same_requests_at_every_read_size(size: int) -> None:
    """Two pipelined requests decode identically whatever the read size."""
    data = post("/v1/auth", BODY) + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    events = feed_in(RequestParser(), data, size)
    assert [type(e) for e in events] == [HttpRequest, HttpRequest]
    first, second = events
    assert (first.method, first.path, first.body) == ("POST", "/v1/auth", BODY)
    assert first.header("content-type") == "application/json" and first.keep_alive
    assert (second.method, second.path, second.body) == ("GET", "/healthz", b"")


def test_parser_signals_continue_only_without_body() -> None:
    """Expect: 100-continue yields ContinueNeeded when the body is missing, once, not otherwise."""
    head, _, body = post("/v1/auth", BODY, "Expect: 100-continue").partition(b"\r\n\r\n")
    parser = RequestParser()
    assert parser.feed(head + b"\r\n\r\n") == [ContinueNeeded()]
    assert parser.awaiting_continue
    assert parser.feed(body[:5]) == []
    (req,) = parser.feed(body[5:])
    assert isinstance(req, HttpRequest) and req.body == BODY
    assert not parser.awaiting_continue
    whole = RequestParser().feed(post("/v1/auth", BODY, "Expect: 100-continue"))
    assert [type(e) for e in whole] == [HttpRequest]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /x HTTP/2.0\r\n\r\n", 505),
        (b"GET x HTTP/1.1\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nBad Header: 1\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nA: 1\r\n folded\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"GET /x HTTP/1.1\r\n" + b"A: b\r\n" * 65 + b"\r\n", 431),
        (b"GET /" + b"a" * 9000, 431),
    ],
)
def test_parser_rejects_bad_requests(data: bytes, status: int) -> None:
    """Garbage, oversized heads and bodies, too many headers and chunked bodies get a status."""
    parser = RequestParser()
    with pytest.raises(HttpError) as info:
        parser.feed(data)
    assert info.value.status == status
    with pytest.raises(HttpError):
        parser.feed(b"GET / HTTP/1.1\r\n\r\n")  # broken for good


def test_keep_alive_rules() -> None:
    """HTTP/1.1 keeps the connection unless close; HTTP/1.0 only with keep-alive."""
    events = RequestParser().feed(
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"
        b"GET / HTTP/1.0\r\n\r\n"
        b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"
    )
    assert [e.keep_alive for e in events if isinstance(e, HttpRequest)] == [False, False, True]


def test_request_from_json_names_the_bad_field() -> None:
    """A bad field is a BadRequest naming it; ports may be numbers or digit strings."""
    req = request_from_json(
        {
            "user": "a@b.c",
            "password": "Zq9-secret",
            "remote_port": "143",
            "local_port": 0,
            "secured": True,
        },
        RequestKind.AUTH,
    )
    assert (req.remote_port, req.local_port, req.secured) == (143, None, "yes")
    assert "Zq9-secret" not in repr(req)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"password": "p"}, "user"),
        ({"user": "a@b.c"}, "password"),
        ({"user": "a@b.c", "password": 5}, "password"),
        ({"user": "a@b.c", "password": "p", "remote_port": 70000}, "remote_port"),
        ({"user": ["x"], "password": "p"}, "user"),
    ]
    for obj, field in cases:
        with pytest.raises(ValueError, match=field):
            request_from_json(obj, RequestKind.AUTH)
    with pytest.raises(ValueError, match="password"):
        request_from_json({"user": "a@b.c", "password": "p"}, RequestKind.LOOKUP)


def test_reply_to_json_uses_dovecot_field_names() -> None:
    """An OK reply carries userdb_home/uid/gid and extras; a FAIL only result and reason."""
    ok = Reply(
        ReplyKind.OK, user="a@b.c", home="/h", uid="5", gid="6", extra=(("userdb_quota_rule", "q"),)
    )
    assert reply_to_json(ok) == {
        "result": "ok",
        "user": "a@b.c",
        "fields": {
            "userdb_home": "/h",
            "userdb_uid": "5",
            "userdb_gid": "6",
            "userdb_quota_rule": "q",
        },
    }
    assert reply_to_json(Reply(ReplyKind.FAIL, reason="wrong_password")) == {
        "result": "fail",
        "reason": "wrong_password",
    }


# --------------------------------------------------------------------------- sockets


@pytest.fixture
async def server(request: pytest.FixtureRequest) -> AsyncIterator[HttpServer]:
    """An HttpServer on 127.0.0.1:0 over a real AuthService with the fake directory."""
    key = getattr(request, "param", "")
    service, _ = make_service(trusted_networks=[])
    srv = HttpServer(
        "127.0.0.1:0", HttpApi(service, service.guard, api_key=key), request_timeout=0.5
    )
    await srv.start()
    try:
        yield srv
    finally:
        await srv.drain(0.5)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lower-case names), body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 5)
    return status, headers, body


async def test_auth_over_http(server: HttpServer) -> None:
    """POST /v1/auth answers ok with userdb fields, fail for a wrong password."""
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        w.write(post("/v1/auth", BODY))
        status, headers, body = await read_response(r)
        assert status == 200 and headers["content-type"] == "application/json"
        answer = json.loads(body)
        assert answer["result"] == "ok" and answer["user"] == "alice@example.org"
        assert answer["fields"]["userdb_home"].endswith("/example.org/alice")
        w.write(
            post("/v1/auth", json.dumps({"user": "alice@example.org", "password": "x"}).encode())
        )
        status, _, body = await read_response(r)
        assert (status, json.loads(body)["result"]) == (200, "fail")
    finally:
        w.close()


async def test_expect_continue_answered_before_body(server: HttpServer) -> None:
    """A head with Expect: 100-continue gets 100 Continue at once; the body then gets 200."""
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        head, _, body = post("/v1/auth", BODY, "Expect: 100-continue").partition(b"\r\n\r\n")
        t0 = time.monotonic()
        w.write(head + b"\r\n\r\n")
        interim = await asyncio.wait_for(r.readexactly(len(CONTINUE)), 1)
        assert interim == CONTINUE and time.monotonic() - t0 < 0.5
        w.write(body)
        status, _, answer = await read_response(r)
        assert status == 200 and json.loads(answer)["result"] == "ok"
    finally:
        w.close()


async def test_pipelined_requests_answered_in_order(server: HttpServer) -> None:
    """Several requests sent at once on one keep-alive connection are answered in order."""
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        wrong = json.dumps({"user": "alice@example.org", "password": "nope"}).encode()
        w.write(
            post("/v1/auth", BODY)
            + post("/v1/auth", wrong)
            + b"GET /healthz HTTP/1.1\r\n\r\n"
            + post("/v1/lookup", b'{"user": "nobody@example.org"}')
        )
        results = []
        for _ in range(4):
            status, _, body = await read_response(r)
            results.append(
                body.decode().strip()
                if status == 200 and body == b"ok\n"
                else json.loads(body)["result"]
            )
        assert results == ["ok", "fail", "ok", "nouser"]
    finally:
        w.close()


@pytest.mark.parametrize(
    ("data", "status", "error"),
    [
        (post("/v1/auth", b"{not json"), 400, "body: not valid JSON"),
        (post("/v1/auth", b"[1, 2]"), 400, "body: must be a JSON object"),
        (post("/v1/auth", b'{"user": "a@b.c"}'), 400, "password"),
        (post("/v1/policy?command=frob", b"{}"), 400, "command"),
        (post("/v1/nothing", b"{}"), 404, "no such endpoint"),
        (b"GET /v1/auth HTTP/1.1\r\n\r\n", 405, "POST"),
        (
            post("/v1/auth", BODY, "Content-Type: text/html").replace(b"application/json\r\n", b""),
            415,
            "json",
        ),
    ],
)
async def test_bad_input_gets_json_error(
    server: HttpServer, data: bytes, status: int, error: str
) -> None:
    """Bad JSON, missing fields, unknown paths and methods get a JSON error, never a traceback."""
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        w.write(data)
        got, headers, body = await read_response(r)
        assert got == status and headers["content-type"] == "application/json"
        assert error in json.loads(body)["error"]
        assert b"Traceback" not in body
        w.write(b"GET /healthz HTTP/1.1\r\n\r\n")  # the connection survives an API-level error
        assert (await read_response(r))[0] == 200
    finally:
        w.close()


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"HELLO THERE\r\n\r\n", 400),
        (b"POST /v1/auth HTTP/1.1\r\nContent-Length: 70000\r\n\r\n", 413),
        (b"GET /" + b"x" * 10000 + b" HTTP/1.1\r\n\r\n", 431),
    ],
)
async def test_protocol_errors_close_the_connection(
    server: HttpServer, data: bytes, status: int
) -> None:
    """Garbage and oversized requests get their status with Connection: close, then EOF."""
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        w.write(data)
        got, headers, body = await read_response(r)
        assert got == status and headers["connection"] == "close"
        assert json.loads(body)["error"]
        assert await asyncio.wait_for(r.read(), 2) == b""
    finally:
        w.close()


async def test_incomplete_request_times_out(server: HttpServer) -> None:
    """A request that never completes gets 408 after the request timeout and is closed."""
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        w.write(b"POST /v1/auth HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        status, _, _ = await read_response(r)
        assert status == 408
        assert await asyncio.wait_for(r.read(), 2) == b""
    finally:
        w.close()


async def test_connection_close_honoured(server: HttpServer) -> None:
    """A request with Connection: close is answered, then the server closes."""
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        w.write(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        status, headers, _ = await read_response(r)
        assert status == 200 and headers["connection"] == "close"
        assert await asyncio.wait_for(r.read(), 2) == b""
    finally:
        w.close()


@pytest.mark.parametrize("server", ["s3cret-key"], indirect=True)
async def test_api_key_required_when_configured(server: HttpServer) -> None:
    """With an API key: none or a wrong one is 401; Basic, Bearer and X-API-Key are accepted."""
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    basic = base64.b64encode(b"dovecot:s3cret-key").decode()
    wrong = base64.b64encode(b"dovecot:nope").decode()
    try:
        for extra, want in [
            ((), 401),
            ((f"Authorization: Basic {wrong}",), 401),
            ((f"Authorization: Basic {basic}",), 200),
            (("Authorization: Bearer s3cret-key",), 200),
            (("X-API-Key: s3cret-key",), 200),
        ]:
            w.write(post("/v1/auth", BODY, *extra))
            status, headers, _ = await read_response(r)
            assert status == want, extra
            if want == 401:
                assert headers["www-authenticate"].startswith("Basic")
        w.write(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert (await read_response(r))[0] == 200  # health needs no key
    finally:
        w.close()


async def test_policy_allow_and_report(server: HttpServer) -> None:
    """Policy reports of distinct wrong passwords tarpit, then block the login (status < 0)."""
    r, w = await asyncio.open_connection("127.0.0.1", server.port)

    async def policy(command: str, **fields: Any) -> dict[str, Any]:
        body = {
            "login": "alice@example.org",
            "remote": "198.51.100.7",
            "protocol": "imap",
            **fields,
        }
        w.write(post(f"/v1/policy?command={command}", json.dumps(body).encode()))
        status, _, answer = await read_response(r)
        assert status == 200
        return dict(json.loads(answer))

    try:
        assert await policy("allow", pwhash="aaa") == {"status": 0, "msg": ""}
        await policy("report", pwhash="aaa", success="false", policy_reject="false")
        first = await policy("allow", pwhash="bbb")
        assert first["status"] >= 1  # tarpit: whole seconds, rounded up
        for token in ("bbb", "ccc", "ddd"):  # per_ip_login default 3 distinct wrong passwords
            await policy("report", pwhash=token, success=False, policy_reject=False)
        blocked = await policy("allow", pwhash="eee")
        assert blocked["status"] < 0 and "later" in blocked["msg"]
    finally:
        w.close()


def test_policy_command_is_the_last_one_in_the_query() -> None:
    """Dovecot appends ?command=X even to a URL that has one: the last command wins."""
    assert policy_command("/v1/policy?command=allow") == "allow"
    assert policy_command("/v1/policy?x=1&command=report") == "report"
    assert policy_command("/v1/policy?command=allow?command=report") == "report"
    assert policy_command("/v1/policy") == ""
