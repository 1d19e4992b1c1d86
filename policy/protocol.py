"""Sans-IO codec for Postfix's SMTP access policy delegation protocol.

Requests are ``name=value`` lines ended by an empty line; answers are ``action=...`` and an
empty line; one connection carries many requests (SMTPD_POLICY_README). Pure: no asyncio, no
I/O. The parser is incremental and bounded, and every failure is a :class:`ProtocolError`.

Decoding: bytes are decoded as UTF-8 with ``surrogateescape``. Decoding never fails and never
loses a byte: ``value.encode("utf-8", "surrogateescape")`` gives back exactly what Postfix sent
(Postfix passes SMTPUTF8 addresses as UTF-8 and may pass raw 8-bit bytes from clients).

Line ends: ``\\n``; a ``\\r`` directly before ``\\n`` is dropped (CRLF is tolerated). Empty lines
between requests are ignored.

Limits, and what they do to the stream (the parser's output never depends on how the bytes
were split into reads):

* ``max_line``: an attribute line (without its ``\\n``) longer than this -> :class:`LineTooLong`;
* ``max_request``: a request whose lines (with their ``\\n``) total more than this ->
  :class:`RequestTooLarge`. Both are raised as soon as they are certain, before the request
  ends; framing is then lost (``resync = False``) and the parser is dead.
* ``max_attributes``: more lines than this in one (complete, bounded) request ->
  :class:`TooManyAttributes`, like the other per-request errors ``resync = True``: the request
  was consumed, answer it and go on with the next one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "ACTIONS",
    "DUNNO",
    "MAX_TEXT",
    "Action",
    "BadRequestType",
    "DuplicateAttribute",
    "LineTooLong",
    "MalformedLine",
    "PolicyParser",
    "PolicyRequest",
    "ProtocolError",
    "RequestTooLarge",
    "TooManyAttributes",
]


class ProtocolError(Exception):
    """A request that cannot be served; ``resync`` tells if framing is still intact."""

    reason = "protocol_error"
    resync = True


class LineTooLong(ProtocolError):
    """A line longer than ``max_line`` bytes: framing is lost."""

    reason = "line_too_long"
    resync = False


class RequestTooLarge(ProtocolError):
    """A request larger than ``max_request`` bytes: framing is lost."""

    reason = "request_too_large"
    resync = False


class TooManyAttributes(ProtocolError):
    """More attributes than ``max_attributes`` in one request."""

    reason = "too_many_attributes"


class MalformedLine(ProtocolError):
    """A line without ``=`` or with an empty name."""

    reason = "malformed_line"


class DuplicateAttribute(ProtocolError):
    """The same attribute twice in one request (Postfix never does this)."""

    reason = "duplicate_attribute"


class BadRequestType(ProtocolError):
    """``request=`` missing or not ``smtpd_access_policy``."""

    reason = "bad_request_type"


def _int(value: str | None) -> int:
    if not value:
        return 0
    try:
        return int(value)
    except ValueError:
        return 0


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """One complete policy request: every attribute as Postfix sent it (see module doc)."""

    attrs: Mapping[str, str]

    def get(self, name: str, default: str = "") -> str:
        """An attribute, ``default`` when absent."""
        return self.attrs.get(name, default)

    @property
    def protocol_state(self) -> str:
        """``CONNECT``, ``RCPT``, ``END-OF-MESSAGE``... (upper-cased)."""
        return self.attrs.get("protocol_state", "").upper()

    @property
    def instance(self) -> str:
        """Postfix's id of the SMTP transaction (same for its RCPTs and END-OF-MESSAGE)."""
        return self.attrs.get("instance", "")

    @property
    def sender(self) -> str:
        return self.attrs.get("sender", "")

    @property
    def recipient(self) -> str:
        return self.attrs.get("recipient", "")

    @property
    def sasl_username(self) -> str:
        return self.attrs.get("sasl_username", "")

    @property
    def client_address(self) -> str:
        return self.attrs.get("client_address", "")

    @property
    def queue_id(self) -> str:
        return self.attrs.get("queue_id", "")

    @property
    def size(self) -> int:
        """Message size (real only at END-OF-MESSAGE); 0 when absent or not a number."""
        return _int(self.attrs.get("size"))

    @property
    def recipient_count(self) -> int:
        """Accepted recipients (real only at END-OF-MESSAGE); 0 when absent or invalid."""
        return _int(self.attrs.get("recipient_count"))


class PolicyParser:
    """Incremental, bounded request parser: feed bytes, get requests and errors in order."""

    __slots__ = (
        "_buf",
        "_cr",
        "_dead",
        "_guard",
        "_line_start",
        "max_attributes",
        "max_line",
        "max_request",
    )

    def __init__(
        self, *, max_line: int = 8192, max_attributes: int = 256, max_request: int = 65536
    ) -> None:
        if max_line < 1 or max_attributes < 1 or max_request < 2:
            raise ValueError("parser limits must be positive")
        self.max_line = max_line
        self.max_attributes = max_attributes
        self.max_request = max_request
        # A complete request at most this long can break no size limit (no scan needed).
        self._guard = min(max_line, max_request - 1)
        self._buf = bytearray()  # the incomplete request, never starting with b"\n"
        self._line_start = 0  # lines of _buf before this offset are known to be short enough
        self._cr = False  # a trailing b"\r" is held back until we know if b"\n" follows
        self._dead = False

    @property
    def pending(self) -> bool:
        """True when part of a request is buffered (closing now would cut it)."""
        return not self._dead and (bool(self._buf) or self._cr)

    @property
    def dead(self) -> bool:
        """True after an error that lost framing; the connection should be closed."""
        return self._dead

    def feed(self, data: bytes) -> list[PolicyRequest | ProtocolError]:
        """Add bytes; return every request (or error) completed by them, in order."""
        if self._dead:
            return []
        if self._cr or b"\r" in data:
            data = self._crlf(data)
        buf = self._buf
        if buf:
            old = len(buf)
            buf += data
            if buf.find(b"\n\n", old - 1) < 0:
                err = self._check_tail(buf)
                if err is None:
                    return []
                return self._die([], err)
            data = bytes(buf)
            buf.clear()
            self._line_start = 0
        out: list[PolicyRequest | ProtocolError] = []
        find = data.find
        start = 0
        while (end := find(b"\n\n", start)) >= 0:
            block = data[start:end]
            start = end + 2
            if block[:1] == b"\n":
                block = block.lstrip(b"\n")
            if not block:
                continue  # stray empty lines between requests
            if len(block) > self._guard:
                err = self._overflow(block + b"\n", 0)
                if err is not None:
                    return self._die(out, err)
            out.append(self._parse(block))
        if start < len(data):
            tail = data[start:].lstrip(b"\n") if data[start] == 10 else data[start:]
            if tail:
                buf += tail
                err = self._check_tail(buf)
                if err is not None:
                    return self._die(out, err)
        return out

    def _crlf(self, data: bytes) -> bytes:
        """Drop each b"\\r" that precedes b"\\n", even across reads."""
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if data[-1:] == b"\r":
            data = data[:-1]
            self._cr = True
        return data.replace(b"\r\n", b"\n")

    def _check_tail(self, buf: bytearray) -> ProtocolError | None:
        """Limits on the incomplete request; cheap unless a limit may be near."""
        if len(buf) > self.max_request or len(buf) - self._line_start > self.max_line:
            err = self._overflow(buf, self._line_start)
            if err is not None:
                return err
            self._line_start = buf.rfind(b"\n") + 1
        return None

    def _overflow(self, req: bytes | bytearray, line_from: int) -> ProtocolError | None:
        """The size error that became certain first in ``req`` (request bytes so far).

        A too-long line is certain at its ``max_line + 1``-th byte, a too-large request at its
        ``max_request + 1``-th byte; reporting the earlier one keeps the outcome independent
        of how the stream was split into reads.
        """
        max_line = self.max_line
        n = len(req)
        pos_line = 0
        i = line_from
        while i < n:
            j = req.find(b"\n", i)
            if j < 0:
                j = n
            if j - i > max_line:
                pos_line = i + max_line + 1
                break
            i = j + 1
        pos_req = self.max_request + 1 if n > self.max_request else 0
        if pos_line and (not pos_req or pos_line <= pos_req):
            return LineTooLong(f"a line over {max_line} bytes")
        if pos_req:
            return RequestTooLarge(f"a request over {self.max_request} bytes")
        return None

    def _die(
        self, out: list[PolicyRequest | ProtocolError], err: ProtocolError
    ) -> list[PolicyRequest | ProtocolError]:
        self._dead = True
        self._buf.clear()
        self._cr = False
        out.append(err)
        return out

    def _parse(self, block: bytes) -> PolicyRequest | ProtocolError:
        """Parse one complete request (framing is intact whatever goes wrong here)."""
        lines = block.decode("utf-8", "surrogateescape").split("\n")
        if len(lines) > self.max_attributes:
            return TooManyAttributes(f"{len(lines)} attributes, at most {self.max_attributes}")
        try:
            attrs = dict([line.split("=", 1) for line in lines])
        except ValueError:
            bad = next(i for i, line in enumerate(lines, 1) if "=" not in line)
            return MalformedLine(f"line {bad} has no '='")
        if len(attrs) != len(lines) or "" in attrs:
            seen: set[str] = set()
            for i, line in enumerate(lines, 1):
                name = line.partition("=")[0]
                if not name:
                    return MalformedLine(f"line {i} has an empty attribute name")
                if name in seen:
                    return DuplicateAttribute(f"attribute {name[:64]!r} repeated")
                seen.add(name)
        request = attrs.get("request")
        if request != "smtpd_access_policy":
            if request is None:
                return BadRequestType("no request= attribute")
            return BadRequestType(f"request={request[:64]!r}")
        return PolicyRequest(attrs)


# --------------------------------------------------------------------------- answers

# access(5) actions a policy server may return (Postfix 3.x), besides "4NN text"/"5NN text".
ACTIONS = frozenset(
    {
        "OK",
        "DUNNO",
        "REJECT",
        "DEFER",
        "DEFER_IF_REJECT",
        "DEFER_IF_PERMIT",
        "BCC",
        "DISCARD",
        "FILTER",
        "HOLD",
        "PREPEND",
        "REDIRECT",
        "INFO",
        "WARN",
    }
)
MAX_TEXT = 512  # longest text kept (an SMTP reply line is at most 512 bytes)

_CODE = re.compile(r"[45]\d\d")
_DSN = re.compile(r"([245])\.\d{1,3}\.\d{1,3}(?:\s|$)")
_UNSAFE = re.compile(r"[\r\n\0]+")
_HEADER = re.compile(r"[!-9;-~]+:")  # RFC 5322 field name then ':'
# Verbs whose argument is required, with a check and a hint for the message.
_ARG = {
    "BCC": (re.compile(r"\S+@\S+$"), "user@domain"),
    "REDIRECT": (re.compile(r"\S+@\S+$"), "user@domain"),
    "FILTER": (re.compile(r"[^:\s]+:\S*$"), "transport:destination"),
    "PREPEND": (_HEADER, "'Name: value' header"),
}
_NO_TEXT = frozenset({"OK", "DUNNO"})
_DSN_CLASS = {"REJECT": "5", "DEFER": "4", "DEFER_IF_REJECT": "4", "DEFER_IF_PERMIT": "4"}


@dataclass(frozen=True, slots=True)
class Action:
    """One answer to Postfix: an access(5) verb (or 4xx/5xx code) and optional text.

    The verb is upper-cased and validated; the text has CR, LF and NUL replaced by a space, is
    stripped and cut to :data:`MAX_TEXT` characters, so an answer can never break framing.
    Raises ``ValueError`` for an unknown verb or an argument Postfix would refuse.
    """

    verb: str
    text: str = ""
    wire: bytes = field(default=b"", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        verb = self.verb.strip().upper()
        text = _UNSAFE.sub(" ", self.text).strip()[:MAX_TEXT]
        if _CODE.fullmatch(verb):
            if not text:
                raise ValueError(
                    f"action {verb} needs a text (Postfix takes an all-numeric answer as OK)"
                )
            _check_dsn(verb, verb[0], text)
        elif verb not in ACTIONS:
            raise ValueError(
                f"unknown access(5) action {self.verb[:40]!r}: expected one of "
                f"{', '.join(sorted(ACTIONS))} or a 4NN/5NN code with text"
            )
        elif verb in _NO_TEXT:
            if text:
                raise ValueError(f"action {verb} takes no text")
        elif verb in _ARG:
            pattern, hint = _ARG[verb]
            if not pattern.match(text):
                raise ValueError(f"action {verb} needs a {hint}")
        elif verb in _DSN_CLASS:
            _check_dsn(verb, _DSN_CLASS[verb], text)
        object.__setattr__(self, "verb", verb)
        object.__setattr__(self, "text", text)
        line = f"action={verb} {text}\n\n" if text else f"action={verb}\n\n"
        try:
            wire = line.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
            wire = line.encode("utf-8", "replace")
        object.__setattr__(self, "wire", wire)

    def encode(self) -> bytes:
        """The answer on the wire, ``b"action=VERB[ TEXT]\\n\\n"`` (computed once)."""
        return self.wire

    def __str__(self) -> str:
        return f"{self.verb} {self.text}" if self.text else self.verb

    @classmethod
    def parse(cls, s: str) -> Action:
        """``"DEFER 4.7.1 slow down"`` -> ``Action("DEFER", "4.7.1 slow down")``."""
        parts = s.strip().split(None, 1)
        if not parts:
            raise ValueError("empty action")
        return cls(parts[0], parts[1] if len(parts) > 1 else "")


def _check_dsn(verb: str, cls: str, text: str) -> None:
    """An enhanced status code leading ``text`` must be of the reply's class (4 or 5)."""
    m = _DSN.match(text)
    if m and m.group(1) != cls:
        raise ValueError(f"action {verb}: status {text.split()[0]} must start with {cls}.")


DUNNO = Action("DUNNO")
