"""Redis client factory: timeouts on connect and command, a short bounded retry, secrets from files.

``create_redis`` never returns a client that can hang a request: every socket operation
has a timeout, and only a fast failure (a reset or refused connection, e.g. a pooled
connection that died with a Redis restart) is retried, once, after at most 50 ms. A
command's worst case is therefore about ``connect_timeout + command_timeout``. The
password comes from ``password_file`` (or the URL) and is never logged; use
``redact_url`` before putting a URL in a log line or an error message.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from .logging import is_secret_key

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

MASK = "***"
HEALTH_CHECK_INTERVAL = 30


def redact_url(url: str) -> str:
    """The URL with its password (userinfo or a ``password=`` query item) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostport}" if sep else f"{userinfo}@{hostport}"
    query = parts.query
    if query:
        items = []
        for item in query.split("&"):
            key, sep, _ = item.partition("=")
            items.append(f"{key}={MASK}" if sep and is_secret_key(unquote(key)) else item)
        query = "&".join(items)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def read_password_file(path: str) -> str:
    """The first line of ``path``, stripped; ValueError (naming the file, not its content)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ValueError(f"cannot read redis password file {path}: {reason}") from None
    lines = text.splitlines()
    return lines[0].strip() if lines else ""


def _host_port(spec: str) -> tuple[str, int]:
    host, sep, port = spec.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"invalid sentinel address {spec!r}: use HOST:PORT or [IPv6]:PORT")
    return host, int(port)


def create_redis(
    url: str,
    *,
    connect_timeout: float = 0.5,
    command_timeout: float = 0.5,
    password_file: str | None = None,
    sentinel_master: str | None = None,
    sentinels: Sequence[str] = (),
    cluster: bool = False,
) -> Redis | RedisCluster:
    """A ``redis.asyncio`` client (a Sentinel-managed master or a Cluster client) that never hangs.

    No connection is made here: the first command connects. ``password_file`` overrides a
    password in the URL.
    """
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    password = read_password_file(password_file) if password_file else None
    common: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": command_timeout,
        # one retry, only for fast failures (timeouts are not retried: that would double them)
        "retry": Retry(ExponentialBackoff(cap=0.05, base=0.01), 1, (RedisConnectionError,)),
        "health_check_interval": HEALTH_CHECK_INTERVAL,
    }
    if password:
        common["password"] = password
    if cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(url, **common)
    if sentinel_master:
        from redis.asyncio.sentinel import Sentinel

        if not sentinels:
            raise ValueError("sentinel_master is set but no sentinels are configured")
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            [_host_port(s) for s in sentinels],
            socket_timeout=command_timeout,
            socket_connect_timeout=connect_timeout,
        )
        master: Redis = sentinel.master_for(sentinel_master, **common)
        return master
    return Redis.from_url(url, **common)
