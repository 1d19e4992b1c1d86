"""Scrape-time collector of the Postfix mail queue (``postqueue -j``).

At scrape time (in the metrics server's executor thread, never on the event loop) the
collector runs ``postqueue -j`` with a timeout, or reuses the result of a run younger than
``cache_seconds`` so back-to-back scrapes (several Prometheus servers, a dashboard refresh)
cost one run. Concurrent scrapes wait for the same run. The summary is pure
(:func:`summarize`): messages, bytes and recipients by queue, an age histogram, deferred
recipients by domain (top N, the rest ``other``) and by classified reason.

A failing ``postqueue`` (Postfix down, wrong config dir, timeout) never breaks the scrape:
``postfix_queue_scrape_success`` becomes 0, ``postfix_queue_scrape_errors_total{kind}``
counts it and the queue families are left out rather than shown stale.
"""

from __future__ import annotations

import re
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from metricsd.parsers.classify import classify_deferral
from services.logging import get_logger
from services.mailqueue import QUEUE_NAMES, ParseResult
from services.queue_ops import PostfixQueue, QueueOpsError

__all__ = [
    "AGE_BUCKETS",
    "QueueCollector",
    "QueueSummary",
    "postqueue_runner",
    "summarize",
]

log = get_logger("pfm.metricsd.queue")

# 5m, 15m, 1h, 4h, 12h, 1d, 2d, 5d
AGE_BUCKETS: tuple[float, ...] = (300, 900, 3600, 14400, 43200, 86400, 172800, 432000)
_QUEUES = frozenset(QUEUE_NAMES)
_DSN = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?![\d.])")
_MAX_MEMO = 10_000


@dataclass(slots=True)
class QueueSummary:
    """What one ``postqueue -j`` run says, aggregated; every label set is bounded."""

    messages: dict[str, int] = field(default_factory=lambda: dict.fromkeys(QUEUE_NAMES, 0))
    size_bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(QUEUE_NAMES, 0))
    recipients: dict[str, int] = field(default_factory=lambda: dict.fromkeys(QUEUE_NAMES, 0))
    age_counts: dict[str, list[int]] = field(
        default_factory=lambda: {q: [0] * (len(AGE_BUCKETS) + 1) for q in QUEUE_NAMES}
    )
    age_sum: dict[str, float] = field(default_factory=lambda: dict.fromkeys(QUEUE_NAMES, 0.0))
    oldest_age: dict[str, float] = field(default_factory=lambda: dict.fromkeys(QUEUE_NAMES, 0.0))
    deferred_domains: list[tuple[str, int]] = field(default_factory=list)
    deferred_reasons: dict[str, int] = field(default_factory=dict)
    bad_lines: int = 0


_reason_memo: dict[str, str] = {}


def deferral_reason(text: str) -> str:
    """Classify a ``delay_reason`` (the DSN, when the text carries one, helps)."""
    found = _reason_memo.get(text)
    if found is None:
        m = _DSN.search(text)
        found = classify_deferral(m.group(1) if m else "", text)
        if len(_reason_memo) >= _MAX_MEMO:
            _reason_memo.clear()
        _reason_memo[text] = found
    return found


def summarize(result: ParseResult, now: float, top_domains: int = 20) -> QueueSummary:
    """Aggregate parsed ``postqueue -j`` output at time ``now`` (epoch seconds)."""
    s = QueueSummary(bad_lines=result.bad_lines)
    messages, size_bytes, rcpts = s.messages, s.size_bytes, s.recipients
    age_counts, age_sum, oldest = s.age_counts, s.age_sum, s.oldest_age
    domains: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    buckets = AGE_BUCKETS
    for msg in result.messages:
        q = msg.queue_name
        if q not in _QUEUES:
            q = "other"
            if q not in messages:
                messages[q] = size_bytes[q] = rcpts[q] = 0
                age_counts[q] = [0] * (len(AGE_BUCKETS) + 1)
                age_sum[q] = oldest[q] = 0.0
        age = now - msg.arrival_time
        if age < 0:
            age = 0.0
        messages[q] += 1
        size_bytes[q] += msg.message_size
        rcpts[q] += len(msg.recipients)
        age_counts[q][bisect_left(buckets, age)] += 1
        age_sum[q] += age
        if age > oldest[q]:
            oldest[q] = age
        if q == "deferred":
            for r in msg.recipients:
                domains[r.domain or "none"] += 1
                reasons[deferral_reason(r.delay_reason)] += 1
    ranked = domains.most_common()
    top = ranked[:top_domains]
    rest = sum(n for _, n in ranked[top_domains:])
    if rest:
        merged = dict(top)
        merged["other"] = merged.get("other", 0) + rest
        top = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))
    s.deferred_domains = top
    s.deferred_reasons = dict(reasons)
    return s


def postqueue_runner(config_dir: str, timeout: float) -> Callable[[], ParseResult]:
    """A runner calling the real ``postqueue -c CONFIG_DIR -j`` with a timeout."""
    return PostfixQueue(config_dir, timeout=timeout).list


class QueueCollector(Collector):
    """The queue families, from a cached ``postqueue -j`` run."""

    def __init__(
        self,
        runner: Callable[[], ParseResult],
        *,
        cache_seconds: float = 5.0,
        top_domains: int = 20,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runner = runner
        self.cache_seconds = cache_seconds
        self.top_domains = top_domains
        self.clock = clock
        self.monotonic = monotonic
        self.runs = 0
        self.errors: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._cached: tuple[float, QueueSummary | None, float] | None = None

    def configure(
        self, runner: Callable[[], ParseResult], cache_seconds: float, top_domains: int
    ) -> None:
        """New settings (on reload); the cached result is dropped."""
        with self._lock:
            self.runner, self.cache_seconds, self.top_domains = runner, cache_seconds, top_domains
            self._cached = None

    def snapshot(self) -> tuple[QueueSummary | None, float]:
        """(summary or None when postqueue failed, seconds the run took), cached."""
        with self._lock:
            cached = self._cached
            if cached is not None and self.monotonic() - cached[0] < self.cache_seconds:
                return cached[1], cached[2]
            began = self.monotonic()
            summary: QueueSummary | None
            try:
                result = self.runner()
                summary = summarize(result, self.clock(), self.top_domains)
            except QueueOpsError as exc:
                self.errors[exc.kind] += 1
                log.warning("queue_scrape_failed", kind=exc.kind, error=str(exc))
                summary = None
            except Exception as exc:  # a scrape must survive whatever the runner does
                self.errors["failed"] += 1
                log.warning("queue_scrape_failed", kind="failed", error=repr(exc))
                summary = None
            self.runs += 1
            took = self.monotonic() - began
            self._cached = (self.monotonic(), summary, took)
            return summary, took

    def collect(self) -> Iterator[Metric]:
        summary, took = self.snapshot()
        yield GaugeMetricFamily(
            "postfix_queue_scrape_success",
            "1 when the last postqueue -j run succeeded.",
            value=0.0 if summary is None else 1.0,
        )
        yield GaugeMetricFamily(
            "postfix_queue_scrape_duration_seconds",
            "How long the last postqueue -j run and its summary took.",
            value=took,
        )
        errors = CounterMetricFamily(
            "postfix_queue_scrape_errors",
            "Failed postqueue -j runs by kind (missing, config, permission, timeout, failed).",
            labels=["kind"],
        )
        for kind in ("missing", "config", "permission", "timeout", "failed"):
            errors.add_metric([kind], self.errors.get(kind, 0))
        yield errors
        if summary is not None:
            yield from queue_families(summary)


def queue_families(s: QueueSummary) -> Iterator[Metric]:
    """The queue metric families of one summary."""
    queues = sorted(s.messages)
    msgs = GaugeMetricFamily(
        "postfix_queue_messages", "Messages in the queue, by queue.", labels=["queue"]
    )
    size = GaugeMetricFamily(
        "postfix_queue_size_bytes", "Sum of message sizes, by queue.", labels=["queue"]
    )
    rcpts = GaugeMetricFamily(
        "postfix_queue_recipients", "Recipients still to deliver, by queue.", labels=["queue"]
    )
    oldest = GaugeMetricFamily(
        "postfix_queue_oldest_message_age_seconds",
        "Age of the oldest message, by queue (0 when empty).",
        labels=["queue"],
    )
    age = HistogramMetricFamily(
        "postfix_queue_message_age_seconds",
        "Ages of the queued messages (a snapshot, not a running total), by queue.",
        labels=["queue"],
    )
    for q in queues:
        msgs.add_metric([q], s.messages[q])
        size.add_metric([q], s.size_bytes[q])
        rcpts.add_metric([q], s.recipients[q])
        oldest.add_metric([q], s.oldest_age[q])
        running = 0
        buckets = []
        for bound, n in zip((*AGE_BUCKETS, float("inf")), s.age_counts[q], strict=True):
            running += n
            buckets.append(
                ("+Inf" if bound == float("inf") else repr(float(bound)), float(running))
            )
        age.add_metric([q], buckets, s.age_sum[q])
    by_domain = GaugeMetricFamily(
        "postfix_queue_deferred_recipients",
        "Recipients in the deferred queue by domain (top N domains, the rest as other).",
        labels=["domain"],
    )
    for domain, n in s.deferred_domains:
        by_domain.add_metric([domain], n)
    by_reason = GaugeMetricFamily(
        "postfix_queue_deferred_recipients_by_reason",
        "Recipients in the deferred queue by classified delay reason.",
        labels=["reason"],
    )
    for reason, n in sorted(s.deferred_reasons.items()):
        by_reason.add_metric([reason], n)
    yield from (msgs, size, rcpts, oldest, age, by_domain, by_reason)
    yield GaugeMetricFamily(
        "postfix_queue_unparsed_lines",
        "postqueue -j output lines that were not queue message objects.",
        value=s.bad_lines,
    )
