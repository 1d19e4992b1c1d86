"""Classify one Postfix log message into a ``PostfixEvent`` (pure, no I/O).

Input is the ``program`` and ``message`` of a split syslog line (see ``syslog.py``).
Dispatch goes program → daemon handler → cheap ``startswith``/``in`` tests, and a
precompiled regex runs only on lines already known to be of its family.

Service names: the program minus a leading ``postfix/`` (``smtpd``, ``submission/smtpd``,
``relay/smtp``); any other syslog_name is kept whole (``postfix-out/smtp``). The daemon is
the last path component and picks the handler.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

from metricsd.parsers.classify import (
    classify_cleanup_reject,
    classify_deferral,
    classify_reject,
)

__all__ = [
    "PostfixEvent",
    "family",
    "is_postfix_program",
    "parse_commands",
    "parse_postfix",
    "service_of",
]


class PostfixEvent(NamedTuple):
    """One understood Postfix log line; fields a kind does not use keep their defaults.

    ``kind`` is the line family (``connect``, ``status``, ``noqueue_reject`` …, see
    ``family``). ``commands`` is the raw per-command tail of a disconnect line (see
    ``parse_commands``). ``reason`` holds the classified reject/deferral class, the TLS trust
    level, the lifecycle event or the postsuper action, depending on the kind.
    """

    kind: str
    service: str
    qid: str = ""
    stage: str = ""
    status: str = ""
    code: str = ""
    dsn: str = ""
    reason: str = ""
    relay: str = ""
    domain: str = ""
    sasl_method: str = ""
    sasl_username: str = ""
    size: int = 0
    nrcpt: int = 0
    delay: float = 0.0
    delays: tuple[float, float, float, float] | None = None
    new_qid: str = ""
    amount: int = 0
    commands: str = ""
    tls_protocol: str = ""


def is_postfix_program(program: str) -> bool:
    """True for ``postfix/…`` and multi-instance ``postfix-xyz/…`` syslog tags."""
    return program.startswith("postfix") and "/" in program


def service_of(program: str) -> str:
    """``postfix/submission/smtpd`` → ``submission/smtpd``; other instances stay whole."""
    return program[8:] if program.startswith("postfix/") else program


def family(ev: PostfixEvent) -> str:
    """The ``families.md`` key of an event, e.g. ``smtp:status=sent`` or ``smtpd:qid_reject:RCPT``."""
    kind = ev.kind
    if kind == "status":
        return f"{ev.service}:status={ev.status}"
    if kind in _STAGED_FAMILIES:
        return f"{ev.service}:{kind}:{ev.stage}"
    return f"{ev.service}:{kind}"


# default field values after (kind, service) and after (kind, service, qid)
_D2 = PostfixEvent("", "")[2:]
_D3 = _D2[1:]
_D_PRE_SIZE = _D3[:9]  # stage … sasl_username
_D_POST_NRCPT = _D3[11:]  # delay … tls_protocol


# positional construction without the Python-level NamedTuple.__new__ (hot paths only)
_new = tuple.__new__

_STAGED_FAMILIES = frozenset({"noqueue_reject", "qid_reject"})

_Handler = Callable[[str, str], PostfixEvent | None]

# --- regexes (each runs only on lines already recognised by a cheap test) -------------

_REJECT = re.compile(
    r"(?P<stage>[A-Z][A-Z-]*) from [^\[]*\[[^\]]*\](?::\d+)?: "
    r"(?P<code>\d{3})(?: (?P<dsn>[245]\.\d{1,3}\.\d{1,3}))? (?P<text>.*)"
)
_TO = re.compile(r" to=<([^>]*)>")
_STATUS = re.compile(
    r"to=<(?P<to>[^>]*)>, (?:orig_to=<[^>]*>, )?relay=(?P<relay>[^,]*), "
    r"(?:conn_use=\d+, )?delay=(?P<delay>[\d.]+), "
    r"delays=(?P<a>[\d.]+)/(?P<b>[\d.]+)/(?P<c>[\d.]+)/(?P<d>[\d.]+), "
    r"dsn=(?P<dsn>\d\.\d{1,3}\.\d{1,3}), status=(?P<status>[\w-]+)(?: \((?P<text>.*)\))?$"
)
_ACTIVE = re.compile(r"from=<[^>]*>, size=(\d+), nrcpt=(\d+) \(queue active\)$")
_QMGR_EXPIRED = re.compile(r"from=<[^>]*>, status=([\w-]+), returned to sender$")
_TLS = re.compile(
    r"(Anonymous|Untrusted|Trusted|Verified) TLS connection established (?:from|to) "
    r"\S+: (\S+) with cipher"
)
_SASL_FAIL = re.compile(r"SASL ([\w-]+) authentication failed")
_POSTSUPER_SUMMARY = re.compile(
    r"(Placed on hold|Released from hold|Deleted|Force-expired|Requeued): (\d+) messages?$"
)
_CONNECT_TO = re.compile(r"connect to (?:[^\[\s]*\[[^\]]*\](?::\d+)?|[^\s:]+): (.*)$")

_COMMAND_NAMES = frozenset(
    {
        "helo",
        "ehlo",
        "starttls",
        "auth",
        "mail",
        "rcpt",
        "data",
        "bdat",
        "rset",
        "noop",
        "vrfy",
        "etrn",
        "quit",
        "unknown",
        "commands",
        "xclient",
        "xforward",
    }
)

_SEVERITIES = ("warning: ", "error: ", "fatal: ", "panic: ")


def _severity(service: str, message: str) -> PostfixEvent | None:
    """Generic ``warning:``/``error:``/``fatal:``/``panic:`` lines of any daemon."""
    for prefix in _SEVERITIES:
        if message.startswith(prefix):
            return _new(PostfixEvent, (prefix[:-2], service, *_D2))
    return None


_HEX = "0123456789ABCDEF"


def _split_qid(message: str) -> tuple[str, str]:
    """``QID: rest`` → (QID, rest); ("", message) when there is no queue id."""
    i = message.find(": ")
    if 5 <= i <= 20:
        qid = message[:i]
        # short ids are upper-case hex; long ids (enable_long_queue_ids) are >= 10
        # alphanumerics with upper case; "warning", "Deleted", "NOQUEUE" are neither
        if not qid.strip(_HEX) or (i >= 10 and qid.isalnum() and not qid.islower()):
            return qid, message[i + 2 :]
    return "", message


def _domain(addr: str) -> str:
    """Lower-cased domain of an address, ``""`` for a bare local part or ``<>``."""
    at = addr.rfind("@")
    return addr[at + 1 :].lower() if at >= 0 else ""


def _stage_after(message: str, start: int) -> str:
    """The SMTP stage word following ``after `` at ``start`` (``CONNECT``, ``DATA`` …)."""
    end = message.find(" ", start)
    return message[start:end] if end > 0 else message[start:]


def _reject(kind: str, service: str, qid: str, body: str) -> PostfixEvent | None:
    """An smtpd ``reject:`` body ``RCPT from client[ip]: 550 5.1.1 <x>: text; from=…``."""
    m = _REJECT.match(body)
    if m is None:
        return None
    code = m.group("code")
    text = m.group("text")
    semi = text.find("; from=<")
    tail = text[semi:] if semi >= 0 else ""
    reason_text = text[:semi] if semi >= 0 else text
    t = _TO.search(tail)
    return PostfixEvent(
        kind,
        service,
        qid=qid,
        stage=m.group("stage"),
        code=code,
        dsn=m.group("dsn") or "",
        reason=classify_reject(code, reason_text),
        domain=_domain(t.group(1)) if t else "",
    )


_COMMANDS_CACHE: dict[str, tuple[tuple[str, int, int], ...]] = {}


def parse_commands(tail: str) -> tuple[tuple[str, int, int], ...]:
    """``helo=1 mail=1 auth=0/1 commands=4/5`` → ((name, ok, total), …), bounded names.

    Unknown command names become ``other``; results are cached (tails repeat a lot).
    """
    hit = _COMMANDS_CACHE.get(tail)
    if hit is None:
        hit = _parse_commands(tail)
        if len(_COMMANDS_CACHE) < 4096:
            _COMMANDS_CACHE[tail] = hit
    return hit


def _parse_commands(tail: str) -> tuple[tuple[str, int, int], ...]:
    out: list[tuple[str, int, int]] = []
    for tok in tail.split():
        name, eq, val = tok.partition("=")
        if not eq:
            continue
        ok_s, slash, total_s = val.partition("/")
        if not ok_s.isdigit() or (slash and not total_s.isdigit()):
            continue
        ok = int(ok_s)
        total = int(total_s) if slash else ok
        out.append((name if name in _COMMAND_NAMES else "other", ok, total))
    return tuple(out)


def _smtpd(service: str, message: str) -> PostfixEvent | None:
    """smtpd(8) under any syslog_name."""
    c = message[0]
    if c == "c" and message.startswith("connect from "):
        return _new(PostfixEvent, ("connect", service, *_D2))
    if c == "d" and message.startswith("disconnect from "):
        rb = message.find("] ", 16)
        tail = message[rb + 2 :] if rb > 0 else ""
        return _new(PostfixEvent, ("disconnect", service, *_D2[:16], tail, ""))
    if c == "N" and message.startswith("NOQUEUE: "):
        if message.startswith("reject: ", 9):
            return _reject("noqueue_reject", service, "", message[17:])
        if message.startswith("reject_warning: ", 9):
            return _reject("noqueue_reject_warning", service, "", message[25:])
        action, sep, _ = message[9:].partition(": ")
        if sep and action in _SMTPD_ACTIONS:
            return PostfixEvent("noqueue_" + action, service)
        return None
    if c == "w" and message.startswith("warning: "):
        if "authentication failed" in message:
            m = _SASL_FAIL.search(message)
            if m is not None:
                return PostfixEvent("sasl_auth_failed", service, sasl_method=m.group(1))
        if message.endswith(": queue file size limit exceeded"):
            qid, _ = _split_qid(message[9:])
            return _new(PostfixEvent, ("size_limit_exceeded", service, qid, *_D3))
        return _new(PostfixEvent, ("warning", service, *_D2))
    if c == "l" and message.startswith("lost connection after "):
        return PostfixEvent("lost_connection", service, stage=_stage_after(message, 22))
    if c == "t" and message.startswith("timeout after "):
        return PostfixEvent("timeout", service, stage=_stage_after(message, 14))
    if c == "t" and message.startswith("too many errors after "):
        return PostfixEvent("too_many_errors", service, stage=_stage_after(message, 22))
    if "TLS connection established from " in message:
        m = _TLS.match(message)
        if m is not None:
            return PostfixEvent(
                "tls_established_in", service, reason=m.group(1), tls_protocol=m.group(2)
            )
        return None
    qid, rest = _split_qid(message)
    if qid:
        if rest.startswith("client="):
            sm = rest.find(", sasl_method=")
            if sm < 0:
                return _new(PostfixEvent, ("client", service, qid, *_D3))
            su = rest.find(", sasl_username=", sm)
            method = rest[sm + 14 : su] if su > 0 else rest[sm + 14 :]
            user = ""
            if su > 0:
                user = rest[su + 16 :]
                cut = user.find(", ")
                if cut >= 0:
                    user = user[:cut]
            return PostfixEvent(
                "client_sasl", service, qid=qid, sasl_method=method, sasl_username=user
            )
        if rest.startswith("reject: "):
            return _reject("qid_reject", service, qid, rest[8:])
        if rest.startswith("reject_warning: "):
            return _reject("qid_reject_warning", service, qid, rest[16:])
        action, sep, _ = rest.partition(": ")
        if sep and action in _SMTPD_ACTIONS:
            return PostfixEvent("qid_" + action, service, qid=qid)
        return None
    if message.startswith("improper command pipelining after "):
        return PostfixEvent("pipelining", service, stage=_stage_after(message, 34))
    if message.startswith(("SSL_accept error from ", "setting up TLS connection from ")):
        return _new(PostfixEvent, ("tls_setup", service, *_D2))
    return _severity(service, message)


_SMTPD_ACTIONS = frozenset({"filter", "hold", "discard", "redirect", "warn", "milter-reject"})


def _status(service: str, qid: str, rest: str) -> PostfixEvent | None:
    """``to=<…>, relay=…, delay=…, delays=a/b/c/d, dsn=…, status=… (text)``."""
    m = _STATUS.match(rest)
    if m is None:
        return None
    to, relay, delay, a, b, c, d, dsn, status, text = m.groups()
    at = to.rfind("@")
    return _new(
        PostfixEvent,
        (
            "status",
            service,
            qid,
            "",
            status,
            "",
            dsn,
            "" if status == "sent" else classify_deferral(dsn, text or ""),
            relay,
            to[at + 1 :].lower() if at >= 0 else "",
            "",
            "",
            0,
            0,
            float(delay),
            (float(a), float(b), float(c), float(d)),
            "",
            0,
            "",
            "",
        ),
    )


def _delivery(service: str, message: str) -> PostfixEvent | None:
    """smtp/lmtp/local/virtual/pipe/error/discard/retry delivery agents."""
    qid, rest = _split_qid(message)
    if qid:
        if rest.startswith("to=<"):
            return _status(service, qid, rest)
        if rest.startswith(("host ", "lost connection with ", "conversation with ")):
            return _new(PostfixEvent, ("remote_problem", service, qid, *_D3))
        if rest.startswith("enabling PIX workarounds"):
            return _new(PostfixEvent, ("pix_workaround", service, qid, *_D3))
        if rest.startswith(("warning: ", "error: ")):
            return PostfixEvent(rest[: rest.find(":")], service, qid=qid)
        return None
    if message.startswith("connect to "):
        m = _CONNECT_TO.match(message)
        if m is None:
            return None
        low = m.group(1).lower()
        if "refused" in low:
            kind = "connect_refused"
        elif "timed out" in low:
            kind = "connect_timed_out"
        elif "unreachable" in low or "no route" in low:
            kind = "connect_unreachable"
        else:
            kind = "connect_failed"
        return PostfixEvent(kind, service)
    if "TLS connection established to " in message:
        m = _TLS.match(message)
        if m is not None:
            return PostfixEvent(
                "tls_established_out", service, reason=m.group(1), tls_protocol=m.group(2)
            )
        return None
    return _severity(service, message)


def _qmgr(service: str, message: str) -> PostfixEvent | None:
    """qmgr(8): active inserts, removals, expirations, and its own status lines."""
    qid, rest = _split_qid(message)
    if qid:
        if rest.startswith("from=<"):
            if rest.endswith("(queue active)"):
                m = _ACTIVE.match(rest)
                if m is None:
                    return None
                size, nrcpt = m.groups()
                return _new(
                    PostfixEvent,
                    (
                        "active_insert",
                        service,
                        qid,
                        *_D_PRE_SIZE,
                        int(size),
                        int(nrcpt),
                        *_D_POST_NRCPT,
                    ),
                )
            m = _QMGR_EXPIRED.search(rest)
            if m is not None:
                return PostfixEvent("expired", service, qid=qid, status=m.group(1))
            return None
        if rest == "removed":
            return _new(PostfixEvent, ("removed", service, qid, *_D3))
        if rest.startswith("to=<"):
            return _status(service, qid, rest)
        if rest.startswith("skipped, still being delivered"):
            return _new(PostfixEvent, ("skipped", service, qid, *_D3))
        return None
    return _severity(service, message)


def _cleanup(service: str, message: str) -> PostfixEvent | None:
    """cleanup(8): message-ids, header/body/milter actions."""
    qid, rest = _split_qid(message)
    if qid:
        if rest.startswith("message-id="):
            return _new(PostfixEvent, ("message_id", service, qid, *_D3))
        if rest.startswith("resent-message-id="):
            return _new(PostfixEvent, ("resent_message_id", service, qid, *_D3))
        action, sep, body = rest.partition(": ")
        if sep and action in _CLEANUP_ACTIONS:
            reason = classify_cleanup_reject(body) if action != "warning" else ""
            return PostfixEvent(action, service, qid=qid, reason=reason)
        return None
    return _severity(service, message)


_CLEANUP_ACTIONS = frozenset(
    {"reject", "milter-reject", "hold", "discard", "redirect", "filter", "warning", "replace"}
)

_NOTIFICATIONS = {
    "sender non-delivery notification": "sender_ndn",
    "sender delay notification": "sender_delay_notice",
    "sender delivery status notification": "sender_dsn",
    "postmaster non-delivery notification": "postmaster_ndn",
    "postmaster delay notification": "postmaster_delay_notice",
}


def _bounce(service: str, message: str) -> PostfixEvent | None:
    """bounce(8) notifications: ``QID: sender non-delivery notification: NEWQID``."""
    qid, rest = _split_qid(message)
    if qid:
        what, sep, new_qid = rest.rpartition(": ")
        kind = _NOTIFICATIONS.get(what) if sep else None
        if kind is None:
            return None
        return PostfixEvent(kind, service, qid=qid, new_qid=new_qid)
    return _severity(service, message)


def _pickup(service: str, message: str) -> PostfixEvent | None:
    """pickup(8): ``QID: uid=0 from=<root@host>``."""
    qid, rest = _split_qid(message)
    if qid and rest.startswith("uid="):
        return _new(PostfixEvent, ("uid_from", service, qid, *_D3))
    return _severity(service, message)


_POSTSUPER_PER_MESSAGE = {
    "placed on hold": "placed_on_hold",
    "released from hold": "released_from_hold",
    "removed": "removed",
    "expired": "expired",
    "requeued": "requeued",
}
_POSTSUPER_SUMMARY_ACTION = {
    "Placed on hold": "hold",
    "Released from hold": "release",
    "Deleted": "delete",
    "Force-expired": "expire",
    "Requeued": "requeue",
}


def _postsuper(service: str, message: str) -> PostfixEvent | None:
    """postsuper(1): per-message actions and ``Deleted: 3 messages`` summaries."""
    qid, rest = _split_qid(message)
    if qid:
        kind = _POSTSUPER_PER_MESSAGE.get(rest)
        return PostfixEvent(kind, service, qid=qid) if kind else None
    m = _POSTSUPER_SUMMARY.match(message)
    if m is not None:
        return PostfixEvent(
            "summary",
            service,
            reason=_POSTSUPER_SUMMARY_ACTION[m.group(1)],
            amount=int(m.group(2)),
        )
    return _severity(service, message)


_MASTER_EVENTS = (
    ("daemon started -- ", "daemon_started"),
    ("reload -- ", "reload"),
    ("terminating on signal ", "terminating"),
)
_SCRIPT_EVENTS = (
    ("starting the Postfix mail system", "starting"),
    ("the Postfix mail system is running", "status_running"),
    ("the Postfix mail system is not running", "status_not_running"),
    ("stopping the Postfix mail system", "stopping"),
    ("waiting for the Postfix mail system to terminate", "waiting_terminate"),
    ("refreshing the Postfix mail system", "refreshing"),
)


def _lifecycle(table: tuple[tuple[str, str], ...]) -> _Handler:
    """A handler for master(8)/postfix-script lines recognised by their prefix."""

    def handle(service: str, message: str) -> PostfixEvent | None:
        for prefix, kind in table:
            if message.startswith(prefix):
                return PostfixEvent(kind, service, reason=kind)
        return _severity(service, message)

    return handle


def _statistics(service: str, message: str) -> PostfixEvent | None:
    """anvil(8)/scache(8) periodic ``statistics:`` lines."""
    if message.startswith("statistics: "):
        return _new(PostfixEvent, ("statistics", service, *_D2))
    return _severity(service, message)


_POSTSCREEN_EVENTS = frozenset(
    {
        "CONNECT",
        "PASS",
        "DISCONNECT",
        "PREGREET",
        "HANGUP",
        "DNSBL",
        "WHITELISTED",
        "ALLOWLISTED",
        "BLACKLISTED",
        "DENYLISTED",
        "COMMAND",
        "BARE",
        "NON-SMTP",
        "WHITELIST",
        "ALLOWLIST",
    }
)


def _postscreen(service: str, message: str) -> PostfixEvent | None:
    """postscreen(8): upper-case event words (CONNECT, PASS NEW, DNSBL rank …) and rejects."""
    if message.startswith("NOQUEUE: reject: "):
        return _reject("noqueue_reject", service, "", message[17:])
    word = message.split(" ", 1)[0]
    if word in _POSTSCREEN_EVENTS:
        return PostfixEvent("postscreen_" + word.lower(), service, reason=word)
    return _severity(service, message)


def _dnsblog(service: str, message: str) -> PostfixEvent | None:
    """dnsblog(8): ``addr 1.2.3.4 listed by domain zen.example as 127.0.0.2``."""
    if message.startswith("addr ") and " listed by domain " in message:
        return _new(PostfixEvent, ("dnsbl_listed", service, *_D2))
    return _severity(service, message)


_HANDLERS: dict[str, _Handler] = {
    "smtpd": _smtpd,
    "smtp": _delivery,
    "lmtp": _delivery,
    "local": _delivery,
    "virtual": _delivery,
    "pipe": _delivery,
    "error": _delivery,
    "retry": _delivery,
    "discard": _delivery,
    "qmgr": _qmgr,
    "nqmgr": _qmgr,
    "cleanup": _cleanup,
    "bounce": _bounce,
    "defer": _bounce,
    "trace": _bounce,
    "pickup": _pickup,
    "postsuper": _postsuper,
    "master": _lifecycle(_MASTER_EVENTS),
    "postfix-script": _lifecycle(_SCRIPT_EVENTS),
    "anvil": _statistics,
    "scache": _statistics,
    "postscreen": _postscreen,
    "dnsblog": _dnsblog,
}

_DAEMON_CACHE: dict[str, tuple[str, _Handler]] = {}


def _route(program: str) -> tuple[str, _Handler]:
    """(service, handler) for a program; cached, since there are only a few programs."""
    hit = _DAEMON_CACHE.get(program)
    if hit is None:
        daemon = program.rsplit("/", 1)[-1]
        hit = (service_of(program), _HANDLERS.get(daemon, _severity))
        if len(_DAEMON_CACHE) < 1024:
            _DAEMON_CACHE[program] = hit
    return hit


def parse_postfix(program: str, message: str) -> PostfixEvent | None:
    """Classify a Postfix message; None when the line is not a known family."""
    if not message:
        return None
    hit = _DAEMON_CACHE.get(program)
    if hit is None:
        hit = _route(program)
    return hit[1](hit[0], message)
