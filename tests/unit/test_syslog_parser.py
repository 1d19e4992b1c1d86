"""Table tests for the pure syslog line splitter shared by the Postfix and Dovecot parsers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metricsd.parsers.syslog import SyslogLine, parse_syslog_line, program_and_message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "Nov 24 01:25:21 mx1 postfix/smtpd[14690]: connect from localhost[127.0.0.1]\n",
            SyslogLine(
                "Nov 24 01:25:21",
                "mx1",
                "postfix/smtpd",
                14690,
                "connect from localhost[127.0.0.1]",
            ),
        ),
        (
            "Nov  4 01:25:21 mail.example.org postfix/submission/smtpd[7]: EB842162601: client=h[1.2.3.4]",
            SyslogLine(
                "Nov  4 01:25:21",
                "mail.example.org",
                "postfix/submission/smtpd",
                7,
                "EB842162601: client=h[1.2.3.4]",
            ),
        ),
        (
            "Nov 04 01:25:21 mx1 postfix-out/relay/smtp[99]: x: y\r\n",
            SyslogLine("Nov 04 01:25:21", "mx1", "postfix-out/relay/smtp", 99, "x: y"),
        ),
        (
            "2026-11-24T01:25:21.123456+00:00 mx1 postfix/qmgr[14634]: EB842162601: removed",
            SyslogLine(
                "2026-11-24T01:25:21.123456+00:00",
                "mx1",
                "postfix/qmgr",
                14634,
                "EB842162601: removed",
            ),
        ),
        (
            "2026-11-24T01:25:21Z mx1 dovecot: imap-login: Login: user=<u>",
            SyslogLine(
                "2026-11-24T01:25:21Z", "mx1", "dovecot", None, "imap-login: Login: user=<u>"
            ),
        ),
        (
            "Nov 24 01:25:21 mx1 postfix/smtpd[1]:",
            SyslogLine("Nov 24 01:25:21", "mx1", "postfix/smtpd", 1, ""),
        ),
        (
            "Nov 24 01:25:21 2001:db8::1 postfix/smtpd[1]: connect from h[2001:db8::2]",
            SyslogLine(
                "Nov 24 01:25:21", "2001:db8::1", "postfix/smtpd", 1, "connect from h[2001:db8::2]"
            ),
        ),
    ],
)
def test_splits_supported_shapes(line: str, expected: SyslogLine) -> None:
    """Traditional, zero-padded maillog_file and RFC 3339 lines split into their five parts."""
    assert parse_syslog_line(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "",
        "\n",
        "short line",
        "Nov 24 01:25:21 mx1",
        "Nov 24 01:25:21 mx1 no colon here at all",
        "Nov 24 01:25:21 mx1 prog[abc]: bad pid",
        "Nov 24 01:25:21 mx1 [12]: no program",
        "24 Nov 2026 01:25:21 mx1 prog[1]: other date order",
        "2026/11/24 01:25:21 mx1 prog[1]: not RFC 3339",
        "Nov 24 01:25:21  prog[1]: empty host",
    ],
)
def test_rejects_other_shapes(line: str) -> None:
    """Anything not in an understood shape gives None instead of a wrong split or an error."""
    assert parse_syslog_line(line) is None


def test_repeated_tags_give_equal_results() -> None:
    """The tag cache returns the same program and pid as a first parse."""
    line = "Nov 24 01:25:21 mx1 postfix/smtpd[42]: connect from h[1.2.3.4]"
    first = parse_syslog_line(line)
    again = parse_syslog_line(line.replace("connect", "disconnect"))
    assert first is not None and again is not None
    assert (first.program, first.pid) == (again.program, again.pid) == ("postfix/smtpd", 42)
    assert again.message.startswith("disconnect")


@given(st.text(max_size=120))
def test_program_and_message_agrees_with_parse_syslog_line(line: str) -> None:
    """The counters' fast splitter accepts exactly what parse_syslog_line accepts, same parts."""
    full = parse_syslog_line(line)
    fast = program_and_message(line)
    if full is None:
        assert fast is None
    else:
        assert fast == (full.program, full.message)


@pytest.mark.parametrize(
    "line",
    [
        "Nov 24 01:25:21 mx1 postfix/smtpd[14690]: connect from localhost[127.0.0.1]",
        "Nov  4 01:25:21 mx1 postfix/qmgr[1]: ABC: removed\n",
        "2026-11-24T01:25:21.123456+00:00 mx1 postfix/submission/smtpd[7]: lost connection",
        "Nov 24 01:25:21 mx1 dovecot: imap-login: Login: user=<a>",
        "Nov 24 01:25:21 mx1 prog[1]:",
    ],
)
def test_program_and_message_on_real_shapes(line: str) -> None:
    """Real line shapes split the same way by both functions."""
    full = parse_syslog_line(line)
    assert full is not None
    assert program_and_message(line) == (full.program, full.message)
