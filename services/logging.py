"""structlog setup shared by every daemon: JSON lines under systemd, console on a TTY.

One canonical line per request; secrets are redacted by key name wherever they appear.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import orjson
import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
REDACTED = "[redacted]"
_SECRET_KEY = re.compile(
    r"^(password|passwd|pass|secret|otp|totp|token|app_password|authorization|credentials|"
    r"api_key|private_key)$|(_secret|_password|_token)$",
    re.IGNORECASE,
)


def is_secret_key(name: str) -> bool:
    """True for field names whose values must never be logged."""
    return bool(_SECRET_KEY.search(name))


def _redact(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and is_secret_key(k) else _redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


_PLAIN_KEYS: set[str] = set()


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: replace secret values (recursively) with ``[redacted]``."""
    for key in list(event):
        v = event[key]
        if key in _PLAIN_KEYS and not isinstance(v, Mapping | list | tuple):
            continue
        if is_secret_key(key):
            event[key] = REDACTED
        else:
            if len(_PLAIN_KEYS) < 4096:
                _PLAIN_KEYS.add(key)
            if isinstance(v, Mapping | list | tuple):
                event[key] = _redact(v)
    return event


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog (and stdlib logging) for a daemon or CLI."""
    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    _LOG_STREAM[0] = out
    _LOG_FORMAT[0] = fmt
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
        structlog.processors.format_exc_info if fmt == "json" else structlog.dev.set_exc_info,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(
        level=LEVELS.get(level, logging.INFO),
        stream=out,
        format="%(name)s %(levelname)s %(message)s",
    )


def get_logger(name: str) -> Any:
    """A structlog logger bound to a component name."""
    return structlog.get_logger(component=name)


class EventWriter:
    """The hot-path twin of a structlog JSON logger: one orjson line per event, batched writes.

    Used for the canonical per-request line, where structlog's processor chain would cost
    more than the request itself. Lines are identical in shape to the JSON renderer's
    (event, level, timestamp, component, fields). Writes are buffered and flushed at most
    ``max_delay`` seconds later or every ``max_bytes`` (at once when no loop runs), so a
    busy server pays one write(2) per batch, not per request. Callers pass only non-secret fields; keys are still checked against the
    secret patterns once per distinct key.
    """

    def __init__(
        self, component: str, stream: Any = None, max_delay: float = 0.05, max_bytes: int = 65536
    ) -> None:
        self.component = component
        self.max_delay = max_delay
        self.max_bytes = max_bytes
        self.stream = stream
        self._buf = bytearray()  # one growing buffer: no per-line objects kept alive
        self._flush_scheduled = False
        self._sec = -1
        self._prefix = ""
        self._checked: set[str] = set()

    def _timestamp(self, now: float) -> str:
        sec = int(now)
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._prefix}.{int((now - sec) * 1_000_000):06d}Z"

    def emit(self, event: str, fields: dict[str, Any], level: str = "info") -> None:
        for key in fields:
            if key not in self._checked:
                if is_secret_key(key):
                    fields[key] = REDACTED
                    continue
                self._checked.add(key)
        fields["component"] = self.component
        fields["event"] = event
        fields["level"] = level
        fields["timestamp"] = self._timestamp(time.time())
        buf = self._buf
        buf += orjson.dumps(fields, default=str, option=orjson.OPT_APPEND_NEWLINE)
        if len(buf) >= self.max_bytes:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            try:
                asyncio.get_running_loop().call_later(self.max_delay, self._timed_flush)
            except RuntimeError:
                self._timed_flush()

    def _timed_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write out what is buffered."""
        if not self._buf:
            return
        data = bytes(self._buf)
        self._buf.clear()
        stream = self.stream if self.stream is not None else _LOG_STREAM[0]
        raw = getattr(stream, "buffer", None)
        try:
            if raw is not None:
                stream.flush()
                raw.write(data)
                raw.flush()
            else:
                stream.write(data.decode())
                stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken log stream must never break request handling


_LOG_STREAM: list[Any] = [sys.stderr]
_LOG_FORMAT: list[str] = ["json"]


def log_format() -> str:
    """The format configure_logging() chose: 'json' or 'console'."""
    return _LOG_FORMAT[0]
