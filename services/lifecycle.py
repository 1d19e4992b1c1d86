"""One lifecycle for every daemon: start -> serve -> graceful stop, reload on SIGHUP.

Signal handlers only set flags and wake the main coroutine. SIGTERM/SIGINT stop gracefully
(a second one forces: whatever runs is cancelled and the process exits 1); SIGHUP reloads
(the daemon validates first and keeps its old config on error). ``sd_notify``
READY/RELOADING/STOPPING when ``$NOTIFY_SOCKET`` is set. uvloop through the runner's loop
factory when installed (modelled on encode/uvicorn ``server.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from . import sdnotify
from .logging import flush_logs, get_logger

log = get_logger("pfm.lifecycle")

EXIT_OK = 0
EXIT_FAILURE = 1
# start() failures worth one clear log line, not a traceback: bind errors, bad config.
EXPECTED_STARTUP_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError)

T = TypeVar("T")


class Daemon(Protocol):
    """What the lifecycle drives."""

    async def start(self) -> None:
        """Bind sockets, open stores; raise to abort start-up."""

    async def reload(self) -> None:
        """Re-read config (validate first, keep the old one on error); raise to report failure."""

    async def stop(self, grace: float) -> None:
        """Stop accepting, drain for up to ``grace`` seconds, close stores."""


def loop_factory(use_uvloop: bool = True) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when wanted and installed, else None (the default loop)."""
    if not use_uvloop:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def tune_gc() -> None:
    """Fewer, cheaper garbage collections for a long-running request server.

    Objects alive after start-up (modules, config) are frozen out of the collector, and the
    young-generation threshold is raised: request handling allocates many short-lived
    tuples and dicts, and the default threshold (700) made the collector re-scan large
    long-lived state (rate-limit counters) thousands of times a second.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def run_daemon(
    daemon: Daemon, *, grace: float = 10.0, use_uvloop: bool = True, name: str = "pfm"
) -> int:
    """Run a daemon until it is stopped; returns the process exit code (0 clean, 1 failure)."""
    tune_gc()
    try:
        with asyncio.Runner(loop_factory=loop_factory(use_uvloop)) as runner:
            return runner.run(serve(daemon, grace=grace, name=name))
    finally:
        flush_logs()


class Signals:
    """Flags set by signal handlers (or by tests) and events that wake the main coroutine."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.stop = False
        self.force = asyncio.Event()
        self.reload = False

    def request_stop(self) -> None:
        """First call: graceful stop. Any later call: force."""
        if self.stop:
            self.force.set()
        self.stop = True
        self.wake.set()

    def request_reload(self) -> None:
        """Reload once the current reload (if any) is done; repeated requests coalesce."""
        self.reload = True
        self.wake.set()


async def _unless_forced(sig: Signals, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T] | None:
    """Run ``coro`` to its end, or cancel it when a forced stop comes first (returns None)."""
    task = asyncio.ensure_future(coro)
    if sig.force.is_set():
        task.cancel()
    forcer = asyncio.ensure_future(sig.force.wait())
    try:
        await asyncio.wait((task, forcer), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        forcer.cancel()
    if task.done() and not task.cancelled():
        return task
    task.cancel()
    await asyncio.wait((task,), timeout=1.0)  # let it unwind; never wait long when forced
    return None


async def serve(
    daemon: Daemon, *, grace: float = 10.0, name: str = "pfm", signals: Signals | None = None
) -> int:
    """The lifecycle proper; ``signals`` lets tests drive it without real signals.

    With ``signals=None`` SIGTERM/SIGINT/SIGHUP handlers are installed on the running loop
    (and removed on return).
    """
    loop = asyncio.get_running_loop()
    sig = signals or Signals()
    installed: list[signal.Signals] = []
    if signals is None:
        handlers: tuple[tuple[signal.Signals, Callable[[], None]], ...] = (
            (signal.SIGTERM, sig.request_stop),
            (signal.SIGINT, sig.request_stop),
            (signal.SIGHUP, sig.request_reload),
        )
        for signum, handler in handlers:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, handler)
                installed.append(signum)
    try:
        return await _lifecycle(daemon, sig, grace, name)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


async def _lifecycle(daemon: Daemon, sig: Signals, grace: float, name: str) -> int:
    started = await _unless_forced(sig, daemon.start())
    if started is None:
        log.warning("forced_stop", daemon=name, phase="startup")
        return EXIT_FAILURE
    failure = started.exception()
    if failure is not None:
        if isinstance(failure, EXPECTED_STARTUP_ERRORS):
            error = getattr(failure, "strerror", None) or str(failure)
            log.error("startup_failed", daemon=name, error=error)
        else:
            log.error("startup_failed", daemon=name, error=repr(failure), exc_info=failure)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(daemon.stop(0), max(grace, 1.0))
        return EXIT_FAILURE
    sdnotify.notify(sdnotify.READY)
    sdnotify.notify(sdnotify.status("serving"))
    while not sig.stop:
        await sig.wake.wait()
        sig.wake.clear()
        if sig.reload and not sig.stop:
            sig.reload = False
            await _reload(daemon, sig, name)
    sdnotify.notify(sdnotify.STOPPING)
    log.info("stopping", daemon=name, grace_s=grace)
    stopped = await _unless_forced(sig, daemon.stop(grace))
    if stopped is None:
        log.warning("forced_stop", daemon=name, phase="shutdown")
        return EXIT_FAILURE
    failure = stopped.exception()
    if failure is not None:
        log.error("stop_failed", daemon=name, error=str(failure))
        return EXIT_FAILURE
    return EXIT_OK


async def _reload(daemon: Daemon, sig: Signals, name: str) -> None:
    sdnotify.notify(sdnotify.reloading())
    began = time.monotonic()
    done = await _unless_forced(sig, daemon.reload())
    if done is None:
        return  # a forced stop: the main loop exits next
    failure = done.exception()
    if failure is None:
        log.info("reload_done", daemon=name, ms=round((time.monotonic() - began) * 1000, 1))
    else:
        log.error("reload_rejected", daemon=name, error=str(failure), kept="old configuration")
    sdnotify.notify(sdnotify.READY)


async def serve_until_stopped(
    daemon: Daemon,
    stop_event: asyncio.Event,
    *,
    grace: float = 10.0,
    name: str = "pfm",
    reload_event: asyncio.Event | None = None,
) -> int:
    """The lifecycle without signal handlers: ``stop_event`` stops, ``reload_event`` reloads.

    Setting ``stop_event`` again while stopping does not force (an Event is set once);
    use ``serve(..., signals=Signals())`` for that.
    """
    sig = Signals()

    async def watch_stop() -> None:
        await stop_event.wait()
        sig.request_stop()

    async def watch_reload(event: asyncio.Event) -> None:
        while True:
            await event.wait()
            event.clear()
            sig.request_reload()

    watchers = [asyncio.create_task(watch_stop())]
    if reload_event is not None:
        watchers.append(asyncio.create_task(watch_reload(reload_event)))
    try:
        return await serve(daemon, grace=grace, name=name, signals=sig)
    finally:
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
