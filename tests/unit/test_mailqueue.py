"""``services.mailqueue``: postqueue -j parser, filters, postcat splitter (pure)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services import mailqueue as mq
from services.queue_ops import PostfixQueue, QueueOpsError, parse_postsuper

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SAMPLE = FIXTURES / "postqueue_sample.jsonl"
NOW = 1796218357 + 7200  # two hours after the sample's messages arrived


def sample() -> tuple[mq.QueueMessage, ...]:
    result = mq.parse_postqueue(SAMPLE.read_bytes())
    assert result.bad_lines == 0
    return result.messages


def by_id(msgs: tuple[mq.QueueMessage, ...] | list[mq.QueueMessage]) -> set[str]:
    return {m.queue_id for m in msgs}


# --------------------------------------------------------------------------- parser


def test_sample_parses_every_real_line() -> None:
    """All 10 captured Postfix 3.7 lines parse, short and long queue ids alike."""
    msgs = sample()
    assert len(msgs) == 10
    assert {m.queue_name for m in msgs} == {"maildrop", "deferred", "hold"}
    assert "4jfdwk3kDgzJ9HY" in by_id(msgs)


def test_message_fields_match_the_json() -> None:
    """A two-recipient deferred message keeps every field and both delay reasons."""
    m = next(m for m in sample() if m.queue_id == "123CA20C5DA")
    assert m.queue_name == "deferred"
    assert (m.arrival_time, m.message_size, m.forced_expire) == (1796218357, 300, False)
    assert m.sender == "alice@example.net"
    assert [r.address for r in m.recipients] == ["bob@example.org", "carol@example.org"]
    assert all("Connection refused" in r.delay_reason for r in m.recipients)
    assert m.recipients[0].domain == "example.org"


def test_held_recipient_has_empty_delay_reason() -> None:
    """A recipient without delay_reason (held, never tried) gets ''."""
    m = next(m for m in sample() if m.queue_name == "hold")
    assert m.recipients == (mq.QueueRecipient("hold@example.org", ""),)


def test_forced_expire_and_utf8_and_quoted_sender() -> None:
    """forced_expire true, raw UTF-8 addresses and an escaped quoted local part survive."""
    msgs = sample()
    assert sum(m.forced_expire for m in msgs) == 2
    utf8 = next(m for m in msgs if m.sender.startswith("j"))
    assert (utf8.sender, utf8.recipients[0].address) == ("jörg@example.net", "müller@example.org")
    assert any(m.sender == '"odd \\"quoted\\" name"@example.net' for m in msgs)


def test_to_dict_round_trips_the_postqueue_shape() -> None:
    """to_dict gives back exactly the object postqueue -j printed."""
    for line in SAMPLE.read_text().splitlines():
        assert mq.parse_line(line).to_dict() == json.loads(line)


def test_missing_forced_expire_defaults_false() -> None:
    """Output of Postfix < 3.5 (no forced_expire member) parses with False."""
    obj = json.loads(SAMPLE.read_text().splitlines()[1])
    del obj["forced_expire"]
    obj["future_member"] = {"x": 1}
    assert mq.message_from_json(obj).forced_expire is False


def test_garbage_lines_are_counted_not_raised() -> None:
    """Garbage, truncated and wrongly typed lines are counted; good lines still parse."""
    good = SAMPLE.read_text().splitlines()
    bad = [
        "postqueue: warning: Mail system is down -- accessing queue directly",
        good[0][:40],
        "[]",
        "{}",
        '{"queue_id": "ABCDE12345"}',
        good[0].replace('"arrival_time": 1796218357', '"arrival_time": "soon"'),
        good[0].replace('"message_size": 316', '"message_size": true'),
        good[0].replace('"queue_id": "13F0B20C194"', '"queue_id": "../../etc"'),
        good[0].replace('"recipients": [', '"recipients": [7, '),
        good[0].replace('"forced_expire": false', '"forced_expire": "no"'),
        "[" * 100_000,
        "\x00\xff binary",
    ]
    text = "\n".join([good[0], *bad, "", "   ", good[1]]) + "\n"
    result = mq.parse_postqueue(text)
    assert (len(result.messages), result.bad_lines) == (2, len(bad))
    with pytest.raises(mq.QueueParseError, match="queue_id"):
        mq.parse_line(bad[7])


def test_invalid_utf8_bytes_do_not_crash() -> None:
    """Bytes that are not UTF-8 inside an address are replaced, the line still parses."""
    line = SAMPLE.read_bytes().splitlines()[1].replace(b"alice", b"al\xffce")
    result = mq.parse_postqueue(line)
    assert result.bad_lines == 0
    assert result.messages[0].sender == "al\ufffdce@example.net"


def test_iterable_of_lines_is_accepted() -> None:
    """A line iterator (e.g. a pipe read line by line) parses like the whole text."""
    with SAMPLE.open("rb") as f:
        result = mq.parse_postqueue(f)
    assert by_id(result.messages) == by_id(sample())


def test_empty_queue_is_empty() -> None:
    """postqueue -j prints nothing for an empty queue: no messages, no bad lines."""
    assert mq.parse_postqueue(b"") == mq.ParseResult((), 0)


def test_fifty_thousand_lines_parse_fast() -> None:
    """50,000 realistic lines parse in well under a second (exporter scrape budget)."""
    lines = SAMPLE.read_text().splitlines()
    data = ("\n".join(lines * 5000) + "\n").encode()
    start = time.perf_counter()
    result = mq.parse_postqueue(data)
    elapsed = time.perf_counter() - start
    assert len(result.messages) == 50_000
    assert elapsed < 1.0, f"{elapsed:.2f} s"


_text = st.text(st.characters(codec="utf-8"), max_size=30)
_rcpt = st.fixed_dictionaries(
    {"address": _text}, optional={"delay_reason": _text, "extra": st.integers()}
)
_msg = st.fixed_dictionaries(
    {
        "queue_name": st.sampled_from(mq.QUEUE_NAMES),
        "queue_id": st.from_regex(r"[0-9A-Za-z]{5,20}", fullmatch=True),
        "arrival_time": st.integers(0, 2**40),
        "message_size": st.integers(0, 2**40),
        "sender": _text,
        "recipients": st.lists(_rcpt, max_size=4),
    },
    optional={"forced_expire": st.booleans()},
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_msg, max_size=8))
def test_valid_objects_always_parse(objs: list[dict[str, object]]) -> None:
    """Any well-formed postqueue -j object parses and keeps its id, sender and recipients."""
    text = "\n".join(json.dumps(o, ensure_ascii=False) for o in objs)
    result = mq.parse_postqueue(text.encode())
    assert result.bad_lines == 0
    assert [m.queue_id for m in result.messages] == [o["queue_id"] for o in objs]
    for m, o in zip(result.messages, objs, strict=True):
        assert m.sender == o["sender"]
        assert len(m.recipients) == len(o["recipients"])  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=80), st.text(max_size=80)), max_size=10))
def test_arbitrary_input_never_raises(chunks: list[bytes | str]) -> None:
    """Arbitrary bytes or text never raise; every non-blank line is a message or counted bad."""
    data = b"\n".join(c if isinstance(c, bytes) else c.encode() for c in chunks)
    result = mq.parse_postqueue(data)
    nonblank = [ln for ln in data.decode("utf-8", "replace").split("\n") if ln.strip()]
    assert len(result.messages) + result.bad_lines == len(nonblank)


# --------------------------------------------------------------------------- filters


def select(now: float = NOW, **kw: object) -> set[str]:
    return by_id(mq.QueueFilter(**kw).select(sample(), now))  # type: ignore[arg-type]


def test_empty_filter_selects_everything() -> None:
    """No criteria: is_empty() and every message selected."""
    assert mq.QueueFilter().is_empty()
    assert select() == by_id(sample())


def test_sender_exact_is_case_insensitive_and_whole() -> None:
    """An exact sender matches case-insensitively and never as a substring."""
    assert select(senders=("ALICE@example.net",)) == {"123CA20C5DA", "4jfdwk3gr6zJ9HV"}
    assert select(senders=("alice@example",)) == set()


def test_sender_glob_and_null_sender() -> None:
    """Globs match; '<>' selects bounces shown as MAILER-DAEMON."""
    assert select(senders=("d*@example.net",)) == {"1438B20C195", "4jfdwk3jnGzJ9HX"}
    assert select(senders=("<>",)) == {"13F0B20C194", "4jfdwk3jHZzJ9HW"}


def test_recipient_and_domain() -> None:
    """--recipient matches any recipient; --domain the recipient domain (a leading @ is ok)."""
    assert select(recipients=("carol@*",)) == {"123CA20C5DA", "4jfdwk3gr6zJ9HV"}
    assert select(domains=("example.net",)) == {"1473320C204", "4jfdwk3kDgzJ9HY"}
    assert select(domains=("@EXAMPLE.NET",)) == {"1473320C204", "4jfdwk3kDgzJ9HY"}
    assert select(domains=("*.org",)) == by_id(sample()) - {"1473320C204", "4jfdwk3kDgzJ9HY"}


def test_reason_substring() -> None:
    """--reason is a case-insensitive substring of a delay_reason."""
    assert select(reasons=("TEMPORARILY SUSPENDED",)) == {"14C0120C3A0"}
    assert len(select(reasons=("refused",))) == 8


def test_recipient_criteria_must_hold_for_the_same_recipient() -> None:
    """--recipient and --reason combine per recipient, not across recipients."""
    held = select(recipients=("hold@example.org",))
    assert held == {"1438B20C195", "4jfdwk3jnGzJ9HX"}
    assert select(recipients=("hold@example.org",), reasons=("refused",)) == set()


def test_queue_and_queue_ids() -> None:
    """--queue selects by queue name, explicit ids by id; both must hold."""
    assert select(queues=("hold", "maildrop")) == {"1438B20C195", "4jfdwk3jnGzJ9HX", "13F0B20C194"}
    assert select(queue_ids=("13F0B20C194", "123CA20C5DA"), queues=("deferred",)) == {"123CA20C5DA"}


def test_age_bounds() -> None:
    """older_than is inclusive, younger_than exclusive, measured from arrival_time."""
    assert len(select(older_than=7200.0)) == 7  # the 7 that arrived at ...357
    assert len(select(younger_than=7200.0)) == 3
    assert select(older_than=3 * 3600.0) == set()
    assert len(select(older_than=3600.0, younger_than=3 * 3600.0)) == 10


def test_bad_filter_values_name_the_field() -> None:
    """Unknown queue, malformed queue id and negative age are ValueErrors naming the field."""
    with pytest.raises(ValueError, match="queue"):
        mq.QueueFilter(queues=("bogus",))
    with pytest.raises(ValueError, match="queue id"):
        mq.QueueFilter(queue_ids=("../x",))
    with pytest.raises(ValueError, match="older_than"):
        mq.QueueFilter(older_than=-1)


def test_select_deduplicates_queue_ids() -> None:
    """A message listed twice (it moved queues during the listing) is selected once."""
    m = sample()[1]
    assert mq.QueueFilter().select([m, m], NOW) == [m]


# --------------------------------------------------------------------------- postcat

POSTCAT = """\
*** ENVELOPE RECORDS deferred/5/5AE3620C1D3 ***
message_size:             310             741               2               0             310               0
message_arrival_time: Wed Dec  2 13:29:49 2026
sender: alice@example.net
named_attribute: client_address=127.0.0.1
original_recipient: bob@example.org
recipient: bob@example.org
*** MESSAGE CONTENTS deferred/5/5AE3620C1D3 ***
Received: from [127.0.0.1] (localhost [127.0.0.1])
\tby mx.test.invalid (Postfix) with ESMTP id 5AE3620C1D3;
\tWed,  2 Dec 2026 13:29:49 +0000 (UTC)
Subject: one
From: alice@example.net

body text here
*** HEADER EXTRACTED deferred/5/5AE3620C1D3 ***
*** MESSAGE CONTENTS deferred/5/5AE3620C1D3 ***
*** HEADER EXTRACTED deferred/5/5AE3620C1D3 ***
*** MESSAGE FILE END deferred/5/5AE3620C1D3 ***
"""


def test_postcat_sections() -> None:
    """Envelope records, unfolded headers and the body come apart at postcat's markers."""
    view = mq.parse_postcat(POSTCAT, with_body=True)
    assert view.queue_path == "deferred/5/5AE3620C1D3"
    assert view.queue_name == "deferred"
    assert ("sender", "alice@example.net") in view.envelope
    assert ("recipient", "bob@example.org") in view.envelope
    fields = view.header_fields()
    assert fields[0][0] == "Received" and "id 5AE3620C1D3;" in fields[0][1]
    assert ("Subject", "one") in fields
    # a body line imitating postcat's markers stays part of the body
    assert view.body is not None and view.body.startswith("body text here\n*** HEADER")


def test_postcat_without_body_hides_it() -> None:
    """with_body=False leaves body None even when postcat printed one."""
    view = mq.parse_postcat(POSTCAT, with_body=False)
    assert view.body is None
    assert view.headers.endswith("From: alice@example.net")


def test_postcat_garbage_is_an_error() -> None:
    """Output without an envelope section raises QueueParseError."""
    with pytest.raises(mq.QueueParseError):
        mq.parse_postcat("postcat: fatal: whatever\n", with_body=False)


# --------------------------------------------------------------------------- postsuper / fmt


def test_postsuper_summary_and_warnings() -> None:
    """postsuper's 'Deleted: N message(s)' line is the count; warnings are collected."""
    err = (
        "postsuper: 5AE3620C1D3: removed\n"
        "postsuper: warning: invalid mail queue id: bad/id\n"
        "postsuper: Deleted: 1 message\n"
    )
    res = parse_postsuper("delete", 2, err)
    assert (res.requested, res.affected) == (2, 1)
    assert res.warnings == ("invalid mail queue id: bad/id",)
    assert parse_postsuper("hold", 3, "postsuper: Placed on hold: 0 messages\n").affected == 0
    assert parse_postsuper("requeue", 1, "postsuper: ABCDEF123: requeued\n").affected == 1


def test_formatting_helpers() -> None:
    """Ages and sizes render compactly; shorten adds an ellipsis."""
    assert [mq.format_age(s) for s in (5, 90, 7200, 3 * 86400)] == ["5s", "1m", "2h", "3d"]
    assert [mq.format_size(n) for n in (310, 4300, 12 * 2**20)] == ["310", "4.2K", "12M"]
    assert mq.shorten("abcdef", 4) == "abc…"


def test_short_reason_drops_postfix_boilerplate() -> None:
    """Table reasons lose 'delivery temporarily suspended', 'connect to', '[ip]' and the reply tail."""
    assert (
        mq.short_reason(
            "delivery temporarily suspended: connect to 127.0.0.1[127.0.0.1]:25: Connection refused"
        )
        == "127.0.0.1:25: Connection refused"
    )
    reason = (
        "host mx.example.org[192.0.2.1] said: 450 4.2.0 Mailbox busy (in reply to RCPT TO command)"
    )
    assert mq.short_reason(reason) == "host mx.example.org[192.0.2.1] said: 450 4.2.0 Mailbox busy"
    assert mq.short_reason(reason, 20) == "host mx.example.org…"


def test_missing_tool_and_config_dir_errors(tmp_path: Path) -> None:
    """A tool that is not installed is kind 'missing'; a dir without main.cf is 'config'."""
    q = PostfixQueue(str(tmp_path))
    with pytest.raises(QueueOpsError, match="not found: is Postfix installed") as info:
        q._run("pfm-no-such-postfix-tool", [])
    assert info.value.kind == "missing"
    with pytest.raises(QueueOpsError, match="--postfix-config") as info:
        q._run("sh", [])
    assert info.value.kind == "config"


@pytest.mark.parametrize(
    ("stderr", "kind"),
    [
        ("postsuper: fatal: use of this command is reserved for the superuser\n", "permission"),
        ("postcat: fatal: open queue file 5AE3620C1D3: Permission denied\n", "permission"),
        ("postqueue: fatal: open /nonexistent/main.cf: No such file or directory\n", "config"),
        ("postqueue: fatal: Queue report unavailable - mail system is down\n", "failed"),
        (
            "postsuper: fatal: open logfile '/x/maillog': cannot open file: Permission denied\n",
            "failed",
        ),
    ],
)
def test_postfix_failures_are_classified(stderr: str, kind: str) -> None:
    """Postfix's fatal lines map to error kinds, keeping Postfix's own words."""
    if kind == "config" and os.geteuid() != 0:
        kind = "permission"
    proc = subprocess.CompletedProcess(["postqueue"], 69, b"", stderr.encode())
    err = PostfixQueue("/etc/postfix")._fail("postqueue", proc)
    assert err.kind == kind
    assert stderr.split("fatal: ")[1].strip() in str(err)
