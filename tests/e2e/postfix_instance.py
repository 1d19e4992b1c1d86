"""A private real Postfix: own config and queue in a temp dir, a loopback port, stopped by us."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.conftest import free_port, pid_alive

BASE = Path("/tmp/pfm-e2e")
MASTER_CF_DIST = Path("/usr/share/postfix/master.cf.dist")
# The queue layout from /etc/postfix/postfix-files: (name, owner postfix?, group postdrop?, mode).
_QUEUE_DIRS = (
    *((d, True, False, 0o700) for d in ("active", "bounce", "corrupt", "defer", "deferred")),
    *((d, True, False, 0o700) for d in ("flush", "hold", "incoming", "private", "saved", "trace")),
    ("maildrop", True, True, 0o730),
    ("public", True, True, 0o710),
    ("pid", False, False, 0o755),
)


def world_dir(prefix: str) -> Path:
    """A temp dir every Postfix daemon user can traverse (pytest's tmp_path is 0700)."""
    BASE.mkdir(mode=0o755, exist_ok=True)
    BASE.chmod(0o755)
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=BASE))
    d.chmod(0o755)
    return d


def _master_cf() -> str:
    """master.cf.dist with smtpd on a placeholder port and no chroot (test paths are in /tmp)."""
    lines = []
    for line in MASTER_CF_DIST.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 8 and not line[0].isspace() and not line.startswith("#"):
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = "127.0.0.1:{port}"
            fields[4] = "n"
            line = " ".join(fields)
        lines.append(line)
    return "\n".join(lines) + "\n"


def _listening(port: int) -> bool:
    """True when something listens on 127.0.0.1:port (read from /proc, no connection made)."""
    needle = f"0100007F:{port:04X} 00000000:0000 0A"
    try:
        with open("/proc/net/tcp") as f:
            return any(needle in line for line in f)
    except OSError:
        return False


class PostfixInstance:
    """One Postfix instance started from its own config directory.

    Test domains (``domains``) are relayed to ``smtp:[127.0.0.1]:sink_port``. ``extra``
    overrides or adds ``main.cf`` parameters (values may use ``$config_directory``, where
    ``files`` are written, e.g. ``header_checks = pcre:$config_directory/header_checks``).
    Change ``extra`` or ``files`` and call :meth:`reload` to reconfigure a running instance.
    """

    def __init__(
        self,
        sink_port: int,
        extra: Mapping[str, str] | None = None,
        domains: tuple[str, ...] = ("example.org", "example.net"),
        files: Mapping[str, str] | None = None,
    ) -> None:
        self.dir = world_dir("postfix-")
        self.conf = self.dir / "conf"
        self.spool = self.dir / "spool"
        self.port = free_port()
        self.sink_port = sink_port
        self.maillog = self.dir / "maillog"
        self.extra: dict[str, str] = dict(extra or {})
        self.files: dict[str, str] = dict(files or {})
        self.domains = domains
        self.started = False
        self._master_pid: int | None = None

    def main_cf(self) -> dict[str, str]:
        """The main.cf parameters: the private-instance recipe, then ``extra``."""
        transport = ", ".join(f"{d}=smtp:[127.0.0.1]:{self.sink_port}" for d in self.domains)
        params = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.spool),
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
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
        }
        params.update(self.extra)
        return params

    def write_config(self) -> None:
        """Write main.cf, master.cf and ``files`` into the config dir; create spool and data."""
        self.conf.mkdir(mode=0o755, exist_ok=True)
        self._make_queue()
        (self.conf / "master.cf").write_text(_master_cf().replace("{port}", str(self.port)))
        (self.conf / "main.cf").write_text(
            "".join(f"{k} = {v}\n" for k, v in self.main_cf().items())
        )
        for name, text in self.files.items():
            path = self.conf / name
            path.write_text(text)
            path.chmod(0o644)
        # Postfix commands poll (300 ms steps, ~2 s) until a freshly written main.cf has
        # aged; backdating the files skips that wait.
        past = time.time() - 60
        for path in self.conf.iterdir():
            os.utime(path, (past, past))

    def _make_queue(self) -> None:
        """Create spool and data dirs as post-install would (it costs ~2 s per start).

        With the layout in place, a ``quick-start`` file lets ``postfix start`` skip
        ``post-install create-missing`` (Postfix's own quick-stop/quick-start mechanism).
        """
        if self.spool.exists():
            return
        self.spool.mkdir(mode=0o755)
        for name, postfix_owned, postdrop, mode in _QUEUE_DIRS:
            path = self.spool / name
            path.mkdir()
            if postfix_owned:
                shutil.chown(path, "postfix", "postdrop" if postdrop else None)
            path.chmod(mode)
        data = self.dir / "data"
        data.mkdir(mode=0o700)
        shutil.chown(data, "postfix")
        (self.spool / "quick-start").touch()

    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ("postfix", "-c", str(self.conf), *args)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}\n"
                f"{self.log_text()[-2000:]}"
            )
        return proc

    def start(self, timeout: float = 20.0) -> None:
        """Write the config, start master and wait until smtpd's port listens.

        ``master -w`` still refuses a fatally broken config; the ~2 s ``postfix check``
        is skipped (see :meth:`_make_queue`) and available as :meth:`check`.
        """
        self.write_config()
        self.started = True  # from here on stop() must run, even if start fails half-way
        self._postfix("start")
        self._master_pid = self.master_pid()
        deadline = time.monotonic() + timeout
        while not _listening(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"postfix not listening on {self.port}:\n{self.log_text()}")
            time.sleep(0.02)

    def master_pid(self) -> int | None:
        """The PID in this instance's ``pid/master.pid``, if any."""
        try:
            return int((self.spool / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _is_our_master(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return b"master" in cmdline and pid_alive(pid)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop master the way ``postfix stop`` does, and wait until its PID is gone.

        ``postfix stop`` sends SIGTERM to the PID in ``pid/master.pid`` and then polls in
        1 s steps; we send the same signal to the master we started and poll every 10 ms.
        Without a PID file we fall back to ``postfix stop``. SIGKILL only after ``timeout``.
        """
        if not self.started:
            return
        pid = self._master_pid or self.master_pid()
        if pid is not None and self._is_our_master(pid):
            os.kill(pid, signal.SIGTERM)
        else:
            self._postfix("stop", check=False)
        deadline = time.monotonic() + timeout
        while pid is not None and pid_alive(pid):
            if time.monotonic() > deadline:
                if self._is_our_master(pid):
                    os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        self.started = False
        self._master_pid = None

    def cleanup(self) -> None:
        """Stop the instance and remove its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def reload(self) -> None:
        """Rewrite the config from ``extra``/``files`` and ``postfix reload``."""
        self.write_config()
        self._postfix("reload")

    def check(self) -> str:
        """``postfix check`` (slow, ~2 s); returns its warnings, raises on failure."""
        self.write_config()
        return self._postfix("check").stderr

    def log_text(self) -> str:
        """The whole maillog so far ("" before Postfix wrote it)."""
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 10.0) -> re.Match[str]:
        """Poll the maillog until ``pattern`` matches (re.search); AssertionError on timeout."""
        rx = re.compile(pattern, re.M) if isinstance(pattern, str) else pattern
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

    def postqueue_json(self) -> list[dict[str, Any]]:
        """``postqueue -j``: one dict per queued message."""
        proc = subprocess.run(
            ("postqueue", "-c", str(self.conf), "-j"),
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    def flush(self) -> None:
        """``postqueue -f``: attempt delivery of everything queued now."""
        subprocess.run(
            ("postqueue", "-c", str(self.conf), "-f"),
            capture_output=True,
            check=False,
            timeout=60,
        )
