"""The private Postfix fixture itself: it accepts, relays and delivers to the sink."""

from __future__ import annotations

import asyncio
import smtplib
from typing import Any

import pytest

pytestmark = pytest.mark.e2e


def send(port: int) -> dict[str, Any]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        return dict(s.sendmail("a@example.net", ["user@example.org"], "Subject: t\r\n\r\nhi\r\n"))


async def test_message_reaches_sink(postfix_factory: Any, smtp_sink: Any) -> None:
    """A message sent to the private Postfix is relayed to the sink."""
    pf = postfix_factory()
    assert await asyncio.to_thread(send, pf.port) == {}
    msgs = await asyncio.to_thread(smtp_sink.wait_for, 1, 30)
    assert msgs[0].rcpt_tos == ["user@example.org"]
    assert b"Subject: t" in msgs[0].data
    pf.wait_for_log(r"status=sent", timeout=10)
