"""Pure aggregation of classified Dovecot lines into bounded, labelled counters."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from metricsd.parsers.dovecot import (
    FAILED_LOGIN_REASONS,
    DovecotEvent,
    parse_dovecot_line,
    parse_dovecot_message,
)

__all__ = ["DovecotCounters"]


@dataclass
class DovecotCounters:
    """Counters fed one line (or one already-classified event) at a time.

    Label tuples, in order:
    ``logins`` (service, mechanism, tls); ``login_ends`` (service, ending, reason, mechanism, tls);
    ``passdb`` (passdb, result); ``session_ends`` (service, reason);
    ``session_bytes_in`` / ``session_bytes_out`` (service); ``messages`` (process, level) for
    warning/error/fatal/panic lines; ``deliveries`` (service, result); ``families`` (family);
    ``unsupported`` (program).
    """

    lines: int = 0
    logins: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    login_ends: Counter[tuple[str, str, str, str, str]] = field(default_factory=Counter)
    passdb: Counter[tuple[str, str]] = field(default_factory=Counter)
    session_ends: Counter[tuple[str, str]] = field(default_factory=Counter)
    session_bytes_in: Counter[str] = field(default_factory=Counter)
    session_bytes_out: Counter[str] = field(default_factory=Counter)
    messages: Counter[tuple[str, str]] = field(default_factory=Counter)
    deliveries: Counter[tuple[str, str]] = field(default_factory=Counter)
    families: Counter[str] = field(default_factory=Counter)
    unsupported: Counter[str] = field(default_factory=Counter)

    def feed_line(self, line: str) -> DovecotEvent | None:
        """Count one raw log line (own format or syslog); None if it is not a Dovecot line."""
        event = parse_dovecot_line(line)
        if event is not None:
            self.feed_event(event)
        return event

    def feed_message(self, message: str) -> DovecotEvent:
        """Count the text after ``dovecot:`` of a syslog line already split by the caller."""
        event = parse_dovecot_message(message)
        self.feed_event(event)
        return event

    def feed_event(self, ev: DovecotEvent) -> None:
        """Count one classified line."""
        self.lines += 1
        self.families[ev.family] += 1
        if ev.level in ("warning", "error", "fatal", "panic"):
            self.messages[(ev.process, ev.level)] += 1
        kind = ev.family.split(".", 1)[0]
        if kind == "unsupported":
            self.unsupported[ev.process] += 1
        elif kind == "login":
            if ev.family.startswith("login.ok."):
                self.logins[(ev.service, ev.mechanism, ev.tls)] += 1
            elif ev.ending:
                self.login_ends[(ev.service, ev.ending, ev.reason, ev.mechanism, ev.tls)] += 1
        elif kind == "passdb":
            self.passdb[(ev.passdb, ev.reason)] += 1
        elif kind == "session":
            self.session_ends[(ev.service, ev.reason)] += 1
            if ev.bytes_in is not None:
                self.session_bytes_in[ev.service] += ev.bytes_in
            if ev.bytes_out is not None:
                self.session_bytes_out[ev.service] += ev.bytes_out
        elif kind == "delivery":
            self.deliveries[(ev.service, ev.reason)] += 1

    def login_failures(self) -> Counter[tuple[str, str]]:
        """Refused logins by (service, reason): auth failed, internal failure, disabled ..."""
        out: Counter[tuple[str, str]] = Counter()
        for (service, _ending, reason, _mech, _tls), n in self.login_ends.items():
            if reason in FAILED_LOGIN_REASONS:
                out[(service, reason)] += n
        return out

    def flat(self) -> dict[str, int]:
        """Dotted names as in the corpus' ``ground_truth.json`` (``login.ok.imap.TLS`` ...)."""
        out: Counter[str] = Counter()
        out["lines.total"] = self.lines
        out.update(self.families)
        for (service, mech, tls), n in self.logins.items():
            out[f"login.ok.{service}.mech.{mech}"] += n
            out[f"login.ok.{service}.{tls}"] += n
        for (service, ending, reason, _mech, _tls), n in self.login_ends.items():
            out[f"login.end.{service}.{ending}.{reason}"] += n
        for (service, _reason), n in self.login_failures().items():
            out[f"login.failed.{service}"] += n
        for service, n in self.session_bytes_in.items():
            out[f"session.bytes_in.{service}"] += n
        for service, n in self.session_bytes_out.items():
            out[f"session.bytes_out.{service}"] += n
        for (process, level), n in self.messages.items():
            out[f"{level}.{process}"] = max(out[f"{level}.{process}"], n)
        for program, n in self.unsupported.items():
            out[f"unsupported.{program}"] += n
        return dict(out)
