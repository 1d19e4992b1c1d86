"""A lean pipelined Redis client for the request hot path (RESP2 over asyncio.Protocol).

redis-py costs a few hundred microseconds of CPU per command through its connection
pool; a policy decision must cost tens. This client keeps one connection, writes each
command at once (concurrent callers pipeline naturally), matches replies in order with
hiredis' parser, bounds every command with a timeout and reconnects lazily. On any error
or timeout every pending command fails with :class:`RespError` and the connection is
dropped, so a reply can never be matched to the wrong command.

Only plain ``redis://`` and ``unix://`` URLs; TLS, Sentinel and Cluster go through redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import hiredis


class RespError(Exception):
    """A connection problem, a timeout or an error reply."""


class ReplyError(RespError):
    """Redis answered with an error (e.g. NOSCRIPT)."""


def supported(url: str) -> bool:
    """True for URLs this client handles."""
    return urlparse(url).scheme in ("redis", "unix")


def encode(args: tuple[Any, ...] | list[Any]) -> bytes:
    """One RESP2 command. Strings are UTF-8 with surrogateescape (bytes from mail never fail)."""
    out = [f"*{len(args)}\r\n"]
    ascii_only = True
    for a in args:
        if type(a) is not str:
            a = a.decode("utf-8", "surrogateescape") if isinstance(a, bytes) else str(a)
        if a.isascii():
            out.append(f"${len(a)}\r\n{a}\r\n")
        else:
            n = len(a.encode("utf-8", "surrogateescape"))
            out.append(f"${n}\r\n{a}\r\n")
            ascii_only = False
    text = "".join(out)
    if ascii_only:
        return text.encode("ascii")
    return text.encode("utf-8", "surrogateescape")


class _Proto(asyncio.Protocol):
    def __init__(self, client: RespClient) -> None:
        self.client = client
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        pending = self.client._pending
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.client._fail(RespError(f"protocol error: {exc}"))
                return
            if reply is False:
                return
            if not pending:
                self.client._fail(RespError("reply without a request"))
                return
            fut = pending.popleft()[0]
            if fut.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(ReplyError(str(reply)))
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost(self)


class RespClient:
    """One pipelined connection to one Redis server."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        connect_timeout: float = 0.5,
        command_timeout: float = 0.5,
    ) -> None:
        u = urlparse(url)
        self.unix_path = u.path if u.scheme == "unix" else ""
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 6379
        db = 0
        if u.scheme == "redis" and u.path.strip("/"):
            db = int(u.path.strip("/"))
        if "db" in parse_qs(u.query):
            db = int(parse_qs(u.query)["db"][0])
        self.db = db
        self.username = unquote(u.username) if u.username else None
        self.password = password or (unquote(u.password) if u.password else None)
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._proto: _Proto | None = None
        self._connecting: asyncio.Future[None] | None = None
        # (future, deadline): one watchdog timer checks the oldest, not a timer per command
        self._pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._watchdog: asyncio.TimerHandle | None = None

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.unix_path:
                    _, proto = await loop.create_unix_connection(
                        lambda: _Proto(self), self.unix_path
                    )
                else:
                    _, proto = await loop.create_connection(
                        lambda: _Proto(self), self.host, self.port
                    )
        except (OSError, TimeoutError) as exc:
            raise RespError(
                f"cannot connect: {type(exc).__name__}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else 'timeout'}"
            ) from exc
        self._proto = proto
        if self.password:
            auth = (
                ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
            )
            await self._send(auth)
        if self.db:
            await self._send(("SELECT", self.db))

    async def execute(self, *args: Any) -> Any:
        """Send one command and await its reply."""
        if self._proto is None:
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            try:
                await asyncio.shield(self._connecting)
            finally:
                if self._connecting is not None and self._connecting.done():
                    self._connecting = None
        return await self._send(args)

    def _send(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        proto = self._proto
        if proto is None or proto.transport is None or proto.transport.is_closing():
            raise RespError("not connected")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending.append((fut, loop.time() + self.command_timeout))
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.command_timeout, self._check_deadlines)
        proto.transport.write(encode(args))
        return fut

    def _check_deadlines(self) -> None:
        """Fail everything when the oldest command is overdue; else look again later."""
        self._watchdog = None
        if not self._pending:
            return
        loop = asyncio.get_running_loop()
        oldest = self._pending[0][1]
        if loop.time() >= oldest:
            self._fail(RespError(f"timeout after {self.command_timeout:g}s"))
        else:
            self._watchdog = loop.call_at(oldest, self._check_deadlines)

    def _fail(self, exc: RespError) -> None:
        """Fail everything in flight and drop the connection (replies can no longer be matched)."""
        pending, self._pending = self._pending, deque()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for fut, _ in pending:
            if not fut.done():
                fut.set_exception(exc)
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.abort()

    def _lost(self, proto: _Proto) -> None:
        if self._proto is proto:
            self._fail(RespError("connection lost"))

    async def aclose(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                await self._connecting
