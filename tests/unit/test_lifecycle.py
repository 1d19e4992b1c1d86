"""The lifecycle skeleton driven without real signals."""

from __future__ import annotations

import asyncio

from services.lifecycle import Signals, serve, serve_until_stopped


class Fake:
    """A daemon that records what the lifecycle asked of it."""

    def __init__(
        self, *, fail_start: bool = False, hang_stop: bool = False, fail_reload: bool = False
    ) -> None:
        self.calls: list[str] = []
        self.fail_start = fail_start
        self.hang_stop = hang_stop
        self.fail_reload = fail_reload

    async def start(self) -> None:
        self.calls.append("start")
        if self.fail_start:
            raise OSError(98, "cannot listen on 127.0.0.1:1: address already in use")

    async def reload(self) -> None:
        self.calls.append("reload")
        if self.fail_reload:
            raise ValueError("bad config")

    async def stop(self, grace: float) -> None:
        self.calls.append(f"stop:{grace:g}")
        if self.hang_stop:
            await asyncio.sleep(3600)


async def test_start_reload_stop() -> None:
    """A reload request reloads; a stop request stops gracefully with the grace time; exit 0."""
    d, sig = Fake(), Signals()
    task = asyncio.create_task(serve(d, grace=3, signals=sig))
    await asyncio.sleep(0.01)
    sig.request_reload()
    await asyncio.sleep(0.01)
    sig.request_stop()
    assert await asyncio.wait_for(task, 5) == 0
    assert d.calls == ["start", "reload", "stop:3"]


async def test_failed_reload_keeps_running() -> None:
    """A reload that raises is logged and the daemon keeps serving."""
    d, sig = Fake(fail_reload=True), Signals()
    task = asyncio.create_task(serve(d, signals=sig))
    await asyncio.sleep(0.01)
    sig.request_reload()
    await asyncio.sleep(0.01)
    assert not task.done()
    sig.request_stop()
    assert await asyncio.wait_for(task, 5) == 0


async def test_startup_failure_exits_1() -> None:
    """A start() failure (address in use) exits 1 after a cleanup stop."""
    d = Fake(fail_start=True)
    assert await serve(d, signals=Signals()) == 1
    assert d.calls == ["start", "stop:0"]


async def test_second_stop_forces() -> None:
    """A second stop request while draining forces exit 1."""
    d, sig = Fake(hang_stop=True), Signals()
    task = asyncio.create_task(serve(d, signals=sig))
    await asyncio.sleep(0.01)
    sig.request_stop()
    await asyncio.sleep(0.05)
    assert not task.done()
    sig.request_stop()
    assert await asyncio.wait_for(task, 5) == 1


async def test_serve_until_stopped_with_events() -> None:
    """serve_until_stopped: reload_event reloads, stop_event stops gracefully, exit 0."""
    d = Fake()
    stop, reload = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve_until_stopped(d, stop, grace=2, reload_event=reload))
    await asyncio.sleep(0.01)
    reload.set()
    await asyncio.sleep(0.01)
    assert d.calls == ["start", "reload"]
    stop.set()
    assert await asyncio.wait_for(task, 5) == 0
    assert d.calls == ["start", "reload", "stop:2"]


async def test_stop_during_startup_stops_after_start() -> None:
    """A stop requested while start() runs lets start finish, then stops; a second one forces."""

    class SlowStart(Fake):
        async def start(self) -> None:
            self.calls.append("start")
            await asyncio.sleep(0.1)
            self.calls.append("started")

    d, sig = SlowStart(), Signals()
    task = asyncio.create_task(serve(d, signals=sig))
    await asyncio.sleep(0.01)
    sig.request_stop()
    assert await asyncio.wait_for(task, 5) == 0
    assert d.calls == ["start", "started", "stop:10"]

    class HangStart(Fake):
        async def start(self) -> None:
            self.calls.append("start")
            await asyncio.sleep(3600)

    d2, sig2 = HangStart(), Signals()
    task = asyncio.create_task(serve(d2, signals=sig2))
    await asyncio.sleep(0.01)
    sig2.request_stop()
    sig2.request_stop()
    assert await asyncio.wait_for(task, 5) == 1
    assert d2.calls == ["start"]


async def test_reload_requests_coalesce() -> None:
    """Reload requests arriving during a reload result in one more reload, not one each."""

    class SlowReload(Fake):
        async def reload(self) -> None:
            self.calls.append("reload")
            await asyncio.sleep(0.05)

    d, sig = SlowReload(), Signals()
    task = asyncio.create_task(serve(d, signals=sig))
    await asyncio.sleep(0.01)
    sig.request_reload()
    await asyncio.sleep(0.01)
    for _ in range(5):
        sig.request_reload()
    await asyncio.sleep(0.2)
    sig.request_stop()
    assert await asyncio.wait_for(task, 5) == 0
    assert d.calls == ["start", "reload", "reload", "stop:10"]


async def test_stop_failure_exits_1() -> None:
    """A stop() that raises is logged and the exit code is 1."""

    class BadStop(Fake):
        async def stop(self, grace: float) -> None:
            raise RuntimeError("store close failed")

    d, sig = BadStop(), Signals()
    task = asyncio.create_task(serve(d, signals=sig))
    await asyncio.sleep(0.01)
    sig.request_stop()
    assert await asyncio.wait_for(task, 5) == 1
