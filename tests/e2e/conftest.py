"""Fixtures for end-to-end tests: a private Postfix relaying to an aiosmtpd sink."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

import pytest

from tests.conftest import require_binary
from tests.e2e.postfix_instance import PostfixInstance
from tests.e2e.smtp_sink import SmtpSink


class PostfixFactory(Protocol):
    """``postfix_factory(files=None, /, **main_cf) -> started PostfixInstance``.

    ``files`` (positional) are written into the config dir, so ``main_cf`` values can name
    them as ``$config_directory/NAME``; ``main_cf`` overrides main.cf parameters.
    """

    def __call__(
        self, files: Mapping[str, str] | None = None, /, **main_cf: str
    ) -> PostfixInstance: ...


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Remember each phase's report on the item so teardown can tell a failed test."""
    report = yield
    setattr(item, f"_pfm_rep_{call.when}", report)
    return report


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
def postfix_factory(
    smtp_sink: SmtpSink, request: pytest.FixtureRequest
) -> Iterator[PostfixFactory]:
    """Start private Postfix instances relaying to ``smtp_sink``; all stopped at teardown."""
    require_binary("postfix")
    require_binary("postconf")
    started: list[PostfixInstance] = []

    def make(files: Mapping[str, str] | None = None, /, **main_cf: str) -> PostfixInstance:
        pf = PostfixInstance(smtp_sink.port, main_cf, files=files)
        started.append(pf)
        pf.start()
        return pf

    try:
        yield make
    finally:
        rep = getattr(request.node, "_pfm_rep_call", None)
        for pf in started:
            if rep is None or rep.failed:
                print(f"--- maillog of {pf.dir} ---\n{pf.log_text()[-6000:]}")
            pf.cleanup()
