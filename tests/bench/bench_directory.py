"""Directory benchmark: bulk import, CLI start-up latency, Postfix map rendering and lookup.

Rows (each with a baseline measured in the same run, so ratios survive noisy machines):

* ``pfm import`` of N mailboxes (default 100,000 in 10 domains) with one precomputed
  argon2id hash reused for every row, as a subprocess (parse + validate + one transaction);
  baseline: a raw ``sqlite3`` ``executemany`` of the same rows into the same schema.
  Target: < 60 s.
* ``pfm mailbox show`` wall time including interpreter start (subprocess, median of 20);
  baseline: ``python -c pass``. Target: < 150 ms.
* ``render postfix maps``: :func:`services.render.postfix.render_postfix` (median of 20,
  in-process; the maps hold queries, so the cost does not grow with the directory), and one
  ``postmap -q`` lookup through the rendered ``sqlite:`` map against the imported directory
  (baseline: ``postmap -q`` on a one-line ``texthash:`` table) when ``postmap`` is installed.

Run: ``.venv/bin/python tests/bench/bench_directory.py [--mailboxes N] [--json]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PY = sys.executable


def _config(tmp: Path) -> Path:
    cfg = tmp / "pfm.toml"
    cfg.write_text(
        "[directory]\n"
        f'path = "{tmp / "directory.db"}"\n'
        f'dkim_dir = "{tmp / "dkim"}"\n'
        f'backup_dir = "{tmp / "backups"}"\n'
    )
    return cfg


# What an installed package gets: bytecode cached after the first run. (Some environments
# set PYTHONDONTWRITEBYTECODE=1, which would recompile every module on every start and
# measure the compiler, not pfm.) The cache goes to a temp dir, not the source tree.
_PYCACHE = tempfile.mkdtemp(prefix="pfm-bench-pycache-")
CHILD_ENV = {
    **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
    "PYTHONPYCACHEPREFIX": _PYCACHE,
}


def _pfm(cfg: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "services.cli.main", "-c", str(cfg), *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env=CHILD_ENV,
    )


def _write_inputs(tmp: Path, n: int, domains: int, password_hash: str) -> tuple[Path, Path]:
    dom_csv = tmp / "domains.csv"
    mb_csv = tmp / "mailboxes.csv"
    with dom_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "description"])
        for d in range(domains):
            w.writerow([f"d{d}.example", f"bench domain {d}"])
    with mb_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["address", "password_hash", "name", "quota"])
        for i in range(n):
            w.writerow([f"user{i}@d{i % domains}.example", password_hash, f"User {i}", "1G"])
    return dom_csv, mb_csv


def bench_import(tmp: Path, n: int, domains: int) -> tuple[float, float, Path, str]:
    """Seconds for ``pfm import`` and for the raw executemany baseline."""
    from services.directory.passwords import hash_password
    from services.directory.sqlite import SqliteBackend

    password_hash = hash_password("bench-password-1")
    dom_csv, mb_csv = _write_inputs(tmp, n, domains, password_hash)
    cfg = _config(tmp)
    t0 = time.perf_counter()
    res = _pfm(cfg, "import", str(dom_csv), str(mb_csv))
    t_import = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"pfm import failed ({res.returncode}): {res.stderr[-2000:]}")

    # baseline: the same rows, same schema, one executemany in one transaction
    base_db = tmp / "baseline.db"
    SqliteBackend(str(base_db)).close()  # creates the schema
    conn = sqlite3.connect(base_db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    now = time.time()
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO domains (name, description, created, modified) VALUES (?, ?, ?, ?)",
        [(f"d{d}.example", f"bench domain {d}", now, now) for d in range(domains)],
    )
    conn.executemany(
        "INSERT INTO mailboxes (address, local_part, domain, password_hash, name, quota, "
        "password_changed, created, modified) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            (
                f"user{i}@d{i % domains}.example",
                f"user{i}",
                f"d{i % domains}.example",
                password_hash,
                f"User {i}",
                1 << 30,
                now,
                now,
                now,
            )
            for i in range(n)
        ),
    )
    conn.execute("COMMIT")
    t_base = time.perf_counter() - t0
    conn.close()
    return t_import, t_base, cfg, f"user{n // 2}@d{(n // 2) % domains}.example"


def _median_ms(run: Callable[[], Any], times: int) -> float:
    samples = []
    for _ in range(times):
        t0 = time.perf_counter()
        run()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def bench_show(cfg: Path, address: str, runs: int) -> tuple[float, float]:
    def show() -> None:
        res = _pfm(cfg, "mailbox", "show", address)
        if res.returncode != 0:
            raise SystemExit(f"pfm mailbox show failed: {res.stderr}")

    def null() -> None:
        subprocess.run([PY, "-c", "pass"], check=True, env=CHILD_ENV)

    show()  # warm the page cache once
    return _median_ms(show, runs), _median_ms(null, runs)


def bench_render(tmp: Path, cfg_path: Path, address: str, runs: int) -> list[list[str]]:
    rows: list[list[str]] = []
    try:
        from services.config import load_config
        from services.render.postfix import render_postfix
    except ImportError:
        return [["render postfix maps", "n/a", "-", "-", "services.render not available"]]
    cfg = load_config(cfg_path)
    map_dir = tmp / "maps"
    rendered = render_postfix(cfg.directory, map_dir=str(map_dir))
    t = _median_ms(lambda: render_postfix(cfg.directory, map_dir=str(map_dir)), runs)
    rows.append(
        ["render postfix maps (in-process)", f"{t:.2f} ms", "-", "-", f"{len(rendered)} files"]
    )
    postmap = shutil.which("postmap") or shutil.which("/usr/sbin/postmap")
    mailbox_map = "virtual_mailbox_maps.cf" if "virtual_mailbox_maps.cf" in rendered else None
    if postmap is None or mailbox_map is None:
        rows.append(["postmap -q (sqlite map)", "n/a", "-", "-", "postmap or sqlite map missing"])
        return rows
    map_dir.mkdir(exist_ok=True)
    for name, f in rendered.items():
        (map_dir / name).write_text(f.text)
    (map_dir / "main.cf").write_text("compatibility_level = 3.6\n")  # postmap -c wants one
    texthash = tmp / "one.texthash"
    texthash.write_text(f"{address} ok\n")
    cf = str(map_dir / mailbox_map)

    def lookup() -> None:
        subprocess.run(
            [postmap, "-c", str(map_dir), "-q", address, f"sqlite:{cf}"],
            check=True,
            capture_output=True,
        )

    def base() -> None:
        subprocess.run(
            [postmap, "-c", str(map_dir), "-q", address, f"texthash:{texthash}"],
            check=True,
            capture_output=True,
        )

    t_q = _median_ms(lookup, runs)
    t_b = _median_ms(base, runs)
    rows.append(
        [
            f"postmap -q via {mailbox_map}",
            f"{t_q:.1f} ms",
            f"{t_b:.1f} ms",
            f"{t_q / t_b:.2f}x",
            "baseline: texthash",
        ]
    )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mailboxes", type=int, default=100_000)
    ap.add_argument("--domains", type=int, default=10)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pfm-bench-dir-") as d:
        tmp = Path(d)
        t_import, t_base, cfg, address = bench_import(tmp, args.mailboxes, args.domains)
        t_show, t_null = bench_show(cfg, address, args.runs)
        render_rows = bench_render(tmp, cfg, address, args.runs)
    rows = [
        [
            f"pfm import {args.mailboxes} mailboxes",
            f"{t_import:.2f} s",
            f"{t_base:.2f} s",
            f"{t_import / t_base:.1f}x",
            "target < 60 s; baseline: raw executemany",
        ],
        [
            "pfm mailbox show (median)",
            f"{t_show:.0f} ms",
            f"{t_null:.0f} ms",
            f"{t_show / t_null:.1f}x",
            "target < 150 ms; baseline: python -c pass",
        ],
        *render_rows,
    ]
    if args.json:
        print(json.dumps({"rows": rows}, indent=2))
        return 0
    header = ["benchmark", "pfm", "baseline", "ratio", "note"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    ok = t_import < 60 and t_show < 150
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
