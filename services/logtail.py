"""Follow a growing log file like ``tail -F``: survives rename+create rotation and truncation."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import BinaryIO


class FileFollower:
    """Yield complete lines appended to a file, polling (works on any filesystem)."""

    def __init__(
        self, path: str, *, from_end: bool = True, poll: float = 0.25, max_line: int = 65536
    ) -> None:
        self.path = path
        self.from_end = from_end
        self.poll = poll
        self.max_line = max_line
        self._fh: BinaryIO | None = None
        self._inode: tuple[int, int] | None = None
        self._partial = b""
        self.rotations = 0
        self.truncations = 0

    def _open(self, at_end: bool) -> bool:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - kept open while following
        except OSError:
            return False
        st = os.fstat(fh.fileno())
        if at_end:
            fh.seek(0, os.SEEK_END)
        self._fh, self._inode, self._partial = fh, (st.st_dev, st.st_ino), b""
        return True

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def read_available(self) -> list[str]:
        """Lines completed since the last call (no waiting)."""
        if self._fh is None and not self._open(self.from_end):
            return []
        self.from_end = False  # files that appear later are read from their start
        assert self._fh is not None
        chunks = []
        while True:
            data = self._fh.read(1 << 16)
            if not data:
                break
            chunks.append(data)
        lines = self._split(b"".join(chunks)) if chunks else []
        if not chunks:
            self._check_rotation()
        return lines

    def _split(self, data: bytes) -> list[str]:
        buf = self._partial + data
        parts = buf.split(b"\n")
        self._partial = parts.pop()
        if len(self._partial) > self.max_line:
            self._partial = b""  # an endless line: drop it rather than grow
        return [p.decode("utf-8", "replace") for p in parts if p]

    def _check_rotation(self) -> None:
        assert self._fh is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return  # rotated away and not yet re-created: keep the old handle
        pos = self._fh.tell()
        if (st.st_dev, st.st_ino) != self._inode:
            self.rotations += 1
            self.close()
            self._open(at_end=False)
        elif st.st_size < pos:
            self.truncations += 1
            self._fh.seek(0)
            self._partial = b""

    async def lines(self) -> AsyncIterator[str]:
        """Follow forever, yielding lines as they are written."""
        try:
            while True:
                batch = self.read_available()
                for line in batch:
                    yield line
                if not batch:
                    await asyncio.sleep(self.poll)
        finally:
            self.close()
