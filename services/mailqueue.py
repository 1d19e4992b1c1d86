"""Pure model of the Postfix mail queue: ``postqueue -j`` and ``postcat`` output, filters.

``postqueue -j`` prints one JSON object per queued message and line (Postfix >= 3.1)::

    {"queue_name": "deferred", "queue_id": "5AE3620C1D3", "arrival_time": 1796218189,
     "message_size": 310, "forced_expire": false, "sender": "alice@example.net",
     "recipients": [{"address": "bob@example.org", "delay_reason": "connect to ..."}]}

``forced_expire`` exists from Postfix 3.5 (``False`` when absent); ``delay_reason`` is absent
for recipients not tried yet (e.g. held mail); members we do not know are ignored, as the
manual asks. A line that is not such an object is counted in ``ParseResult.bad_lines`` and
skipped, never raised: a queue scraper must survive whatever it is fed.

This module does no I/O (``services.queue_ops`` runs the Postfix commands) so the CLI and the
metrics exporter share it.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

QUEUE_NAMES = ("active", "deferred", "hold", "incoming", "maildrop", "corrupt")
NULL_SENDER = "MAILER-DAEMON"  # how postqueue -j shows the null sender <>
QUEUE_ID_RE = re.compile(r"[0-9A-Za-z]{5,32}")  # short (hex) and long (base 52) queue ids


# --------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class QueueRecipient:
    """One recipient still to be delivered; ``delay_reason`` is "" when Postfix gave none."""

    address: str
    delay_reason: str = ""

    @property
    def domain(self) -> str:
        """The lower-cased domain part ("" for an address without ``@``)."""
        return self.address.rpartition("@")[2].lower() if "@" in self.address else ""


@dataclass(frozen=True, slots=True)
class QueueMessage:
    """One queue file as ``postqueue -j`` reports it."""

    queue_id: str
    queue_name: str
    arrival_time: int
    message_size: int
    sender: str
    recipients: tuple[QueueRecipient, ...]
    forced_expire: bool = False

    def age(self, now: float) -> float:
        """Seconds since arrival (never negative)."""
        return max(0.0, now - self.arrival_time)

    def to_dict(self) -> dict[str, Any]:
        """The ``postqueue -j`` shape (``delay_reason`` only when there is one)."""
        return {
            "queue_name": self.queue_name,
            "queue_id": self.queue_id,
            "arrival_time": self.arrival_time,
            "message_size": self.message_size,
            "forced_expire": self.forced_expire,
            "sender": self.sender,
            "recipients": [
                {"address": r.address, "delay_reason": r.delay_reason}
                if r.delay_reason
                else {"address": r.address}
                for r in self.recipients
            ],
        }


@dataclass(frozen=True, slots=True)
class ParseResult:
    """Messages parsed from ``postqueue -j`` output, and how many lines were unusable."""

    messages: tuple[QueueMessage, ...]
    bad_lines: int = 0


class QueueParseError(ValueError):
    """A ``postqueue -j`` line that is not a queue message object."""


# --------------------------------------------------------------------------- postqueue -j

_QUEUE_NAME_SET = frozenset(QUEUE_NAMES)


def message_from_json(obj: object) -> QueueMessage:
    """Validate one decoded ``postqueue -j`` object; QueueParseError names the bad member."""
    if not isinstance(obj, dict):
        raise QueueParseError("not a JSON object")
    qid = obj.get("queue_id")
    if not isinstance(qid, str) or not QUEUE_ID_RE.fullmatch(qid):
        raise QueueParseError("queue_id: missing or not a queue id")
    queue = obj.get("queue_name")
    if not isinstance(queue, str) or not queue:
        raise QueueParseError("queue_name: missing or not a string")
    arrival = obj.get("arrival_time")
    if type(arrival) is not int:
        raise QueueParseError("arrival_time: missing or not an integer")
    size = obj.get("message_size")
    if type(size) is not int:
        raise QueueParseError("message_size: missing or not an integer")
    sender = obj.get("sender")
    if not isinstance(sender, str):
        raise QueueParseError("sender: missing or not a string")
    forced = obj.get("forced_expire", False)
    if type(forced) is not bool:
        raise QueueParseError("forced_expire: not true or false")
    raw_rcpts = obj.get("recipients")
    if not isinstance(raw_rcpts, list):
        raise QueueParseError("recipients: missing or not an array")
    rcpts = []
    for r in raw_rcpts:
        if not isinstance(r, dict):
            raise QueueParseError("recipients: an item is not an object")
        address = r.get("address")
        reason = r.get("delay_reason", "")
        if not isinstance(address, str) or not isinstance(reason, str):
            raise QueueParseError("recipients: address or delay_reason is not a string")
        rcpts.append(QueueRecipient(address, reason))
    return QueueMessage(qid, queue, arrival, size, sender, tuple(rcpts), forced)


def parse_line(line: str | bytes) -> QueueMessage:
    """Parse one ``postqueue -j`` line; raises QueueParseError."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        raise QueueParseError("not valid JSON") from None
    return message_from_json(obj)


def _decode(data: str | bytes) -> str:
    # Postfix passes non-ASCII bytes of addresses through; never fail on them.
    return data if isinstance(data, str) else data.decode("utf-8", "replace")


def parse_postqueue(data: str | bytes | Iterable[str | bytes]) -> ParseResult:
    """Parse ``postqueue -j`` output (a whole text, or its lines); count bad lines.

    Blank lines are skipped; every other line that is not a queue message object counts as
    bad. 50,000 real lines (16 MB) parse in about 0.3 s (one ``json.loads`` per line measured
    faster than one call on a joined array).
    """
    if isinstance(data, str | bytes):
        lines: Iterable[str | bytes] = _decode(data).split("\n")
    else:
        lines = data
    messages: list[QueueMessage] = []
    append = messages.append
    bad = 0
    loads = json.loads
    for raw in lines:
        line = _decode(raw)
        if not line or line.isspace():
            continue
        try:
            append(message_from_json(loads(line)))
        except (ValueError, RecursionError):  # QueueParseError is a ValueError
            bad += 1
    return ParseResult(tuple(messages), bad)


# --------------------------------------------------------------------------- filters


def _pattern(pattern: str) -> re.Pattern[str]:
    """Exact (case-insensitive) match, or a shell glob when ``*``, ``?`` or ``[`` appear."""
    p = pattern.strip().lower()
    if any(ch in p for ch in "*?["):
        return re.compile(fnmatch.translate(p))
    return re.compile(re.escape(p) + r"\Z")


def _sender_pattern(pattern: str) -> re.Pattern[str]:
    if pattern.strip() in ("<>", ""):
        return re.compile(r"(?:mailer-daemon)?\Z")
    return _pattern(pattern)


def valid_queue_id(qid: str) -> bool:
    """True for a syntactically valid Postfix queue id (short hex or long form)."""
    return QUEUE_ID_RE.fullmatch(qid) is not None


@dataclass(frozen=True)
class QueueFilter:
    """Which messages a command selects.

    Values of one criterion are alternatives (OR); different criteria must all hold (AND).
    The recipient criteria (``recipients``, ``domains``, ``reasons``) must hold for the
    *same* recipient: ``--domain gmail.com --reason timed`` selects messages with a gmail
    recipient whose delivery timed out. Address patterns match whole addresses,
    case-insensitively, exactly or as shell globs (``*@example.org``, ``bob@*``); the
    sender ``<>`` matches bounces (``MAILER-DAEMON``). Reasons match as case-insensitive
    substrings. Ages are seconds since arrival: ``older_than`` is inclusive.
    """

    senders: tuple[str, ...] = ()
    recipients: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    queue_ids: tuple[str, ...] = ()
    older_than: float | None = None
    younger_than: float | None = None
    _compiled: tuple[Any, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for q in self.queues:
            if q not in _QUEUE_NAME_SET:
                raise ValueError(f"queue: unknown queue {q!r} (one of {', '.join(QUEUE_NAMES)})")
        for qid in self.queue_ids:
            if not valid_queue_id(qid):
                raise ValueError(f"queue id: {qid!r} is not a Postfix queue id")
        for name, value in (("older_than", self.older_than), ("younger_than", self.younger_than)):
            if value is not None and value < 0:
                raise ValueError(f"{name}: must not be negative")
        compiled = (
            tuple(_sender_pattern(s) for s in self.senders),
            tuple(_pattern(r) for r in self.recipients),
            tuple(_pattern(d.lstrip("@")) for d in self.domains),
            tuple(r.lower() for r in self.reasons),
            frozenset(self.queues),
            frozenset(self.queue_ids),
        )
        object.__setattr__(self, "_compiled", compiled)

    def is_empty(self) -> bool:
        """True when the filter selects every message."""
        return not (
            self.senders
            or self.recipients
            or self.domains
            or self.reasons
            or self.queues
            or self.queue_ids
            or self.older_than is not None
            or self.younger_than is not None
        )

    def matches(self, msg: QueueMessage, now: float) -> bool:
        """Does ``msg`` satisfy every criterion (at time ``now``, epoch seconds)?"""
        senders, rcpts, domains, reasons, queues, qids = self._compiled
        if qids and msg.queue_id not in qids:
            return False
        if queues and msg.queue_name not in queues:
            return False
        if self.older_than is not None and msg.age(now) < self.older_than:
            return False
        if self.younger_than is not None and msg.age(now) >= self.younger_than:
            return False
        if senders:
            s = msg.sender.lower()
            if not any(p.match(s) for p in senders):
                return False
        if rcpts or domains or reasons:
            return any(self._recipient_matches(r, rcpts, domains, reasons) for r in msg.recipients)
        return True

    @staticmethod
    def _recipient_matches(
        r: QueueRecipient,
        rcpts: tuple[re.Pattern[str], ...],
        domains: tuple[re.Pattern[str], ...],
        reasons: tuple[str, ...],
    ) -> bool:
        if rcpts:
            a = r.address.lower()
            if not any(p.match(a) for p in rcpts):
                return False
        if domains:
            d = r.domain
            if not any(p.match(d) for p in domains):
                return False
        if reasons:
            why = r.delay_reason.lower()
            if not any(x in why for x in reasons):
                return False
        return True

    def select(self, messages: Iterable[QueueMessage], now: float) -> list[QueueMessage]:
        """The matching messages, in input order, each queue id once."""
        seen: set[str] = set()
        out = []
        for m in messages:
            if m.queue_id not in seen and self.matches(m, now):
                seen.add(m.queue_id)
                out.append(m)
        return out


# --------------------------------------------------------------------------- postcat


@dataclass(frozen=True, slots=True)
class PostcatView:
    """``postcat -e -h [-b] -q QID`` split into its sections."""

    queue_path: str  # e.g. "deferred/5/5AE3620C1D3"
    envelope: tuple[tuple[str, str], ...]
    headers: str
    body: str | None  # None unless the body was asked for
    extracted: tuple[tuple[str, str], ...] = ()

    @property
    def queue_name(self) -> str:
        """The queue directory the file was read from."""
        return self.queue_path.partition("/")[0]

    def header_fields(self) -> list[tuple[str, str]]:
        """Headers as (name, unfolded value) pairs."""
        out: list[tuple[str, str]] = []
        for line in self.headers.split("\n"):
            if line[:1] in (" ", "\t") and out:
                name, value = out[-1]
                out[-1] = (name, f"{value} {line.strip()}")
            elif ":" in line:
                name, _, value = line.partition(":")
                out.append((name.strip(), value.strip()))
        return out


_MARKER_RE = re.compile(
    r"^\*\*\* (ENVELOPE RECORDS|MESSAGE CONTENTS|HEADER EXTRACTED|MESSAGE FILE END) (\S+) \*\*\*$"
)


def _records(lines: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for line in lines:
        name, sep, value = line.partition(":")
        if sep and name and " " not in name:
            out.append((name, value.strip()))
    return tuple(out)


def parse_postcat(text: str, with_body: bool) -> PostcatView:
    """Split ``postcat -e -h [-b]`` output into envelope, headers and (optionally) body.

    Markers are only trusted when they name the same queue file as the first one, and the
    message contents end at the *last* ``HEADER EXTRACTED`` marker, so a body line that
    imitates a marker cannot cut the message short.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    marks: list[tuple[int, str]] = []
    path = ""
    for i, line in enumerate(lines):
        m = _MARKER_RE.match(line)
        if not m:
            continue
        if not path:
            path = m.group(2)
        if m.group(2) == path:
            marks.append((i, m.group(1)))
    if not marks or marks[0][1] != "ENVELOPE RECORDS":
        raise QueueParseError("postcat output has no envelope section")

    def first(kind: str) -> int | None:
        return next((i for i, k in marks if k == kind), None)

    def last(kind: str) -> int | None:
        return next((i for i, k in reversed(marks) if k == kind), None)

    env_start = marks[0][0] + 1
    contents = first("MESSAGE CONTENTS")
    extracted = last("HEADER EXTRACTED")
    end = last("MESSAGE FILE END")
    end = len(lines) if end is None else end
    env_end = contents if contents is not None else (extracted if extracted is not None else end)
    envelope = _records(lines[env_start:env_end])
    headers: list[str] = []
    body: list[str] | None = [] if with_body else None
    if contents is not None:
        stop = extracted if extracted is not None and extracted > contents else end
        msg = lines[contents + 1 : stop]
        try:
            blank = msg.index("")
        except ValueError:
            blank = len(msg)
        headers = msg[:blank]
        if body is not None:
            body = msg[blank + 1 :]
    tail = _records(lines[extracted + 1 : end]) if extracted is not None else ()
    return PostcatView(
        queue_path=path,
        envelope=envelope,
        headers="\n".join(headers),
        body="\n".join(body) if body is not None else None,
        extracted=tail,
    )


# --------------------------------------------------------------------------- formatting


def format_age(seconds: float) -> str:
    """Compact age: ``45s``, ``12m``, ``5h``, ``3d``."""
    s = int(max(0.0, seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def format_size(size: int) -> str:
    """Compact byte count: ``310``, ``4.2K``, ``12M``."""
    if size < 1024:
        return str(size)
    value = float(size)
    for unit in ("K", "M", "G"):
        value /= 1024
        if value < 10:
            return f"{value:.1f}{unit}"
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}"
    return str(size)  # pragma: no cover


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters with an ellipsis."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


_REASON_PREFIX_RE = re.compile(r"^(?:delivery temporarily suspended: )+")
_REASON_REPLY_RE = re.compile(r" \(in reply to [^)]*\)$")
_HOST_IP_RE = re.compile(r"(\S+)\[([^\]]+)\]")


def short_reason(reason: str, width: int = 60) -> str:
    """A delay reason for one table cell: Postfix's boilerplate dropped, then shortened.

    ``delivery temporarily suspended:`` and ``(in reply to ... command)`` go, ``connect to``
    goes, and ``host[ip]`` becomes ``host`` when both are the same address.
    """
    r = _REASON_REPLY_RE.sub("", _REASON_PREFIX_RE.sub("", reason.strip()))
    if r.startswith("connect to "):
        r = r[len("connect to ") :]
    r = _HOST_IP_RE.sub(lambda m: m.group(1) if m.group(1) == m.group(2) else m.group(0), r)
    return shorten(" ".join(r.split()), width)
