"""The SQLite directory backend (stdlib + model only, so the CLI starts fast).

Two files. The directory itself, created ``0600`` (its parent ``0750`` if missing), holds
everything including password hashes and TOTP secrets. Beside it, the **maps file**
(:mod:`.sqlite_maps`, ``0640``, group ``postfix``) holds a secret-free copy of the lookup
tables for Postfix and Dovecot's userdb, which run as unprivileged users.

Both use the rollback journal (``journal_mode=DELETE``, ``synchronous=FULL``): SQLite commits
a transaction over a database and its ATTACHed databases atomically (super-journal) only
outside WAL mode, and a reader with read permission alone can read a rollback-journal file
(not a WAL one). A directory file still in WAL mode is switched at open.

Foreign keys on, a 5 s busy timeout. The schema is versioned and migrated at open
(:mod:`.sqlite_schema`). Each thread gets its own connection; :meth:`SqliteBackend.write`
applies a batch of changes plus their audit entries in one ``BEGIN IMMEDIATE`` transaction,
all-or-nothing, inserting runs of same-kind changes with ``executemany``; in the same
transaction it brings the maps rows of every object the batch touched in step and, when any
lookup row changed, bumps the ``generation`` counter both files carry (a write that changes no
lookup data, such as a TOTP step or a password, leaves the maps file alone). At open, and at each write, a maps file that is
missing, replaced, or at another generation is rebuilt from the directory in one transaction.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .model import (
    KIND_OF,
    SCOPES,
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
    Mailbox,
    NotFound,
    Replace,
    Unavailable,
    key_of,
    normalize_alias_source,
    normalize_local_part,
)
from .model import normalize_domain as _normalize_domain
from .sqlite_maps import (
    BUMP_GENERATION,
    GENERATIONS,
    MAPS_APPLICATION_ID,
    MAPS_FORMAT_VERSION,
    SCHEMA,
    SCHEMA_STATEMENTS,
    TABLES,
    TABLES_OF_KIND,
    create_maps_file,
    give_folder_to_group,
    group_id,
    resolve_maps_path,
    unreachable_by_group,
)
from .sqlite_rows import AUDIT_COLUMNS, KIND_LABEL, SPECS, Row, TableSpec, audit_entry, audit_row
from .sqlite_rows import parent_key as _parent_key
from .sqlite_schema import migrate

__all__ = ["SqliteBackend", "open_sqlite"]


@functools.lru_cache(maxsize=4096)
def _domain(name: str, field_name: str = "domain") -> str:
    return _normalize_domain(name, field_name)


def _address(value: str, field_name: str = "address") -> str:
    """``normalize_address`` with the domain part cached (bulk imports share few domains)."""
    if not isinstance(value, str):
        raise InvalidInput(field_name, "must be a string")
    local, at, domain = value.strip().rpartition("@")
    if not at:
        raise InvalidInput(field_name, f"{value!r} is not an address (no @)")
    return f"{normalize_local_part(local, field_name)}@{_domain(domain, field_name)}"


def _canonical(obj: DirectoryObject) -> DirectoryObject:
    """``obj`` with its keys and references in normal form, or :class:`InvalidInput`."""
    if isinstance(obj, Domain):
        name = _domain(obj.name)
        return obj if name == obj.name else dataclasses.replace(obj, name=name)
    if isinstance(obj, Mailbox):
        addr = _address(obj.address)
        return obj if addr == obj.address else dataclasses.replace(obj, address=addr)
    if isinstance(obj, Alias):
        src = normalize_alias_source(obj.address)
        if not isinstance(obj.targets, tuple | list):
            raise InvalidInput("targets", "must be a list of addresses")
        targets = tuple(_address(t, "targets") for t in obj.targets)
        if src == obj.address and targets == obj.targets:
            return obj
        return dataclasses.replace(obj, address=src, targets=targets)
    if isinstance(obj, AliasDomain):
        name, target = _domain(obj.name, "name"), _domain(obj.target, "target")
        if (name, target) == (obj.name, obj.target):
            return obj
        return dataclasses.replace(obj, name=name, target=target)
    if isinstance(obj, AppPassword):
        if not obj.id or not isinstance(obj.id, str):
            raise InvalidInput("id", "an app password needs an id")
        bad = [s for s in obj.scopes if s not in SCOPES]
        if bad:
            raise InvalidInput("scopes", f"unknown scope {bad[0]!r} (known: {', '.join(SCOPES)})")
        addr = _address(obj.address)
        return obj if addr == obj.address else dataclasses.replace(obj, address=addr)
    if isinstance(obj, Admin):
        if not obj.name or not isinstance(obj.name, str):
            raise InvalidInput("name", "an admin needs a name")
        if obj.role not in ("global", "domain"):
            raise InvalidInput("role", f"{obj.role!r} is not 'global' or 'domain'")
        if not isinstance(obj.domains, tuple | list):
            raise InvalidInput("domains", "must be a list of domains")
        domains = tuple(_domain(d, "domains") for d in obj.domains)
        return obj if domains == obj.domains else dataclasses.replace(obj, domains=domains)
    raise InvalidInput("kind", f"{type(obj).__name__} is not a directory object")


def _canonical_key(kind: str, key: str) -> str:
    if kind == "domain" or kind == "alias_domain":
        return _domain(key, "name")
    if kind == "mailbox":
        return _address(key)
    if kind == "alias":
        return normalize_alias_source(key)
    if kind in ("app_password", "admin"):
        if not key or not isinstance(key, str):
            raise InvalidInput("key", f"an empty {KIND_LABEL[kind]} key")
        return key
    raise InvalidInput("kind", f"{kind!r} is not a directory kind")


def _lookup(normalise: Any, value: str) -> str | None:
    """The normal form of a lookup key, or None when it can't name anything stored."""
    try:
        return str(normalise(value))
    except InvalidInput:
        return None


def _is_unique_error(exc: sqlite3.IntegrityError) -> bool:
    return getattr(exc, "sqlite_errorname", "") in (
        "SQLITE_CONSTRAINT_UNIQUE",
        "SQLITE_CONSTRAINT_PRIMARYKEY",
    ) or "UNIQUE" in str(exc)


def _is_fk_error(exc: sqlite3.IntegrityError) -> bool:
    return getattr(
        exc, "sqlite_errorname", ""
    ) == "SQLITE_CONSTRAINT_FOREIGNKEY" or "FOREIGN KEY" in str(exc)


class _GroupFailed(Exception):
    """The fast path of a group did not apply cleanly; replay it row by row."""


class SqliteBackend:
    """The directory in one SQLite file plus its maps file; see the module docstring.

    ``maps_path`` None or "" means ``<path without .db/.sqlite>.maps.db``; ``maps_group``
    None means ``postfix``, "" leaves the group alone. Problems setting the maps file's
    group are logged (stdlib logger ``pfm.directory``) and kept in :attr:`maps_warnings`,
    never raised.
    """

    kind = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        create: bool = True,
        maps_path: str | None = None,
        maps_group: str | None = None,
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = str(path)
        self.maps_path = resolve_maps_path(self.path, maps_path)
        self.maps_group = "postfix" if maps_group is None else maps_group
        self.maps_warnings: list[str] = []
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._local = threading.local()
        self._conns: dict[int, tuple[threading.Thread, sqlite3.Connection]] = {}
        self._closed = False
        if os.path.realpath(self.maps_path) == os.path.realpath(self.path):
            raise DirectoryError(f"maps_path {self.maps_path} must differ from the directory path")
        self._prepare_file(create)
        try:
            with self._errors():
                conn = self._conn()
                self.schema_version_found = migrate(conn, self.path)
                self._ensure_maps(conn)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ connections

    def _prepare_file(self, create: bool) -> None:
        if os.path.exists(self.path):
            return
        if not create:
            raise DirectoryError(f"directory database {self.path} does not exist")
        try:
            parent = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(parent):
                os.makedirs(parent, mode=0o750, exist_ok=True)
                if os.path.dirname(os.path.abspath(self.maps_path)) == parent:
                    give_folder_to_group(parent, self.maps_group)  # so it reaches the maps
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
        except FileExistsError:
            pass  # someone else created it meanwhile: fine
        except OSError as exc:
            raise DirectoryError(
                f"cannot create directory database {self.path}: {exc.strerror}"
            ) from None

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._lock:
            if self._closed:
                raise DirectoryError(f"directory database {self.path} is closed")
            self._reap_dead_threads()
        conn = self._connect()
        with self._lock:
            me = threading.current_thread()
            self._conns[me.ident or 0] = (me, conn)
        self._local.conn = conn
        return conn

    def _connect(self) -> sqlite3.Connection:
        try:
            # check_same_thread=False only so close() may close every thread's connection;
            # each connection is used by its own thread alone.
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise self._translate(exc) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000):d}")
            conn.execute("PRAGMA foreign_keys = ON")
            self._leave_wal(conn, "main", self.path)
            conn.execute("PRAGMA synchronous = FULL")
            # no spilling of a big batch to the files before COMMIT: a spill takes the
            # EXCLUSIVE lock early and would lock Postfix out of the maps file meanwhile
            conn.execute("PRAGMA cache_spill = OFF")
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise self._translate(exc) from None
            raise
        return conn

    def _leave_wal(self, conn: sqlite3.Connection, schema: str, path: str) -> None:
        """Put ``schema`` in rollback-journal mode (a no-op unless it is a WAL file)."""
        mode = str(conn.execute(f"PRAGMA {schema}.journal_mode").fetchone()[0]).lower()
        if mode == "delete":
            return
        try:
            mode = str(conn.execute(f"PRAGMA {schema}.journal_mode = DELETE").fetchone()[0]).lower()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise Unavailable(
                    f"{path} is in {mode.upper()} mode and open in another process: stop the "
                    "pfm daemons using it and retry, to switch it to the rollback journal"
                ) from None
            raise
        if mode != "delete":
            raise DirectoryError(f"{path}: cannot switch to the rollback journal (got {mode})")

    # ------------------------------------------------------------------ the maps file

    def _ensure_maps(self, conn: sqlite3.Connection) -> None:
        """Attach the maps file to ``conn`` (creating it if missing); re-attach if replaced.

        A new, replaced or out-of-step maps file is rebuilt before this returns.
        """
        ident = _file_identity(self.maps_path)
        attached = getattr(self._local, "maps_ident", None)
        if ident is not None and ident == attached:
            return
        try:
            if attached is not None:
                self._local.maps_ident = None
                conn.execute(f"DETACH DATABASE {SCHEMA}")
            if ident is None:
                self._warn(create_maps_file(self.maps_path, self.maps_group), logging.WARNING)
                gid = group_id(self.maps_group)
                if gid is not None:  # worth knowing, but test and chroot setups trip it
                    self._warn(unreachable_by_group(self.maps_path, gid), logging.INFO)
                ident = _file_identity(self.maps_path)
            conn.execute(f"ATTACH DATABASE ? AS {SCHEMA}", (self.maps_path,))
            self._local.maps_ident = ident
            self._leave_wal(conn, SCHEMA, self.maps_path)
            conn.execute(f"PRAGMA {SCHEMA}.synchronous = FULL")
            app_id = int(conn.execute(f"PRAGMA {SCHEMA}.application_id").fetchone()[0])
            if app_id == MAPS_APPLICATION_ID and self._maps_in_step(conn):
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._rebuild(conn, force=False)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and (
                "locked" in str(exc) or "busy" in str(exc)
            ):
                raise
            raise DirectoryError(f"maps database {self.maps_path}: {exc}") from None

    def _warn(self, warnings: list[str], level: int) -> None:
        # stdlib logging: stderr unless the daemon routed it; never the CLI's stdout
        log = logging.getLogger("pfm.directory")
        for text in warnings:
            self.maps_warnings.append(text)
            log.log(level, "maps file: %s", text)

    @staticmethod
    def _maps_in_step(conn: sqlite3.Connection) -> bool:
        try:
            main_gen, maps_gen = conn.execute(GENERATIONS).fetchone()
        except sqlite3.OperationalError:  # a maps file without our tables
            return False
        return main_gen is not None and main_gen == maps_gen

    def _rebuild(self, conn: sqlite3.Connection, *, force: bool) -> None:
        """Inside a write transaction: (re)create the maps schema if needed and copy every row.

        Without ``force`` nothing is copied when the generations already agree (another
        process rebuilt it meanwhile).
        """
        app_id = int(conn.execute(f"PRAGMA {SCHEMA}.application_id").fetchone()[0])
        version = int(conn.execute(f"PRAGMA {SCHEMA}.user_version").fetchone()[0])
        tables = {
            r[0]
            for r in conn.execute(
                f"SELECT name FROM {SCHEMA}.sqlite_master WHERE type = 'table' "  # noqa: S608
                "AND name NOT LIKE 'sqlite_%'"
            )
        }
        if app_id not in (0, MAPS_APPLICATION_ID) or (app_id == 0 and tables):
            raise DirectoryError(
                f"{self.maps_path} is an SQLite database of some other application, not a pfm "
                "maps file; refusing to overwrite it (set [directory] maps_path)"
            )
        fresh = app_id == 0 or version != MAPS_FORMAT_VERSION or tables != {*TABLES, "meta"}
        if fresh:
            for name in sorted(tables):
                conn.execute(f"DROP TABLE {SCHEMA}.{name}")
            for statement in SCHEMA_STATEMENTS:
                conn.execute(statement)
        elif not force and self._maps_in_step(conn):
            return
        for table in TABLES.values():
            conn.execute(f"DELETE FROM {SCHEMA}.{table.name}")  # noqa: S608
            conn.execute(table.copy_all)
        conn.execute(BUMP_GENERATION[1])

    def rebuild_maps(self) -> None:
        """Copy the whole maps file afresh from the directory, in one transaction."""
        with self._errors():
            conn = self._conn()
            self._ensure_maps(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._rebuild(conn, force=True)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @staticmethod
    def _sync_maps(conn: sqlite3.Connection, batch: list[Change]) -> None:
        """Bring the maps rows of every object ``batch`` touched in step with the directory.

        Rows that vanished or differ are deleted, missing ones copied; a row equal on both
        sides is not written, so a write that changes no lookup data (a TOTP step, a password)
        leaves the maps file untouched and never locks Postfix out of it.
        """
        keys: dict[str, dict[str, None]] = {}
        for change in batch:
            if isinstance(change, Delete):
                kind, key = change.kind, change.key
            else:
                kind, key = KIND_OF[type(change.obj)], key_of(change.obj)
            for name in TABLES_OF_KIND.get(kind, ()):
                keys.setdefault(name, {})[key] = None
        if not keys:
            return
        before = conn.total_changes
        for name, table_keys in keys.items():
            table, rows = TABLES[name], [(k,) for k in table_keys]
            conn.executemany(table.delete_stale, rows)
            conn.executemany(table.insert_missing, rows)
        if conn.total_changes != before:
            for statement in BUMP_GENERATION:
                conn.execute(statement)

    def _reap_dead_threads(self) -> None:
        """Close connections of threads that ended (called with the lock held)."""
        for ident, (thread, conn) in list(self._conns.items()):
            if not thread.is_alive():
                conn.close()
                del self._conns[ident]

    def close(self) -> None:
        """Close every thread's connection; later calls raise DirectoryError."""
        with self._lock:
            self._closed = True
            conns, self._conns = list(self._conns.values()), {}
        for _thread, conn in conns:
            conn.close()
        self._local = threading.local()

    # ------------------------------------------------------------------ errors

    def _translate(self, exc: sqlite3.Error) -> DirectoryError:
        msg = str(exc)
        if isinstance(exc, sqlite3.OperationalError):
            if "locked" in msg or "busy" in msg:
                return Unavailable(
                    f"directory database {self.path} is locked by another writer "
                    f"(waited {self.busy_timeout:g} s)"
                )
            return Unavailable(f"directory database {self.path}: {msg}")
        return DirectoryError(f"directory database {self.path}: {msg}")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError as exc:  # a constraint this module did not map
            raise Conflict(f"directory database {self.path}: {exc}") from None
        except sqlite3.Error as exc:
            raise self._translate(exc) from None
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.ENOSPC, errno.EACCES):
                raise Unavailable(f"directory database {self.path}: {exc}") from None
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction, so multi-query reads see one snapshot."""
        with self._errors():
            conn = self._conn()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    # ------------------------------------------------------------------ generic reads

    def _get(self, kind: str, key: str | None) -> Any:
        if key is None:
            return None
        found = self._select(kind, f"WHERE {SPECS[kind].table}.{SPECS[kind].key} = ?", (key,))
        return found[0] if found else None

    def _select(self, kind: str, where: str, args: Sequence[Any]) -> list[Any]:
        spec = SPECS[kind]
        order = f" ORDER BY {spec.table}.{spec.key}"
        with self._read() as conn:
            rows = conn.execute(f"{spec.select} {where}{order}", tuple(args)).fetchall()
            children: dict[str, list[str]] = {}
            if spec.child is not None and rows:
                c = spec.child
                keys = [r[0] for r in rows]
                if len(keys) == 1:
                    sql = f"SELECT {c.parent}, {c.value} FROM {c.table} WHERE {c.parent} = ? ORDER BY position"  # noqa: S608
                    crow = conn.execute(sql, (keys[0],)).fetchall()
                else:
                    sql = (
                        f"SELECT c.{c.parent}, c.{c.value} FROM {c.table} c "  # noqa: S608
                        f"JOIN {spec.table} ON {spec.table}.{spec.key} = c.{c.parent} "
                        f"{where} ORDER BY c.{c.parent}, c.position"
                    )
                    crow = conn.execute(sql, tuple(args)).fetchall()
                for parent, value in crow:
                    children.setdefault(parent, []).append(value)
        return [spec.from_row(r, tuple(children.get(r[0], ()))) for r in rows]

    # ------------------------------------------------------------------ reads

    def get_domain(self, name: str) -> Domain | None:
        found: Domain | None = self._get("domain", _lookup(_domain, name))
        return found

    def list_domains(self) -> list[Domain]:
        return self._select("domain", "", ())

    def get_mailbox(self, address: str) -> Mailbox | None:
        found: Mailbox | None = self._get("mailbox", _lookup(_address, address))
        return found

    def list_mailboxes(self, domain: str | None = None) -> list[Mailbox]:
        if domain is None:
            return self._select("mailbox", "", ())
        name = _lookup(_domain, domain)
        return (
            [] if name is None else self._select("mailbox", "WHERE mailboxes.domain = ?", (name,))
        )

    def list_mailboxes_with_limits(self) -> list[Mailbox]:
        """Mailboxes with limit overrides only (what pfm-policyd reads every minute)."""
        return self._select("mailbox", "WHERE mailboxes.limits != '{}'", ())

    def count_mailboxes(self, domain: str) -> int:
        name = _lookup(_domain, domain)
        if name is None:
            return 0
        with self._read() as conn:
            row = conn.execute("SELECT count(*) FROM mailboxes WHERE domain = ?", (name,))
            return int(row.fetchone()[0])

    def get_alias(self, address: str) -> Alias | None:
        found: Alias | None = self._get("alias", _lookup(normalize_alias_source, address))
        return found

    def list_aliases(self, domain: str | None = None) -> list[Alias]:
        if domain is None:
            return self._select("alias", "", ())
        name = _lookup(_domain, domain)
        return [] if name is None else self._select("alias", "WHERE aliases.domain = ?", (name,))

    def get_alias_domain(self, name: str) -> AliasDomain | None:
        found: AliasDomain | None = self._get("alias_domain", _lookup(_domain, name))
        return found

    def list_alias_domains(self) -> list[AliasDomain]:
        return self._select("alias_domain", "", ())

    def get_app_password(self, id: str) -> AppPassword | None:
        found: AppPassword | None = self._get("app_password", id or None)
        return found

    def list_app_passwords(self, address: str) -> list[AppPassword]:
        addr = _lookup(_address, address)
        if addr is None:
            return []
        return self._select("app_password", "WHERE address = ?", (addr,))

    def get_admin(self, name: str) -> Admin | None:
        found: Admin | None = self._get("admin", name or None)
        return found

    def list_admins(self) -> list[Admin]:
        return self._select("admin", "", ())

    def audit_log(self, since: float = 0.0, limit: int = 0) -> list[AuditEntry]:
        """Entries with ``ts >= since``, oldest first; ``limit > 0`` keeps the newest ones."""
        cols = ", ".join(AUDIT_COLUMNS)
        sql = (
            f"SELECT * FROM (SELECT {cols} FROM audit WHERE ts >= ? "  # noqa: S608
            "ORDER BY id DESC LIMIT ?) ORDER BY id"
        )
        with self._read() as conn:
            rows = conn.execute(sql, (float(since), int(limit) if limit > 0 else -1)).fetchall()
        return [audit_entry(r) for r in rows]

    # ------------------------------------------------------------------ write

    def write(self, changes: Sequence[Change], audit: Sequence[AuditEntry]) -> None:
        """Apply ``changes`` and append ``audit`` in one transaction, all or nothing."""
        batch = [self._normalise_change(c) for c in changes]
        audit_rows = [audit_row(a) for a in audit]
        if not batch and not audit_rows:
            return
        with self._errors():
            conn = self._conn()
            self._ensure_maps(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                in_step = self._maps_in_step(conn)
                for group in _groups(batch):
                    self._apply_group(conn, group)
                if audit_rows:
                    conn.executemany(
                        "INSERT INTO audit (ts, actor, action, object, before, after) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        audit_rows,
                    )
                if in_step:
                    self._sync_maps(conn, batch)
                else:  # replaced by an old copy, or written by something else: start over
                    self._rebuild(conn, force=True)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @staticmethod
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

    def _apply_group(self, conn: sqlite3.Connection, group: list[Change]) -> None:
        """Apply a run of same-op, same-kind changes: executemany, or row by row on trouble."""
        if len(group) == 1:
            self._apply_one(conn, group[0])
            return
        conn.execute("SAVEPOINT pfm_group")
        try:
            self._apply_many(conn, group)
        except (sqlite3.IntegrityError, _GroupFailed):
            conn.execute("ROLLBACK TO pfm_group")
            conn.execute("RELEASE pfm_group")
            for change in group:
                self._apply_one(conn, change)
            return
        conn.execute("RELEASE pfm_group")

    def _apply_many(self, conn: sqlite3.Connection, group: list[Change]) -> None:
        first = group[0]
        if isinstance(first, Delete):
            spec = SPECS[first.kind]
            cur = conn.executemany(spec.delete, [(c.key,) for c in group])  # type: ignore[union-attr]
            if cur.rowcount != len(group):
                raise _GroupFailed
            return
        objs = [c.obj for c in group]  # type: ignore[union-attr]
        spec = SPECS[KIND_OF[type(objs[0])]]
        if isinstance(first, Create):
            conn.executemany(spec.insert, [spec.to_row(o) for o in objs])
        else:
            cur = conn.executemany(spec.update, [spec.update_row(o) for o in objs])
            if cur.rowcount != len(group):
                raise _GroupFailed
            if spec.child is not None:
                c = spec.child
                conn.executemany(
                    f"DELETE FROM {c.table} WHERE {c.parent} = ?",  # noqa: S608
                    [(spec.to_row(o)[0],) for o in objs],
                )
        if spec.child is not None:
            c = spec.child
            rows = [r for o in objs for r in spec.child_rows(o)]
            if rows:
                conn.executemany(
                    f"INSERT INTO {c.table} ({c.parent}, position, {c.value}) VALUES (?, ?, ?)",  # noqa: S608
                    rows,
                )

    def _apply_one(self, conn: sqlite3.Connection, change: Change) -> None:
        if isinstance(change, Delete):
            self._delete_one(conn, change)
            return
        obj = change.obj
        spec = SPECS[KIND_OF[type(obj)]]
        row = spec.to_row(obj)
        label = f"{KIND_LABEL[spec.kind]} {row[0]}"
        try:
            if isinstance(change, Create):
                conn.execute(spec.insert, row)
            else:
                cur = conn.execute(spec.update, (*row[1:], row[0]))
                if cur.rowcount == 0:
                    raise NotFound(f"{label} does not exist")
        except sqlite3.IntegrityError as exc:
            raise self._integrity(exc, spec, row, label) from None
        if spec.child is not None:
            c = spec.child
            if isinstance(change, Replace):
                conn.execute(f"DELETE FROM {c.table} WHERE {c.parent} = ?", (row[0],))  # noqa: S608
            conn.executemany(
                f"INSERT INTO {c.table} ({c.parent}, position, {c.value}) VALUES (?, ?, ?)",  # noqa: S608
                spec.child_rows(obj),
            )

    def _integrity(
        self, exc: sqlite3.IntegrityError, spec: TableSpec, row: Row, label: str
    ) -> DirectoryError:
        if _is_unique_error(exc):
            return AlreadyExists(f"{label} already exists")
        if _is_fk_error(exc) and spec.parent_label:
            parent = _parent_key(spec, row)
            return NotFound(f"{spec.parent_label} {parent} does not exist (needed by {label})")
        return InvalidInput(spec.kind, f"{label} violates a directory constraint")

    def _delete_one(self, conn: sqlite3.Connection, change: Delete) -> None:
        spec = SPECS[change.kind]
        label = f"{KIND_LABEL[change.kind]} {change.key}"
        try:
            cur = conn.execute(spec.delete, (change.key,))
        except sqlite3.IntegrityError as exc:
            if _is_fk_error(exc) and change.kind == "domain":
                raise Conflict(self._domain_in_use(conn, change.key)) from None
            raise Conflict(f"{label} is still referenced; cannot delete it") from None
        if cur.rowcount == 0:
            raise NotFound(f"{label} does not exist")

    @staticmethod
    def _domain_in_use(conn: sqlite3.Connection, name: str) -> str:
        counts = [
            conn.execute(f"SELECT count(*) FROM {table} WHERE {col} = ?", (name,)).fetchone()[0]  # noqa: S608
            for table, col in (
                ("mailboxes", "domain"),
                ("aliases", "domain"),
                ("alias_domains", "target"),
            )
        ]
        return (
            f"domain {name} still has {counts[0]} mailbox(es), {counts[1]} alias(es) and "
            f"{counts[2]} alias domain(s); remove them first"
        )


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def _groups(changes: list[Change]) -> Iterator[list[Change]]:
    """Runs of consecutive changes with the same operation and kind."""
    run: list[Change] = []
    run_key: tuple[type, str] | None = None
    for change in changes:
        kind = change.kind if isinstance(change, Delete) else KIND_OF[type(change.obj)]
        key = (type(change), kind)
        if key != run_key and run:
            yield run
            run = []
        run_key = key
        run.append(change)
    if run:
        yield run


def open_sqlite(path: str) -> SqliteBackend:
    """Open (creating and migrating as needed) the SQLite directory at ``path``."""
    return SqliteBackend(path)
