"""Shared test helpers: free ports, required binaries, CI strictness."""

from __future__ import annotations

import os
import shutil
import socket

import pytest


def integration_required() -> bool:
    """True when a missing integration dependency must fail instead of skip."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"} or os.environ.get(
        "PFM_REQUIRE_INTEGRATION", ""
    ) not in {"", "0"}


def require_binary(*names: str) -> str:
    """Return the path of the first binary found, or skip (fail under CI=true)."""
    for name in names:
        for candidate in (name, f"/usr/sbin/{name}", f"/usr/bin/{name}"):
            found = shutil.which(candidate)
            if found:
                return found
    msg = f"required binary not installed: {' or '.join(names)} (run `make test` as root)"
    if integration_required():
        pytest.fail(msg)
    pytest.skip(msg)
    raise AssertionError("unreachable")


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port on host."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """True while a process runs; a zombie (daemons are reparented, maybe never reaped) is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Under CI=true a skipped test counts as a failure: no dependency hides behind a skip."""
    if report.skipped and integration_required() and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true: {report.longrepr}"
