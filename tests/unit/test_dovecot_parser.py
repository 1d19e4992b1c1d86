"""Table tests for the Dovecot log parser and its counters, one row per line family."""

from __future__ import annotations

import pytest

from metricsd.dovecot_counters import DovecotCounters
from metricsd.parsers.dovecot import DovecotEvent, parse_dovecot_line, parse_dovecot_message

T = "Nov 24 06:48:39 "
LIP = "lip=127.0.0.1"

# (line, family, extra expected attributes)
FAMILIES: list[tuple[str, str, dict[str, object]]] = [
    (
        T + "imap-login: Info: Login: user=<u@example.org>, method=PLAIN, rip=127.0.1.33, "
        f"{LIP}, mpid=17751, session=<bGi4GQBhDbh/AAEh>",
        "login.ok.imap",
        {"service": "imap", "mechanism": "PLAIN", "tls": "plain"},
    ),
    (
        T + "imap-login: Info: Login: user=<u@example.org>, method=PLAIN, rip=127.0.1.33, "
        f"{LIP}, mpid=17751, TLS, session=<x>",
        "login.ok.imap",
        {"tls": "TLS"},
    ),
    (
        T + "pop3-login: Info: Login: user=<u>, method=CRAM-MD5, rip=10.0.0.1, "
        f"{LIP}, mpid=1, secured, session=<x>",
        "login.ok.pop3",
        {"service": "pop3", "mechanism": "CRAM-MD5", "tls": "secured"},
    ),
    (
        T + "submission-login: Info: Login: user=<u>, method=PLAIN, rip=1.2.3.4, "
        f"{LIP}, mpid=17753, session=<x>",
        "login.ok.submission",
        {"service": "submission"},
    ),
    (
        T
        + "imap-login: Info: Disconnected: Connection closed (auth failed, 1 attempts in 1 secs): "
        f"user=<u>, method=PLAIN, rip=127.0.1.34, {LIP}, TLS: Connection closed, session=<x>",
        "login.end.imap.auth_failed",
        {"reason": "auth_failed", "ending": "disconnected", "tls": "TLS", "mechanism": "PLAIN"},
    ),
    (
        T + "imap-login: Info: Disconnected: Connection closed (no auth attempts in 0 secs): "
        f"user=<>, rip=127.0.1.23, {LIP}, session=<x>",
        "login.end.imap.no_auth_attempts",
        {"ending": "disconnected", "mechanism": "none"},
    ),
    (
        T + "imap-login: Info: Disconnected: Aborted login by logging out (no auth attempts in 0 "
        f"secs): user=<>, rip=127.0.1.23, {LIP}, session=<x>",
        "login.end.imap.no_auth_attempts",
        {"ending": "aborted"},
    ),
    (
        T + "imap-login: Info: Disconnected: Connection closed (client didn't finish SASL auth, "
        f"waited 0 secs): user=<>, method=PLAIN, rip=127.0.1.38, {LIP}, session=<x>",
        "login.end.imap.sasl_unfinished",
        {},
    ),
    (
        T + "imap-login: Info: Disconnected: Connection closed (internal failure, 1 successful "
        f"auths): user=<u>, method=PLAIN, rip=127.0.1.4, {LIP}, session=<x>",
        "login.end.imap.internal_failure",
        {},
    ),
    (
        T + "submission-login: Info: Disconnected: Connection closed (unfinished AUTH command) "
        f"(auth failed, 2 attempts in 5 secs): user=<u>, method=LOGIN, rip=1.2.3.4, {LIP}, "
        "session=<x>",
        "login.end.submission.auth_failed",
        {"mechanism": "LOGIN"},
    ),
    (
        T + "imap-login: Info: Disconnected (disconnected before auth was ready, waited 0 secs): "
        f"user=<>, rip=1.2.3.4, {LIP}, session=<x>",
        "login.end.imap.disconnected_before_auth",
        {"ending": "disconnected"},
    ),
    (
        T + "imap-login: Info: Aborted login (tried to use disallowed plaintext auth): user=<>, "
        f"rip=1.2.3.4, {LIP}, session=<x>",
        "login.end.imap.plaintext_disallowed",
        {"ending": "aborted"},
    ),
    (
        T + "imap-login: Info: Login aborted: Connection closed (auth failed, 3 attempts in 15 "
        f"secs) (auth_failed): user=<u>, method=PLAIN, rip=1.2.3.4, {LIP}, session=<x>",
        "login.end.imap.auth_failed",
        {"ending": "aborted"},
    ),
    (
        T + "imap-login: Info: Maximum number of connections from user+IP exceeded "
        f"(mail_max_userip_connections=10): user=<u>, method=PLAIN, rip=1.2.3.4, {LIP}",
        "login.end.imap.max_connections",
        {},
    ),
    (
        T + "pop3-login: Info: Disconnected: Inactivity (no auth attempts in 180 secs): user=<>, "
        f"rip=1.2.3.4, {LIP}, session=<x>",
        "login.end.pop3.no_auth_attempts",
        {},
    ),
    (
        T
        + "auth: Info: passwd-file(u@example.net,127.0.1.5,<ZGW4GQBh/9R/AAEF>): Password mismatch",
        "passdb.password_mismatch",
        {"passdb": "passwd-file"},
    ),
    (
        T + "auth: Info: passwd-file(ghost@example.org,127.0.1.57,<Roi6>): unknown user",
        "passdb.unknown_user",
        {},
    ),
    (
        T + "auth-worker(123): Info: sql(u,1.2.3.4,<s>): Password mismatch (given password: x)",
        "passdb.password_mismatch",
        {"passdb": "sql"},
    ),
    (
        T + "auth-worker(9): Info: pam(u,1.2.3.4): pam_authenticate() failed: Authentication "
        "failure (Password mismatch?)",
        "passdb.password_mismatch",
        {"passdb": "pam"},
    ),
    (
        T + "imap(u@example.net)<17761><iuS4GQBhAZ9/AAEd>: Info: Disconnected: Logged out in=12 "
        "out=477 deleted=0 expunged=0 trashed=0 hdr_count=0 hdr_bytes=0",
        "session.end.imap.logged_out",
        {"bytes_in": 12, "bytes_out": 477},
    ),
    (
        T + "imap(u)<1><s>: Info: Disconnected: Connection closed (FETCH finished 0.001 secs ago) "
        "in=2110 out=1268 deleted=0",
        "session.end.imap.connection_closed",
        {"bytes_in": 2110, "bytes_out": 1268},
    ),
    (
        T
        + "pop3(u)<17763><mfO4>: Info: Disconnected: Logged out top=0/0, retr=0/0, del=0/0, size=0",
        "session.end.pop3.logged_out",
        {"bytes_in": None, "bytes_out": None},
    ),
    (
        T + "submission(u)<17753><72m4>: Info: Disconnected: Failed to connect to relay server "
        "(connect) (state=GREETING) in=0 out=86",
        "session.end.submission.relay_connect_failed",
        {"bytes_in": 0, "bytes_out": 86},
    ),
    (
        T + "imap(u): Info: Disconnected: Inactivity - no input for 1800 secs in=1 out=2",
        "session.end.imap.inactivity",
        {},
    ),
    (
        T + "imap(u): Info: Connection closed in=0 out=405",
        "session.end.imap.connection_closed",
        {"bytes_out": 405},
    ),
    (
        T + "submission(u)<17753><72m4>: Error: smtp-client: conn 127.0.0.1:10499 [1]: "
        "connect(127.0.0.1:10499) failed: Connection refused",
        "error.submission",
        {"level": "error"},
    ),
    (T + "imap-login: Warning: Auth process not responding", "warning.imap-login", {}),
    (T + "auth: Fatal: passwd-file /x: open() failed", "fatal.auth", {"level": "fatal"}),
    (T + "imap(u)<1><s>: Panic: file mail-index.c: assertion failed", "panic.imap", {}),
    (T + "auth: Debug: auth client connected (pid=1)", "debug.auth", {"level": "debug"}),
    (
        T + "master: Info: Dovecot v2.3.19.1 (9b53102964) starting up for imap, pop3 (core dumps "
        "disabled)",
        "master.start",
        {},
    ),
    (T + "master: Warning: Killed with signal 15 (by pid=1 uid=0 code=kill)", "master.other", {}),
    (T + "lmtp(4242): Info: Connect from local", "connect.lmtp", {}),
    (
        T + "lmtp(4242): Info: Disconnect from local: Client has quit the connection (state=READY)",
        "disconnect.lmtp",
        {},
    ),
    (
        T + "lmtp(u@x)<4242><Vk2Y>: Info: msgid=<a@b>: saved mail to INBOX",
        "delivery.lmtp.saved",
        {"reason": "saved"},
    ),
    (
        T + "lmtp(u@x)<4242><Vk2Y>: Info: sieve: msgid=<a@b>: stored mail into mailbox 'Junk'",
        "delivery.lmtp.saved",
        {},
    ),
    (
        T + "imap-login: Info: proxy(u): started proxying to 10.0.0.2:143 (0.01 secs)",
        "login.proxy.imap",
        {},
    ),
    (
        T + "imap-login: Info: something Dovecot may say one day",
        "unsupported",
        {"process": "imap-login"},
    ),
    (T + "auth: Info: no parenthesis here", "unsupported", {"process": "auth"}),
    ("garbage", "unsupported", {"process": "unknown"}),
]


@pytest.mark.parametrize(("line", "family", "attrs"), FAMILIES)
def test_classifies_each_family(line: str, family: str, attrs: dict[str, object]) -> None:
    """Each Dovecot line family is recognised with its service, mechanism, TLS, reason, bytes."""
    ev = parse_dovecot_line(line)
    assert ev is not None
    assert ev.family == family
    for name, value in attrs.items():
        assert getattr(ev, name) == value, name


def _syslog_form(line: str, stamp: str = "Nov  4 06:48:39", pid: str = "[42]") -> str:
    """The same line as rsyslog writes it: `TS HOST dovecot[PID]: proc: text` without `Info: `."""
    rest = line[len(T) :].replace(": Info: ", ": ", 1)
    return f"{stamp} mx1.example.org dovecot{pid}: {rest}"


@pytest.mark.parametrize(("line", "family", "attrs"), FAMILIES[:-1])
@pytest.mark.parametrize(
    ("stamp", "pid"),
    [
        ("Nov  4 06:48:39", "[42]"),
        ("2026-11-24T06:48:39.123456+01:00", ""),
        ("Nov 04 06:48:39", ""),
    ],
)
def test_syslog_form_classifies_the_same(
    line: str, family: str, attrs: dict[str, object], stamp: str, pid: str
) -> None:
    """Under syslog (any timestamp style, with or without pid) each family parses identically."""
    ev = parse_dovecot_line(_syslog_form(line, stamp, pid))
    assert ev is not None
    assert ev.family == family
    for name, value in attrs.items():
        assert getattr(ev, name) == value, name


@pytest.mark.parametrize(
    "line",
    [
        "Nov 24 06:48:39 mx1 postfix/smtpd[123]: connect from unknown[1.2.3.4]",
        "2026-11-24T06:48:39.1+00:00 mx1 sshd[9]: Accepted publickey for root",
    ],
)
def test_other_programs_are_not_dovecot(line: str) -> None:
    """Syslog lines of other programs give None, so the caller routes them elsewhere."""
    assert parse_dovecot_line(line) is None


def test_own_format_with_iso_timestamp_and_none() -> None:
    """Dovecot's log_timestamp may be ISO-like or empty; the process is still found."""
    ev1 = parse_dovecot_line("2026-11-24 06:48:39 auth: Info: passwd-file(u,1.2.3.4): unknown user")
    ev2 = parse_dovecot_line("auth: Info: passwd-file(u,1.2.3.4): unknown user")
    assert ev1 is not None and ev2 is not None
    assert ev1.family == ev2.family == "passdb.unknown_user"


def test_user_name_cannot_fake_tls_or_mechanism() -> None:
    """Client-controlled user names containing `, TLS,` or `method=` do not change the labels."""
    ev = parse_dovecot_line(
        T + "imap-login: Info: Login: user=<a, method=EVIL, TLS, x>, method=PLAIN, rip=1.2.3.4, "
        f"{LIP}, mpid=1, session=<x>"
    )
    assert ev is not None
    assert (ev.mechanism, ev.tls) == ("PLAIN", "plain")


def test_mechanism_label_is_bounded() -> None:
    """A mechanism that does not look like a SASL name becomes `other`."""
    ev = parse_dovecot_line(
        T + "imap-login: Info: Login: user=<u>, method=x$y, rip=1.2.3.4, "
        f"{LIP}, mpid=1, session=<x>"
    )
    assert ev is not None
    assert ev.mechanism == "other"


def test_event_keeps_no_user_or_address() -> None:
    """The classified event carries no user name, address or password (safe to log)."""
    ev = parse_dovecot_line(
        T + "auth-worker(1): Info: sql(secretuser,203.0.113.9): Password mismatch (given password: "
        "hunter2)"
    )
    assert ev is not None
    text = repr(ev)
    assert "secretuser" not in text and "203.0.113.9" not in text and "hunter2" not in text


def test_message_entry_point_matches_line_entry_point() -> None:
    """parse_dovecot_message on the text after `dovecot:` equals parsing the whole line."""
    msg = "pop3-login: Login: user=<u>, method=PLAIN, rip=1.2.3.4, lip=1.2.3.5, mpid=1, session=<x>"
    assert parse_dovecot_message(msg) == parse_dovecot_line(f"{T}mx dovecot: {msg}")


def test_counters_aggregate_labels_and_flat_names() -> None:
    """Counters sum logins, failures, bytes and messages under bounded label tuples."""
    c = DovecotCounters()
    for line, _family, _attrs in FAMILIES:
        c.feed_line(line)
    assert c.feed_line("Nov 24 06:48:39 mx1 postfix/qmgr[1]: ABC: removed") is None
    assert c.lines == len(FAMILIES)
    assert c.logins[("imap", "PLAIN", "TLS")] == 1
    assert c.login_failures()[("imap", "auth_failed")] == 2
    assert c.login_failures()[("submission", "auth_failed")] == 1
    assert c.session_bytes_in["imap"] == 12 + 2110 + 1
    assert c.session_bytes_out["submission"] == 86
    assert c.messages[("master", "warning")] == 1
    assert c.deliveries[("lmtp", "saved")] == 2
    assert c.unsupported == {"imap-login": 1, "auth": 1, "unknown": 1}
    flat = c.flat()
    assert flat["login.ok.imap.TLS"] == 1
    assert flat["login.ok.pop3.secured"] == 1
    assert flat["login.end.imap.aborted.no_auth_attempts"] == 1
    assert flat["error.submission"] == 1
    assert flat["warning.master"] == 1


def test_event_supported_flag() -> None:
    """Only the `unsupported` family reports supported=False."""
    assert DovecotEvent(family="unsupported", process="x", level="info").supported is False
    assert DovecotEvent(family="master.start", process="master", level="info").supported
