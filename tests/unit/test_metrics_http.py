"""The /metrics endpoint: real HTTP, parsed with prometheus_client's parser."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families

from services.metrics import MetricsServer, new_registry, process_collectors


async def raw(port: int, request: bytes) -> bytes:
    """Send raw bytes and read the whole answer (the server closes after one request)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(request)
    try:
        return await asyncio.wait_for(r.read(), 5)
    finally:
        w.close()


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


async def test_metrics_and_health() -> None:
    """GET /metrics serves the registry; /healthz says ok; other paths 404."""
    reg = new_registry()
    c = Counter("pfm_test_things", "Things.", registry=reg)
    c.inc(3)
    srv = MetricsServer("127.0.0.1:0", reg)
    await srv.start()
    try:
        base = f"http://127.0.0.1:{srv.port}"
        status, body = await asyncio.to_thread(fetch, base + "/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(body)}
        assert families["pfm_test_things"].samples[0].value == 3
        assert "process_cpu_seconds" in families
        assert await asyncio.to_thread(fetch, base + "/healthz") == (200, "ok\n")
        assert (await asyncio.to_thread(fetch, base + "/nope"))[0] == 404
    finally:
        await srv.aclose()


async def test_garbage_request_does_not_break_server() -> None:
    """A non-HTTP client gets an error or a close; the server keeps serving."""
    reg = new_registry(process=False)
    srv = MetricsServer("127.0.0.1:0", reg)
    await srv.start()
    try:
        r, w = await asyncio.open_connection("127.0.0.1", srv.port)
        w.write(b"\x00\x01garbage\r\n\r\n")
        data = await asyncio.wait_for(r.read(), 5)
        assert data.startswith(b"HTTP/1.1 400")
        w.close()
        status, _ = await asyncio.to_thread(fetch, f"http://127.0.0.1:{srv.port}/metrics")
        assert status == 200
    finally:
        await srv.aclose()


@pytest.mark.parametrize("path", ["/metrics", "/healthz"])
async def test_policyd_metrics_parse(path: str) -> None:
    """pfm-policyd's own families (custom collector included) are valid exposition text."""
    from policy.telemetry import PolicyMetrics

    reg = new_registry(process=False)
    m = PolicyMetrics(reg)
    m.request("RCPT", "DUNNO", 0.0002)
    m.request("RCPT", "DEFER", 2.0)
    m.breach("user", False)
    srv = MetricsServer("127.0.0.1:0", reg)
    await srv.start()
    try:
        status, body = await asyncio.to_thread(fetch, f"http://127.0.0.1:{srv.port}{path}")
        assert status == 200
        if path == "/metrics":
            fam = {f.name: f for f in text_string_to_metric_families(body)}
            req = {
                (s.labels["protocol_state"], s.labels["action"]): s.value
                for s in fam["pfm_policyd_requests"].samples
            }
            assert req[("RCPT", "DUNNO")] == 1 and req[("RCPT", "DEFER")] == 1
            hist = {
                s.labels.get("le"): s.value
                for s in fam["pfm_policyd_decision_seconds"].samples
                if s.name.endswith("_bucket")
            }
            assert hist["0.00025"] == 1 and hist["+Inf"] == 2
    finally:
        await srv.aclose()


async def test_openmetrics_negotiated_by_accept() -> None:
    """Accept: application/openmetrics-text gets OpenMetrics (with # EOF); plain gets 0.0.4/1.0 text."""
    reg = new_registry(process=False)
    Counter("pfm_test_om", "OM.", registry=reg).inc()
    srv = MetricsServer("127.0.0.1:0", reg)
    await srv.start()
    try:
        om = await raw(
            srv.port,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
            b"Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
        )
        head, _, body = om.partition(b"\r\n\r\n")
        assert b"Content-Type: application/openmetrics-text" in head
        assert body.endswith(b"# EOF\n") and b"pfm_test_om_total 1.0" in body
        plain = await raw(srv.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = plain.partition(b"\r\n\r\n")
        assert b"Content-Type: text/plain; version=" in head
        assert f"Content-Length: {len(body)}".encode() in head
        fams = {f.name for f in text_string_to_metric_families(body.decode())}
        assert "pfm_test_om" in fams
    finally:
        await srv.aclose()


async def test_head_method_and_errors() -> None:
    """HEAD gets headers only; POST gets 405 with Allow; an oversized head gets 431."""
    srv = MetricsServer("127.0.0.1:0", new_registry(process=False))
    await srv.start()
    try:
        head = await raw(srv.port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
        assert b"Content-Length: 3" in head
        post = await raw(srv.port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert post.startswith(b"HTTP/1.1 405") and b"Allow: GET, HEAD" in post
        big = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n"
        assert (await raw(srv.port, big)).startswith(b"HTTP/1.1 431")
    finally:
        await srv.aclose()


async def test_slow_client_times_out() -> None:
    """A client that never finishes its request head gets 408 after the timeout."""
    srv = MetricsServer("127.0.0.1:0", new_registry(process=False), timeout=0.2)
    await srv.start()
    try:
        r, w = await asyncio.open_connection("127.0.0.1", srv.port)
        w.write(b"GET /metrics HTTP/1.1\r\n")
        assert (await asyncio.wait_for(r.read(), 5)).startswith(b"HTTP/1.1 408")
        w.close()
    finally:
        await srv.aclose()


async def test_unix_socket_listener(tmp_path: Path) -> None:
    """The endpoint also listens on a unix socket."""
    path = tmp_path / "metrics.sock"
    srv = MetricsServer(f"unix:{path}", new_registry(process=False))
    await srv.start()
    try:
        r, w = await asyncio.open_unix_connection(str(path))
        w.write(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert (await asyncio.wait_for(r.read(), 5)).endswith(b"\r\n\r\nok\n")
        w.close()
    finally:
        await srv.aclose()


def test_process_collectors_add_process_families() -> None:
    """process_collectors() adds process, platform and gc families to a plain registry."""
    from prometheus_client import generate_latest

    reg = process_collectors(new_registry(process=False))
    names = {f.name for f in text_string_to_metric_families(generate_latest(reg).decode())}
    assert {"process_cpu_seconds", "python_info", "python_gc_objects_collected"} <= names


async def test_broken_collector_gives_500_and_server_survives() -> None:
    """A collector that raises answers 500; the next scrape is served."""
    from prometheus_client.registry import Collector

    class Broken(Collector):
        def collect(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("broken collector")

    reg = new_registry(process=False)
    broken = Broken()
    reg.register(broken)
    srv = MetricsServer("127.0.0.1:0", reg)
    await srv.start()
    try:
        assert (await raw(srv.port, b"GET /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 500")
        reg.unregister(broken)
        assert (await raw(srv.port, b"GET /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200")
    finally:
        await srv.aclose()
