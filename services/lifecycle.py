"""One lifecycle for every daemon: start -> serve -> graceful stop, reload on SIGHUP.

Signal handlers only set flags and wake the main coroutine. SIGTERM/SIGINT stop gracefully
(a second one forces); SIGHUP reloads (the daemon validates first and keeps its old config
on error). ``sd_notify`` READY/RELOADING/STOPPING when ``$NOTIFY_SOCKET`` is set. uvloop
through the runner's loop factory when installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Callable
from typing import Any, Protocol

from . import sdnotify
from .logging import get_logger

log = get_logger("pfm.lifecycle")

EXIT_OK = 0
EXIT_FAILURE = 1


class Daemon(Protocol):
    """What the lifecycle drives."""

    async def start(self) -> None: ...

    async def reload(self) -> None: ...

    async def stop(self, grace: float) -> None: ...


def loop_factory(use_uvloop: bool = True) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when wanted and installed, else the default."""
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
    """Run a daemon until it is stopped; returns the process exit code."""
    tune_gc()
    with asyncio.Runner(loop_factory=loop_factory(use_uvloop)) as runner:
        return runner.run(serve(daemon, grace=grace, name=name))


class Signals:
    """Flags set by signal handlers (or by tests) and one event to wake the main loop."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.stop = False
        self.force = asyncio.Event()
        self.reload = False

    def request_stop(self) -> None:
        if self.stop:
            self.force.set()
        self.stop = True
        self.wake.set()

    def request_reload(self) -> None:
        self.reload = True
        self.wake.set()


async def serve(
    daemon: Daemon, *, grace: float = 10.0, name: str = "pfm", signals: Signals | None = None
) -> int:
    """The lifecycle proper; ``signals`` lets tests drive it without real signals."""
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
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, handler)
                installed.append(signum)
    try:
        try:
            await daemon.start()
        except OSError as exc:
            log.error("startup_failed", daemon=name, error=exc.strerror or str(exc))
            await _quiet_stop(daemon)
            return EXIT_FAILURE
        except Exception as exc:
            log.exception("startup_failed", daemon=name, error=str(exc))
            await _quiet_stop(daemon)
            return EXIT_FAILURE
        sdnotify.notify(sdnotify.READY)
        sdnotify.notify(sdnotify.status("serving"))
        while not sig.stop:
            await sig.wake.wait()
            sig.wake.clear()
            if sig.reload and not sig.stop:
                sig.reload = False
                sdnotify.notify(sdnotify.reloading())
                try:
                    await daemon.reload()
                except Exception as exc:
                    log.error("reload_rejected", daemon=name, error=str(exc))
                sdnotify.notify(sdnotify.READY)
        sdnotify.notify(sdnotify.STOPPING)
        log.info("stopping", daemon=name, grace_s=grace)
        stopper: asyncio.Task[Any] = asyncio.create_task(daemon.stop(grace))
        forcer = asyncio.create_task(sig.force.wait())
        done, _ = await asyncio.wait({stopper, forcer}, return_when=asyncio.FIRST_COMPLETED)
        forcer.cancel()
        if stopper not in done:
            stopper.cancel()
            log.warning("forced_stop", daemon=name)
            return EXIT_FAILURE
        failure = stopper.exception()
        if failure is not None:
            log.error("stop_failed", daemon=name, error=str(failure))
            return EXIT_FAILURE
        return EXIT_OK
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


async def _quiet_stop(daemon: Daemon) -> None:
    with contextlib.suppress(Exception):
        await daemon.stop(0)
