"""Log sources with real files, real UDP datagrams and a journalctl subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from metricsd.parsers.syslog import parse_syslog_line
from metricsd.sources import (
    FileSource,
    JournaldSource,
    SourceError,
    UdpSyslogSource,
    journal_entry_to_line,
    merge,
    syslog_datagram_to_line,
)
from tests.conftest import pid_alive

pytestmark = pytest.mark.integration


class Collector:
    """Consume an async iterator in a background task, keeping every line."""

    def __init__(self, it: AsyncIterator[str]) -> None:
        self.it = it
        self.got: list[str] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for line in self.it:
            self.got.append(line)

    async def wait_for(self, n: int, timeout: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # and nothing more arrives
        return self.got

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        aclose = getattr(self.it, "aclose", None)
        if aclose is not None:
            await aclose()


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until cond() holds (fail after timeout)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


# ----------------------------------------------------------------------------- files


async def test_file_rename_create_rotation_reads_each_line_once(tmp_path: Path) -> None:
    """Lines written before, around and after a rename+create rotation are each read once."""
    log = tmp_path / "mail.log"
    log.write_text("old line\n")
    src = FileSource(log, poll=0.01)
    c = Collector(aiter(src))
    await asyncio.sleep(0.05)
    append(log, "a1\na2\n")
    await c.wait_for(2)
    os.rename(log, tmp_path / "mail.log.1")
    append(tmp_path / "mail.log.1", "a3 late write to the old file\n")
    await asyncio.sleep(0.03)
    log.write_text("b1\n")
    append(log, "b2\n")
    got = await c.wait_for(5)
    await c.close()
    assert got == ["a1", "a2", "a3 late write to the old file", "b1", "b2"]
    assert (src.lines, src.rotations, src.drops, src.errors) == (5, 1, 0, 0)


async def test_file_copytruncate_does_not_double_count(tmp_path: Path) -> None:
    """After copytruncate the file is read again from offset 0, nothing counted twice."""
    log = tmp_path / "mail.log"
    log.write_text("")
    src = FileSource(log, poll=0.01)
    c = Collector(aiter(src))
    await asyncio.sleep(0.05)
    append(log, "x1\nx2\n")
    await c.wait_for(2)
    shutil.copy(log, tmp_path / "mail.log.1")
    with log.open("r+") as f:
        f.truncate(0)
    await until(lambda: src.truncations == 1)
    append(log, "y1\n")
    got = await c.wait_for(3)
    await c.close()
    assert got == ["x1", "x2", "y1"]
    assert src.truncations == 1


async def test_file_truncation_then_shorter_content(tmp_path: Path) -> None:
    """A file rewritten shorter in place is noticed and followed from its start."""
    log = tmp_path / "mail.log"
    log.write_text("")
    src = FileSource(log, poll=0.01)
    c = Collector(aiter(src))
    await asyncio.sleep(0.05)
    append(log, "long line number one\nlong line number two\n")
    await c.wait_for(2)
    with log.open("r+") as f:
        f.truncate(0)
        f.write("new\n")
    got = await c.wait_for(3)
    await c.close()
    assert got[-1] == "new" and len(got) == 3


async def test_file_partial_line_waits_for_newline(tmp_path: Path) -> None:
    """A line without its newline is held back until the newline is written."""
    log = tmp_path / "mail.log"
    log.write_text("")
    src = FileSource(log, poll=0.01)
    c = Collector(aiter(src))
    await asyncio.sleep(0.05)
    append(log, "complete\nhalf a li")
    assert await c.wait_for(1) == ["complete"]
    await asyncio.sleep(0.1)
    assert c.got == ["complete"]
    append(log, "ne\n")
    got = await c.wait_for(2)
    await c.close()
    assert got == ["complete", "half a line"]


async def test_file_from_start_reads_10k_lines_fast(tmp_path: Path) -> None:
    """From the start, 10,000 existing lines (several read batches) arrive in order, quickly."""
    log = tmp_path / "mail.log"
    log.write_text(
        "".join(f"Nov 24 06:48:39 mx postfix/smtpd[1]: line {i}\n" for i in range(10000))
    )
    src = FileSource(log, from_start=True, poll=0.01)
    src.follower.max_batch = 64 * 1024
    t0 = time.monotonic()
    c = Collector(aiter(src))
    got = await c.wait_for(10000)
    elapsed = time.monotonic() - t0
    await c.close()
    assert len(got) == 10000 and got[-1].endswith("line 9999") and got[0].endswith("line 0")
    assert elapsed < 2.0


async def test_file_from_end_skips_existing_and_missing_file_read_from_start(
    tmp_path: Path,
) -> None:
    """The default start is the end; a file that does not exist yet is read from its start."""
    present = tmp_path / "present.log"
    present.write_text("history\n")
    missing = tmp_path / "later.log"
    a, b = FileSource(present, poll=0.01), FileSource(missing, poll=0.01)
    ca, cb = Collector(aiter(a)), Collector(aiter(b))
    await asyncio.sleep(0.05)
    append(present, "new\n")
    missing.write_text("first\nsecond\n")
    assert await ca.wait_for(1) == ["new"]
    assert await cb.wait_for(2) == ["first", "second"]
    await ca.close()
    await cb.close()


async def test_file_overlong_line_is_dropped_and_counted(tmp_path: Path) -> None:
    """A line longer than max_line is skipped to its newline and counted as a drop."""
    log = tmp_path / "mail.log"
    log.write_text("")
    src = FileSource(log, poll=0.01, max_line=100)
    c = Collector(aiter(src))
    await asyncio.sleep(0.05)
    append(log, "x" * 150)
    await asyncio.sleep(0.05)
    append(log, "y" * 100 + "\nok\n")
    got = await c.wait_for(1)
    await c.close()
    assert got == ["ok"]
    assert src.drops == 1


# ----------------------------------------------------------------------------- syslog udp


@pytest.mark.parametrize(
    ("datagram", "program", "pid", "message"),
    [
        (
            b"<22>Nov  4 01:25:21 mx1 postfix/smtpd[1234]: connect from x[1.2.3.4]",
            "postfix/smtpd",
            1234,
            "connect from x[1.2.3.4]",
        ),
        (
            b"<30>Nov 24 06:48:39 mx1 dovecot: imap-login: Login: user=<u>",
            "dovecot",
            None,
            "imap-login: Login: user=<u>",
        ),
        (
            b'<22>1 2026-11-24T01:25:21.123456+00:00 mx1 postfix/qmgr 77 - [meta x="a\\]b"][o y="1"] '
            b"\xef\xbb\xbfABC: removed",
            "postfix/qmgr",
            77,
            "ABC: removed",
        ),
        (
            b"<22>1 2026-11-24T01:25:21Z mx1 postfix/pickup - ID47 - DEF: uid=0 from=<root>",
            "postfix/pickup",
            None,
            "DEF: uid=0 from=<root>",
        ),
        (
            b"<13>Nov 24 06:48:39 postfix/cleanup[5]: GHI: message-id=<a@b>\n",
            "postfix/cleanup",
            5,
            "GHI: message-id=<a@b>",
        ),
    ],
)
def test_datagram_becomes_a_syslog_line(
    datagram: bytes, program: str, pid: int | None, message: str
) -> None:
    """RFC 3164 and 5424 datagrams become lines the syslog splitter understands."""
    line = syslog_datagram_to_line(datagram, "10.0.0.9")
    assert line is not None
    parsed = parse_syslog_line(line)
    assert parsed is not None, line
    assert (parsed.program, parsed.pid, parsed.message) == (program, pid, message)


@pytest.mark.parametrize(
    "datagram",
    [b"", b"no pri at all", b"<999>Nov 24 06:48:39 h p: x", b"<abc>x", b"<22>1 2026 h", b"<22>"],
)
def test_garbage_datagrams_give_none(datagram: bytes) -> None:
    """Datagrams without a valid <PRI> or with a truncated 5424 header are rejected."""
    assert syslog_datagram_to_line(datagram) is None


async def test_udp_receives_3164_and_5424_and_counts_garbage() -> None:
    """Real datagrams on a loopback port arrive as lines; garbage and oversize are counted."""
    src = UdpSyslogSource("127.0.0.1", 0, max_datagram=1024)
    host, port = await src.start()
    c = Collector(aiter(src))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"<22>Nov  4 01:25:21 mx1 postfix/smtpd[1]: one", (host, port))
        s.sendto(b"garbage", (host, port))
        s.sendto(b"<22>" + b"x" * 2000, (host, port))
        s.sendto(b"<22>1 2026-11-24T01:25:21Z mx1 postfix/smtp 2 - - two", (host, port))
    got = await c.wait_for(2)
    await c.close()
    assert got == [
        "Nov  4 01:25:21 mx1 postfix/smtpd[1]: one",
        "2026-11-24T01:25:21Z mx1 postfix/smtp[2]: two",
    ]
    assert (src.lines, src.errors, src.drops, src.received) == (2, 2, 0, 4)


async def test_udp_flood_past_queue_bound_counts_drops() -> None:
    """With nobody reading, datagrams beyond the queue bound are dropped and counted."""
    src = UdpSyslogSource("127.0.0.1", 0, queue_size=10)
    host, port = await src.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(200):
            s.sendto(b"<22>Nov  4 01:25:21 mx1 postfix/smtpd[1]: n %d" % i, (host, port))
    await until(lambda: src.received == 200)
    assert src.drops == 190
    assert src.queue.qsize() == 10
    c = Collector(aiter(src))
    got = await c.wait_for(10)
    await c.close()
    assert got[0].endswith(": n 0") and len(got) == 10


async def test_udp_port_in_use_is_a_clear_error() -> None:
    """Binding an occupied port raises SourceError naming the address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        src = UdpSyslogSource("127.0.0.1", port)
        with pytest.raises(SourceError, match=f"127.0.0.1:{port}"):
            await src.start()


# ----------------------------------------------------------------------------- journald

FAKE_JOURNALCTL = """#!{python}
import json, os, sys, time
state = os.environ["FAKE_JOURNAL_STATE"]
runs = len(open(state).read().splitlines()) if os.path.exists(state) else 0
with open(state, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
def out(entry):
    sys.stdout.write(json.dumps(entry) + "\\n")
    sys.stdout.flush()
if runs == 0:
    out({{"__CURSOR": "c1", "__REALTIME_TIMESTAMP": "1795000000123456", "_HOSTNAME": "mx1",
         "SYSLOG_IDENTIFIER": "postfix/smtpd", "_PID": "321", "MESSAGE": "connect from a[1.2.3.4]"}})
    sys.stdout.write("not json\\n")
    out({{"__CURSOR": "c2", "SYSLOG_IDENTIFIER": "dovecot", "_PID": "9",
         "MESSAGE": list(b"imap-login: Login: user=<\\xff>")}})
    out({{"__CURSOR": "c3", "SYSLOG_IDENTIFIER": "kernel", "MESSAGE": None}})
    sys.exit(1)
out({{"__CURSOR": "c4", "SYSLOG_IDENTIFIER": "postfix/qmgr", "SYSLOG_PID": "5",
     "MESSAGE": "ABC: removed"}})
time.sleep(60)
"""


@pytest.fixture
def fake_journalctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `journalctl` on PATH printing JSON entries; it logs its argv to a state file."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "journalctl"
    script.write_text(FAKE_JOURNALCTL.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    state = tmp_path / "runs.jsonl"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_JOURNAL_STATE", str(state))
    return state


async def test_journald_parses_json_and_restarts_after_cursor(fake_journalctl: Path) -> None:
    """JSON entries (byte-array MESSAGE too) become lines; after exit it resumes at the cursor."""
    src = JournaldSource(["postfix.service", "dovecot.service"], backoff=0.01)
    c = Collector(aiter(src))
    got = await c.wait_for(3)
    pid = src.proc.pid if src.proc is not None else None
    await c.close()
    assert (
        got[0] == "2026-11-18T11:06:40.123456+00:00 mx1 postfix/smtpd[321]: connect from a[1.2.3.4]"
    )
    assert got[1].endswith(" dovecot[9]: imap-login: Login: user=<\ufffd>")
    assert got[2].endswith(" localhost postfix/qmgr[5]: ABC: removed")
    assert len(got) == 3
    for line in got:
        assert parse_syslog_line(line) is not None
    runs = [json.loads(x) for x in fake_journalctl.read_text().splitlines()]
    assert runs[0][-2:] == ["--since", "now"]
    assert runs[1][-2:] == ["--after-cursor", "c3"]
    assert runs[0][runs[0].index("-u") : runs[0].index("-u") + 2] == ["-u", "postfix.service"]
    assert (src.restarts, src.lines, src.errors) == (1, 3, 3)  # 1 restart, bad json, no message
    assert pid is not None and not pid_alive(pid)


def test_journald_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without journalctl the source refuses to start with an explanation."""
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SourceError, match="journalctl.*not found on PATH"):
        JournaldSource()


def test_journal_entry_without_message_or_pid() -> None:
    """Entries lacking MESSAGE are skipped; a missing pid gives a tag without brackets."""
    assert journal_entry_to_line({"SYSLOG_IDENTIFIER": "x"}) is None
    line = journal_entry_to_line({"_COMM": "cron", "MESSAGE": "a\nb", "_HOSTNAME": "h"})
    assert line is not None and line.endswith(" h cron: a b")


async def test_real_journalctl_runs_and_stops_cleanly() -> None:
    """The installed journalctl starts following (no journald here: no lines) and is stopped."""
    if shutil.which("journalctl") is None:
        pytest.fail("journalctl not installed (Debian package systemd)")
    src = JournaldSource(["postfix.service"])
    c = Collector(aiter(src))
    await until(lambda: src.proc is not None)
    assert src.proc is not None
    pid = src.proc.pid
    await asyncio.sleep(0.3)
    assert pid_alive(pid) and src.restarts == 0
    await c.close()
    assert not pid_alive(pid)


# ----------------------------------------------------------------------------- merge


async def test_merge_interleaves_file_and_udp(tmp_path: Path) -> None:
    """Lines from a file and a UDP socket come out of one iterator tagged with their source."""
    log = tmp_path / "mail.log"
    log.write_text("")
    fsrc = FileSource(log, poll=0.01)
    usrc = UdpSyslogSource("127.0.0.1", 0)
    host, port = await usrc.start()
    got: list[tuple[str, str]] = []

    async def consume() -> None:
        async for item in merge(fsrc, usrc):
            got.append(item)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    append(log, "Nov  4 01:25:21 mx1 postfix/smtpd[1]: from file\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"<22>Nov  4 01:25:21 mx1 postfix/smtpd[1]: from udp", (host, port))
    await until(lambda: len(got) == 2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert sorted(got) == [
        (f"file:{log}", "Nov  4 01:25:21 mx1 postfix/smtpd[1]: from file"),
        (f"udp:127.0.0.1:{port}", "Nov  4 01:25:21 mx1 postfix/smtpd[1]: from udp"),
    ]


async def test_merge_raises_a_failing_source(tmp_path: Path) -> None:
    """A source that cannot start (port in use) surfaces its error through merge."""
    log = tmp_path / "mail.log"
    log.write_text("")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        bad = UdpSyslogSource("127.0.0.1", s.getsockname()[1])
        merged = merge(FileSource(log, poll=0.01), bad)
        with pytest.raises(SourceError):
            await asyncio.wait_for(anext(merged), 5)
        await merged.aclose()
