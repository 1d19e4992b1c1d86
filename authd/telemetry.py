"""pfm-authd's Prometheus metrics, bound to one registry (a fresh one per test).

Label values are bounded: services outside Dovecot's usual names count as ``other``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
SERVICES = frozenset(
    {"imap", "pop3", "smtp", "submission", "sieve", "managesieve", "lmtp", "doveadm", "-"}
)
MECHANISMS = frozenset({"password", "password_totp", "totp_grace", "app_password", "none"})


class AuthMetrics:
    """Every metric pfm-authd exports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.logins = Counter(
            "pfm_authd_logins",
            "Login attempts answered, by service, mechanism and result "
            "(ok, fail, nouser, tempfail).",
            ["service", "mechanism", "result"],
            registry=registry,
        )
        self.duration = Histogram(
            "pfm_authd_login_duration_seconds",
            "Time from a complete AUTH request to its answer (tarpit delays included).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.directory_errors = Counter(
            "pfm_authd_directory_errors",
            "Requests answered TEMPFAIL because the directory (SQLite, LDAP) failed.",
            registry=registry,
        )
        self.state_errors = Counter(
            "pfm_authd_state_errors",
            "State store (memory/Redis) operations that failed; the guard then fails open.",
            registry=registry,
        )
        self.guard_blocks = Counter(
            "pfm_authd_guard_blocks",
            "Logins refused or subjects blocked by the brute-force guard, by reason.",
            ["reason"],
            registry=registry,
        )
        self.cache_hits = Counter(
            "pfm_authd_cache_hits",
            "Password checks answered from the verify cache (no hash, no bind).",
            registry=registry,
        )
        self.connections = Gauge(
            "pfm_authd_connections", "Open client connections.", registry=registry
        )
        self.rejected_connections = Counter(
            "pfm_authd_rejected_connections",
            "Connections refused because max_connections was reached.",
            registry=registry,
        )
        self.bad_requests = Counter(
            "pfm_authd_bad_requests",
            "Malformed frames or requests (answered ERROR, connection closed).",
            registry=registry,
        )

    def login(self, service: str, mechanism: str, result: str, seconds: float) -> None:
        """Count one answered AUTH request and its latency."""
        svc = service if service in SERVICES else "other"
        mech = mechanism if mechanism in MECHANISMS else "none"
        self.logins.labels(service=svc, mechanism=mech, result=result).inc()
        self.duration.observe(seconds)
