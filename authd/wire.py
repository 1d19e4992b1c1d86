"""The pfm-authd wire format: a pure, incremental, bounded codec for both halves (no I/O).

pfm-checkpassword, the Dovecot Lua passdb and anything else that asks pfm-authd whether a
login is good speak this over a unix stream socket. A client sends one request frame and
reads one reply frame; it may send further requests on the same connection, and the server
answers them in order.

Frame (all integers big-endian)::

    offset  size  field
    0       3     magic    b"PFA"
    3       1     version  b"1" (0x31)
    4       1     type     one ASCII letter, see below
    5       4     length   payload length N, 0 <= N <= MAX_PAYLOAD (65536)
    9       N     payload  zero or more fields, each  key 0x00 value 0x00

Frame types. Requests (client -> server): ``A`` AUTH (check a password), ``L`` LOOKUP (does
the user exist; no password, Dovecot's ``AUTHORIZED=1``), ``P`` PING. Replies (server ->
client): ``O`` OK, ``F`` FAIL (wrong credentials, disabled account), ``N`` NOUSER (unknown
user), ``T`` TEMPFAIL (directory down, overload; try again later), ``E`` ERROR (the server
could not understand the request).

Fields. Keys are lower-case ASCII ``[a-z][a-z0-9_]{0,63}`` and appear at most once; values
are UTF-8 text without NUL. A receiver ignores keys it does not know (new optional fields
do not need a new version); anything else that breaks these rules is a protocol error and
the connection is closed.

Request fields: ``user`` (required for AUTH and LOOKUP), ``password`` (required for AUTH,
forbidden in LOOKUP and PING), ``service``, ``remote_ip``, ``remote_port``, ``local_ip``,
``local_port`` (ports are decimal 0..65535), ``client_id``, ``master_user``, ``mechanism``,
``secured``, and any number of ``auth_*`` extras (Dovecot's ``AUTH_*`` environment,
lower-cased; never ``auth_password``).

Reply fields: ``user`` (canonical login name), ``home``, ``uid``, ``gid`` on OK, where every
other key is an extra field handed to Dovecot as it is (``userdb_quota_rule``, ``nologin`` …;
``userdb_user/home/uid/gid`` are refused as they clash with the fixed fields); ``reason`` (a
short text for logs, never a secret) on any reply, mostly FAIL, NOUSER, TEMPFAIL and ERROR.
A PING is answered with an empty OK.

Errors are a small typed tree under :class:`WireError`; their messages never contain a field
value (a value may be a password).
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

MAGIC = b"PFA"
VERSION = b"1"
PREFIX = MAGIC + VERSION
HEADER = struct.Struct(">4scI")
HEADER_SIZE = HEADER.size  # 9
MAX_PAYLOAD = 65536
MAX_KEY = 64

_KEY_RE = re.compile(rb"[a-z][a-z0-9_]{0,63}\Z")
_SECRET_KEYS = frozenset({"password"})


# --------------------------------------------------------------------------- errors


class WireError(Exception):
    """A protocol error; the connection should be closed. The message holds no field value.

    ``frames`` holds the frames that were decoded from the same ``feed`` call before the
    error, so a caller sees the same frames whatever the read sizes were.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.frames: list[Frame] = []


class BadMagic(WireError):
    """The stream does not start with ``PFA``: not a pfm-authd peer."""


class UnsupportedVersion(WireError):
    """The peer speaks another version of the format."""


class UnknownFrameType(WireError):
    """The type byte names no frame type."""


class FrameTooLarge(WireError):
    """The announced payload length exceeds :data:`MAX_PAYLOAD`."""


class BadPayload(WireError):
    """The payload is not a sequence of valid ``key\\0value\\0`` fields, or a field is wrong."""


class TruncatedFrame(WireError):
    """The stream ended in the middle of a frame."""


# --------------------------------------------------------------------------- frames


class FrameType(enum.Enum):
    """The type byte of a frame."""

    AUTH = b"A"
    LOOKUP = b"L"
    PING = b"P"
    OK = b"O"
    FAIL = b"F"
    NOUSER = b"N"
    TEMPFAIL = b"T"
    ERROR = b"E"

    @property
    def is_request(self) -> bool:
        """True for the frame types a client sends."""
        return self in _REQUEST_TYPES


_REQUEST_TYPES = frozenset({FrameType.AUTH, FrameType.LOOKUP, FrameType.PING})
_BY_BYTE = {t.value: t for t in FrameType}

Fields = tuple[tuple[str, str], ...]


def _masked(fields: Fields) -> str:
    shown = ", ".join(f"{k}={'***' if k in _SECRET_KEYS else repr(v)}" for k, v in fields)
    return "{" + shown + "}"


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: its type and its fields in wire order. ``repr`` masks passwords."""

    type: FrameType
    fields: Fields = ()

    def get(self, key: str, default: str | None = None) -> str | None:
        """The value of a field, or default."""
        for k, v in self.fields:
            if k == key:
                return v
        return default

    def as_dict(self) -> dict[str, str]:
        """The fields as a dict (keys are unique on the wire)."""
        return dict(self.fields)

    def __repr__(self) -> str:
        return f"Frame({self.type.name}, {_masked(self.fields)})"


def _check_key(key: str) -> bytes:
    raw = key.encode("ascii", "replace")
    if not _KEY_RE.match(raw):
        raise BadPayload(f"invalid field name {key[:MAX_KEY]!r}")
    return raw


def encode_frame(ftype: FrameType, fields: Iterable[tuple[str, str]] | Mapping[str, str]) -> bytes:
    """Encode one frame; raise BadPayload for an invalid key or value, FrameTooLarge if big."""
    items = fields.items() if isinstance(fields, Mapping) else fields
    parts: list[bytes] = []
    seen: set[str] = set()
    for key, value in items:
        raw_key = _check_key(key)
        if key in seen:
            raise BadPayload(f"duplicate field {key!r}")
        seen.add(key)
        if "\0" in value:
            raise BadPayload(f"field {key!r} contains NUL")
        try:
            raw_value = value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadPayload(f"field {key!r} is not valid UTF-8 text") from None
        parts += (raw_key, b"\0", raw_value, b"\0")
    payload = b"".join(parts)
    if len(payload) > MAX_PAYLOAD:
        raise FrameTooLarge(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(PREFIX, ftype.value, len(payload)) + payload


def decode_payload(payload: bytes) -> Fields:
    """Split a payload into its fields; raise BadPayload if it breaks the rules."""
    if not payload:
        return ()
    if not payload.endswith(b"\0"):
        raise BadPayload("payload does not end with NUL")
    parts = payload[:-1].split(b"\0")
    if len(parts) % 2:
        raise BadPayload("field name without value")
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i in range(0, len(parts), 2):
        raw_key, raw_value = parts[i], parts[i + 1]
        if not _KEY_RE.match(raw_key):
            raise BadPayload(f"invalid field name {raw_key[:MAX_KEY]!r}")
        key = raw_key.decode("ascii")
        if key in seen:
            raise BadPayload(f"duplicate field {key!r}")
        seen.add(key)
        try:
            value = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadPayload(f"field {key!r} is not valid UTF-8") from None
        out.append((key, value))
    return tuple(out)


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes as they arrive, get the complete frames back.

    Bad input is detected as early as possible (a wrong magic on its first byte, an oversized
    length as soon as the header is complete, before the payload is buffered). After an error
    the decoder is broken: every further ``feed`` raises the same error again.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self._max = max_payload
        self._error: WireError | None = None

    @property
    def at_boundary(self) -> bool:
        """True when no partial frame is buffered."""
        return not self._buf

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes; return every frame they complete, in order."""
        if self._error is not None:
            raise type(self._error)(str(self._error))
        self._buf += data
        frames: list[Frame] = []
        try:
            while True:
                frame = self._next()
                if frame is None:
                    return frames
                frames.append(frame)
        except WireError as exc:
            self._error = exc
            self._buf.clear()
            exc.frames = frames
            raise

    def eof(self) -> None:
        """The stream ended: raise TruncatedFrame if a partial frame is buffered."""
        if self._error is None and self._buf:
            self._error = TruncatedFrame(f"stream ended inside a frame ({len(self._buf)} bytes)")
            self._buf.clear()
            raise self._error

    def _next(self) -> Frame | None:
        buf = self._buf
        have = min(len(buf), len(MAGIC))
        if bytes(buf[:have]) != MAGIC[:have]:
            raise BadMagic("stream does not start with the PFA magic")
        if len(buf) < len(PREFIX):
            return None
        if buf[3:4] != VERSION:
            raise UnsupportedVersion(f"unsupported version byte {bytes(buf[3:4])!r}")
        if len(buf) < 5:
            return None
        ftype = _BY_BYTE.get(bytes(buf[4:5]))
        if ftype is None:
            raise UnknownFrameType(f"unknown frame type {bytes(buf[4:5])!r}")
        if len(buf) < HEADER_SIZE:
            return None
        _, _, length = HEADER.unpack_from(buf)
        if length > self._max:
            raise FrameTooLarge(f"payload of {length} bytes exceeds {self._max}")
        end = HEADER_SIZE + length
        if len(buf) < end:
            return None
        payload = bytes(buf[HEADER_SIZE:end])
        del buf[:end]
        return Frame(ftype, decode_payload(payload))


# --------------------------------------------------------------------------- requests


class RequestKind(enum.Enum):
    """What a client asks."""

    AUTH = FrameType.AUTH
    LOOKUP = FrameType.LOOKUP
    PING = FrameType.PING


class ReplyKind(enum.Enum):
    """What the server answers."""

    OK = FrameType.OK
    FAIL = FrameType.FAIL
    NOUSER = FrameType.NOUSER
    TEMPFAIL = FrameType.TEMPFAIL
    ERROR = FrameType.ERROR


_REQUEST_STR = (
    "service",
    "remote_ip",
    "local_ip",
    "client_id",
    "master_user",
    "mechanism",
    "secured",
)


def _port(frame: Frame, key: str) -> int | None:
    raw = frame.get(key)
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 5 and int(raw) <= 65535):
        raise BadPayload(f"field {key!r} is not a port number")
    return int(raw)


def _extras(fields: Iterable[tuple[str, str]], prefix: str, label: str) -> Fields:
    out = tuple(sorted(fields))
    for key, _ in out:
        if not key.startswith(prefix) or not _KEY_RE.match(key.encode("ascii", "replace")):
            raise BadPayload(f"{label} field {key[:MAX_KEY]!r} must match {prefix}[a-z0-9_]*")
    return out


@dataclass(frozen=True, slots=True)
class Request:
    """A request to pfm-authd. ``repr`` never shows the password."""

    kind: RequestKind
    user: str = ""
    password: str | None = field(default=None, repr=False)
    service: str = ""
    remote_ip: str = ""
    remote_port: int | None = None
    local_ip: str = ""
    local_port: int | None = None
    client_id: str = ""
    master_user: str = ""
    mechanism: str = ""
    secured: str = ""
    extra: Fields = ()  # ("auth_<name>", value) from Dovecot's AUTH_* environment

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra", _extras(self.extra, "auth_", "extra"))
        if any(k == "auth_password" for k, _ in self.extra):
            raise BadPayload("extra field 'auth_password' is not allowed")
        if self.kind is not RequestKind.PING and not self.user:
            raise BadPayload(f"field 'user' is required in {self.kind.name}")
        if self.kind is RequestKind.AUTH and self.password is None:
            raise BadPayload("field 'password' is required in AUTH")
        if self.kind is not RequestKind.AUTH and self.password is not None:
            raise BadPayload(f"field 'password' is not allowed in {self.kind.name}")
        for key in ("remote_port", "local_port"):
            port = getattr(self, key)
            if port is not None and not 0 <= port <= 65535:
                raise BadPayload(f"field {key!r} is not a port number")

    def to_fields(self) -> Fields:
        """The wire fields of this request (empty optional fields left out)."""
        out: list[tuple[str, str]] = []
        if self.user:
            out.append(("user", self.user))
        if self.password is not None:
            out.append(("password", self.password))
        for key in _REQUEST_STR[:2]:
            if getattr(self, key):
                out.append((key, getattr(self, key)))
        if self.remote_port is not None:
            out.append(("remote_port", str(self.remote_port)))
        if self.local_ip:
            out.append(("local_ip", self.local_ip))
        if self.local_port is not None:
            out.append(("local_port", str(self.local_port)))
        for key in _REQUEST_STR[3:]:
            if getattr(self, key):
                out.append((key, getattr(self, key)))
        return (*out, *self.extra)

    def encode(self) -> bytes:
        """This request as one frame."""
        return encode_frame(self.kind.value, self.to_fields())

    @classmethod
    def from_frame(cls, frame: Frame) -> Request:
        """The request a frame carries; BadPayload names the field that is wrong."""
        if not frame.type.is_request:
            raise BadPayload(f"{frame.type.name} is not a request")
        kind = RequestKind(frame.type)
        return cls(
            kind=kind,
            user=frame.get("user", "") or "",
            password=frame.get("password"),
            remote_port=_port(frame, "remote_port"),
            local_port=_port(frame, "local_port"),
            extra=tuple((k, v) for k, v in frame.fields if k.startswith("auth_")),
            **{key: frame.get(key, "") or "" for key in _REQUEST_STR},
        )


# --------------------------------------------------------------------------- replies

_REPLY_FIXED = frozenset({"user", "home", "uid", "gid", "reason"})
_REPLY_CLASH = frozenset({"userdb_user", "userdb_home", "userdb_uid", "userdb_gid"})


@dataclass(frozen=True, slots=True)
class Reply:
    """pfm-authd's answer. ``extra`` holds fields for Dovecot (``userdb_*``, ``nologin`` …)."""

    kind: ReplyKind
    user: str = ""
    home: str = ""
    uid: str = ""
    gid: str = ""
    reason: str = ""
    extra: Fields = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra", _extras(self.extra, "", "extra"))
        for key, _ in self.extra:
            if key in _REPLY_FIXED or key in _REPLY_CLASH:
                raise BadPayload(f"extra field {key!r} clashes with a fixed reply field")
        if self.kind is not ReplyKind.OK and (self.home or self.uid or self.gid or self.extra):
            raise BadPayload(f"{self.kind.name} reply carries userdb fields")

    def to_fields(self) -> Fields:
        """The wire fields of this reply (empty fields left out)."""
        fixed = (("user", self.user), ("home", self.home), ("uid", self.uid), ("gid", self.gid))
        out = [(k, v) for k, v in fixed if v]
        if self.reason:
            out.append(("reason", self.reason))
        return (*out, *self.extra)

    def encode(self) -> bytes:
        """This reply as one frame."""
        return encode_frame(self.kind.value, self.to_fields())

    @classmethod
    def from_frame(cls, frame: Frame) -> Reply:
        """The reply a frame carries; BadPayload names the field that is wrong."""
        if frame.type.is_request:
            raise BadPayload(f"{frame.type.name} is not a reply")
        kind = ReplyKind(frame.type)
        values = frame.as_dict()
        extra = (
            ()
            if kind is not ReplyKind.OK
            else tuple((k, v) for k, v in frame.fields if k not in _REPLY_FIXED)
        )
        return cls(
            kind=kind,
            user=values.get("user", ""),
            home=values.get("home", "") if kind is ReplyKind.OK else "",
            uid=values.get("uid", "") if kind is ReplyKind.OK else "",
            gid=values.get("gid", "") if kind is ReplyKind.OK else "",
            reason=values.get("reason", ""),
            extra=extra,
        )


def decode_request(frame: Frame) -> Request:
    """Server half: the request a decoded frame carries."""
    return Request.from_frame(frame)


def decode_reply(frame: Frame) -> Reply:
    """Client half: the reply a decoded frame carries."""
    return Reply.from_frame(frame)
