"""pfm-policyd benchmark: requests/s, latency and server CPU vs a null policy server.

Runs the null server (baseline), pfm-policyd with memory state and pfm-policyd with Redis
state (a private redis-server) at 1, 16 and 64 persistent connections, then measures the
memory store's RSS with 1M and 2M distinct keys. Prints one table; ratios are what count.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.policy_load import run_load  # noqa: E402
from tests.integration.redis_server import RedisServer  # noqa: E402

CONFIG = """
[log]
level = "info"
format = "json"
[redis]
url = "redis://127.0.0.1:{rport}/0"
[policyd]
listen = ["127.0.0.1:{port}"]
state = "{state}"
admin_socket = "{tmp}/admin.sock"
metrics_listen = ""
log_decisions = "{log}"
[policyd.limits.user_messages]
key = "sasl_username"
windows = ["1000000/1h", "10000000/1d"]
applies_to = "authenticated"
[policyd.limits.user_recipients]
key = "sasl_username"
unit = "recipients"
windows = ["10000000/1d"]
applies_to = "authenticated"
[policyd.limits.client_prefix]
key = "client_prefix"
unit = "recipients"
windows = ["100000000/10m"]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def start_server(kind: str, tmp: Path, rport: int, log: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    if kind == "null":
        argv = [
            sys.executable,
            str(ROOT / "tests/bench/policy_load.py"),
            "null-server",
            "--listen",
            f"127.0.0.1:{port}",
        ]
    else:
        conf = tmp / f"{kind}.toml"
        if kind == "floor":
            # pfm-policyd with no limit and no decision log: parsing, framing, metrics and
            # answering only, i.e. the cost every decision pays before any limit logic.
            text = CONFIG.split("[policyd.limits")[0].format(
                port=port, rport=rport, state="memory", tmp=tmp, log="none"
            )
        else:
            text = CONFIG.format(port=port, rport=rport, state=kind, tmp=tmp, log=log)
        conf.write_text(text)
        argv = [sys.executable, "-m", "policy", "--config", str(conf)]
    logf = open(tmp / f"{kind}.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT)
    wait_port(port)
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def memory_rss(keys: int, cap: int) -> dict[str, float]:
    """RSS growth of the memory store holding `keys` distinct counters with a cap of `cap`."""
    code = f"""
import resource, json, sys
sys.path.insert(0, {str(ROOT)!r})
from policy.store import Charge, Counter, open_store
def rss():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
s = open_store('memory', max_keys={cap})
base = rss()
marks = []
step = {keys} // 4
for i in range({keys}):
    c = Counter('user_messages|user%d@example.org|3600' % i, 3600.0, 1000)
    s.reserve_now([Charge(c, 1, 'r:i%d' % i, True)], 900.0)
    if (i + 1) % step == 0:
        marks.append(round(rss() - base, 1))
print(json.dumps({{'keys_kept': len(s), 'rss_growth_mib_by_quarter': marks}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    ap.add_argument("--connections", default="1,16,64")
    ap.add_argument("--keys", type=int, default=10000, help="distinct users/IPs in the load")
    ap.add_argument(
        "--log", default="all", choices=["all", "actions", "none"], help="policyd log_decisions"
    )
    ap.add_argument("--skip-memory-rss", action="store_true")
    args = ap.parse_args(argv)
    conns = [int(c) for c in args.connections.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="pfm-bench-"))
    results: dict[str, dict[int, dict[str, Any]]] = {}
    redis: RedisServer | None = None
    if shutil.which("redis-server"):
        redis = RedisServer(shutil.which("redis-server") or "redis-server", tmp)
        redis.start()
    rport = redis.port if redis else 0
    try:
        for kind in ("null", "floor", "memory", "redis"):
            if kind == "redis" and not rport:
                print("redis-server not installed: skipping redis", file=sys.stderr)
                continue
            proc, port = start_server(kind, tmp, rport, args.log)
            try:
                run_load(f"127.0.0.1:{port}", 4, 1.0, args.keys, server_pid=proc.pid)  # warm-up
                results[kind] = {}
                for n in conns:
                    results[kind][n] = run_load(
                        f"127.0.0.1:{port}", n, args.duration, args.keys, server_pid=proc.pid
                    )
            finally:
                stop(proc)
    finally:
        if redis is not None:
            redis.stop()

    null = results["null"]
    print()
    print(
        f"pfm-policyd benchmark ({args.duration:g}s per cell, {args.keys} keys, log_decisions={args.log}, "
        f"{os.cpu_count()} cores)"
    )
    hdr = f"{'server':8} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'srv CPU s':>9} {'req/CPU-s':>10} {'vs null':>8} {'p99 vs null':>11} {'errors':>6}"
    print(hdr)
    print("-" * len(hdr))
    for kind, rows in results.items():
        for n, r in rows.items():
            base = null[n]
            ratio = (
                r["requests_per_cpu_s"] / base["requests_per_cpu_s"]
                if base["requests_per_cpu_s"]
                else 0
            )
            p99r = r["p99_ms"] / base["p99_ms"] if base["p99_ms"] else 0
            print(
                f"{kind:8} {n:>5} {r['requests_per_s']:>9.0f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
                f"{r['server_cpu_s']:>9.2f} {r['requests_per_cpu_s']:>10.0f} {ratio:>7.0%} {p99r:>10.2f}x {r['errors']:>6}"
            )
    print(
        "targets: memory >= 50% and redis >= 30% of null req/CPU-s; p99 < 1 ms at 1 conn; p99 <= 2x null at 16"
    )
    print(
        "floor = pfm-policyd with no limit and no decision log (framing, parsing, metrics, answer)"
    )
    if not args.skip_memory_rss:
        print()
        print("memory store RSS (MiB growth at each quarter of the inserts)")
        one = memory_rss(1_000_000, 1_000_000)
        two = memory_rss(2_000_000, 1_000_000)
        print(
            f"  1M distinct keys, cap 1M: kept {one['keys_kept']}, growth {one['rss_growth_mib_by_quarter']}"
        )
        print(
            f"  2M distinct keys, cap 1M: kept {two['keys_kept']}, growth {two['rss_growth_mib_by_quarter']}"
        )
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
