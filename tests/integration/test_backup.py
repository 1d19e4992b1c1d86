"""``pfm backup`` / ``pfm restore`` against real SQLite directories and DKIM trees in temp dirs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.cli import exitcodes
from services.cli.main import main
from services.config import DirectoryConfig
from services.directory import backup
from services.directory.model import (
    Alias,
    AuditEntry,
    Create,
    Delete,
    Domain,
    Mailbox,
    Replace,
    public,
)
from services.directory.sqlite import SqliteBackend

HASH = "{SSHA512}" + "A" * 86 + "=="  # shape only; restore never checks passwords


@dataclass
class Run:
    code: int
    out: str
    err: str


@dataclass
class Env:
    root: Path
    config: Path
    db: Path
    dkim: Path
    run: Callable[..., Run]

    def backend(self) -> SqliteBackend:
        return SqliteBackend(str(self.db))

    def cfg(self) -> DirectoryConfig:
        return DirectoryConfig(
            path=str(self.db), dkim_dir=str(self.dkim), backup_dir=str(self.root / "backups")
        )


@pytest.fixture
def env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Env:
    """A config naming a SQLite directory, a DKIM dir and a backup dir under tmp_path."""
    db = tmp_path / "var" / "directory.db"
    dkim = tmp_path / "var" / "dkim"
    config = tmp_path / "pfm.toml"
    config.write_text(
        f'[directory]\npath = "{db}"\ndkim_dir = "{dkim}"\nbackup_dir = "{tmp_path / "backups"}"\n'
    )

    def run(*argv: str) -> Run:
        capsys.readouterr()
        code = main(["--config", str(config), *argv])
        cap = capsys.readouterr()
        return Run(code, cap.out, cap.err)

    return Env(tmp_path, config, db, dkim, run)


def _populate(env: Env) -> None:
    b = env.backend()
    try:
        b.write(
            [
                Create(Domain("example.org")),
                Create(Mailbox("alice@example.org", password_hash=HASH, totp_secret="JBSWY3DP")),
                Create(Mailbox("bob@example.org", password_hash=HASH)),
                Create(Alias("info@example.org", ("alice@example.org",))),
            ],
            [AuditEntry(ts=1.0, actor="test", action="seed", object="example.org")],
        )
    finally:
        b.close()
    keydir = env.dkim / "example.org"
    keydir.mkdir(parents=True, mode=0o700)
    for name, data in (("s1.key", b"PRIVATE KEY 1\n"), ("s1.pub", b"PUBLIC 1\n")):
        fd = os.open(keydir / name, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, data)
        os.close(fd)


def _state(env: Env) -> dict[str, Any]:
    """Every object (secrets included) and the DKIM files with their modes."""
    b = env.backend()
    try:
        state: dict[str, Any] = {
            "domains": [public(d) for d in b.list_domains()],
            "mailboxes": [(public(m), m.password_hash, m.totp_secret) for m in b.list_mailboxes()],
            "aliases": [public(a) for a in b.list_aliases()],
            "audit": [e.action for e in b.audit_log()],
        }
    finally:
        b.close()
    files = {}
    if env.dkim.exists():
        for p in sorted(env.dkim.rglob("*")):
            files[str(p.relative_to(env.dkim))] = (
                p.read_bytes() if p.is_file() else None,
                oct(p.stat().st_mode & 0o777),
            )
    state["dkim"] = files
    return state


def _mutate(env: Env) -> None:
    b = env.backend()
    try:
        bob = b.get_mailbox("bob@example.org")
        assert bob is not None
        b.write(
            [
                Delete("alias", "info@example.org"),
                Replace(Mailbox("bob@example.org", password_hash=HASH, name="changed")),
                Create(Domain("new.example")),
            ],
            [],
        )
    finally:
        b.close()
    (env.dkim / "example.org" / "s1.key").unlink()
    (env.dkim / "other.example").mkdir(mode=0o700)


def test_backup_restore_brings_back_the_backup_state(env: Env) -> None:
    """backup -> mutate -> restore --force: objects, secrets and DKIM keys as at backup time."""
    _populate(env)
    before = _state(env)
    archive = env.root / "b.tar.gz"
    r = env.run("backup", "--out", str(archive), "--json")
    assert r.code == 0, r.err
    info = json.loads(r.out)
    assert info["counts"]["mailboxes"] == 2 and info["dkim_files"] == 2
    assert (archive.stat().st_mode & 0o777) == 0o600
    _mutate(env)
    mutated = _state(env)
    assert mutated != before
    r = env.run("restore", str(archive))
    assert r.code == exitcodes.CONFLICT and "--force" in r.err
    assert _state(env) == mutated
    r = env.run("restore", str(archive), "--force")
    assert r.code == 0, r.err
    assert _state(env) == before
    assert before["dkim"]["example.org/s1.key"][1] == "0o600"
    assert oct(env.dkim.stat().st_mode & 0o777) == "0o700"
    # the replaced database and keys were kept
    kept = SqliteBackend(str(env.db) + ".pre-restore")
    try:
        assert kept.get_domain("new.example") is not None
    finally:
        kept.close()
    assert (Path(str(env.dkim) + ".pre-restore") / "other.example").is_dir()
    # the restored directory is usable for writing again
    b = env.backend()
    try:
        b.write([Create(Domain("after.example"))], [])
    finally:
        b.close()


def test_manifest_lists_checksums_and_counts(env: Env) -> None:
    """The archive holds manifest.json with sha256 of every member and table counts."""
    _populate(env)
    info = backup.create_backup(env.cfg(), str(env.root / "m.tar.gz"), clock=lambda: 1_700_000_000)
    with tarfile.open(info.path, "r:gz") as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        digests = {
            m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile() and m.name != "manifest.json"
        }
        modes = {m.name: m.mode for m in tar.getmembers()}
    assert names[0] == "manifest.json"
    assert manifest["format"] == "pfm-backup" and manifest["created"] == 1_700_000_000
    assert {k: v["sha256"] for k, v in manifest["members"].items()} == digests
    assert set(digests) == {
        "directory.sqlite",
        "dkim/example.org/s1.key",
        "dkim/example.org/s1.pub",
    }
    assert manifest["counts"]["mailboxes"] == 2 and manifest["counts"]["aliases"] == 1
    assert modes["dkim"] == 0o700 and modes["directory.sqlite"] == 0o600


def test_backup_is_consistent_while_another_connection_writes(env: Env) -> None:
    """An online backup taken during a stream of writes is a snapshot of one moment."""
    b = env.backend()
    b.write([Create(Domain("busy.example"))], [])
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        w = SqliteBackend(str(env.db))
        try:
            i = 0
            while not stop.is_set():
                # each transaction adds one mailbox and one audit entry: in any consistent
                # snapshot the two counts are equal
                w.write(
                    [Create(Mailbox(f"u{i}@busy.example", password_hash=HASH))],
                    [AuditEntry(ts=time.time(), actor="w", action="w.add", object=f"u{i}")],
                )
                i += 1
                written[0] = i
        finally:
            w.close()

    t = threading.Thread(target=writer)
    t.start()
    try:
        while written[0] < 50:
            time.sleep(0.01)
        start = written[0]
        infos = []
        for n in range(3):
            infos.append(backup.create_backup(env.cfg(), str(env.root / f"c{n}.tar.gz")))
            mark = written[0]
            while written[0] < mark + 5:  # the writer keeps going between backups
                time.sleep(0.001)
        during = written[0] - start
    finally:
        stop.set()
        t.join(timeout=30)
        b.close()
    assert during >= 15
    for info in infos:
        assert info.counts["mailboxes"] == info.counts["audit"] > 0
        assert backup.verify_backup(info.path).counts == info.counts
    assert infos[-1].counts["mailboxes"] > infos[0].counts["mailboxes"]


def _files_snapshot(env: Env) -> dict[str, bytes]:
    out = {}
    for p in sorted(env.root.joinpath("var").rglob("*")):
        if p.is_file():
            out[str(p)] = p.read_bytes()
    return out


def test_corrupted_archive_is_refused_and_nothing_changes(env: Env) -> None:
    """A flipped byte in the archive is refused with a clear message; no file is touched."""
    _populate(env)
    archive = env.root / "ok.tar.gz"
    assert env.run("backup", "--out", str(archive)).code == 0
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = env.root / "bad.tar.gz"
    bad.write_bytes(bytes(data))
    _mutate(env)
    before = _files_snapshot(env)
    r = env.run("restore", str(bad), "--force")
    assert r.code == exitcodes.INVALID
    assert r.err.startswith(f"pfm: {bad}: not a usable pfm backup: ")
    assert r.err.rstrip().endswith("nothing was changed")
    assert _files_snapshot(env) == before
    assert not list(env.root.joinpath("var").glob(".pfm-restore-*"))
    truncated = env.root / "short.tar.gz"
    truncated.write_bytes(archive.read_bytes()[:300])
    r = env.run("restore", str(truncated), "--force")
    assert r.code == exitcodes.INVALID and "not a usable pfm backup" in r.err
    assert _files_snapshot(env) == before


def _rebuild(src: Path, dest: Path, edit: Callable[[str, bytes], bytes | None]) -> None:
    """Copy an archive member by member, letting ``edit`` change or drop members."""
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dest, "w:gz") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isfile() else b""  # type: ignore[union-attr]
            new = edit(m.name, data)
            if new is None:
                continue
            m.size = len(new)
            tout.addfile(m, io.BytesIO(new) if m.isfile() else None)


def test_tampered_members_fail_their_checksum(env: Env) -> None:
    """A member whose bytes differ from the manifest's sha256 is refused by name."""
    _populate(env)
    archive = env.root / "ok.tar.gz"
    assert env.run("backup", "--out", str(archive)).code == 0
    evil = env.root / "evil.tar.gz"
    _rebuild(archive, evil, lambda n, d: b"EVIL KEY\n" if n.endswith("s1.key") else d)
    r = env.run("restore", str(evil), "--force", "--dry-run")
    assert r.code == exitcodes.INVALID
    assert "member dkim/example.org/s1.key fails its sha256 check" in r.err


def test_corrupted_database_fails_integrity_check(env: Env) -> None:
    """A database copy that is not intact is refused even when the manifest matches it."""
    _populate(env)
    archive = env.root / "ok.tar.gz"
    assert env.run("backup", "--out", str(archive)).code == 0
    broken: dict[str, str] = {}

    def edit(name: str, data: bytes) -> bytes:
        if name == "directory.sqlite":
            data = data[:100] + b"\x00" * 4096 + data[4196:]  # zero the rest of page 1 onwards
            broken["sha"] = hashlib.sha256(data).hexdigest()
        elif name == "manifest.json":
            return b""  # replaced below
        return data

    step = env.root / "step.tar.gz"
    _rebuild(archive, step, edit)
    with tarfile.open(archive, "r:gz") as t:
        manifest = json.loads(t.extractfile("manifest.json").read())  # type: ignore[union-attr]
    manifest["members"]["directory.sqlite"]["sha256"] = broken["sha"]
    blob = json.dumps(manifest).encode()
    final = env.root / "final.tar.gz"
    _rebuild(step, final, lambda n, d: blob if n == "manifest.json" else d)
    r = env.run("restore", str(final), "--force")
    assert r.code == exitcodes.INVALID
    assert "directory.sqlite" in r.err and "nothing was changed" in r.err


def test_unsafe_member_paths_are_refused(env: Env) -> None:
    """A member escaping the archive (../) is refused before anything is written."""
    _populate(env)
    archive = env.root / "ok.tar.gz"
    assert env.run("backup", "--out", str(archive)).code == 0
    evil = env.root / "escape.tar.gz"
    with tarfile.open(archive, "r:gz") as tin, tarfile.open(evil, "w:gz") as tout:
        for m in tin.getmembers():
            tout.addfile(m, tin.extractfile(m) if m.isfile() else None)
        ti = tarfile.TarInfo("dkim/../../escaped")
        ti.size = 3
        tout.addfile(ti, io.BytesIO(b"bad"))
    r = env.run("restore", str(evil), "--force")
    assert r.code == exitcodes.INVALID and "unsafe path" in r.err
    assert not (env.root / "escaped").exists()


def test_restore_onto_a_fresh_machine_and_dry_run(env: Env, tmp_path: Path) -> None:
    """--dry-run verifies and writes nothing; an absent directory is restored without --force."""
    _populate(env)
    before = _state(env)
    archive = env.root / "ok.tar.gz"
    assert env.run("backup", "--out", str(archive)).code == 0
    for p in (env.db, Path(str(env.db) + "-wal"), Path(str(env.db) + "-shm")):
        if p.exists():
            p.unlink()
    for p in sorted(env.dkim.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    env.dkim.rmdir()
    r = env.run("restore", str(archive), "--dry-run")
    assert r.code == 0, r.err
    assert "dry run: nothing written" in r.out and not env.db.exists() and not env.dkim.exists()
    r = env.run("restore", str(archive))
    assert r.code == 0, r.err
    assert _state(env) == before
    assert not Path(str(env.db) + ".pre-restore").exists()


def test_backup_without_dkim_dir_and_missing_database(env: Env) -> None:
    """A missing DKIM dir is fine (not in the archive); a missing database is a clear error."""
    r = env.run("backup")
    assert r.code == exitcodes.FAILURE and "does not exist" in r.err
    b = env.backend()
    b.close()
    r = env.run("backup")
    assert r.code == 0, r.err
    assert "dkim: no DKIM directory" in r.out
    made = list((env.root / "backups").glob("pfm-backup-*.tar.gz"))
    assert len(made) == 1 and (made[0].stat().st_mode & 0o777) == 0o600
    assert [p.name for p in (env.root / "backups").iterdir()] == [made[0].name]  # no temp left
