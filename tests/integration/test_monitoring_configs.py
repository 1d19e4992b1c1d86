"""The shipped Grafana dashboard and Prometheus alert rules, checked against our exposition.

Alert rules go through the real ``promtool`` (Debian's prometheus package): ``check rules``
and ``test rules`` with synthetic series (tests/fixtures/alerts_test.yml). Every dashboard
expression is checked by ``promtool`` too (wrapped as recording rules). Every metric name
in either file must be one that pfm-metricsd, pfm-policyd or (pending) pfm-authd exposes.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from metricsd.collect import (
    DOVECOT_METRICS,
    LogCollector,
    PipelineStats,
    PostfixUpCollector,
    SourceStats,
)
from metricsd.counters import METRICS, PostfixCounters
from metricsd.dovecot_counters import DovecotCounters
from metricsd.queue import AGE_BUCKETS, QueueCollector
from policy.telemetry import PolicyMetrics
from services.mailqueue import ParseResult, parse_postqueue
from services.metrics import new_registry
from tests.conftest import require_binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "configs" / "grafana" / "pfm-dashboard.json"
ALERTS = ROOT / "configs" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "tests" / "fixtures" / "alerts_test.yml"
POSTQUEUE_SAMPLE = ROOT / "tests" / "fixtures" / "postqueue_sample.jsonl"

# pfm-authd exports no metrics yet; the dashboard and alerts already use these names.
# test_pending_authd_names_not_defined_yet fails as soon as authd/ defines one of them:
# then collect them from pfm-authd's registry in exposed_names() and empty this list.
PENDING_AUTHD: dict[str, tuple[str, tuple[str, ...]]] = {}  # pfm-authd defines them now
# Labels Prometheus attaches to every series of a target.
TARGET_LABELS = frozenset({"instance", "job"})

# Series Prometheus adds itself to every scraped target.
PROMETHEUS_SYNTHETIC = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
    }
)

REQUIRED_ROWS = (
    "Traffic",
    "Rejects",
    "Deliveries",
    "Delivery delays",
    "Queue",
    "Authentication",
    "pfm-policyd",
    "Exporter health",
)

# --------------------------------------------------------------------------- exposition

_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


Exposition = dict[str, frozenset[str]]  # sample name -> its label names


def family_samples(families: Iterable[Metric]) -> dict[str, set[str]]:
    """Every sample name the families can produce (empty or not), with the labels seen."""
    out: dict[str, set[str]] = {}
    for fam in families:
        for suffix in _SUFFIXES.get(fam.type, ("",)):
            out.setdefault(fam.name + suffix, set())
        for sample in fam.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def spec_samples(name: str, typ: str, labels: Iterable[str]) -> dict[str, set[str]]:
    """Sample names and labels of one declared metric, the way Prometheus stores them."""
    if typ != "histogram":
        return {name: set(labels)}
    return {
        name + "_bucket": {*labels, "le"},
        name + "_sum": set(labels),
        name + "_count": set(labels),
    }


def merge(*parts: dict[str, set[str]]) -> Exposition:
    """Union of several name -> labels maps."""
    out: dict[str, set[str]] = {}
    for part in parts:
        for name, labels in part.items():
            out.setdefault(name, set()).update(labels)
    return {name: frozenset(labels) for name, labels in out.items()}


def pending_samples() -> Exposition:
    """The pending pfm-authd names with their planned labels."""
    return merge(*(spec_samples(n, typ, lab) for n, (typ, lab) in PENDING_AUTHD.items()))


# A delivery and a line no parser knows (so that the unsupported-lines series has labels).
LOG_LINES = (
    "Nov  4 01:02:03 mx postfix/smtp[4242]: 4B3C21E0F3: to=<bob@example.org>, "
    "relay=mx.example.org[192.0.2.7]:25, delay=1.2, delays=0.1/0.01/0.5/0.6, dsn=2.0.0, "
    "status=sent (250 2.0.0 Ok: queued as 12345)",
    "Nov  4 01:02:04 mx postfix/smtpd[4243]: a line no Postfix version ever wrote",
)


@dataclass
class _PipelineState:
    """The state pfm-metricsd's pipeline hands its LogCollector: real counters, two sources."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    postfix: PostfixCounters = field(default_factory=PostfixCounters)
    dovecot: DovecotCounters | None = field(default_factory=DovecotCounters)
    stats: PipelineStats = field(default_factory=PipelineStats)

    def source_stats(self) -> Sequence[SourceStats]:
        """One file source and one syslog source, as configured on a typical server."""
        return (
            SourceStats("maillog", "file", True, 0, 0, 0, 0),
            SourceStats("syslog", "syslog", True, 0, 0, 0, 0),
        )


def _postqueue_sample() -> ParseResult:
    """Real ``postqueue -j`` output captured from a private Postfix (tests/fixtures)."""
    return parse_postqueue(POSTQUEUE_SAMPLE.read_bytes())


@cache
def exposition() -> Exposition:
    """pfm-metricsd's and pfm-policyd's series: their real collectors on fresh registries.

    Labels come from the samples (the queue collector reads real ``postqueue -j`` output,
    policyd answers a request) and, for log families still empty, from their declarations.
    """
    state = _PipelineState()
    for line in LOG_LINES:
        state.postfix.feed_line(line)
    metricsd: CollectorRegistry = new_registry()
    metricsd.register(LogCollector(state))
    metricsd.register(QueueCollector(_postqueue_sample, cache_seconds=0))
    metricsd.register(PostfixUpCollector("/nonexistent", resolve=lambda d: d))
    policyd: CollectorRegistry = new_registry()
    pm = PolicyMetrics(policyd)
    pm.request("RCPT", "DUNNO", 0.001)
    pm.breach("rcpt_per_hour", shadow=False)
    pm.store_errors.labels(store="redis").inc(0)
    pm.bad_requests.labels(reason="too_long").inc(0)
    pm.reloads.labels(result="ok").inc(0)
    from authd.telemetry import AuthMetrics

    authd: CollectorRegistry = new_registry()
    am = AuthMetrics(authd)
    am.login("imap", "password", "ok", 0.001)
    am.guard_blocks.labels(reason="ip_failures").inc(0)
    collected = merge(
        family_samples(metricsd.collect()),
        family_samples(policyd.collect()),
        family_samples(authd.collect()),
    )
    # declarations only add labels; a name counts as exposed when a collector produced it
    declared = [spec_samples(m.name, m.type, m.labels) for m in METRICS]
    declared += [spec_samples(m.name, "counter", m.labels) for m in DOVECOT_METRICS]
    labels = [{n: lab for n, lab in d.items() if n in collected} for d in declared]
    return merge({n: set(lab) for n, lab in collected.items()}, *labels)


def exposed_names() -> frozenset[str]:
    """Sample names pfm-metricsd and pfm-policyd expose."""
    return frozenset(exposition())


def known() -> Exposition:
    """What an expression may reference: exposed, pending (authd) and Prometheus' own series."""
    synthetic = {name: frozenset[str]() for name in PROMETHEUS_SYNTHETIC}
    return {**pending_samples(), **synthetic, **exposition()}


def known_names() -> frozenset[str]:
    """Every metric name an expression may reference."""
    return frozenset(known())


# --------------------------------------------------------------------------- PromQL names

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# an identifier not glued to a word, number, dot or $ on its left, and not a function call
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "atan2",
        "inf",
        "nan",
    }
)


_SELECTOR = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)\s*(\{[^{}]*\})")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUP_LABELS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def _mask_strings(expr: str) -> str:
    """The expression with every string literal's content blanked (positions kept)."""
    return _STRING.sub(lambda m: m[0][0] + "_" * (len(m[0]) - 2) + m[0][-1], expr)


def label_problems(expr: str, legend: str = "") -> list[str]:
    """Label names the expression uses that its metrics do not have.

    Matchers are checked against the metric they select; grouping clauses and legend
    placeholders against the union of the expression's metrics (plus instance/job/le).
    """
    series = known()
    masked = _mask_strings(expr)
    problems = []
    available = set(TARGET_LABELS)
    for name in metric_names(expr):
        available |= series.get(name, frozenset())
    for name, block in _SELECTOR.findall(masked):
        have = series.get(name, frozenset()) | TARGET_LABELS
        problems += [
            f"{name} has no label {label!r}"
            for label in _MATCHER_LABEL.findall(block)
            if label not in have
        ]
    for group in _GROUP_LABELS.findall(masked):
        for label in (x.strip() for x in group.split(",")):
            if label and label not in available:
                problems.append(f"grouping by unknown label {label!r}")
    problems += [
        f"legend uses unknown label {label!r}"
        for label in _LEGEND_LABEL.findall(legend)
        if label not in available
    ]
    return problems


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (labels, functions, keywords, durations skipped)."""
    assert "__name__" not in expr, f"select metrics by name, not by __name__: {expr}"
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("{}", text)
    text = _RANGE.sub("[]", text)
    text = _GROUPING.sub(" ", text)
    return {m for m in _IDENT.findall(text) if m.lower() not in _KEYWORDS}


# --------------------------------------------------------------------------- loaders


def load_dashboard() -> dict[str, Any]:
    """The dashboard JSON as a dict."""
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel id/refId, expr) of every query target."""
    return [
        (f"panel {p['id']} {t['refId']}", t["expr"])
        for p in all_panels(dashboard)
        for t in p.get("targets", [])
    ]


def variable_selectors(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(variable name, selector) of every ``label_values(SELECTOR, LABEL)`` query variable."""
    out = []
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q)
            assert m, f"variable {var['name']}: expected label_values(SELECTOR, LABEL): {q}"
            out.append((f"variable {var['name']}", m.group(1)))
    return out


def load_rules() -> list[dict[str, Any]]:
    """Every alerting rule in alerts.yml."""
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's variables by values Prometheus accepts (intervals, match-all)."""
    expr = re.sub(r"\$__(?:rate_interval|interval|range)\b", "5m", expr)
    expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
    return expr


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the real promtool; skip (fail under CI) when it is not installed."""
    exe = require_binary("promtool")
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )


# --------------------------------------------------------------------------- tests: names


def test_metric_name_parser_skips_functions_labels_keywords_and_durations() -> None:
    """The PromQL name parser returns only metric names, whatever surrounds them."""
    expr = (
        'histogram_quantile(0.99, sum by (le, stage) (rate(a_seconds_bucket{stage=~"x|y",'
        'instance=~"$instance"}[$__rate_interval] offset 1h))) / on (instance) group_left (job) '
        'b:recorded unless ignoring(queue) c_total > bool 1e3 and topk(5, d) or e{le="+Inf"}'
        " * count without (queue) (f) + atan2 inf"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b:recorded", "c_total", "d", "e", "f"}


def test_exposition_holds_metricsd_and_policyd_names() -> None:
    """The collected exposition has Postfix, Dovecot, queue, health and policyd series."""
    names = exposed_names()
    for name in (
        "postfix_smtpd_connects_total",
        "postfix_delivery_delay_seconds_bucket",
        "dovecot_login_failures_total",
        "postfix_queue_messages",
        "postfix_queue_message_age_seconds_bucket",
        "postfix_queue_scrape_success",
        "postfix_up",
        "pfm_metricsd_unsupported_lines_total",
        "pfm_metricsd_source_drops_total",
        "pfm_policyd_requests_total",
        "pfm_policyd_decision_seconds_bucket",
        "pfm_policyd_store_up",
        "process_resident_memory_bytes",
    ):
        assert name in names, name
    # the "Messages older than 1h / 1d" panel selects these age buckets by their le value
    assert {3600, 86400} <= set(AGE_BUCKETS)


def test_pending_authd_names_not_defined_yet() -> None:
    """pfm-authd does not define the pending names yet; when it does, collect them for real."""
    sources = {p: p.read_text(encoding="utf-8") for p in sorted((ROOT / "authd").rglob("*.py"))}
    defined = []
    for name in PENDING_AUTHD:
        base = re.sub(r"_total$", "", name)
        pattern = re.compile(rf"[\"']{re.escape(base)}(?:_total)?[\"']")
        defined += [
            f"{name} in {p.relative_to(ROOT)}" for p, t in sources.items() if pattern.search(t)
        ]
    assert not defined, (
        f"pfm-authd now defines {defined}: register its collectors in exposed_names() and "
        "remove these names from PENDING_AUTHD"
    )
    assert not set(pending_samples()) & exposed_names()


def test_every_dashboard_expression_uses_exposed_metrics() -> None:
    """Each metric name in every dashboard query and variable is one our daemons expose."""
    dashboard = load_dashboard()
    known = known_names()
    used: set[str] = set()
    unknown: list[str] = []
    queries = dashboard_exprs(dashboard) + variable_selectors(dashboard)
    for where, expr in queries:
        names = metric_names(expr)
        assert names, f"{where}: no metric name found in {expr}"
        used |= names
        unknown += [f"{where}: {n}" for n in sorted(names - known)]
    assert not unknown, "metric names nobody exposes:\n" + "\n".join(unknown)
    assert used & exposed_names() >= {
        "pfm_authd_logins_total",
        "pfm_authd_login_duration_seconds_bucket",
        "pfm_authd_directory_errors_total",
        "pfm_authd_guard_blocks_total",
    }


def test_every_alert_expression_uses_exposed_metrics() -> None:
    """Each metric name in every alert rule is one our daemons (or Prometheus) expose."""
    known = known_names()
    unknown = [
        f"{rule['alert']}: {name}"
        for rule in load_rules()
        for name in sorted(metric_names(rule["expr"]) - known)
    ]
    assert not unknown, "metric names nobody exposes:\n" + "\n".join(unknown)


def test_label_checker_finds_wrong_labels() -> None:
    """The label check flags matchers, groupings and legends naming labels a metric lacks."""
    expr = (
        'sum by (reason, colour) (rate(postfix_smtpd_rejects_total{stage="RCPT",'
        'queue="x", instance=~"$instance"}[5m])) / postfix_up{service="a"}'
    )
    assert sorted(label_problems(expr, "{{reason}} {{size}}")) == [
        "grouping by unknown label 'colour'",
        "legend uses unknown label 'size'",
        "postfix_smtpd_rejects_total has no label 'queue'",
        "postfix_up has no label 'service'",
    ]


def test_dashboard_and_alerts_use_existing_labels() -> None:
    """Every label a dashboard query, legend or alert rule names exists on its metrics."""
    problems = []
    for p in all_panels(load_dashboard()):
        for t in p.get("targets", []):
            found = label_problems(t["expr"], t.get("legendFormat", ""))
            problems += [f"panel {p['id']} {t['refId']} ({p['title']}): {x}" for x in found]
    for rule in load_rules():
        problems += [f"{rule['alert']}: {x}" for x in label_problems(rule["expr"])]
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- tests: dashboard


def test_dashboard_has_identity_variables_and_sections() -> None:
    """The dashboard has uid, title, a modern schema, datasource/instance variables, all rows."""
    d = load_dashboard()
    assert d["uid"] == "pfm-overview" and d["title"]
    assert int(d["schemaVersion"]) >= 36
    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    inst = variables["instance"]
    assert inst["type"] == "query" and inst["datasource"]["uid"] == "${datasource}"
    assert inst["includeAll"] and inst["multi"]
    rows = [p["title"] for p in d["panels"] if p["type"] == "row"]
    assert set(REQUIRED_ROWS) <= set(rows), rows


def test_dashboard_panels_are_well_formed() -> None:
    """Panels have unique ids, non-overlapping grid positions, and queries on ${datasource}."""
    d = load_dashboard()
    panels = list(all_panels(d))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    taken: dict[tuple[int, int], int] = {}
    for p in panels:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in ("h", "w", "x", "y")), p["title"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"panel {p['id']} overlaps panel {taken[(x, y)]}"
                taken[(x, y)] = p["id"]
        if p["type"] == "row":
            continue
        assert p["title"] and p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["targets"], f"panel {p['id']} has no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), f"panel {p['id']}: duplicate refIds"
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert t["expr"].strip(), f"panel {p['id']} {t['refId']}: empty expr"
            assert "$instance" in t["expr"], f"panel {p['id']}: not filtered by $instance"


def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    """promtool accepts every dashboard query and variable selector (as recording rules)."""
    rules = []
    dashboard = load_dashboard()
    for where, expr in dashboard_exprs(dashboard) + variable_selectors(dashboard):
        promql = grafana_to_promql(expr)
        assert "$" not in promql, f"{where}: unknown Grafana variable in {expr}"
        record = "pfm_dashboard:" + re.sub(r"\W", "_", where)
        rules.append({"record": record, "expr": promql})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promtool_rejects_a_broken_dashboard_expression(tmp_path: Path) -> None:
    """The PromQL check is real: promtool refuses a malformed expression."""
    path = tmp_path / "broken.yml"
    rule = {"record": "pfm_dashboard:broken", "expr": "sum by (le (rate(x_total[5m]))"}
    path.write_text(yaml.safe_dump({"groups": [{"name": "broken", "rules": [rule]}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode != 0
    assert "parse error" in (result.stdout + result.stderr).lower()


# --------------------------------------------------------------------------- tests: alerts


def test_alert_rules_pass_promtool_check() -> None:
    """promtool check rules accepts alerts.yml."""
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


def test_alert_rules_have_for_severity_and_annotations() -> None:
    """Every alert waits (for:), has a severity and summary/description/runbook annotations."""
    rules = load_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
    for wanted in (
        "PostfixQueueGrowing",
        "PostfixDeferredRatioHigh",
        "PostfixBounceSpike",
        "PostfixSaslFailureSpike",
        "PfmExporterDown",
        "PfmUnparsedLogLines",
        "PostfixDown",
        "PostfixQueueScrapeFailing",
        "PfmPolicydStoreDown",
        "PfmPolicydFallbackDecisions",
        "PfmAuthdDirectoryErrors",
    ):
        assert wanted in names


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    """alerts_test.yml makes every alert fire once and checks it silent at another time."""
    data = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))
    fires: set[str] = set()
    silent: set[str] = set()
    for case in data["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else silent).add(check["alertname"])
    names = {r["alert"] for r in load_rules()}
    assert names <= fires, names - fires
    assert names <= silent, names - silent


def test_alert_unit_tests_pass() -> None:
    """promtool test rules: alerts fire on the unhealthy series and stay silent on healthy ones."""
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_alert_unit_tests_catch_a_wrong_expectation(tmp_path: Path) -> None:
    """The promtool unit tests are strict: a wrong expected value makes them fail."""
    text = ALERT_TESTS.read_text(encoding="utf-8")
    assert "grew by 150 messages" in text
    broken = tmp_path / "fixtures" / "alerts_test.yml"
    broken.parent.mkdir()
    rules = tmp_path / "configs" / "prometheus"
    rules.mkdir(parents=True)
    (rules / "alerts.yml").write_text(ALERTS.read_text(encoding="utf-8"))
    rule_path = "../configs/prometheus/alerts.yml"
    broken.write_text(
        text.replace("../../configs/prometheus/alerts.yml", rule_path).replace(
            "grew by 150 messages", "grew by 151 messages"
        )
    )
    result = promtool("test", "rules", str(broken))
    assert result.returncode != 0
    assert "PostfixQueueGrowing" in result.stdout + result.stderr


def test_readme_scrape_config_is_valid(tmp_path: Path) -> None:
    """The scrape snippet in configs/prometheus/README.md passes promtool check config."""
    readme = (ROOT / "configs" / "prometheus" / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", readme, re.S)
    assert block is not None
    text = re.sub(r"/etc/prometheus/rules/pfm-alerts\.yml", str(ALERTS), block.group(1))
    config = yaml.safe_load(text)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"pfm-metricsd", "pfm-policyd", "pfm-authd"}
    ports = {
        name: {t.rsplit(":", 1)[1] for t in job["static_configs"][0]["targets"]}
        for name, job in jobs.items()
    }
    assert ports == {"pfm-metricsd": {"9154"}, "pfm-policyd": {"9155"}, "pfm-authd": {"9156"}}
    relabel = jobs["pfm-policyd"]["relabel_configs"][0]
    host = re.fullmatch(relabel["regex"], "mx1.example.org:9155")
    assert host is not None and host.expand(relabel["replacement"].replace("$1", r"\1")) == (
        "mx1.example.org"
    )
    path = tmp_path / "prometheus.yml"
    path.write_text(text)
    result = promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout
