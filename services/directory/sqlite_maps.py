"""The secret-free "maps" database beside the SQLite directory (stdlib + model only).

The directory file holds password hashes and TOTP secrets, so it is ``0600 root``. Postfix's
map lookups run as user ``postfix`` and Dovecot's userdb as ``dovecot``: they read a second
file instead, holding only lookup data, with the **same table and column names** as the
directory so a ``sqlite:`` map query works unchanged on either file:

* ``domains(name, active)``, ``mailboxes(address, local_part, domain, quota, active, name)``
  (no password hash, no TOTP), ``aliases(address, local_part, domain, active)``,
  ``alias_targets(alias, position, target)``, ``alias_domains(name, target, active)``;
* ``meta(generation)``, equal to the directory's own ``meta.generation`` when in step.

The file is created ``0640`` with group ``maps_group`` (when it exists and we are root), in
rollback-journal mode. :class:`~services.directory.sqlite.SqliteBackend` attaches it as
schema ``maps`` and updates it inside the same transaction as each write; the SQL for that
lives here.
"""

from __future__ import annotations

import contextlib
import grp
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from .model import DirectoryError

MAPS_APPLICATION_ID = 0x50464D4D  # "PFMM": a Postfix Manager maps file (directory: "PFM1")
MAPS_FORMAT_VERSION = 1  # PRAGMA user_version of the maps file
MAPS_FILE_MODE = 0o640
SCHEMA = "maps"  # the name the maps file is attached under


@dataclass(frozen=True, slots=True)
class MapsTable:
    """One table copied into the maps file: its name, identity columns and copied columns."""

    name: str
    key: str  # the column a directory object's key is stored in
    identity: tuple[str, ...]  # the primary key (one row)
    columns: tuple[str, ...]

    @property
    def delete_stale(self) -> str:
        """Delete the rows of one key that vanished from, or differ from, the directory."""
        same = " AND ".join(f"m.{c} IS x.{c}" for c in self.columns)
        return (
            f"DELETE FROM {SCHEMA}.{self.name} AS x WHERE x.{self.key} = ? AND NOT EXISTS "  # noqa: S608
            f"(SELECT 1 FROM main.{self.name} AS m WHERE {same})"
        )

    @property
    def insert_missing(self) -> str:
        """Copy the rows of one key that the maps file lacks (new, or just deleted as stale)."""
        cols = ", ".join(f"m.{c}" for c in self.columns)
        same = " AND ".join(f"x.{c} = m.{c}" for c in self.identity)
        return (
            f"INSERT INTO {SCHEMA}.{self.name} ({', '.join(self.columns)}) "  # noqa: S608
            f"SELECT {cols} FROM main.{self.name} AS m WHERE m.{self.key} = ? AND NOT EXISTS "
            f"(SELECT 1 FROM {SCHEMA}.{self.name} AS x WHERE {same})"
        )

    @property
    def copy_all(self) -> str:
        cols = ", ".join(self.columns)
        return f"INSERT INTO {SCHEMA}.{self.name} ({cols}) SELECT {cols} FROM main.{self.name}"  # noqa: S608


TABLES: dict[str, MapsTable] = {
    t.name: t
    for t in (
        MapsTable("domains", "name", ("name",), ("name", "active")),
        MapsTable(
            "mailboxes",
            "address",
            ("address",),
            ("address", "local_part", "domain", "quota", "active", "name"),
        ),
        MapsTable(
            "aliases", "address", ("address",), ("address", "local_part", "domain", "active")
        ),
        MapsTable("alias_targets", "alias", ("alias", "position"), ("alias", "position", "target")),
        MapsTable("alias_domains", "name", ("name",), ("name", "target", "active")),
    )
}

TABLES_OF_KIND: dict[str, tuple[str, ...]] = {
    "domain": ("domains",),
    "mailbox": ("mailboxes",),
    "alias": ("aliases", "alias_targets"),
    "alias_domain": ("alias_domains",),
}
"""Directory kind -> the maps tables its objects appear in (other kinds hold no map data)."""

SCHEMA_STATEMENTS: tuple[str, ...] = (
    f"""CREATE TABLE {SCHEMA}.domains (
        name TEXT PRIMARY KEY NOT NULL,
        active INTEGER NOT NULL DEFAULT 1
    )""",
    f"""CREATE TABLE {SCHEMA}.mailboxes (
        address TEXT PRIMARY KEY NOT NULL,
        local_part TEXT NOT NULL,
        domain TEXT NOT NULL,
        quota INTEGER NOT NULL DEFAULT 0,
        active INTEGER NOT NULL DEFAULT 1,
        name TEXT NOT NULL DEFAULT ''
    )""",
    f"CREATE UNIQUE INDEX {SCHEMA}.mailboxes_domain_local ON mailboxes (domain, local_part)",
    f"""CREATE TABLE {SCHEMA}.aliases (
        address TEXT PRIMARY KEY NOT NULL,
        local_part TEXT NOT NULL,
        domain TEXT NOT NULL,
        active INTEGER NOT NULL DEFAULT 1
    )""",
    f"CREATE INDEX {SCHEMA}.aliases_domain ON aliases (domain)",
    f"""CREATE TABLE {SCHEMA}.alias_targets (
        alias TEXT NOT NULL,
        position INTEGER NOT NULL,
        target TEXT NOT NULL,
        PRIMARY KEY (alias, position)
    )""",
    f"CREATE INDEX {SCHEMA}.alias_targets_target ON alias_targets (target)",
    f"""CREATE TABLE {SCHEMA}.alias_domains (
        name TEXT PRIMARY KEY NOT NULL,
        target TEXT NOT NULL,
        active INTEGER NOT NULL DEFAULT 1
    )""",
    f"CREATE INDEX {SCHEMA}.alias_domains_target ON alias_domains (target)",
    f"""CREATE TABLE {SCHEMA}.meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        generation INTEGER NOT NULL
    )""",
    "INSERT INTO maps.meta (id, generation) VALUES (1, -1)",
    f"PRAGMA {SCHEMA}.user_version = {MAPS_FORMAT_VERSION:d}",
    f"PRAGMA {SCHEMA}.application_id = {MAPS_APPLICATION_ID:d}",
)

BUMP_GENERATION = (
    "UPDATE main.meta SET generation = generation + 1",
    "UPDATE maps.meta SET generation = (SELECT generation FROM main.meta)",
)

GENERATIONS = "SELECT (SELECT generation FROM main.meta), (SELECT generation FROM maps.meta)"


def default_maps_path(path: str) -> str:
    """``/var/lib/pfm/directory.db`` -> ``/var/lib/pfm/directory.maps.db``."""
    root, ext = os.path.splitext(path)
    return (root if ext in (".db", ".sqlite", ".sqlite3") else path) + ".maps.db"


def resolve_maps_path(path: str, maps_path: str | None) -> str:
    """The maps file of the directory at ``path`` (``maps_path`` unless empty)."""
    return maps_path if maps_path else default_maps_path(path)


def group_id(name: str) -> int | None:
    """The gid of group ``name``, or None when it does not exist (or ``name`` is empty)."""
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def create_maps_file(path: str, group: str) -> list[str]:
    """Create an empty maps file ``0640`` (group ``group`` if possible); returns warnings.

    A missing parent folder is made ``0750`` with the same group, so the group can reach the
    file. Failing to set the group is a warning, never an error: the lookups then need the
    admin's ``chgrp``. Whether the group can pass the parent folders is
    :func:`unreachable_by_group`'s business.
    """
    warnings: list[str] = []
    gid = group_id(group)
    can_chown = gid is not None and os.geteuid() == 0
    if group and gid is None:
        warnings.append(f"group {group!r} does not exist; {path} stays group {_own_group()}")
    elif group and not can_chown:
        warnings.append(f"not running as root: cannot give {path} to group {group!r}")
    parent = os.path.dirname(os.path.abspath(path))
    try:
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=0o750, exist_ok=True)
            give_folder_to_group(parent, group)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, MAPS_FILE_MODE)
    except FileExistsError:
        return []  # someone else created it meanwhile: theirs to set up
    except OSError as exc:
        raise DirectoryError(f"cannot create maps database {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, MAPS_FILE_MODE)  # the umask may have taken the group's read bit
        if can_chown:
            os.fchown(fd, -1, gid)  # type: ignore[arg-type]
    except OSError as exc:
        warnings.append(f"cannot set mode/group of {path}: {exc.strerror}")
    finally:
        os.close(fd)
    return warnings


def unreachable_by_group(path: str, gid: int) -> list[str]:
    """A warning naming the parent folders that members of ``gid`` cannot pass through."""
    blocked: list[str] = []
    for parent in _ancestors(os.path.dirname(os.path.abspath(path))):
        try:
            st = os.stat(parent)
        except OSError:
            continue
        if not (st.st_mode & stat.S_IXOTH or (st.st_gid == gid and st.st_mode & stat.S_IXGRP)):
            blocked.append(parent)
    if not blocked:
        return []
    return [
        f"group {_group_name(gid)} cannot reach {path}: folder(s) {', '.join(blocked)} "
        "lack search permission for it (chgrp/chmod g+x or o+x them)"
    ]


def give_folder_to_group(folder: str, group: str) -> None:
    """``chgrp group folder`` when we are root and the group exists (best effort)."""
    gid = group_id(group)
    if gid is None or os.geteuid() != 0:
        return
    with contextlib.suppress(OSError):  # reported by unreachable_by_group later
        os.chown(folder, -1, gid)


def _ancestors(folder: str) -> Iterable[str]:
    while True:
        yield folder
        up = os.path.dirname(folder)
        if up == folder:
            return
        folder = up


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _own_group() -> str:
    return _group_name(os.getegid())
