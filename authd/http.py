"""pfm-authd over HTTP/1.1: the Lua ``dovecot.http`` passdb and Dovecot's auth policy server.

Endpoints (``[authd] http_listen``, e.g. ``127.0.0.1:10042``)::

    POST /v1/auth     {"user", "password", "service", "remote_ip", "remote_port", "local_ip",
                       "local_port", "client_id", "mechanism", "secured", "master_user"}
                      -> 200 {"result": "ok"|"fail"|"nouser"|"tempfail", "user", "fields",
                              "reason"}
    POST /v1/lookup   the same without "password" (a userdb / passdb lookup)
    POST /v1/policy?command=allow|report
                      Dovecot's ``auth_policy_server_url`` protocol -> {"status": N, "msg": ...}
    GET  /healthz     "ok"

``/v1/auth`` and ``/v1/lookup`` build the same :class:`authd.wire.Request` the unix socket
decodes and answer through :meth:`authd.service.AuthService.handle`: one decision engine.
``fields`` holds the userdb fields in Dovecot's names (``userdb_home``, ``userdb_uid``,
``userdb_gid``, ``userdb_quota_rule`` ...), ready for a Lua passdb to return as they are.

The auth policy protocol (Dovecot 2.3 ``auth-policy.c``): Dovecot POSTs a JSON object built
from ``auth_policy_request_attributes`` (default ``login``, ``pwhash``, ``remote``,
``device_id``, ``protocol``, ``session_id``; every value a string) to the configured URL with
``?command=allow`` appended (``command=allow`` after a URL ending in ``&``). ``report`` requests
add the booleans ``success`` and ``policy_reject`` and their answer is not read. The answer to
``allow`` is ``{"status": N, "msg": "..."}``: 0 allows, a negative status refuses the login
(``msg`` becomes the failure reason), a positive one delays it by N whole seconds. ``allow``
asks the brute-force guard (block -> -1, tarpit -> the delay rounded up); ``report`` records
a failure or success in the guard. Dovecot never sends the password: ``pwhash`` is a
truncated hash of nonce, user and password, counted as the "distinct password" token.

HTTP: keep-alive and pipelining (answers in order), ``Expect: 100-continue`` answered at once
(Dovecot's client otherwise waits 2 s before sending the body), bounded head, header count and
body, a deadline for a started request, ``Content-Length`` bodies only. Bad input is answered
with a JSON error naming the problem; an internal error is a 500, never a traceback.

Optional shared secret (``[authd] http_api_key_file``): every request but ``/healthz`` must
carry it as ``Authorization: Basic base64(any-user:KEY)`` (Dovecot: ``auth_policy_server_url
= http://pfm:KEY@host/...`` or ``auth_policy_server_api_header``), ``Authorization: Bearer
KEY`` or ``X-API-Key: KEY``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import math
import re
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from services.logging import get_logger
from services.netserver import Connection, NetServer

from .guard import Guard
from .service import AuthService
from .state import StateError
from .wire import Reply, ReplyKind, Request, RequestKind, WireError

log = get_logger("pfm.authd.http")

MAX_HEAD = 8192
MAX_HEADERS = 64
MAX_BODY = 65536
REQUEST_TIMEOUT = 10.0
MAX_POLICY_DELAY = 300  # Dovecot's own cap on request delays (AUTH_REQUEST_MAX_DELAY_SECS)

REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_TARGET_RE = re.compile(rb"/[\x21-\x7e]*\Z")


# --------------------------------------------------------------------------- parsing (pure)


class HttpError(Exception):
    """A request the server cannot take: answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One complete request. ``repr`` leaves out the body (it may hold a password)."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    def __repr__(self) -> str:
        return f"HttpRequest({self.method} {self.target} {self.version}, body={len(self.body)} B)"

    def header(self, name: str, default: str = "") -> str:
        """The value of a header (case-insensitive name; the first one), or default."""
        want = name.lower()
        for key, value in self.headers:
            if key == want:
                return value
        return default

    @property
    def path(self) -> str:
        """The target without its query."""
        return self.target.partition("?")[0]

    @property
    def query(self) -> dict[str, str]:
        """The query parameters (the first of each name)."""
        out: dict[str, str] = {}
        for key, value in parse_qsl(self.target.partition("?")[2], keep_blank_values=True):
            out.setdefault(key, value)
        return out

    @property
    def keep_alive(self) -> bool:
        """HTTP/1.1 unless ``Connection: close``; HTTP/1.0 only with ``keep-alive``."""
        tokens = {t.strip().lower() for t in self.header("connection").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


@dataclass(frozen=True, slots=True)
class ContinueNeeded:
    """The head of a request asking ``Expect: 100-continue`` arrived without its body."""


Event = HttpRequest | ContinueNeeded


@dataclass(slots=True)
class _Head:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    length: int


def parse_head(raw: bytes, *, max_headers: int = MAX_HEADERS, max_body: int = MAX_BODY) -> _Head:
    """Parse a request head (without the final blank line); HttpError says what is wrong."""
    lines = raw.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN_RE.match(method):
        raise HttpError(400, "malformed method")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if version.startswith(b"HTTP/"):
            raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
        raise HttpError(400, "malformed request line")
    if not _TARGET_RE.match(target):
        raise HttpError(400, "malformed request target")
    if len(lines) - 1 > max_headers:
        raise HttpError(431, f"more than {max_headers} header fields")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise HttpError(400, "obsolete header line folding")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN_RE.match(name):
            raise HttpError(400, "malformed header field")
        if any((b < 0x20 and b != 0x09) or b == 0x7F for b in value):
            raise HttpError(400, "control character in a header value")
        headers.append((name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1")))
    lengths = {v for k, v in headers if k == "content-length"}
    if any(k == "transfer-encoding" for k, _ in headers):
        raise HttpError(501, "Transfer-Encoding is not supported; send Content-Length")
    length = 0
    if lengths:
        if len(lengths) > 1:
            raise HttpError(400, "conflicting Content-Length headers")
        text = lengths.pop()
        if not (text.isascii() and text.isdigit()) or len(text) > 12:
            raise HttpError(400, "malformed Content-Length")
        length = int(text)
        if length > max_body:
            raise HttpError(413, f"body larger than {max_body} bytes")
    return _Head(
        method.decode("ascii"),
        target.decode("ascii"),
        version.decode("ascii"),
        tuple(headers),
        length,
    )


class RequestParser:
    """Incremental HTTP/1.1 request parser: ``feed`` bytes, get complete requests back.

    Pure and bounded: a head longer than ``max_head`` is a 431, a body longer than
    ``max_body`` a 413 as soon as the head says so. After an :class:`HttpError` the parser is
    broken and every further ``feed`` raises it again (the connection is to be closed).
    """

    def __init__(
        self, max_head: int = MAX_HEAD, max_headers: int = MAX_HEADERS, max_body: int = MAX_BODY
    ) -> None:
        self.max_head = max_head
        self.max_headers = max_headers
        self.max_body = max_body
        self._buf = bytearray()
        self._head: _Head | None = None
        self._continue_sent = False
        self._error: HttpError | None = None

    @property
    def in_progress(self) -> bool:
        """True while part of a request is buffered."""
        return bool(self._buf) or self._head is not None

    @property
    def awaiting_continue(self) -> bool:
        """True while a head with ``Expect: 100-continue`` waits for its body."""
        head = self._head
        return head is not None and head.length > 0 and _expects_continue(head.headers)

    def feed(self, data: bytes) -> list[Event]:
        """Add bytes; return the events they complete, in order."""
        if self._error is not None:
            raise HttpError(self._error.status, self._error.message)
        self._buf += data
        events: list[Event] = []
        try:
            while True:
                if self._head is None:
                    while self._buf[:2] == b"\r\n":  # tolerated before a request line
                        del self._buf[:2]
                    end = self._buf.find(b"\r\n\r\n")
                    if end < 0:
                        if len(self._buf) > self.max_head:
                            raise HttpError(431, f"request head larger than {self.max_head} bytes")
                        return events
                    if end > self.max_head:
                        raise HttpError(431, f"request head larger than {self.max_head} bytes")
                    raw = bytes(self._buf[:end])
                    del self._buf[: end + 4]
                    self._head = parse_head(
                        raw, max_headers=self.max_headers, max_body=self.max_body
                    )
                    self._continue_sent = False
                head = self._head
                if len(self._buf) < head.length:
                    if self.awaiting_continue and not self._buf and not self._continue_sent:
                        self._continue_sent = True
                        events.append(ContinueNeeded())
                    return events
                body = bytes(self._buf[: head.length])
                del self._buf[: head.length]
                self._head = None
                events.append(
                    HttpRequest(head.method, head.target, head.version, head.headers, body)
                )
        except HttpError as exc:
            self._error = exc
            self._buf.clear()
            self._head = None
            raise


def _expects_continue(headers: tuple[tuple[str, str], ...]) -> bool:
    return any(k == "expect" and v.lower() == "100-continue" for k, v in headers)


@dataclass(frozen=True, slots=True)
class Response:
    """One final response."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self, *, close: bool = False, head_only: bool = False) -> bytes:
        """The response bytes (``Connection: close`` when ``close``)."""
        lines = [
            f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Unknown')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            *(f"{k}: {v}" for k, v in self.headers),
        ]
        if close:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


def json_response(status: int, payload: dict[str, Any], **kw: Any) -> Response:
    """A JSON response (compact, UTF-8)."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(status, body + b"\n", **kw)


def error_response(status: int, message: str, **kw: Any) -> Response:
    """``{"error": message}`` with ``status``."""
    return json_response(status, {"error": message}, **kw)


# --------------------------------------------------------------------------- JSON -> Request


class BadRequest(ValueError):
    """A request body that is not what an endpoint takes; the message names the field."""


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; BadRequest otherwise."""
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("body: not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("body: must be a JSON object")
    return value


def _text(obj: dict[str, Any], key: str, *, required: bool = False) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise BadRequest(f"field {key!r}: required")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRequest(f"field {key!r}: must be a string")
    text = str(value)
    if "\0" in text or len(text) > 4096:
        raise BadRequest(f"field {key!r}: contains NUL or is too long")
    return text


def _port(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 5:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise BadRequest(f"field {key!r}: must be a port number 0-65535")
    return value or None  # Dovecot sends 0 for "unknown"


def _secured(obj: dict[str, Any]) -> str:
    value = obj.get("secured")
    if value is None or value is False:
        return ""
    if value is True:
        return "yes"
    return _text(obj, "secured")


def request_from_json(obj: dict[str, Any], kind: RequestKind) -> Request:
    """The wire request a JSON body describes (unknown keys are ignored); BadRequest if wrong."""
    password: str | None = None
    if kind is RequestKind.AUTH:
        pw = obj.get("password")
        if not isinstance(pw, str):
            raise BadRequest("field 'password': required, a string")
        if "\0" in pw or len(pw) > 4096:
            raise BadRequest("field 'password': contains NUL or is too long")
        password = pw
    elif "password" in obj:
        raise BadRequest("field 'password': not allowed in a lookup")
    try:
        return Request(
            kind,
            user=_text(obj, "user", required=True),
            password=password,
            service=_text(obj, "service"),
            remote_ip=_text(obj, "remote_ip"),
            remote_port=_port(obj, "remote_port"),
            local_ip=_text(obj, "local_ip"),
            local_port=_port(obj, "local_port"),
            client_id=_text(obj, "client_id"),
            master_user=_text(obj, "master_user"),
            mechanism=_text(obj, "mechanism"),
            secured=_secured(obj),
        )
    except WireError as exc:
        raise BadRequest(str(exc)) from None


def reply_to_json(reply: Reply) -> dict[str, Any]:
    """pfm-authd's reply as the /v1/auth JSON answer (userdb fields in Dovecot's names)."""
    out: dict[str, Any] = {"result": reply.kind.name.lower()}
    if reply.user:
        out["user"] = reply.user
    if reply.kind is ReplyKind.OK:
        fields = {
            f"userdb_{k}": v
            for k, v in (("home", reply.home), ("uid", reply.uid), ("gid", reply.gid))
            if v
        }
        fields.update(reply.extra)
        out["fields"] = fields
    if reply.reason:
        out["reason"] = reply.reason
    return out


# --------------------------------------------------------------------------- the API

_COMMAND_RE = re.compile(r"[?&]command=([A-Za-z]*)")


def policy_command(target: str) -> str:
    """The policy command of a request target: the LAST ``command=`` in the query.

    Dovecot appends ``?command=allow`` to ``auth_policy_server_url`` itself, so a URL already
    ending in ``?command=allow`` arrives as ``...?command=allow?command=report``; the last
    one is what Dovecot means.
    """
    found = _COMMAND_RE.findall(target.partition("?")[1] + target.partition("?")[2])
    return found[-1].lower() if found else ""


def _flag(value: Any) -> bool:
    """A JSON boolean, or the strings Dovecot's templates can produce."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes", "y"}


class HttpApi:
    """Routes requests to the auth service and the guard; never raises."""

    def __init__(self, service: AuthService, guard: Guard, *, api_key: str = "") -> None:
        self.service = service
        self.guard = guard
        self._api_key = api_key.encode()

    def __repr__(self) -> str:
        return f"HttpApi(api_key={'set' if self._api_key else 'none'})"

    def authorized(self, req: HttpRequest) -> bool:
        """True when no key is configured or the request carries it."""
        if not self._api_key:
            return True
        offered: list[bytes] = []
        auth = req.header("authorization")
        scheme, _, cred = auth.partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(cred.strip(), validate=True)
            except (binascii.Error, ValueError):
                decoded = b""
            offered.append(decoded.partition(b":")[2])
        elif scheme.lower() == "bearer":
            offered.append(cred.strip().encode("latin-1"))
        key = req.header("x-api-key")
        if key:
            offered.append(key.encode("latin-1"))
        return any(hmac.compare_digest(o, self._api_key) for o in offered)

    async def handle(self, req: HttpRequest) -> Response:
        """The response to one request (a bug is a 500 with a JSON error, logged)."""
        try:
            return await self._route(req)
        except BadRequest as exc:
            self.service.metrics.bad_requests.inc()
            return error_response(400, str(exc))
        except Exception:
            log.exception("http_internal_error", path=req.path[:200])
            return error_response(500, "internal error")

    async def _route(self, req: HttpRequest) -> Response:
        path = req.path
        if path in ("/healthz", "/"):
            if req.method not in ("GET", "HEAD"):
                return error_response(405, "use GET", headers=(("Allow", "GET, HEAD"),))
            return Response(200, b"ok\n", "text/plain; charset=utf-8")
        handler = self._routes().get(path)
        if handler is None:
            return error_response(404, f"no such endpoint: {path[:100]}")
        if req.method != "POST":
            return error_response(405, "use POST", headers=(("Allow", "POST"),))
        if not self.authorized(req):
            log.warning("http_unauthorized", path=path[:100])
            return error_response(
                401,
                "missing or wrong API key",
                headers=(("WWW-Authenticate", 'Basic realm="pfm-authd"'),),
            )
        ctype = req.header("content-type").partition(";")[0].strip().lower()
        if ctype and ctype not in ("application/json", "text/json"):
            return error_response(415, "send application/json")
        return await handler(req)

    def _routes(self) -> dict[str, Callable[[HttpRequest], Awaitable[Response]]]:
        return {"/v1/auth": self._auth, "/v1/lookup": self._lookup, "/v1/policy": self._policy}

    async def _auth(self, req: HttpRequest) -> Response:
        request = request_from_json(json_object(req.body), RequestKind.AUTH)
        return json_response(200, reply_to_json(await self.service.handle(request)))

    async def _lookup(self, req: HttpRequest) -> Response:
        request = request_from_json(json_object(req.body), RequestKind.LOOKUP)
        return json_response(200, reply_to_json(await self.service.handle(request)))

    async def _policy(self, req: HttpRequest) -> Response:
        command = policy_command(req.target)
        if command not in ("allow", "report"):
            raise BadRequest("query 'command': must be allow or report")
        obj = json_object(req.body)
        login = _text(obj, "login")
        remote = _text(obj, "remote")
        protocol = _text(obj, "protocol")
        if command == "allow":
            status, msg = await self._allow(remote, login)
            log.info(
                "policy",
                command=command,
                user=login[:256],
                rip=remote or "-",
                service=protocol or "-",
                status=status,
            )
            return json_response(200, {"status": status, "msg": msg})
        success = _flag(obj.get("success", False))
        rejected = _flag(obj.get("policy_reject", False))
        token = "policy:" + _text(obj, "pwhash")
        outcome = await self._report(remote, login, token, success, rejected)
        log.info(
            "policy",
            command=command,
            user=login[:256],
            rip=remote or "-",
            service=protocol or "-",
            success=success,
            policy_reject=rejected,
            outcome=outcome,
        )
        return json_response(200, {"status": 0, "msg": ""})

    async def _allow(self, remote: str, login: str) -> tuple[int, str]:
        try:
            verdict = await self.guard.check(remote, login.lower())
        except StateError as exc:  # fail open: state loss only makes limits more lenient
            self.service._state_failed(exc)
            return 0, ""
        if verdict.blocked:
            self.service.metrics.guard_blocks.labels(reason=verdict.reason or "blocked").inc()
            return -1, "Too many failed logins, try again later"
        if verdict.action == "tarpit" and verdict.delay > 0:
            return min(MAX_POLICY_DELAY, math.ceil(verdict.delay)), ""
        return 0, ""

    async def _report(
        self, remote: str, login: str, token: str, success: bool, rejected: bool
    ) -> str:
        if not login:
            return "ignored"
        try:
            if success:
                await self.guard.record_success(remote, login.lower())
                return "success"
            if rejected:
                return "ignored"  # refused by this very policy: the guard already counted
            verdict = await self.guard.record_failure(remote, login.lower(), token)
        except StateError as exc:
            self.service._state_failed(exc)
            return "state_unavailable"
        if verdict.blocked:
            self.service.metrics.guard_blocks.labels(reason=verdict.reason or "blocked").inc()
            return "blocked"
        return "failure"


# --------------------------------------------------------------------------- connections


class HttpConnection(Connection):
    """One HTTP client: requests parsed as they arrive, answered in order by one task."""

    def __init__(
        self, api: HttpApi, *, max_pipeline: int = 64, request_timeout: float = REQUEST_TIMEOUT
    ) -> None:
        super().__init__()
        self.api = api
        self.max_pipeline = max_pipeline
        self.request_timeout = request_timeout
        self.parser = RequestParser()
        self.queue: deque[HttpRequest | HttpError] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.failed = False
        self.paused = False
        self.continue_owed = False
        self._deadline: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.failed:
            return
        try:
            events = self.parser.feed(data)
        except HttpError as exc:
            events, self.failed = [], True
            self.queue.append(exc)
        for event in events:
            if isinstance(event, ContinueNeeded):
                if self.worker is None and not self.queue:
                    self.write(CONTINUE)
                else:
                    self.continue_owed = True  # after the answers before it (HTTP ordering)
            else:
                self.queue.append(event)
        self._arm_deadline()
        if len(self.queue) >= self.max_pipeline and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        if self.queue and self.worker is None:
            self.busy = True
            self.worker = asyncio.ensure_future(self._drain())

    def _arm_deadline(self) -> None:
        if self.parser.in_progress and not self.failed:
            if self._deadline is None:
                loop = asyncio.get_running_loop()
                self._deadline = loop.call_later(self.request_timeout, self._timed_out)
        elif self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.failed or not self.parser.in_progress:
            return
        self.failed = True
        self.queue.append(HttpError(408, "request not completed in time"))
        if self.worker is None:
            self.busy = True
            self.worker = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            while self.queue:
                item = self.queue.popleft()
                if isinstance(item, HttpError):
                    self.api.service.metrics.bad_requests.inc()
                    log.warning(
                        "http_bad_request",
                        peer=self.peer,
                        status=item.status,
                        error=item.message[:200],
                    )
                    self.write(error_response(item.status, item.message).encode(close=True))
                    self.close()
                    return
                response = await self.api.handle(item)
                close = not item.keep_alive
                self.write(response.encode(close=close, head_only=item.method == "HEAD"))
                if close:
                    self.failed = True
                    self.close()
                    return
                if self.paused and len(self.queue) < self.max_pipeline // 2 + 1:
                    self.paused = False
                    if self.transport is not None:
                        self.transport.resume_reading()
            if self.continue_owed and self.parser.awaiting_continue:
                self.write(CONTINUE)
            self.continue_owed = False
        finally:
            self.worker = None
            self.busy = False

    def write(self, data: bytes) -> None:
        """Write if the connection is still open."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self.worker is not None:
            self.worker.cancel()
        super().connection_lost(exc)


class HttpServer:
    """The HTTP endpoint of pfm-authd on one address (TCP or unix), on :class:`NetServer`."""

    def __init__(
        self,
        listen: str,
        api: HttpApi,
        *,
        max_connections: int = 1000,
        idle_timeout: float = 300.0,
        max_pipeline: int = 64,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.api = api
        self.net = NetServer(
            [listen],
            lambda: HttpConnection(api, max_pipeline=max_pipeline, request_timeout=request_timeout),
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            on_reject=self._reject,
        )

    def __repr__(self) -> str:
        return f"HttpServer({self.net.addresses or self.net.specs!r})"

    async def start(self) -> None:
        """Bind; OSError naming the address when that fails."""
        await self.net.start()

    @property
    def addresses(self) -> list[str]:
        """The addresses really bound."""
        return self.net.addresses

    @property
    def port(self) -> int:
        """The TCP port really bound (useful with port 0)."""
        return int(self.net.addresses[0].rpartition(":")[2])

    async def drain(self, grace: float) -> None:
        """Stop accepting, let answers in flight finish, close the rest."""
        await self.net.drain(grace)

    def _reject(self, transport: asyncio.BaseTransport) -> None:
        self.api.service.metrics.rejected_connections.inc()
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(error_response(503, "server busy").encode(close=True))
