"""pfm-metricsd queue scrape benchmark: one scrape with 50,000 queued messages.

Writes a synthetic ``postqueue -j`` output (N messages modelled on the real snapshot in
``shared/corpus/postfix/postqueue.json``: deferred with connection-refused, greylisting and
remote 4xx reasons, held mail, 1-3 recipients over a few hundred domains), puts a fake
``postqueue`` that prints it on ``PATH`` and times, in the same run:

* ``baseline``: running the fake ``postqueue`` and reading its output (the floor);
* ``parse``: running it + ``services.mailqueue.parse_postqueue``;
* ``scrape``: a whole ``QueueCollector`` collection rendered as Prometheus text through the
  real runner (``postqueue_runner``, i.e. ``postqueue -c DIR -j`` with a timeout).

Target: scrape < 1 s at 50,000 messages. Run:
``.venv/bin/python tests/bench/bench_metricsd_scrape.py [--messages N] [--repeat R] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from metricsd.queue import QueueCollector, postqueue_runner  # noqa: E402
from services.mailqueue import parse_postqueue  # noqa: E402

REASONS = (
    "connect to mx.{d}[192.0.2.7]:25: Connection refused",
    "connect to mx.{d}[192.0.2.8]:25: Connection timed out",
    "host mx.{d}[192.0.2.9] said: 450 4.7.1 <{a}>: Recipient address rejected: Greylisted "
    "for 300 seconds (in reply to RCPT TO command)",
    "host mx.{d}[192.0.2.10] said: 452 4.2.2 <{a}>: Mailbox full (in reply to RCPT TO command)",
    "host mx.{d}[192.0.2.11] said: 421 4.3.0 Error: command failed (in reply to end of DATA "
    "command)",
    "Host or domain name not found. Name service error for name={d} type=MX: Host not found, "
    "try again",
)


def synth(n: int, seed: int = 7) -> str:
    """N lines of ``postqueue -j`` output."""
    rnd = random.Random(seed)
    now = int(time.time())
    lines = []
    for i in range(n):
        queue = "hold" if i % 50 == 0 else ("active" if i % 97 == 0 else "deferred")
        rcpts = []
        for j in range(rnd.choice((1, 1, 1, 2, 3))):
            d = f"d{rnd.randrange(400)}.example"
            a = f"user{i}.{j}@{d}"
            r: dict[str, str] = {"address": a}
            if queue == "deferred":
                r["delay_reason"] = rnd.choice(REASONS).format(d=d, a=a)
            rcpts.append(r)
        lines.append(
            json.dumps(
                {
                    "queue_name": queue,
                    "queue_id": f"{i + 0x100000:X}A",
                    "arrival_time": now - rnd.randrange(7 * 86400),
                    "message_size": rnd.randrange(500, 200_000),
                    "forced_expire": False,
                    "sender": f"sender{i % 300}@example.net",
                    "recipients": rcpts,
                }
            )
        )
    return "\n".join(lines) + "\n"


def setup(tmp: Path, n: int) -> tuple[Path, Path]:
    """The fake postqueue on a bin dir, a config dir with a main.cf; returns (bin, conf)."""
    data = tmp / "postqueue.jsonl"
    data.write_text(synth(n))
    bindir = tmp / "bin"
    bindir.mkdir()
    fake = bindir / "postqueue"
    fake.write_text(f"#!/bin/sh\nexec cat {data}\n")
    fake.chmod(0o755)
    conf = tmp / "conf"
    conf.mkdir()
    (conf / "main.cf").write_text("# fake\n")
    return bindir, conf


def best(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pfm-bench-scrape-") as d:
        bindir, conf = setup(Path(d), args.messages)
        os.environ["PATH"] = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"
        fake = str(bindir / "postqueue")

        def baseline() -> None:
            subprocess.run([fake, "-c", str(conf), "-j"], capture_output=True, check=True)

        def parse() -> None:
            out = subprocess.run([fake, "-j"], capture_output=True, check=True).stdout
            assert len(parse_postqueue(out).messages) == args.messages

        collector = QueueCollector(postqueue_runner(str(conf), 30.0), cache_seconds=0)
        registry = CollectorRegistry()
        registry.register(collector)
        body = b""

        def scrape() -> None:
            nonlocal body
            body = generate_latest(registry)

        rows = {
            "baseline": best(baseline, args.repeat),
            "parse": best(parse, args.repeat),
            "scrape": best(scrape, args.repeat),
        }
        assert b"postfix_queue_scrape_success 1.0" in body, body[:500]
        total = sum(
            float(line.split()[-1])
            for line in body.decode().splitlines()
            if line.startswith("postfix_queue_messages{")
        )
        assert total == args.messages, total
    result = {
        "messages": args.messages,
        **{f"{k}_s": round(v, 4) for k, v in rows.items()},
        "scrape_vs_baseline": round(rows["scrape"] / rows["baseline"], 1),
        "target_s": 1.0,
        "ok": rows["scrape"] < 1.0,
        "exposition_bytes": len(body),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"queue scrape, {args.messages} messages (best of {args.repeat})")
        print(f"{'row':<10} {'seconds':>9}")
        for k, v in rows.items():
            print(f"{k:<10} {v:>9.4f}")
        verdict = "ok" if result["ok"] else "TOO SLOW"
        print(f"target: scrape < 1 s -> {verdict}; exposition {len(body)} bytes")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
