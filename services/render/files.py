"""Installing rendered files: unified diffs, atomic writes, unchanged files left alone.

Each changed file is written to a temp file in the same directory (created with its final
mode, so a secret is never readable by others even for a moment), fsynced, given its group,
and renamed over the old one; then the directory is fsynced. Files whose text is unchanged
are not touched at all (their mtime stays, so Postfix/Dovecot see no change).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from . import Rendered, RenderedFile

_SECRET_LINE = re.compile(r"^(\s*(?:bind_pw|dnpass|password)\s*=\s*).*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class FileChange:
    """One rendered file compared with what is installed."""

    path: Path
    new: RenderedFile
    old_text: str | None  # None: the file does not exist yet

    @property
    def changed(self) -> bool:
        return self.old_text != self.new.text

    def diff(self) -> str:
        """A unified diff old -> new; password values are masked in both."""
        old = _redact(self.old_text or "")
        new = _redact(self.new.text)
        lines = difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=str(self.path) if self.old_text is not None else "/dev/null",
            tofile=str(self.path),
        )
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def _redact(text: str) -> str:
    return "\n".join(_SECRET_LINE.sub(r"\1********", line) for line in text.split("\n"))


def plan(out_dir: str | Path, files: Rendered) -> list[FileChange]:
    """Compare ``files`` with what ``out_dir`` holds (reads only)."""
    base = Path(out_dir)
    changes = []
    for name in sorted(files):
        path = base / name
        try:
            old: str | None = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            old = None
        changes.append(FileChange(path, files[name], old))
    return changes


def _gid(group: str) -> int | None:
    if not group:
        return None
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def write_atomic(path: Path, content: RenderedFile) -> None:
    """Write one file: temp (final mode) + fsync + group + rename + fsync(dir)."""
    tmp = path.with_name(f".{path.name}.pfm-tmp.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, content.mode)
    try:
        try:
            os.fchmod(fd, content.mode)  # the umask may have removed bits we want
            gid = _gid(content.group)
            if gid is not None and os.geteuid() == 0:
                os.fchown(fd, 0, gid)
            data = content.text.encode("utf-8")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def apply(changes: Iterable[FileChange]) -> list[Path]:
    """Write the changed files (creating their directory 0755); returns the paths written."""
    written = []
    for change in changes:
        if not change.changed:
            continue
        change.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        write_atomic(change.path, change.new)
        written.append(change.path)
    return written
