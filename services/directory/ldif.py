"""LDIF content records (RFC 2849): a pure writer and parser, no I/O.

An entry is ``(dn, attrs)`` with ``attrs`` mapping an attribute description to its raw values
(``bytes``), in order. :func:`write_ldif` emits ``version: 1`` and one record per entry; a DN
or value is written base64 (``attr:: ...``) when it is not a SAFE-STRING: non-ASCII bytes, NUL,
CR or LF, a leading space, colon or ``<``, or a trailing space. Lines longer than 76 characters
are folded (continuation lines start with one space). :func:`parse_ldif` reads that back, plus
comments (``#`` lines, folded ones too), CRLF line ends and blank-line separators. Change
records (``changetype:``) and URL values (``attr:< file://...``) are refused: a backup never
holds them, and a parser that opened files named by its input would be a hole.

``parse_ldif(write_ldif(x)) == x`` for every ``x`` whose attribute names are unique
case-insensitively within an entry and whose entries each have at least one value.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping, Sequence

Entry = tuple[str, dict[str, list[bytes]]]
"""One parsed entry: DN and attribute description -> values."""

FOLD = 76
_ATTR_RE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*)(?:;[A-Za-z0-9-]+)*$")
_UNSAFE_START = frozenset(b" :<")
# names an LDIF reader takes as record syntax, not as attributes (no LDAP attribute has them)
_RESERVED = frozenset({"dn", "changetype", "control"})


class LdifError(ValueError):
    """The LDIF is malformed; the message names the line (never a value: it may be a secret)."""


def _safe(value: bytes) -> bool:
    """A SAFE-STRING of RFC 2849 (and no trailing space, which some readers strip)."""
    if not value:
        return True
    if value[0] in _UNSAFE_START or value[-1] == 0x20:
        return False
    return all(0 < b < 0x80 and b not in (0x0A, 0x0D) for b in value)


def _line(name: str, value: bytes) -> str:
    if _safe(value):
        return f"{name}: {value.decode('ascii')}" if value else f"{name}:"
    return f"{name}:: {base64.b64encode(value).decode('ascii')}"


def _fold(line: str) -> list[str]:
    if len(line) <= FOLD:
        return [line]
    out = [line[:FOLD]]
    rest = line[FOLD:]
    while rest:
        out.append(" " + rest[: FOLD - 1])
        rest = rest[FOLD - 1 :]
    return out


def write_ldif(entries: Iterable[tuple[str, Mapping[str, Sequence[bytes]]]]) -> bytes:
    """LDIF (``version: 1``, LF line ends) of ``entries``; attributes without values are left out."""
    lines: list[str] = ["version: 1"]
    for dn, attrs in entries:
        if not isinstance(dn, str):
            raise TypeError("a DN must be a str")
        record = [_line("dn", dn.encode("utf-8"))]
        for name, values in attrs.items():
            if not _ATTR_RE.match(name):
                raise LdifError(f"the entry {dn!r}: {name!r} is not an attribute description")
            if name.lower() in _RESERVED:
                raise LdifError(f"the entry {dn!r}: {name!r} would be read as LDIF syntax")
            record.extend(_line(name, bytes(v)) for v in values)
        if len(record) == 1:
            raise LdifError(f"the entry {dn!r} has no attribute values")
        lines.append("")
        for item in record:
            lines.extend(_fold(item))
    return ("\n".join(lines) + "\n").encode("ascii")


def _logical_lines(data: bytes) -> Iterable[tuple[int, str]]:
    """``(line number, unfolded line)``; comments dropped, blank lines kept as ``""``."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        bad = data[: exc.start].count(b"\n") + 1
        raise LdifError(f"line {bad}: non-ASCII byte (use base64, attr:: ...)") from None
    current: str | None = None
    start = 0
    comment = False
    for n, raw in enumerate(text.split("\n"), 1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if line.startswith(" "):
            if current is None and not comment:
                raise LdifError(f"line {n}: continuation line without a line to continue")
            if not comment and current is not None:
                current += line[1:]
            continue
        if current is not None:
            yield start, current
            current = None
        comment = line.startswith("#")
        if comment:
            continue
        if line == "":
            yield n, ""
            continue
        current, start = line, n
    if current is not None:
        yield start, current


def _value(n: int, line: str) -> tuple[str, bytes]:
    name, sep, rest = line.partition(":")
    if not sep:
        raise LdifError(f"line {n}: expected 'attribute: value'")
    if rest.startswith(":"):
        try:
            return name, base64.b64decode(rest[1:].strip(" "), validate=True)
        except (binascii.Error, ValueError):
            raise LdifError(f"line {n}: {name}:: is not valid base64") from None
    if rest.startswith("<"):
        raise LdifError(f"line {n}: URL values ({name}:<) are not supported")
    return name, rest.lstrip(" ").encode("ascii")


def parse_ldif(data: bytes) -> list[Entry]:
    """The entries of an LDIF content file, in order (a pure function of ``data``)."""
    entries: list[Entry] = []
    dn: str | None = None
    attrs: dict[str, list[bytes]] = {}
    names: dict[str, str] = {}  # lower-case -> first spelling
    seen_record = False

    def finish(n: int) -> None:
        nonlocal dn, attrs, names
        if dn is not None:
            if not attrs:
                raise LdifError(f"line {n}: the entry {dn!r} has no attributes")
            entries.append((dn, attrs))
        dn, attrs, names = None, {}, {}

    last = 0
    for n, line in _logical_lines(data):
        last = n
        if line == "":
            finish(n)
            continue
        name, value = _value(n, line)
        lname = name.lower()
        if dn is None:
            if lname == "version" and not seen_record and not entries:
                if value != b"1":
                    raise LdifError(f"line {n}: unsupported LDIF version")
                seen_record = True
                continue
            if lname != "dn":
                raise LdifError(f"line {n}: a record must start with 'dn:'")
            try:
                dn = value.decode("utf-8")
            except UnicodeDecodeError:
                raise LdifError(f"line {n}: the DN is not UTF-8") from None
            seen_record = True
            continue
        if lname in _RESERVED - {"dn"}:
            raise LdifError(f"line {n}: change records are not supported (content LDIF only)")
        if lname == "dn":
            raise LdifError(f"line {n}: a second 'dn:' in one record (missing blank line?)")
        if not _ATTR_RE.match(name):
            raise LdifError(f"line {n}: {name!r} is not an attribute description")
        key = names.setdefault(lname, name)
        attrs.setdefault(key, []).append(value)
    finish(last + 1)
    return entries
