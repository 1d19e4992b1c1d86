"""Follow a growing log file like ``tail -F``: survives rename+create rotation and truncation."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import BinaryIO


class FileFollower:
    """Yield complete lines appended to a file, polling (works on any filesystem).

    Rotation by rename+create: the old file is read to its end, then the new one from its start.
    Truncation (copytruncate): reading restarts at offset 0.  A partial last line is held until
    its newline arrives; an over-long line (``max_line`` bytes) is skipped up to its newline and
    counted in ``drops``.  Each call reads at most ``max_batch`` bytes, so memory stays bounded
    even when starting at the head of a large file.  Counters: ``lines``, ``drops``, ``errors``,
    ``rotations``, ``truncations``.
    """

    def __init__(
        self,
        path: str,
        *,
        from_end: bool = True,
        poll: float = 0.25,
        max_line: int = 65536,
        max_batch: int = 1 << 20,
    ) -> None:
        self.path = path
        self.from_end = from_end
        self.poll = poll
        self.max_line = max_line
        self.max_batch = max_batch
        self._fh: BinaryIO | None = None
        self._inode: tuple[int, int] | None = None
        self._partial = b""
        self._skipping = False  # inside an over-long line, until its newline
        self._more = False  # the last read stopped at max_batch or switched file
        self.rotations = 0
        self.truncations = 0
        self.lines_read = 0
        self.drops = 0
        self.errors = 0

    def _open(self, at_end: bool) -> bool:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - kept open while following
        except OSError:
            return False
        st = os.fstat(fh.fileno())
        if at_end:
            fh.seek(0, os.SEEK_END)
        self._fh, self._inode = fh, (st.st_dev, st.st_ino)
        self._partial, self._skipping = b"", False
        return True

    def close(self) -> None:
        """Close the current file handle (following may resume later)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def read_available(self) -> list[str]:
        """Lines completed since the last call (no waiting); at most ``max_batch`` bytes read."""
        self._more = False
        if self._fh is None:
            opened = self._open(self.from_end)
            self.from_end = False  # a file that appears later is read from its start
            if not opened:
                return []
        assert self._fh is not None
        try:
            data = self._fh.read(self.max_batch)
        except OSError:
            self.errors += 1
            data = b""
        if not data:
            return self._check_rotation()
        self._more = len(data) >= self.max_batch
        return self._split(data)

    def _split(self, data: bytes) -> list[str]:
        buf = self._partial + data
        parts = buf.split(b"\n")
        partial = parts.pop()
        if self._skipping and parts:
            parts.pop(0)  # the tail of an over-long line
            self._skipping = False
        if self._skipping:
            partial = b""
        elif len(partial) > self.max_line:
            self.drops += 1  # an endless line: skip it up to its newline rather than grow
            self._skipping, partial = True, b""
        self._partial = partial
        lines = []
        for p in parts:
            if not p:
                continue
            if len(p) > self.max_line:
                self.drops += 1
                continue
            lines.append(p.decode("utf-8", "replace"))
        self.lines_read += len(lines)
        return lines

    def _check_rotation(self) -> list[str]:
        """Switch to a re-created file or rewind a truncated one; the old file's unterminated
        last line (if any) is returned, as it can never be completed."""
        assert self._fh is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return []  # rotated away and not yet re-created: keep the old handle
        pos = self._fh.tell()
        if (st.st_dev, st.st_ino) != self._inode:
            self.rotations += 1
            last = [] if self._skipping or not self._partial else [self._partial]
            self.close()
            self._more = self._open(at_end=False)
            self.lines_read += len(last)
            return [b.decode("utf-8", "replace") for b in last]
        elif st.st_size < pos:
            self.truncations += 1
            self._fh.seek(0)
            self._partial, self._skipping, self._more = b"", False, True
        return []

    async def lines(self) -> AsyncIterator[str]:
        """Follow forever, yielding lines as they are written."""
        try:
            while True:
                batch = self.read_available()
                for line in batch:
                    yield line
                if not batch and not self._more:
                    await asyncio.sleep(self.poll)
                elif not batch or self._more:
                    await asyncio.sleep(0)  # let other tasks run between large batches
        finally:
            self.close()
