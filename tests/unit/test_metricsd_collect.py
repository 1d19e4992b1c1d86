"""pfm-metricsd's collectors and queue summary as pure logic (no daemon, no Postfix)."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from metricsd.collect import (
    LogCollector,
    PipelineStats,
    PostfixUpCollector,
    SourceStats,
    master_running,
)
from metricsd.counters import PostfixCounters
from metricsd.dovecot_counters import DovecotCounters
from metricsd.queue import QueueCollector, deferral_reason, summarize
from services.config import ConfigError, build_config
from services.mailqueue import ParseResult, QueueMessage, QueueRecipient
from services.queue_ops import QueueOpsError

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")

POSTFIX_LINES = (
    "Nov 24 06:20:23 mx postfix/smtpd[41]: connect from a.example[192.0.2.1]",
    "Nov 24 06:20:23 mx postfix/submission/smtpd[42]: connect from b.example[192.0.2.2]",
    "Nov 24 06:20:24 mx postfix/smtpd[41]: NOQUEUE: reject: RCPT from a.example[192.0.2.1]: "
    "550 5.1.1 <x@example.org>: Recipient address rejected: User unknown in virtual mailbox "
    "table; from=<s@example.net> to=<x@example.org> proto=ESMTP helo=<a.example>",
    "Nov 24 06:20:25 mx postfix/smtp[50]: 4A1B2C3D4E: to=<u@example.org>, "
    "relay=mx.example.org[192.0.2.5]:25, delay=1.2, delays=0.1/0/0.5/0.6, dsn=2.0.0, "
    "status=sent (250 2.0.0 Ok)",
    "Nov 24 06:20:26 mx postfix/smtpd[41]: this line is not understood by anybody",
)
DOVECOT_LINES = (
    "Nov 24 06:48:39 imap-login: Info: Login: user=<u@example.org>, method=PLAIN, "
    "rip=127.0.1.33, lip=127.0.0.1, mpid=17751, TLS, session=<bGi4GQBhDbh/AAEh>",
    "Nov 24 06:48:39 auth: Info: passwd-file(u@example.net,127.0.1.5,<ZGW4GQBh>): "
    "Password mismatch",
)


class FakeState:
    """A LogState without a pipeline."""

    def __init__(self, dovecot: bool = True) -> None:
        self.lock = threading.Lock()
        self.postfix = PostfixCounters()
        self.dovecot = DovecotCounters() if dovecot else None
        self.stats = PipelineStats(postfix_lines=5, other_lines=2, parse_seconds=0.5)
        self.sources = [
            SourceStats("file:/var/log/mail.log", "file", True, 7, 1, 0, 0, 2, 1),
            SourceStats("syslog:127.0.0.1:5140", "syslog", False, 3, 4, 5, 1),
        ]

    def source_stats(self) -> list[SourceStats]:
        return self.sources


def exposition(*collectors: Any) -> tuple[list[Any], dict[tuple[str, frozenset[Any]], float]]:
    """Render collectors as text, parse it back; (families, {(sample, labels): value})."""
    registry = CollectorRegistry()
    for c in collectors:
        registry.register(c)
    fams = list(text_string_to_metric_families(generate_latest(registry).decode()))
    values = {(s.name, frozenset(s.labels.items())): s.value for f in fams for s in f.samples}
    return fams, values


def value(values: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float:
    return values[(name, frozenset(labels.items()))]


def test_log_collector_names_types_and_values() -> None:
    """Postfix, Dovecot and health families follow the naming rules and carry the counts."""
    st = FakeState()
    for line in POSTFIX_LINES:
        assert st.postfix.feed_line(line)
    for line in DOVECOT_LINES:
        assert st.dovecot is not None and st.dovecot.feed_line(line) is not None
    fams, v = exposition(LogCollector(st))
    names = {f.name for f in fams}
    for f in fams:
        assert NAME.match(f.name)
        for s in f.samples:
            assert NAME.match(s.name) and all(NAME.match(k) for k in s.labels)
            if f.type == "counter":
                assert s.name.endswith("_total"), s.name
    assert {"postfix_smtpd_connects", "dovecot_logins", "pfm_metricsd_source_lines"} <= names
    assert value(v, "postfix_smtpd_connects_total", service="submission/smtpd") == 1
    assert value(v, "postfix_unsupported_lines_total", program="postfix/smtpd") == 1
    assert value(v, "pfm_metricsd_unsupported_lines_total", program="postfix/smtpd") == 1
    reject = {"service": "smtpd", "stage": "RCPT", "code": "550", "form": "noqueue"}
    assert value(v, "postfix_smtpd_rejects_total", **reject, reason="unknown_user") == 1
    assert value(v, "postfix_deliveries_total", service="smtp", status="sent") == 1
    assert (
        value(
            v,
            "postfix_delivery_delay_seconds_bucket",
            service="smtp",
            stage="transmission",
            le="1.0",
        )
        == 1
    )
    assert value(v, "dovecot_logins_total", service="imap", mechanism="PLAIN", tls="TLS") == 1
    assert (
        value(v, "dovecot_passdb_results_total", passdb="passwd-file", result="password_mismatch")
        == 1
    )
    src = {"source": "file:/var/log/mail.log", "type": "file"}
    assert value(v, "pfm_metricsd_source_lines_total", **src) == 7
    assert value(v, "pfm_metricsd_source_drops_total", **src) == 1
    assert value(v, "pfm_metricsd_source_rotations_total", source=src["source"], kind="rename") == 2
    udp = {"source": "syslog:127.0.0.1:5140", "type": "syslog"}
    assert value(v, "pfm_metricsd_source_up", **udp) == 0
    assert value(v, "pfm_metricsd_source_errors_total", **udp) == 5
    assert value(v, "pfm_metricsd_source_restarts_total", **udp) == 1
    assert value(v, "pfm_metricsd_lines_total", kind="other") == 2
    assert value(v, "pfm_metricsd_parse_seconds_total") == 0.5


def test_log_collector_without_dovecot_has_no_dovecot_families() -> None:
    """With dovecot = false no dovecot_* family is exported."""
    fams, _ = exposition(LogCollector(FakeState(dovecot=False)))
    assert not [f.name for f in fams if f.name.startswith("dovecot_")]
    assert any(f.name == "postfix_smtpd_rejects" for f in fams)  # empty families still typed


# --------------------------------------------------------------------------- queue summary


def msg(qid: str, queue: str, age: float, size: int, *rcpts: tuple[str, str]) -> QueueMessage:
    return QueueMessage(
        qid,
        queue,
        int(10_000 - age),
        size,
        "s@example.net",
        tuple(QueueRecipient(a, r) for a, r in rcpts),
    )


REFUSED = "connect to mx.a.example[192.0.2.1]:25: Connection refused"
GREY = "host mx.b.example[192.0.2.2] said: 450 4.7.1 <u@b.example>: Greylisted, retry later"
FULL = "host mx.c.example[192.0.2.3] said: 452 4.2.2 Mailbox full (in reply to RCPT TO command)"
POLICY = "host mx.d.example[192.0.2.4] said: 421 4.7.0 Try again later (in reply to MAIL FROM)"


def test_summarize_counts_queues_ages_domains_and_reasons() -> None:
    """Messages/bytes/recipients per queue, age buckets, top domains plus other, reasons."""
    result = ParseResult(
        (
            msg(
                "AAAAA1", "deferred", 100, 1000, ("x@a.example", REFUSED), ("y@a.example", REFUSED)
            ),
            msg("AAAAA2", "deferred", 4000, 2000, ("x@b.example", GREY)),
            msg("AAAAA3", "deferred", 90000, 3000, ("x@c.example", FULL), ("y@D.example", POLICY)),
            msg("AAAAA4", "hold", 10, 500, ("h@a.example", "")),
            msg("AAAAA5", "active", -5, 10, ("z@a.example", "")),
            msg("AAAAA6", "weird", 0, 1, ("w@a.example", "")),
        ),
        bad_lines=2,
    )
    s = summarize(result, now=10_000, top_domains=2)
    assert s.messages["deferred"] == 3 and s.messages["hold"] == 1 and s.messages["other"] == 1
    assert s.messages["incoming"] == 0 and s.messages["corrupt"] == 0
    assert s.size_bytes["deferred"] == 6000
    assert s.recipients["deferred"] == 5
    # buckets 300, 900, 3600, 14400, 43200, 86400, 172800, 432000, +Inf
    assert s.age_counts["deferred"] == [1, 0, 0, 1, 0, 0, 1, 0, 0]
    assert s.age_counts["active"][0] == 1  # arrival in the future: age 0
    assert s.oldest_age["deferred"] == 90000
    assert s.deferred_domains == [("a.example", 2), ("other", 2), ("b.example", 1)]
    assert s.deferred_reasons == {
        "connection_refused": 2,
        "greylisted": 1,
        "mailbox_full": 1,
        "remote_policy": 1,
    }
    assert s.bad_lines == 2


def test_summarize_domains_are_lower_cased_and_bounded() -> None:
    """Recipient domains fold case; more than N domains never give more than N+1 labels."""
    msgs = tuple(
        msg(f"BBBBB{i}", "deferred", 10, 1, (f"u@d{i % 50}.EXAMPLE", REFUSED)) for i in range(500)
    )
    s = summarize(ParseResult(msgs), now=10_000, top_domains=5)
    assert len(s.deferred_domains) == 6
    assert dict(s.deferred_domains)["other"] == 450
    assert all(d == d.lower() for d, _ in s.deferred_domains)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (REFUSED, "connection_refused"),
        ("connect to x[192.0.2.1]:25: Connection timed out", "connection_timed_out"),
        (FULL, "mailbox_full"),
        (GREY, "greylisted"),
        (
            "host x said: 450 4.1.8 <s@x>: Sender address rejected: Domain not found",
            "remote_address",
        ),
        ("Host or domain name not found. Name service error for name=x type=MX", "dns_failure"),
        ("", "other"),
    ],
)
def test_deferral_reason_uses_dsn_in_text(text: str, reason: str) -> None:
    """delay_reason texts are classified, with the enhanced status code found in the text."""
    assert deferral_reason(text) == reason


# --------------------------------------------------------------------------- queue collector


def test_queue_collector_failure_is_a_gauge_not_an_error() -> None:
    """A failing runner gives scrape_success 0 and counts the kind; no queue series remain."""
    calls = []

    def failing() -> ParseResult:
        calls.append(1)
        if len(calls) == 1:
            raise QueueOpsError("permission", "postqueue: permission denied")
        raise RuntimeError("unexpected")

    c = QueueCollector(failing, cache_seconds=0)
    _, v = exposition(c)
    assert value(v, "postfix_queue_scrape_success") == 0
    assert value(v, "postfix_queue_scrape_errors_total", kind="permission") == 1
    assert ("postfix_queue_messages", frozenset({("queue", "deferred")})) not in v
    _, v = exposition(c)
    assert value(v, "postfix_queue_scrape_errors_total", kind="failed") == 1


def test_queue_collector_caches_and_reconfigure_drops_cache() -> None:
    """Within cache_seconds one run serves every scrape; configure() forces a fresh run."""
    runs: list[int] = []
    now = [0.0]

    def runner() -> ParseResult:
        runs.append(1)
        return ParseResult((msg("CCCCC1", "deferred", 10, 5, ("a@b.example", REFUSED)),))

    c = QueueCollector(runner, cache_seconds=10, monotonic=lambda: now[0], clock=lambda: 10_000)
    for _ in range(3):
        _, v = exposition(c)
    assert len(runs) == 1
    assert value(v, "postfix_queue_messages", queue="deferred") == 1
    assert value(v, "postfix_queue_message_age_seconds_bucket", queue="deferred", le="300.0") == 1
    c.configure(runner, 10, 20)
    exposition(c)
    assert len(runs) == 2
    now[0] = 11
    exposition(c)
    assert len(runs) == 3


# --------------------------------------------------------------------------- postfix_up


def fake_proc(tmp: Path, pid: int, comm: str, state: str = "S") -> Path:
    proc = tmp / "proc"
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "stat").write_text(f"{pid} ({comm}) {state} 1 {pid} {pid} 0 -1\n")
    return proc


def queue_dir(tmp: Path, pid: int | str) -> Path:
    q = tmp / "spool"
    (q / "pid").mkdir(parents=True)
    (q / "pid" / "master.pid").write_text(f"{pid:>10}\n")
    return q


@pytest.mark.parametrize(
    ("comm", "state", "up"),
    [("master", "S", True), ("master", "Z", False), ("bash", "S", False)],
)
def test_master_running_checks_pid_file_and_process(
    tmp_path: Path, comm: str, state: str, up: bool
) -> None:
    """Up only when master.pid names a live (non-zombie) process called master."""
    proc = fake_proc(tmp_path, 4242, comm, state)
    assert master_running(str(queue_dir(tmp_path, 4242)), str(proc)) is up


def test_master_running_without_pid_or_process(tmp_path: Path) -> None:
    """A missing pid file, garbage in it or a dead pid all mean down."""
    proc = tmp_path / "proc"
    proc.mkdir()
    assert not master_running(str(tmp_path / "nope"), str(proc))
    assert not master_running(str(queue_dir(tmp_path, "garbage")), str(proc))
    (tmp_path / "spool" / "pid" / "master.pid").write_text("77\n")
    assert not master_running(str(tmp_path / "spool"), str(proc))


def test_postfix_up_retries_queue_directory_lookup_after_backoff(tmp_path: Path) -> None:
    """A failing postconf lookup is retried only after `retry` seconds; then postfix_up works."""
    proc = fake_proc(tmp_path, 99, "master")
    qdir = queue_dir(tmp_path, 99)
    answers: list[str | Exception] = [OSError("postconf: no"), str(qdir)]
    now = [0.0]

    def resolve(config_dir: str) -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    up = PostfixUpCollector("/etc/postfix", resolve=resolve, proc=str(proc), clock=lambda: now[0])
    assert value(exposition(up)[1], "postfix_up") == 0
    assert value(exposition(up)[1], "postfix_up") == 0  # no new lookup yet
    assert len(answers) == 1
    now[0] = 31
    assert value(exposition(up)[1], "postfix_up") == 1
    assert up.queue_directory() == str(qdir)


# --------------------------------------------------------------------------- config


def test_metricsd_config_defaults_and_sources() -> None:
    """[metricsd] defaults and a list of typed sources load from a mapping."""
    cfg = build_config(
        {
            "metricsd": {
                "sources": [
                    {"type": "file", "path": "/var/log/mail.log", "from_start": True},
                    {"type": "syslog", "listen": "127.0.0.1:5140"},
                    {"type": "journald", "units": ["postfix@-.service", "dovecot.service"]},
                ]
            }
        }
    ).metricsd
    assert cfg.listen == "127.0.0.1:9154" and cfg.top_domains == 20
    assert cfg.queue_scrape and cfg.dovecot and cfg.max_sasl_usernames == 0
    assert [s.type for s in cfg.sources] == ["file", "syslog", "journald"]
    assert cfg.sources[0].from_start and cfg.sources[2].units == (
        "postfix@-.service",
        "dovecot.service",
    )


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"sources": [{"type": "syslog", "listen": "5140"}]}, "metricsd.sources[0].listen"),
        ({"sources": [{"type": "journald", "path": "/x"}]}, "metricsd.sources[0].path"),
        (
            {"sources": [{"type": "file", "path": "/x", "units": ["a"]}]},
            "metricsd.sources[0].units",
        ),
        (
            {"sources": [{"type": "file", "path": "/x"}, {"type": "file", "path": "/x"}]},
            "metricsd.sources[1]",
        ),
        (
            {"sources": [{"type": "file", "path": "/x", "form_start": True}]},
            "metricsd.sources[0].form_start",
        ),
        ({"sources": {"type": "file"}}, "metricsd.sources"),
        ({"queue_timeout": 0}, "metricsd.queue_timeout"),
        ({"max_sasl_usernames": -1}, "metricsd.max_sasl_usernames"),
        ({"dovecot": "yes"}, "metricsd.dovecot"),
    ],
)
def test_metricsd_config_errors_name_the_key(section: dict[str, Any], key: str) -> None:
    """Every invalid [metricsd] setting is a ConfigError naming its dotted key."""
    with pytest.raises(ConfigError) as err:
        build_config({"metricsd": section})
    assert err.value.key == key
