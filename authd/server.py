"""pfm-authd's connection layer and daemon: wire frames in, decisions out, in order.

Each connection feeds bytes to :class:`authd.wire.FrameDecoder`; complete requests queue
up (at most ``max_pipeline`` per connection) and one worker task per connection answers
them in order through :class:`authd.service.AuthService`. A bad frame or request is
answered ERROR and the connection closed (after the answer is flushed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from services.config import (
    AuthdConfig,
    Config,
    ConfigError,
    load_config,
    locate_error,
    read_secret_file,
)
from services.logging import get_logger
from services.metrics import new_registry
from services.netserver import Connection, NetServer

from .guard import Guard, GuardConfig, WindowLimit
from .service import AuthService
from .state import AuthState, MemoryState
from .telemetry import AuthMetrics
from .totp import TotpVerifier
from .verify import Verifier
from .wire import FrameDecoder, Reply, ReplyKind, Request, WireError

log = get_logger("pfm.authd")


def guard_config(cfg: AuthdConfig) -> GuardConfig:
    """``[authd.guard]`` (and ``[authd] trusted_networks``) as the guard's own config."""
    g = cfg.guard
    return GuardConfig(
        enabled=g.enabled,
        per_ip=WindowLimit(g.per_ip.count, g.per_ip.seconds),
        per_login=WindowLimit(g.per_login.count, g.per_login.seconds),
        per_ip_login=WindowLimit(g.per_ip_login.count, g.per_ip_login.seconds),
        per_prefix=WindowLimit(g.per_prefix.count, g.per_prefix.seconds),
        ipv4_prefix=g.ipv4_prefix,
        ipv6_prefix=g.ipv6_prefix,
        tarpit_start=float(g.tarpit_start),
        tarpit_max=float(g.tarpit_max),
        tarpit_windows=tuple(g.tarpit_windows),
        block_seconds=float(g.block_time),
        known_device_seconds=float(g.known_device_time),
        trusted_networks=tuple(cfg.trusted_networks),
    )


def open_state(config: Config, clock: Callable[[], float]) -> AuthState:
    """The configured state store (memory, or Redis for a fleet)."""
    a = config.authd
    if a.state == "memory":
        return MemoryState(clock=clock, max_keys=a.memory_max_keys)
    from .state_redis import RedisState

    return RedisState.from_config(config.redis, clock=clock)


class AuthDaemon:
    """The running pfm-authd: config, service, sockets, admin endpoint and metrics."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: str | None = None,
        registry: CollectorRegistry | None = None,
        state: AuthState | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.cfg = config.authd
        self.config_path = config_path
        self.clock = clock
        self.registry = registry if registry is not None else new_registry()
        self.metrics = AuthMetrics(self.registry)
        self._given_state = state
        self.state: AuthState = state if state is not None else open_state(config, clock)
        key = (
            read_secret_file(self.cfg.guard.key_file).encode() if self.cfg.guard.key_file else None
        )
        self.guard = Guard(self.state, guard_config(self.cfg), key=key, clock=clock)
        self.verifier = Verifier(
            config.directory,
            workers=self.cfg.verify_workers,
            timeout=float(self.cfg.verify_timeout),
            cache_ttl=float(self.cfg.verify_cache_ttl),
            cache_size=self.cfg.verify_cache_size,
            account_ttl=float(self.cfg.account_cache_ttl),
            clock=clock,
        )
        self.service = AuthService(
            self.cfg,
            config.directory,
            verifier=self.verifier,
            guard=self.guard,
            totp=TotpVerifier(self.state, clock=clock),
            metrics=self.metrics,
            clock=clock,
        )
        self.net: NetServer | None = None
        self.http: Any = None
        self.http_api_key = ""
        if self.cfg.http_api_key_file:
            self.http_api_key = read_secret_file(self.cfg.http_api_key_file)
            if not self.http_api_key:
                raise ConfigError("authd.http_api_key_file", "the key file is empty")
        self.admin: Any = None
        self.metrics_server: Any = None

    def __repr__(self) -> str:
        return f"AuthDaemon(listen={list(self.cfg.listen)!r}, state={self.cfg.state})"

    async def start(self) -> None:
        """Bind the auth, admin and metrics sockets."""
        cfg = self.cfg
        self.net = NetServer(
            cfg.listen,
            lambda: AuthConnection(self.service, cfg.max_pipeline),
            max_connections=cfg.max_connections,
            idle_timeout=float(cfg.idle_timeout),
            on_reject=self._reject,
        )
        await self.net.start()
        if cfg.http_listen:
            from .http import HttpApi, HttpServer

            self.http = HttpServer(
                cfg.http_listen,
                HttpApi(self.service, self.guard, api_key=self.http_api_key),
                max_connections=cfg.max_connections,
                idle_timeout=float(cfg.idle_timeout),
                max_pipeline=cfg.max_pipeline,
            )
            try:
                await self.http.start()
            except OSError:
                await self.net.close()
                raise
        if cfg.admin_socket:
            from .admin import AdminServer

            self.admin = AdminServer(cfg.admin_socket, self)
            await self.admin.start()
        if cfg.metrics_listen:
            from services.metrics import MetricsServer

            self.metrics_server = MetricsServer(cfg.metrics_listen, self.registry)
            await self.metrics_server.start()
        log.info(
            "started",
            listen=self.net.addresses,
            http=self.http.addresses if self.http is not None else None,
            directory=self.config.directory.backend,
            state=cfg.state,
            workers=self.verifier.workers,
            admin=cfg.admin_socket or None,
            metrics=cfg.metrics_listen or None,
        )

    async def reload(self) -> None:
        """Re-read the config: guard thresholds, TOTP services, app passwords, grace, cache TTL."""
        if not self.config_path:
            log.warning("reload_skipped", reason="no config file")
            return
        try:
            new = load_config(self.config_path)
            gcfg = guard_config(new.authd)
        except (ConfigError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                exc = locate_error(exc, self.config_path)
            log.error("reload_failed", error=str(exc), kept="previous configuration")
            raise
        a = new.authd
        restart_needed = [
            k
            for k in (
                "listen",
                "http_listen",
                "http_api_key_file",
                "state",
                "admin_socket",
                "metrics_listen",
                "verify_workers",
            )
            if getattr(a, k) != getattr(self.cfg, k)
        ]
        if new.directory != self.config.directory:
            restart_needed.append("directory")
        self.guard.config = gcfg
        s = self.service
        s.config = a
        s.totp_services = frozenset(a.totp_services)
        s.grace.ttl = float(a.grace_ttl)
        self.verifier.cache.ttl = float(a.verify_cache_ttl)
        self.config = dataclasses.replace(self.config, authd=a)
        self.cfg = a
        log.info("reloaded", restart_needed=restart_needed or None)

    async def stop(self, grace: float) -> None:
        """Stop accepting, let requests in flight finish, release everything."""
        if self.net is not None:
            await self.net.drain(grace)
        if self.http is not None:
            await self.http.drain(grace)
        await self.service.drain(grace)
        if self.admin is not None:
            await self.admin.aclose()
        if self.metrics_server is not None:
            await self.metrics_server.aclose()
        if self._given_state is None:
            await self.state.aclose()
        self.verifier.close()
        log.info("stopped")

    def _reject(self, transport: asyncio.BaseTransport) -> None:
        self.metrics.rejected_connections.inc()
        log.warning("connection_rejected", reason="max_connections", limit=self.cfg.max_connections)
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(Reply(ReplyKind.TEMPFAIL, reason="server busy").encode())


class AuthConnection(Connection):
    """One client connection: many requests, answered in order."""

    def __init__(self, service: AuthService, max_pipeline: int = 64) -> None:
        super().__init__()
        self.service = service
        self.max_pipeline = max_pipeline
        self.decoder = FrameDecoder()
        self.queue: deque[Request] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.service.metrics.connections.inc()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.closing:
            return
        error = ""
        try:
            frames = self.decoder.feed(data)
        except WireError as exc:
            frames, error = exc.frames, str(exc)
        for frame in frames:
            try:
                self.queue.append(Request.from_frame(frame))
            except WireError as exc:
                error = str(exc)
                break
        if not error and len(self.queue) > self.max_pipeline:
            error = f"more than {self.max_pipeline} requests queued on one connection"
        if error:
            self.closing = True
            self.service.metrics.bad_requests.inc()
            log.warning("bad_request", peer=self.peer, error=error[:200])
        if self.worker is None and (self.queue or self.closing):
            self.busy = True
            self.worker = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            while self.queue:
                request = self.queue.popleft()
                try:
                    reply = await self.service.handle(request)
                except Exception:  # a bug must reach the client as TEMPFAIL, not a hang
                    log.exception("internal_error", user=request.user[:256])
                    reply = Reply(ReplyKind.TEMPFAIL, reason="internal error")
                self.write(reply.encode())
            if self.closing:
                self.write(Reply(ReplyKind.ERROR, reason="bad request").encode())
                self._close_after_answer()
        finally:
            self.worker = None
            self.busy = False

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)  # type: ignore[attr-defined]

    def _close_after_answer(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.can_write_eof():  # type: ignore[attr-defined]
            transport.write_eof()  # type: ignore[attr-defined]
        asyncio.get_running_loop().call_later(2.0, self.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.service.metrics.connections.dec()
        if self.worker is not None:
            self.worker.cancel()
        super().connection_lost(exc)
