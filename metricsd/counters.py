"""Aggregate Postfix log events into Prometheus-shaped counters (pure, no prometheus_client).

``PostfixCounters.feed_line`` takes raw syslog lines; ``feed`` takes an already split
program/message; ``count`` takes a ``PostfixEvent``. Values live in plain dicts keyed by
label-value tuples (``values[name][labels]``) and are read with ``value``/``total`` or
walked with ``samples`` (call ``flush`` before reading ``values`` directly); the Prometheus layer turns ``METRICS`` + ``samples`` into
metric families.

Every label is bounded: services and programs come from the Postfix configuration,
stages/commands/reasons from fixed sets, SASL usernames and recipient domains are kept
for the first N distinct values (then ``other``), and usernames only when enabled.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from metricsd.parsers.postfix import (
    PostfixEvent,
    is_postfix_program,
    parse_commands,
    parse_postfix,
)
from metricsd.parsers.syslog import program_and_message

__all__ = [
    "DELAY_BUCKETS",
    "DELAY_STAGES",
    "METRICS",
    "MetricSpec",
    "PostfixCounters",
]

Labels = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """Name, type, help and label names of one exported metric."""

    name: str
    type: str  # "counter" or "histogram"
    help: str
    labels: tuple[str, ...]


def _c(name: str, help_: str, *labels: str) -> MetricSpec:
    return MetricSpec(name, "counter", help_, labels)


METRICS: tuple[MetricSpec, ...] = (
    _c("postfix_log_lines_total", "Postfix log lines read, by syslog program tag.", "program"),
    _c(
        "postfix_unsupported_lines_total",
        "Postfix log lines no parser understood, by program tag.",
        "program",
    ),
    _c(
        "postfix_log_events_total",
        "Understood Postfix log lines by line family.",
        "service",
        "family",
    ),
    _c("postfix_smtpd_connects_total", "SMTP client connections.", "service"),
    _c("postfix_smtpd_disconnects_total", "SMTP client disconnections.", "service"),
    _c(
        "postfix_smtpd_commands_total",
        "SMTP commands per session, summed from disconnect lines.",
        "service",
        "command",
    ),
    _c(
        "postfix_smtpd_command_failures_total",
        "Failed SMTP commands, summed from disconnect lines.",
        "service",
        "command",
    ),
    _c(
        "postfix_smtpd_lost_connections_total",
        "Lost connections by SMTP stage.",
        "service",
        "stage",
    ),
    _c("postfix_smtpd_timeouts_total", "Timeouts by SMTP stage.", "service", "stage"),
    _c(
        "postfix_smtpd_too_many_errors_total",
        "Sessions ended for too many errors, by stage.",
        "service",
        "stage",
    ),
    _c(
        "postfix_smtpd_pipelining_violations_total",
        "Improper command pipelining, by stage.",
        "service",
        "stage",
    ),
    _c(
        "postfix_tls_connections_total",
        "TLS sessions established, inbound (smtpd) and outbound (smtp/lmtp).",
        "service",
        "direction",
        "trust",
        "protocol",
    ),
    _c(
        "postfix_smtpd_sasl_auth_failures_total",
        "SASL authentication failures by mechanism.",
        "service",
        "method",
    ),
    _c(
        "postfix_smtpd_messages_received_total",
        "Messages started by an SMTP client (client= lines), by SASL method ('' = none).",
        "service",
        "sasl_method",
    ),
    _c(
        "postfix_smtpd_messages_received_by_user_total",
        "Messages started by an SMTP client by SASL username (only when enabled; bounded).",
        "service",
        "sasl_username",
    ),
    _c(
        "postfix_smtpd_rejects_total",
        "smtpd rejects by stage, reply code and classified reason; form is noqueue "
        "(NOQUEUE: reject) or queued (QID: reject).",
        "service",
        "stage",
        "code",
        "reason",
        "form",
    ),
    _c(
        "postfix_smtpd_reject_warnings_total",
        "smtpd reject_warning lines (warn_if_reject), by stage and reason.",
        "service",
        "stage",
        "reason",
    ),
    _c(
        "postfix_smtpd_actions_total",
        "smtpd hold/discard/filter/redirect actions.",
        "service",
        "action",
    ),
    _c(
        "postfix_smtpd_size_limit_exceeded_total",
        "Messages refused for exceeding message_size_limit.",
        "service",
    ),
    _c(
        "postfix_cleanup_messages_total",
        "Messages processed by cleanup (message-id lines).",
        "service",
    ),
    _c(
        "postfix_cleanup_actions_total",
        "cleanup header/body/milter actions (reject, hold, discard …) by classified reason.",
        "service",
        "action",
        "reason",
    ),
    _c("postfix_qmgr_inserts_total", "Messages inserted into the active queue.", "service"),
    _c("postfix_qmgr_inserted_bytes_total", "Sum of sizes of active-queue inserts.", "service"),
    _c(
        "postfix_qmgr_inserted_recipients_total",
        "Sum of recipient counts of active-queue inserts.",
        "service",
    ),
    _c("postfix_qmgr_removed_total", "Messages removed from the queue.", "service"),
    _c("postfix_qmgr_expired_total", "Messages returned as expired.", "service", "status"),
    _c(
        "postfix_messages_queued_total",
        "New messages reaching the active queue for the first time, by origin "
        "(smtpd service, pickup, or other: notifications, forwards).",
        "source",
    ),
    _c("postfix_deliveries_total", "Recipient delivery attempts by status.", "service", "status"),
    _c(
        "postfix_delivery_problems_total",
        "Deferred/bounced/expired recipients by classified reason.",
        "service",
        "status",
        "reason",
    ),
    _c(
        "postfix_deferred_recipients_by_domain_total",
        "Deferred recipients by domain (first N domains, the rest as other).",
        "domain",
    ),
    _c(
        "postfix_smtp_connect_failures_total",
        "Outbound connection failures (refused, timed_out, unreachable, other).",
        "service",
        "reason",
    ),
    _c("postfix_notifications_total", "Bounce/delay notifications sent.", "service", "kind"),
    _c("postfix_pickup_messages_total", "Messages picked up from the maildrop.", "service"),
    _c("postfix_postsuper_actions_total", "postsuper per-message actions.", "action"),
    _c(
        "postfix_lifecycle_events_total",
        "master/postfix-script start, stop, reload.",
        "service",
        "event",
    ),
    _c(
        "postfix_log_messages_total",
        "warning/error/fatal/panic lines not counted by a more specific metric.",
        "service",
        "severity",
    ),
    MetricSpec(
        "postfix_delivery_delay_seconds",
        "histogram",
        "Per-recipient delay by stage (delays=a/b/c/d).",
        ("service", "stage"),
    ),
)

DELAY_STAGES = ("before_queue_manager", "queue_manager", "connection_setup", "transmission")
DELAY_BUCKETS: tuple[float, ...] = (
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
    3600.0,
    21600.0,
    86400.0,
)

_STAGES = frozenset(
    {
        "CONNECT",
        "HELO",
        "EHLO",
        "STARTTLS",
        "AUTH",
        "MAIL",
        "RCPT",
        "DATA",
        "BDAT",
        "END-OF-MESSAGE",
        "RSET",
        "NOOP",
        "VRFY",
        "ETRN",
        "QUIT",
        "UNKNOWN",
        "XCLIENT",
        "XFORWARD",
    }
)
_SASL_METHODS = frozenset(
    {
        "PLAIN",
        "LOGIN",
        "CRAM-MD5",
        "DIGEST-MD5",
        "NTLM",
        "GSSAPI",
        "XOAUTH2",
        "OAUTHBEARER",
        "SCRAM-SHA-1",
        "SCRAM-SHA-256",
        "EXTERNAL",
        "ANONYMOUS",
    }
)
_POSTSUPER_ACTIONS = {
    "placed_on_hold": "hold",
    "released_from_hold": "release",
    "removed": "delete",
    "expired": "expire",
    "requeued": "requeue",
}
_CONNECT_REASONS = {
    "connect_refused": "refused",
    "connect_timed_out": "timed_out",
    "connect_unreachable": "unreachable",
    "connect_failed": "other",
}
_NOTIFICATION_KINDS = frozenset(
    {"sender_ndn", "sender_delay_notice", "sender_dsn", "postmaster_ndn", "postmaster_delay_notice"}
)
_LIFECYCLE = frozenset(
    {
        "daemon_started",
        "reload",
        "terminating",
        "starting",
        "status_running",
        "status_not_running",
        "stopping",
        "waiting_terminate",
        "refreshing",
    }
)
_SEVERITY_KINDS = frozenset({"warning", "error", "fatal", "panic"})
_FAMILY_SUB = frozenset({"noqueue_reject", "qid_reject"})


class _Bounded:
    """Keeps the first ``limit`` distinct values as themselves, maps the rest to ``other``."""

    __slots__ = ("limit", "seen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) < self.limit:
            self.seen.add(value)
            return value
        return "other"


def _stage(stage: str) -> str:
    return stage if stage in _STAGES else "other"


class PostfixCounters:
    """Monotonic counters over a stream of Postfix log lines."""

    def __init__(
        self,
        *,
        max_sasl_usernames: int = 0,
        max_domains: int = 20,
        max_tracked_queue_ids: int = 100_000,
    ) -> None:
        self.values: dict[str, defaultdict[Labels, float]] = {
            m.name: defaultdict(int) for m in METRICS if m.type == "counter"
        }
        # histogram: (service, stage) -> [bucket counts..., +Inf count]; sums per service
        self.delay_buckets: dict[Labels, list[int]] = {}
        self._users = _Bounded(max_sasl_usernames) if max_sasl_usernames > 0 else None
        self._domains = _Bounded(max_domains)
        self._max_qids = max_tracked_queue_ids
        self._origin: dict[str, str] = {}  # queue id -> origin, until its first active insert
        self._delay_hists: dict[
            str, tuple[list[int], list[int], list[int], list[int], list[float]]
        ] = {}
        self._delay_sums: dict[str, list[float]] = {}
        v = self.values
        self._lines = v["postfix_log_lines_total"]
        self._unsupported = v["postfix_unsupported_lines_total"]
        self._events = v["postfix_log_events_total"]
        self._disconnects = v["postfix_smtpd_disconnects_total"]
        self._connects = v["postfix_smtpd_connects_total"]
        self._received = v["postfix_smtpd_messages_received_total"]
        self._cleanup_messages = v["postfix_cleanup_messages_total"]
        self._inserts = v["postfix_qmgr_inserts_total"]
        self._inserted_bytes = v["postfix_qmgr_inserted_bytes_total"]
        self._inserted_rcpts = v["postfix_qmgr_inserted_recipients_total"]
        self._queued = v["postfix_messages_queued_total"]
        self._removed_total = v["postfix_qmgr_removed_total"]
        self._deliveries = v["postfix_deliveries_total"]
        self._pending_commands: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._dispatch: dict[str, Callable[[PostfixEvent], None]] = {
            "connect": self._connect,
            "disconnect": self._disconnect,
            "client": self._client,
            "client_sasl": self._client,
            "tls_established_in": self._tls,
            "tls_established_out": self._tls,
            "noqueue_reject": self._reject,
            "qid_reject": self._reject,
            "noqueue_reject_warning": self._reject_warning,
            "qid_reject_warning": self._reject_warning,
            "lost_connection": self._staged("postfix_smtpd_lost_connections_total"),
            "timeout": self._staged("postfix_smtpd_timeouts_total"),
            "too_many_errors": self._staged("postfix_smtpd_too_many_errors_total"),
            "pipelining": self._staged("postfix_smtpd_pipelining_violations_total"),
            "sasl_auth_failed": self._sasl_failed,
            "size_limit_exceeded": self._size_limit,
            "message_id": self._message_id,
            "active_insert": self._active_insert,
            "removed": self._removed,
            "expired": self._expired,
            "status": self._status,
            "uid_from": self._pickup,
            "placed_on_hold": self._postsuper,
            "released_from_hold": self._postsuper,
            "requeued": self._postsuper,
            "summary": _ignore,
        }
        for kind in ("reject", "milter-reject", "hold", "discard", "redirect", "filter", "replace"):
            self._dispatch[kind] = self._cleanup_action
        for action in ("filter", "hold", "discard", "redirect", "warn", "milter-reject"):
            self._dispatch["noqueue_" + action] = self._smtpd_action
            self._dispatch["qid_" + action] = self._smtpd_action
        for kind in _CONNECT_REASONS:
            self._dispatch[kind] = self._connect_failure
        for kind in _NOTIFICATION_KINDS:
            self._dispatch[kind] = self._notification
        for kind in _LIFECYCLE:
            self._dispatch[kind] = self._lifecycle
        for kind in _SEVERITY_KINDS:
            self._dispatch[kind] = self._severity

    # --- input ---------------------------------------------------------------------

    def feed_line(self, line: str) -> bool:
        """Count one raw syslog line; False when it is not a Postfix line at all."""
        parsed = program_and_message(line)
        if parsed is None:
            return False
        program, message = parsed
        if not (program.startswith("postfix") and "/" in program):
            return False
        self._lines[(program,)] += 1
        ev = parse_postfix(program, message)
        if ev is None:
            self._unsupported[(program,)] += 1
            return True
        # the body of count(), inlined: this is the per-line hot path
        kind = ev[0]
        if kind == "status":
            self._events[(ev[1], kind, ev[4])] += 1
        elif kind in _FAMILY_SUB:
            self._events[(ev[1], kind, ev[3])] += 1
        else:
            self._events[(ev[1], kind, "")] += 1
        handler = self._dispatch.get(kind)
        if handler is not None:
            handler(ev)
        return True

    def feed(self, program: str, message: str) -> bool:
        """Count one Postfix message; False for programs that are not Postfix's."""
        if not is_postfix_program(program):
            return False
        self._lines[(program,)] += 1
        ev = parse_postfix(program, message)
        if ev is None:
            self._unsupported[(program,)] += 1
        else:
            self.count(ev)
        return True

    def count(self, ev: PostfixEvent) -> None:
        """Add one understood event to the counters."""
        kind = ev[0]
        if kind == "status":
            self._events[(ev[1], kind, ev[4])] += 1
        elif kind in _FAMILY_SUB:
            self._events[(ev[1], kind, ev[3])] += 1
        else:
            self._events[(ev[1], kind, "")] += 1
        handler = self._dispatch.get(kind)
        if handler is not None:
            handler(ev)

    # --- handlers ------------------------------------------------------------------

    def _inc(self, name: str, labels: Labels, amount: float = 1) -> None:
        self.values[name][labels] += amount

    def _connect(self, ev: PostfixEvent) -> None:
        self._connects[(ev.service,)] += 1

    def _disconnect(self, ev: PostfixEvent) -> None:
        self._disconnects[(ev.service,)] += 1
        # per-command counts are folded in lazily: tails repeat, so count them as strings
        pending = self._pending_commands
        pending[(ev.service, ev.commands)] += 1
        if len(pending) > 4096:
            self.flush()

    def flush(self) -> None:
        """Fold the pending per-command disconnect tails into the command counters."""
        total = self.values["postfix_smtpd_commands_total"]
        failed = self.values["postfix_smtpd_command_failures_total"]
        for (service, tail), times in self._pending_commands.items():
            for name, ok, n in parse_commands(tail):
                total[(service, name)] += n * times
                if n > ok:
                    failed[(service, name)] += (n - ok) * times
        self._pending_commands.clear()

    def _client(self, ev: PostfixEvent) -> None:
        method = ev.sasl_method
        if method and method not in _SASL_METHODS:
            method = "other"
        self._received[(ev.service, method)] += 1
        if self._users is not None:
            user = self._users(ev.sasl_username) if ev.sasl_username else ""
            self._inc("postfix_smtpd_messages_received_by_user_total", (ev.service, user))
        self._remember_origin(ev.qid, ev.service)

    def _remember_origin(self, qid: str, origin: str) -> None:
        origins = self._origin
        if qid not in origins and len(origins) >= self._max_qids:
            del origins[next(iter(origins))]
        origins[qid] = origin

    def _tls(self, ev: PostfixEvent) -> None:
        direction = "in" if ev.kind == "tls_established_in" else "out"
        proto = ev.tls_protocol if ev.tls_protocol.startswith(("TLS", "SSL")) else "other"
        self._inc("postfix_tls_connections_total", (ev.service, direction, ev.reason, proto[:8]))

    def _reject(self, ev: PostfixEvent) -> None:
        form = "noqueue" if ev.kind == "noqueue_reject" else "queued"
        self._inc(
            "postfix_smtpd_rejects_total",
            (ev.service, _stage(ev.stage), ev.code, ev.reason, form),
        )

    def _reject_warning(self, ev: PostfixEvent) -> None:
        self._inc("postfix_smtpd_reject_warnings_total", (ev.service, _stage(ev.stage), ev.reason))

    def _smtpd_action(self, ev: PostfixEvent) -> None:
        self._inc("postfix_smtpd_actions_total", (ev.service, ev.kind.split("_", 1)[1]))

    def _staged(self, name: str) -> Callable[[PostfixEvent], None]:
        counter = self.values[name]

        def handle(ev: PostfixEvent) -> None:
            counter[(ev.service, _stage(ev.stage))] += 1

        return handle

    def _sasl_failed(self, ev: PostfixEvent) -> None:
        method = ev.sasl_method if ev.sasl_method in _SASL_METHODS else "other"
        self._inc("postfix_smtpd_sasl_auth_failures_total", (ev.service, method))

    def _size_limit(self, ev: PostfixEvent) -> None:
        self._inc("postfix_smtpd_size_limit_exceeded_total", (ev.service,))
        self._origin.pop(ev.qid, None)

    def _message_id(self, ev: PostfixEvent) -> None:
        self._cleanup_messages[(ev.service,)] += 1
        if ev.qid not in self._origin:
            self._remember_origin(ev.qid, "other")

    def _cleanup_action(self, ev: PostfixEvent) -> None:
        self._inc("postfix_cleanup_actions_total", (ev.service, ev.kind, ev.reason))
        if ev.kind in ("reject", "milter-reject", "discard"):
            self._origin.pop(ev.qid, None)

    def _active_insert(self, ev: PostfixEvent) -> None:
        key = (ev.service,)
        self._inserts[key] += 1
        self._inserted_bytes[key] += ev.size
        self._inserted_rcpts[key] += ev.nrcpt
        origin = self._origin.pop(ev.qid, None)
        if origin is not None:
            self._queued[(origin,)] += 1

    def _removed(self, ev: PostfixEvent) -> None:
        if ev.service.endswith("postsuper"):
            self._postsuper(ev)
            return
        self._removed_total[(ev.service,)] += 1
        self._origin.pop(ev.qid, None)

    def _expired(self, ev: PostfixEvent) -> None:
        if ev.service.endswith("postsuper"):
            self._postsuper(ev)
            return
        self._inc("postfix_qmgr_expired_total", (ev.service, ev.status))

    def _status(self, ev: PostfixEvent) -> None:
        service = ev.service
        status = ev.status
        self._deliveries[(service, status)] += 1
        if status != "sent":
            self._inc("postfix_delivery_problems_total", (service, status, ev.reason))
            if status == "deferred":
                domain = self._domains(ev.domain or "none")
                self._inc("postfix_deferred_recipients_by_domain_total", (domain,))
        delays = ev.delays
        if delays is not None:
            hist = self._delay_hists.get(service)
            if hist is None:
                hist = self._delay_hists[service] = self._new_delay_hist(service)
            c0, c1, c2, c3, sums = hist
            a, b, c, d = delays
            buckets = DELAY_BUCKETS
            c0[bisect_left(buckets, a)] += 1
            c1[bisect_left(buckets, b)] += 1
            c2[bisect_left(buckets, c)] += 1
            c3[bisect_left(buckets, d)] += 1
            sums[0] += a
            sums[1] += b
            sums[2] += c
            sums[3] += d

    def _new_delay_hist(
        self, service: str
    ) -> tuple[list[int], list[int], list[int], list[int], list[float]]:
        """Bucket lists for the four delay stages of a service, plus their running sums."""
        c0, c1, c2, c3 = (
            self.delay_buckets.setdefault((service, stage), [0] * (len(DELAY_BUCKETS) + 1))
            for stage in DELAY_STAGES
        )
        sums = self._delay_sums.setdefault(service, [0.0, 0.0, 0.0, 0.0])
        return c0, c1, c2, c3, sums

    def delay_sum(self, service: str, stage: str) -> float:
        """Sum of observed seconds for one service and delay stage."""
        sums = self._delay_sums.get(service)
        return sums[DELAY_STAGES.index(stage)] if sums else 0.0

    def _connect_failure(self, ev: PostfixEvent) -> None:
        self._inc("postfix_smtp_connect_failures_total", (ev.service, _CONNECT_REASONS[ev.kind]))

    def _notification(self, ev: PostfixEvent) -> None:
        self._inc("postfix_notifications_total", (ev.service, ev.kind))

    def _pickup(self, ev: PostfixEvent) -> None:
        self._inc("postfix_pickup_messages_total", (ev.service,))
        self._remember_origin(ev.qid, "pickup")

    def _postsuper(self, ev: PostfixEvent) -> None:
        self._inc("postfix_postsuper_actions_total", (_POSTSUPER_ACTIONS[ev.kind],))

    def _lifecycle(self, ev: PostfixEvent) -> None:
        self._inc("postfix_lifecycle_events_total", (ev.service, ev.kind))

    def _severity(self, ev: PostfixEvent) -> None:
        self._inc("postfix_log_messages_total", (ev.service, ev.kind))

    # --- output --------------------------------------------------------------------

    def value(self, name: str, *labels: str) -> float:
        """One counter value by its label values in ``METRICS`` order (0 when never seen)."""
        self.flush()
        return self.values[name].get(tuple(labels), 0)

    def total(self, name: str, where: Callable[[Labels], bool] | None = None) -> float:
        """Sum of a counter over all label sets, or over those ``where`` accepts."""
        self.flush()
        series = self.values[name]
        if where is None:
            return sum(series.values())
        return sum(v for k, v in series.items() if where(k))

    def families(self) -> dict[str, int]:
        """Line counts by ``families.md`` key (``service:kind`` …)."""
        out: dict[str, int] = {}
        for (service, kind, sub), n in self._events.items():
            key = f"{service}:status={sub}" if kind == "status" else f"{service}:{kind}"
            if kind in _FAMILY_SUB:
                key = f"{key}:{sub}"
            out[key] = out.get(key, 0) + int(n)
        return out

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """Every series as (sample name, labels, value), histograms as _bucket/_sum/_count."""
        self.flush()
        for spec in METRICS:
            if spec.type == "histogram":
                yield from self._delay_samples(spec)
                continue
            for key, val in self.values[spec.name].items():
                if spec.name == "postfix_log_events_total":
                    service, kind, sub = key
                    fam = f"status={sub}" if kind == "status" else kind
                    if kind in _FAMILY_SUB:
                        fam = f"{fam}:{sub}"
                    yield spec.name, {"service": service, "family": fam}, val
                else:
                    yield spec.name, dict(zip(spec.labels, key, strict=True)), val

    def _delay_samples(self, spec: MetricSpec) -> Iterator[tuple[str, dict[str, str], float]]:
        for key, counts in self.delay_buckets.items():
            labels = dict(zip(spec.labels, key, strict=True))
            running = 0
            for bound, n in zip((*DELAY_BUCKETS, float("inf")), counts, strict=True):
                running += n
                le = "+Inf" if bound == float("inf") else repr(bound)
                yield f"{spec.name}_bucket", {**labels, "le": le}, running
            yield f"{spec.name}_sum", labels, self.delay_sum(key[0], key[1])
            yield f"{spec.name}_count", labels, running


def _ignore(ev: PostfixEvent) -> None:
    """Events counted only by ``postfix_log_events_total``."""
