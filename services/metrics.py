"""Prometheus exposition for the daemons: a tiny asyncio HTTP server on one registry."""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from .netserver import parse_listen

MAX_REQUEST = 8192


def new_registry(process: bool = True) -> CollectorRegistry:
    """A fresh registry, with process/platform/gc collectors when ``process``."""
    registry = CollectorRegistry()
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


class MetricsServer:
    """GET /metrics and /healthz over HTTP/1.1 (one request per connection)."""

    def __init__(self, listen: str, registry: CollectorRegistry, timeout: float = 10.0) -> None:
        self.address = parse_listen(listen)
        self.registry = registry
        self.timeout = timeout
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        a = self.address
        if a.kind == "unix":
            self.server = await asyncio.start_unix_server(self._client, a.path)
        else:
            self.server = await asyncio.start_server(
                self._client, a.host, a.port, reuse_address=True
            )

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            self.server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.timeout)
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ConnectionError,
        ):
            writer.close()
            return
        if len(head) > MAX_REQUEST:
            await self._send(writer, 431, b"request header too large\n")
            return
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
            await self._send(writer, 405, b"only GET\n")
            return
        path = parts[1].split(b"?", 1)[0]
        if path == b"/metrics":
            body = await asyncio.get_running_loop().run_in_executor(
                None, generate_latest, self.registry
            )
            await self._send(writer, 200, body, CONTENT_TYPE_LATEST, head_only=parts[0] == b"HEAD")
        elif path in (b"/healthz", b"/"):
            await self._send(writer, 200, b"ok\n", head_only=parts[0] == b"HEAD")
        else:
            await self._send(writer, 404, b"not found\n")

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        code: int,
        body: bytes,
        ctype: str = "text/plain; charset=utf-8",
        head_only: bool = False,
    ) -> None:
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 431: "Too Large"}[code]
        writer.write(
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        if not head_only:
            writer.write(body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
