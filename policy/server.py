"""pfm-policyd's connection layer and daemon: sockets in, decisions out.

connection -> decision -> store. Each connection feeds bytes to the sans-IO parser, hands
complete requests to :class:`PolicyService`, and writes the encoded answers in order.
With the memory store a decision runs synchronously inside ``data_received``; with Redis a
per-connection worker task awaits the store, so answers keep their order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from services.config import (
    Config,
    ConfigError,
    PolicydConfig,
    load_config,
    locate_error,
    read_secret_file,
)
from services.logging import EventWriter, get_logger, log_format
from services.logtail import FileFollower
from services.metrics import new_registry
from services.netserver import Connection, NetServer

from .admin import AdminServer
from .decide import CommitLog, Decision, Engine, Plan, Session
from .directory_limits import Found, fetch_overrides, merge_overrides
from .postfix_log import cleanup_rejected_queue_id
from .protocol import PolicyParser, PolicyRequest, ProtocolError
from .store import Counter, Store, StoreError, open_store
from .telemetry import PolicyMetrics

log = get_logger("pfm.policyd")
perf = time.perf_counter


class PolicyService:
    """The running policy server: config, engine, stores, sockets and telemetry."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: str | None = None,
        registry: CollectorRegistry | None = None,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.cfg = config.policyd
        self.dir_found: Found = {}  # overrides last read from the directory
        self._dir_failing = False
        self.config_path = config_path
        self.registry = registry if registry is not None else new_registry()
        self.metrics = PolicyMetrics(self.registry)
        self.commits = CommitLog() if self.cfg.maillog else None
        self.engine = self._engine(self.cfg)
        self.metrics.limits.set(len(self.engine.rules))
        self.clock = clock
        self._given_store = store
        self.store: Store | None = store
        self.fallback: Any = None  # a MemoryStore, used while the primary store is down
        self.store_down_until = 0.0
        self.net: NetServer | None = None
        self.admin: AdminServer | None = None
        self.metrics_server: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._refresher: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._dir_task: asyncio.Task[None] | None = None
        self.log_all = self.cfg.log_decisions == "all"
        self.log_actions = self.cfg.log_decisions != "none"
        self.fast_log = EventWriter("pfm.policyd") if log_format() == "json" else None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the store, bind the policy, admin and metrics sockets."""
        cfg = self.cfg
        if self.store is None:
            self.store = self._open_store(self.config)
        if cfg.state != "memory" and cfg.fallback:
            self.fallback = open_store(
                "memory", max_keys=min(cfg.memory_max_keys, 100_000), clock=self.clock
            )
        self.net = NetServer(
            cfg.listen,
            lambda: PolicyConnection(self),
            max_connections=cfg.max_connections,
            idle_timeout=float(cfg.idle_timeout),
            on_reject=self._reject_connection,
            on_idle_close=self.metrics.idle_closed.inc,
        )
        await self.net.start()
        if cfg.admin_socket:
            self.admin = AdminServer(cfg.admin_socket, self)
            await self.admin.start()
        if cfg.metrics_listen:
            from services.metrics import MetricsServer

            self.metrics_server = MetricsServer(cfg.metrics_listen, self.registry)
            await self.metrics_server.start()
        self._refresher = asyncio.create_task(self._housekeeping())
        if cfg.maillog:
            self._follower = asyncio.create_task(self._follow_maillog(cfg.maillog))
        if cfg.directory_limits:
            self._dir_task = asyncio.create_task(self._refresh_directory())
        log.info(
            "started",
            listen=self.net.addresses,
            state=cfg.state,
            limits=len(self.engine.rules),
            admin=cfg.admin_socket or None,
            metrics=cfg.metrics_listen or None,
        )

    def _engine(self, cfg: PolicydConfig) -> Engine:
        engine = Engine(cfg)
        engine.commits = self.commits
        return engine

    async def _follow_maillog(self, path: str) -> None:
        """Take back END-OF-MESSAGE charges of messages cleanup(8) then rejected."""
        follower = FileFollower(path, from_end=True, poll=float(self.cfg.maillog_poll))
        while True:
            try:
                async for line in follower.lines():
                    qid = cleanup_rejected_queue_id(line)
                    if qid is None or self.commits is None:
                        continue
                    members = self.commits.pop(qid)
                    if not members:
                        continue
                    store = self.active_store()
                    try:
                        await store.release(members)
                    except StoreError:
                        continue
                    self.metrics.uncommitted.inc()
                    log.info(
                        "uncommitted", queue_id=qid, reason="cleanup_reject", counters=len(members)
                    )
            except asyncio.CancelledError:
                raise
            except Exception:  # keep following whatever a line does
                log.exception("maillog_follow_failed", path=path)
                await asyncio.sleep(1.0)

    def _open_store(self, config: Config) -> Store:
        cfg = config.policyd
        if cfg.state == "memory":
            return open_store("memory", max_keys=cfg.memory_max_keys, clock=self.clock)
        r = config.redis
        from services.redis import create_redis

        client = create_redis(
            r.url,
            connect_timeout=float(r.connect_timeout),
            command_timeout=float(r.command_timeout),
            password_file=r.password_file or None,
            sentinel_master=r.sentinel_master or None,
            sentinels=r.sentinels,
            cluster=r.cluster,
        )
        return open_store(
            "redis",
            url=r.url,
            client=client,
            prefix=r.prefix,
            connect_timeout=float(r.connect_timeout),
            command_timeout=float(r.command_timeout),
            password=read_secret_file(r.password_file) if r.password_file else None,
            fast=not (r.sentinel_master or r.cluster),
            cluster=r.cluster,
            clock=self.clock,
        )

    async def reload(self) -> None:
        """Re-read the config file; keep the running config when the new one is invalid."""
        if not self.config_path:
            log.warning("reload_skipped", reason="no config file")
            return
        try:
            new = load_config(self.config_path)
            if new.policyd.directory_limits and self.dir_found:
                merged, _ = merge_overrides(new.policyd, self.dir_found)
                new = dataclasses.replace(new, policyd=merged)
            engine = self._engine(new.policyd)
        except (ConfigError, ValueError) as exc:
            self.metrics.reloads.labels(result="error").inc()
            if isinstance(exc, ConfigError):
                exc = locate_error(exc, self.config_path)
            log.error("reload_failed", error=str(exc), kept="previous configuration")
            raise
        restart_needed = [
            k
            for k in ("listen", "state", "admin_socket", "metrics_listen", "max_connections")
            if getattr(new.policyd, k) != getattr(self.cfg, k)
        ]
        if new.redis != self.config.redis and self.cfg.state == "redis":
            restart_needed.append("redis")
        engine.exempt = self.engine.exempt
        self.config, self.cfg, self.engine = new, new.policyd, engine
        self.log_all = self.cfg.log_decisions == "all"
        self.log_actions = self.cfg.log_decisions != "none"
        self.metrics.limits.set(len(engine.rules))
        self.metrics.reloads.labels(result="ok").inc()
        log.info("reloaded", limits=len(engine.rules), restart_needed=restart_needed or None)

    async def stop(self, grace: float) -> None:
        """Stop accepting, let connections finish their request, release state."""
        for task in (self._refresher, self._follower, self._dir_task):
            if task is not None:
                task.cancel()
        if self.net:
            await self.net.drain(grace)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=max(grace, 0.1))
        if self.admin:
            await self.admin.aclose()
        if self.metrics_server:
            await self.metrics_server.aclose()
        if self.store is not None and self._given_store is None:
            await self.store.aclose()
        if self.fallback is not None:
            await self.fallback.aclose()
        if self.fast_log is not None:
            self.fast_log.flush()
        log.info("stopped")

    async def _housekeeping(self) -> None:
        """Every 2 s refresh exemptions; every 30 s drop idle counters of memory stores."""
        sweep_at = 0.0
        while True:
            try:
                if self.clock() >= sweep_at:
                    sweep_at = self.clock() + 30.0
                    for store in (self.store, self.fallback):
                        sweep = getattr(store, "sweep", None)
                        if sweep is not None:
                            sweep(20_000)  # counters whose windows all passed
                self.engine.exempt = await self.active_store().exemptions()
            except StoreError:
                pass
            except Exception:  # never let housekeeping die
                log.exception("housekeeping_failed")
            await asyncio.sleep(2.0)

    async def _refresh_directory(self) -> None:
        """Keep per-mailbox and per-domain overrides from the directory in force."""
        while True:
            try:
                found = await asyncio.to_thread(fetch_overrides, self.config.directory)
            except FileNotFoundError as exc:  # no directory (yet): pfm.toml limits only
                if not self._dir_failing:
                    log.info("directory_not_found", error=str(exc))
                self._dir_failing = True
            except Exception as exc:  # any directory trouble: keep what is in force
                self.metrics.directory_errors.inc()
                if not self._dir_failing:
                    log.warning(
                        "directory_unavailable",
                        error=str(exc) or type(exc).__name__,
                        kept="last overrides read" if self.dir_found else "pfm.toml overrides",
                    )
                self._dir_failing = True
            else:
                if self._dir_failing:
                    log.info("directory_recovered")
                self._dir_failing = False
                if found != self.dir_found:
                    self.apply_directory_overrides(found)
            await asyncio.sleep(float(self.cfg.directory_refresh))

    def apply_directory_overrides(self, found: Found) -> None:
        """Compile the configured limits plus ``found`` into a new engine and swap it in."""
        base = self.config.policyd
        merged, skipped = merge_overrides(base, found)
        engine = self._engine(merged)
        engine.exempt = self.engine.exempt
        self.cfg, self.engine, self.dir_found = merged, engine, found
        for why in skipped:
            log.warning("directory_override_skipped", reason=why)
        log.info(
            "directory_limits_loaded",
            subjects=sum(len(v) for v in found.values()),
            skipped=len(skipped),
        )

    def _reject_connection(self, transport: asyncio.BaseTransport) -> None:
        self.metrics.rejected_connections.inc()
        log.warning("connection_rejected", reason="max_connections", limit=self.cfg.max_connections)
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(self.engine.overload.encode())

    def spawn(self, coro: Any) -> None:
        """Run a background coroutine tracked for shutdown."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ stores

    def active_store(self) -> Store:
        """The primary store, or the fallback while the primary is marked down."""
        assert self.store is not None
        if (
            self.fallback is not None
            and self.store_down_until
            and self.clock() < self.store_down_until
        ):
            return self.fallback  # type: ignore[no-any-return]
        return self.store

    def _store_failed(self, exc: BaseException) -> None:
        first = not self.store_down_until
        self.store_down_until = self.clock() + float(self.cfg.store_retry)
        self.metrics.store_errors.labels(store=self.cfg.state).inc()
        self.metrics.store_up.set(0)
        if first:
            log.error(
                "store_down",
                store=self.cfg.state,
                error=str(exc),
                fallback="memory" if self.fallback is not None else None,
                retry_in=float(self.cfg.store_retry),
            )

    def _store_ok(self) -> None:
        if self.store_down_until:
            self.store_down_until = 0.0
            self.metrics.store_up.set(1)
            log.info("store_recovered", store=self.cfg.state)

    # ------------------------------------------------------------------ deciding

    def decide_now(self, req: PolicyRequest, session: Session) -> bytes:
        """Decide synchronously (memory store)."""
        t0 = perf()
        engine = self.engine
        plan = engine.plan(req, session)
        store: Any = self.store
        if plan.stale:
            store.release_now(plan.stale)
        if plan.early is not None:
            decision = plan.early
        elif plan.op == "reserve":
            decision = engine.conclude(plan, store.reserve_now(plan.charges, engine.ttl))
        else:
            decision = engine.conclude(plan, store.commit_now(plan.charges, plan.release))
        return self.finish(req, decision, t0)

    async def decide(self, req: PolicyRequest, session: Session) -> bytes:
        """Decide with an awaited store, falling back or failing as configured."""
        t0 = perf()
        engine = self.engine
        plan = engine.plan(req, session)
        store = self.active_store()
        fallback = store is not self.store
        try:
            decision = await self.run_plan(plan, store, fallback)
            if not fallback:
                self._store_ok()
        except StoreError as exc:
            self._store_failed(exc)
            if self.fallback is not None and not plan.fail_closed:
                decision = await self.run_plan(plan, self.fallback, True)
            else:
                decision = engine.store_failed(plan)
        if decision.fallback:
            self.metrics.fallback_decisions.inc()
        return self.finish(req, decision, t0)

    async def run_plan(self, plan: Plan, store: Store, fallback: bool = False) -> Decision:
        """Carry out a plan on a store and conclude it (the awaited twin of decide_now)."""
        if plan.stale:
            await store.release(plan.stale)
        if plan.early is not None:
            return plan.early
        if plan.op == "reserve":
            outcomes = await store.reserve(plan.charges, self.engine.ttl)
        else:
            outcomes = await store.commit(plan.charges, plan.release)
        return self.engine.conclude(plan, outcomes, fallback)

    def finish(self, req: PolicyRequest, decision: Decision, t0: float) -> bytes:
        """Count, log and encode one decision."""
        elapsed = perf() - t0
        m = self.metrics
        action = decision.action
        state = req.protocol_state
        m.request(state, action.verb, elapsed)
        breached = False
        for h in decision.hits:
            if h[6]:  # breached
                breached = True
                m.breach(h[0], h[7])
        if self.log_all or (self.log_actions and (breached or action.verb != "DUNNO")):
            attrs = req.attrs
            fields: dict[str, Any] = {
                "state": state,
                "queue_id": attrs.get("queue_id") or None,
                "instance": req.instance or None,
                "client": attrs.get("client_address") or None,
                "sasl_username": attrs.get("sasl_username") or None,
                "sender": attrs.get("sender"),
                "recipient": attrs.get("recipient") or None,
                "action": str(action),
                "reason": decision.reason,
                "latency_ms": round(elapsed * 1000, 3),
            }
            if decision.rule:
                fields["limit"] = decision.rule
            if decision.hits:
                # [limit, subject, used before, weight, max, window seconds, breached, shadow]
                fields["counts"] = decision.hits
            if decision.fallback:
                fields["fallback"] = True
            if self.fast_log is not None:
                self.fast_log.emit("decision", fields)
            else:
                log.info("decision", **fields)
        return action.encode()

    def release_session(self, session: Session) -> None:
        """Release what a closed connection's unfinished transaction still holds."""
        txn = session.txn
        session.txn = None
        if txn is None or not txn.reserved:
            return
        members = txn.members()
        store: Any = self.active_store()
        if getattr(store, "sync", False):
            store.release_now(members)
        else:
            self.spawn(self._release_quietly(store, members))

    async def _release_quietly(self, store: Store, members: list[tuple[Counter, str]]) -> None:
        with contextlib.suppress(StoreError):  # reservations expire on their own
            await store.release(members)


class PolicyConnection(Connection):
    """One Postfix policy client connection (many requests, answered in order)."""

    def __init__(self, service: PolicyService) -> None:
        super().__init__()
        self.service = service
        cfg = service.cfg
        self.parser = PolicyParser()
        self.session = Session()
        self.sync = bool(getattr(service.store, "sync", False))
        self.queue: deque[PolicyRequest | ProtocolError] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.discarding = False
        self._cfg = cfg

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.service.metrics.connections.inc()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.discarding:
            return
        items = self.parser.feed(data)
        if not items:
            return
        if self.sync and self.worker is None and not self.queue:
            service = self.service
            out = []
            for item in items:
                if isinstance(item, ProtocolError):
                    out.append(self.protocol_error(item))
                    if not item.resync:
                        break
                else:
                    try:
                        out.append(service.decide_now(item, self.session))
                    except Exception:
                        out.append(self.internal_error(item))
            self.write(b"".join(out))
            if self.parser_dead:
                self.linger_close()
            return
        self.queue.extend(items)
        if self.worker is None:
            self.busy = True
            self.worker = asyncio.ensure_future(self.drain_queue())

    @property
    def parser_dead(self) -> bool:
        return self.parser.dead

    def linger_close(self, linger: float = 2.0) -> None:
        """Close after an unrecoverable request without losing the answer already written.

        Closing with unread input makes the kernel send RST, which can destroy the answer in
        flight; so half-close (FIN after the answer), discard input, close soon after.
        """
        transport = self.transport
        self.discarding = True
        if transport is None or transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(linger, self.close)

    async def drain_queue(self) -> None:
        service = self.service
        try:
            while self.queue:
                item = self.queue.popleft()
                if isinstance(item, ProtocolError):
                    self.write(self.protocol_error(item))
                    if not item.resync:
                        self.queue.clear()
                        self.linger_close()
                        return
                    continue
                try:
                    answer = await service.decide(item, self.session)
                except Exception:
                    answer = self.internal_error(item)
                self.write(answer)
        finally:
            self.worker = None
            self.busy = False

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)  # type: ignore[attr-defined]

    def protocol_error(self, err: ProtocolError) -> bytes:
        """Log and count a malformed request; answer it with the configured action."""
        service = self.service
        service.metrics.bad_requests.labels(reason=err.reason).inc()
        log.warning(
            "bad_request",
            reason=err.reason,
            detail=str(err)[:200],
            peer=self.peer,
            closing=not err.resync,
        )
        action = service.engine.bad_request
        service.metrics.request("NONE", action.verb)
        return action.encode()

    def internal_error(self, req: PolicyRequest) -> bytes:
        """A bug must never reach Postfix as a dropped connection: answer and log it."""
        service = self.service
        service.metrics.bad_requests.labels(reason="internal_error").inc()
        log.exception("internal_error", state=req.protocol_state, instance=req.instance or None)
        return service.engine.store_failed(Plan("none", req, self.session)).action.encode()

    def connection_lost(self, exc: Exception | None) -> None:
        service = self.service
        service.metrics.connections.dec()
        if self.parser.pending:
            service.metrics.bad_requests.labels(reason="incomplete_request").inc()
            log.warning(
                "incomplete_request", peer=self.peer, detail="connection closed mid-request"
            )
        if self.worker is not None:
            self.worker.cancel()
        service.release_session(self.session)
        super().connection_lost(exc)


def ensure_parent(path: str) -> None:
    """Create the directory of a socket path when it is missing."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
