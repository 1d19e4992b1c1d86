"""pfm-policyd's Prometheus metrics, bound to one registry (a fresh one per test)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class PolicyMetrics:
    """Every metric pfm-policyd exports, with label children cached for the hot path."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "pfm_policyd_requests",
            "Policy requests answered, by SMTP protocol state and answer verb.",
            ["protocol_state", "action"],
            registry=registry,
        )
        self.breaches = Counter(
            "pfm_policyd_limit_breaches",
            "Requests over a limit, by limit and mode (enforce or shadow).",
            ["limit", "mode"],
            registry=registry,
        )
        self.latency = Histogram(
            "pfm_policyd_decision_seconds",
            "Time from a complete request to its answer.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
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
        self._req: dict[tuple[str, str], Callable[[], None]] = {}
        self._breach: dict[tuple[str, str], Callable[[], None]] = {}
        self.observe_latency = self.latency.observe

    def request(self, state: str, verb: str) -> None:
        """Count one answered request (children cached)."""
        key = (state, verb)
        inc = self._req.get(key)
        if inc is None:
            if len(self._req) > 200:  # bounded label space: unknown states fold into "other"
                key = ("OTHER" if state not in _STATES else state, verb)
            child: Any = self.requests.labels(protocol_state=key[0] or "NONE", action=key[1])
            inc = child.inc
            self._req[(state, verb)] = inc
        inc()

    def breach(self, limit: str, shadow: bool) -> None:
        """Count one breached limit."""
        key = (limit, "shadow" if shadow else "enforce")
        inc = self._breach.get(key)
        if inc is None:
            inc = self.breaches.labels(limit=key[0], mode=key[1]).inc
            self._breach[key] = inc
        inc()


_STATES = frozenset(
    {"CONNECT", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "END-OF-MESSAGE", "VRFY", "ETRN", "BDAT"}
)
