"""The /metrics endpoint: real HTTP, parsed with prometheus_client's parser."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest
from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families

from services.metrics import MetricsServer, new_registry


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
        assert data.startswith(b"HTTP/1.1 405")
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
