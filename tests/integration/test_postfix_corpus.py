"""The real Postfix corpus: every line understood, every exposed reference counter exact."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from metricsd.counters import PostfixCounters
from tests.conftest import integration_required

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "postfix"

# ref "smtpd.<name>.…" service names → our service label
SMTPD_SERVICES = {"smtpd": "smtpd", "submission": "submission/smtpd"}

# Reference counters we deliberately do not expose, with the reason. (None today: every
# counter in real.ref.json maps to one of our series or a sum over them.)
NOT_EXPOSED: dict[str, str] = {}


@pytest.fixture(scope="module")
def corpus() -> Path:
    """The real Postfix log captured beside the project (shared/corpus/postfix)."""
    if not (CORPUS / "maillog.real.log.gz").exists():
        msg = f"corpus not found at {CORPUS}"
        if integration_required():
            pytest.fail(msg)
        pytest.skip(msg)
    return CORPUS


@pytest.fixture(scope="module")
def ref(corpus: Path) -> dict[str, Any]:
    """real.ref.json: independently counted expectations."""
    data: dict[str, Any] = json.loads((corpus / "real.ref.json").read_text())
    return data


@pytest.fixture(scope="module")
def counted(corpus: Path) -> PostfixCounters:
    """Counters after feeding every line of the real log (usernames enabled, as in ref)."""
    c = PostfixCounters(max_sasl_usernames=50)
    with gzip.open(corpus / "maillog.real.log.gz", "rt", encoding="utf-8") as f:
        for line in f:
            assert c.feed_line(line), line
    return c


def _daemon(service: str) -> str:
    return service.rsplit("/", 1)[-1]


def _smtpd(c: PostfixCounters, svc: str, what: str, sub: list[str]) -> float:
    """Resolve ``smtpd.<svc>.<what>[.<sub>…]``; svc ALL sums every smtpd service."""

    def mine(service: str) -> bool:
        return _daemon(service) == "smtpd" if svc == "ALL" else service == SMTPD_SERVICES[svc]

    def tot(name: str, pred: Callable[[tuple[str, ...]], bool] = lambda k: True) -> float:
        return c.total(name, lambda k: mine(k[0]) and pred(k))

    simple = {
        "connect": "postfix_smtpd_connects_total",
        "disconnect": "postfix_smtpd_disconnects_total",
        "size_limit_exceeded": "postfix_smtpd_size_limit_exceeded_total",
        "client": "postfix_smtpd_messages_received_total",
        "client_by_sasl_method": "postfix_smtpd_messages_received_total",
        "client_by_sasl_username": "postfix_smtpd_messages_received_by_user_total",
        "lost_connection": "postfix_smtpd_lost_connections_total",
        "timeout": "postfix_smtpd_timeouts_total",
        "sasl_auth_failed": "postfix_smtpd_sasl_auth_failures_total",
    }
    if what in simple:
        # the optional sub-key is the second label (stage, method or username)
        return tot(simple[what], (lambda k: k[1] == sub[0]) if sub else (lambda k: True))
    if what == "tls_established_in":
        return tot("postfix_tls_connections_total", lambda k: k[1] == "in")
    if what == "queued":
        return c.total(
            "postfix_messages_queued_total", lambda k: _daemon(k[0]) == "smtpd" and mine(k[0])
        )
    rejects = "postfix_smtpd_rejects_total"  # service, stage, code, reason, form
    if what in ("noqueue_reject", "qid_reject", "reject"):
        form = {"noqueue_reject": "noqueue", "qid_reject": "queued"}.get(what)
        stage, code = sub[0], sub[1] if len(sub) > 1 else None
        return tot(
            rejects,
            lambda k: (
                k[1] == stage and (code is None or k[2] == code) and (form is None or k[4] == form)
            ),
        )
    if what == "reject_by_code":
        return tot(rejects, lambda k: not sub or k[2] == sub[0])
    raise KeyError(what)


def resolve(c: PostfixCounters, key: str) -> float:
    """Our value for one real.ref.json counter name (KeyError when we have no mapping)."""
    parts = key.split(".")
    head = parts[0]
    if key == "lines.total":
        return c.total("postfix_log_lines_total")
    if key.startswith("lines.by_tag."):
        return c.value("postfix_log_lines_total", key[len("lines.by_tag.") :])
    if head == "smtpd":
        # "smtpd.ALL.client_by_sasl_method." has an empty sub-key: method ""
        return _smtpd(c, parts[1], parts[2], parts[3:])
    if head == "bounce":
        return c.value("postfix_notifications_total", "bounce", parts[1])
    if key == "cleanup.message_id":
        return c.value("postfix_cleanup_messages_total", "cleanup")
    if key == "cleanup.reject":
        return c.total("postfix_cleanup_actions_total", lambda k: k[1] == "reject")
    if key == "cleanup.warning":
        return c.value("postfix_log_messages_total", "cleanup", "warning")
    if head in ("master", "postfix-script"):
        return c.value("postfix_lifecycle_events_total", head, parts[1])
    if key == "pickup.uid_from":
        return c.value("postfix_pickup_messages_total", "pickup")
    if head == "postsuper":
        if parts[1] == "summary":
            return c.families().get("postsuper:summary", 0)
        action = {"expired": "expire", "placed_on_hold": "hold", "removed": "delete"}[parts[1]]
        return c.value("postfix_postsuper_actions_total", action)
    if head == "qmgr":
        return _qmgr(c, parts[1:])
    if head == "delivery":
        return _delivery(c, key)
    raise KeyError(key)


def _qmgr(c: PostfixCounters, parts: list[str]) -> float:
    """Resolve ``qmgr.…``: inserts and their sums, removals, expirations, new messages."""
    simple = {
        "active_insert": "postfix_qmgr_inserts_total",
        "active_insert_nrcpt_sum": "postfix_qmgr_inserted_recipients_total",
        "active_insert_size_sum": "postfix_qmgr_inserted_bytes_total",
        "removed": "postfix_qmgr_removed_total",
        "expired": "postfix_qmgr_expired_total",
        "messages": "postfix_messages_queued_total",
    }
    if len(parts) == 1:
        return c.total(simple[parts[0]])
    if parts[0] == "messages_by_source":
        queued = "postfix_messages_queued_total"
        if parts[1] in SMTPD_SERVICES:
            return c.value(queued, SMTPD_SERVICES[parts[1]])
        if parts[1] == "other":  # ref: everything not from an smtpd (pickup + notifications)
            return c.total(queued, lambda k: _daemon(k[0]) != "smtpd")
    raise KeyError(".".join(parts))


_DELIVERY = re.compile(
    r"delivery\.(?:(?P<all>all)|by_program\.(?P<prog>[\w-]+)|(?P<svc>[\w/-]+?))\."
    r"(?:status\.(?P<status>\w+)|(?P<lines>status_lines)|(?P<refused>connect_refused))$"
)


def _delivery(c: PostfixCounters, key: str) -> float:
    """Resolve ``delivery.{all|by_program.P|SERVICE}.{status.S|status_lines|connect_refused}``."""
    m = _DELIVERY.match(key)
    if m is None:
        raise KeyError(key)
    prog, svc = m.group("prog"), m.group("svc")

    def scope(service: str) -> bool:
        if prog is not None:
            return _daemon(service) == prog
        return svc is None or service == svc

    if m.group("refused"):
        return c.total(
            "postfix_smtp_connect_failures_total", lambda k: scope(k[0]) and k[1] == "refused"
        )
    status = m.group("status")
    return c.total(
        "postfix_deliveries_total", lambda k: scope(k[0]) and (status is None or k[1] == status)
    )


def test_every_line_is_understood(counted: PostfixCounters, ref: dict[str, Any]) -> None:
    """All 43,686 real lines parse into a known family: zero unsupported lines per program."""
    assert counted.total("postfix_log_lines_total") == ref["counters"]["lines.total"] == 43686
    assert dict(counted.values["postfix_unsupported_lines_total"]) == {}


def test_family_line_counts_match_families_md(
    counted: PostfixCounters, ref: dict[str, Any]
) -> None:
    """Line counts per family equal families.md / real.ref.json exactly, with no extra family."""
    assert counted.families() == ref["families"]
    table = (CORPUS / "families.md").read_text()
    md = {m[1]: int(m[2]) for m in re.finditer(r"^\| `([^`]+)` \| (\d+) \|", table, re.M)}
    assert len(md) == 43
    assert counted.families() == md


def test_every_reference_counter_matches(counted: PostfixCounters, ref: dict[str, Any]) -> None:
    """Every counter of real.ref.json maps to our series and has exactly the reference value."""
    wrong = {}
    unmapped = []
    for key, expected in ref["counters"].items():
        if key in NOT_EXPOSED:
            continue
        try:
            got = resolve(counted, key)
        except KeyError:
            unmapped.append(key)
            continue
        if got != expected:
            wrong[key] = (expected, got)
    assert unmapped == []
    assert wrong == {}
    assert len(ref["counters"]) - len(NOT_EXPOSED) == 150


def test_classified_reasons_on_real_log(counted: PostfixCounters) -> None:
    """Rejects and deferrals of the real log land in the expected reason classes."""
    rejects: dict[str, float] = {}
    for (_, _, _, reason, _), n in counted.values["postfix_smtpd_rejects_total"].items():
        rejects[reason] = rejects.get(reason, 0) + n
    assert rejects == {
        "unknown_user": 660,
        "relay_denied": 100,
        "sender_restriction": 30,
        "client_restriction": 20,
    }
    problems: dict[tuple[str, str], float] = {}
    for (_, status, reason), n in counted.values["postfix_delivery_problems_total"].items():
        problems[(status, reason)] = problems.get((status, reason), 0) + n
    assert problems == {
        ("deferred", "remote_system"): 1370,
        ("deferred", "connection_refused"): 294,
        ("bounced", "unknown_user"): 310,
    }
    assert counted.total("postfix_cleanup_actions_total", lambda k: k[2] == "header_checks") == 30
    assert counted.total("postfix_deferred_recipients_by_domain_total") == 1664


def test_delay_histogram_counts_every_status_line(counted: PostfixCounters) -> None:
    """Each status line adds one observation per delay stage, so counts equal status lines."""
    per_stage: dict[str, int] = {}
    for (_, stage), counts in counted.delay_buckets.items():
        per_stage[stage] = per_stage.get(stage, 0) + sum(counts)
    assert per_stage == dict.fromkeys(
        ("before_queue_manager", "queue_manager", "connection_setup", "transmission"), 9575
    )
