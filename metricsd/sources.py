"""Async sources of log lines: a rotating file, syslog over UDP, journald, and a merger.

Every source is an async iterator of text lines without the trailing newline, shaped so that
:func:`metricsd.parsers.syslog.parse_syslog_line` understands them (``TIMESTAMP HOST
PROGRAM[PID]: MESSAGE``; a file is passed through as written).  Each keeps plain integer
counters: ``lines`` (yielded), ``drops`` (lost to a full buffer or an over-long line) and
``errors`` (garbage, read failures, restarts).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any, Protocol

import asyncio_dgram
import orjson

from services.logtail import FileFollower

__all__ = [
    "FileSource",
    "JournaldSource",
    "LineSource",
    "SourceError",
    "UdpSyslogSource",
    "journal_entry_to_line",
    "merge",
    "syslog_datagram_to_line",
]


class SourceError(RuntimeError):
    """A source cannot run at all (missing binary, port in use ...); the message says why."""


class LineSource(Protocol):
    """What every source offers: iteration over lines and three counters."""

    name: str
    lines: int
    drops: int
    errors: int

    def __aiter__(self) -> AsyncIterator[str]: ...


# --------------------------------------------------------------------------- file


class FileSource:
    """Follow a log file across rename+create and copytruncate rotation and truncation.

    Starts at the end of the file unless ``from_start``; polls every ``poll`` seconds when idle.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        from_start: bool = False,
        poll: float = 0.25,
        max_line: int = 65536,
        max_batch: int = 512 * 1024,
    ) -> None:
        self.name = f"file:{os.fspath(path)}"
        # 256 KiB per read (~1,300 log lines): big enough to amortise the syscall, small
        # enough that catching up on a large file doesn't spike memory
        self.follower = FileFollower(
            os.fspath(path),
            from_end=not from_start,
            poll=poll,
            max_line=max_line,
            max_batch=max_batch,
        )

    @property
    def lines(self) -> int:
        """Lines read so far."""
        return self.follower.lines_read

    @property
    def drops(self) -> int:
        """Over-long lines skipped."""
        return self.follower.drops

    @property
    def errors(self) -> int:
        """Read errors."""
        return self.follower.errors

    @property
    def rotations(self) -> int:
        """Rename+create rotations followed."""
        return self.follower.rotations

    @property
    def truncations(self) -> int:
        """Truncations (copytruncate) noticed."""
        return self.follower.truncations

    def __aiter__(self) -> AsyncIterator[str]:
        return self.follower.lines()


# --------------------------------------------------------------------------- syslog UDP


def _is_3164_timestamp(s: str) -> bool:
    return (
        len(s) >= 15
        and s[0].isupper()
        and s[3] == " "
        and s[6] == " "
        and s[9] == ":"
        and s[12] == ":"
        and (len(s) == 15 or s[15] == " ")
    )


def _now_3339() -> str:
    return dt.datetime.now(dt.UTC).astimezone().isoformat(timespec="microseconds")


def _skip_structured_data(s: str) -> str | None:
    """The text after RFC 5424 STRUCTURED-DATA (``-`` or ``[id k="v"]...``), None if malformed."""
    if s.startswith("-"):
        return s[2:] if s.startswith("- ") else s[1:]
    i = 0
    while i < len(s) and s[i] == "[":
        i += 1
        in_quote = False
        while i < len(s):
            c = s[i]
            if c == "\\" and in_quote:
                i += 2
                continue
            if c == '"':
                in_quote = not in_quote
            elif c == "]" and not in_quote:
                break
            i += 1
        else:
            return None
        i += 1
    if i == 0:
        return None
    return s[i + 1 :] if s[i : i + 1] == " " else s[i:]


def syslog_datagram_to_line(data: bytes, sender: str = "-") -> str | None:
    """Turn one RFC 3164 or RFC 5424 datagram into ``TIMESTAMP HOST PROGRAM[PID]: MESSAGE``.

    The ``<PRI>`` is stripped, the 5424 header reduced to host, app-name and procid; a missing
    timestamp or host is filled with the receive time or ``sender``.  None for garbage.
    """
    text = data.decode("utf-8", "replace").rstrip("\r\n\x00")
    if not text.startswith("<"):
        return None
    end = text.find(">", 1, 5)
    if end < 2 or not text[1:end].isdigit() or int(text[1:end]) > 191:
        return None
    text = text[end + 1 :].replace("\n", " ")
    if text.startswith("1 "):
        parts = text.split(" ", 6)
        if len(parts) < 6:
            return None
        _v, ts, host, app, procid, _msgid = parts[:6]
        msg = _skip_structured_data(parts[6]) if len(parts) == 7 else ""
        if msg is None:
            return None
        msg = msg.removeprefix("\ufeff")
        ts = _now_3339() if ts == "-" else ts
        host = sender if host == "-" else host
        app = "-" if app == "-" else app
        tag = app if procid in ("-", "") or not procid.isdigit() else f"{app}[{procid}]"
        return f"{ts} {host} {tag}: {msg}"
    if _is_3164_timestamp(text):
        ts, rest = text[:15], text[16:]
    else:
        ts, rest = dt.datetime.now().strftime("%b %d %H:%M:%S"), text
    if not rest:
        return None
    first = rest.split(" ", 1)[0]
    if first.endswith(":") or first.endswith("]"):
        rest = f"{sender} {rest}"  # no HOST field: the tag comes first
    return f"{ts} {rest}"


class UdpSyslogSource:
    """Receive syslog datagrams on ``host:port`` into a bounded queue; full queue → ``drops``.

    ``port=0`` picks a free port; after :meth:`start` the bound address is in ``address``.
    Datagrams longer than ``max_datagram`` bytes or not syslog-shaped count in ``errors``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 514,
        *,
        queue_size: int = 10000,
        max_datagram: int = 8192,
    ) -> None:
        self.name = f"udp:{host}:{port}"
        self.host, self.port = host, port
        self.max_datagram = max_datagram
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_size)
        self.lines = 0
        self.drops = 0
        self.errors = 0
        self.received = 0
        self.address: tuple[str, int] | None = None
        self._stream: asyncio_dgram.aio.DatagramServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> tuple[str, int]:
        """Bind the socket and start receiving (idempotent); returns the bound address."""
        if self._stream is None:
            try:
                self._stream = await asyncio_dgram.bind((self.host, self.port))
            except OSError as exc:
                raise SourceError(
                    f"syslog udp: cannot bind {self.host}:{self.port}: {exc}"
                ) from exc
            sockname: Any = self._stream.sockname
            self.address = (str(sockname[0]), int(sockname[1]))
            self.name = f"udp:{self.address[0]}:{self.address[1]}"
            self._task = asyncio.create_task(self._receive())
        assert self.address is not None
        return self.address

    async def _receive(self) -> None:
        assert self._stream is not None
        while True:
            try:
                data, addr_any = await self._stream.recv()
            except asyncio_dgram.TransportClosed:
                return
            except OSError:  # an ICMP error reported on the socket
                self.errors += 1
                continue
            self.received += 1
            if len(data) > self.max_datagram:
                self.errors += 1
                continue
            addr: Any = addr_any
            line = syslog_datagram_to_line(data, str(addr[0]) if addr else "-")
            if line is None:
                self.errors += 1
                continue
            try:
                self.queue.put_nowait(line)
            except asyncio.QueueFull:
                self.drops += 1

    async def aclose(self) -> None:
        """Stop receiving and close the socket."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    async def _iterate(self) -> AsyncIterator[str]:
        await self.start()
        try:
            while True:
                line = await self.queue.get()
                self.lines += 1
                yield line
        finally:
            await self.aclose()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()


# --------------------------------------------------------------------------- journald


def _field_text(value: object) -> str | None:
    """A journal field as text: JSON string, byte array (non-UTF-8 data) or None."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b < 256 for b in value):
        return bytes(value).decode("utf-8", "replace")
    return None


def journal_entry_to_line(entry: dict[str, object]) -> str | None:
    """``journalctl -o json`` entry → ``RFC3339 HOST IDENT[PID]: MESSAGE``; None without one."""
    message = _field_text(entry.get("MESSAGE"))
    if message is None:
        return None
    ident = (
        _field_text(entry.get("SYSLOG_IDENTIFIER")) or _field_text(entry.get("_COMM")) or "unknown"
    )
    pid = _field_text(entry.get("SYSLOG_PID")) or _field_text(entry.get("_PID"))
    host = _field_text(entry.get("_HOSTNAME")) or "localhost"
    stamp = _field_text(entry.get("__REALTIME_TIMESTAMP"))
    if stamp and stamp.isdigit():
        when = dt.datetime.fromtimestamp(int(stamp) / 1e6, dt.UTC)
        ts = when.isoformat(timespec="microseconds")
    else:
        ts = _now_3339()
    tag = f"{ident}[{pid}]" if pid and pid.isdigit() else ident
    text = message.rstrip("\n").replace("\n", " ")
    return f"{ts} {host.replace(' ', '_')} {tag.replace(' ', '_')}: {text}"


class JournaldSource:
    """Lines from ``journalctl -o json -f`` (optionally ``-u UNIT`` ...), restarted with backoff.

    Starts at ``--since now``; after a restart it resumes from the last cursor, so nothing is
    counted twice.  A missing ``journalctl`` raises :class:`SourceError` at construction.
    """

    def __init__(
        self,
        units: Sequence[str] = (),
        *,
        journalctl: str = "journalctl",
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        max_line: int = 1 << 20,
    ) -> None:
        found = shutil.which(journalctl)
        if found is None:
            raise SourceError(
                f"journald source: {journalctl!r} not found on PATH "
                "(install systemd's journalctl, or use a file or syslog source)"
            )
        self.name = "journald" + "".join(f":{u}" for u in units)
        self.journalctl = found
        self.units = tuple(units)
        self.backoff, self.max_backoff = backoff, max_backoff
        self.max_line = max_line
        self.lines = 0
        self.drops = 0
        self.errors = 0
        self.restarts = 0
        self.cursor: str | None = None
        self.proc: asyncio.subprocess.Process | None = None

    def command(self) -> list[str]:
        """The journalctl command line for the next (re)start."""
        cmd = [self.journalctl, "-o", "json", "-f", "--no-pager"]
        for unit in self.units:
            cmd += ["-u", unit]
        if self.cursor is None:
            cmd += ["--since", "now"]
        else:
            cmd += ["--after-cursor", self.cursor]
        return cmd

    async def _iterate(self) -> AsyncIterator[str]:
        delay = self.backoff
        try:
            while True:
                got_any = False
                async with contextlib.aclosing(self._run_once()) as run:
                    async for line in run:
                        got_any = True
                        yield line
                self.restarts += 1
                self.errors += 1
                delay = self.backoff if got_any else min(delay * 2, self.max_backoff)
                await asyncio.sleep(delay)
        finally:
            await self._stop()

    async def _run_once(self) -> AsyncGenerator[str, None]:
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.command(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                limit=self.max_line,
            )
        except OSError as exc:
            raise SourceError(f"journald source: cannot run {self.journalctl}: {exc}") from exc
        assert self.proc.stdout is not None
        while True:
            try:
                raw = await self.proc.stdout.readline()
            except ValueError:  # longer than max_line: skipped up to its newline
                self.drops += 1
                continue
            if not raw:
                break
            try:
                entry = orjson.loads(raw)
            except orjson.JSONDecodeError:
                self.errors += 1
                continue
            if not isinstance(entry, dict):
                self.errors += 1
                continue
            cursor = entry.get("__CURSOR")
            if isinstance(cursor, str):
                self.cursor = cursor
            line = journal_entry_to_line(entry)
            if line is None:
                self.errors += 1
                continue
            self.lines += 1
            yield line
        await self._stop()

    async def _stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        else:
            await proc.wait()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()


# --------------------------------------------------------------------------- merge


async def merge(*sources: LineSource, buffer: int = 1024) -> AsyncGenerator[tuple[str, str], None]:
    """Interleave several sources, yielding ``(source name, line)``.

    A source that fails raises its exception here (after the others are stopped); closing the
    merged iterator stops every source.
    """
    queue: asyncio.Queue[tuple[str, str] | BaseException | None] = asyncio.Queue(maxsize=buffer)

    async def pump(src: LineSource) -> None:
        try:
            async for line in src:
                await queue.put((src.name, line))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await queue.put(exc)
        else:
            await queue.put(None)  # this source ended

    tasks = [asyncio.create_task(pump(s), name=f"source {s.name}") for s in sources]
    running = len(tasks)
    try:
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
                continue
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
