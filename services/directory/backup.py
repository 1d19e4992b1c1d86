"""``pfm backup`` / ``pfm restore``: one tar.gz with the directory, the DKIM keys and a manifest.

Archive members (all regular files, mode 0600; directories 0700)::

    manifest.json              format, version, created, backend, schema, counts, sha256 per member
    directory.sqlite           SQLite backend: a consistent online copy (sqlite3 backup API)
    directory.ldif             LDAP backend: every entry of the pfm subtree (RFC 2849 LDIF)
    dkim/<domain>/<file>       the ``[directory] dkim_dir`` tree (absent when the dir is)

The SQLite copy is taken with ``Connection.backup`` in one step, so it is a snapshot of one
moment even while other processes write (WAL mode lets them go on). The archive is written to
a temp file beside its destination, created 0600, fsync'd and renamed: a failed backup never
leaves a partial archive.

Restore verifies before it touches anything: every member's sha256 against the manifest,
no unexpected or missing member, no path outside the archive, ``PRAGMA integrity_check`` of
the database copy and a schema this version can read. It refuses to replace a non-empty
directory without ``force``. The new database is written beside the live one and renamed
over it; the old one is kept (a consistent copy) as ``<path>.pre-restore``. DKIM keys are
restored the same way (old tree kept as ``<dkim_dir>.pre-restore``), files 0600, dirs 0700.
Stop pfm-authd (anything holding the database open for writing) while restoring.

The LDAP backend is backed up as LDIF (:mod:`services.directory.ldif`) of every entry pfm
manages under ``[directory.ldap] base_dn`` (:mod:`services.directory.ldap_backup`): the
``ou=domains``, ``ou=mailboxes`` (with app-password children), ``ou=aliases``,
``ou=aliasdomains``, ``ou=admins``, ``ou=audit`` and ``ou=oath`` containers and everything
below them, with password hashes, raw TOTP secrets (``oathSecret``, base64 in the LDIF) and the
audit log, read through the backend's own connection settings. The manifest records the base
DN and entries per kind. Restore checks the archive the same way (plus: the LDIF parses and
every DN is in the pfm subtree of the configured base DN, which must be the backup's), refuses
a target holding pfm objects without ``force``, and then deletes the target's pfm objects
(children first) and adds the backup's entries (parents first). LDAP has no transactions: a
failure midway leaves the directory partly restored, and the error says how far it got
(:class:`~services.directory.ldap_backup.RestoreIncomplete`); run the restore again with
``force``. Stop pfm-authd and CLI writers while restoring.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import sqlite3
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

from .model import DirectoryError
from .transfer import atomic_writer

if TYPE_CHECKING:
    from services.config import DirectoryConfig

FORMAT = "pfm-backup"
VERSION = 1
MANIFEST = "manifest.json"
DB_MEMBER = "directory.sqlite"
LDIF_MEMBER = "directory.ldif"
DKIM_PREFIX = "dkim/"
MAX_MEMBER = 8 * 1024**3  # a member larger than this is not ours
MAX_MANIFEST = 4 * 1024**2
_SKIP_DKIM = (".lock",)


class BackupError(DirectoryError):
    """The backup or restore could not be done; the message says why (never a secret)."""


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """What a backup holds (from its manifest)."""

    path: str
    created: float
    backend: str
    counts: Mapping[str, int]
    members: Mapping[str, Mapping[str, Any]]
    schema: int = 0
    dkim: bool = False
    size: int = 0
    base_dn: str = ""  # LDAP backups: the base DN the entries are under

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "created": self.created,
            "backend": self.backend,
            "schema": self.schema,
            "counts": dict(self.counts),
            "dkim": self.dkim,
            "dkim_files": sum(1 for m in self.members if m.startswith(DKIM_PREFIX)),
            "size": self.size,
            **({"base_dn": self.base_dn} if self.base_dn else {}),
        }


@dataclass
class RestoreReport:
    """What a restore did (or, on a dry run, would do)."""

    info: BackupInfo
    target: str
    replaced: bool = False  # an existing directory was replaced
    kept: str = ""  # where the previous database was kept
    dkim_dir: str = ""
    dkim_kept: str = ""
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)
    ldap: dict[str, int] = field(default_factory=dict)  # LDAP: what the restore did

    def as_dict(self) -> dict[str, Any]:
        return {
            "backup": self.info.as_dict(),
            "target": self.target,
            "replaced": self.replaced,
            "kept": self.kept,
            "dkim_dir": self.dkim_dir,
            "dkim_kept": self.dkim_kept,
            "dry_run": self.dry_run,
            "notes": list(self.notes),
            **({"ldap": dict(self.ldap)} if self.ldap else {}),
        }


# --------------------------------------------------------------------------- helpers


def _sha256_file(path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _table_counts(conn: sqlite3.Connection) -> dict[str, int]:
    names = [
        str(r[0])
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        )
    ]
    out: dict[str, int] = {}
    for n in names:
        query = f'SELECT count(*) FROM "{n}"'  # noqa: S608 - a name from sqlite_master
        out[n] = int(conn.execute(query).fetchone()[0])
    return out


def _integrity(conn: sqlite3.Connection) -> str:
    rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
    return "ok" if rows == ["ok"] else "; ".join(rows[:5])


def _tar_add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = 0o600
    ti.mtime = int(mtime)
    tar.addfile(ti, io.BytesIO(data))


def _tar_add_dir(tar: tarfile.TarFile, name: str, mtime: float) -> None:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    ti.mode = 0o700
    ti.mtime = int(mtime)
    tar.addfile(ti)


def _read_dkim(dkim_dir: str) -> tuple[list[str], dict[str, bytes]] | None:
    """Directories and files under the DKIM dir (relative POSIX paths), or None if missing."""
    if not os.path.isdir(dkim_dir):
        return None
    dirs: list[str] = []
    files: dict[str, bytes] = {}
    for root, dnames, fnames in os.walk(dkim_dir, followlinks=False):
        dnames.sort()
        rel_root = os.path.relpath(root, dkim_dir)
        for d in dnames:
            full = os.path.join(root, d)
            if not os.path.islink(full):
                dirs.append(os.path.normpath(os.path.join(rel_root, d)))
        for fn in sorted(fnames):
            full = os.path.join(root, fn)
            if fn in _SKIP_DKIM or fn.endswith(".tmp") or not os.path.isfile(full):
                continue
            if os.path.islink(full):
                continue
            with open(full, "rb") as f:
                files[os.path.normpath(os.path.join(rel_root, fn))] = f.read()
    return dirs, files


def default_backup_path(cfg: DirectoryConfig, now: float) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return os.path.join(cfg.backup_dir, f"pfm-backup-{stamp}.tar.gz")


# --------------------------------------------------------------------------- backup


def _snapshot_sqlite(db_path: str, dest: str) -> tuple[dict[str, int], int]:
    """A consistent copy of the live database at ``dest``: table counts, schema version."""
    if not os.path.isfile(db_path):
        raise BackupError(f"directory database {db_path} does not exist")
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        src = sqlite3.connect(db_path, timeout=30)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {db_path}: {exc}") from None
    try:
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst)  # one step: a snapshot of one moment, writers go on (WAL)
            dst.execute("PRAGMA journal_mode = DELETE")
            problem = _integrity(dst)
            if problem != "ok":
                raise BackupError(f"{db_path} fails PRAGMA integrity_check: {problem}")
            counts = _table_counts(dst)
            schema = int(dst.execute("PRAGMA user_version").fetchone()[0])
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"backup of {db_path} failed: {exc}") from None
    finally:
        src.close()
    return counts, schema


def create_backup(
    cfg: DirectoryConfig,
    out: str | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> BackupInfo:
    """Write a backup archive (0600, atomically) and return its manifest summary."""
    now = clock()
    out_path = os.path.abspath(out or default_backup_path(cfg, now))
    out_dir = os.path.dirname(out_path)
    try:
        os.makedirs(out_dir, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create {out_dir}: {exc.strerror}") from None
    if os.path.isdir(out_path):
        raise BackupError(f"{out_path} is a directory: give a file name")
    members: dict[str, dict[str, Any]] = {}
    try:
        stage = tempfile.mkdtemp(prefix=".pfm-backup-", dir=out_dir)
    except OSError as exc:
        raise BackupError(f"cannot write in {out_dir}: {exc.strerror}") from None
    try:
        payload: list[tuple[str, str | bytes]] = []  # member -> temp path or data
        if cfg.backend == "sqlite":
            snap = os.path.join(stage, DB_MEMBER)
            counts, schema = _snapshot_sqlite(cfg.path, snap)
            digest, size = _sha256_file(snap)
            members[DB_MEMBER] = {"sha256": digest, "size": size}
            payload.append((DB_MEMBER, snap))
        else:
            data, counts = _export_ldap(cfg)
            schema = 0
            members[LDIF_MEMBER] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            payload.append((LDIF_MEMBER, data))
        dkim = _read_dkim(cfg.dkim_dir)
        dkim_dirs: list[str] = []
        if dkim is not None:
            dkim_dirs, files = dkim
            for rel, blob in files.items():
                name = DKIM_PREFIX + PurePosixPath(*rel.split(os.sep)).as_posix()
                members[name] = {"sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
                payload.append((name, blob))
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "created": now,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "host": socket.gethostname(),
            "backend": cfg.backend,
            "schema": schema,
            "source": cfg.path if cfg.backend == "sqlite" else ",".join(cfg.ldap.uris),
            "dkim_dir": cfg.dkim_dir,
            "dkim": dkim is not None,
            "counts": counts,
            "members": members,
        }
        if cfg.backend == "ldap":
            manifest["base_dn"] = cfg.ldap.base_dn
        manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
        try:
            with (
                atomic_writer(out_path, 0o600) as fh,
                tarfile.open(fileobj=fh, mode="w:gz", format=tarfile.PAX_FORMAT) as tar,
            ):
                _tar_add_bytes(tar, MANIFEST, manifest_bytes, now)
                if dkim is not None:
                    _tar_add_dir(tar, DKIM_PREFIX.rstrip("/"), now)
                    for d in dkim_dirs:
                        _tar_add_dir(
                            tar, DKIM_PREFIX + PurePosixPath(*d.split(os.sep)).as_posix(), now
                        )
                for name, src in payload:
                    if isinstance(src, bytes):
                        _tar_add_bytes(tar, name, src, now)
                    else:
                        ti = tarfile.TarInfo(name)
                        ti.size = int(members[name]["size"])
                        ti.mode = 0o600
                        ti.mtime = int(now)
                        with open(src, "rb") as f:
                            tar.addfile(ti, f)
        except OSError as exc:
            raise BackupError(f"cannot write {out_path}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return BackupInfo(
        path=out_path,
        created=now,
        backend=cfg.backend,
        counts=counts,
        members=members,
        schema=schema,
        dkim=dkim is not None,
        size=os.path.getsize(out_path),
        base_dn=cfg.ldap.base_dn if cfg.backend == "ldap" else "",
    )


def _export_ldap(cfg: DirectoryConfig) -> tuple[bytes, dict[str, int]]:
    """LDIF of the pfm subtree and its counts per kind."""
    from .ldap import LdapBackend
    from .ldap_backup import counts, read_subtree
    from .ldif import write_ldif

    try:
        backend = LdapBackend(cfg.ldap)
        try:
            entries = read_subtree(backend)
        finally:
            backend.close()
    except DirectoryError as exc:
        raise BackupError(f"cannot read the LDAP directory: {exc}") from None
    if not entries:
        raise BackupError(
            f"no pfm containers under {cfg.ldap.base_dn}: check [directory.ldap] base_dn"
        )
    return write_ldif(entries), counts(entries)


# --------------------------------------------------------------------------- verify


def _bad_archive(path: str, why: str) -> BackupError:
    return BackupError(f"{path}: not a usable pfm backup: {why}; nothing was changed")


def _safe_member(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\0" not in name


@contextlib.contextmanager
def _opened(path: str) -> Iterator[tarfile.TarFile]:
    try:
        tar = tarfile.open(path, mode="r:gz")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise BackupError(f"{path}: no such file") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise _bad_archive(path, f"cannot read it as tar.gz ({exc})") from None
    try:
        yield tar
    finally:
        tar.close()


def verify_backup(path: str, stage: str | None = None) -> BackupInfo:
    """Check an archive completely (checksums, members, database integrity).

    With ``stage`` (an empty private directory) the members are extracted into it as they
    are checked: ``stage/directory.sqlite``, ``stage/dkim/...``.
    """
    manifest: dict[str, Any] | None = None
    seen: dict[str, str] = {}
    dirs: list[str] = []
    try:
        with _opened(path) as tar:
            for ti in tar:
                name = ti.name.rstrip("/")
                if not _safe_member(name):
                    raise _bad_archive(path, f"member {ti.name!r} has an unsafe path")
                if ti.isdir():
                    if name != DKIM_PREFIX.rstrip("/") and not name.startswith(DKIM_PREFIX):
                        raise _bad_archive(path, f"unexpected directory {name!r}")
                    dirs.append(name)
                    continue
                if not ti.isfile():
                    raise _bad_archive(path, f"member {name!r} is not a regular file")
                if ti.size > MAX_MEMBER:
                    raise _bad_archive(path, f"member {name!r} is too large")
                src = tar.extractfile(ti)
                if src is None:
                    raise _bad_archive(path, f"cannot read member {name!r}")
                if name == MANIFEST:
                    if ti.size > MAX_MANIFEST:
                        raise _bad_archive(path, "manifest.json is too large")
                    try:
                        manifest = json.loads(src.read().decode("utf-8"))
                    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                        raise _bad_archive(path, f"manifest.json is not JSON ({exc})") from None
                    continue
                seen[name] = _copy_hash(
                    src, os.path.join(stage, *name.split("/")) if stage else None
                )
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise _bad_archive(path, f"corrupted or truncated ({exc})") from None
    except OSError as exc:
        raise _bad_archive(path, f"cannot read it ({exc.strerror or exc})") from None
    if manifest is None:
        raise _bad_archive(path, "no manifest.json")
    info = _check_manifest(path, manifest, seen)
    if info.backend == "sqlite" and stage:
        _check_db(path, os.path.join(stage, DB_MEMBER))
    elif info.backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="pfm-verify-") as tmp:
            # extract the database alone to check its integrity
            _extract_one(path, DB_MEMBER, os.path.join(tmp, DB_MEMBER))
            _check_db(path, os.path.join(tmp, DB_MEMBER))
    else:
        ldif_path = os.path.join(stage, LDIF_MEMBER) if stage else None
        data = _read_file(ldif_path) if ldif_path else _read_member(path, LDIF_MEMBER)
        load_ldif(path, data, info.base_dn)
    return info


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def load_ldif(path: str, data: bytes, base_dn: str) -> list[tuple[str, dict[str, list[bytes]]]]:
    """The entries of a backup's LDIF, checked: it parses and every DN is in the pfm subtree."""
    from .ldap_backup import in_subtree
    from .ldif import LdifError, parse_ldif

    if not base_dn:
        raise _bad_archive(path, "manifest.json names no base_dn for the LDAP backup")
    try:
        entries = parse_ldif(data)
    except LdifError as exc:
        raise _bad_archive(path, f"{LDIF_MEMBER}: {exc}") from None
    for dn, _attrs in entries:
        if not in_subtree(dn, base_dn):
            raise _bad_archive(path, f"{LDIF_MEMBER}: {dn!r} is outside the pfm subtree")
    return entries


def _copy_hash(src: IO[bytes], dest: str | None) -> str:
    h = hashlib.sha256()
    out: IO[bytes] | None = None
    if dest is not None:
        os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
        out = os.fdopen(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
    try:
        while chunk := src.read(1 << 20):
            h.update(chunk)
            if out is not None:
                out.write(chunk)
        if out is not None:
            out.flush()
            os.fsync(out.fileno())
    finally:
        if out is not None:
            out.close()
    return h.hexdigest()


def _extract_one(path: str, member: str, dest: str) -> None:
    try:
        with _opened(path) as tar:
            src = tar.extractfile(member)
            if src is None:
                raise _bad_archive(path, f"cannot read {member}")
            _copy_hash(src, dest)
    except (KeyError, tarfile.TarError, EOFError, zlib.error) as exc:
        raise _bad_archive(path, f"cannot read {member} ({exc})") from None


def _check_manifest(path: str, m: Mapping[str, Any], seen: Mapping[str, str]) -> BackupInfo:
    if not isinstance(m, Mapping) or m.get("format") != FORMAT:
        raise _bad_archive(path, "manifest.json is not a pfm backup manifest")
    if m.get("version") != VERSION:
        raise _bad_archive(path, f"backup format version {m.get('version')!r} is not supported")
    members = m.get("members")
    if not isinstance(members, Mapping):
        raise _bad_archive(path, "manifest.json lists no members")
    backend = m.get("backend")
    if backend not in ("sqlite", "ldap"):
        raise _bad_archive(path, f"unknown backend {backend!r} in manifest.json")
    main = DB_MEMBER if backend == "sqlite" else LDIF_MEMBER
    if main not in members:
        raise _bad_archive(path, f"manifest.json does not list {main}")
    for name, meta in members.items():
        if name not in seen:
            raise _bad_archive(path, f"member {name} is missing")
        want = meta.get("sha256") if isinstance(meta, Mapping) else None
        if want != seen[name]:
            raise _bad_archive(path, f"member {name} fails its sha256 check (corrupted)")
    extra = sorted(set(seen) - set(members))
    if extra:
        raise _bad_archive(path, f"member {extra[0]} is not in the manifest")
    counts = m.get("counts") if isinstance(m.get("counts"), Mapping) else {}
    return BackupInfo(
        path=path,
        created=float(m.get("created", 0.0)),
        backend=str(backend),
        counts={str(k): int(v) for k, v in (counts or {}).items() if isinstance(v, int)},
        members=members,
        schema=int(m.get("schema", 0) or 0),
        dkim=bool(m.get("dkim", False)),
        size=os.path.getsize(path),
        base_dn=str(m.get("base_dn", "")) if backend == "ldap" else "",
    )


def _check_db(path: str, db: str) -> None:
    from .sqlite_schema import SCHEMA_VERSION

    try:
        conn = sqlite3.connect(f"file:{quote(db)}?mode=ro", uri=True)
        try:
            problem = _integrity(conn)
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise _bad_archive(path, f"{DB_MEMBER} is not a readable SQLite database ({exc})") from None
    if problem != "ok":
        raise _bad_archive(path, f"{DB_MEMBER} fails PRAGMA integrity_check: {problem}")
    if version > SCHEMA_VERSION:
        raise _bad_archive(
            path,
            f"{DB_MEMBER} has schema version {version}, newer than this pfm ({SCHEMA_VERSION})",
        )


# --------------------------------------------------------------------------- restore


def _sqlite_nonempty(db: str) -> bool:
    if not os.path.exists(db) or os.path.getsize(db) == 0:
        return False
    try:
        conn = sqlite3.connect(f"file:{quote(db)}?mode=ro", uri=True, timeout=30)
        try:
            counts = _table_counts(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot read the current directory {db}: {exc}") from None
    return any(n for t, n in counts.items() if t != "audit")


def _keep_copy(db: str, kept: str) -> None:
    """A consistent copy of the live database (WAL included) at ``kept``, 0600."""
    tmp = f"{kept}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    src = sqlite3.connect(db, timeout=30)
    try:
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
        # empty the live WAL so nothing of the old database outlives the rename
        src.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        src.close()
    os.replace(tmp, kept)


def _stage_dkim(stage: str, target: str) -> str:
    """The staged ``dkim`` tree moved beside ``target`` (same filesystem), modes fixed."""
    src = os.path.join(stage, "dkim")
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, mode=0o700, exist_ok=True)
    dest = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.restore-", dir=parent)
    os.rmdir(dest)
    if os.path.isdir(src):
        shutil.copytree(src, dest, copy_function=shutil.copyfile)
    else:
        os.mkdir(dest, 0o700)
    for root, dnames, fnames in os.walk(dest):
        os.chmod(root, 0o700)
        for d in dnames:
            os.chmod(os.path.join(root, d), 0o700)
        for f in fnames:
            os.chmod(os.path.join(root, f), 0o600)
    return dest


def restore_backup(
    cfg: DirectoryConfig,
    path: str,
    *,
    dry_run: bool = False,
    force: bool = False,
) -> RestoreReport:
    """Verify ``path`` completely, then replace the directory (and DKIM keys) with it."""
    target = os.path.abspath(cfg.path) if cfg.backend == "sqlite" else ",".join(cfg.ldap.uris)
    stage_parent = os.path.dirname(target) if cfg.backend == "sqlite" else None
    if stage_parent and not os.path.isdir(stage_parent):
        if dry_run:
            stage_parent = None
        else:
            os.makedirs(stage_parent, mode=0o750, exist_ok=True)
    try:
        stage = tempfile.mkdtemp(prefix=".pfm-restore-", dir=stage_parent)
    except OSError as exc:
        raise BackupError(f"cannot write beside {target}: {exc.strerror}") from None
    try:
        info = verify_backup(path, stage)
        report = RestoreReport(info=info, target=target, dry_run=dry_run)
        if info.backend != cfg.backend:
            raise BackupError(
                f"{path} is a {info.backend} backup but the directory backend is {cfg.backend}"
            )
        if cfg.backend == "ldap" and _norm_dn(info.base_dn) != _norm_dn(cfg.ldap.base_dn):
            raise BackupError(
                f"{path} is a backup of base DN {info.base_dn!r} but [directory.ldap] base_dn "
                f"is {cfg.ldap.base_dn!r}; nothing was changed"
            )
        nonempty = _sqlite_nonempty(target) if cfg.backend == "sqlite" else _ldap_nonempty(cfg)
        if nonempty and not force:
            raise BackupError(
                f"the directory {target} is not empty: restore over it with --force "
                "(the current one is kept as .pre-restore)"
            )
        report.replaced = nonempty
        if info.dkim:
            report.dkim_dir = cfg.dkim_dir
        else:
            report.notes.append("the backup has no DKIM directory: DKIM keys left as they are")
        if dry_run:
            return report
        dkim_staged = _stage_dkim(stage, cfg.dkim_dir) if info.dkim else ""
        try:
            if cfg.backend == "sqlite":
                staged_db = os.path.join(stage, DB_MEMBER)
                if os.path.exists(target):
                    report.kept = f"{target}.pre-restore"
                    try:
                        _keep_copy(target, report.kept)
                    except sqlite3.Error as exc:
                        raise BackupError(f"cannot copy the current {target}: {exc}") from None
                os.replace(staged_db, target)
                for suffix in ("-wal", "-shm", "-journal"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(target + suffix)
                _fsync_dir(os.path.dirname(target))
            else:
                entries = load_ldif(
                    path, _read_file(os.path.join(stage, LDIF_MEMBER)), info.base_dn
                )
                _restore_ldap(cfg, entries, force, report)
            if dkim_staged:
                _swap_dkim(cfg.dkim_dir, dkim_staged, report)
                dkim_staged = ""
        finally:
            if dkim_staged:
                shutil.rmtree(dkim_staged, ignore_errors=True)
        return report
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _swap_dkim(dkim_dir: str, staged: str, report: RestoreReport) -> None:
    target = os.path.abspath(dkim_dir)
    if os.path.exists(target):
        kept = f"{target}.pre-restore"
        if os.path.isdir(kept) and not os.path.islink(kept):
            shutil.rmtree(kept)
        elif os.path.lexists(kept):
            os.unlink(kept)
        os.rename(target, kept)
        report.dkim_kept = kept
    os.rename(staged, target)
    _fsync_dir(os.path.dirname(target))


def _read_member(path: str, member: str) -> bytes:
    with _opened(path) as tar:
        src = tar.extractfile(member)
        if src is None:
            raise _bad_archive(path, f"cannot read {member}")
        return src.read()


def _norm_dn(dn: str) -> str:
    from .ldap_backup import norm_dn

    return norm_dn(dn)


def _ldap_nonempty(cfg: DirectoryConfig) -> bool:
    from .ldap import LdapBackend
    from .ldap_backup import has_objects

    try:
        backend = LdapBackend(cfg.ldap)
        try:
            return has_objects(backend)
        finally:
            backend.close()
    except DirectoryError as exc:
        raise BackupError(f"cannot read the LDAP directory: {exc}; nothing was changed") from None


def _restore_ldap(
    cfg: DirectoryConfig,
    entries: list[tuple[str, dict[str, list[bytes]]]],
    force: bool,
    report: RestoreReport,
) -> None:
    """Replace the pfm objects of the LDAP directory with ``entries`` (through ldap3)."""
    from .ldap import LdapBackend
    from .ldap_backup import Progress, RestoreIncomplete, restore_entries

    progress = Progress()
    try:
        backend = LdapBackend(cfg.ldap)
    except DirectoryError as exc:
        raise BackupError(f"cannot open the LDAP directory: {exc}; nothing was changed") from None
    try:
        restore_entries(backend, entries, delete=force, progress=progress)
    except RestoreIncomplete as exc:
        if not progress.started():
            raise BackupError(f"{exc}".split(". So far", 1)[0] + "; nothing was changed") from None
        raise
    finally:
        backend.close()
    report.ldap = progress.as_dict()
    if progress.kept_audit:
        report.notes.append(
            f"{progress.kept_audit} audit entries of the replaced directory were kept (the "
            f"server's ACL makes the audit log append-only); {progress.renumbered} backup audit "
            "entries were appended under new ids"
        )
