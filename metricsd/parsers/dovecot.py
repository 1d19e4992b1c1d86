"""Pure parser for Dovecot log lines: its own ``log_path`` format and syslog's ``dovecot:`` lines.

Dovecot's own format is ``TIMESTAMP process: Level: text`` (``Nov 24 06:48:39 imap-login: Info:
Login: ...``); under syslog the same ``process: text`` follows ``HOST dovecot[PID]: `` and info
lines carry no ``Info: `` prefix.  Every line maps to exactly one *family* (the names used by the
corpus in ``shared/corpus/dovecot/families.md``) or to ``unsupported``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from metricsd.parsers.syslog import parse_syslog_line

__all__ = [
    "FAILED_LOGIN_REASONS",
    "DovecotEvent",
    "parse_dovecot_line",
    "parse_dovecot_message",
    "strip_timestamp",
]

# Traditional syslog/Dovecot (`Nov  4 01:02:03`, `Nov 04 01:02:03`) or ISO 8601 / RFC 3339.
_TIMESTAMP = re.compile(
    r"(?:[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d"
    r"|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?) "
)
_PROCESS = re.compile(
    r"(?P<name>[a-z][a-z0-9_-]{0,39})(?:\((?P<arg>.*?)\))?(?:<(?P<pid>\d+)>(?:<[^>]*>)?)?: "
)
_LEVELS = {
    "Info: ": "info",
    "Warning: ": "warning",
    "Error: ": "error",
    "Fatal: ": "fatal",
    "Panic: ": "panic",
    "Debug: ": "debug",
}
_BYTES = re.compile(r"\bin=(\d+) out=(\d+)")
_METHOD = re.compile(r", method=([^,\s]{1,40}),")
_MECH_OK = re.compile(r"[A-Z0-9_-]{1,30}")
_PASSDB = re.compile(r"(?P<db>[a-z][a-z0-9_-]{0,30})\((?P<who>.*)\): (?P<result>.+)")

#: Login-process end reasons that mean the client tried to log in and was refused.
FAILED_LOGIN_REASONS = frozenset(
    {"auth_failed", "internal_failure", "user_disabled", "password_expired", "max_connections"}
)

# Order matters: first match wins (checked against the login-process disconnect text).
_LOGIN_END_REASONS: tuple[tuple[str, str], ...] = (
    ("(auth failed,", "auth_failed"),
    ("(internal failure,", "internal_failure"),
    ("(no auth attempts", "no_auth_attempts"),
    ("(client didn't finish SASL auth", "sasl_unfinished"),
    ("(disconnected before auth was ready", "disconnected_before_auth"),
    ("(disconnected before greeting", "disconnected_before_greeting"),
    ("(disconnected while authenticating", "disconnected_while_authenticating"),
    ("(disconnected while finishing login", "disconnected_finishing_login"),
    ("(tried to use disallowed plaintext auth", "plaintext_disallowed"),
    ("(tried to use disabled plaintext auth", "plaintext_disallowed"),
    ("(cert required", "cert_required"),
    ("(client didn't send a cert", "cert_required"),
    ("(user disabled", "user_disabled"),
    ("(password expired", "password_expired"),
    ("Maximum number of connections", "max_connections"),
    ("(auth process communication failure", "auth_process_failure"),
)

_SESSION_END_REASONS: tuple[tuple[str, str], ...] = (
    ("Logged out", "logged_out"),
    ("Connection closed", "connection_closed"),
    ("Disconnected in ", "connection_closed"),
    ("Inactivity", "inactivity"),
    ("Disconnected for inactivity", "inactivity"),
    ("Failed to connect to relay server", "relay_connect_failed"),
    ("Too many invalid", "too_many_invalid_commands"),
    ("Server shutting down", "shutdown"),
    ("Shutting down", "shutdown"),
    ("Internal error", "internal_error"),
    ("Disconnected by server", "kicked"),
    ("Kicked", "kicked"),
)

_PASSDB_RESULTS: tuple[tuple[str, str], ...] = (
    ("Password mismatch", "password_mismatch"),
    ("unknown user", "unknown_user"),
    ("User not known", "unknown_user"),
    ("pam_authenticate() failed: Authentication failure", "password_mismatch"),
    ("invalid credentials", "password_mismatch"),
    ("Password expired", "password_expired"),
    ("Account is disabled", "user_disabled"),
)


@dataclass(slots=True)
class DovecotEvent:
    """One classified Dovecot line (read-only by convention; not frozen, for speed).

    No user names, addresses or passwords are kept.
    """

    family: str
    process: str
    level: str
    service: str = ""
    mechanism: str = ""
    tls: str = ""
    reason: str = ""
    ending: str = ""
    bytes_in: int | None = None
    bytes_out: int | None = None
    passdb: str = ""

    @property
    def supported(self) -> bool:
        """False for lines the parser does not understand."""
        return self.family != "unsupported"


def strip_timestamp(line: str) -> str:
    """The line without a leading traditional or RFC 3339 timestamp (unchanged if none)."""
    m = _TIMESTAMP.match(line)
    return line[m.end() :] if m else line


def parse_dovecot_line(line: str) -> DovecotEvent | None:
    """Classify a whole log line; None when it is a syslog line from another program."""
    line = line.rstrip("\r\n")
    rest = strip_timestamp(line)
    if _PROCESS.match(rest) is not None:
        return parse_dovecot_message(rest)  # Dovecot's own log_path format
    sl = parse_syslog_line(line)
    if sl is None:
        return parse_dovecot_message(rest)  # not syslog either: counted as unsupported
    if sl.program.startswith("dovecot"):
        return parse_dovecot_message(sl.message)
    return None  # `HOST program[pid]: ...` from something else than Dovecot


def _unsupported(process: str, level: str) -> DovecotEvent:
    return DovecotEvent(family="unsupported", process=process or "unknown", level=level)


def parse_dovecot_message(message: str) -> DovecotEvent:
    """Classify the ``process: [Level: ]text`` part that follows a timestamp or ``dovecot:``."""
    pm = _PROCESS.match(message)
    if pm is None:
        return _unsupported("", "info")
    name = pm.group("name")
    text = message[pm.end() :]
    level = "info"
    colon = text.find(": ")
    if 0 < colon <= 7:
        lv = _LEVELS.get(text[: colon + 2])
        if lv is not None:
            level = lv
            text = text[colon + 2 :]
    if level != "info":
        return _leveled(name, level, text)
    if name.endswith("-login"):
        return _login(name, name[:-6], text)
    if name == "master":
        family = "master.start" if " starting up" in text else "master.other"
        return DovecotEvent(family=family, process=name, level=level, service=name)
    if name in ("auth", "auth-worker"):
        return _auth(name, text)
    if pm.group("arg") is not None:
        return _mail_process(name, text, pm.group("pid") is not None)
    return _unsupported(name, level)


def _leveled(name: str, level: str, text: str) -> DovecotEvent:
    if name == "master":
        return DovecotEvent(family="master.other", process=name, level=level, service=name)
    if level == "debug":
        return DovecotEvent(family=f"debug.{name}", process=name, level=level, service=name)
    return DovecotEvent(family=f"{level}.{name}", process=name, level=level, service=name)


def _mechanism(text: str) -> str:
    found = _METHOD.findall(text)
    if not found:
        return "none"
    mech = str(found[-1]).upper()  # the last one: user names come first, client-controlled
    return mech if _MECH_OK.fullmatch(mech) else "other"


def _tls(text: str) -> str:
    # Dovecot's own elements follow the (client-controlled) user name: look after `, rip=`.
    i = text.rfind(", rip=")
    tail = text[i:] if i >= 0 else text
    if ", TLS" in tail:
        return "TLS"
    if ", secured" in tail:
        return "secured"
    return "plain"


def _login(name: str, service: str, text: str) -> DovecotEvent:
    if text.startswith("Login: "):
        return DovecotEvent(
            family=f"login.ok.{service}",
            process=name,
            level="info",
            service=service,
            mechanism=_mechanism(text),
            tls=_tls(text),
        )
    ending = ""
    if text.startswith(("Aborted login", "Login aborted", "Disconnected: Aborted login")):
        ending = "aborted"
    elif text.startswith(("Disconnected", "Maximum number of connections")):
        ending = "disconnected"
    if ending:
        cut = text.find("): user=<")
        head = text[: cut + 1] if cut >= 0 else text
        reason = "other"
        for needle, value in _LOGIN_END_REASONS:
            if needle in head:
                reason = value
                break
        return DovecotEvent(
            family=f"login.end.{service}.{reason}",
            process=name,
            level="info",
            service=service,
            mechanism=_mechanism(text),
            tls=_tls(text),
            reason=reason,
            ending=ending,
        )
    if text.startswith("proxy("):
        return DovecotEvent(
            family=f"login.proxy.{service}", process=name, level="info", service=service
        )
    return _unsupported(name, "info")


def _auth(name: str, text: str) -> DovecotEvent:
    m = _PASSDB.match(text)
    if m is None:
        return _unsupported(name, "info")
    result_text = m.group("result")
    result = "other"
    for needle, value in _PASSDB_RESULTS:
        if result_text.startswith(needle):
            result = value
            break
    return DovecotEvent(
        family=f"passdb.{result}",
        process=name,
        level="info",
        service="auth",
        reason=result,
        passdb=m.group("db"),
    )


def _mail_process(name: str, text: str, has_session: bool) -> DovecotEvent:
    body = text[len("Disconnected: ") :] if text.startswith("Disconnected: ") else text
    if text.startswith(("Disconnected", "Logged out", "Connection closed")):
        reason = "disconnected"
        for needle, value in _SESSION_END_REASONS:
            if body.startswith(needle):
                reason = value
                break
        bm = _BYTES.search(body)
        return DovecotEvent(
            family=f"session.end.{name}.{reason}",
            process=name,
            level="info",
            service=name,
            reason=reason,
            bytes_in=int(bm.group(1)) if bm else None,
            bytes_out=int(bm.group(2)) if bm else None,
        )
    if name == "lmtp" or has_session:
        return _delivery(name, text)
    return _unsupported(name, "info")


def _delivery(name: str, text: str) -> DovecotEvent:
    if text.startswith("Connect from "):
        return DovecotEvent(family=f"connect.{name}", process=name, level="info", service=name)
    if text.startswith("Disconnect from "):
        return DovecotEvent(family=f"disconnect.{name}", process=name, level="info", service=name)
    if "msgid=" in text or text.startswith("sieve: "):
        if ": saved mail to " in text or ": stored mail into mailbox " in text:
            result = "saved"
        elif ": forwarded to " in text:
            result = "forwarded"
        elif ": discarded " in text or "marked message to be discarded" in text:
            result = "discarded"
        elif ": rejected " in text or ": sent rejection " in text:
            result = "rejected"
        else:
            result = "other"
        return DovecotEvent(
            family=f"delivery.{name}.{result}",
            process=name,
            level="info",
            service=name,
            reason=result,
        )
    return _unsupported(name, "info")
