"""Split one syslog line into timestamp, host, program, pid and message (pure, no regex).

Understands the three shapes mail servers write:

* traditional BSD syslog ``Nov  4 01:25:21 host prog[pid]: msg`` (space-padded day),
* Postfix's own ``maillog_file`` (postlogd) ``Nov 04 01:25:21 host prog[pid]: msg``,
* RFC 3339 high precision ``2026-11-24T01:25:21.123456+00:00 host prog[pid]: msg``
  (rsyslog's default ``RSYSLOG_FileFormat``).

The pid is optional (``prog: msg``). The timestamp is returned as written: turning it into
an epoch needs a year and a time zone, which is the caller's business.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SyslogLine", "parse_syslog_line"]


class SyslogLine(NamedTuple):
    """One split syslog line; ``pid`` is None when the tag carries none."""

    timestamp: str
    host: str
    program: str
    pid: int | None
    message: str


# positional construction without the Python-level NamedTuple.__new__ (hot path)
_new = tuple.__new__


def _locate(line: str) -> tuple[str, int, int, int, tuple[str, int | None]] | None:
    """``(line without EOL, host start, tag start - 1, message colon, (program, pid))``."""
    if line[-1:] == "\n":
        line = line.rstrip("\r\n")
    if len(line) < 20:
        return None
    if "0" <= line[0] <= "9":
        # RFC 3339: 2026-11-24T01:25:21[.frac](Z|+hh:mm)
        start = line.find(" ") + 1
        if start < 20 or line[4] != "-" or line[10] != "T":
            return None
    elif line[3] == " " and line[6] == " " and line[9] == ":" and line[15] == " ":
        # Mmm dd hh:mm:ss (day zero- or space-padded)
        start = 16
    else:
        return None
    sp = line.find(" ", start)
    if sp <= start:
        return None
    colon = line.find(": ", sp)
    if colon < 0:
        # "prog[1]:" with an empty message
        if line[-1] != ":":
            return None
        colon = len(line) - 1
    tag = line[sp + 1 : colon]
    split = _TAGS.get(tag)
    if split is None:
        split = _split_tag(tag)
        if split is None:
            return None
        if len(_TAGS) >= 4096:  # tags repeat per process; keep the cache bounded
            _TAGS.clear()
        _TAGS[tag] = split
    return line, start, sp, colon, split


def parse_syslog_line(line: str) -> SyslogLine | None:
    """Split a syslog line; None when it is not in one of the understood shapes."""
    found = _locate(line)
    if found is None:
        return None
    line, start, sp, colon, split = found
    return _new(SyslogLine, (line[: start - 1], line[start:sp], *split, line[colon + 2 :]))


_TAGS: dict[str, tuple[str, int | None]] = {}


def program_and_message(line: str) -> tuple[str, str] | None:
    """Just ``(program, message)`` of a syslog line: the counters' hot path.

    Same acceptance rules as :func:`parse_syslog_line` (both use :func:`_locate`), without
    building the timestamp and host strings nobody counts.
    """
    found = _locate(line)
    if found is None:
        return None
    return found[4][0], found[0][found[3] + 2 :]


def _split_tag(tag: str) -> tuple[str, int | None] | None:
    """``prog[123]`` → (``prog``, 123); ``prog`` → (``prog``, None); None when malformed."""
    if not tag or " " in tag:
        return None
    if tag[-1] != "]":
        return tag, None
    lb = tag.rfind("[")
    digits = tag[lb + 1 : -1]
    if lb <= 0 or not digits.isdigit():
        return None
    return tag[:lb], int(digits)
