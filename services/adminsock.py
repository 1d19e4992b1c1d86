"""The daemons' admin endpoint: a unix socket (mode 0600) speaking one JSON object per line.

A daemon subclasses :class:`AdminSocket` and implements :meth:`AdminSocket.handle`. Bad
requests (not JSON, not an object, a missing or wrong field) are answered
``{"ok": false, "error": ...}`` and the connection stays usable; exceptions listed in
``unavailable`` (the daemon's state-store errors) are answered as a store outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import orjson

from services.netserver import prepare_unix_path

MAX_LINE = 65536
IDLE_TIMEOUT = 30.0


class AdminSocket:
    """Answers admin commands on a unix socket only root (or the daemon's user) can open."""

    unavailable: tuple[type[Exception], ...] = ()

    def __init__(self, path: str) -> None:
        self.path = path
        self.server: asyncio.base_events.Server | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.path!r})"

    async def start(self) -> None:
        """Bind the socket with mode 0600 from the start (umask, no chmod window)."""
        prepare_unix_path(self.path)
        old = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(
                self._client, path=self.path, limit=MAX_LINE
            )
        finally:
            os.umask(old)

    async def aclose(self) -> None:
        """Stop listening and remove the socket."""
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.server = None

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        """Run one admin command (the daemon's part)."""
        raise NotImplementedError

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
                except (asyncio.LimitOverrunError, ValueError):
                    writer.write(b'{"ok": false, "error": "request too long"}\n')
                    break
                if not line:
                    break
                try:
                    req = orjson.loads(line)
                    if not isinstance(req, dict):
                        raise ValueError("expected a JSON object")
                    answer = await self.handle(req)
                except (ValueError, KeyError, TypeError) as exc:
                    answer = {"ok": False, "error": str(exc)}
                except self.unavailable as exc:
                    answer = {"ok": False, "error": f"state store unavailable: {exc}"}
                writer.write(orjson.dumps(answer) + b"\n")
                await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
