"""Prometheus exposition for the daemons: a tiny asyncio HTTP/1.1 server on one registry.

GET (or HEAD) ``/metrics`` renders the registry (OpenMetrics when the scraper asks for
it in ``Accept``), ``/healthz`` answers ``ok``, anything else 404. One request per
connection, request head bounded to ``MAX_REQUEST`` bytes, read and write timeouts.
Rendering runs in the default executor so a slow collector never stalls the event
loop; collectors must therefore be thread-safe (prometheus_client's own are).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from .logging import get_logger
from .netserver import parse_listen, prepare_unix_path

log = get_logger("pfm.metrics")

MAX_REQUEST = 8192
_TEXT = "text/plain; charset=utf-8"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


def process_collectors(registry: CollectorRegistry) -> CollectorRegistry:
    """Add the process (CPU, RSS, fds), platform (Python version) and GC collectors."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def new_registry(process: bool = True) -> CollectorRegistry:
    """A fresh registry, with the process/platform/gc collectors when ``process``."""
    registry = CollectorRegistry()
    return process_collectors(registry) if process else registry


def _header(head: bytes, name: bytes) -> str:
    """The value of header ``name`` (lower-case) in a raw request head, or ''."""
    for line in head.split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name:
            return value.strip().decode("latin-1")
    return ""


class MetricsServer:
    """GET /metrics and /healthz over HTTP/1.1 (one request per connection)."""

    def __init__(self, listen: str, registry: CollectorRegistry, timeout: float = 10.0) -> None:
        self.address = parse_listen(listen)
        self.registry = registry
        self.timeout = timeout
        self.server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        """Bind; OSError naming the address when that fails."""
        a = self.address
        try:
            if a.kind == "unix":
                prepare_unix_path(a.path)
                self.server = await asyncio.start_unix_server(
                    self._client, a.path, limit=MAX_REQUEST
                )
            else:
                self.server = await asyncio.start_server(
                    self._client, a.host, a.port, reuse_address=True, limit=MAX_REQUEST
                )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise OSError(exc.errno, f"cannot listen on {a}: address already in use") from None
            reason = exc.strerror or str(exc)
            raise OSError(exc.errno, f"cannot listen on {a}: {reason}") from None

    @property
    def port(self) -> int:
        """The TCP port really bound (useful with port 0)."""
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        """Stop listening and close the connections still open."""
        if self.server is not None:
            self.server.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            self.server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.timeout)
        except asyncio.LimitOverrunError:
            await self._send(writer, 431, b"request header too large\n")
            return
        except TimeoutError:
            await self._send(writer, 408, b"request timeout\n")
            return
        except asyncio.IncompleteReadError:
            return
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            await self._send(writer, 400, b"bad request\n")
            return
        method, target = parts[0], parts[1]
        if method not in (b"GET", b"HEAD"):
            await self._send(writer, 405, b"only GET and HEAD\n")
            return
        head_only = method == b"HEAD"
        path = target.split(b"?", 1)[0]
        if path == b"/metrics":
            encoder, ctype = choose_encoder(_header(head, b"accept"))
            try:
                body = await asyncio.get_running_loop().run_in_executor(
                    None, encoder, self.registry
                )
            except Exception:  # a broken collector must not kill the endpoint
                log.exception("metrics_render_failed")
                await self._send(writer, 500, b"collector failed\n")
                return
            await self._send(writer, 200, body, ctype, head_only=head_only)
        elif path in (b"/healthz", b"/"):
            await self._send(writer, 200, b"ok\n", head_only=head_only)
        else:
            await self._send(writer, 404, b"not found\n")

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        code: int,
        body: bytes,
        ctype: str = _TEXT,
        head_only: bool = False,
    ) -> None:
        allow = "Allow: GET, HEAD\r\n" if code == 405 else ""
        writer.write(
            f"HTTP/1.1 {code} {_REASONS[code]}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n{allow}Connection: close\r\n\r\n".encode()
        )
        if not head_only:
            writer.write(body)
        await asyncio.wait_for(writer.drain(), self.timeout)
