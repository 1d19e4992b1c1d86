"""A private redis-server for tests: temp dir, free loopback port, stopped by its PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.conftest import free_port, pid_alive


class RedisServer:
    """One redis-server we started (and only that one is ever stopped)."""

    def __init__(self, binary: str, directory: Path, port: int | None = None) -> None:
        self.binary = binary
        self.dir = directory
        self.port = port or free_port()
        self.pidfile = directory / "redis.pid"
        self.pid: int | None = None
        self.extra: list[str] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.pidfile.unlink(missing_ok=True)
        subprocess.run(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "yes",
                "--pidfile",
                str(self.pidfile),
                "--dir",
                str(self.dir),
                "--logfile",
                str(self.dir / "redis.log"),
                *self.extra,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pidfile.exists() and self._ping():
                text = self.pidfile.read_text().strip()
                if text:
                    self.pid = int(text)
                    return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            self.pid = None
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(self.pid):
                break
            time.sleep(0.02)
        else:
            os.kill(self.pid, signal.SIGKILL)
        self.pid = None

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), 1) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    import random

    for _ in range(200):
        port = random.randint(20000, 50000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """A private 3-master Redis Cluster on loopback (no replicas), for the Cluster contract."""

    def __init__(self, binary: str, directory: Path, nodes: int = 3) -> None:
        self.nodes: list[RedisServer] = []
        for i in range(nodes):
            d = directory / f"node{i}"
            d.mkdir()
            self.nodes.append(RedisServer(binary, d, port=cluster_port()))
        self.cli = str(Path(binary).with_name("redis-cli"))

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> None:
        for n in self.nodes:
            n.extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(n.dir / "nodes.conf"),
                "--cluster-node-timeout",
                "2000",
            ]
            n.start()
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *[f"127.0.0.1:{n.port}" for n in self.nodes],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run(
                [self.cli, "-p", str(self.nodes[0].port), "cluster", "info"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout
            if "cluster_state:ok" in out:
                return
            time.sleep(0.1)
        raise RuntimeError("redis cluster did not converge")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
