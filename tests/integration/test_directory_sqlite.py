"""SQLite-specific behaviour of the directory backend: the file, its schema, concurrency, bulk."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from services.directory.model import (
    AuditEntry,
    Create,
    DirectoryError,
    Domain,
    Mailbox,
    Replace,
    Unavailable,
)
from services.directory.sqlite import SqliteBackend, open_sqlite
from services.directory.sqlite_schema import SCHEMA_VERSION

pytestmark = pytest.mark.integration

HASH = "{SHA512-CRYPT}$6$saltsalt$aGFzaGhhc2hoYXNoaGFzaGhhc2g"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_file_is_private(tmp_path: Path) -> None:
    """A new directory file is 0600, uses no WAL side files, and a missing parent is 0750."""
    path = tmp_path / "var" / "pfm" / "directory.sqlite"
    b = SqliteBackend(str(path), maps_group="")
    try:
        b.write([Create(Domain("example.org"))], [])
        assert mode_of(path) == 0o600
        assert mode_of(path.parent) == 0o750
        for suffix in ("-wal", "-shm", "-journal"):
            assert not Path(str(path) + suffix).exists()
        assert mode_of(path.parent / "directory.maps.db") == 0o640
    finally:
        b.close()


def test_private_mode_holds_under_a_loose_umask(tmp_path: Path) -> None:
    """The file is 0600 even when the process umask would allow more."""
    old = os.umask(0)
    try:
        b = open_sqlite(str(tmp_path / "d.sqlite"))
        b.close()
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "d.sqlite") == 0o600


def test_pragmas_are_set(tmp_path: Path) -> None:
    """Connections use the rollback journal, foreign keys, synchronous=FULL, a 5 s timeout."""
    b = SqliteBackend(str(tmp_path / "d.sqlite"))
    try:
        conn = b._conn()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA cache_spill").fetchone()[0] == 0
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    finally:
        b.close()


def test_create_false_refuses_a_missing_file(tmp_path: Path) -> None:
    """create=False raises DirectoryError naming the path and creates nothing."""
    path = tmp_path / "none.sqlite"
    with pytest.raises(DirectoryError, match=r"none\.sqlite does not exist"):
        SqliteBackend(str(path), create=False)
    assert not path.exists()


def test_migrates_an_empty_file(tmp_path: Path) -> None:
    """An existing empty file gets the whole schema and the current version."""
    path = tmp_path / "d.sqlite"
    path.touch(mode=0o600)
    b = SqliteBackend(str(path), create=False)
    try:
        assert b.schema_version_found == 0
        b.write([Create(Domain("example.org"))], [])
    finally:
        b.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    raw.close()
    assert {"domains", "mailboxes", "aliases", "alias_targets", "alias_domains"} <= tables
    assert {"app_passwords", "admins", "admin_domains", "audit"} <= tables


def test_reopen_keeps_data_and_skips_migration(tmp_path: Path) -> None:
    """Reopening a current database finds its version and keeps its contents."""
    path = str(tmp_path / "d.sqlite")
    b = SqliteBackend(path)
    b.write([Create(Domain("example.org"))], [])
    b.close()
    b = SqliteBackend(path)
    try:
        assert b.schema_version_found == SCHEMA_VERSION
        assert b.get_domain("example.org") is not None
    finally:
        b.close()


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    """A database with a schema newer than the code knows is refused, untouched."""
    path = str(tmp_path / "d.sqlite")
    SqliteBackend(path).close()
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(DirectoryError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        SqliteBackend(path)
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    raw.close()


def test_refuses_a_foreign_database(tmp_path: Path) -> None:
    """An SQLite file of some other application is refused rather than migrated."""
    path = str(tmp_path / "other.sqlite")
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE things (x)")
    raw.commit()
    raw.close()
    with pytest.raises(DirectoryError, match="not a pfm directory"):
        SqliteBackend(path)


def test_refuses_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    """A file that is not an SQLite database gives a DirectoryError, not a traceback."""
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not a database, just some text " * 200)
    with pytest.raises(DirectoryError, match="junk.sqlite"):
        SqliteBackend(str(path))


def test_audit_log_is_append_only(tmp_path: Path) -> None:
    """The schema itself refuses updates and deletes of audit rows."""
    path = str(tmp_path / "d.sqlite")
    b = SqliteBackend(path)
    b.write([], [AuditEntry(1.0, "a", "x.y", "o")])
    b.close()
    raw = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw.execute("UPDATE audit SET actor = 'mallory'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw.execute("DELETE FROM audit")
    finally:
        raw.close()


def test_locked_database_is_unavailable(tmp_path: Path) -> None:
    """A writer blocked past the busy timeout gets Unavailable with a clear message."""
    path = str(tmp_path / "d.sqlite")
    b = SqliteBackend(path, busy_timeout=0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(Unavailable, match="locked"):
            b.write([Create(Domain("example.org"))], [])
        holder.execute("ROLLBACK")
        b.write([Create(Domain("example.org"))], [])  # works again once released
        assert b.get_domain("example.org") is not None
    finally:
        holder.close()
        b.close()


def test_busy_writer_waits_for_the_lock(tmp_path: Path) -> None:
    """A write waits (busy timeout) for another process's transaction instead of failing."""
    path = str(tmp_path / "d.sqlite")
    b = SqliteBackend(path)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        holder.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
        release.start()
        t0 = time.monotonic()
        b.write([Create(Domain("example.org"))], [])
        assert time.monotonic() - t0 >= 0.25
        release.join()
        assert b.get_domain("example.org") is not None
    finally:
        holder.close()
        b.close()


def test_concurrent_threads_lose_no_update(tmp_path: Path) -> None:
    """Two threads sharing one backend each write 150 mailboxes; all 300 are there."""
    b = SqliteBackend(str(tmp_path / "d.sqlite"))
    b.write([Create(Domain("example.org"))], [])
    errors: list[BaseException] = []

    def writer(prefix: str) -> None:
        try:
            for i in range(150):
                entry = AuditEntry(float(i), prefix, "mailbox.add", f"{prefix}{i}@example.org")
                b.write([Create(Mailbox(f"{prefix}{i}@example.org", HASH))], [entry])
                assert b.get_mailbox(f"{prefix}{i}@example.org") is not None
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert b.count_mailboxes("example.org") == 300
        assert len(b.audit_log()) == 300
    finally:
        b.close()


WRITER = """
import sys
from services.directory.model import AuditEntry, Create, Mailbox
from services.directory.sqlite import SqliteBackend
path, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
b = SqliteBackend(path)
for i in range(n):
    addr = f"{prefix}{i}@example.org"
    b.write([Create(Mailbox(addr))], [AuditEntry(float(i), prefix, "mailbox.add", addr)])
b.close()
"""


def test_concurrent_processes_lose_no_update(tmp_path: Path) -> None:
    """Two processes writing the same file at once both succeed and lose nothing."""
    path = str(tmp_path / "d.sqlite")
    b = SqliteBackend(path)
    b.write([Create(Domain("example.org"))], [])
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root}
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, path, p, "200"], env=env, cwd=root)
        for p in ("p", "q")
    ]
    try:
        assert [p.wait(timeout=60) for p in procs] == [0, 0]
        assert b.count_mailboxes("example.org") == 400
        assert {e.actor for e in b.audit_log()} == {"p", "q"}
        assert len(b.audit_log()) == 400
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        b.close()


def test_concurrent_read_modify_write_keeps_both_changes(tmp_path: Path) -> None:
    """Replacing different mailboxes from two threads never undoes the other's change."""
    b = SqliteBackend(str(tmp_path / "d.sqlite"))
    b.write([Create(Domain("example.org"))], [])
    b.write([Create(Mailbox(f"u{i}@example.org")) for i in range(40)], [])

    def bump(start: int) -> None:
        for i in range(start, 40, 2):
            mb = b.get_mailbox(f"u{i}@example.org")
            assert mb is not None
            b.write([Replace(Mailbox(mb.address, quota=i + 1))], [])

    threads = [threading.Thread(target=bump, args=(s,)) for s in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert [m.quota for m in b.list_mailboxes("example.org")] == [
            int(m.address[1:].split("@")[0]) + 1 for m in b.list_mailboxes("example.org")
        ]
    finally:
        b.close()


def test_dead_threads_connections_are_closed(tmp_path: Path) -> None:
    """Connections of finished threads are closed when a new thread connects."""
    b = SqliteBackend(str(tmp_path / "d.sqlite"))
    try:
        for _ in range(5):
            t = threading.Thread(target=b.list_domains)
            t.start()
            t.join()
        assert len(b._conns) <= 2  # the opener's and at most the last thread's
    finally:
        b.close()


def test_closed_backend_refuses_calls(tmp_path: Path) -> None:
    """After close() every call raises DirectoryError instead of reopening silently."""
    b = SqliteBackend(str(tmp_path / "d.sqlite"))
    b.close()
    with pytest.raises(DirectoryError, match="closed"):
        b.list_domains()


def test_bulk_import_of_100k_mailboxes(tmp_path: Path) -> None:
    """100,000 mailboxes created in one write() are all stored (time printed, not asserted)."""
    b = SqliteBackend(str(tmp_path / "d.sqlite"))
    try:
        b.write([Create(Domain("example.org"))], [])
        batch = [Create(Mailbox(f"user{i:06d}@example.org", HASH)) for i in range(100_000)]
        t0 = time.perf_counter()
        b.write(batch, [AuditEntry(1.0, "import", "mailbox.import", "example.org")])
        elapsed = time.perf_counter() - t0
        print(f"\n100k Create(Mailbox) in one write(): {elapsed:.2f} s")
        assert b.count_mailboxes("example.org") == 100_000
        got = b.get_mailbox("user099999@example.org")
        assert got is not None and got.password_hash == HASH
        assert len(b.audit_log()) == 1
    finally:
        b.close()


# Postfix sqlite: map queries over this schema (the config renderer is meant to emit these).
POSTFIX_QUERIES = {
    "virtual_mailbox_domains": "SELECT name FROM domains WHERE name='%s' AND active=1",
    "virtual_mailbox_maps": (
        "SELECT m.domain || '/' || m.local_part || '/' FROM mailboxes m "
        "JOIN domains d ON d.name = m.domain "
        "WHERE m.address='%s' AND m.active=1 AND d.active=1"
    ),
    "virtual_alias_maps": (
        "SELECT t.target FROM aliases a JOIN alias_targets t ON t.alias = a.address "
        "JOIN domains d ON d.name = a.domain "
        "WHERE a.address='%s' AND a.active=1 AND d.active=1 ORDER BY t.position"
    ),
    "mailbox_self": "SELECT address FROM mailboxes WHERE address='%s' AND active=1",
    "virtual_alias_domains": "SELECT name FROM alias_domains WHERE name='%s' AND active=1",
    "alias_domain_maps": (
        "SELECT '%u@' || ad.target FROM alias_domains ad WHERE ad.name='%d' AND ad.active=1 "
        "AND (EXISTS (SELECT 1 FROM mailboxes m WHERE m.address = '%u@' || ad.target "
        "AND m.active=1) OR EXISTS (SELECT 1 FROM aliases a "
        "WHERE a.address = '%u@' || ad.target AND a.active=1))"
    ),
    "alias_domain_catchall": (
        "SELECT t.target FROM alias_domains ad JOIN aliases a ON a.address = '@' || ad.target "
        "JOIN alias_targets t ON t.alias = a.address "
        "WHERE '@' || ad.name = '%s' AND ad.active=1 AND a.active=1 ORDER BY t.position"
    ),
    "smtpd_sender_login_maps": (
        "SELECT address FROM mailboxes WHERE address='%s' AND active=1 "
        "UNION ALL SELECT t.target FROM aliases a JOIN alias_targets t ON t.alias = a.address "
        "WHERE a.address='%s' AND a.active=1 AND a.local_part <> ''"
    ),
}

POSTMAP_CASES = [
    ("virtual_mailbox_domains", "target.org", "target.org"),
    ("virtual_mailbox_domains", "alias.org", None),
    ("virtual_mailbox_domains", "off.org", None),
    ("virtual_mailbox_maps", "bob@target.org", "target.org/bob/"),
    ("virtual_mailbox_maps", "off@target.org", None),
    ("virtual_mailbox_maps", "eve@off.org", None),
    ("virtual_alias_maps", "list@target.org", "bob@target.org,x@elsewhere.test"),
    ("virtual_alias_maps", "@target.org", "bob@target.org"),
    ("virtual_alias_maps", "nobody@target.org", None),
    ("mailbox_self", "bob@target.org", "bob@target.org"),
    ("virtual_alias_domains", "alias.org", "alias.org"),
    ("alias_domain_maps", "bob@alias.org", "bob@target.org"),
    ("alias_domain_maps", "list@alias.org", "list@target.org"),
    ("alias_domain_maps", "nobody@alias.org", None),
    ("alias_domain_maps", "@alias.org", None),
    ("alias_domain_catchall", "@alias.org", "bob@target.org"),
    ("smtpd_sender_login_maps", "bob@target.org", "bob@target.org"),
    ("smtpd_sender_login_maps", "list@target.org", "bob@target.org,x@elsewhere.test"),
    ("smtpd_sender_login_maps", "@target.org", None),
]


def test_postfix_sqlite_maps_read_the_schema(tmp_path: Path) -> None:
    """Real `postmap -q` with the suggested sqlite: queries answers every lookup as expected."""
    from services.directory.model import Alias, AliasDomain
    from tests.conftest import require_binary

    postmap = require_binary("postmap")
    db = tmp_path / "d.sqlite"
    b = SqliteBackend(str(db))
    b.write(
        [
            Create(Domain("target.org")),
            Create(Domain("off.org", active=False)),
            Create(Mailbox("bob@target.org", HASH)),
            Create(Mailbox("off@target.org", HASH, active=False)),
            Create(Mailbox("eve@off.org", HASH)),
            Create(AliasDomain("alias.org", "target.org")),
            Create(Alias("@target.org", ("bob@target.org",))),
            Create(Alias("list@target.org", ("bob@target.org", "x@elsewhere.test"))),
        ],
        [],
    )
    b.close()
    conf = tmp_path / "postfix"
    conf.mkdir()
    (conf / "main.cf").write_text("compatibility_level = 3.6\n")
    for name, query in POSTFIX_QUERIES.items():
        (conf / f"{name}.cf").write_text(f"dbpath = {db}\nquery = {query}\n")
    for name, key, expected in POSTMAP_CASES:
        out = subprocess.run(
            [postmap, "-c", str(conf), "-q", key, f"sqlite:{conf / name}.cf"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if expected is None:
            assert (out.returncode, out.stdout) == (1, ""), (name, key, out.stderr)
        else:
            assert (out.returncode, out.stdout.strip()) == (0, expected), (name, key, out.stderr)


def test_writes_store_normalised_keys(tmp_path: Path) -> None:
    """Objects written with mixed-case or U-label keys are stored in normal form."""
    from services.directory.model import Alias

    b = SqliteBackend(str(tmp_path / "d.sqlite"))
    try:
        b.write(
            [
                Create(Domain("Bücher.Example.")),
                Create(Mailbox("Anna@BÜCHER.example")),
                Create(Alias("@bücher.example", ("ANNA@bücher.example",))),
            ],
            [],
        )
        assert [m.address for m in b.list_mailboxes()] == ["anna@xn--bcher-kva.example"]
        alias = b.get_alias("@xn--bcher-kva.example")
        assert alias is not None and alias.targets == ("anna@xn--bcher-kva.example",)
    finally:
        b.close()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (Create(Mailbox("a@example.org", quota="lots")), "quota"),  # type: ignore[arg-type]
        (Create(Mailbox("a@example.org", limits={"send": "10/1m"})), "limits"),  # type: ignore[dict-item]
        (Create(Mailbox("not-an-address")), "address"),
        (Create(Domain("example.org", created="yesterday")), "created"),  # type: ignore[arg-type]
    ],
    ids=["quota", "limits", "address", "created"],
)
def test_bad_values_are_refused_naming_the_field(
    tmp_path: Path, change: Create, field: str
) -> None:
    """A wrongly typed or invalid value raises InvalidInput naming the field; nothing is written."""
    from services.directory.model import InvalidInput

    b = SqliteBackend(str(tmp_path / "d.sqlite"))
    try:
        b.write([Create(Domain("other.org"))], [])
        with pytest.raises(InvalidInput) as err:
            b.write([Create(Domain("ok.org")), change], [])
        assert err.value.field == field
        assert [d.name for d in b.list_domains()] == ["other.org"]
    finally:
        b.close()
