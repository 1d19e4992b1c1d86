"""A small, pure parser of RFC 1035 master-file text, enough to check a mail domain's records.

Handles ``$ORIGIN`` and ``$TTL``, ``@``, relative and absolute names, a blank owner meaning
"the previous owner", TTL and class in either order (TTLs may use BIND units such as
``1h30m``), ``;`` comments, parenthesised records over several lines and quoted
character-strings with ``\\"``, ``\\\\`` and ``\\DDD`` escapes (a TXT record's strings are
joined). MX data is parsed into priority and absolute host; other types keep their tokens.
``$INCLUDE`` and ``$GENERATE`` are refused. Every error names its line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

MAX_ZONE_BYTES = 16 * 1024 * 1024
"""Refuse larger texts: a mail domain's zone is a few kilobytes."""

CLASSES = frozenset({"IN", "CH", "HS", "CS"})
KNOWN_TYPES = frozenset(
    {
        "A", "AAAA", "AFSDB", "APL", "CAA", "CDNSKEY", "CDS", "CERT", "CNAME", "CSYNC",
        "DHCID", "DLV", "DNAME", "DNSKEY", "DS", "EUI48", "EUI64", "HINFO", "HIP", "HTTPS",
        "IPSECKEY", "KEY", "KX", "LOC", "MX", "NAPTR", "NS", "NSEC", "NSEC3", "NSEC3PARAM",
        "OPENPGPKEY", "PTR", "RP", "RRSIG", "SIG", "SMIMEA", "SOA", "SPF", "SRV", "SSHFP",
        "SVCB", "TA", "TKEY", "TLSA", "TSIG", "TXT", "URI", "ZONEMD",
    }
)  # fmt: skip
_TYPE_N = re.compile(r"^TYPE\d{1,5}$")
_TTL = re.compile(r"^(?:\d+[smhdw]?)+$", re.IGNORECASE)
_TTL_PART = re.compile(r"(\d+)([smhdw]?)", re.IGNORECASE)
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ZoneError(ValueError):
    """Unparseable zone text; ``line`` is the 1-based line number."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass(frozen=True, slots=True)
class ZoneRecord:
    """One parsed record: absolute lower-case ``name`` with trailing dot, upper-case type."""

    name: str
    ttl: int | None
    rclass: str
    type: str
    rdata: tuple[str, ...]
    line: int

    @property
    def value(self) -> str:
        """The record data as one string: TXT strings joined, MX as ``PRIORITY HOST.``."""
        if self.type in ("TXT", "SPF"):
            return "".join(self.rdata)
        return " ".join(self.rdata)


@dataclass(frozen=True, slots=True)
class _Token:
    text: str
    quoted: bool


def parse_ttl(text: str, line: int) -> int:
    """``3600``, ``1h`` or ``1h30m`` as seconds."""
    if not _TTL.match(text):
        raise ZoneError(line, f"invalid TTL {text!r}")
    total = sum(int(n) * _TTL_UNITS[u.lower()] for n, u in _TTL_PART.findall(text))
    if total > 2_147_483_647:
        raise ZoneError(line, f"TTL {text!r} is larger than 2147483647")
    return total


def _tokenize_line(text: str, lineno: int, depth: int) -> tuple[list[_Token], int]:
    """The tokens of one physical line and the parenthesis depth after it."""
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r":
            i += 1
        elif ch == ";":
            break
        elif ch == "(":
            depth += 1
            i += 1
        elif ch == ")":
            if depth == 0:
                raise ZoneError(lineno, "')' without a matching '('")
            depth -= 1
            i += 1
        elif ch == '"':
            buf = bytearray()
            i += 1
            while True:
                if i >= n:
                    raise ZoneError(lineno, "unterminated quoted string")
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\":
                    if i + 1 >= n:
                        raise ZoneError(lineno, "unterminated quoted string")
                    if text[i + 1 : i + 4].isdigit() and len(text[i + 1 : i + 4]) == 3:
                        code = int(text[i + 1 : i + 4])
                        if code > 255:
                            raise ZoneError(lineno, f"invalid escape \\{text[i + 1 : i + 4]}")
                        buf.append(code)
                        i += 4
                        continue
                    c = text[i + 1]
                    i += 1
                buf += c.encode("utf-8")
                i += 1
            tokens.append(_Token(buf.decode("utf-8", errors="replace"), True))
        else:
            start = i
            while i < n and text[i] not in ' \t\r;()"':
                i += 2 if text[i] == "\\" else 1
            tokens.append(_Token(text[start:i], False))
    return tokens, depth


def _logical_records(text: str) -> Iterator[tuple[int, bool, list[_Token]]]:
    """(first line, starts with blank, tokens) of each non-empty logical record."""
    depth = 0
    tokens: list[_Token] = []
    first = 0
    blank = False
    lineno = 0
    for lineno, raw in enumerate(text.split("\n"), 1):
        if "\0" in raw:
            raise ZoneError(lineno, "contains a NUL byte: not a zone file")
        if depth == 0:
            first = lineno
            blank = raw[:1] in (" ", "\t")
            tokens = []
        line_tokens, depth = _tokenize_line(raw, lineno, depth)
        tokens.extend(line_tokens)
        if depth == 0 and tokens:
            yield first, blank, tokens
    if depth:
        raise ZoneError(first, "'(' is never closed")


def absolute_name(name: str, origin: str | None, line: int) -> str:
    """``name`` made absolute (trailing dot, lower-case) against ``origin``."""
    if name == "@":
        if origin is None:
            raise ZoneError(line, "'@' used but no $ORIGIN is known")
        return origin
    if name.endswith(".") and not name.endswith("\\."):
        return name.lower()
    if origin is None:
        raise ZoneError(line, f"relative name {name!r} but no $ORIGIN is known")
    return f"{name}.{origin}".lower() if origin != "." else f"{name}.".lower()


def parse_zone(text: str, origin: str | None = None) -> list[ZoneRecord]:
    """Parse zone text; ``origin`` (e.g. ``example.org.``) is the initial ``$ORIGIN``."""
    if len(text) > MAX_ZONE_BYTES:
        raise ZoneError(1, f"zone text is larger than {MAX_ZONE_BYTES} bytes")
    cur_origin = (origin if origin.endswith(".") else origin + ".").lower() if origin else None
    default_ttl: int | None = None
    last_ttl: int | None = None
    last_owner: str | None = None
    out: list[ZoneRecord] = []
    for line, blank, tokens in _logical_records(text):
        head = tokens[0]
        if not blank and not head.quoted and head.text.startswith("$"):
            directive = head.text.upper()
            args = [t.text for t in tokens[1:]]
            if directive == "$ORIGIN":
                if len(args) != 1:
                    raise ZoneError(line, "$ORIGIN needs exactly one name")
                cur_origin = absolute_name(args[0], cur_origin, line)
            elif directive == "$TTL":
                if len(args) != 1:
                    raise ZoneError(line, "$TTL needs exactly one value")
                default_ttl = parse_ttl(args[0], line)
            elif directive in ("$INCLUDE", "$GENERATE"):
                raise ZoneError(line, f"{directive} is not supported: check the included file")
            else:
                raise ZoneError(line, f"unknown directive {head.text!r}")
            continue
        rest = list(tokens)
        if blank:
            if last_owner is None:
                raise ZoneError(line, "record without an owner name and no previous owner")
            owner = last_owner
        else:
            if head.quoted:
                raise ZoneError(line, "owner name must not be quoted")
            owner = absolute_name(rest.pop(0).text, cur_origin, line)
        ttl: int | None = None
        rclass = "IN"
        for _ in range(2):
            if not rest or rest[0].quoted:
                break
            word = rest[0].text
            if _TTL.match(word) and ttl is None:
                ttl = parse_ttl(word, line)
                rest.pop(0)
            elif word.upper() in CLASSES:
                rclass = word.upper()
                rest.pop(0)
        if not rest:
            raise ZoneError(line, "record type missing")
        tok = rest.pop(0)
        rtype = tok.text.upper()
        if tok.quoted or not (rtype in KNOWN_TYPES or _TYPE_N.match(rtype)):
            raise ZoneError(line, f"unknown record type or misplaced field {tok.text!r}")
        if not rest:
            raise ZoneError(line, f"{rtype} record without data")
        rdata = _rdata(rtype, rest, cur_origin, line)
        if ttl is None:
            ttl = default_ttl if default_ttl is not None else last_ttl
        else:
            last_ttl = ttl
        last_owner = owner
        out.append(ZoneRecord(owner, ttl, rclass, rtype, rdata, line))
    return out


def _rdata(rtype: str, rest: list[_Token], origin: str | None, line: int) -> tuple[str, ...]:
    if rtype in ("TXT", "SPF"):
        return tuple(t.text for t in rest)
    if rtype == "MX":
        if len(rest) != 2 or rest[0].quoted or rest[1].quoted:
            raise ZoneError(line, "MX needs a priority and a host")
        if not rest[0].text.isdigit() or int(rest[0].text) > 65535:
            raise ZoneError(line, f"MX priority {rest[0].text!r} is not 0-65535")
        return (str(int(rest[0].text)), absolute_name(rest[1].text, origin, line))
    if rtype in ("CNAME", "NS", "PTR", "DNAME"):
        if len(rest) != 1:
            raise ZoneError(line, f"{rtype} needs exactly one name")
        return (absolute_name(rest[0].text, origin, line),)
    return tuple(t.text for t in rest)
