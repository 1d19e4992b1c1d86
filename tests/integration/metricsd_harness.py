"""Helpers for pfm-metricsd tests: an in-process daemon and a real HTTP scrape."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from metricsd.server import MetricsService
from services.config import build_config

NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def make_service(metricsd: dict[str, Any], path: str | None = None) -> MetricsService:
    """A service on a free /metrics port with ``metricsd`` settings (queue scrape off)."""
    section = {"listen": "127.0.0.1:0", "queue_scrape": False, **metricsd}
    return MetricsService(build_config({"metricsd": section}), config_path=path)


async def http_get(port: int, path: str = "/metrics") -> tuple[int, str]:
    """GET over a real TCP connection; (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


class Scrape:
    """One parsed exposition: sample lookup by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = list(text_string_to_metric_families(text))
        self.samples = [(s.name, s.labels, s.value) for f in self.families for s in f.samples]

    def sum(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels``."""
        return sum(
            v
            for n, lab, v in self.samples
            if n == name and all(lab.get(k) == want for k, want in labels.items())
        )

    def has(self, name: str) -> bool:
        """True when any sample is called ``name``."""
        return any(n == name for n, _, _ in self.samples)

    def get(self, name: str, **labels: str) -> float | None:
        """The one sample with exactly these labels, or None."""
        for n, lab, v in self.samples:
            if n == name and lab == labels:
                return v
        return None


async def scrape(port: int) -> Scrape:
    """Scrape /metrics and parse it."""
    status, body = await http_get(port)
    assert status == 200, body
    return Scrape(body)


async def scrape_until(port: int, done: Callable[[Scrape], bool], timeout: float = 30.0) -> Scrape:
    """Scrape until ``done`` holds; AssertionError with the last sums on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        s = await scrape(port)
        if done(s):
            return s
        if time.monotonic() > deadline:
            lines = {k: s.sum("pfm_metricsd_lines_total", kind=k) for k in ("postfix", "other")}
            raise AssertionError(f"condition not reached; lines so far: {lines}")
        await asyncio.sleep(0.05)


def check_names(families: Iterable[Any]) -> None:
    """Prometheus naming: valid names, counters' samples end in _total, no duplicates."""
    seen: set[str] = set()
    for fam in families:
        assert NAME_RE.match(fam.name), fam.name
        assert fam.name not in seen, f"duplicate family {fam.name}"
        seen.add(fam.name)
        for s in fam.samples:
            assert NAME_RE.match(s.name), s.name
            for label in s.labels:
                assert NAME_RE.match(label) and not label.startswith("__"), label
            if fam.type == "counter":
                assert s.name.endswith(("_total", "_created")), s.name
