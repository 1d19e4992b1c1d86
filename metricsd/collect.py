"""Scrape-time Prometheus collectors over pfm-metricsd's plain counters.

The log pipeline bumps plain ints in :class:`~metricsd.counters.PostfixCounters` and
:class:`~metricsd.dovecot_counters.DovecotCounters` on the event loop; at scrape time (in
the metrics server's executor thread) :class:`LogCollector` takes the pipeline's lock, copies
the series into metric families and lets go. :class:`PostfixUpCollector` says whether the
Postfix instance really runs (its master's pid file and a live ``master`` process).

Names follow the Prometheus rules: ``postfix_*`` and ``dovecot_*`` for what the logs say,
``pfm_metricsd_*`` for the exporter's own health; counters end in ``_total``, units are in
the names, every label set is bounded.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from metricsd.counters import METRICS, PostfixCounters
from metricsd.dovecot_counters import DovecotCounters
from services.logging import get_logger
from services.queue_ops import find_tool

__all__ = [
    "DOVECOT_METRICS",
    "HEALTH_METRICS",
    "LogCollector",
    "LogState",
    "PipelineStats",
    "PostfixUpCollector",
    "SourceStats",
    "dovecot_families",
    "health_families",
    "postfix_families",
]

log = get_logger("pfm.metricsd")


# --------------------------------------------------------------------------- state protocol


@dataclass(slots=True)
class PipelineStats:
    """The pipeline's own plain counters (bumped on the loop, read at scrape time)."""

    postfix_lines: int = 0
    dovecot_lines: int = 0
    other_lines: int = 0
    batches: int = 0
    parse_seconds: float = 0.0
    pending: int = 0
    backpressure_waits: int = 0
    reloads_ok: int = 0
    reloads_failed: int = 0


@dataclass(frozen=True, slots=True)
class SourceStats:
    """One source's counters as read at scrape time."""

    name: str
    type: str
    up: bool
    lines: int
    drops: int
    errors: int
    restarts: int
    rotations: int = 0
    truncations: int = 0


class LogState(Protocol):
    """What :class:`LogCollector` reads: counters behind a lock, and health numbers."""

    @property
    def lock(self) -> threading.Lock:
        """Held while counters change and while a scrape copies them."""
        ...

    @property
    def postfix(self) -> PostfixCounters:
        """The Postfix log counters."""
        ...

    @property
    def dovecot(self) -> DovecotCounters | None:
        """The Dovecot log counters (None when disabled)."""
        ...

    @property
    def stats(self) -> PipelineStats:
        """The pipeline's own counters."""
        ...

    def source_stats(self) -> Sequence[SourceStats]:
        """Counters of every configured source."""
        ...


# --------------------------------------------------------------------------- postfix


def postfix_families(counters: PostfixCounters) -> list[Metric]:
    """Every Postfix log metric as a family, empty ones included (call under the lock)."""
    fams: dict[str, Metric] = {}
    by_sample: dict[str, Metric] = {}
    for spec in METRICS:
        if spec.type == "counter":
            base = spec.name.removesuffix("_total")
            fam = Metric(base, spec.help, "counter")
            by_sample[spec.name] = fam
        else:
            fam = Metric(spec.name, spec.help, "histogram")
            for suffix in ("_bucket", "_sum", "_count"):
                by_sample[spec.name + suffix] = fam
        fams[spec.name] = fam
    for name, labels, value in counters.samples():
        target = by_sample.get(name)
        if target is not None:
            target.add_sample(name, labels, float(value))
    return list(fams.values())


# --------------------------------------------------------------------------- dovecot


@dataclass(frozen=True, slots=True)
class _Spec:
    name: str
    help: str
    labels: tuple[str, ...]


DOVECOT_METRICS: tuple[_Spec, ...] = (
    _Spec("dovecot_log_lines_total", "Dovecot log lines read.", ()),
    _Spec("dovecot_log_events_total", "Dovecot log lines by line family.", ("family",)),
    _Spec(
        "dovecot_logins_total",
        "Successful logins by service, mechanism and TLS (TLS, plain, secured).",
        ("service", "mechanism", "tls"),
    ),
    _Spec(
        "dovecot_login_ends_total",
        "Login-process sessions ended without a login, by ending (disconnected, aborted) "
        "and reason.",
        ("service", "ending", "reason", "mechanism", "tls"),
    ),
    _Spec(
        "dovecot_login_failures_total",
        "Refused logins (auth failed, internal failure, user disabled ...) by service.",
        ("service", "reason"),
    ),
    _Spec(
        "dovecot_passdb_results_total",
        "passdb lookups that failed, by passdb and result (password_mismatch, unknown_user ...).",
        ("passdb", "result"),
    ),
    _Spec(
        "dovecot_session_ends_total",
        "Mail sessions ended (logged_out, connection_closed ...), by service.",
        ("service", "reason"),
    ),
    _Spec(
        "dovecot_session_in_bytes_total",
        "Bytes received from clients, summed from session-end lines.",
        ("service",),
    ),
    _Spec(
        "dovecot_session_out_bytes_total",
        "Bytes sent to clients, summed from session-end lines.",
        ("service",),
    ),
    _Spec(
        "dovecot_log_messages_total",
        "Warning, error, fatal and panic lines by process.",
        ("process", "level"),
    ),
    _Spec("dovecot_deliveries_total", "LDA/LMTP deliveries by result.", ("service", "result")),
    _Spec(
        "dovecot_unsupported_lines_total",
        "Dovecot log lines no parser understood, by process.",
        ("program",),
    ),
)


def _counter(spec: _Spec, series: Iterable[tuple[tuple[str, ...], float]]) -> Metric:
    fam = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
    for labels, value in sorted(series):
        fam.add_metric(list(labels), float(value))
    return fam


def _one(key: str | tuple[str, ...]) -> tuple[str, ...]:
    return (key,) if isinstance(key, str) else key


def dovecot_families(c: DovecotCounters) -> list[Metric]:
    """Every Dovecot log metric as a family (call under the lock)."""
    sources: dict[str, Iterable[tuple[tuple[str, ...], float]]] = {
        "dovecot_log_lines_total": [((), c.lines)],
        "dovecot_log_events_total": ((_one(k), v) for k, v in c.families.items()),
        "dovecot_logins_total": c.logins.items(),
        "dovecot_login_ends_total": c.login_ends.items(),
        "dovecot_login_failures_total": c.login_failures().items(),
        "dovecot_passdb_results_total": c.passdb.items(),
        "dovecot_session_ends_total": c.session_ends.items(),
        "dovecot_session_in_bytes_total": ((_one(k), v) for k, v in c.session_bytes_in.items()),
        "dovecot_session_out_bytes_total": ((_one(k), v) for k, v in c.session_bytes_out.items()),
        "dovecot_log_messages_total": c.messages.items(),
        "dovecot_deliveries_total": c.deliveries.items(),
        "dovecot_unsupported_lines_total": ((_one(k), v) for k, v in c.unsupported.items()),
    }
    return [_counter(spec, sources[spec.name]) for spec in DOVECOT_METRICS]


# --------------------------------------------------------------------------- health

HEALTH_METRICS: tuple[str, ...] = (
    "pfm_metricsd_source_up",
    "pfm_metricsd_source_lines_total",
    "pfm_metricsd_source_drops_total",
    "pfm_metricsd_source_errors_total",
    "pfm_metricsd_source_restarts_total",
    "pfm_metricsd_source_rotations_total",
    "pfm_metricsd_lines_total",
    "pfm_metricsd_unsupported_lines_total",
    "pfm_metricsd_parse_seconds_total",
    "pfm_metricsd_batches_total",
    "pfm_metricsd_pending_lines",
    "pfm_metricsd_backpressure_waits_total",
    "pfm_metricsd_reloads_total",
)


def health_families(
    stats: PipelineStats,
    sources: Sequence[SourceStats],
    unsupported: Iterable[tuple[str, float]] = (),
) -> list[Metric]:
    """The exporter's own health: per-source reads, drops, errors; parse time; backlog."""
    up = GaugeMetricFamily(
        "pfm_metricsd_source_up", "1 while a log source is being read.", labels=["source", "type"]
    )
    lines = CounterMetricFamily(
        "pfm_metricsd_source_lines",
        "Lines read from each source.",
        labels=["source", "type"],
    )
    drops = CounterMetricFamily(
        "pfm_metricsd_source_drops",
        "Lines lost by a source: its buffer was full (syslog) or the line was over-long.",
        labels=["source", "type"],
    )
    errors = CounterMetricFamily(
        "pfm_metricsd_source_errors",
        "Source errors: garbage datagrams, read failures, journalctl restarts.",
        labels=["source", "type"],
    )
    restarts = CounterMetricFamily(
        "pfm_metricsd_source_restarts",
        "Sources restarted after they failed.",
        labels=["source", "type"],
    )
    rotations = CounterMetricFamily(
        "pfm_metricsd_source_rotations",
        "Log file rotations followed, by kind (rename: rename+create, truncate: copytruncate).",
        labels=["source", "kind"],
    )
    for s in sources:
        key = [s.name, s.type]
        up.add_metric(key, 1.0 if s.up else 0.0)
        lines.add_metric(key, s.lines)
        drops.add_metric(key, s.drops)
        errors.add_metric(key, s.errors)
        restarts.add_metric(key, s.restarts)
        if s.type == "file":
            rotations.add_metric([s.name, "rename"], s.rotations)
            rotations.add_metric([s.name, "truncate"], s.truncations)
    routed = CounterMetricFamily(
        "pfm_metricsd_lines",
        "Lines processed, by what they were: postfix, dovecot, or other (not counted).",
        labels=["kind"],
    )
    routed.add_metric(["postfix"], stats.postfix_lines)
    routed.add_metric(["dovecot"], stats.dovecot_lines)
    routed.add_metric(["other"], stats.other_lines)
    unsup = CounterMetricFamily(
        "pfm_metricsd_unsupported_lines",
        "Postfix and Dovecot lines no parser understood, by program "
        "(Postfix syslog tag, or dovecot/PROCESS).",
        labels=["program"],
    )
    for program, n in sorted(unsupported):
        unsup.add_metric([program], n)
    reloads = CounterMetricFamily(
        "pfm_metricsd_reloads", "Configuration reloads (SIGHUP), by result.", labels=["result"]
    )
    reloads.add_metric(["ok"], stats.reloads_ok)
    reloads.add_metric(["error"], stats.reloads_failed)
    return [
        up,
        lines,
        drops,
        errors,
        restarts,
        rotations,
        routed,
        unsup,
        CounterMetricFamily(
            "pfm_metricsd_parse_seconds",
            "Wall time spent parsing and counting lines.",
            value=stats.parse_seconds,
        ),
        CounterMetricFamily("pfm_metricsd_batches", "Line batches parsed.", value=stats.batches),
        GaugeMetricFamily(
            "pfm_metricsd_pending_lines",
            "Lines read but not yet parsed (bounded by max_pending_lines).",
            value=stats.pending,
        ),
        CounterMetricFamily(
            "pfm_metricsd_backpressure_waits",
            "Times a source waited because max_pending_lines lines were pending.",
            value=stats.backpressure_waits,
        ),
        reloads,
    ]


class LogCollector(Collector):
    """Postfix, Dovecot and exporter-health families, built at scrape time."""

    def __init__(self, state: LogState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        st = self.state
        with st.lock:
            fams = postfix_families(st.postfix)
            unsupported = {
                key[0]: float(n)
                for key, n in st.postfix.values["postfix_unsupported_lines_total"].items()
            }
            if st.dovecot is not None:
                fams += dovecot_families(st.dovecot)
                for proc, n in st.dovecot.unsupported.items():
                    unsupported[f"dovecot/{proc}"] = n
            stats = dataclasses.replace(st.stats)
        yield from fams
        yield from health_families(stats, st.source_stats(), unsupported.items())


# --------------------------------------------------------------------------- postfix_up


def _process_name(pid: int, proc: str) -> str | None:
    """``/proc/PID/comm`` of a live (non-zombie) process, None when there is none."""
    try:
        with open(f"{proc}/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    head, _, tail = stat.rpartition(")")
    if not tail.split() or tail.split()[0] in ("Z", "X"):
        return None
    return head.partition("(")[2]


def master_running(queue_directory: str, proc: str = "/proc") -> bool:
    """True when ``QUEUE_DIRECTORY/pid/master.pid`` names a live Postfix ``master``."""
    try:
        with open(os.path.join(queue_directory, "pid", "master.pid"), encoding="ascii") as f:
            pid = int(f.read().split()[0])
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return False
    return pid > 0 and _process_name(pid, proc) == "master"


def postconf_queue_directory(config_dir: str, timeout: float = 5.0) -> str:
    """``postconf -c DIR -h queue_directory``; OSError with Postfix's reason on failure."""
    exe = find_tool("postconf")
    if exe is None:
        raise OSError("postconf not found: is Postfix installed?")
    if not os.path.isfile(os.path.join(config_dir, "main.cf")):
        # checked here: Postfix tools sleep 1 s before exiting on a fatal error
        raise OSError(f"no Postfix configuration in {config_dir} (main.cf not found)")
    try:
        proc = subprocess.run(
            [exe, "-c", config_dir, "-h", "queue_directory"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise OSError(f"postconf did not answer within {timeout:g} s") from None
    out = proc.stdout.decode("utf-8", "replace").strip()
    if proc.returncode != 0 or not out:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise OSError(f"postconf -c {config_dir} failed: {msg[-1] if msg else 'no output'}")
    return out


class PostfixUpCollector(Collector):
    """``postfix_up``: 1 when the configured instance's master process runs.

    The queue directory comes from ``postconf`` once (again after :meth:`reset` or, after a
    failure, at most every ``retry`` seconds); each scrape then only reads the pid file and
    ``/proc``.
    """

    def __init__(
        self,
        config_dir: str,
        *,
        retry: float = 30.0,
        resolve: Callable[[str], str] = postconf_queue_directory,
        proc: str = "/proc",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config_dir = config_dir
        self.retry = retry
        self.resolve = resolve
        self.proc = proc
        self.clock = clock
        self._lock = threading.Lock()
        self._queue_dir: str | None = None
        self._failed_at: float | None = None

    def reset(self, config_dir: str) -> None:
        """Use another config dir (on reload); the queue directory is looked up again."""
        with self._lock:
            self.config_dir = config_dir
            self._queue_dir = None
            self._failed_at = None

    def queue_directory(self) -> str | None:
        """The instance's queue directory, None while it cannot be found out."""
        with self._lock:
            if self._queue_dir is not None:
                return self._queue_dir
            if self._failed_at is not None and self.clock() - self._failed_at < self.retry:
                return None
            try:
                self._queue_dir = self.resolve(self.config_dir)
                self._failed_at = None
            except OSError as exc:
                self._failed_at = self.clock()
                log.warning("postfix_queue_directory_unknown", error=str(exc))
            return self._queue_dir

    def collect(self) -> Iterator[Metric]:
        qdir = self.queue_directory()
        up = qdir is not None and master_running(qdir, self.proc)
        yield GaugeMetricFamily(
            "postfix_up",
            "1 when Postfix's master process runs (pid file under queue_directory names a "
            "live 'master').",
            value=1.0 if up else 0.0,
        )
