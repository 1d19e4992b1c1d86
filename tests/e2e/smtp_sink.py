"""The next-hop SMTP server a test Postfix relays to: records what was really delivered."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from aiosmtpd.controller import Controller

from tests.conftest import free_port


@dataclass(frozen=True, slots=True)
class Delivered:
    """One message as the sink received it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content or b""
        self.sink._add(Delivered(envelope.mail_from, tuple(envelope.rcpt_tos), bytes(content)))
        return "250 OK queued by sink"


class SmtpSink:
    """An aiosmtpd server in a thread on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[Delivered] = []
        self._cond = threading.Condition()
        self._running = False
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    def _add(self, msg: Delivered) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def start(self) -> None:
        """Start serving (returns once the port accepts connections)."""
        self.controller.start()
        self._running = True

    def stop(self) -> None:
        """Stop serving; safe to call twice."""
        if self._running:
            self._running = False
            self.controller.stop()

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Delivered]:
        """Block until at least ``count`` messages arrived; return a copy of all of them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"sink got {len(self.messages)} messages, expected {count}"
                    )
                self._cond.wait(left)
            return list(self.messages)
