"""Run every Postfix Manager daemon in the foreground on one config (what ``make run`` does).

Starts ``pfm-policyd``, ``pfm-metricsd`` and ``pfm-authd`` (each only if its package is
installed) as child processes with the same ``--config``, prefixes their output with the
daemon's name, forwards SIGHUP to all of them, and on Ctrl-C / SIGTERM stops them all
(SIGTERM, then SIGKILL after the grace time). If one exits on its own, the others are
stopped too and its exit code is returned, so a broken demo config is noticed at once.
For production use the systemd units in ``systemd/``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

DAEMONS = (("pfm-policyd", "policy"), ("pfm-metricsd", "metricsd"), ("pfm-authd", "authd"))


def available(module: str) -> bool:
    """Whether ``python -m module`` would run a daemon (its ``__main__`` exists)."""
    try:
        return importlib.util.find_spec(f"{module}.__main__") is not None
    except ModuleNotFoundError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m services.devrun", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--config", required=True, help="pfm.toml to give every daemon")
    ap.add_argument("--grace", type=float, default=10.0, help="seconds to wait after SIGTERM")
    ap.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="run only these daemons"
    )
    args = ap.parse_args(argv)
    wanted = [
        (name, mod)
        for name, mod in DAEMONS
        if available(mod) and (not args.only or name in args.only)
    ]
    if not wanted:
        print("devrun: no daemon to run", file=sys.stderr)
        return 1
    for name, mod in wanted:
        ok = subprocess.run(
            [sys.executable, "-m", mod, "--config", args.config, "--check-config"],
            capture_output=True,
            text=True,
            check=False,
        )
        if ok.returncode != 0:
            print(f"devrun: {name} --check-config failed:\n{ok.stdout}{ok.stderr}", file=sys.stderr)
            return ok.returncode
    procs: dict[str, subprocess.Popen[bytes]] = {}
    sel = selectors.DefaultSelector()
    for name, mod in wanted:
        p = subprocess.Popen(
            [sys.executable, "-m", mod, "--config", args.config],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        procs[name] = p
        assert p.stdout is not None
        os.set_blocking(p.stdout.fileno(), False)
        sel.register(p.stdout, selectors.EVENT_READ, name)
    print(f"devrun: started {', '.join(procs)} (Ctrl-C stops all)", file=sys.stderr, flush=True)

    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            for p in procs.values():
                p.send_signal(signal.SIGHUP)
        else:
            stopping.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    code = 0
    partial: dict[str, bytes] = {}
    while not stopping:
        for key, _ in sel.select(timeout=0.2):
            name = str(key.data)
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            data = partial.pop(name, b"") + chunk
            *lines, rest = data.split(b"\n")
            if rest:
                partial[name] = rest
            for line in lines:
                sys.stdout.write(f"{name:13} {line.decode(errors='replace')}\n")
            sys.stdout.flush()
        exited = [(n, p.returncode) for n, p in procs.items() if p.poll() is not None]
        if exited:
            name, rc = exited[0]
            print(f"devrun: {name} exited with {rc}; stopping the others", file=sys.stderr)
            code = rc or 1
            break
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + args.grace
    for p in procs.values():
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return code


if __name__ == "__main__":
    sys.exit(main())
