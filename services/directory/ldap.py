"""The OpenLDAP directory backend (ldap3, synchronous, thread-safe through a connection pool).

Layout, schema and value mapping live in :mod:`services.directory.ldap_dit`; this module does
the I/O. Every DN value is escaped with ``escape_rdn`` (NUL refused) and every filter value
with ``escape_filter_chars``. Connections come from a bounded pool of ``pool_size`` bound
connections over a :class:`ldap3.ServerPool` of ``uris`` (round robin; a new connection tries
every URI once before giving up, without ldap3's 10 s pool-retry sleep), each with a connect
and a (whole-second) receive timeout, optionally upgraded with StartTLS before the bind. A
socket error, a timeout or an unreachable pool is :class:`~.model.Unavailable`, never
NotFound; an idle connection the server dropped is replaced and the operation retried once.

:meth:`LdapBackend.write` is *best effort* atomic: LDAP has no multi-entry transactions, so
changes are applied in order and, if one fails, the ones already applied are undone in
reverse (re-adding deleted entries, restoring replaced attributes) before the error is
raised. A second writer interleaving, or the server going away mid-batch, can leave a batch
half applied. Audit entries are appended under ``ou=audit`` after the changes succeeded,
numbered by a compare-and-swap counter (``pfmNextId`` on ``ou=audit``: delete old value, add
new value in one modify, retried on a race).
"""

from __future__ import annotations

import contextlib
import functools
import math
import queue
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeAlias, TypeVar

from ..config import LdapConfig, read_secret_file
from . import ldap_dit as dit_map
from .ldap3_compat import exceptions as ldap_exc
from .ldap3_compat import ldap3
from .ldap_dit import Attrs, Dit, RawAttrs, filter_value
from .model import (
    KIND_OF,
    Admin,
    Alias,
    AliasDomain,
    AlreadyExists,
    AppPassword,
    AuditEntry,
    Change,
    Conflict,
    Create,
    Delete,
    DirectoryError,
    DirectoryObject,
    Domain,
    InvalidInput,
    Kind,
    Mailbox,
    NotFound,
    Replace,
    Unavailable,
    normalize_alias_source,
)
from .sqlite import _address, _canonical, _canonical_key, _domain, _lookup

__all__ = ["LdapBackend", "open_ldap"]

BASE, LEVEL, SUBTREE, ROUND_ROBIN, NONE, SYNC = (
    ldap3.BASE, ldap3.LEVEL, ldap3.SUBTREE, ldap3.ROUND_ROBIN, ldap3.NONE, ldap3.SYNC,
)  # fmt: skip
MODIFY_ADD, MODIFY_DELETE, MODIFY_REPLACE = (
    ldap3.MODIFY_ADD,
    ldap3.MODIFY_DELETE,
    ldap3.MODIFY_REPLACE,
)
Server, ServerPool, Tls = ldap3.Server, ldap3.ServerPool, ldap3.Tls
Conn: TypeAlias = Any  # an ldap3.Connection (ldap3 ships no type hints)

T = TypeVar("T")

PAGE_SIZE = 500
PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"

_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    ldap_exc.LDAPCommunicationError,
    ldap_exc.LDAPServerPoolExhaustedError,
    ldap_exc.LDAPResponseTimeoutError,
    ldap_exc.LDAPStartTLSError,
    ldap_exc.LDAPMaximumRetriesError,
    ldap_exc.LDAPBindError,
    OSError,
)

# result codes (RFC 4511)
_NO_SUCH_ATTRIBUTE = 16
_NO_SUCH_OBJECT = 32
_INVALID_DN = 34
_INVALID_CREDENTIALS = 49
_INSUFFICIENT_ACCESS = 50
_NOT_ALLOWED_ON_NON_LEAF = 66
_ALREADY_EXISTS = 68
_VALUE_EXISTS = 20
_TEMPORARY = frozenset({3, 11, 51, 52, 80})  # timeLimit, adminLimit, busy, unavailable, other
_BAD_VALUE = frozenset({17, 18, 19, 21, 64, 65, 67, 69})

_LABEL: dict[Kind, str] = {
    "domain": "domain",
    "mailbox": "mailbox",
    "alias": "alias",
    "alias_domain": "alias domain",
    "app_password": "app password",
    "admin": "admin",
}


class _ServerDown(Exception):
    """One server of the pool could not be reached or timed out (internal)."""


class _ConnectionPool:
    """At most ``size`` bound connections, each used by one thread at a time."""

    def __init__(self, factory: Callable[[], Conn], size: int, wait: float) -> None:
        self._factory = factory
        self._idle: queue.LifoQueue[Conn] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(max(1, size))
        self._wait = wait
        self._closed = False

    def acquire(self) -> tuple[Conn, bool]:
        """A connection and whether it was used before (may have gone stale)."""
        if self._closed:
            raise Unavailable("the LDAP backend is closed")
        if not self._slots.acquire(timeout=self._wait):
            raise Unavailable("all LDAP connections are busy (pool_size reached); try again")
        try:
            return self._idle.get_nowait(), True
        except queue.Empty:
            pass
        try:
            return self._factory(), False
        except BaseException:
            self._slots.release()
            raise

    def release(self, conn: Conn) -> None:
        if self._closed:
            _unbind(conn)
        else:
            self._idle.put(conn)
        self._slots.release()

    def discard(self, conn: Conn) -> None:
        _unbind(conn)
        self._slots.release()

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                _unbind(self._idle.get_nowait())
            except queue.Empty:
                return


def _unbind(conn: Conn) -> None:
    with contextlib.suppress(Exception):  # closing a dead socket may fail; nothing to do
        conn.unbind()
    sock = getattr(conn, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()  # ldap3 leaves the socket of a failed open() unclosed


class LdapBackend:
    """:class:`~services.directory.backend.Backend` on an OpenLDAP server with the pfm schema."""

    kind = "ldap"

    def __init__(self, config: LdapConfig, *, password: str | None = None) -> None:
        if not config.uris:
            raise InvalidInput("directory.ldap.uris", "needs at least one ldap:// or ldaps:// URI")
        self.config = config
        self.dit = Dit(config.base_dn)
        if password is None:
            password = (
                read_secret_file(config.bind_password_file) if config.bind_password_file else ""
            )
        self._password = password
        tls = None
        if config.start_tls or any(u.lower().startswith("ldaps://") for u in config.uris):
            tls = Tls(
                ca_certs_file=config.ca_file or None,
                validate=ssl.CERT_REQUIRED,
                version=ssl.PROTOCOL_TLS_CLIENT,
            )
        servers = [
            Server(uri, connect_timeout=float(config.connect_timeout), get_info=NONE, tls=tls)
            for uri in config.uris
        ]
        # active=False: ldap3's own availability loop sleeps 10 s per failed cycle; instead each
        # new connection tries the servers round robin itself (see _connect).
        self._server_list = servers
        self._servers = ServerPool(servers, ROUND_ROBIN, active=False, exhaust=False)
        wait = float(config.connect_timeout) + float(config.timeout)
        self._pool = _ConnectionPool(self._connect, config.pool_size, wait)

    def __repr__(self) -> str:
        return f"LdapBackend(uris={list(self.config.uris)!r}, base_dn={self.config.base_dn!r})"

    # ------------------------------------------------------------------ connections

    def _connect(self) -> Conn:
        """A new bound connection: each URI of the pool is tried once, in round-robin order."""
        failure = "no URI answered"
        for server in self._server_list:
            server.reset_availability()  # we do the failover; ldap3 would skip "down" addresses
        for _ in self.config.uris:
            try:
                return self._connect_one()
            except _ServerDown as exc:
                failure = str(exc)
        raise Unavailable(
            f"cannot reach the LDAP server(s) {', '.join(self.config.uris)}: {failure}"
        )

    def _connect_one(self) -> Conn:
        cfg = self.config
        conn = ldap3.Connection(
            self._servers,
            user=cfg.bind_dn or None,
            password=self._password or None,
            client_strategy=SYNC,
            raise_exceptions=False,
            # ldap3 packs this into SO_RCVTIMEO as whole seconds
            receive_timeout=max(1, math.ceil(float(cfg.timeout))),
            read_only=False,
            check_names=False,
            auto_referrals=False,
        )
        try:
            conn.open()
            if cfg.start_tls and not conn.start_tls():
                raise Unavailable("StartTLS with the LDAP server failed")
            if cfg.bind_dn and not conn.bind():
                code = conn.result.get("result")
                desc = conn.result.get("description", "")
                if code == _INVALID_CREDENTIALS:
                    raise Unavailable(
                        f"LDAP bind as {cfg.bind_dn} was refused (invalid credentials); "
                        "check directory.ldap.bind_dn and bind_password_file"
                    )
                raise Unavailable(f"LDAP bind as {cfg.bind_dn} failed ({desc})")
        except _TRANSPORT_ERRORS as exc:
            _unbind(conn)
            raise _ServerDown(type(exc).__name__) from None
        except BaseException:
            _unbind(conn)
            raise
        return conn

    def _call(self, fn: Callable[[Conn], T], *, may_retry: Callable[[], bool] = lambda: True) -> T:
        for attempt in (0, 1):
            conn, reused = self._pool.acquire()
            try:
                result = fn(conn)
            except _TRANSPORT_ERRORS as exc:
                self._pool.discard(conn)
                timed_out = "timed out" in str(exc) or isinstance(exc, TimeoutError)
                if reused and attempt == 0 and not timed_out and may_retry():
                    continue
                what = "timed out" if timed_out else f"failed ({type(exc).__name__})"
                raise Unavailable(f"LDAP request to {', '.join(self.config.uris)} {what}") from None
            except BaseException:
                self._pool.release(conn)
                raise
            self._pool.release(conn)
            return result
        raise Unavailable("LDAP request failed")  # pragma: no cover - loop always returns

    def close(self) -> None:
        self._pool.close()

    # ------------------------------------------------------------------ primitives

    @staticmethod
    def _check(conn: Conn, label: str) -> None:
        res: dict[str, Any] = conn.result or {}
        code = res.get("result", 0)
        if code == 0:
            return
        desc = str(res.get("description", ""))
        msg = str(res.get("message", ""))[:200]
        detail = f"{desc}: {msg}" if msg else desc
        if code == _ALREADY_EXISTS:
            raise AlreadyExists(f"{label} already exists")
        if code == _NO_SUCH_OBJECT:
            raise NotFound(f"{label} does not exist")
        if code == _NOT_ALLOWED_ON_NON_LEAF:
            raise Conflict(f"{label} still has entries below it")
        if code in _TEMPORARY:
            raise Unavailable(f"the LDAP server could not handle {label} now ({detail})")
        if code == _INSUFFICIENT_ACCESS:
            raise DirectoryError(f"the LDAP server's ACLs do not allow this change to {label}")
        if code == _INVALID_DN or code in _BAD_VALUE:
            raise InvalidInput("", f"the LDAP server refused {label} ({detail})")
        raise DirectoryError(f"LDAP error on {label} ({detail})")

    def _search(
        self, conn: Conn, base: str, flt: str, scope: str = LEVEL, attrs: Any = "*"
    ) -> list[tuple[str, RawAttrs]]:
        out: list[tuple[str, RawAttrs]] = []
        cookie: Any = None
        while True:
            conn.search(
                base,
                flt,
                search_scope=scope,
                attributes=attrs,
                paged_size=PAGE_SIZE if scope != BASE else None,
                paged_cookie=cookie,
            )
            code = (conn.result or {}).get("result", 0)
            if code in (_NO_SUCH_OBJECT, _INVALID_DN):
                return out
            self._check(conn, f"search below {base}")
            for r in conn.response or ():
                if r.get("type") == "searchResEntry":
                    out.append((str(r["dn"]), r["raw_attributes"]))
            controls = (conn.result or {}).get("controls") or {}
            cookie = controls.get(PAGED_RESULTS_OID, {}).get("value", {}).get("cookie")
            if not cookie:
                return out

    def _read(self, conn: Conn, dn: str) -> RawAttrs | None:
        found = self._search(conn, dn, "(objectClass=*)", BASE)
        return found[0][1] if found else None

    def _get(self, kind: Kind, key: str | None) -> RawAttrs | None:
        if key is None:
            return None
        try:
            dn = self.dit.dn(kind, key)
        except InvalidInput:
            return None
        return self._call(lambda c: self._read(c, dn))

    def _list(self, kind: Kind, flt: str) -> list[RawAttrs]:
        base = self.dit.container(kind)
        full = f"(&(objectClass={dit_map.OBJECT_CLASS_OF[kind]}){flt})"
        return [a for _dn, a in self._call(lambda c: self._search(c, base, full))]

    # ------------------------------------------------------------------ reads

    def get_domain(self, name: str) -> Domain | None:
        a = self._get("domain", _lookup(_domain, name))
        return dit_map.domain_from(a) if a else None

    def list_domains(self) -> list[Domain]:
        return sorted(
            (dit_map.domain_from(a) for a in self._list("domain", "")), key=lambda d: d.name
        )

    def get_mailbox(self, address: str) -> Mailbox | None:
        a = self._get("mailbox", _lookup(_address, address))
        return dit_map.mailbox_from(a) if a else None

    def _domain_filter(self, domain: str | None) -> str | None:
        if domain is None:
            return ""
        name = _lookup(_domain, domain)
        return None if name is None else f"(mail=*@{filter_value(name)})"

    def list_mailboxes(self, domain: str | None = None) -> list[Mailbox]:
        flt = self._domain_filter(domain)
        if flt is None:
            return []
        found = (dit_map.mailbox_from(a) for a in self._list("mailbox", flt))
        return sorted(found, key=lambda m: m.address)

    def list_mailboxes_with_limits(self) -> list[Mailbox]:
        """Mailboxes with limit overrides only (what pfm-policyd reads every minute)."""
        found = (dit_map.mailbox_from(a) for a in self._list("mailbox", "(pfmLimits=*)"))
        return sorted(found, key=lambda m: m.address)

    def count_mailboxes(self, domain: str) -> int:
        flt = self._domain_filter(domain)
        if flt is None:
            return 0
        base = self.dit.container("mailbox")
        full = f"(&(objectClass=pfmMailbox){flt})"
        return len(self._call(lambda c: self._search(c, base, full, attrs=["1.1"])))

    def get_alias(self, address: str) -> Alias | None:
        a = self._get("alias", _lookup(normalize_alias_source, address))
        return dit_map.alias_from(a) if a else None

    def list_aliases(self, domain: str | None = None) -> list[Alias]:
        flt = self._domain_filter(domain)
        if flt is None:
            return []
        found = (dit_map.alias_from(a) for a in self._list("alias", flt))
        return sorted(found, key=lambda a: a.address)

    def get_alias_domain(self, name: str) -> AliasDomain | None:
        a = self._get("alias_domain", _lookup(_domain, name))
        return dit_map.alias_domain_from(a) if a else None

    def list_alias_domains(self) -> list[AliasDomain]:
        found = (dit_map.alias_domain_from(a) for a in self._list("alias_domain", ""))
        return sorted(found, key=lambda a: a.name)

    def _find_app_password(self, conn: Conn, id: str) -> tuple[str, RawAttrs] | None:
        flt = f"(&(objectClass=pfmAppPassword)(pfmAppPasswordId={filter_value(id)}))"
        found = self._search(conn, self.dit.container("mailbox"), flt, SUBTREE)
        return found[0] if found else None

    def get_app_password(self, id: str) -> AppPassword | None:
        if not id or not isinstance(id, str) or "\x00" in id:
            return None
        found = self._call(lambda c: self._find_app_password(c, id))
        if found is None:
            return None
        dn, attrs = found
        return dit_map.app_password_from(attrs, dit_map.address_of_app_password_dn(dn))

    def list_app_passwords(self, address: str) -> list[AppPassword]:
        addr = _lookup(_address, address)
        if addr is None:
            return []
        base = self.dit.dn("mailbox", addr)
        found = self._call(lambda c: self._search(c, base, "(objectClass=pfmAppPassword)"))
        return sorted((dit_map.app_password_from(a, addr) for _dn, a in found), key=lambda p: p.id)

    def get_admin(self, name: str) -> Admin | None:
        a = self._get("admin", name or None)
        return dit_map.admin_from(a) if a else None

    def list_admins(self) -> list[Admin]:
        return sorted(
            (dit_map.admin_from(a) for a in self._list("admin", "")), key=lambda a: a.name
        )

    def audit_log(self, since: float = 0.0, limit: int = 0) -> list[AuditEntry]:
        """Entries with ``ts >= since``, oldest first; ``limit > 0`` keeps the newest ones."""
        flt = "(objectClass=pfmAuditEntry)"
        if since > 0:
            flt = f"(&{flt}(pfmTimeSec>={int(since)}))"
        found = self._call(lambda c: self._search(c, self.dit.audit, flt))
        entries = sorted(
            (e for e in (dit_map.audit_from(a) for _dn, a in found) if e.ts >= since),
            key=lambda e: e.id,
        )
        return entries[-limit:] if limit > 0 else entries

    # ------------------------------------------------------------------ write

    def write(self, changes: Sequence[Change], audit: Sequence[AuditEntry]) -> None:
        """Apply ``changes`` in order, then append ``audit``; undo applied changes on failure."""
        batch = [_normalise_change(c) for c in changes]
        if not batch and not audit:
            return
        applied: list[Callable[[Conn], None]] = []
        self._call(
            lambda conn: self._write(conn, batch, audit, applied), may_retry=lambda: not applied
        )

    def _write(
        self,
        conn: Conn,
        batch: list[Change],
        audit: Sequence[AuditEntry],
        undo: list[Callable[[Conn], None]],
    ) -> None:
        try:
            for change in batch:
                self._apply(conn, change, undo)
            if audit:
                self._append_audit(conn, audit)
        except DirectoryError:
            for step in reversed(undo):
                try:
                    step(conn)
                except Exception:  # noqa: S112 - best effort; keep undoing the rest
                    continue
            raise

    def _apply(self, conn: Conn, change: Change, undo: list[Callable[[Conn], None]]) -> None:
        if isinstance(change, Delete):
            self._delete(conn, change.kind, change.key, undo)
            return
        obj = change.obj
        kind = KIND_OF[type(obj)]
        label = f"{_LABEL[kind]} {dit_map.key_value(obj)}"
        self._check_references(conn, obj, label)
        dn, attrs = dit_map.to_entry(obj, self.dit)
        if isinstance(change, Create):
            if isinstance(obj, AppPassword) and self._find_app_password(conn, obj.id):
                raise AlreadyExists(f"{label} already exists")
            conn.add(dn, attributes=attrs)
            if isinstance(obj, AppPassword) and conn.result.get("result") == _NO_SUCH_OBJECT:
                raise NotFound(f"mailbox {obj.address} does not exist (needed by {label})")
            self._check(conn, label)
            undo.append(lambda c: self._raw_delete(c, dn))
            return
        if isinstance(obj, AppPassword):
            found = self._find_app_password(conn, obj.id)
            if found is None:
                raise NotFound(f"{label} does not exist")
            if found[0].lower() != dn.lower():
                raise InvalidInput("address", "an app password cannot move to another mailbox")
        old = self._read(conn, dn)
        if old is None:
            raise NotFound(f"{label} does not exist")
        conn.modify(dn, _replace_changes(old, attrs))
        self._check(conn, label)
        undo.append(lambda c: self._restore(c, dn, attrs, old))

    def _check_references(self, conn: Conn, obj: DirectoryObject, label: str) -> None:
        """The referential checks the SQLite schema does with foreign keys."""
        needed: str | None = None
        if isinstance(obj, Mailbox | Alias):
            needed = obj.domain
        elif isinstance(obj, AliasDomain):
            needed = obj.target
        if needed is not None and self._read(conn, self.dit.dn("domain", needed)) is None:
            raise NotFound(f"domain {needed} does not exist (needed by {label})")

    def _restore(self, conn: Conn, dn: str, new: Attrs, old: RawAttrs) -> None:
        current = {k: list(v) for k, v in new.items()}
        conn.modify(dn, _replace_changes(current, {k: list(v) for k, v in old.items()}))

    def _raw_delete(self, conn: Conn, dn: str) -> None:
        conn.delete(dn)

    def _raw_add(self, conn: Conn, dn: str, attrs: RawAttrs) -> None:
        conn.add(dn, attributes={k: list(v) for k, v in attrs.items()})

    def _delete(self, conn: Conn, kind: Kind, key: str, undo: list[Callable[[Conn], None]]) -> None:
        label = f"{_LABEL[kind]} {key}"
        if kind == "app_password":
            found = self._find_app_password(conn, key)
            if found is None:
                raise NotFound(f"{label} does not exist")
            dn, old = found
            conn.delete(dn)
            self._check(conn, label)
            undo.append(lambda c: self._raw_add(c, dn, old))
            return
        dn = self.dit.dn(kind, key)
        entry = self._read(conn, dn)
        if entry is None:
            raise NotFound(f"{label} does not exist")
        if kind == "domain":
            self._check_domain_unused(conn, key)
        children = (
            self._search(conn, dn, "(objectClass=pfmAppPassword)") if kind == "mailbox" else []
        )
        for child_dn, child in children:
            conn.delete(child_dn)
            self._check(conn, label)
            undo.append(functools.partial(self._raw_add, dn=child_dn, attrs=child))
        conn.delete(dn)
        self._check(conn, label)
        undo.append(lambda c: self._raw_add(c, dn, entry))

    def _check_domain_unused(self, conn: Conn, name: str) -> None:
        flt = f"(mail=*@{filter_value(name)})"
        counts = [
            len(self._search(conn, self.dit.container("mailbox"), f"(&(objectClass=pfmMailbox){flt})", attrs=["1.1"])),
            len(self._search(conn, self.dit.container("alias"), f"(&(objectClass=pfmAlias){flt})", attrs=["1.1"])),
            len(self._search(conn, self.dit.container("alias_domain"),
                             f"(&(objectClass=pfmAliasDomain)(pfmTargetDomain={filter_value(name)}))",
                             attrs=["1.1"])),
        ]  # fmt: skip
        if any(counts):
            raise Conflict(
                f"domain {name} still has {counts[0]} mailbox(es), {counts[1]} alias(es) and "
                f"{counts[2]} alias domain(s); remove them first"
            )

    def _append_audit(self, conn: Conn, audit: Sequence[AuditEntry]) -> None:
        first = self._reserve_ids(conn, len(audit))
        for i, entry in enumerate(audit):
            dn, attrs = dit_map.audit_to_entry(entry, first + i, self.dit)
            conn.add(dn, attributes=attrs)
            self._check(conn, f"audit entry {first + i}")

    def _reserve_ids(self, conn: Conn, count: int) -> int:
        """Take ``count`` audit ids with a compare-and-swap on ``pfmNextId``."""
        for _ in range(50):
            entry = self._read(conn, self.dit.audit)
            if entry is None:
                raise NotFound(f"{self.dit.audit} does not exist (load the base DIT)")
            nxt = dit_map.get_int(entry, "pfmNextId", 0)
            new = str((nxt or 1) + count).encode()
            if nxt:
                ops = [(MODIFY_DELETE, [str(nxt).encode()]), (MODIFY_ADD, [new])]
            else:
                ops = [(MODIFY_ADD, [new])]
            conn.modify(self.dit.audit, {"pfmNextId": ops})
            code = (conn.result or {}).get("result", 0)
            if code in (_NO_SUCH_ATTRIBUTE, _VALUE_EXISTS):
                continue  # another writer took ids first
            self._check(conn, "the audit counter")
            return nxt or 1
        raise Unavailable("could not reserve audit ids (too much contention)")


def _replace_changes(old: RawAttrs, new: Attrs) -> dict[str, list[tuple[str, list[bytes]]]]:
    """A modify turning an entry with ``old`` attributes into one with ``new`` ones."""
    wanted = {k.lower(): (k, v) for k, v in new.items()}
    changes: dict[str, list[tuple[str, list[bytes]]]] = {}
    for name, values in wanted.values():
        changes[name] = [(MODIFY_REPLACE, list(values))]
    for name in old:
        if name.lower() not in wanted:
            changes[name] = [(MODIFY_REPLACE, [])]
    return changes


def _normalise_change(change: Change) -> Change:
    if isinstance(change, Create | Replace):
        if type(change.obj) not in KIND_OF:
            raise InvalidInput("kind", f"{type(change.obj).__name__} is not storable")
        obj = _canonical(change.obj)
        return change if obj is change.obj else type(change)(obj)
    if isinstance(change, Delete):
        key = _canonical_key(change.kind, change.key)
        return change if key == change.key else Delete(change.kind, key)
    raise InvalidInput("change", f"{type(change).__name__} is not a change")


@contextmanager
def open_ldap(config: LdapConfig) -> Iterator[LdapBackend]:
    """An :class:`LdapBackend` closed on exit."""
    backend = LdapBackend(config)
    try:
        yield backend
    finally:
        backend.close()
