"""pfm-policyd's Prometheus metrics, bound to one registry (a fresh one per test).

The per-request metrics (requests, breaches, decision latency) are plain counters in
this process, turned into metric families at scrape time by a custom collector: the
request path then pays an integer increment instead of prometheus_client's locked
updates. Everything else uses prometheus_client objects directly.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
_STATES = frozenset(
    {
        "CONNECT",
        "EHLO",
        "HELO",
        "MAIL",
        "RCPT",
        "DATA",
        "END-OF-MESSAGE",
        "VRFY",
        "ETRN",
        "BDAT",
        "NONE",
    }
)


class _HotPath(Collector):
    """Scrape-time view of the counters the request path bumps."""

    def __init__(self, metrics: PolicyMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        req = CounterMetricFamily(
            "pfm_policyd_requests",
            "Policy requests answered, by SMTP protocol state and answer verb.",
            labels=["protocol_state", "action"],
        )
        for (state, verb), n in sorted(m.request_counts.items()):
            req.add_metric([state, verb], n)
        yield req
        br = CounterMetricFamily(
            "pfm_policyd_limit_breaches",
            "Requests over a limit, by limit and mode (enforce or shadow).",
            labels=["limit", "mode"],
        )
        for (limit, shadow), n in sorted(m.breach_counts.items()):
            br.add_metric([limit, "shadow" if shadow else "enforce"], n)
        yield br
        buckets = []
        acc = 0
        for bound, n in zip(LATENCY_BUCKETS, m.latency_buckets, strict=False):
            acc += n
            buckets.append((repr(bound), acc))
        buckets.append(("+Inf", acc + m.latency_buckets[-1]))
        yield HistogramMetricFamily(
            "pfm_policyd_decision_seconds",
            "Time from a complete request to its answer.",
            buckets=buckets,
            sum_value=m.latency_sum,
        )


class PolicyMetrics:
    """Every metric pfm-policyd exports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.request_counts: dict[tuple[str, str], int] = {}
        self.breach_counts: dict[tuple[str, bool], int] = {}
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        registry.register(_HotPath(self))
        self.store_errors = Counter(
            "pfm_policyd_store_errors",
            "State store operations that failed.",
            ["store"],
            registry=registry,
        )
        self.fallback_decisions = Counter(
            "pfm_policyd_fallback_decisions",
            "Decisions made on the local fallback store while the primary store was down.",
            registry=registry,
        )
        self.directory_errors = Counter(
            "pfm_policyd_directory_errors",
            "Failed reads of per-mailbox/per-domain limit overrides from the directory.",
            registry=registry,
        )
        self.store_up = Gauge(
            "pfm_policyd_store_up", "1 when the primary state store answers.", registry=registry
        )
        self.bad_requests = Counter(
            "pfm_policyd_bad_requests",
            "Malformed requests and protocol errors, by reason.",
            ["reason"],
            registry=registry,
        )
        self.connections = Gauge(
            "pfm_policyd_connections", "Open policy client connections.", registry=registry
        )
        self.rejected_connections = Counter(
            "pfm_policyd_rejected_connections",
            "Connections refused because max_connections was reached.",
            registry=registry,
        )
        self.idle_closed = Counter(
            "pfm_policyd_idle_closed",
            "Client connections closed after idle_timeout without a request.",
            registry=registry,
        )
        self.reloads = Counter(
            "pfm_policyd_reloads",
            "Configuration reloads, by result.",
            ["result"],
            registry=registry,
        )
        self.uncommitted = Counter(
            "pfm_policyd_uncommitted",
            "END-OF-MESSAGE charges taken back because cleanup rejected the message afterwards.",
            registry=registry,
        )
        self.limits = Gauge(
            "pfm_policyd_limits_configured",
            "Limits in the running configuration.",
            registry=registry,
        )
        self.store_up.set(1)

    def request(self, state: str, verb: str, seconds: float | None = None) -> None:
        """Count one answered request and, when given, its decision latency."""
        key = (state, verb)
        counts = self.request_counts
        n = counts.get(key)
        if n is None:
            if state not in _STATES:
                key = ("OTHER", verb)  # bounded label space whatever clients send
            counts[key] = counts.get(key, 0) + 1
        else:
            counts[key] = n + 1
        if seconds is not None:
            self.latency_buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self.latency_sum += seconds

    def breach(self, limit: str, shadow: bool) -> None:
        """Count one breached limit."""
        key = (limit, shadow)
        self.breach_counts[key] = self.breach_counts.get(key, 0) + 1
