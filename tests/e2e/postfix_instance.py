"""A private real Postfix: own config and queue in a temp dir, a loopback port, stopped by us."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import free_port, pid_alive

BASE = Path("/tmp/pfm-e2e")


def world_dir(prefix: str) -> Path:
    """A temp dir every Postfix daemon user can traverse (pytest's tmp_path is 0700)."""
    BASE.mkdir(mode=0o755, exist_ok=True)
    BASE.chmod(0o755)
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=BASE))
    d.chmod(0o755)
    return d


class PostfixInstance:
    """One Postfix instance started from its own config directory."""

    def __init__(
        self,
        sink_port: int,
        extra: dict[str, str] | None = None,
        domains: tuple[str, ...] = ("example.org", "example.net"),
    ) -> None:
        self.dir = world_dir("postfix-")
        self.conf = self.dir / "conf"
        self.port = free_port()
        self.sink_port = sink_port
        self.maillog = self.dir / "maillog"
        self.extra = dict(extra or {})
        self.domains = domains
        self.started = False

    def write_config(self) -> None:
        self.conf.mkdir(mode=0o755, exist_ok=True)
        (self.dir / "spool").mkdir(mode=0o755, exist_ok=True)
        (self.dir / "data").mkdir(exist_ok=True)
        shutil.chown(self.dir / "data", "postfix")
        master = Path("/usr/share/postfix/master.cf.dist").read_text()
        master = re.sub(
            r"^smtp\s+inet\s.*$",
            f"127.0.0.1:{self.port} inet n - n - - smtpd",
            master,
            count=1,
            flags=re.M,
        )
        (self.conf / "master.cf").write_text(master)
        transport = ", ".join(f"{d}=smtp:[127.0.0.1]:{self.sink_port}" for d in self.domains)
        params = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.dir / "spool"),
            "data_directory": str(self.dir / "data"),
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.dir),
            "myhostname": "mx.test.invalid",
            "mydomain": "test.invalid",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": " ".join(self.domains),
            "transport_maps": f"inline:{{ {transport} }}",
            "disable_dns_lookups": "yes",
            "smtp_host_lookup": "native",
            "smtp_dns_support_level": "disabled",
            "smtpd_recipient_restrictions": "reject_unauth_destination",
            "smtpd_relay_restrictions": "reject_unauth_destination",
            "queue_run_delay": "5s",
            "minimal_backoff_time": "5s",
            "maximal_backoff_time": "10s",
            "smtp_connect_timeout": "5s",
            "smtpd_error_sleep_time": "0",
            "smtpd_soft_error_limit": "1000",
            "smtpd_hard_error_limit": "1000",
            "smtpd_client_connection_rate_limit": "0",
            "anvil_rate_time_unit": "60s",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
        }
        params.update(self.extra)
        (self.conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in params.items()))

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, capture_output=True, text=True, check=check, timeout=60)

    def start(self) -> None:
        self.write_config()
        self.run("postfix", "-c", str(self.conf), "check")
        self.run("postfix", "-c", str(self.conf), "start")
        self.started = True
        self.wait_for_port()

    def wait_for_port(self, timeout: float = 20.0) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
                    if s.recv(512).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"postfix did not listen on {self.port}: {self.log_text()[-2000:]}")

    def master_pid(self) -> int | None:
        pidfile = self.dir / "spool" / "pid" / "master.pid"
        try:
            return int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        if not self.started:
            return
        pid = self.master_pid()
        self.run("postfix", "-c", str(self.conf), "stop", check=False)
        deadline = time.monotonic() + 15
        while pid and time.monotonic() < deadline:
            if not pid_alive(pid):
                break
            time.sleep(0.05)
        else:
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        self.started = False

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def reload(self) -> None:
        self.write_config()
        self.run("postfix", "-c", str(self.conf), "reload")

    def log_text(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 10.0) -> re.Match[str]:
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log_text())
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no log line matching {rx.pattern!r} in:\n{self.log_text()[-3000:]}"
                )
            time.sleep(0.05)

    def postqueue_json(self) -> list[dict[str, object]]:
        out = self.run("postqueue", "-c", str(self.conf), "-j").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def flush(self) -> None:
        self.run("postqueue", "-c", str(self.conf), "-f", check=False)
