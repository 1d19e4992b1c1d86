"""structlog setup shared by every daemon: JSON lines under systemd, console on a TTY.

One canonical line per request; secrets are redacted by key name wherever they appear.

Hot-path notes: levels below the configured one are a bare ``return None`` (filtering
bound logger, resolved once per method by the proxy ``get_logger`` returns); JSON lines
are rendered to bytes by orjson and written to the stream's binary buffer, flushed at
once for warnings and errors and at most 50 ms later for info/debug lines while an
event loop runs (so a busy daemon pays one write(2) per batch, not per line).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import re
import sys
import time
import weakref
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO, cast

import orjson
import structlog
from structlog.typing import FilteringBoundLogger

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
FORMATS = ("auto", "json", "console")
REDACTED = "[redacted]"
_SECRET_KEY = re.compile(
    r"^(password|passwd|pass|secret|otp|totp|token|app_password|authorization|credentials|"
    r"api_key|private_key)$|(_secret|_password|_token)$",
    re.IGNORECASE,
)
# Values of these types are logged as they are; anything else is walked for nested secrets.
_SCALARS = frozenset({str, int, float, bool, type(None), bytes})
_KEY_CACHE_MAX = 4096
_key_is_secret: dict[str, bool] = {}
_plain_keys: set[str] = set()  # keys seen and found not secret (bounded)


def is_secret_key(name: str) -> bool:
    """True for field names whose values must never be logged."""
    return bool(_SECRET_KEY.search(name))


def _secret(key: Any) -> bool:
    cached = _key_is_secret.get(key)
    if cached is None:
        cached = isinstance(key, str) and is_secret_key(key)
        if len(_key_is_secret) < _KEY_CACHE_MAX:
            _key_is_secret[key] = cached
            if not cached:
                _plain_keys.add(key)
    return cached


def _redact(value: Any) -> Any:
    if type(value) in _SCALARS:
        return value
    if isinstance(value, Mapping):
        return {k: (REDACTED if _secret(k) else _redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact(v) for v in value]
    return value


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: replace secret values (recursively) with ``[redacted]``."""
    # Fast path, two C-level scans: every key known plain and every value a scalar.
    if _plain_keys.issuperset(event) and _SCALARS.issuperset(map(type, event.values())):
        return event
    for key, value in event.items():  # values are replaced in place: the size never changes
        if _secret(key):
            event[key] = REDACTED
        elif type(value) not in _SCALARS:
            event[key] = _redact(value)
    return event


class _Clock:
    """ISO-8601 UTC timestamps with microseconds; the date part is formatted once a second."""

    __slots__ = ("cache",)

    def __init__(self) -> None:
        self.cache: tuple[int, str] = (-1, "")

    def iso(self, now: float) -> str:
        sec = int(now)
        cached_sec, prefix = self.cache
        if sec != cached_sec:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            self.cache = (sec, prefix)
        return f"{prefix}.{int((now - sec) * 1_000_000):06d}Z"


_clock = _Clock()


def add_timestamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: ``timestamp`` in ISO-8601 UTC (``2024-05-01T12:00:00.123456Z``)."""
    event["timestamp"] = _clock.iso(time.time())
    return event


def _dumps(obj: Any, **_: Any) -> bytes:
    return orjson.dumps(obj, default=str, option=orjson.OPT_APPEND_NEWLINE)


class JsonLineSink:
    """structlog logger for rendered JSON lines (bytes, newline included).

    Writes go to the stream's binary buffer. Warnings and errors are flushed at once;
    info/debug lines at most ``delay`` seconds later when an event loop runs in this
    thread, at once otherwise (threads, start-up, CLI).
    """

    def __init__(self, stream: TextIO, delay: float = 0.05) -> None:
        self.stream = stream
        self.raw: Any = getattr(stream, "buffer", None)
        self.delay = delay
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def info(self, message: bytes) -> None:
        """Write a line, flushed soon."""
        raw = self.raw
        if raw is None:
            self.stream.write(message.decode())
            return
        raw.write(message)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._timer_loop is not loop:
            self._timer_loop = loop
            loop.call_later(self.delay, self._timed_flush)

    debug = msg = log = info

    def error(self, message: bytes) -> None:
        """Write a line and flush at once."""
        if self.raw is None:
            self.stream.write(message.decode())
            self.stream.flush()
            return
        self.raw.write(message)
        self.flush()

    warning = warn = critical = exception = fatal = failure = err = error

    def _timed_flush(self) -> None:
        self._timer_loop = None
        self.flush()

    def flush(self) -> None:
        """Push buffered lines to the file descriptor."""
        try:
            if self.raw is not None:
                self.raw.flush()
            else:
                self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken log stream must never break request handling


class _Logger:
    """What ``get_logger`` returns: resolves each log method once, after configuration.

    After the first call ``log.info`` is a plain instance attribute (the configured
    filtering logger's method), so a filtered-out level costs one call of ``return None``.
    ``configure_logging`` drops the resolved methods so they follow the new configuration.
    """

    def __init__(self, name: str) -> None:
        self._pfm_component = name
        _loggers.add(self)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        bound = structlog.get_logger(component=self._pfm_component).bind()
        value = getattr(bound, attr)
        if structlog.is_configured():
            self.__dict__[attr] = value
        return value

    def _pfm_reset(self) -> None:
        for attr in [a for a in self.__dict__ if a != "_pfm_component"]:
            del self.__dict__[attr]

    def __repr__(self) -> str:
        return f"<pfm logger {self._pfm_component}>"


_loggers: weakref.WeakSet[_Logger] = weakref.WeakSet()
_sinks: list[JsonLineSink] = []


def flush_logs() -> None:
    """Flush lines still buffered (called at exit and by the lifecycle after the loop)."""
    for sink in _sinks:
        sink.flush()


atexit.register(flush_logs)


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog (and stdlib logging) for a daemon or CLI.

    ``fmt``: ``auto`` (console on a TTY, JSON lines otherwise), ``json`` or ``console``.
    Raises ValueError for an unknown level or format.
    """
    if level.lower() not in LEVELS:
        raise ValueError(f"unknown log level {level!r}: use one of debug, info, warning, error")
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: use one of {', '.join(FORMATS)}")
    numeric = LEVELS[level.lower()]
    out = stream if stream is not None else sys.stderr
    tty = bool(getattr(out, "isatty", lambda: False)())
    if fmt == "auto":
        fmt = "console" if tty else "json"
    flush_logs()
    _sinks.clear()
    _LOG_STREAM[0] = out
    _LOG_FORMAT[0] = fmt
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        add_timestamp,
        redact_secrets,
    ]
    logger_factory: Any
    if fmt == "json":
        sink = JsonLineSink(out)
        _sinks.append(sink)
        processors += [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ]
        logger_factory = lambda *_: sink  # noqa: E731 - one sink shared by every logger
    else:
        processors += [structlog.dev.set_exc_info, structlog.dev.ConsoleRenderer(colors=tty)]
        logger_factory = structlog.WriteLoggerFactory(file=out)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )
    for logger in list(_loggers):
        logger._pfm_reset()
    logging.basicConfig(level=numeric, stream=out, format="%(name)s %(levelname)s %(message)s")


def get_logger(name: str) -> FilteringBoundLogger:
    """A structlog logger bound to a component name (usable before configure_logging)."""
    return cast(FilteringBoundLogger, _Logger(name))


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
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._clock = _Clock()
        self._checked: set[str] = set()

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
        fields["timestamp"] = self._clock.iso(time.time())
        buf = self._buf
        buf += orjson.dumps(fields, default=str, option=orjson.OPT_APPEND_NEWLINE)
        if len(buf) >= self.max_bytes:
            self.flush()
        else:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            # one timer per loop: a timer left on a loop that has ended does not block flushes
            if self._timer_loop is not loop:
                self._timer_loop = loop
                loop.call_later(self.max_delay, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer_loop = None
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
