"""The lifecycle skeleton driven without real signals."""

from __future__ import annotations

import asyncio

from services.lifecycle import Signals, serve


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
