"""Import and export of the directory as CSV or JSON (``pfm import`` / ``pfm export``).

Formats
=======

JSON: one document as :func:`export_json` writes it::

    {"version": 1, "domains": [...], "alias_domains": [...], "mailboxes": [...], "aliases": [...]}

Every key is optional; each list holds objects with the fields of :data:`COLUMNS`.

CSV: one file per kind with a header line naming its columns (any order; only ``REQUIRED``
columns must be present). The kind is taken from ``--kind`` or detected from the header.

* ``domains``: ``name,description,active,max_mailboxes,max_aliases,default_quota,limits``
* ``alias-domains``: ``name,target,active``
* ``mailboxes``: ``address,password_hash,name,quota,active,limits``
* ``aliases``: ``source,targets,active`` (targets separated by spaces, ``;`` or ``,``)

``active`` is true/false (yes/no, 1/0); sizes are bytes with an optional K/M/G/T suffix
(1024-based); ``limits`` is ``NAME=WINDOW[,WINDOW...]`` separated by ``;`` (``unlimited`` for
none), e.g. ``user_messages=500/1d,50/1h;user_recipients=unlimited``. A ``password_hash`` is a
Dovecot ``{SCHEME}...`` string stored as it is (never rehashed). An empty cell means "not
given": a new object gets the default (a mailbox's quota: its domain's ``default_quota``), an
existing object keeps its value.

Semantics
=========

Everything is validated before anything is written; every bad row is reported with its place
(``mailboxes.csv:17: address: ...``). A row equal to the stored object is *unchanged*; a row
that differs is an *update* with ``update=True`` and otherwise a *conflict*, reported like an
error (so a re-run of the same import is a no-op, and an import never silently overwrites).
New mailboxes need a ``password_hash``. The plan is applied by one backend write
(all-or-nothing) with one ``import`` audit entry holding only counts.

CSV files are read as a stream; what stays in memory is the plan (the objects to write) and
the keys seen, not the file. Errors are handed to a callback as they are found.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import io
import json
import os
import secrets
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from .backend import Backend
from .model import (
    Alias,
    AliasDomain,
    AuditEntry,
    Change,
    Create,
    DirectoryObject,
    Domain,
    InvalidInput,
    Mailbox,
    Replace,
    domain_of,
    normalize_address,
    normalize_alias_source,
    normalize_domain,
)

ImportKind = Literal["domains", "alias-domains", "mailboxes", "aliases"]
KINDS: tuple[ImportKind, ...] = ("domains", "alias-domains", "mailboxes", "aliases")
"""In the order an import applies them (domains before what lives in them)."""

JSON_KEY: dict[ImportKind, str] = {
    "domains": "domains",
    "alias-domains": "alias_domains",
    "mailboxes": "mailboxes",
    "aliases": "aliases",
}

COLUMNS: dict[ImportKind, tuple[str, ...]] = {
    "domains": (
        "name",
        "description",
        "active",
        "max_mailboxes",
        "max_aliases",
        "default_quota",
        "limits",
    ),
    "alias-domains": ("name", "target", "active"),
    "mailboxes": ("address", "password_hash", "name", "quota", "active", "limits"),
    "aliases": ("source", "targets", "active"),
}

REQUIRED: dict[ImportKind, frozenset[str]] = {
    "domains": frozenset({"name"}),
    "alias-domains": frozenset({"name", "target"}),
    "mailboxes": frozenset({"address"}),
    "aliases": frozenset({"source", "targets"}),
}

MAX_FIELD = 64 * 1024
"""Longest accepted CSV cell (bytes); longer ones are errors, not memory."""

FORMAT_VERSION = 1

ErrorSink = Callable[[str], None]
Progress = Callable[[float], None]


_NOUN: dict[ImportKind, str] = {
    "domains": "domain",
    "alias-domains": "alias domain",
    "mailboxes": "mailbox",
    "aliases": "alias",
}


class ImportError_(Exception):  # not the builtin ImportError
    """A whole input file can't be read (binary, not UTF-8, no header ...); safe to show."""


class RowError(Exception):
    """One bad value in a row; the message names the field and is safe to show."""


# --------------------------------------------------------------------------- value parsing


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"{name}: must be a string")
    if "\0" in value:
        raise RowError(f"{name}: contains a NUL character")
    return value


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value, name).strip().lower()
    if text in ("true", "yes", "1", "on", "y", "t"):
        return True
    if text in ("false", "no", "0", "off", "n", "f"):
        return False
    raise RowError(f"{name}: {value!r} is not true or false")


_SUFFIX = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _size(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise RowError(f"{name}: must be a number")
    if isinstance(value, int):
        n = value
    else:
        text = _text(value, name).strip().lower().removesuffix("b").removesuffix("i")
        mult = 1
        if text and text[-1] in _SUFFIX:
            mult = _SUFFIX[text[-1]]
            text = text[:-1]
        if not text.isdigit() or len(text) > 18:
            raise RowError(f"{name}: {value!r} is not a number of bytes (e.g. 1073741824 or 1G)")
        n = int(text) * mult
    if n < 0:
        raise RowError(f"{name}: must be 0 (no limit) or more")
    return n


def _limits(value: Any, name: str, known: Collection[str] | None) -> dict[str, tuple[str, ...]]:
    from .ops import validate_windows

    items: list[tuple[str, Any]] = []
    if isinstance(value, Mapping):
        items = [(str(k), v) for k, v in value.items()]
    else:
        text = _text(value, name)
        for part in text.split(";"):
            if not part.strip():
                continue
            lname, eq, windows = part.partition("=")
            if not eq:
                raise RowError(
                    f"{name}: {part.strip()!r} is not NAME=WINDOWS (e.g. user_messages=500/1d)"
                )
            items.append((lname.strip(), windows))
    out: dict[str, tuple[str, ...]] = {}
    for lname, windows in items:
        if not lname:
            raise RowError(f"{name}: a limit name is empty")
        if known is not None and lname not in known:
            raise RowError(f"{name}: no limit named {lname!r} in [policyd.limits]")
        if not isinstance(windows, str | list | tuple) or (
            not isinstance(windows, str) and not all(isinstance(w, str) for w in windows)
        ):
            raise RowError(f"{name}: windows of {lname} must be strings")
        if isinstance(windows, list | tuple) and not windows:
            out[lname] = ()
            continue
        try:
            out[lname] = validate_windows(windows, f"{name} {lname}")
        except InvalidInput as exc:
            raise RowError(str(exc)) from None
    return out


def _invalid(exc: InvalidInput) -> RowError:
    return RowError(str(exc))


def _address(value: Any, name: str) -> str:
    text = _text(value, name)
    local, at, dom = text.strip().rpartition("@")
    if not (at and local and dom):
        raise RowError(f"{name}: {text!r} is not an address")
    try:
        return normalize_address(text, name)
    except InvalidInput as exc:
        detail = str(exc).removeprefix(f"{exc.field}: ")
        if "is not an address" in detail:
            raise RowError(str(exc)) from None
        raise RowError(f"{name}: {text!r} is not an address ({detail})") from None


def _domain(value: Any, name: str) -> str:
    try:
        return normalize_domain(_text(value, name), name)
    except InvalidInput as exc:
        raise _invalid(exc) from None


def _targets(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, list | tuple):
        raw = [_text(v, name) for v in value]
    else:
        raw = _text(value, name).replace(";", " ").replace(",", " ").split()
    out: list[str] = []
    for t in raw:
        n = _address(t, name)
        if n not in out:
            out.append(n)
    if not out:
        raise RowError(f"{name}: give at least one target address")
    return tuple(out)


def _given(row: Mapping[str, Any], name: str) -> bool:
    """A value was given: present, not None, and (from CSV) not an empty cell."""
    v = row.get(name)
    return v is not None and not (isinstance(v, str) and v.strip() == "")


# --------------------------------------------------------------------------- the plan


@dataclass
class Counts:
    create: int = 0
    update: int = 0
    unchanged: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"create": self.create, "update": self.update, "unchanged": self.unchanged}


@dataclass
class ImportPlan:
    """What an import would write: the changes (in apply order), counts, and error count."""

    changes: list[Change] = field(default_factory=list)
    counts: dict[ImportKind, Counts] = field(default_factory=lambda: {k: Counts() for k in KINDS})
    errors: int = 0
    sources: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def summary(self) -> dict[str, Any]:
        return {
            "sources": list(self.sources),
            "errors": self.errors,
            "counts": {k: c.as_dict() for k, c in self.counts.items()},
        }


@dataclass(slots=True)
class _Pending:
    where: str
    obj: DirectoryObject
    existing: DirectoryObject | None


class ImportPlanner:
    """Validate rows kind by kind (domains, alias-domains, mailboxes, aliases) into a plan.

    Rows are mappings of column name to a CSV string or a JSON value. Each problem is passed
    to ``on_error`` as ``"<where>: <field>: <message>"`` as soon as it is found.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        update: bool = False,
        known_limits: Collection[str] | None = None,
        check_hash: Callable[[str], str] | None = None,
        on_error: ErrorSink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.update = update
        self.known_limits = known_limits
        self._check_hash = check_hash
        self.on_error = on_error or (lambda _msg: None)
        self.now = clock()
        self.plan = ImportPlan()
        self._domains: dict[str, _Pending] = {}
        self._alias_domains: dict[str, _Pending] = {}
        self._mailboxes: dict[str, _Pending] = {}
        self._aliases: dict[str, _Pending] = {}
        self._seen: dict[ImportKind, dict[str, str]] = {k: {} for k in KINDS}
        self._domain_cache: dict[str, Domain | None] = {}
        self._alias_domain_cache: dict[str, AliasDomain | None] = {}
        self._mb_cache: dict[str, dict[str, Mailbox]] = {}
        self._al_cache: dict[str, dict[str, Alias]] = {}
        self._mb_count: dict[str, int] = {}
        self._al_count: dict[str, int] = {}
        self._recheck_mailbox_alias: list[tuple[str, str]] = []
        self._hash_ok: dict[str, str] = {}
        self._norm_domain: dict[str, str] = {}
        self._last_kind = -1

    # ------------------------------------------------------------ lookups (cached)

    def _existing_domain(self, name: str) -> Domain | None:
        if name not in self._domain_cache:
            self._domain_cache[name] = self.backend.get_domain(name)
        return self._domain_cache[name]

    def _existing_alias_domain(self, name: str) -> AliasDomain | None:
        if name not in self._alias_domain_cache:
            self._alias_domain_cache[name] = self.backend.get_alias_domain(name)
        return self._alias_domain_cache[name]

    def _existing_mailboxes(self, domain: str) -> dict[str, Mailbox]:
        if domain not in self._mb_cache:
            found = self.backend.list_mailboxes(domain) if self._existing_domain(domain) else []
            self._mb_cache[domain] = {m.address: m for m in found}
        return self._mb_cache[domain]

    def _existing_aliases(self, domain: str) -> dict[str, Alias]:
        if domain not in self._al_cache:
            found = self.backend.list_aliases(domain) if self._existing_domain(domain) else []
            self._al_cache[domain] = {a.address: a for a in found}
        return self._al_cache[domain]

    def _final_domain(self, name: str) -> Domain | None:
        pending = self._domains.get(name)
        if pending is not None:
            assert isinstance(pending.obj, Domain)
            return pending.obj
        return self._existing_domain(name)

    def _final_alias_domain(self, name: str) -> AliasDomain | None:
        pending = self._alias_domains.get(name)
        if pending is not None:
            assert isinstance(pending.obj, AliasDomain)
            return pending.obj
        return self._existing_alias_domain(name)

    def _final_mailbox(self, address: str) -> Mailbox | None:
        pending = self._mailboxes.get(address)
        if pending is not None:
            assert isinstance(pending.obj, Mailbox)
            return pending.obj
        return self._existing_mailboxes(domain_of(address)).get(address)

    def _final_alias(self, address: str) -> Alias | None:
        pending = self._aliases.get(address)
        if pending is not None:
            assert isinstance(pending.obj, Alias)
            return pending.obj
        return self._existing_aliases(domain_of(address)).get(address)

    def _domain_name(self, value: Any, name: str) -> str:
        if isinstance(value, str) and value in self._norm_domain:
            return self._norm_domain[value]
        out = _domain(value, name)
        if isinstance(value, str) and len(self._norm_domain) < 10_000:
            self._norm_domain[value] = out
        return out

    def _mailbox_address(self, value: Any) -> str:
        text = _text(value, "address").strip()
        local, at, dom = text.rpartition("@")
        if at and local and dom and dom in self._norm_domain:
            from .model import normalize_local_part

            try:
                return f"{normalize_local_part(local)}@{self._norm_domain[dom]}"
            except InvalidInput as exc:
                raise _invalid(exc) from None
        out = _address(text, "address")
        if dom and len(self._norm_domain) < 10_000:
            self._norm_domain[dom] = domain_of(out)
        return out

    def _hash(self, value: Any) -> str:
        text = _text(value, "password_hash").strip()
        if text in self._hash_ok:
            return text
        check = self._check_hash
        if check is None:
            from .passwords import check_hash

            check = check_hash
        try:
            check(text)
        except InvalidInput as exc:
            raise RowError(str(exc) if exc.field else f"password_hash: {exc}") from None
        if len(self._hash_ok) < 1024:
            self._hash_ok[text] = text
        return text

    # ------------------------------------------------------------ feeding rows

    def error(self, where: str, message: str) -> None:
        self.plan.errors += 1
        self.on_error(f"{where}: {message}")

    def add_rows(self, kind: ImportKind, rows: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """Validate the rows of one kind; kinds must come in :data:`KINDS` order."""
        idx = KINDS.index(kind)
        if idx < self._last_kind:
            raise ValueError(f"{kind} rows must come before {KINDS[self._last_kind]} rows")
        self._last_kind = idx
        handler = {
            "domains": self._domain_row,
            "alias-domains": self._alias_domain_row,
            "mailboxes": self._mailbox_row,
            "aliases": self._alias_row,
        }[kind]
        seen = self._seen[kind]
        for where, row in rows:
            try:
                key = handler(where, row, seen)
            except RowError as exc:
                self.error(where, str(exc))
                continue
            seen[key] = where

    def _dup(self, key: str, seen: Mapping[str, str], what: str) -> None:
        first = seen.get(key)
        if first is not None:
            raise RowError(f"{what} {key} appears twice (first at {first})")

    def _decide(
        self,
        kind: ImportKind,
        where: str,
        key: str,
        want: DirectoryObject,
        old: DirectoryObject | None,
        store: dict[str, _Pending],
    ) -> None:
        if old is None:
            self.plan.counts[kind].create += 1
            store[key] = _Pending(where, want, None)
            return
        if want == old:
            self.plan.counts[kind].unchanged += 1
            return
        if not self.update:
            diff = [
                f.name
                for f in dataclasses.fields(want)
                if getattr(want, f.name) != getattr(old, f.name)
                and f.name not in ("modified", "password_changed")
            ]
            raise RowError(
                f"{_NOUN[kind]} {key} exists with a different "
                f"{', '.join(diff)} (use --update to change it)"
            )
        self.plan.counts[kind].update += 1
        store[key] = _Pending(where, dataclasses.replace(want, modified=self.now), old)  # type: ignore[arg-type]

    def _check_columns(self, row: Mapping[str, Any], kind: ImportKind) -> None:
        unknown = [k for k in row if k not in COLUMNS[kind]]
        if unknown:
            raise RowError(
                f"{unknown[0]}: unknown field (a {kind} row has {', '.join(COLUMNS[kind])})"
            )
        for req in REQUIRED[kind]:
            if not _given(row, req):
                raise RowError(f"{req}: missing")

    def _domain_row(self, where: str, row: Mapping[str, Any], seen: Mapping[str, str]) -> str:
        self._check_columns(row, "domains")
        name = self._domain_name(row["name"], "name")
        self._dup(name, seen, "domain")
        if self._existing_alias_domain(name) is not None:
            raise RowError(f"name: {name} is an alias domain; a domain must not be one")
        old = self._existing_domain(name)
        base = old or Domain(name=name, created=self.now, modified=self.now)
        vals: dict[str, Any] = {}
        if _given(row, "description"):
            vals["description"] = _text(row["description"], "description")
        if _given(row, "active"):
            vals["active"] = _bool(row["active"], "active")
        for f in ("max_mailboxes", "max_aliases", "default_quota"):
            if _given(row, f):
                vals[f] = _size(row[f], f)
        if _given(row, "limits"):
            vals["limits"] = _limits(row["limits"], "limits", self.known_limits)
        want = dataclasses.replace(base, **vals)
        self._decide("domains", where, name, want, old, self._domains)
        return name

    def _alias_domain_row(self, where: str, row: Mapping[str, Any], seen: Mapping[str, str]) -> str:
        self._check_columns(row, "alias-domains")
        name = self._domain_name(row["name"], "name")
        target = self._domain_name(row["target"], "target")
        self._dup(name, seen, "alias domain")
        if name == target:
            raise RowError("target: an alias domain cannot point to itself")
        if self._final_domain(name) is not None:
            raise RowError(f"name: {name} is a real domain; an alias domain must not be one")
        if self._final_domain(target) is None:
            raise RowError(f"target: domain {target} does not exist (nor earlier in this import)")
        if target in self._alias_domains or self._existing_alias_domain(target) is not None:
            raise RowError(f"target: {target} is itself an alias domain")
        old = self._existing_alias_domain(name)
        base = old or AliasDomain(name=name, created=self.now, modified=self.now)
        vals: dict[str, Any] = {"target": target}
        if _given(row, "active"):
            vals["active"] = _bool(row["active"], "active")
        want = dataclasses.replace(base, **vals)
        self._decide("alias-domains", where, name, want, old, self._alias_domains)
        return name

    def _mailbox_row(self, where: str, row: Mapping[str, Any], seen: Mapping[str, str]) -> str:
        self._check_columns(row, "mailboxes")
        addr = self._mailbox_address(row["address"])
        self._dup(addr, seen, "mailbox")
        dname = domain_of(addr)
        dom = self._final_domain(dname)
        if dom is None:
            raise RowError(f"address: domain {dname} does not exist (nor earlier in this import)")
        vals: dict[str, Any] = {}
        if _given(row, "password_hash"):
            vals["password_hash"] = self._hash(row["password_hash"])
        if _given(row, "name"):
            vals["name"] = _text(row["name"], "name")
        if _given(row, "quota"):
            vals["quota"] = _size(row["quota"], "quota")
        if _given(row, "active"):
            vals["active"] = _bool(row["active"], "active")
        if _given(row, "limits"):
            vals["limits"] = _limits(row["limits"], "limits", self.known_limits)
        old = self._existing_mailboxes(dname).get(addr)
        if old is None:
            if "password_hash" not in vals:
                raise RowError(
                    "password_hash: missing: a new mailbox needs one (export with --with-hashes)"
                )
            if dom.max_mailboxes:
                if dname not in self._mb_count:
                    self._mb_count[dname] = (
                        self.backend.count_mailboxes(dname) if self._existing_domain(dname) else 0
                    )
                if self._mb_count[dname] >= dom.max_mailboxes:
                    raise RowError(
                        f"address: domain {dname} is at its cap of {dom.max_mailboxes} mailboxes"
                    )
                self._mb_count[dname] += 1
            base = Mailbox(
                address=addr,
                quota=dom.default_quota,
                created=self.now,
                modified=self.now,
                password_changed=self.now,
            )
            want = dataclasses.replace(base, **vals)
        else:
            want = dataclasses.replace(old, **vals)
            if want.password_hash != old.password_hash:
                want = dataclasses.replace(want, password_changed=self.now)
        alias = self._existing_aliases(dname).get(addr)
        if alias is not None and addr not in alias.targets:
            self._recheck_mailbox_alias.append((where, addr))
        self._decide("mailboxes", where, addr, want, old, self._mailboxes)
        return addr

    def _alias_row(self, where: str, row: Mapping[str, Any], seen: Mapping[str, str]) -> str:
        self._check_columns(row, "aliases")
        try:
            src = normalize_alias_source(_text(row["source"], "source"), "source")
        except InvalidInput as exc:
            raise _invalid(exc) from None
        self._dup(src, seen, "alias")
        targets = _targets(row["targets"], "targets")
        dname = domain_of(src)
        dom = self._final_domain(dname)
        if dom is None:
            raise RowError(f"source: domain {dname} does not exist (nor earlier in this import)")
        if not src.startswith("@") and self._final_mailbox(src) is not None and src not in targets:
            raise RowError(
                f"targets: {src} is a mailbox; an alias for it must keep a copy in the "
                f"mailbox: include {src} itself among the targets"
            )
        old = self._existing_aliases(dname).get(src)
        if old is None:
            if dom.max_aliases:
                if dname not in self._al_count:
                    self._al_count[dname] = len(self._existing_aliases(dname))
                if self._al_count[dname] >= dom.max_aliases:
                    raise RowError(
                        f"source: domain {dname} is at its cap of {dom.max_aliases} aliases"
                    )
                self._al_count[dname] += 1
            base = Alias(address=src, created=self.now, modified=self.now)
        else:
            base = old
        vals: dict[str, Any] = {"targets": targets}
        if old is not None and set(old.targets) == set(targets):
            vals["targets"] = old.targets  # same targets in another order: unchanged
        if _given(row, "active"):
            vals["active"] = _bool(row["active"], "active")
        want = dataclasses.replace(base, **vals)
        self._decide("aliases", where, src, want, old, self._aliases)
        return src

    # ------------------------------------------------------------ cross checks

    def _check_loops(self) -> None:
        if not self._aliases:
            return
        graph: dict[str, tuple[str, ...]] = {
            a.address: a.targets for a in self.backend.list_aliases()
        }
        for key, p in self._aliases.items():
            assert isinstance(p.obj, Alias)
            graph[key] = p.obj.targets
        state: dict[str, int] = {}  # 1 = on the stack, 2 = done
        reported: set[str] = set()
        for start in self._aliases:
            if state.get(start):
                continue
            path: list[str] = [start]
            iters: list[Iterator[str]] = [iter(graph.get(start, ()))]
            state[start] = 1
            while iters:
                node = path[-1]
                nxt = next(iters[-1], None)
                if nxt is None:
                    state[node] = 2
                    path.pop()
                    iters.pop()
                    continue
                if nxt == node or nxt not in graph:
                    continue
                st = state.get(nxt, 0)
                if st == 1:
                    cycle = [*path[path.index(nxt) :], nxt]
                    culprit = next((a for a in cycle if a in self._aliases), start)
                    if culprit not in reported:
                        reported.add(culprit)
                        self.error(
                            self._aliases[culprit].where,
                            f"targets: alias loop: {' -> '.join(cycle)}",
                        )
                elif st == 0:
                    state[nxt] = 1
                    path.append(nxt)
                    iters.append(iter(graph.get(nxt, ())))

    def finish(self) -> ImportPlan:
        """Run the checks that need every row, then build the changes."""
        for where, addr in self._recheck_mailbox_alias:
            alias = self._final_alias(addr)
            if alias is not None and addr not in alias.targets:
                self.error(
                    where,
                    f"address: {addr} is an alias (to {', '.join(alias.targets)}); Postfix would "
                    "never deliver to a mailbox behind it. Remove the alias first",
                )
        self._check_loops()
        plan = self.plan
        plan.changes = []
        if plan.errors:
            return plan
        for store in (self._domains, self._alias_domains, self._mailboxes, self._aliases):
            for p in store.values():
                plan.changes.append(Create(p.obj) if p.existing is None else Replace(p.obj))
        return plan


def import_audit(
    plan: ImportPlan, actor: str, clock: Callable[[], float] = time.time
) -> AuditEntry:
    """The one audit entry of an import: sources and counts, never values or hashes."""
    return AuditEntry(
        ts=clock(),
        actor=actor,
        action="import",
        object=", ".join(plan.sources)[:500] or "import",
        after={"counts": {k: c.as_dict() for k, c in plan.counts.items()}},
    )


def apply_plan(
    backend: Backend, plan: ImportPlan, actor: str, clock: Callable[[], float] = time.time
) -> bool:
    """Write the plan in one all-or-nothing backend write; False when there was nothing."""
    if not plan.ok:
        raise ValueError("refusing to apply a plan with errors")
    if not plan.changes:
        return False
    backend.write(plan.changes, [import_audit(plan, actor, clock)])
    return True


# --------------------------------------------------------------------------- readers

Row = tuple[str, dict[str, Any]]


def detect_kind(header: Sequence[str]) -> ImportKind | None:
    """The kind whose columns a CSV header names, or None."""
    cols = {h.strip().lower() for h in header}
    if "address" in cols:
        return "mailboxes"
    if "source" in cols or "targets" in cols:
        return "aliases"
    if "target" in cols:
        return "alias-domains"
    if "name" in cols:
        return "domains"
    return None


def parse_kind(value: str) -> ImportKind:
    v = value.strip().lower().replace("_", "-")
    for k in KINDS:
        if v in (k, k.rstrip("s")):
            return k
    raise ValueError(f"unknown kind {value!r} (one of {', '.join(KINDS)})")


def _sniff(head: bytes, name: str) -> None:
    if head[:2] == b"\x1f\x8b":
        raise ImportError_(f"{name}: gzip-compressed; decompress it first")
    if b"\0" in head:
        raise ImportError_(f"{name}: binary data (NUL bytes); expected a UTF-8 CSV or JSON file")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as exc:
        raise ImportError_(
            f"{name}: not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8"
        ) from None


class CsvSource:
    """One CSV file (or stream) read lazily: its kind from the header, then its rows."""

    def __init__(
        self,
        stream: IO[bytes],
        name: str,
        kind: ImportKind | None = None,
        size: int = 0,
        progress: Progress | None = None,
    ) -> None:
        self.name = name
        self.size = size
        self.progress = progress
        self._raw = stream
        head = stream.peek(8192)[:8192] if hasattr(stream, "peek") else b""
        _sniff(head, name)
        self._text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="", errors="strict")
        try:
            self._start(kind)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Let go of the text layer; the byte stream stays open (its owner closes it)."""
        with contextlib.suppress(ValueError):
            self._text.detach()

    def _start(self, kind: ImportKind | None) -> None:
        name = self.name
        self._reader = csv.reader(self._lines(), strict=True)
        self._line = 0
        first = self._next_record()
        if first is None:
            raise ImportError_(f"{name}: empty file (expected a header line)")
        line, header = first
        found = detect_kind(header)
        cols = [h.strip().lower() for h in header]
        if kind is None:
            if found is None:
                raise ImportError_(
                    f"{name}:{line}: the header names no known columns; start the file with "
                    "one of: " + "; ".join(",".join(c) for c in COLUMNS.values())
                )
            kind = found
        self.kind: ImportKind = kind
        self._pending: tuple[int, list[str]] | None = None
        if found is None:  # --kind given and no header: the documented column order
            self.columns: list[str] = list(COLUMNS[kind])
            self._pending = (line, header)
        else:
            self.columns = cols
            bad = [c for c in cols if c not in COLUMNS[kind]]
            if bad:
                raise ImportError_(
                    f"{name}:{line}: unknown column {bad[0]!r} for {kind} "
                    f"(columns: {','.join(COLUMNS[kind])})"
                )
            dup = [c for c in cols if cols.count(c) > 1]
            if dup:
                raise ImportError_(f"{name}:{line}: column {dup[0]!r} appears twice")
            missing = REQUIRED[kind] - set(cols)
            if missing:
                raise ImportError_(
                    f"{name}:{line}: {kind} need the column(s) {', '.join(sorted(missing))}"
                )

    def _lines(self) -> Iterator[str]:
        for line in self._text:
            if len(line) > MAX_FIELD:
                line = line[: MAX_FIELD + 1]
            yield line

    def _next_record(self) -> tuple[int, list[str]] | None:
        while True:
            start = self._reader.line_num + 1
            try:
                rec = next(self._reader)
            except StopIteration:
                return None
            except UnicodeDecodeError:
                raise ImportError_(
                    f"{self.name}:{self._reader.line_num + 1}: not UTF-8 text; save it as UTF-8"
                ) from None
            except csv.Error as exc:
                return start, ["\0csv", str(exc)]
            if not rec or all(not c.strip() for c in rec):
                continue
            return start, rec

    def rows(self) -> Iterator[Row]:
        """``(where, row)`` per record; a broken record gives a row the planner rejects."""
        n = 0
        while True:
            if self._pending is not None:
                item: tuple[int, list[str]] | None = self._pending
                self._pending = None
            else:
                item = self._next_record()
            if item is None:
                break
            line, rec = item
            where = f"{self.name}:{line}"
            n += 1
            if self.progress is not None and self.size and n % 2000 == 0:
                with contextlib.suppress(OSError, ValueError):
                    self.progress(min(1.0, self._raw.tell() / self.size))
            if rec and rec[0] == "\0csv":
                yield where, {"\0error": f"not valid CSV ({rec[1]})"}
                continue
            if any("\0" in c for c in rec):
                yield where, {"\0error": "contains a NUL character"}
                continue
            if any(len(c) > MAX_FIELD for c in rec):
                yield where, {"\0error": f"a field is longer than {MAX_FIELD} bytes"}
                continue
            if len(rec) > len(self.columns):
                hint = (
                    " (put values holding commas in double quotes, e.g. argon2 hashes)"
                    if self.kind == "mailboxes"
                    else ""
                )
                msg = f"{len(rec)} fields, the header has {len(self.columns)}{hint}"
                yield where, {"\0error": msg}
                continue
            yield where, dict(zip(self.columns, rec, strict=False))


def json_sources(data: bytes, name: str) -> list[tuple[ImportKind, list[Row]]]:
    """The rows of a JSON export document, per kind (the document is read whole)."""
    _sniff(data[:8192], name)
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ImportError_(f"{name}: not UTF-8 text; save it as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ImportError_(
            f"{name}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})"
        ) from None
    if not isinstance(doc, dict):
        raise ImportError_(f"{name}: expected a JSON object with domains, mailboxes, aliases ...")
    keys = {v: k for k, v in JSON_KEY.items()}
    unknown = [k for k in doc if k not in keys and k != "version"]
    if unknown:
        raise ImportError_(
            f"{name}: unknown key {unknown[0]!r} (expected {', '.join(JSON_KEY.values())})"
        )
    version = doc.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ImportError_(f"{name}: version {version!r} is not supported (only {FORMAT_VERSION})")
    out: list[tuple[ImportKind, list[Row]]] = []
    for kind in KINDS:
        items = doc.get(JSON_KEY[kind], [])
        if not isinstance(items, list):
            raise ImportError_(f"{name}: {JSON_KEY[kind]} must be a list")
        rows: list[Row] = []
        for i, item in enumerate(items):
            where = f"{name}: {JSON_KEY[kind]}[{i}]"
            if not isinstance(item, dict):
                rows.append((where, {"\0error": "must be an object"}))
            else:
                rows.append((where, item))
        out.append((kind, rows))
    return out


class _ErrRowPlanner(ImportPlanner):
    """Planner that also understands the reader's broken-record markers."""

    def _check_columns(self, row: Mapping[str, Any], kind: ImportKind) -> None:
        err = row.get("\0error")
        if err is not None:
            raise RowError(str(err))
        super()._check_columns(row, kind)


def plan_import(
    backend: Backend,
    paths: Sequence[str],
    *,
    kind: ImportKind | None = None,
    fmt: Literal["auto", "csv", "json"] = "auto",
    update: bool = False,
    known_limits: Collection[str] | None = None,
    check_hash: Callable[[str], str] | None = None,
    on_error: ErrorSink | None = None,
    progress: Progress | None = None,
    stdin: IO[bytes] | None = None,
    clock: Callable[[], float] = time.time,
) -> ImportPlan:
    """Read and validate every input into one plan (no write). ``-`` reads ``stdin``.

    A directory stands for the ``<kind>.csv`` files (and ``directory.json``) inside it.
    Unreadable files raise :class:`ImportError_`; bad rows are counted in ``plan.errors``.
    """
    planner = _ErrRowPlanner(
        backend,
        update=update,
        known_limits=known_limits,
        check_hash=check_hash,
        on_error=on_error,
        clock=clock,
    )
    files: list[str] = []
    for p in paths:
        if p != "-" and os.path.isdir(p):
            found = [
                os.path.join(p, f"{k}.csv")
                for k in KINDS
                if os.path.isfile(os.path.join(p, f"{k}.csv"))
            ]
            if os.path.isfile(os.path.join(p, "directory.json")):
                found.append(os.path.join(p, "directory.json"))
            if not found:
                raise ImportError_(f"{p}: no {', '.join(f'{k}.csv' for k in KINDS)} in it")
            files.extend(found)
        else:
            files.append(p)
    if not files:
        raise ImportError_("nothing to import: give a file, a directory or -")
    total = 0
    opened: list[tuple[str, IO[bytes], int]] = []
    with contextlib.ExitStack() as stack:
        for f in files:
            if f == "-":
                if stdin is None:
                    raise ImportError_("-: no standard input")
                opened.append(("<stdin>", stdin, 0))
                continue
            try:
                bf = stack.enter_context(open(f, "rb"))
                size = os.fstat(bf.fileno()).st_size
            except OSError as exc:
                raise ImportError_(f"{f}: cannot read ({exc.strerror})") from None
            opened.append((os.path.basename(f), bf, size))
            total += size
        # split into CSV sources (streamed) and JSON documents (read whole)
        by_kind: dict[ImportKind, list[Iterable[Row]]] = {k: [] for k in KINDS}
        done = 0
        for name, fh, size in opened:
            planner.plan.sources.append(name)
            is_json = fmt == "json" or (fmt == "auto" and _looks_json(fh, name))
            if is_json:
                data = fh.read()
                for k, doc_rows in json_sources(data, name):
                    if doc_rows:
                        by_kind[k].append(doc_rows)
                done += size
            else:

                def prog(frac: float, _size: int = size, _done: int = done) -> None:
                    if progress is not None and total:
                        progress((_done + frac * _size) / total)

                src = CsvSource(
                    fh,  # type: ignore[arg-type]
                    name,
                    kind,
                    size=size,
                    progress=prog if progress is not None else None,
                )
                stack.callback(src.close)
                by_kind[src.kind].append(src.rows())
                done += size
        for k in KINDS:
            for rows in by_kind[k]:
                planner.add_rows(k, rows)
        plan = planner.finish()
    if progress is not None:
        progress(1.0)
    return plan


def _looks_json(fh: IO[bytes], name: str) -> bool:
    if name.lower().endswith(".json"):
        return True
    if name.lower().endswith(".csv"):
        return False
    head = fh.peek(64)[:64] if hasattr(fh, "peek") else b""
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{")


# --------------------------------------------------------------------------- export


def _limits_json(limits: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    return {k: list(v) for k, v in limits.items()}


def _limits_csv(limits: Mapping[str, Sequence[str]]) -> str:
    return ";".join(f"{k}={','.join(v) if v else 'unlimited'}" for k, v in limits.items())


def export_records(
    backend: Backend, kind: ImportKind, *, with_hashes: bool = False
) -> Iterator[dict[str, Any]]:
    """The objects of one kind as import rows (JSON values). TOTP secrets never; hashes only
    with ``with_hashes``."""
    if kind == "domains":
        for d in backend.list_domains():
            yield {
                "name": d.name,
                "description": d.description,
                "active": d.active,
                "max_mailboxes": d.max_mailboxes,
                "max_aliases": d.max_aliases,
                "default_quota": d.default_quota,
                "limits": _limits_json(d.limits),
            }
    elif kind == "alias-domains":
        for a in backend.list_alias_domains():
            yield {"name": a.name, "target": a.target, "active": a.active}
    elif kind == "mailboxes":
        for m in backend.list_mailboxes():
            rec: dict[str, Any] = {"address": m.address}
            if with_hashes:
                rec["password_hash"] = m.password_hash
            rec.update(
                {
                    "name": m.name,
                    "quota": m.quota,
                    "active": m.active,
                    "limits": _limits_json(m.limits),
                }
            )
            yield rec
    else:
        for al in backend.list_aliases():
            yield {"source": al.address, "targets": list(al.targets), "active": al.active}


def csv_columns(kind: ImportKind, with_hashes: bool) -> list[str]:
    return [c for c in COLUMNS[kind] if with_hashes or c != "password_hash"]


def _csv_cell(value: Any, column: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if column == "limits":
        return _limits_csv(value)
    if column == "targets":
        return " ".join(value)
    return str(value)


def write_csv(
    out: IO[str], backend: Backend, kind: ImportKind, *, with_hashes: bool = False
) -> int:
    """Write one kind as CSV with its header; returns the number of rows."""
    cols = csv_columns(kind, with_hashes)
    w = csv.writer(out, lineterminator="\n")
    w.writerow(cols)
    n = 0
    for rec in export_records(backend, kind, with_hashes=with_hashes):
        w.writerow([_csv_cell(rec[c], c) for c in cols])
        n += 1
    return n


def write_json(
    out: IO[str],
    backend: Backend,
    kinds: Sequence[ImportKind] = KINDS,
    *,
    with_hashes: bool = False,
) -> dict[str, int]:
    """Write the export document (one object per line inside its list); returns counts."""
    counts: dict[str, int] = {}
    out.write(f'{{"version": {FORMAT_VERSION}')
    for kind in kinds:
        key = JSON_KEY[kind]
        out.write(f',\n"{key}": [')
        n = 0
        for rec in export_records(backend, kind, with_hashes=with_hashes):
            out.write(",\n  " if n else "\n  ")
            out.write(json.dumps(rec, ensure_ascii=False, sort_keys=False))
            n += 1
        out.write("\n]" if n else "]")
        counts[key] = n
    out.write("}\n")
    return counts


# --------------------------------------------------------------------------- atomic files


def _fsync_dir(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: int = 0o600) -> Iterator[IO[bytes]]:
    """A binary file that appears at ``path`` (created with ``mode``) only when the block
    succeeds: temp file beside it, fsync, rename, fsync of the directory."""
    target = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(target))
    tmp = os.path.join(parent, f".{os.path.basename(target)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(parent)
