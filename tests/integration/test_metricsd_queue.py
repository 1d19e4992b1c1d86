"""The queue collector and postfix_up against a private real Postfix with deferred/held mail."""

from __future__ import annotations

import smtplib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from metricsd.collect import PostfixUpCollector
from metricsd.queue import QueueCollector, postqueue_runner
from metricsd.server import MetricsService
from services.mailqueue import ParseResult
from tests.conftest import free_port, require_binary
from tests.e2e.postfix_instance import PostfixInstance
from tests.integration.metricsd_harness import Scrape, check_names, make_service, scrape

pytestmark = pytest.mark.integration

# Relay to a closed loopback port: deferred with "Connection refused"; hold@ is held at RCPT.
MAIN_CF = {
    "queue_run_delay": "1h",
    "minimal_backoff_time": "1h",
    "maximal_backoff_time": "2h",
    "smtpd_recipient_restrictions": (
        "reject_unauth_destination, "
        "check_recipient_access inline:{ {hold@example.org = HOLD quarantined by test} }"
    ),
}
MAIL = (
    ("alice@example.net", ("bob@example.org", "carol@example.org"), "one"),
    ("alice@example.net", ("dan@example.net",), "two"),
    ("", ("postmaster@example.org",), "bounce"),
    ("mallory@example.net", ("hold@example.org",), "held"),
)


def _settled(q: list[dict[str, Any]], want: int) -> bool:
    return len(q) == want and all(
        m["queue_name"] == "hold"
        or (m["queue_name"] == "deferred" and all("delay_reason" in r for r in m["recipients"]))
        for m in q
    )


@pytest.fixture(scope="module")
def queued() -> Iterator[PostfixInstance]:
    """A running private Postfix holding 3 deferred messages (4 recipients) and 1 held one."""
    require_binary("postfix")
    require_binary("postqueue")
    require_binary("postconf")
    pf = PostfixInstance(free_port(), MAIN_CF)  # nothing listens on the relay port
    try:
        pf.start()
        with smtplib.SMTP("127.0.0.1", pf.port, timeout=30) as s:
            for sender, rcpts, subject in MAIL:
                body = f"Subject: {subject}\r\nFrom: <{sender}>\r\n\r\nbody {subject}\r\n"
                assert s.sendmail(sender, list(rcpts), body) == {}
        deadline = time.monotonic() + 20
        while not _settled(pf.postqueue_json(), len(MAIL)):
            assert time.monotonic() < deadline, pf.postqueue_json()
            time.sleep(0.05)
        yield pf
    finally:
        pf.cleanup()


@pytest.fixture
async def service() -> AsyncIterator[list[MetricsService]]:
    """Services a test starts; stopped at teardown."""
    started: list[MetricsService] = []
    yield started
    for s in started:
        await s.stop(1.0)


async def _scrape_service(started: list[MetricsService], **metricsd: Any) -> Scrape:
    svc = make_service({"sources": [], "queue_scrape": True, **metricsd})
    await svc.start()
    started.append(svc)
    s = await scrape(svc.port)
    check_names(s.families)
    return s


def _collect(collector: Any) -> Scrape:
    registry = CollectorRegistry()
    registry.register(collector)
    return Scrape(generate_latest(registry).decode())


async def test_queue_by_queue_domain_reason(
    queued: PostfixInstance, service: list[MetricsService]
) -> None:
    """Messages, bytes and recipients by queue, deferred by domain and by reason, and
    postfix_up, scraped from the daemon's HTTP endpoint."""
    real = queued.postqueue_json()
    s = await _scrape_service(service, postfix_config_dir=str(queued.conf))
    assert s.get("postfix_queue_scrape_success") == 1
    assert s.get("postfix_up") == 1
    assert s.get("postfix_queue_messages", queue="deferred") == 3
    assert s.get("postfix_queue_messages", queue="hold") == 1
    assert s.get("postfix_queue_messages", queue="active") == 0
    for q in ("deferred", "hold"):
        want = sum(m["message_size"] for m in real if m["queue_name"] == q)
        assert s.get("postfix_queue_size_bytes", queue=q) == want > 0
    assert s.get("postfix_queue_recipients", queue="deferred") == 4
    assert s.get("postfix_queue_deferred_recipients", domain="example.org") == 3
    assert s.get("postfix_queue_deferred_recipients", domain="example.net") == 1
    assert s.get("postfix_queue_deferred_recipients_by_reason", reason="connection_refused") == 4
    # fresh mail: every message in the first age bucket (5 minutes)
    assert s.get("postfix_queue_message_age_seconds_bucket", queue="deferred", le="300.0") == 3
    assert s.get("postfix_queue_message_age_seconds_count", queue="deferred") == 3
    assert 0 <= (s.get("postfix_queue_oldest_message_age_seconds", queue="deferred") or 0) < 300


def test_age_histogram_and_top_domains(queued: PostfixInstance) -> None:
    """Two hours later the real queue falls in the 4h bucket; top_domains=1 folds the rest
    into other."""
    collector = QueueCollector(
        postqueue_runner(str(queued.conf), 30.0),
        cache_seconds=0,
        top_domains=1,
        clock=lambda: time.time() + 7200,
    )
    s = _collect(collector)
    bucket = "postfix_queue_message_age_seconds_bucket"
    assert s.get(bucket, queue="deferred", le="3600.0") == 0
    assert s.get(bucket, queue="deferred", le="14400.0") == 3
    assert s.get(bucket, queue="hold", le="14400.0") == 1
    assert s.get(bucket, queue="deferred", le="+Inf") == 3
    assert (s.get("postfix_queue_message_age_seconds_sum", queue="deferred") or 0) >= 3 * 7200
    assert s.get("postfix_queue_deferred_recipients", domain="example.org") == 3
    assert s.get("postfix_queue_deferred_recipients", domain="other") == 1
    assert s.get("postfix_queue_deferred_recipients", domain="example.net") is None


def test_cache_runs_postqueue_once_for_back_to_back_scrapes(queued: PostfixInstance) -> None:
    """Scrapes within queue_cache reuse one postqueue run; after it expires postqueue runs again."""
    real = postqueue_runner(str(queued.conf), 30.0)
    runs = []

    def counting() -> ParseResult:
        runs.append(1)
        return real()

    now = [1000.0]
    collector = QueueCollector(counting, cache_seconds=5, monotonic=lambda: now[0])
    for _ in range(3):
        assert _collect(collector).get("postfix_queue_messages", queue="deferred") == 3
    assert len(runs) == 1
    now[0] += 6
    _collect(collector)
    assert len(runs) == 2


async def test_postqueue_failure_keeps_scrape_working(
    tmp_path: Any, service: list[MetricsService]
) -> None:
    """postqueue failing (no main.cf in the config dir) gives scrape_success 0, an error by kind
    and no stale queue series; the scrape itself answers 200."""
    s = await _scrape_service(service, postfix_config_dir=str(tmp_path / "nowhere"))
    assert s.get("postfix_queue_scrape_success") == 0
    assert s.get("postfix_queue_scrape_errors_total", kind="config") == 1
    assert not s.has("postfix_queue_messages")
    assert s.get("postfix_up") == 0
    assert "# TYPE postfix_smtpd_connects_total counter" in s.text  # log families still there


async def test_postqueue_timeout_counts_as_failure(queued: PostfixInstance) -> None:
    """A postqueue slower than queue_timeout is killed and reported as kind timeout."""
    collector = QueueCollector(postqueue_runner(str(queued.conf), 1e-6), cache_seconds=0)
    s = _collect(collector)
    assert s.get("postfix_queue_scrape_success") == 0
    assert s.get("postfix_queue_scrape_errors_total", kind="timeout") == 1


def test_postfix_up_follows_the_master_process() -> None:
    """postfix_up is 1 while the instance's master runs and 0 once it is stopped."""
    require_binary("postfix")
    require_binary("postconf")
    pf = PostfixInstance(free_port())
    try:
        pf.start()
        up = PostfixUpCollector(str(pf.conf))
        assert up.queue_directory() == str(pf.spool)
        assert _collect(up).get("postfix_up") == 1
        pf.stop()
        assert _collect(up).get("postfix_up") == 0
    finally:
        pf.cleanup()
