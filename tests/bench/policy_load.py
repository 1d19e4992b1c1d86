"""Policy delegation load generator and the null policy server used as its baseline.

    python tests/bench/policy_load.py --target 127.0.0.1:10040 --connections 16 --duration 5
    python tests/bench/policy_load.py null-server --listen 127.0.0.1:10041
    python tests/bench/policy_load.py parse-bench

The load behaves like Postfix smtpd processes: N persistent connections, each sends one request
and waits for its answer before the next. ``--mix rcpt`` sends Postfix 3.7 requests (29
attributes): per transaction 1-3 RCPT requests, then one END-OF-MESSAGE request with the real
``size`` and ``recipient_count``, all with the same ``instance``. ``--keys`` distinct
senders/SASL users/client IPs are used (3 in 4 transactions authenticated on port 587).

Clients run in ``--processes`` worker processes (default: cores - 1), each one lean uvloop
``asyncio.Protocol`` loop, so the generator stays cheap; ``--server-pid`` measures the server's
own CPU time (utime + stime from /proc) so results compare as requests per server CPU-second.
Prints one JSON object. Importable: :func:`run_load`, :func:`serve_null`.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

try:
    import uvloop

    _LOOP_FACTORY: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
except ImportError:  # pragma: no cover - uvloop is a project dependency
    _LOOP_FACTORY = None

NULL_ANSWER = b"action=DUNNO\n\n"
NULL_MAX_BUFFER = 1 << 20  # the null server drops a client that sends 1 MiB without "\n\n"

# Postfix 3.7 smtpd attribute order (SMTPD_POLICY_README), values filled per request.
TEMPLATE = (
    "request=smtpd_access_policy\n"
    "protocol_state={state}\n"
    "protocol_name=ESMTP\n"
    "helo_name={helo}\n"
    "queue_id={qid}\n"
    "sender={sender}\n"
    "recipient={rcpt}\n"
    "recipient_count={count}\n"
    "client_address={ip}\n"
    "client_name={helo}\n"
    "reverse_client_name={helo}\n"
    "instance={instance}\n"
    "sasl_method={method}\n"
    "sasl_username={user}\n"
    "sasl_sender=\n"
    "size={size}\n"
    "ccert_subject=\n"
    "ccert_issuer=\n"
    "ccert_fingerprint=\n"
    "encryption_protocol=TLSv1.3\n"
    "encryption_cipher=TLS_AES_256_GCM_SHA384\n"
    "encryption_keysize=256\n"
    "etrn_domain=\n"
    "stress=\n"
    "ccert_pubkey_fingerprint=\n"
    "client_port={port}\n"
    "policy_context=\n"
    "server_address=198.51.100.25\n"
    "server_port={sport}\n"
    "\n"
)


def transactions(keys: int, seed: int) -> Callable[[], list[bytes]]:
    """A factory of SMTP transactions: each call returns its requests (RCPTs then EOM)."""
    rnd = random.Random(seed)
    fmt = TEMPLATE.format
    counter = 0
    prefix = f"{os.getpid():x}.{seed & 0xFFFFFFFF:x}"

    def next_transaction() -> list[bytes]:
        nonlocal counter
        counter += 1
        k = rnd.randrange(keys)
        auth = k % 4 != 0
        addr = f"user{k}@d{k % 50}.example"
        common = {
            "helo": f"host{k}.client.example",
            "sender": addr,
            "ip": f"10.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}",
            "instance": f"{prefix}.{counter:x}",
            "method": "PLAIN" if auth else "",
            "user": addr if auth else "",
            "size": 1000 + (k * 7919) % 200_000,
            "port": 1024 + counter % 60_000,
            "sport": 587 if auth else 25,
        }
        qid = f"4X{counter:010X}"
        n = 1 + counter % 3
        out = [
            fmt(
                state="RCPT",
                qid=qid if i else "",
                rcpt=f"rcpt{(k * 31 + i) % keys}@r{i}.example",
                count=0,
                **common,
            ).encode()
            for i in range(n)
        ]
        out.append(fmt(state="END-OF-MESSAGE", qid=qid, rcpt="", count=n, **common).encode())
        return out

    return next_transaction


# --------------------------------------------------------------------------- load client


class _Run:
    """State shared by the connections of one worker process."""

    __slots__ = ("active", "done", "errors", "lat", "quota", "stop")

    def __init__(self, quota: int | None, done: asyncio.Future[None]) -> None:
        self.quota = quota
        self.stop = False
        self.errors = 0
        self.active = 0
        self.lat: array.array[int] = array.array("q")
        self.done = done

    def finished(self) -> None:
        self.active -= 1
        if self.active <= 0 and not self.done.done():
            self.done.set_result(None)


class _Client(asyncio.Protocol):
    """One Postfix-like connection: one request in flight at a time."""

    __slots__ = ("buf", "closed", "next_txn", "pending", "run", "t0", "transport")

    def __init__(self, run: _Run, next_txn: Callable[[], list[bytes]]) -> None:
        self.run = run
        self.next_txn = next_txn
        self.pending: list[bytes] = []
        self.buf = b""
        self.t0 = 0
        self.closed = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self) -> None:
        run = self.run
        if run.stop or self.closed:
            self.closed = True
            run.finished()
            return
        if run.quota is not None:
            if run.quota <= 0:
                self.closed = True
                run.finished()
                return
            run.quota -= 1
        if not self.pending:
            self.pending = self.next_txn()
            self.pending.reverse()
        self.t0 = time.perf_counter_ns()
        self.transport.write(self.pending.pop())  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if data[-2:] != b"\n\n":
            self.buf = data
            return
        run = self.run
        run.lat.append(time.perf_counter_ns() - self.t0)
        if data[:7] != b"action=" or data.count(b"\n\n") != 1:
            run.errors += 1
        self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.run.errors += 1
            self.run.finished()


def _factory(run: _Run, next_txn: Callable[[], list[bytes]]) -> Callable[[], _Client]:
    return lambda: _Client(run, next_txn)


async def _client_main(
    host: str,
    port: int,
    connections: int,
    duration: float | None,
    quota: int | None,
    keys: int,
    seed: int,
    barrier: Any,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    run = _Run(quota, loop.create_future())
    clients = []
    for i in range(connections):
        next_txn = transactions(keys, seed * 1_000_003 + i)
        _, proto = await loop.create_connection(_factory(run, next_txn), host, port)
        clients.append(proto)
    await loop.run_in_executor(None, barrier.wait, 60)
    start = time.perf_counter()
    run.active = len(clients)
    if duration is not None:
        loop.call_later(duration, setattr, run, "stop", True)
    for c in clients:
        c.send()
    await run.done
    elapsed = time.perf_counter() - start
    for c in clients:
        if c.transport is not None:
            c.transport.close()
    return {"lat": run.lat, "errors": run.errors, "seconds": elapsed}


def _worker(
    host: str,
    port: int,
    connections: int,
    duration: float | None,
    quota: int | None,
    keys: int,
    seed: int,
    barrier: Any,
    out: Connection,
) -> None:
    try:
        result = _run_loop(
            _client_main(host, port, connections, duration, quota, keys, seed, barrier)
        )
        out.send(result)
    except BaseException as exc:
        barrier.abort()
        out.send({"failed": f"{type(exc).__name__}: {exc}"})
    finally:
        out.close()


def _run_loop(coro: Any) -> Any:
    with asyncio.Runner(loop_factory=_LOOP_FACTORY) as runner:
        return runner.run(coro)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _percentile(sorted_ns: list[int], q: float) -> float:
    if not sorted_ns:
        return 0.0
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1e6


def run_load(
    target: str,
    connections: int,
    duration: float | None,
    keys: int,
    server_pid: int | None = None,
    *,
    requests: int | None = None,
    mix: str = "rcpt",
    processes: int | None = None,
) -> dict[str, Any]:
    """Drive ``target`` ("host:port") and return the measurements as a dict.

    Stops after ``duration`` seconds, or after ``requests`` answers when ``duration`` is None.
    ``server_cpu_s`` and ``requests_per_cpu_s`` are 0.0 unless ``server_pid`` is given.
    Call it from synchronous code (it runs its own event loops in worker processes).
    """
    if mix != "rcpt":
        raise ValueError(f"unknown mix {mix!r} (only 'rcpt')")
    if duration is None and requests is None:
        raise ValueError("give a duration or a number of requests")
    host, _, port_s = target.rpartition(":")
    host = host.strip("[]")
    procs = max(1, min(connections, processes or max(1, (os.cpu_count() or 2) - 1)))
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(procs + 1)
    conns = _split(connections, procs)
    quotas: list[int | None] = (
        list(_split(requests, procs)) if requests is not None else [None] * procs
    )
    workers = []
    pipes = []
    for i in range(procs):
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(
            target=_worker,
            args=(
                host,
                int(port_s),
                conns[i],
                duration if requests is None else None,
                quotas[i],
                keys,
                i + 1,
                barrier,
                send,
            ),
            daemon=True,
        )
        p.start()
        send.close()
        workers.append(p)
        pipes.append(recv)
    try:
        with contextlib.suppress(Exception):
            barrier.wait(60)
        cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
        results = [pipe.recv() for pipe in pipes]
        cpu1 = cpu_seconds(server_pid) if server_pid else 0.0
    finally:
        for p in workers:
            p.join(10)
            if p.is_alive():
                p.kill()
    failed = [r["failed"] for r in results if "failed" in r]
    if failed:
        raise RuntimeError(f"load worker failed: {failed[0]}")
    lat: list[int] = []
    for r in results:
        lat.extend(r["lat"])
    lat.sort()
    seconds = max(r["seconds"] for r in results)
    cpu = cpu1 - cpu0
    return {
        "target": target,
        "connections": connections,
        "processes": procs,
        "keys": keys,
        "mix": mix,
        "requests": len(lat),
        "seconds": round(seconds, 3),
        "requests_per_s": round(len(lat) / seconds, 1) if seconds else 0.0,
        "p50_ms": round(_percentile(lat, 0.50), 4),
        "p99_ms": round(_percentile(lat, 0.99), 4),
        "server_cpu_s": round(cpu, 3),
        "requests_per_cpu_s": round(len(lat) / cpu, 1) if cpu > 0 else 0.0,
        "errors": sum(r["errors"] for r in results),
    }


# --------------------------------------------------------------------------- null server


class _NullPolicy(asyncio.Protocol):
    """Finds request boundaries (b"\\n\\n") and answers DUNNO to each: nothing else."""

    __slots__ = ("buf", "transport")

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
        n = data.count(b"\n\n")
        if n:
            self.transport.write(NULL_ANSWER if n == 1 else NULL_ANSWER * n)  # type: ignore[union-attr]
            end = data.rfind(b"\n\n") + 2
            self.buf = data[end:] if end < len(data) else b""
        elif len(data) > NULL_MAX_BUFFER:
            self.transport.close()  # type: ignore[union-attr]
        else:
            self.buf = data


async def _serve_null(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def halt() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, halt)
    server = await loop.create_server(_NullPolicy, host, port, reuse_address=True, backlog=1024)
    print(f"null policy server listening on {host}:{port}", file=sys.stderr, flush=True)
    async with server:
        await stop


def serve_null(host: str, port: int) -> None:
    """Run the baseline null policy server until SIGTERM/SIGINT (blocks)."""
    _run_loop(_serve_null(host, port))


# --------------------------------------------------------------------------- parse bench


def parse_bench(count: int) -> dict[str, Any]:
    """Time policy.protocol on the load's requests: microseconds per request and per answer."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from policy.protocol import DUNNO, Action, PolicyParser

    next_txn = transactions(10_000, 1)
    reqs: list[bytes] = []
    while len(reqs) < 1000:
        reqs.extend(next_txn())
    parser = PolicyParser()
    feed = parser.feed
    t0 = time.perf_counter()
    for i in range(count):
        feed(reqs[i % 1000])
    per_request = (time.perf_counter() - t0) / count * 1e6
    t0 = time.perf_counter()
    for _ in range(count):
        Action("DEFER_IF_PERMIT", "4.7.1 rate limit exceeded").encode()
    per_action = (time.perf_counter() - t0) / count * 1e6
    t0 = time.perf_counter()
    for _ in range(count):
        DUNNO.encode()
    per_cached = (time.perf_counter() - t0) / count * 1e6
    return {
        "requests": count,
        "attributes": reqs[0].count(b"\n") - 1,
        "bytes": len(reqs[0]),
        "parse_us": round(per_request, 3),
        "new_action_us": round(per_action, 3),
        "cached_encode_us": round(per_cached, 3),
    }


# --------------------------------------------------------------------------- command line


def _hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["null-server"]:
        ap = argparse.ArgumentParser(
            prog="policy_load.py null-server", description=serve_null.__doc__
        )
        ap.add_argument("--listen", type=_hostport, required=True, metavar="HOST:PORT")
        ns = ap.parse_args(argv[1:])
        serve_null(*ns.listen)
        return 0
    if argv[:1] == ["parse-bench"]:
        ap = argparse.ArgumentParser(
            prog="policy_load.py parse-bench", description=parse_bench.__doc__
        )
        ap.add_argument("--count", type=int, default=200_000)
        print(json.dumps(parse_bench(ap.parse_args(argv[1:]).count)))
        return 0
    ap = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="subcommands: null-server --listen HOST:PORT | parse-bench [--count N]",
    )
    ap.add_argument("--target", type=_hostport, required=True, metavar="HOST:PORT")
    ap.add_argument("--connections", type=int, default=16)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--duration", type=float, help="seconds of load (default 5)")
    group.add_argument("--requests", type=int, help="stop after this many answers")
    ap.add_argument("--keys", type=int, default=10_000, help="distinct senders/users/IPs")
    ap.add_argument("--mix", choices=["rcpt"], default="rcpt")
    ap.add_argument("--server-pid", type=int, help="measure this process's CPU time")
    ap.add_argument("--processes", type=int, help="client processes (default: cores - 1)")
    ns = ap.parse_args(argv)
    duration = ns.duration if ns.duration is not None or ns.requests else 5.0
    result = run_load(
        f"{ns.target[0]}:{ns.target[1]}",
        ns.connections,
        duration,
        ns.keys,
        ns.server_pid,
        requests=ns.requests,
        mix=ns.mix,
        processes=ns.processes,
    )
    print(json.dumps(result))
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
