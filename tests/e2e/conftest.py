"""Fixtures for end-to-end tests: a private Postfix relaying to an aiosmtpd sink."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.conftest import require_binary
from tests.e2e.postfix_instance import PostfixInstance
from tests.e2e.smtp_sink import SmtpSink


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """An SMTP sink recording delivered messages."""
    sink = SmtpSink()
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture
def postfix_factory(smtp_sink: SmtpSink) -> Iterator[Callable[..., PostfixInstance]]:
    """Start private Postfix instances with extra main.cf parameters; all stopped at teardown."""
    require_binary("postfix")
    require_binary("postconf")
    started: list[PostfixInstance] = []

    def make(**extra: str) -> PostfixInstance:
        pf = PostfixInstance(smtp_sink.port, extra)
        started.append(pf)
        pf.start()
        return pf

    try:
        yield make
    finally:
        for pf in started:
            pf.cleanup()
