"""The Dovecot parser against the real captured Dovecot 2.3 log (shared/corpus/dovecot)."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from metricsd.dovecot_counters import DovecotCounters
from tests.conftest import integration_required

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "dovecot"


@pytest.fixture(scope="module")
def corpus() -> Path:
    """The real Dovecot log captured beside the project (shared/corpus/dovecot)."""
    if not (CORPUS / "dovecot.log.gz").exists():
        msg = f"corpus not found at {CORPUS}"
        if integration_required():
            pytest.fail(msg)
        pytest.skip(msg)
    return CORPUS


def _lines(corpus: Path) -> list[str]:
    with gzip.open(corpus / "dovecot.log.gz", "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def _as_syslog(line: str, rfc3339: bool) -> str:
    """The line as rsyslog would store it: `HOST dovecot[PID]: ` and no `Info: ` prefix."""
    stamp, rest = line[:15], line[16:].replace(": Info: ", ": ", 1)
    if rfc3339:
        stamp = f"2026-11-{stamp[4:6]}T{stamp[7:]}.000123+00:00"
    return f"{stamp} mail-host.example dovecot[1234]: {rest}"


def _count(lines: list[str]) -> DovecotCounters:
    c = DovecotCounters()
    for line in lines:
        assert c.feed_line(line) is not None, line
    return c


@pytest.mark.parametrize("form", ["log_path", "syslog", "syslog-rfc3339"])
def test_every_ground_truth_counter_matches_exactly(corpus: Path, form: str) -> None:
    """All counters of ground_truth.json are reproduced exactly, in own and syslog formats."""
    lines = _lines(corpus)
    if form != "log_path":
        lines = [_as_syslog(line, form.endswith("rfc3339")) for line in lines]
    expected = json.loads((corpus / "ground_truth.json").read_text())["counters"]
    flat = _count(lines).flat()
    mismatches = {k: (v, flat.get(k)) for k, v in expected.items() if flat.get(k) != v}
    assert mismatches == {}
    assert len(expected) == 40


def test_every_line_classified_and_families_match(corpus: Path) -> None:
    """No line is unsupported and per-family line counts equal the table in families.md."""
    c = _count(_lines(corpus))
    table = {
        m.group(1): int(m.group(2))
        for m in re.finditer(
            r"^\| `([^`]+)` \| (\d+) \|", (corpus / "families.md").read_text(), re.M
        )
    }
    assert len(table) == 18
    assert c.unsupported == {}
    assert dict(c.families) == table
    assert c.lines == sum(table.values()) == 721


def test_log_counts_agree_with_client_tally(corpus: Path) -> None:
    """The labelled counters agree with what the clients did (drive_tally.json)."""
    tally = json.loads((corpus / "drive_tally.json").read_text())["tally"]
    c = _count(_lines(corpus))
    ok = sum(n for k, n in tally.items() if k.startswith("imap:") and k.endswith(":ok"))
    tls_ok = sum(n for k, n in tally.items() if k.startswith("imap:tls:") and k.endswith(":ok"))
    assert sum(n for (s, _m, _t), n in c.logins.items() if s == "imap") == ok
    assert sum(n for (s, _m, t), n in c.logins.items() if s == "imap" and t == "TLS") == tls_ok
    tls_fail = tally["imap:tls:LOGIN:fail"] + tally["imap:tls:PLAIN:fail"]
    imap_tls_fail = sum(
        n
        for (s, _e, r, _m, t), n in c.login_ends.items()
        if s == "imap" and t == "TLS" and r == "auth_failed"
    )
    assert imap_tls_fail == tls_fail
    assert c.session_ends[("imap", "connection_closed")] == tally["imap:end:dropped"]
    assert c.session_ends[("imap", "logged_out")] == tally["imap:end:logout"]
    assert c.login_failures()[("pop3", "auth_failed")] == tally["pop3:plain:USER:fail"]
    failures = c.login_failures()
    assert sum(n for (s, _r), n in failures.items() if s == "submission") == (
        tally["submission:plain:PLAIN:fail"]
        + tally["submission:plain:PLAIN:other:SMTPServerDisconnected"]
    )
