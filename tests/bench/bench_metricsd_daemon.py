"""pfm-metricsd end to end: the whole daemon counting the amplified real corpus.

The parse benchmark (bench_metricsd_parse.py) measures the parser in-process; this one
measures what an admin runs: ``python -m metricsd`` following a >= 1M-line log file (the
real corpus amplified the same way) from the start, with the HTTP endpoint up and the
queue scrape off. The daemon's CPU time (utime + stime from /proc) until every line is
counted gives lines per CPU-second; VmHWM gives its peak RSS. In the same run a baseline
process reads and splits the same file, measured the same way.

Targets (issue): >= 230,000 lines per CPU-second, RSS <= 40 MiB.
Run: ``.venv/bin/python tests/bench/bench_metricsd_daemon.py [--min-lines N] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.bench_metricsd_parse import CORPUS, amplify  # noqa: E402

BASELINE = """
import sys
n = 0
with open(sys.argv[1], encoding="utf-8") as f:
    for line in f:
        line.split()
        n += 1
print(n)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu(pid: int) -> float:
    """utime + stime of a process in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def counted(port: int) -> float:
    """Lines the daemon has read from its sources, from its own /metrics."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return -1.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith("pfm_metricsd_lines_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run_daemon(path: Path, lines: int, tmp: Path, extra: str = "") -> dict[str, Any]:
    port = free_port()
    cfg = tmp / "pfm.toml"
    cfg.write_text(
        f"""
[log]
level = "warning"
format = "json"
[metricsd]
listen = "127.0.0.1:{port}"
queue_scrape = false
{extra}
[[metricsd.sources]]
type = "file"
path = "{path}"
from_start = true
"""
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "metricsd", "--config", str(cfg)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        t0 = time.monotonic()
        while counted(port) < lines:
            if proc.poll() is not None:
                raise RuntimeError(f"pfm-metricsd exited with {proc.returncode}")
            if time.monotonic() - t0 > 600:
                raise RuntimeError("pfm-metricsd did not count every line within 600 s")
            time.sleep(0.2)
        wall = time.monotonic() - t0
        cpu = proc_cpu(proc.pid)
        rss = vm_hwm_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    return {
        "lines": lines,
        "cpu_s": cpu,
        "wall_s": wall,
        "lines_per_cpu_s": lines / cpu,
        "rss_mib": rss,
    }


def run_baseline(path: Path, lines: int) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, "-c", BASELINE, str(path)], stdout=subprocess.PIPE, text=True
    )
    # sample the high-water mark and CPU just before it exits: poll until its output is ready
    out, _ = "", None
    cpu = rss = 0.0
    while proc.poll() is None:
        try:
            cpu, rss = proc_cpu(proc.pid), vm_hwm_mib(proc.pid)
        except OSError:
            break
        time.sleep(0.01)
    out = proc.stdout.read() if proc.stdout else ""
    n = int(out.strip() or 0)
    assert n == lines, (n, lines)
    return {
        "lines": lines,
        "cpu_s": cpu,
        "lines_per_cpu_s": lines / cpu if cpu else 0.0,
        "rss_mib": rss,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--min-lines", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pfm-bench-md-") as d:
        tmp = Path(d)
        path = tmp / "mail.log"
        lines = amplify(CORPUS, path, args.min_lines)
        base = run_baseline(path, lines)
        daemon = run_daemon(path, lines, tmp)
    if args.json:
        print(json.dumps({"baseline": base, "daemon": daemon}))
        return 0
    print(f"pfm-metricsd daemon on the real corpus amplified to {lines} lines")
    print(f"{'row':24} {'lines/CPU-s':>12} {'CPU s':>7} {'peak RSS MiB':>13} {'vs baseline':>12}")
    for name, r in (("baseline (read+split)", base), ("pfm-metricsd (whole)", daemon)):
        ratio = r["lines_per_cpu_s"] / base["lines_per_cpu_s"] if base["lines_per_cpu_s"] else 0
        print(
            f"{name:24} {r['lines_per_cpu_s']:>12,.0f} {r['cpu_s']:>7.2f} {r['rss_mib']:>13.1f} {ratio:>11.2f}x"
        )
    print("targets: >= 230,000 lines per CPU-second, RSS <= 40 MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
