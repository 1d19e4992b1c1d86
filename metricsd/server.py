"""pfm-metricsd's service: log sources -> parsers -> counters, and the /metrics endpoint.

Each configured source runs in its own task and hands lines to :class:`LogPipeline`: a
bounded pending list (``max_pending_lines``; a full list makes file and journald sources wait,
the syslog source's own bounded queue drops and counts). One pipeline task takes everything
pending at once and parses it in chunks under a lock the scrape-time collectors share, so a
scrape sees whole batches and the loop never stalls for long. A failing source is restarted
with backoff; SIGHUP re-reads the config, starts added sources and stops removed ones (a
source that stays keeps its file position, so nothing is counted twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from metricsd.collect import LogCollector, PipelineStats, PostfixUpCollector, SourceStats
from metricsd.counters import PostfixCounters
from metricsd.dovecot_counters import DovecotCounters
from metricsd.queue import QueueCollector, postqueue_runner
from metricsd.sources import FileSource, JournaldSource, SourceError, UdpSyslogSource
from services.config import (
    Config,
    ConfigError,
    MetricsdConfig,
    MetricsSourceConfig,
    load_config,
    locate_error,
)
from services.logging import get_logger
from services.metrics import MetricsServer, new_registry

log = get_logger("pfm.metricsd")

Reader = FileSource | UdpSyslogSource | JournaldSource

CHUNK = 2000  # lines parsed per lock hold / event-loop slice
_MAX_BACKOFF = 30.0


class LogPipeline:
    """Bounded hand-off from sources to the counters, parsed in batches under ``lock``."""

    def __init__(
        self,
        postfix: PostfixCounters,
        dovecot: DovecotCounters | None,
        max_pending: int = 5000,
    ) -> None:
        self.lock = threading.Lock()
        self.postfix = postfix
        self.dovecot = dovecot
        self.stats = PipelineStats()
        self.max_pending = max_pending
        self._pending: list[str] = []
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()

    async def put(self, line: str) -> None:
        """Hand over one line; waits while ``max_pending`` lines are pending."""
        self._pending.append(line)
        self._wake.set()
        if len(self._pending) >= self.max_pending:
            await self._wait_for_space()

    async def put_many(self, lines: list[str]) -> None:
        """Hand over a batch of lines; waits while ``max_pending`` lines are pending."""
        self._pending.extend(lines)
        self._wake.set()
        if len(self._pending) >= self.max_pending:
            await self._wait_for_space()

    async def _wait_for_space(self) -> None:
        self.stats.backpressure_waits += 1
        self.stats.pending = len(self._pending)
        while len(self._pending) >= self.max_pending:
            self._space.clear()
            await self._space.wait()

    def process(self, lines: Sequence[str]) -> None:
        """Parse and count lines now (under the lock the collectors take)."""
        feed_postfix = self.postfix.feed_line
        feed_dovecot = self.dovecot.feed_line if self.dovecot is not None else None
        began = time.perf_counter()
        n_postfix = n_dovecot = n_other = 0
        with self.lock:
            for line in lines:
                if feed_postfix(line):
                    n_postfix += 1
                elif feed_dovecot is not None and feed_dovecot(line) is not None:
                    n_dovecot += 1
                else:
                    n_other += 1
            st = self.stats
            st.postfix_lines += n_postfix
            st.dovecot_lines += n_dovecot
            st.other_lines += n_other
            st.batches += 1
            st.parse_seconds += time.perf_counter() - began

    def drain(self) -> None:
        """Parse everything pending now (at shutdown)."""
        while self._pending:
            batch, self._pending = self._pending, []
            for i in range(0, len(batch), CHUNK):
                self.process(batch[i : i + CHUNK])
        self.stats.pending = 0
        self._space.set()

    async def run(self) -> None:
        """Parse pending lines as they come, yielding to the loop between chunks."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                self.stats.pending = len(batch)
                self._space.set()
                for i in range(0, len(batch), CHUNK):
                    try:
                        self.process(batch[i : i + CHUNK])
                    except Exception:  # a parser bug must not stop the exporter
                        log.exception("batch_failed", lines=min(CHUNK, len(batch) - i))
                    self.stats.pending = max(0, len(batch) - i - CHUNK) + len(self._pending)
                    await asyncio.sleep(0)
                self.stats.pending = len(self._pending)


def source_name(cfg: MetricsSourceConfig) -> str:
    """The stable label of a configured source."""
    if cfg.type == "file":
        return f"file:{cfg.path}"
    if cfg.type == "syslog":
        return f"syslog:{cfg.listen}"
    return "journald:" + ",".join(cfg.units) if cfg.units else "journald"


def _host_port(spec: str) -> tuple[str, int]:
    host, _, port = spec.rpartition(":")
    return host.strip("[]"), int(port)


class SourceHandle:
    """One configured source: its current reader, a supervising task, carried-over totals."""

    def __init__(self, cfg: MetricsSourceConfig, pipeline: LogPipeline) -> None:
        self.cfg = cfg
        self.name = source_name(cfg)
        self.pipeline = pipeline
        self.source: Reader | None = None
        self.task: asyncio.Task[None] | None = None
        self.up = False
        self.restarts = 0
        self._carried = [0, 0, 0, 0, 0]  # lines, drops, errors, rotations, truncations
        self._file: FileSource | None = None

    def make(self) -> Reader:
        """A fresh reader for this source (raises SourceError when it cannot exist)."""
        c = self.cfg
        if c.type == "file":
            self._file = FileSource(c.path, from_start=c.from_start, poll=float(c.poll))
            return self._file
        if c.type == "syslog":
            host, port = _host_port(c.listen)
            return UdpSyslogSource(host, port, queue_size=c.queue_size)
        return JournaldSource(c.units)

    async def open(self) -> None:
        """Create the reader; bind a syslog socket now so start-up fails loudly."""
        try:
            self.source = self.make()
            if isinstance(self.source, UdpSyslogSource):
                await self.source.start()
        except SourceError as exc:
            raise OSError(str(exc)) from None

    @property
    def address(self) -> tuple[str, int] | None:
        """The bound UDP address of a syslog source."""
        src = self.source
        return src.address if isinstance(src, UdpSyslogSource) else None

    def stats(self) -> SourceStats:
        """Totals across restarts."""
        src = self.source
        lines, drops, errors, rot, trunc = self._carried
        if src is not None:
            lines, drops, errors = lines + src.lines, drops + src.drops, errors + src.errors
            if isinstance(src, FileSource):
                rot, trunc = rot + src.rotations, trunc + src.truncations
        return SourceStats(
            self.name, self.cfg.type, self.up, lines, drops, errors, self.restarts, rot, trunc
        )

    def _retire(self) -> None:
        s = self.stats()
        self._carried = [s.lines, s.drops, s.errors, s.rotations, s.truncations]
        self.source = None

    async def supervise(self) -> None:
        """Read until cancelled; restart a failed reader with backoff."""
        delay = 1.0
        first = True
        while True:
            try:
                if not first or self.source is None:
                    await self.open()
                first = False
                self.up = True
                await self._pump()
                log.warning("source_ended", source=self.name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("source_failed", source=self.name, error=str(exc), retry_s=delay)
            finally:
                self.up = False
            self.restarts += 1
            await self._close_source()
            self._retire()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)

    async def _pump(self) -> None:
        src = self.source
        assert src is not None
        pipeline = self.pipeline
        if isinstance(src, FileSource):
            follower = src.follower
            poll = float(self.cfg.poll)
            try:
                while True:
                    batch = follower.read_available()
                    if batch:
                        await pipeline.put_many(batch)
                        await asyncio.sleep(0)
                    else:
                        await asyncio.sleep(poll)
            finally:
                follower.close()
        lines = aiter(src)
        try:
            async for line in lines:
                await pipeline.put(line)
        finally:
            aclose = getattr(lines, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _close_source(self) -> None:
        src = self.source
        if isinstance(src, UdpSyslogSource):
            await src.aclose()
        elif isinstance(src, FileSource):
            src.follower.close()

    def start(self) -> None:
        """Run the supervising task."""
        self.task = asyncio.create_task(self.supervise(), name=f"source {self.name}")

    async def aclose(self) -> None:
        """Stop reading and release the reader."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
        await self._close_source()
        self.up = False


class MetricsService:
    """The running exporter: sources, pipeline, collectors and the HTTP endpoint."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: str | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.cfg: MetricsdConfig = config.metricsd
        self.config_path = config_path
        cfg = self.cfg
        self.postfix = PostfixCounters(
            max_sasl_usernames=cfg.max_sasl_usernames, max_domains=cfg.top_domains
        )
        self.dovecot = DovecotCounters() if cfg.dovecot else None
        self.pipeline = LogPipeline(self.postfix, self.dovecot, cfg.max_pending_lines)
        self.registry = registry if registry is not None else new_registry()
        self.registry.register(LogCollector(self))
        self.postfix_up = PostfixUpCollector(cfg.postfix_config_dir)
        self.registry.register(self.postfix_up)
        self.queue = QueueCollector(
            postqueue_runner(cfg.postfix_config_dir, float(cfg.queue_timeout)),
            cache_seconds=float(cfg.queue_cache),
            top_domains=cfg.top_domains,
        )
        self._queue_registered = False
        if cfg.queue_scrape:
            self.registry.register(self.queue)
            self._queue_registered = True
        self.handles: tuple[SourceHandle, ...] = ()
        self.metrics_server: MetricsServer | None = None
        self._runner: asyncio.Task[None] | None = None

    # LogState for the collector
    @property
    def lock(self) -> threading.Lock:
        """The pipeline's lock."""
        return self.pipeline.lock

    @property
    def stats(self) -> PipelineStats:
        """The pipeline's counters."""
        return self.pipeline.stats

    def source_stats(self) -> list[SourceStats]:
        """Counters of every configured source."""
        return [h.stats() for h in self.handles]

    # ------------------------------------------------------------------ lifecycle

    async def _open_sources(self, configs: Sequence[MetricsSourceConfig]) -> list[SourceHandle]:
        opened: list[SourceHandle] = []
        try:
            for c in configs:
                h = SourceHandle(c, self.pipeline)
                await h.open()
                opened.append(h)
        except BaseException:
            for h in opened:
                await h.aclose()
            raise
        return opened

    async def start(self) -> None:
        """Open the sources (binding syslog sockets), start the pipeline and /metrics."""
        handles = await self._open_sources(self.cfg.sources)
        self.handles = tuple(handles)
        self.metrics_server = MetricsServer(self.cfg.listen, self.registry)
        try:
            await self.metrics_server.start()
        except OSError:
            for h in handles:
                await h.aclose()
            raise
        self._runner = asyncio.create_task(self.pipeline.run(), name="pipeline")
        for h in handles:
            h.start()
        log.info(
            "started",
            listen=self.cfg.listen,
            sources=[h.name for h in handles],
            queue_scrape=self.cfg.queue_scrape,
            dovecot=self.cfg.dovecot,
        )

    @property
    def port(self) -> int:
        """The bound /metrics TCP port."""
        assert self.metrics_server is not None
        return self.metrics_server.port

    async def reload(self) -> None:
        """Re-read the config; keep everything running as it was when it is invalid."""
        if not self.config_path:
            log.warning("reload_skipped", reason="no config file")
            return
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            self.pipeline.stats.reloads_failed += 1
            raise locate_error(exc, self.config_path) from None
        cfg = new.metricsd
        keep = {h.cfg: h for h in self.handles}
        wanted = list(cfg.sources)
        try:
            added = await self._open_sources([c for c in wanted if c not in keep])
        except OSError:
            self.pipeline.stats.reloads_failed += 1
            raise
        by_cfg = {**keep, **{h.cfg: h for h in added}}
        removed = [h for c, h in keep.items() if c not in wanted]
        self.handles = tuple(by_cfg[c] for c in wanted)
        for h in added:
            h.start()
        for h in removed:
            await h.aclose()
        self.postfix_up.reset(cfg.postfix_config_dir)
        self.queue.configure(
            postqueue_runner(cfg.postfix_config_dir, float(cfg.queue_timeout)),
            float(cfg.queue_cache),
            cfg.top_domains,
        )
        if cfg.queue_scrape and not self._queue_registered:
            self.registry.register(self.queue)
            self._queue_registered = True
        elif not cfg.queue_scrape and self._queue_registered:
            self.registry.unregister(self.queue)
            self._queue_registered = False
        restart_needed = [
            k
            for k in ("listen", "dovecot", "max_sasl_usernames", "max_pending_lines")
            if getattr(cfg, k) != getattr(self.cfg, k)
        ]
        if cfg.top_domains != self.cfg.top_domains:
            restart_needed.append("top_domains (log counters; the queue uses the new value)")
        self.config, self.cfg = new, cfg
        self.pipeline.stats.reloads_ok += 1
        log.info(
            "reloaded",
            sources_added=[h.name for h in added] or None,
            sources_removed=[h.name for h in removed] or None,
            restart_needed=restart_needed or None,
        )

    async def stop(self, grace: float) -> None:
        """Stop the sources, parse what was already read, close /metrics."""
        for h in self.handles:
            await h.aclose()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        self.pipeline.drain()
        if self.metrics_server is not None:
            await self.metrics_server.aclose()
        log.info("stopped", lines=self.source_totals())

    def source_totals(self) -> dict[str, Any]:
        """Lines read per source (for the log)."""
        return {h.name: h.stats().lines for h in self.handles}
