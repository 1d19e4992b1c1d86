"""pfm-policyd under bad input: every abuse gets an answer or a clean close, never a crash."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.fixtures.policy_requests import PolicyClient, encode, request
from tests.integration.policyd_harness import address, make_config, metric, running

LIMITS = {"one": {"key": "sender", "windows": ["100/1h"]}}


async def read_all(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), timeout)


async def still_serving(host: str, port: int) -> None:
    c = await PolicyClient.connect(host, port)
    assert await c.ask() == "DUNNO"
    await c.close()


async def test_one_megabyte_line_answered_then_closed(tmp_path: Path) -> None:
    """A 1 MB line gets the bad-request answer and the connection is closed."""
    async with running(make_config(tmp_path, LIMITS)) as svc:
        host, port = address(svc)
        r, w = await asyncio.open_connection(host, port)
        w.write(b"sender=" + b"a" * 1_000_000 + b"\n\n")
        data = await read_all(r)
        assert data == b"action=DUNNO\n\n"
        assert metric(svc, "pfm_policyd_bad_requests_total", {"reason": "line_too_long"}) == 1
        w.close()
        await still_serving(host, port)


async def test_binary_garbage_and_invalid_utf8(tmp_path: Path) -> None:
    """Binary junk and invalid UTF-8 never crash the daemon; valid requests still work."""
    async with running(make_config(tmp_path, LIMITS)) as svc:
        host, port = address(svc)
        c = await PolicyClient.connect(host, port)
        req = encode(
            request(
                sender="\udcff@example.org".encode("utf-8", "surrogateescape").decode("latin-1")
            )
        )
        assert await c.ask_raw(req.replace(b"\xc3\xbf", b"\xff")) == "DUNNO"
        r, w = await asyncio.open_connection(host, port)
        w.write(bytes(range(256)) * 10 + b"\n\n")
        w.write_eof()
        data = await read_all(r)
        assert data.startswith(b"action=")
        w.close()
        await c.close()
        await still_serving(host, port)


async def test_ten_thousand_attributes(tmp_path: Path) -> None:
    """10,000 attributes get an answer and a counter; the connection stays in sync and usable."""
    async with running(make_config(tmp_path, LIMITS)) as svc:
        host, port = address(svc)
        c = await PolicyClient.connect(host, port)
        flood = b"".join(b"%x=\n" % i for i in range(10_000)) + b"\n"  # 48 KB: under max_request
        assert await c.ask_raw(flood) == "DUNNO"
        assert metric(svc, "pfm_policyd_bad_requests_total", {"reason": "too_many_attributes"}) == 1
        assert await c.ask() == "DUNNO"
        await c.close()
        await still_serving(host, port)


async def test_oversized_request_answered_then_closed(tmp_path: Path) -> None:
    """A request over max_request bytes gets one answer, then the connection is closed."""
    async with running(make_config(tmp_path, LIMITS)) as svc:
        host, port = address(svc)
        r, w = await asyncio.open_connection(host, port)
        w.write(b"".join(b"attribute%d=%s\n" % (i, b"v" * 40) for i in range(2000)) + b"\n")
        assert await read_all(r) == b"action=DUNNO\n\n"
        assert metric(svc, "pfm_policyd_bad_requests_total", {"reason": "request_too_large"}) == 1
        w.close()
        await still_serving(host, port)


async def test_missing_terminator_then_close(tmp_path: Path) -> None:
    """A request cut off by the client is logged and counted, and charges nothing."""
    async with running(make_config(tmp_path, LIMITS)) as svc:
        host, port = address(svc)
        r, w = await asyncio.open_connection(host, port)
        w.write(encode(request())[:-1])
        w.close()
        for _ in range(100):
            if metric(svc, "pfm_policyd_bad_requests_total", {"reason": "incomplete_request"}):
                break
            await asyncio.sleep(0.01)
        assert metric(svc, "pfm_policyd_bad_requests_total", {"reason": "incomplete_request"}) == 1
        await still_serving(host, port)


async def test_unknown_request_type_and_duplicates(tmp_path: Path) -> None:
    """An unknown request= type and duplicate attributes get DUNNO and the connection stays usable."""
    async with running(make_config(tmp_path, LIMITS)) as svc:
        c = await PolicyClient.connect(*address(svc))
        assert await c.ask_raw(b"request=junk_policy\nsender=a@b.c\n\n") == "DUNNO"
        assert (
            await c.ask_raw(b"request=smtpd_access_policy\nsender=a@b.c\nsender=d@e.f\n\n")
            == "DUNNO"
        )
        assert await c.ask_raw(b"no equals sign here\n\n") == "DUNNO"
        assert await c.ask() == "DUNNO"
        assert metric(svc, "pfm_policyd_bad_requests_total", {"reason": "bad_request_type"}) == 1
        assert metric(svc, "pfm_policyd_bad_requests_total", {"reason": "duplicate_attribute"}) == 1
        await c.close()


async def test_connection_flood_past_max_connections(tmp_path: Path) -> None:
    """Connections past max_connections get the overload answer and are closed; others keep working."""
    async with running(make_config(tmp_path, LIMITS, max_connections=5)) as svc:
        host, port = address(svc)
        held = [await PolicyClient.connect(host, port) for _ in range(5)]
        for c in held:
            assert await c.ask() == "DUNNO"
        r, w = await asyncio.open_connection(host, port)
        data = await read_all(r)
        assert data.startswith(b"action=DEFER_IF_PERMIT 4.3.2")
        w.close()
        assert metric(svc, "pfm_policyd_rejected_connections_total") >= 1
        assert await held[0].ask() == "DUNNO"
        for c in held:
            await c.close()
        await asyncio.sleep(0.05)
        await still_serving(host, port)


async def test_idle_clients_are_closed(tmp_path: Path) -> None:
    """A client idle past idle_timeout is disconnected."""
    async with running(make_config(tmp_path, LIMITS, idle_timeout=0.3)) as svc:
        r, w = await asyncio.open_connection(*address(svc))
        data = await read_all(r, timeout=5)
        assert data == b""
        assert metric(svc, "pfm_policyd_idle_closed_total") == 1
        w.close()


async def test_pipelined_requests_answered_in_order(tmp_path: Path) -> None:
    """Several requests in one write get their answers in order."""
    limits = {"two": {"key": "sender", "unit": "recipients", "windows": ["2/1h"]}}
    async with running(make_config(tmp_path, limits)) as svc:
        r, w = await asyncio.open_connection(*address(svc))
        batch = b"".join(encode(request(instance="p", recipient=f"r{i}@x.test")) for i in range(3))
        w.write(batch)
        answers = [await asyncio.wait_for(r.readuntil(b"\n\n"), 5) for _ in range(3)]
        assert answers[0] == answers[1] == b"action=DUNNO\n\n"
        assert answers[2].startswith(b"action=DEFER 4.7.1")
        w.close()
