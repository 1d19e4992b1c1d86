"""The pfm-policyd process: start, SIGHUP reload under load, SIGTERM, --check-config, --test."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import free_port
from tests.fixtures.policy_requests import PolicyClient, encode, request

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
[log]
format = "json"
[policyd]
listen = ["127.0.0.1:{port}"]
admin_socket = "{tmp}/admin.sock"
metrics_listen = "127.0.0.1:{mport}"
[policyd.limits.sender]
key = "sender"
windows = ["{count}/1h"]
"""


def write_config(path: Path, port: int, mport: int, count: int) -> None:
    path.write_text(CONFIG.format(port=port, mport=mport, tmp=path.parent, count=count))


def cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "policy", *args]


async def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "pfm-policyd exited"
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError("pfm-policyd did not start listening")


async def test_reload_under_load_and_clean_stop(tmp_path: Path) -> None:
    """SIGHUP swaps limits with zero failed requests under load; a bad config keeps the old one; SIGTERM exits 0."""
    port, mport = free_port(), free_port()
    conf = tmp_path / "pfm.toml"
    write_config(conf, port, mport, 1)
    logfile = tmp_path / "policyd.log"
    with logfile.open("wb") as logf:
        proc = subprocess.Popen(
            cmd("--config", str(conf)), cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT
        )
    try:
        await wait_listening(port, proc)
        c = await PolicyClient.connect("127.0.0.1", port)
        assert await c.ask(instance="a", sender="s@x.test") == "DUNNO"
        assert (
            await c.ask(state="END-OF-MESSAGE", instance="a", sender="s@x.test", recipient_count=1)
            == "DUNNO"
        )
        assert (await c.ask(instance="b", sender="s@x.test")).startswith("DEFER")

        stop = asyncio.Event()
        failures: list[str] = []
        answered = 0

        async def hammer(n: int) -> None:
            nonlocal answered
            cl = await PolicyClient.connect("127.0.0.1", port)
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    a = await cl.ask_raw(
                        encode(request(instance=f"h{n}.{i}", sender=f"h{n}@x.test"))
                    )
                    answered += 1
                    if not (a == "DUNNO" or a.startswith("DEFER")):
                        failures.append(a)
                except Exception as exc:  # a failed request is what this test looks for
                    failures.append(repr(exc))
                    return
            await cl.close()

        tasks = [asyncio.create_task(hammer(n)) for n in range(4)]
        await asyncio.sleep(0.3)
        write_config(conf, port, mport, 1000)
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        conf.write_text(conf.read_text().replace('windows = ["1000/1h"]', 'windows = ["oops"]'))
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)
        assert failures == []
        assert answered > 50
        assert await c.ask(instance="c", sender="s@x.test") == "DUNNO"  # new limit 1000 kept
        await c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        logs = logfile.read_text()
        assert '"reloaded"' in logs
        assert '"reload_failed"' in logs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_check_config_ok_and_bad(tmp_path: Path) -> None:
    """--check-config exits 0 with a summary, 78 with the key and line of an error."""
    conf = tmp_path / "pfm.toml"
    write_config(conf, 10040, 9155, 10)
    ok = subprocess.run(
        cmd("--check-config", "--config", str(conf)), capture_output=True, text=True, cwd=ROOT
    )
    assert ok.returncode == 0, ok.stderr
    assert "limit sender: key=sender unit=messages windows=10/1h" in ok.stdout
    conf.write_text(conf.read_text().replace('key = "sender"', 'key = "senders"'))
    bad = subprocess.run(
        cmd("--check-config", "--config", str(conf)), capture_output=True, text=True, cwd=ROOT
    )
    assert bad.returncode == 78
    assert "pfm.toml:9: policyd.limits.sender.key[0]: must be one of" in bad.stderr


def test_test_mode_prints_decision_and_reasons(tmp_path: Path) -> None:
    """--test reads requests on stdin and prints each decision with the limits it hit."""
    conf = tmp_path / "pfm.toml"
    write_config(conf, 10040, 9155, 1)
    data = encode(request(instance="t1")) + encode(
        request(state="END-OF-MESSAGE", instance="t1", recipient_count=1)
    )
    data += encode(request(instance="t2"))
    res = subprocess.run(
        cmd("--test", "--config", str(conf)),
        input=data,
        capture_output=True,
        cwd=ROOT,
        env={**os.environ},
    )
    out = res.stdout.decode()
    assert res.returncode == 0, res.stderr
    assert out.count("action=DUNNO") == 2
    assert "action=DEFER 4.7.1 Rate limit exceeded (1 messages per 1h)" in out
    assert "sender [alice@example.org] 1+1 of 1 per 3600s: BREACH" in out


def test_help_is_complete() -> None:
    """--help documents every option and the Postfix wiring."""
    res = subprocess.run(cmd("--help"), capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0
    for word in (
        "--config",
        "--check-config",
        "--test",
        "check_policy_service",
        "SIGHUP",
        "exit codes",
    ):
        assert word in res.stdout


def test_bad_reply_is_a_config_error_with_line(tmp_path: Path) -> None:
    """A reply whose status class contradicts its action is refused at startup, naming key and line."""
    conf = tmp_path / "pfm.toml"
    write_config(conf, 10040, 9155, 10)
    conf.write_text(conf.read_text() + 'action = "reject"\nreply = "4.7.1 slow down"\n')
    for args in (("--check-config",), ()):
        res = subprocess.run(
            cmd(*args, "--config", str(conf)), capture_output=True, text=True, cwd=ROOT, timeout=30
        )
        assert res.returncode == 78
        assert "pfm.toml:12: policyd.limits.sender.reply:" in res.stderr
