"""Sans-IO codec for Postfix's SMTP access policy delegation protocol.

Requests are ``name=value`` lines ended by an empty line; answers are ``action=...`` and an
empty line; one connection carries many requests. Pure: no asyncio, no I/O. The parser is
incremental and bounded, and every failure is a :class:`ProtocolError` subclass.

Bytes are decoded as UTF-8 with ``surrogateescape``: decoding never fails and never loses a
byte (re-encoding with the same handler gives the original bytes back).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "ACTIONS",
    "DUNNO",
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


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """One complete policy request: every attribute as Postfix sent it."""

    attrs: Mapping[str, str]

    def get(self, name: str, default: str = "") -> str:
        return self.attrs.get(name, default)

    @property
    def protocol_state(self) -> str:
        return self.attrs.get("protocol_state", "").upper()

    @property
    def instance(self) -> str:
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
        v = self.attrs.get("size")
        return _int(v) if v else 0

    @property
    def recipient_count(self) -> int:
        v = self.attrs.get("recipient_count")
        return _int(v) if v else 0


class PolicyParser:
    """Incremental, bounded request parser: feed bytes, get requests and errors in order."""

    __slots__ = ("_buf", "_dead", "max_attributes", "max_line", "max_request")

    def __init__(self, *, max_line: int = 8192, max_attributes: int = 256, max_request: int = 65536) -> None:
        self.max_line = max_line
        self.max_attributes = max_attributes
        self.max_request = max_request
        self._buf = b""
        self._dead = False

    @property
    def pending(self) -> bool:
        """True when part of a request is buffered."""
        return bool(self._buf.strip(b"\r\n")) and not self._dead

    @property
    def dead(self) -> bool:
        """True after an error that lost framing; the connection should be closed."""
        return self._dead

    def feed(self, data: bytes) -> list[PolicyRequest | ProtocolError]:
        """Add bytes; return every request (or error) completed by them."""
        if self._dead:
            return []
        buf = self._buf + data if self._buf else data
        if b"\r" in data:
            buf = buf.replace(b"\r\n", b"\n")  # tolerate CRLF line ends
        out: list[PolicyRequest | ProtocolError] = []
        start = 0
        find = buf.find
        while True:
            end = find(b"\n\n", start)
            if end < 0:
                break
            block = buf[start:end].lstrip(b"\n")
            start = end + 2
            if not block:
                continue  # stray empty lines between requests
            out.append(self._parse(block))
            if self._dead:
                return out
        rest = buf[start:]
        if len(rest) > self.max_line and len(rest) - rest.rfind(b"\n") - 1 > self.max_line:
            return self._die(out, LineTooLong(f"line over {self.max_line} bytes"))
        if len(rest) > self.max_request:
            return self._die(out, RequestTooLarge(f"request over {self.max_request} bytes"))
        self._buf = rest
        return out

    def _die(
        self, out: list[PolicyRequest | ProtocolError], err: ProtocolError
    ) -> list[PolicyRequest | ProtocolError]:
        self._dead = True
        self._buf = b""
        out.append(err)
        return out

    def _parse(self, block: bytes) -> PolicyRequest | ProtocolError:
        """Parse one complete request (framing is intact whatever goes wrong here)."""
        lines = block.split(b"\n")
        if len(lines) > self.max_attributes:
            return TooManyAttributes(f"{len(lines)} attributes, at most {self.max_attributes}")
        if len(block) > self.max_request:
            err: ProtocolError = RequestTooLarge(f"request over {self.max_request} bytes")
            err.resync = True
            return err
        max_line = self.max_line
        if len(block) > max_line and max(map(len, lines)) > max_line:
            err = LineTooLong(f"line over {max_line} bytes")
            err.resync = True
            return err
        text = block.decode("utf-8", "surrogateescape").split("\n")
        try:
            attrs = dict([line.split("=", 1) for line in text])
        except ValueError:
            return MalformedLine("a line without name=value")
        if len(attrs) != len(text) or "" in attrs:
            if "" in attrs:
                return MalformedLine("a line with an empty attribute name")
            seen: set[str] = set()
            for line in text:
                key = line.split("=", 1)[0]
                if key in seen:
                    return DuplicateAttribute(f"attribute {key[:64]!r} repeated")
                seen.add(key)
        if attrs.get("request") != "smtpd_access_policy":
            return BadRequestType(f"request={attrs.get('request', '')[:64]!r}")
        return PolicyRequest(attrs)


# --------------------------------------------------------------------------- answers

# access(5) actions a policy server may return (Postfix 3.x).
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
_CODE = re.compile(r"^[45]\d\d$")
_NEEDS_TEXT = frozenset({"BCC", "FILTER", "PREPEND", "REDIRECT"})
_UNSAFE = re.compile(r"[\r\n\0]")
MAX_TEXT = 1000


@dataclass(frozen=True, slots=True)
class Action:
    """One answer to Postfix: an access(5) verb (or 4xx/5xx code) and optional text."""

    verb: str
    text: str = ""
    wire: bytes = b""

    def __post_init__(self) -> None:
        verb = self.verb.upper()
        if verb not in ACTIONS and not _CODE.match(verb):
            raise ValueError(f"unknown access(5) action {self.verb!r}")
        text = _UNSAFE.sub(" ", self.text).strip()[:MAX_TEXT]
        if verb in _NEEDS_TEXT and not text:
            raise ValueError(f"action {verb} needs an argument")
        object.__setattr__(self, "verb", verb)
        object.__setattr__(self, "text", text)
        line = f"action={verb} {text}" if text else f"action={verb}"
        object.__setattr__(self, "wire", line.encode("utf-8", "surrogateescape") + b"\n\n")

    def encode(self) -> bytes:
        """The answer on the wire (cached)."""
        return self.wire

    def __str__(self) -> str:
        return f"{self.verb} {self.text}" if self.text else self.verb

    @classmethod
    def parse(cls, s: str) -> Action:
        """``"DEFER 4.7.1 slow down"`` -> Action("DEFER", "4.7.1 slow down")."""
        verb, _, text = s.strip().partition(" ")
        if not verb:
            raise ValueError("empty action")
        return cls(verb, text)


DUNNO = Action("DUNNO")
