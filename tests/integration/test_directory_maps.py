"""The secret-free maps file beside the SQLite directory: contents, sync, rebuild, Postfix."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.config import DirectoryConfig
from services.directory.backend import open_backend
from services.directory.model import (
    Alias,
    AliasDomain,
    AppPassword,
    AuditEntry,
    Change,
    Create,
    Delete,
    DirectoryError,
    Domain,
    Mailbox,
    NotFound,
    Replace,
    Unavailable,
)
from services.directory.sqlite import SqliteBackend
from services.directory.sqlite_maps import (
    MAPS_APPLICATION_ID,
    TABLES,
    default_maps_path,
)
from services.directory.sqlite_schema import APPLICATION_ID, migrate
from services.render.postfix import SQL_MAPS

pytestmark = pytest.mark.integration

HASH = "{SHA512-CRYPT}$6$mapsSALT$c2VjcmV0LWhhc2gtdGhhdC1tdXN0LW5vdC1sZWFr"
HASH2 = "{BLF-CRYPT}$2y$05$anotherSecretHashValueThatMustNotLeakAnywhere00"
TOTP = "JBSWY3DPEHPK3PXPMAPSSECRET"
APP_HASH = "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$YXBwc2FsdA$YXBwLWhhc2gtc2VjcmV0"
SECRETS = (HASH, HASH2, TOTP, APP_HASH, "$6$mapsSALT", "argon2id", "BLF-CRYPT")

EXPECTED_COLUMNS = {
    "domains": ["name", "active"],
    "mailboxes": ["address", "local_part", "domain", "quota", "active", "name"],
    "aliases": ["address", "local_part", "domain", "active"],
    "alias_targets": ["alias", "position", "target"],
    "alias_domains": ["name", "target", "active"],
    "meta": ["id", "generation"],
}


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def maps_rows(maps: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every maps table's rows, sorted."""
    conn = ro(maps)
    try:
        return {
            t.name: sorted(conn.execute(f"SELECT {', '.join(t.columns)} FROM {t.name}"))
            for t in TABLES.values()
        }
    finally:
        conn.close()


def projected_rows(db: Path) -> dict[str, list[tuple[object, ...]]]:
    """The directory's rows reduced to the maps columns, sorted."""
    conn = ro(db)
    try:
        return {
            t.name: sorted(conn.execute(f"SELECT {', '.join(t.columns)} FROM {t.name}"))
            for t in TABLES.values()
        }
    finally:
        conn.close()


def generations(db: Path, maps: Path) -> tuple[int, int]:
    with ro(db) as a, ro(maps) as b:
        got = (
            a.execute("SELECT generation FROM meta").fetchone()[0],
            b.execute("SELECT generation FROM meta").fetchone()[0],
        )
    a.close()
    b.close()
    return got


def assert_in_step(db: Path, maps: Path) -> None:
    assert maps_rows(maps) == projected_rows(db)
    main_gen, maps_gen = generations(db, maps)
    assert main_gen == maps_gen


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[SqliteBackend, Path, Path]]:
    db = tmp_path / "directory.db"
    b = SqliteBackend(str(db), maps_group="")
    try:
        yield b, db, tmp_path / "directory.maps.db"
    finally:
        b.close()


def populate(b: SqliteBackend) -> None:
    b.write(
        [
            Create(Domain("example.org")),
            Create(Domain("off.org", active=False)),
            Create(Mailbox("bob@example.org", HASH, name="Bob", quota=1000, totp_secret=TOTP)),
            Create(Mailbox("ann@example.org", HASH2)),
            Create(Mailbox("eve@off.org", HASH)),
            Create(AppPassword("ap-1", "bob@example.org", "phone", APP_HASH)),
            Create(Alias("list@example.org", ("bob@example.org", "ann@example.org"))),
            Create(Alias("@example.org", ("bob@example.org",))),
            Create(AliasDomain("alias.org", "example.org")),
        ],
        [AuditEntry(1.0, "test", "populate", "example.org")],
    )


# --------------------------------------------------------------------------- the files


def test_default_maps_path_replaces_the_extension() -> None:
    """The maps file defaults to <path stem>.maps.db beside the directory."""
    assert default_maps_path("/var/lib/pfm/directory.db") == "/var/lib/pfm/directory.maps.db"
    assert default_maps_path("/x/d.sqlite") == "/x/d.maps.db"
    assert default_maps_path("/x/dir.data") == "/x/dir.data.maps.db"


def test_file_modes_and_journal_modes(tmp_path: Path) -> None:
    """The directory is 0600, the maps file 0640, both in rollback-journal mode (no WAL)."""
    db = tmp_path / "var" / "d.sqlite"
    old = os.umask(0o077)  # even a strict umask leaves the maps file group-readable
    try:
        b = SqliteBackend(str(db), maps_group="")
    finally:
        os.umask(old)
    try:
        populate(b)
        maps = tmp_path / "var" / "d.maps.db"
        assert (mode_of(db), mode_of(maps)) == (0o600, 0o640)
        for f in (db, maps):
            assert f.read_bytes()[18:20] == b"\x01\x01"  # file format: rollback journal
            assert not Path(f"{f}-wal").exists() and not Path(f"{f}-journal").exists()
        conn = b._conn()
        assert conn.execute("PRAGMA main.journal_mode").fetchone()[0] == "delete"
        assert conn.execute("PRAGMA maps.journal_mode").fetchone()[0] == "delete"
        assert conn.execute("PRAGMA main.synchronous").fetchone()[0] == 2  # FULL
    finally:
        b.close()


def require_root() -> None:
    """Skip (fail under CI=true) unless running as root, like require_binary."""
    from tests.conftest import integration_required

    if os.geteuid() != 0:
        msg = "needs root (chgrp, switching to user nobody)"
        if integration_required():
            pytest.fail(msg)
        pytest.skip(msg)


def test_maps_file_gets_the_group_and_its_new_folder_too(tmp_path: Path) -> None:
    """As root, the maps file and a folder pfm creates for it belong to maps_group."""
    require_root()
    b = SqliteBackend(str(tmp_path / "new" / "d.db"), maps_group="nogroup")
    b.close()
    maps = tmp_path / "new" / "d.maps.db"
    assert maps.stat().st_gid == 65534 and mode_of(maps) == 0o640
    assert (tmp_path / "new").stat().st_gid == 65534 and mode_of(tmp_path / "new") == 0o750
    assert (tmp_path / "new" / "d.db").stat().st_gid == 0  # the directory keeps root's group


def test_unknown_group_is_a_warning_not_an_error(tmp_path: Path) -> None:
    """A maps_group that does not exist leaves the file 0640, warns, and writes still work."""
    b = SqliteBackend(str(tmp_path / "d.db"), maps_group="no-such-group-pfm")
    try:
        assert any("no-such-group-pfm" in w for w in b.maps_warnings)
        b.write([Create(Domain("example.org"))], [])
        assert mode_of(tmp_path / "d.maps.db") == 0o640
        assert maps_rows(tmp_path / "d.maps.db")["domains"] == [("example.org", 1)]
    finally:
        b.close()


def test_unreachable_folder_is_reported(tmp_path: Path) -> None:
    """A parent folder the maps group cannot search is named in a warning."""
    b = SqliteBackend(str(tmp_path / "d.db"), maps_group="nogroup")  # tmp_path is 0700
    b.close()
    assert any("cannot reach" in w and str(tmp_path) in w for w in b.maps_warnings)


def test_open_backend_passes_the_maps_settings(tmp_path: Path) -> None:
    """[directory] maps_path and maps_group reach the SQLite backend."""
    cfg = DirectoryConfig(
        path=str(tmp_path / "d.db"), maps_path=str(tmp_path / "m" / "lookups.db"), maps_group=""
    )
    b = open_backend(cfg)
    try:
        assert isinstance(b, SqliteBackend)
        assert b.maps_path == str(tmp_path / "m" / "lookups.db")
        b.write([Create(Domain("example.org"))], [])
        assert maps_rows(tmp_path / "m" / "lookups.db")["domains"] == [("example.org", 1)]
        assert not (tmp_path / "d.maps.db").exists()
    finally:
        b.close()


def test_config_keys_parse() -> None:
    """[directory] maps_path and maps_group parse from TOML, defaulting to "" and postfix."""
    from services.config import parse_config_text

    cfg = parse_config_text('[directory]\nmaps_path = "/srv/m.db"\nmaps_group = "mail"\n')
    assert (cfg.directory.maps_path, cfg.directory.maps_group) == ("/srv/m.db", "mail")
    assert (DirectoryConfig().maps_path, DirectoryConfig().maps_group) == ("", "postfix")


def test_dovecot_userdb_queries_run_on_the_maps_file(
    files: tuple[SqliteBackend, Path, Path],
) -> None:
    """The rendered Dovecot userdb and iterate queries give the same rows on maps and main."""
    from services.render.dovecot import ITERATE_QUERY, user_query

    b, db, maps = files
    populate(b)
    query = user_query(DirectoryConfig()).replace("%Lu", "bob@example.org")
    with ro(db) as main_conn, ro(maps) as maps_conn:
        for sql in (query, ITERATE_QUERY):
            got = maps_conn.execute(sql).fetchall()
            assert got and got == main_conn.execute(sql).fetchall()
    main_conn.close()
    maps_conn.close()


def test_maps_path_equal_to_path_is_refused(tmp_path: Path) -> None:
    """Pointing maps_path at the directory file itself is refused before anything is made."""
    with pytest.raises(DirectoryError, match="must differ"):
        SqliteBackend(str(tmp_path / "d.db"), maps_path=str(tmp_path / "d.db"))
    assert not (tmp_path / "d.db").exists()


def test_foreign_maps_file_is_refused_untouched(tmp_path: Path) -> None:
    """A maps_path naming some other application's SQLite file is refused, not overwritten."""
    other = tmp_path / "other.db"
    raw = sqlite3.connect(other)
    raw.execute("CREATE TABLE precious (x)")
    raw.execute("INSERT INTO precious VALUES (42)")
    raw.commit()
    raw.close()
    before = other.read_bytes()
    with pytest.raises(DirectoryError, match="not a pfm maps file"):
        SqliteBackend(str(tmp_path / "d.db"), maps_path=str(other), maps_group="")
    assert other.read_bytes() == before


# --------------------------------------------------------------------------- contents


def test_maps_schema_is_the_lookup_subset(
    files: tuple[SqliteBackend, Path, Path],
) -> None:
    """The maps file has exactly the lookup tables/columns, and its own application id."""
    b, db, maps = files
    populate(b)
    conn = ro(maps)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert sorted(tables) == sorted(EXPECTED_COLUMNS)
        for table, columns in EXPECTED_COLUMNS.items():
            got = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            assert got == columns, table
        assert conn.execute("PRAGMA application_id").fetchone()[0] == MAPS_APPLICATION_ID
        assert MAPS_APPLICATION_ID != APPLICATION_ID
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"mailboxes_domain_local", "aliases_domain", "alias_targets_target"} <= indexes
    finally:
        conn.close()
    assert_in_step(db, maps)


def test_no_secret_reaches_the_maps_file(files: tuple[SqliteBackend, Path, Path]) -> None:
    """No password hash, TOTP secret or app password hash appears anywhere in the maps bytes."""
    b, db, maps = files
    populate(b)
    b.write([Replace(Mailbox("bob@example.org", HASH2, name="Bob B", totp_secret=TOTP))], [])
    b.write([Delete("mailbox", "ann@example.org")], [])
    b.write([Create(Mailbox("ann@example.org", HASH, totp_secret=TOTP))], [])
    data = maps.read_bytes()
    assert HASH.encode() in db.read_bytes()  # the directory does hold it
    for secret in SECRETS:
        assert secret.encode() not in data, secret
    assert b"password" not in data.lower() and b"totp" not in data.lower()


# --------------------------------------------------------------------------- sync


def test_maps_follow_every_kind_of_change(files: tuple[SqliteBackend, Path, Path]) -> None:
    """After each write the maps rows equal the directory's lookup columns."""
    b, db, maps = files
    populate(b)
    assert_in_step(db, maps)
    steps: list[list[Change]] = [
        [Replace(Domain("off.org", active=True))],
        [Replace(Mailbox("bob@example.org", HASH, name="Robert", quota=5, active=False))],
        [Replace(Alias("list@example.org", ("ann@example.org",)))],  # fewer targets
        [Replace(Alias("list@example.org", ("a@x.test", "b@x.test", "c@x.test")))],  # more
        [Delete("alias", "list@example.org")],  # cascades to its targets
        [Replace(AliasDomain("alias.org", "off.org", active=False))],
        [Delete("alias_domain", "alias.org")],
        [Create(Mailbox(f"u{i}@off.org", HASH)) for i in range(50)],  # executemany path
        [Replace(Mailbox(f"u{i}@off.org", HASH, quota=i)) for i in range(50)],
        [Delete("mailbox", f"u{i}@off.org") for i in range(0, 50, 2)],
        [Create(Alias(f"a{i}@off.org", (f"u{i}@off.org",))) for i in range(1, 50, 2)],
        [Delete("mailbox", "eve@off.org"), Delete("app_password", "ap-1")],
        [
            Create(Domain("new.org")),
            Create(Mailbox("x@new.org")),
            Delete("mailbox", "x@new.org"),
            Create(Mailbox("x@new.org", name="again")),
        ],
    ]
    for i, batch in enumerate(steps):
        b.write(batch, [AuditEntry(float(i), "test", "step", str(i))])
        assert_in_step(db, maps)


def test_group_fallback_path_keeps_maps_in_step(files: tuple[SqliteBackend, Path, Path]) -> None:
    """A batch replayed row by row (executemany hit a conflict) still syncs the maps."""
    b, db, maps = files
    populate(b)
    with pytest.raises(NotFound):
        b.write([Replace(Mailbox("bob@example.org", quota=9)), Replace(Mailbox("no@x.org"))], [])
    assert_in_step(db, maps)
    assert maps_rows(maps)["mailboxes"][1][3] == 1000  # bob's quota unchanged


def test_write_without_lookup_changes_leaves_maps_untouched(
    files: tuple[SqliteBackend, Path, Path],
) -> None:
    """Password, TOTP step, app password and audit-only writes do not touch the maps file."""
    b, db, maps = files
    populate(b)
    before, gens = maps.read_bytes(), generations(db, maps)
    mb = b.get_mailbox("bob@example.org")
    assert mb is not None
    b.write(
        [
            Replace(
                Mailbox(
                    mb.address,
                    HASH2,
                    name=mb.name,
                    quota=mb.quota,
                    totp_secret=TOTP,
                    totp_last_step=12345,
                    password_changed=99.0,
                )
            )
        ],
        [],
    )
    b.write([Create(AppPassword("ap-2", "bob@example.org", "laptop", APP_HASH))], [])
    b.write([], [AuditEntry(2.0, "test", "noop", "x")])
    assert maps.read_bytes() == before
    assert generations(db, maps) == gens


def test_failed_write_leaves_both_files_unchanged(
    files: tuple[SqliteBackend, Path, Path],
) -> None:
    """A batch failing at its last change leaves the directory and maps files byte-identical."""
    b, db, maps = files
    populate(b)
    before = (db.read_bytes(), maps.read_bytes())
    batch: list[Change] = [
        Create(Domain("more.org")),
        *(Create(Mailbox(f"m{i}@more.org", HASH)) for i in range(200)),
        Replace(Alias("list@example.org", ("x@y.test",))),
        Delete("mailbox", "ghost@example.org"),
    ]
    with pytest.raises(NotFound):
        b.write(batch, [AuditEntry(3.0, "test", "fail", "x")])
    assert (db.read_bytes(), maps.read_bytes()) == before
    assert_in_step(db, maps)


# --------------------------------------------------------------------------- rebuild


def test_deleted_maps_file_is_rebuilt_at_open(tmp_path: Path) -> None:
    """Removing the maps file and reopening the directory recreates it in full."""
    db, maps = tmp_path / "d.db", tmp_path / "d.maps.db"
    b = SqliteBackend(str(db), maps_group="")
    populate(b)
    b.close()
    maps.unlink()
    b = SqliteBackend(str(db), create=False, maps_group="")
    b.close()
    assert mode_of(maps) == 0o640
    assert_in_step(db, maps)
    assert len(maps_rows(maps)["mailboxes"]) == 3


def test_old_copy_of_maps_is_rebuilt_at_open(tmp_path: Path) -> None:
    """A maps file restored from an older copy (another generation) is rebuilt at open."""
    db, maps = tmp_path / "d.db", tmp_path / "d.maps.db"
    b = SqliteBackend(str(db), maps_group="")
    populate(b)
    shutil.copy2(maps, tmp_path / "old.db")
    b.write([Delete("alias", "list@example.org"), Create(Mailbox("new@example.org"))], [])
    b.close()
    shutil.copy2(tmp_path / "old.db", maps)  # in place: same inode, old generation
    assert maps_rows(maps) != projected_rows(db)
    SqliteBackend(str(db), maps_group="").close()
    assert_in_step(db, maps)


def test_maps_replaced_while_open_are_rebuilt_at_next_write(
    files: tuple[SqliteBackend, Path, Path], tmp_path: Path
) -> None:
    """An open backend notices a maps file replaced, deleted or rewound under it and rebuilds."""
    b, db, maps = files
    populate(b)
    shutil.copy2(maps, tmp_path / "old.db")
    b.write([Create(Mailbox("c1@example.org"))], [])
    os.replace(tmp_path / "old.db", maps)  # new inode
    b.write([Create(Mailbox("c2@example.org"))], [])
    assert_in_step(db, maps)
    maps.unlink()  # gone
    b.write([Create(Mailbox("c3@example.org"))], [])
    assert_in_step(db, maps)
    assert mode_of(maps) == 0o640
    shutil.copy2(maps, tmp_path / "old2.db")
    b.write([Create(Mailbox("c4@example.org"))], [])
    shutil.copyfile(tmp_path / "old2.db", maps)  # same inode, older generation
    b.write([Create(Mailbox("c5@example.org"))], [])
    assert_in_step(db, maps)
    assert [r[0] for r in maps_rows(maps)["mailboxes"]][:5] == [
        "ann@example.org",
        "bob@example.org",
        "c1@example.org",
        "c2@example.org",
        "c3@example.org",
    ]


def test_rebuild_maps_repairs_tampering(files: tuple[SqliteBackend, Path, Path]) -> None:
    """rebuild_maps() restores rows someone changed in the maps file by hand."""
    b, db, maps = files
    populate(b)
    raw = sqlite3.connect(maps)
    raw.execute("UPDATE mailboxes SET active = 0")
    raw.execute("DELETE FROM alias_targets")
    raw.execute("INSERT INTO domains VALUES ('evil.test', 1)")
    raw.commit()
    raw.close()
    b.rebuild_maps()
    assert_in_step(db, maps)


def test_wal_directory_is_switched_to_rollback_journal(tmp_path: Path) -> None:
    """A directory file left in WAL mode by an older pfm is switched at open, data kept."""
    db = tmp_path / "d.db"
    fd = os.open(db, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    raw = sqlite3.connect(db, isolation_level=None)
    assert raw.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
    migrate(raw, str(db))
    raw.execute("INSERT INTO domains (name) VALUES ('example.org')")
    raw.close()
    assert db.read_bytes()[18:20] == b"\x02\x02"
    b = SqliteBackend(str(db), maps_group="")
    try:
        assert db.read_bytes()[18:20] == b"\x01\x01"
        assert [d.name for d in b.list_domains()] == ["example.org"]
        assert maps_rows(tmp_path / "d.maps.db")["domains"] == [("example.org", 1)]
    finally:
        b.close()


def test_wal_directory_in_use_elsewhere_is_unavailable(tmp_path: Path) -> None:
    """A WAL directory still open in another process gives Unavailable with what to do."""
    db = tmp_path / "d.db"
    raw = sqlite3.connect(db, isolation_level=None)
    raw.execute("PRAGMA journal_mode = WAL")
    migrate(raw, str(db))
    raw.execute("BEGIN")
    raw.execute("SELECT count(*) FROM domains").fetchone()  # an old daemon reading
    try:
        with pytest.raises(Unavailable, match="WAL mode and open in another process"):
            SqliteBackend(str(db), maps_group="", busy_timeout=0.2)
    finally:
        raw.execute("COMMIT")
        raw.close()
    SqliteBackend(str(db), maps_group="").close()  # fine once it is closed
    assert db.read_bytes()[18:20] == b"\x01\x01"


def test_bulk_import_of_100k_mailboxes_with_maps(files: tuple[SqliteBackend, Path, Path]) -> None:
    """100,000 mailboxes in one write() land in both files (time printed, bound generous)."""
    b, db, maps = files
    b.write([Create(Domain("example.org"))], [])
    batch = [Create(Mailbox(f"user{i:06d}@example.org", HASH)) for i in range(100_000)]
    t0 = time.perf_counter()
    b.write(batch, [AuditEntry(1.0, "import", "mailbox.import", "example.org")])
    elapsed = time.perf_counter() - t0
    t0 = time.perf_counter()
    b.rebuild_maps()
    rebuild = time.perf_counter() - t0
    print(f"\n100k Create(Mailbox) with maps: {elapsed:.2f} s; rebuild_maps(): {rebuild:.2f} s")
    assert elapsed < 60
    conn = ro(maps)
    try:
        assert conn.execute("SELECT count(*) FROM mailboxes").fetchone()[0] == 100_000
    finally:
        conn.close()
    assert generations(db, maps)[0] == generations(db, maps)[1]


# --------------------------------------------------------------------------- real Postfix


POSTMAP_CASES = [
    ("virtual_mailbox_domains.cf", "example.org", "example.org"),
    ("virtual_mailbox_domains.cf", "off.org", None),
    ("virtual_mailbox_maps.cf", "bob@example.org", "example.org/bob/"),
    ("virtual_mailbox_maps.cf", "eve@off.org", None),
    ("virtual_alias_maps.cf", "list@example.org", "bob@example.org,ann@example.org"),
    ("virtual_alias_domains.cf", "alias.org", "alias.org"),
    ("virtual_alias_domain_maps.cf", "ann@alias.org", "ann@example.org"),
    ("sender_login_maps.cf", "bob@example.org", "bob@example.org"),
]


@pytest.fixture
def postfix_conf(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """A world-traversable dir with a directory, its maps (group nogroup) and map .cf files."""
    from tests.conftest import require_binary
    from tests.e2e.postfix_instance import world_dir

    require_root()
    require_binary("postmap")
    require_binary("setpriv")
    d = world_dir("maps-")
    try:
        db, maps = d / "directory.db", d / "directory.maps.db"
        conf = d / "postfix"
        conf.mkdir(mode=0o755)
        (conf / "main.cf").write_text(
            "compatibility_level = 3.6\nmyhostname = localhost.localdomain\n"
        )
        for name, query in SQL_MAPS.items():
            (conf / name).write_text(f"dbpath = {maps}\nquery = {query}\n")
            (conf / name).chmod(0o644)
        (conf / "main.cf").chmod(0o644)
        past = time.time() - 60  # Postfix waits until a config file is >= 1 s old
        for f in conf.iterdir():
            os.utime(f, (past, past))
        yield db, maps, conf
    finally:
        shutil.rmtree(d, ignore_errors=True)


def postmap_as_nobody(conf: Path, name: str, key: str) -> subprocess.CompletedProcess[str]:
    """``postmap -q KEY sqlite:CF`` run as nobody:nogroup (no other groups)."""
    cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    postmap = shutil.which("postmap") or "/usr/sbin/postmap"
    return subprocess.run(
        [*cmd, postmap, "-c", str(conf), "-q", key, f"sqlite:{conf / name}"],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_postmap_as_unprivileged_user_reads_the_maps(postfix_conf: tuple[Path, Path, Path]) -> None:
    """Real postmap as nobody (group nogroup) answers every rendered map from the 0640 maps file."""
    db, maps, conf = postfix_conf
    b = SqliteBackend(str(db), maps_group="nogroup")
    try:
        populate(b)
    finally:
        b.close()
    assert mode_of(maps) == 0o640 and mode_of(db) == 0o600
    for name, key, expected in POSTMAP_CASES:
        out = postmap_as_nobody(conf, name, key)
        if expected is None:
            assert (out.returncode, out.stdout) == (1, ""), (name, key, out.stderr)
        else:
            assert (out.returncode, out.stdout.strip()) == (0, expected), (name, key, out.stderr)
    # the same user cannot open the directory itself
    (conf / "secret.cf").write_text(f"dbpath = {db}\nquery = SELECT address FROM mailboxes\n")
    (conf / "secret.cf").chmod(0o644)
    os.utime(conf / "secret.cf", (time.time() - 60, time.time() - 60))
    out = postmap_as_nobody(conf, "secret.cf", "bob@example.org")
    assert out.returncode != 0 and "open database" in out.stderr


def test_postmap_during_writes(postfix_conf: tuple[Path, Path, Path]) -> None:
    """Postmap reads through an open write transaction; only a commit's lock makes it fail."""
    db, maps, conf = postfix_conf
    b = SqliteBackend(str(db), maps_group="nogroup")
    try:
        populate(b)
        case = ("virtual_mailbox_maps.cf", "bob@example.org")
        # a pfm write transaction in progress (RESERVED lock on both files): readers go on
        conn = b._conn()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE maps.mailboxes SET active = 0")  # uncommitted: not visible
        journal = Path(f"{maps}-journal")  # SQLite gives it the maps file's mode and group
        assert (mode_of(journal), journal.stat().st_gid) == (0o640, 65534)
        out = postmap_as_nobody(conf, *case)
        assert (out.returncode, out.stdout.strip()) == (0, "example.org/bob/"), out.stderr
        conn.execute("ROLLBACK")
        # the commit window (EXCLUSIVE lock): Postfix sets no busy timeout and gives up
        holder = sqlite3.connect(maps, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        out = postmap_as_nobody(conf, *case)
        holder.execute("ROLLBACK")
        holder.close()
        assert out.returncode != 0 and "database is locked" in out.stderr
        out = postmap_as_nobody(conf, *case)  # and succeeds once the lock is gone
        assert (out.returncode, out.stdout.strip()) == (0, "example.org/bob/"), out.stderr

        # real writes running meanwhile: every answer is right or a "locked" failure
        stop = threading.Event()
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                i = 0
                while not stop.wait(0.02):  # an admin's pace: a write every ~20 ms
                    b.write([Create(Mailbox(f"w{i}@example.org", HASH))], [])
                    i += 1
            except BaseException as exc:  # reported below
                errors.append(exc)

        t = threading.Thread(target=writer)
        t.start()
        outcomes = {"ok": 0, "locked": 0}
        try:
            for _ in range(12):
                out = postmap_as_nobody(conf, *case)
                if out.returncode == 0:
                    assert out.stdout.strip() == "example.org/bob/"
                    outcomes["ok"] += 1
                else:
                    assert "database is locked" in out.stderr, out.stderr
                    outcomes["locked"] += 1
        finally:
            stop.set()
            t.join()
        print(f"\npostmap during writes: {outcomes}")
        assert errors == [] and outcomes["ok"] > 0
        assert_in_step(db, maps)
    finally:
        b.close()
