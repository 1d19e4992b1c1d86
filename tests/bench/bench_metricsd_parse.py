"""pfm-metricsd parse benchmark: Postfix log lines per CPU-second and peak RSS.

Amplifies the real corpus (``shared/corpus/postfix/maillog.real.log.gz``) to >= 1M lines:
copy k of the log gets every queue id rewritten (``k`` hex digits prepended, so ids stay
unique and valid) and every timestamp shifted by k capture lengths (so time stays
monotonic). Each row runs in a fresh subprocess over the same plain-text file, so its peak
RSS (``ru_maxrss``) is its own:

* ``baseline``: read the file line by line and ``str.split()`` each line;
* ``syslog``: read + ``parse_syslog_line``;
* ``parse+count``: read + ``PostfixCounters.feed_line`` (syslog split, Postfix parse,
  classification, counting).

Target: parse+count >= 230,000 lines per CPU-second (``time.process_time``), RSS <= 40 MiB.

Run: ``.venv/bin/python tests/bench/bench_metricsd_parse.py [--copies N] [--json]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CORPUS = ROOT.parent / "shared" / "corpus" / "postfix" / "maillog.real.log.gz"
MODES = ("baseline", "syslog", "parse+count")
_QID_AT = re.compile(r"(?:\]: |notification: )([0-9A-F]{6,12})(?=:|$)", re.M)
_HEXTOKEN = re.compile(r"\b[0-9A-F]{6,12}\b")


def amplify(src: Path, dst: Path, min_lines: int) -> int:
    """Write >= min_lines lines built from copies of src; return the line count."""
    with gzip.open(src, "rt", encoding="utf-8") as f:
        text = f.read()
    lines = text.splitlines(keepends=True)
    qids = set(_QID_AT.findall(text))
    year = 2026
    first = dt.datetime.strptime(f"{year} {lines[0][:15]}", "%Y %b %d %H:%M:%S")
    last = dt.datetime.strptime(f"{year} {lines[-1][:15]}", "%Y %b %d %H:%M:%S")
    span = last - first + dt.timedelta(seconds=1)
    copies = -(-min_lines // len(lines))
    written = 0
    with dst.open("w", encoding="utf-8") as out:
        for k in range(copies):
            prefix = format(k, "X")
            shift = span * k

            def requeue(m: re.Match[str], prefix: str = prefix) -> str:
                tok = m.group(0)
                return prefix + tok if tok in qids else tok

            stamps: dict[str, str] = {}
            chunk = []
            for line in lines:
                ts = line[:15]
                new_ts = stamps.get(ts)
                if new_ts is None:
                    when = dt.datetime.strptime(f"{year} {ts}", "%Y %b %d %H:%M:%S") + shift
                    new_ts = stamps[ts] = when.strftime("%b %d %H:%M:%S")
                body = line[15:]
                if k:
                    body = _HEXTOKEN.sub(requeue, body)
                chunk.append(new_ts + body)
            out.writelines(chunk)
            written += len(chunk)
    return written


def run_mode(mode: str, path: Path) -> dict[str, Any]:
    """Measure one mode in this process: lines, CPU seconds, lines/CPU-s, peak RSS."""
    from metricsd.counters import PostfixCounters
    from metricsd.parsers.syslog import parse_syslog_line

    n = 0
    start = time.process_time()
    with path.open("r", encoding="utf-8", errors="replace") as f:
        if mode == "baseline":
            for line in f:
                line.split()
                n += 1
        elif mode == "syslog":
            for line in f:
                parse_syslog_line(line)
                n += 1
        else:
            counters = PostfixCounters(max_sasl_usernames=50)
            feed = counters.feed_line
            for line in f:
                feed(line)
                n += 1
            unsupported = counters.total("postfix_unsupported_lines_total")
            if unsupported:
                raise SystemExit(f"{unsupported} unsupported lines in the amplified corpus")
    cpu = time.process_time() - start
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "mode": mode,
        "lines": n,
        "cpu_s": round(cpu, 3),
        "lines_per_cpu_s": round(n / cpu),
        "peak_rss_mib": round(rss_kib / 1024, 1),
        "vm_hwm_mib": round(_vm_hwm_kib() / 1024, 1),
    }


def _vm_hwm_kib() -> int:
    """Peak RSS of this program image (/proc VmHWM; ru_maxrss survives exec on Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _child(mode: str, path: Path, min_lines: int) -> str:
    """Run one step in a fresh interpreter and return its stdout."""
    cmd = [sys.executable, __file__, "--run", mode, "--file", str(path)]
    cmd += ["--min-lines", str(min_lines)]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def main(argv: list[str] | None = None) -> int:
    """Amplify the corpus, run every mode in a subprocess, print a table (or JSON)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--min-lines", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--run", choices=(*MODES, "amplify"), help=argparse.SUPPRESS)
    ap.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run == "amplify":
        print(amplify(CORPUS, args.file, args.min_lines))
        return 0
    if args.run:
        print(json.dumps(run_mode(args.run, args.file)))
        return 0
    if not CORPUS.exists():
        print(f"corpus not found: {CORPUS}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pfm-bench-") as tmp:
        path = Path(tmp) / "maillog.amplified.log"
        # every step in its own process: the parent stays small, so no child inherits a
        # large RSS high-water mark through fork
        total = int(_child("amplify", path, args.min_lines))
        rows = [json.loads(_child(mode, path, args.min_lines)) for mode in MODES]
    base = rows[0]["lines_per_cpu_s"]
    for row in rows:
        row["vs_baseline"] = round(row["lines_per_cpu_s"] / base, 3)
    if args.json:
        print(json.dumps({"lines": total, "rows": rows}, indent=1))
        return 0
    print(f"pfm-metricsd parse benchmark: {total:,} lines (real corpus amplified)")
    head = f"{'mode':<12} {'lines/CPU-s':>12} {'CPU s':>8} {'ru_maxrss MiB':>14}"
    print(f"{head} {'VmHWM MiB':>10} {'vs baseline':>12}")
    for r in rows:
        print(
            f"{r['mode']:<12} {r['lines_per_cpu_s']:>12,} {r['cpu_s']:>8} "
            f"{r['peak_rss_mib']:>14} {r['vm_hwm_mib']:>10} {r['vs_baseline']:>12}"
        )
    target = rows[-1]["lines_per_cpu_s"] >= 230_000 and rows[-1]["peak_rss_mib"] <= 40
    print(f"target >= 230,000 lines/CPU-s and <= 40 MiB: {'met' if target else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
