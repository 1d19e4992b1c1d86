"""Table tests for the pure Postfix message classifier, one real corpus line per family."""

from __future__ import annotations

import pytest

from metricsd.counters import PostfixCounters
from metricsd.parsers.classify import (
    DEFERRAL_REASONS,
    REJECT_REASONS,
    classify_cleanup_reject,
    classify_deferral,
    classify_reject,
)
from metricsd.parsers.postfix import (
    PostfixEvent,
    family,
    is_postfix_program,
    parse_commands,
    parse_postfix,
    service_of,
)
from metricsd.parsers.syslog import parse_syslog_line

# (real line from shared/corpus/postfix real.ref.json "examples", its families.md key)
REAL_FAMILIES = [
    (
        "Nov 24 01:26:41 mx1 postfix/bounce[14779]: 31433162A23: sender delay notification: 31A63162151",
        "bounce:sender_delay_notice",
    ),
    (
        "Nov 24 01:25:23 mx1 postfix/bounce[14782]: D5CC71629B7: sender non-delivery notification: E7E741629E7",
        "bounce:sender_ndn",
    ),
    (
        "Nov 24 01:25:21 mx1 postfix/cleanup[14708]: EB842162601: message-id=<395f.0005.0030@client.rig.test>",
        "cleanup:message_id",
    ),
    (
        "Nov 24 01:25:27 mx1 postfix/cleanup[14879]: 63FB4162BB4: reject: header Subject: RIG-REJECT-ME offer 23 from localhost[127.0.0.1]; from=<promo@accept.test> to=<user@accept.test> proto=ESMTP helo=<vm>: 5.7.1 message content rejected by rig header_checks",
        "cleanup:reject",
    ),
    (
        "Nov 24 01:25:38 mx1 postfix/cleanup[15060]: warning: mail_stream_cleanup: close error",
        "cleanup:warning",
    ),
    (
        "Nov 24 01:25:21 mx1 postfix/discard[14712]: EB842162601: to=<user@discard.test>, relay=none, delay=0.05, delays=0.04/0.02/0/0, dsn=2.0.0, status=sent (rig discard domain)",
        "discard:status=sent",
    ),
    (
        "Nov 24 01:26:01 mx1 postfix/error[15837]: E0D4E162D29: to=<user@down.test>, relay=none, delay=23, delays=23/0.03/0/0, dsn=4.4.1, status=deferred (delivery temporarily suspended: connect to 127.0.0.1[127.0.0.1]:10259: Connection refused)",
        "error:status=deferred",
    ),
    (
        "Nov 24 01:25:32 mx1 postfix/local[14974]: 6A8351625E6: to=<root@rig.test>, orig_to=<root>, relay=local, delay=0.01, delays=0/0.01/0/0, dsn=2.0.0, status=sent (delivered to file: /dev/null)",
        "local:status=sent",
    ),
    (
        "Nov 24 01:25:21 mx1 postfix/master[14632]: daemon started -- version 3.7.11, configuration /etc/postfix",
        "master:daemon_started",
    ),
    (
        "Nov 24 01:25:26 mx1 postfix/pickup[14633]: 42646162A54: uid=0 from=<root@rig.test>",
        "pickup:uid_from",
    ),
    (
        "Nov 24 01:25:21 mx1 postfix/postfix-script[14630]: starting the Postfix mail system",
        "postfix-script:starting",
    ),
    (
        "Nov 24 01:29:22 mx1 postfix/postfix-script[16666]: the Postfix mail system is running: PID: 14632",
        "postfix-script:status_running",
    ),
    (
        "Nov 24 01:29:23 mx1 postfix/postfix-script[16814]: stopping the Postfix mail system",
        "postfix-script:stopping",
    ),
    (
        "Nov 24 01:29:23 mx1 postfix/postfix-script[16817]: waiting for the Postfix mail system to terminate",
        "postfix-script:waiting_terminate",
    ),
    ("Nov 24 01:29:14 mx1 postfix/postsuper[16539]: F1628162574: expired", "postsuper:expired"),
    (
        "Nov 24 01:29:14 mx1 postfix/postsuper[16447]: 5BB36162A7D: placed on hold",
        "postsuper:placed_on_hold",
    ),
    ("Nov 24 01:29:14 mx1 postfix/postsuper[16494]: C240C162C88: removed", "postsuper:removed"),
    (
        "Nov 24 01:29:14 mx1 postfix/postsuper[16447]: Placed on hold: 1 message",
        "postsuper:summary",
    ),
    (
        "Nov 24 01:25:21 mx1 postfix/qmgr[14634]: EB842162601: from=<news@accept.test>, size=1139, nrcpt=1 (queue active)",
        "qmgr:active_insert",
    ),
    (
        "Nov 24 01:29:14 mx1 postfix/qmgr[14634]: F1628162574: from=<billing@accept.test>, status=force-expired, returned to sender",
        "qmgr:expired",
    ),
    ("Nov 24 01:25:21 mx1 postfix/qmgr[14634]: EB842162601: removed", "qmgr:removed"),
    (
        "Nov 24 01:25:23 mx1 postfix/relay/smtp[14757]: 3088416297B: to=<user@partner.test>, relay=127.0.0.1[127.0.0.1]:10255, delay=0.03, delays=0.01/0.01/0/0, dsn=2.0.0, status=sent (250 2.0.0 Ok)",
        "relay/smtp:status=sent",
    ),
    (
        "Nov 24 01:25:37 mx1 postfix/smtp[14955]: connect to 127.0.0.1[127.0.0.1]:10259: Connection refused",
        "smtp:connect_refused",
    ),
    (
        "Nov 24 01:25:23 mx1 postfix/smtp[14777]: D5CC71629B7: to=<2user@bounce.test>, relay=127.0.0.1[127.0.0.1]:10253, delay=0.06, delays=0.01/0/0.02/0.03, dsn=5.1.1, status=bounced (host 127.0.0.1[127.0.0.1] said: 550 5.1.1 No such user here (in reply to RCPT TO command))",
        "smtp:status=bounced",
    ),
    (
        "Nov 24 01:25:23 mx1 postfix/smtp[14749]: 3088416297B: to=<user@defer.test>, relay=127.0.0.1[127.0.0.1]:10252, delay=0.02, delays=0.01/0/0/0.01, dsn=4.3.0, status=deferred (host 127.0.0.1[127.0.0.1] said: 450 4.3.0 Error: command failed (in reply to RCPT TO command))",
        "smtp:status=deferred",
    ),
    (
        "Nov 24 01:25:22 mx1 postfix/smtp[14734]: 3CD9916284C: to=<alice@accept.test>, orig_to=<team@alias.test>, relay=127.0.0.1[127.0.0.1]:10250, delay=0.12, delays=0.04/0.07/0.01/0, dsn=2.0.0, status=sent (250 2.0.0 Ok)",
        "smtp:status=sent",
    ),
    (
        "Nov 24 01:25:21 mx1 postfix/smtpd[14703]: EB842162601: client=localhost[127.0.0.1]",
        "smtpd:client",
    ),
    (
        "Nov 24 01:25:21 mx1 postfix/smtpd[14690]: connect from localhost[127.0.0.1]",
        "smtpd:connect",
    ),
    (
        "Nov 24 01:25:21 mx1 postfix/smtpd[14703]: disconnect from localhost[127.0.0.1] helo=1 mail=1 rcpt=1 data=1 quit=1 commands=5",
        "smtpd:disconnect",
    ),
    (
        "Nov 24 01:25:25 mx1 postfix/smtpd[14716]: lost connection after EHLO from localhost[127.0.0.1]",
        "smtpd:lost_connection",
    ),
    (
        "Nov 24 01:25:22 mx1 postfix/smtpd[14717]: NOQUEUE: reject: RCPT from localhost[127.0.0.1]: 550 5.1.1 <ghost39@rig.test>: Recipient address rejected: User unknown in local recipient table; from=<news@accept.test> to=<ghost39@rig.test> proto=ESMTP helo=<vm>",
        "smtpd:noqueue_reject:RCPT",
    ),
    (
        "Nov 24 01:25:24 mx1 postfix/smtpd[14720]: 229FE1629EE: reject: RCPT from localhost[127.0.0.1]: 550 5.1.1 <typo18@accept.test>: Recipient address rejected: User unknown in virtual mailbox table; from=<news@accept.test> to=<typo18@accept.test> proto=ESMTP helo=<vm>",
        "smtpd:qid_reject:RCPT",
    ),
    (
        "Nov 24 01:25:22 mx1 postfix/smtpd[14716]: warning: localhost[127.0.0.1]: SASL PLAIN authentication failed: (reason unavailable), sasl_username=admin2",
        "smtpd:sasl_auth_failed",
    ),
    (
        "Nov 24 01:25:38 mx1 postfix/smtpd[15038]: warning: 47B2D16257A: queue file size limit exceeded",
        "smtpd:size_limit_exceeded",
    ),
    (
        "Nov 24 01:25:42 mx1 postfix/smtpd[14706]: timeout after CONNECT from localhost[127.0.0.1]",
        "smtpd:timeout",
    ),
    (
        "Nov 24 01:25:33 mx1 postfix/smtpd[14949]: Anonymous TLS connection established from localhost[127.0.0.1]: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256",
        "smtpd:tls_established_in",
    ),
    (
        "Nov 24 01:25:23 mx1 postfix/submission/smtpd[14713]: 040D816297D: client=localhost[127.0.0.1], sasl_method=LOGIN, sasl_username=bob",
        "submission/smtpd:client_sasl",
    ),
    (
        "Nov 24 01:25:22 mx1 postfix/submission/smtpd[14713]: connect from localhost[127.0.0.1]",
        "submission/smtpd:connect",
    ),
    (
        "Nov 24 01:25:22 mx1 postfix/submission/smtpd[14713]: disconnect from localhost[127.0.0.1] ehlo=2 starttls=1 auth=0/1 quit=1 commands=4/5",
        "submission/smtpd:disconnect",
    ),
    (
        "Nov 24 01:25:22 mx1 postfix/submission/smtpd[14740]: NOQUEUE: reject: RCPT from localhost[127.0.0.1]: 554 5.7.1 <localhost[127.0.0.1]>: Client host rejected: Access denied; from=<mallory@accept.test> to=<user@accept.test> proto=ESMTP helo=<vm>",
        "submission/smtpd:noqueue_reject:RCPT",
    ),
    (
        "Nov 24 01:25:22 mx1 postfix/submission/smtpd[14713]: warning: localhost[127.0.0.1]: SASL LOGIN authentication failed: (reason unavailable), sasl_username=bob",
        "submission/smtpd:sasl_auth_failed",
    ),
    (
        "Nov 24 01:25:22 mx1 postfix/submission/smtpd[14713]: Anonymous TLS connection established from localhost[127.0.0.1]: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256",
        "submission/smtpd:tls_established_in",
    ),
    (
        "Nov 24 01:25:22 mx1 postfix/virtual[14727]: 2D120162612: to=<2user@vmail.test>, relay=virtual, delay=0.03, delays=0.02/0.01/0/0, dsn=2.0.0, status=sent (delivered to maildir)",
        "virtual:status=sent",
    ),
]
REAL_FAMILIES_BY = {fam: line for line, fam in REAL_FAMILIES}


def event(line: str) -> PostfixEvent | None:
    """Split a syslog line and classify its Postfix message."""
    parsed = parse_syslog_line(line)
    assert parsed is not None, line
    return parse_postfix(parsed.program, parsed.message)


@pytest.mark.parametrize(("line", "fam"), REAL_FAMILIES, ids=[f for _, f in REAL_FAMILIES])
def test_real_line_of_every_family_is_classified(line: str, fam: str) -> None:
    """Each of the 43 corpus families is recognised from its real example line."""
    ev = event(line)
    assert ev is not None
    assert family(ev) == fam


def test_table_covers_all_43_families() -> None:
    """The table holds one line for each of the 43 families of families.md."""
    assert len({f for _, f in REAL_FAMILIES}) == 43


def test_status_line_fields() -> None:
    """A delivery status line yields qid, relay, dsn, status, recipient domain and delays."""
    ev = event(REAL_FAMILIES_BY["smtp:status=sent"])
    assert ev is not None
    assert (ev.qid, ev.relay, ev.dsn, ev.status) == (
        "3CD9916284C",
        "127.0.0.1[127.0.0.1]:10250",
        "2.0.0",
        "sent",
    )
    assert ev.domain == "accept.test"
    assert ev.delay == 0.12
    assert ev.delays == (0.04, 0.07, 0.01, 0.0)
    assert ev.reason == ""


@pytest.mark.parametrize(
    ("fam", "reason"),
    [
        ("smtp:status=deferred", "remote_system"),
        ("smtp:status=bounced", "unknown_user"),
        ("error:status=deferred", "connection_refused"),
    ],
)
def test_delivery_problems_are_classified(fam: str, reason: str) -> None:
    """Deferred and bounced status lines carry a classified reason."""
    ev = event(REAL_FAMILIES_BY[fam])
    assert ev is not None
    assert ev.reason == reason


def test_noqueue_reject_fields() -> None:
    """NOQUEUE reject: stage, code, DSN, reason class and recipient domain."""
    ev = event(REAL_FAMILIES_BY["smtpd:noqueue_reject:RCPT"])
    assert ev is not None
    assert (ev.kind, ev.stage, ev.code, ev.dsn, ev.reason, ev.domain) == (
        "noqueue_reject",
        "RCPT",
        "550",
        "5.1.1",
        "unknown_user",
        "rig.test",
    )


def test_qid_reject_keeps_queue_id() -> None:
    """The after-queue-file ``QID: reject:`` form keeps the queue id and the same fields."""
    ev = event(REAL_FAMILIES_BY["smtpd:qid_reject:RCPT"])
    assert ev is not None
    assert (ev.kind, ev.qid, ev.stage, ev.code, ev.reason) == (
        "qid_reject",
        "229FE1629EE",
        "RCPT",
        "550",
        "unknown_user",
    )


def test_client_sasl_fields() -> None:
    """A submission client= line gives SASL method and username."""
    ev = event(REAL_FAMILIES_BY["submission/smtpd:client_sasl"])
    assert ev is not None
    assert (ev.service, ev.qid, ev.sasl_method, ev.sasl_username) == (
        "submission/smtpd",
        "040D816297D",
        "LOGIN",
        "bob",
    )


def test_active_insert_fields() -> None:
    """qmgr active insert gives size and recipient count."""
    ev = event(REAL_FAMILIES_BY["qmgr:active_insert"])
    assert ev is not None
    assert (ev.qid, ev.size, ev.nrcpt) == ("EB842162601", 1139, 1)


def test_disconnect_commands() -> None:
    """Disconnect keeps the command tail; parse_commands gives (name, ok, total)."""
    ev = event(REAL_FAMILIES_BY["submission/smtpd:disconnect"])
    assert ev is not None
    assert parse_commands(ev.commands) == (
        ("ehlo", 2, 2),
        ("starttls", 1, 1),
        ("auth", 0, 1),
        ("quit", 1, 1),
        ("commands", 4, 5),
    )


def test_unknown_command_names_are_bounded() -> None:
    """Command names outside the known set count as ``other``; junk tokens are skipped."""
    assert parse_commands("helo=1 frobnicate=2 junk x=y/z") == (("helo", 1, 1), ("other", 2, 2))


@pytest.mark.parametrize(
    ("program", "message", "fam"),
    [
        (
            "postfix/relay/smtp",
            "ABCDEF123: to=<a@b.example>, relay=mx.b.example[192.0.2.1]:25, delay=1.2, delays=0.1/0/0.5/0.6, dsn=2.0.0, status=sent (250 ok)",
            "relay/smtp:status=sent",
        ),
        (
            "postfix-out/smtp",
            "ABCDEF123: to=<a@b.example>, relay=none, delay=300, delays=0/0/300/0, dsn=4.4.1, status=deferred (connect to mx.b.example[192.0.2.1]:25: Connection timed out)",
            "postfix-out/smtp:status=deferred",
        ),
        (
            "postfix-in/submission/smtpd",
            "connect from unknown[2001:db8::1]",
            "postfix-in/submission/smtpd:connect",
        ),
        (
            "postfix/smtpd",
            "NOQUEUE: reject: RCPT from unknown[2001:db8::1]:4711: 554 5.7.1 Service unavailable; Client host [2001:db8::1] blocked using zen.spamhaus.org; from=<a@b> to=<c@d.example> proto=ESMTP helo=<x>",
            "smtpd:noqueue_reject:RCPT",
        ),
        (
            "postfix/smtpd",
            "NOQUEUE: reject: CONNECT from h[192.0.2.9]: 554 5.7.1 <h[192.0.2.9]>: Client host rejected: Access denied; proto=SMTP",
            "smtpd:noqueue_reject:CONNECT",
        ),
        (
            "postfix/smtpd",
            "4Xy7Zq2mN1z9Kp: reject: END-OF-MESSAGE from h[192.0.2.9]: 552 5.3.4 Message size exceeds fixed limit; from=<a@b> to=<c@d> proto=ESMTP helo=<x>",
            "smtpd:qid_reject:END-OF-MESSAGE",
        ),
        (
            "postfix/smtpd",
            "lost connection after DATA (0 bytes) from h[192.0.2.9]",
            "smtpd:lost_connection",
        ),
        ("postfix/smtpd", "too many errors after RCPT from h[192.0.2.9]", "smtpd:too_many_errors"),
        (
            "postfix/smtpd",
            "warning: hostname h.example does not resolve to address 192.0.2.9",
            "smtpd:warning",
        ),
        (
            "postfix/smtpd",
            "Trusted TLS connection established from h[192.0.2.9]: TLSv1.2 with cipher ECDHE-RSA-AES256-GCM-SHA384 (256/256 bits)",
            "smtpd:tls_established_in",
        ),
        (
            "postfix/smtp",
            "Verified TLS connection established to mx.b.example[192.0.2.1]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)",
            "smtp:tls_established_out",
        ),
        (
            "postfix/smtp",
            "connect to mx.b.example[192.0.2.1]:25: Connection timed out",
            "smtp:connect_timed_out",
        ),
        (
            "postfix/smtp",
            "connect to mx.b.example[2001:db8::25]:25: Network is unreachable",
            "smtp:connect_unreachable",
        ),
        (
            "postfix/qmgr",
            "ABCDEF123: from=<a@b>, status=expired, returned to sender",
            "qmgr:expired",
        ),
        (
            "postfix/cleanup",
            "ABCDEF123: milter-reject: END-OF-MESSAGE from h[192.0.2.9]: 5.7.1 spam; from=<a@b> to=<c@d> proto=ESMTP helo=<x>",
            "cleanup:milter-reject",
        ),
        (
            "postfix/cleanup",
            "ABCDEF123: hold: header Subject: x from h[192.0.2.9]; from=<a@b> to=<c@d> proto=ESMTP helo=<x>",
            "cleanup:hold",
        ),
        (
            "postfix/bounce",
            "ABCDEF123: sender delivery status notification: 123456ABC",
            "bounce:sender_dsn",
        ),
        ("postfix/postsuper", "Released from hold: 3 messages", "postsuper:summary"),
        ("postfix/postsuper", "ABCDEF123: requeued", "postsuper:requeued"),
        ("postfix/master", "reload -- version 3.7.11, configuration /etc/postfix", "master:reload"),
        ("postfix/master", "terminating on signal 15", "master:terminating"),
        (
            "postfix/anvil",
            "statistics: max connection rate 1/60s for (smtp:192.0.2.9) at Nov 24 01:25:21",
            "anvil:statistics",
        ),
        ("postfix/postscreen", "PASS NEW [192.0.2.9]:4711", "postscreen:postscreen_pass"),
        ("postfix/tlsmgr", "fatal: cannot open something", "tlsmgr:fatal"),
        ("postfix/sendmail", "panic: something very wrong", "sendmail:panic"),
    ],
)
def test_variants(program: str, message: str, fam: str) -> None:
    """Custom syslog_name, multi-instance names, IPv6, long queue ids and other stages parse."""
    ev = parse_postfix(program, message)
    assert ev is not None
    assert family(ev) == fam


@pytest.mark.parametrize(
    ("program", "message"),
    [
        ("postfix/smtpd", "something new and odd"),
        ("postfix/qmgr", "ABCDEF123: something new"),
        ("postfix/cleanup", "warningless text: with colon"),
        ("postfix/smtp", "ABCDEF123: to=<a@b>, relay=x, broken"),
        ("postfix/postsuper", "Deleted: many messages"),
        ("postfix/smtpd", ""),
    ],
)
def test_unknown_messages_are_unsupported(program: str, message: str) -> None:
    """Messages of no known family give None (counted as unsupported, never guessed)."""
    assert parse_postfix(program, message) is None


def test_service_names() -> None:
    """Service is the program minus ``postfix/``; other instances stay whole."""
    assert service_of("postfix/submission/smtpd") == "submission/smtpd"
    assert service_of("postfix-xyz/smtp") == "postfix-xyz/smtp"
    assert is_postfix_program("postfix-xyz/smtp")
    assert not is_postfix_program("dovecot")
    assert not is_postfix_program("postfixish")


@pytest.mark.parametrize(
    ("code", "text", "reason"),
    [
        (
            "550",
            "<x@y>: Recipient address rejected: User unknown in virtual mailbox table",
            "unknown_user",
        ),
        ("454", "<x@y>: Relay access denied", "relay_denied"),
        ("550", "<a@b>: Sender address rejected: Domain not found", "sender_restriction"),
        ("554", "<h[1.2.3.4]>: Client host rejected: Access denied", "client_restriction"),
        ("504", "<x>: Helo command rejected: need fully-qualified hostname", "helo_restriction"),
        (
            "554",
            "Service unavailable; Client host [1.2.3.4] blocked using zen.spamhaus.org",
            "dnsbl",
        ),
        ("450", "<x@y>: Recipient address rejected: Greylisted, see http://x", "greylisted"),
        ("550", "<x@y>: Recipient address rejected: SPF fail - not authorized", "spf_dmarc"),
        (
            "451",
            "<x@y>: Recipient address rejected: rate limit exceeded for sender",
            "policy_service",
        ),
        ("451", "4.3.5 Server configuration problem", "policy_service"),
        ("552", "Message size exceeds fixed limit", "size"),
        ("550", "<x@y>: Recipient address rejected: over there", "recipient_restriction"),
        ("530", "Must issue a STARTTLS command first", "tls_required"),
        ("550", "completely different", "other"),
    ],
)
def test_reject_reasons(code: str, text: str, reason: str) -> None:
    """smtpd reject texts map to a bounded reason class."""
    assert classify_reject(code, text) == reason
    assert reason in REJECT_REASONS


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("header Subject: x from h[1.2.3.4]; from=<a@b>: 5.7.1 no", "header_checks"),
        ("body spam text from h[1.2.3.4]; from=<a@b>", "body_checks"),
        ("END-OF-MESSAGE from h[1.2.3.4]: 5.7.1 rejected by milter", "milter"),
        ("something else", "other"),
    ],
)
def test_cleanup_reject_reasons(text: str, reason: str) -> None:
    """cleanup reject texts map to header/body checks, milter or other."""
    assert classify_cleanup_reject(text) == reason
    assert reason in REJECT_REASONS


@pytest.mark.parametrize(
    ("dsn", "text", "reason"),
    [
        ("4.4.1", "connect to x[1.2.3.4]:25: Connection refused", "connection_refused"),
        (
            "4.4.2",
            "conversation with x[1.2.3.4] timed out while receiving the initial server greeting",
            "connection_timed_out",
        ),
        (
            "4.7.1",
            "host x[1.2.3.4] said: 450 4.7.1 <a@b>: Recipient address rejected: Greylisted (in reply to RCPT TO command)",
            "greylisted",
        ),
        (
            "4.2.2",
            "host x[1.2.3.4] said: 452 4.2.2 Mailbox full (in reply to RCPT TO command)",
            "mailbox_full",
        ),
        ("5.2.2", "host x said: 552 5.2.2 user is over quota", "mailbox_full"),
        (
            "4.4.3",
            "Host or domain name not found. Name service error for name=x type=MX: Host not found, try again",
            "dns_failure",
        ),
        ("4.4.1", "connect to x[2001:db8::1]:25: Network is unreachable", "network_unreachable"),
        (
            "4.3.0",
            "host x said: 450 4.3.0 Error: command failed (in reply to RCPT TO command)",
            "remote_system",
        ),
        (
            "4.7.0",
            "host x said: 421 4.7.0 Try again later (in reply to end of DATA command)",
            "remote_policy",
        ),
        ("4.4.2", "lost connection with x[1.2.3.4] while sending RCPT TO", "connection_lost"),
        ("4.3.0", "mail transport unavailable", "transport_unavailable"),
        ("4.0.0", "whatever", "other"),
    ],
)
def test_deferral_reasons(dsn: str, text: str, reason: str) -> None:
    """Deferral DSN + text map to a bounded reason class; remote 4xx by DSN subject."""
    assert classify_deferral(dsn, text) == reason
    assert reason in DEFERRAL_REASONS


def _feed(c: PostfixCounters, *lines: str) -> None:
    for line in lines:
        assert c.feed_line(line), line


def test_messages_queued_by_origin() -> None:
    """A message counts once, at its first active insert, by the service that received it."""
    c = PostfixCounters()
    _feed(
        c,
        "Nov 24 01:25:21 mx1 postfix/submission/smtpd[1]: AAAA1: client=h[127.0.0.1], sasl_method=PLAIN, sasl_username=u",
        "Nov 24 01:25:21 mx1 postfix/cleanup[2]: AAAA1: message-id=<x@y>",
        "Nov 24 01:25:21 mx1 postfix/qmgr[3]: AAAA1: from=<a@b>, size=10, nrcpt=2 (queue active)",
        "Nov 24 01:35:21 mx1 postfix/qmgr[3]: AAAA1: from=<a@b>, size=10, nrcpt=1 (queue active)",
        "Nov 24 01:25:21 mx1 postfix/cleanup[2]: BBBB2: message-id=<n@y>",
        "Nov 24 01:25:21 mx1 postfix/qmgr[3]: BBBB2: from=<>, size=5, nrcpt=1 (queue active)",
        "Nov 24 01:25:21 mx1 postfix/qmgr[3]: CCCC3: from=<>, size=5, nrcpt=1 (queue active)",
    )
    assert c.value("postfix_messages_queued_total", "submission/smtpd") == 1
    assert c.value("postfix_messages_queued_total", "other") == 1
    assert c.total("postfix_messages_queued_total") == 2
    assert c.value("postfix_qmgr_inserts_total", "qmgr") == 4
    assert c.value("postfix_qmgr_inserted_bytes_total", "qmgr") == 30
    assert c.value("postfix_qmgr_inserted_recipients_total", "qmgr") == 5


def test_rejected_message_is_not_queued() -> None:
    """A cleanup reject or size-limit refusal forgets the message's origin."""
    c = PostfixCounters(max_tracked_queue_ids=2)
    _feed(
        c,
        "Nov 24 01:25:21 mx1 postfix/smtpd[1]: AAAA1: client=h[127.0.0.1]",
        "Nov 24 01:25:21 mx1 postfix/cleanup[2]: AAAA1: reject: header Subject: x from h[127.0.0.1]; from=<a@b>: 5.7.1 no",
        "Nov 24 01:25:21 mx1 postfix/smtpd[1]: BBBB2: client=h[127.0.0.1]",
        "Nov 24 01:25:21 mx1 postfix/smtpd[1]: warning: BBBB2: queue file size limit exceeded",
    )
    assert c._origin == {}
    assert c.value("postfix_cleanup_actions_total", "cleanup", "reject", "header_checks") == 1
    assert c.value("postfix_smtpd_size_limit_exceeded_total", "smtpd") == 1


def test_tracked_queue_ids_are_bounded() -> None:
    """The queue-id origin map never holds more than max_tracked_queue_ids entries."""
    c = PostfixCounters(max_tracked_queue_ids=3)
    for i in range(10):
        c.feed("postfix/pickup", f"ABC{i:03d}: uid=0 from=<root>")
    assert len(c._origin) == 3
    assert c.value("postfix_pickup_messages_total", "pickup") == 10


def test_usernames_only_when_enabled_and_bounded() -> None:
    """Per-user series exist only when enabled, and extra users fold into ``other``."""
    line = "AAAA{0}: client=h[127.0.0.1], sasl_method=PLAIN, sasl_username=user{0}"
    off = PostfixCounters()
    on = PostfixCounters(max_sasl_usernames=2)
    for i in range(4):
        off.feed("postfix/submission/smtpd", line.format(i))
        on.feed("postfix/submission/smtpd", line.format(i))
    assert off.total("postfix_smtpd_messages_received_by_user_total") == 0
    assert off.value("postfix_smtpd_messages_received_total", "submission/smtpd", "PLAIN") == 4
    by_user = on.values["postfix_smtpd_messages_received_by_user_total"]
    assert dict(by_user) == {
        ("submission/smtpd", "user0"): 1,
        ("submission/smtpd", "user1"): 1,
        ("submission/smtpd", "other"): 2,
    }


def test_deferred_domains_are_bounded() -> None:
    """Deferred recipients are counted per domain for the first N domains, then ``other``."""
    c = PostfixCounters(max_domains=2)
    for d in ("a.example", "b.example", "c.example", "a.example"):
        c.feed(
            "postfix/smtp",
            f"ABCDEF1: to=<u@{d}>, relay=none, delay=1, delays=0/0/1/0, dsn=4.4.1, status=deferred (connect to x[1.2.3.4]:25: Connection refused)",
        )
    series = dict(c.values["postfix_deferred_recipients_by_domain_total"])
    assert series == {("a.example",): 2, ("b.example",): 1, ("other",): 1}
    assert c.value("postfix_delivery_problems_total", "smtp", "deferred", "connection_refused") == 4


def test_disconnect_commands_are_counted() -> None:
    """Per-command totals and failures are summed from disconnect lines."""
    c = PostfixCounters()
    tail = "disconnect from h[127.0.0.1] ehlo=2 starttls=1 auth=0/1 quit=1 commands=4/5"
    for _ in range(3):
        c.feed("postfix/submission/smtpd", tail)
    assert c.value("postfix_smtpd_disconnects_total", "submission/smtpd") == 3
    assert c.value("postfix_smtpd_commands_total", "submission/smtpd", "auth") == 3
    assert c.value("postfix_smtpd_command_failures_total", "submission/smtpd", "auth") == 3
    assert c.value("postfix_smtpd_command_failures_total", "submission/smtpd", "ehlo") == 0
    assert c.value("postfix_smtpd_commands_total", "submission/smtpd", "ehlo") == 6


def test_delay_histogram_samples() -> None:
    """Status lines feed a cumulative delay histogram per service and stage."""
    c = PostfixCounters()
    c.feed(
        "postfix/smtp",
        "ABCDEF1: to=<u@x>, relay=r, delay=2.5, delays=0.02/0/0.5/2, dsn=2.0.0, status=sent (ok)",
    )
    samples = [(n, lab, v) for n, lab, v in c.samples() if n.startswith("postfix_delivery_delay")]
    count = [v for n, lab, v in samples if n.endswith("_count") and lab["stage"] == "transmission"]
    assert count == [1]
    buckets = {
        lab["le"]: v
        for n, lab, v in samples
        if n.endswith("_bucket") and lab["stage"] == "transmission"
    }
    assert buckets["1.0"] == 0
    assert buckets["5.0"] == 1
    assert buckets["+Inf"] == 1
    total = [v for n, lab, v in samples if n.endswith("_sum") and lab["stage"] == "transmission"]
    assert total == [2.0]


def test_unsupported_and_foreign_lines() -> None:
    """Unknown Postfix lines count per program; non-Postfix and malformed lines are not ours."""
    c = PostfixCounters()
    assert c.feed_line("Nov 24 01:25:21 mx1 postfix/smtpd[1]: brand new message")
    assert not c.feed_line("Nov 24 01:25:21 mx1 dovecot: imap-login: Login: user=<u>")
    assert not c.feed_line("garbage")
    assert c.value("postfix_unsupported_lines_total", "postfix/smtpd") == 1
    assert c.value("postfix_log_lines_total", "postfix/smtpd") == 1
    assert c.total("postfix_log_lines_total") == 1


def test_samples_carry_metric_labels() -> None:
    """samples() names every label of a series after METRICS, families included."""
    c = PostfixCounters()
    c.feed("postfix/smtpd", "connect from h[127.0.0.1]")
    got = {(n, tuple(sorted(lab.items())), v) for n, lab, v in c.samples()}
    assert ("postfix_smtpd_connects_total", (("service", "smtpd"),), 1) in got
    assert (
        "postfix_log_events_total",
        (("family", "connect"), ("service", "smtpd")),
        1,
    ) in got


def test_lmtp_unix_socket_connect_failure() -> None:
    """An LMTP unix-socket connect failure is a connect failure with reason other."""
    ev = parse_postfix("postfix/lmtp", "connect to private/dovecot-lmtp: No such file or directory")
    assert ev is not None
    assert family(ev) == "lmtp:connect_failed"
