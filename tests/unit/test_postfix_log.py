"""Recognising cleanup(8) rejects in real Postfix logs, and following a rotating log file."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from policy.postfix_log import cleanup_rejected_queue_id
from services.logtail import FileFollower
from tests.conftest import integration_required

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "postfix"


@pytest.fixture
def corpus() -> Path:
    """The real Postfix log captured beside the project (shared/corpus)."""
    if not (CORPUS / "maillog.real.log.gz").exists():
        msg = f"corpus not found at {CORPUS}"
        if integration_required():
            pytest.fail(msg)
        pytest.skip(msg)
    return CORPUS


def test_counts_every_cleanup_reject_in_real_log(corpus: Path) -> None:
    """Exactly the corpus' independently counted cleanup rejects are recognised, nothing else."""
    expected = json.loads((corpus / "real.ref.json").read_text())["counters"]["cleanup.reject"]
    with gzip.open(corpus / "maillog.real.log.gz", "rt", errors="replace") as f:
        ids = [q for line in f if (q := cleanup_rejected_queue_id(line))]
    assert len(ids) == expected == 30
    assert all(q.isalnum() and len(q) >= 5 for q in ids)


@pytest.mark.parametrize(
    ("line", "qid"),
    [
        (
            "Nov 24 01:25:27 mx1 postfix/cleanup[14879]: 63FB4162BB4: reject: header Subject: x from h[1.2.3.4]; from=<a@b>: 5.7.1 no",
            "63FB4162BB4",
        ),
        (
            "2026-11-24T01:25:27.123456+00:00 mx postfix-out/cleanup[9]: 4Xy7Zq2mN1z9Kp: milter-reject: END-OF-MESSAGE from h[1.2.3.4]: 5.7.1 spam",
            "4Xy7Zq2mN1z9Kp",
        ),
        (
            "Nov 24 01:25:27 mx1 postfix/smtpd[1]: 63FB4162BB4: reject: RCPT from h[1.2.3.4]: 550 5.1.1 unknown",
            None,
        ),
        ("Nov 24 01:25:27 mx1 postfix/cleanup[1]: 63FB4162BB4: message-id=<reject: x>", None),
        ("Nov 24 01:25:27 mx1 postfix/cleanup[1]: warning: reject: nothing", None),
    ],
)
def test_recognises_only_cleanup_rejects(line: str, qid: str | None) -> None:
    """Cleanup and milter rejects give the queue id; smtpd rejects and other lines give None."""
    assert cleanup_rejected_queue_id(line) == qid


def test_follower_survives_rotation_and_truncation(tmp_path: Path) -> None:
    """Lines appended after a rename+create rotation and after copytruncate are all read once."""
    log = tmp_path / "mail.log"
    log.write_text("old line\n")
    f = FileFollower(str(log), from_end=True)
    assert f.read_available() == []
    with log.open("a") as w:
        w.write("one\ntw")
    assert f.read_available() == ["one"]
    with log.open("a") as w:
        w.write("o\n")
    assert f.read_available() == ["two"]
    os.rename(log, tmp_path / "mail.log.1")
    log.write_text("three\n")
    assert f.read_available() == []  # notices the rotation
    assert f.read_available() == ["three"]
    assert f.rotations == 1
    log.write_text("")  # copytruncate
    assert f.read_available() == []
    with log.open("a") as w:
        w.write("four\n")
    assert f.read_available() == ["four"]
    assert f.truncations == 1
    f.close()
