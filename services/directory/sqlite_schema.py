"""The SQLite directory schema and its ordered migrations (stdlib only).

The schema version lives in ``PRAGMA user_version``; step *n* of :data:`MIGRATIONS` takes
the database from version *n* to *n + 1*. :func:`migrate` applies every missing step in one
transaction at open and refuses a database written by a newer version of the code, or a
SQLite file that belongs to some other application.

Column names are chosen so that Postfix ``sqlite:`` maps and Dovecot's SQL userdb can query
the tables directly: ``active`` is always ``0``/``1``, mailboxes and aliases carry their
``domain`` and ``local_part`` next to the full ``address``, alias targets are one row each
(Postfix joins several result rows with commas itself). Postfix and Dovecot read the
secret-free copy of those tables in the maps file (:mod:`.sqlite_maps`), not this file.
"""

from __future__ import annotations

import sqlite3

from .model import DirectoryError

APPLICATION_ID = 0x50464D31  # "PFM1": marks the file as a Postfix Manager directory

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the initial schema
    (
        """CREATE TABLE domains (
            name TEXT PRIMARY KEY NOT NULL,
            active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
            description TEXT NOT NULL DEFAULT '',
            max_mailboxes INTEGER NOT NULL DEFAULT 0,
            max_aliases INTEGER NOT NULL DEFAULT 0,
            default_quota INTEGER NOT NULL DEFAULT 0,
            limits TEXT NOT NULL DEFAULT '{}',
            created REAL NOT NULL DEFAULT 0,
            modified REAL NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE mailboxes (
            address TEXT PRIMARY KEY NOT NULL,
            local_part TEXT NOT NULL,
            domain TEXT NOT NULL REFERENCES domains (name) ON DELETE RESTRICT,
            password_hash TEXT NOT NULL DEFAULT '',
            name TEXT NOT NULL DEFAULT '',
            quota INTEGER NOT NULL DEFAULT 0,
            active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
            limits TEXT NOT NULL DEFAULT '{}',
            totp_secret TEXT NOT NULL DEFAULT '',
            totp_last_step INTEGER NOT NULL DEFAULT 0,
            password_changed REAL NOT NULL DEFAULT 0,
            created REAL NOT NULL DEFAULT 0,
            modified REAL NOT NULL DEFAULT 0
        )""",
        "CREATE UNIQUE INDEX mailboxes_domain_local ON mailboxes (domain, local_part)",
        """CREATE TABLE aliases (
            address TEXT PRIMARY KEY NOT NULL,
            local_part TEXT NOT NULL,
            domain TEXT NOT NULL REFERENCES domains (name) ON DELETE RESTRICT,
            active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
            created REAL NOT NULL DEFAULT 0,
            modified REAL NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX aliases_domain ON aliases (domain)",
        """CREATE TABLE alias_targets (
            alias TEXT NOT NULL REFERENCES aliases (address) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            target TEXT NOT NULL,
            PRIMARY KEY (alias, position)
        )""",
        "CREATE INDEX alias_targets_target ON alias_targets (target)",
        """CREATE TABLE alias_domains (
            name TEXT PRIMARY KEY NOT NULL,
            target TEXT NOT NULL REFERENCES domains (name) ON DELETE RESTRICT,
            active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
            created REAL NOT NULL DEFAULT 0,
            modified REAL NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX alias_domains_target ON alias_domains (target)",
        """CREATE TABLE app_passwords (
            id TEXT PRIMARY KEY NOT NULL,
            address TEXT NOT NULL REFERENCES mailboxes (address) ON DELETE CASCADE,
            name TEXT NOT NULL DEFAULT '',
            password_hash TEXT NOT NULL DEFAULT '',
            scopes TEXT NOT NULL DEFAULT '[]',
            expires REAL NOT NULL DEFAULT 0,
            created REAL NOT NULL DEFAULT 0,
            last_used REAL NOT NULL DEFAULT 0,
            last_ip TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX app_passwords_address ON app_passwords (address)",
        """CREATE TABLE admins (
            name TEXT PRIMARY KEY NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('global', 'domain')),
            active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
            created REAL NOT NULL DEFAULT 0,
            modified REAL NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE admin_domains (
            admin TEXT NOT NULL REFERENCES admins (name) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            domain TEXT NOT NULL,
            PRIMARY KEY (admin, position)
        )""",
        "CREATE INDEX admin_domains_domain ON admin_domains (domain)",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            object TEXT NOT NULL,
            before TEXT,
            after TEXT
        )""",
        "CREATE INDEX audit_ts ON audit (ts)",
        """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
           BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
        """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
           BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    ),
    # 2: a generation counter, bumped by every write that changes lookup data, so the
    # secret-free maps file (:mod:`.sqlite_maps`) can tell whether it is in step
    (
        """CREATE TABLE meta (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            generation INTEGER NOT NULL DEFAULT 0
        )""",
        "INSERT INTO meta (id, generation) VALUES (1, 0)",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: str) -> int:
    """Bring the database on ``conn`` (autocommit mode) to :data:`SCHEMA_VERSION`.

    Returns the version found before migrating. Everything happens in one ``BEGIN
    IMMEDIATE`` transaction, so two processes opening a new file at once cannot both
    migrate it, and a failed step leaves the file as it was.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = int(conn.execute("PRAGMA user_version").fetchone()[0])
        app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        if app_id not in (0, APPLICATION_ID):
            raise DirectoryError(
                f"{path} is an SQLite database of another application "
                f"(application_id {app_id:#x}), not a pfm directory"
            )
        if found > SCHEMA_VERSION:
            raise DirectoryError(
                f"{path} has directory schema version {found}, newer than the {SCHEMA_VERSION} "
                "this pfm knows: upgrade pfm (refusing to touch it)"
            )
        if found == 0 and app_id == 0:
            tables = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
            ).fetchone()[0]
            if tables:
                raise DirectoryError(
                    f"{path} already holds tables that are not a pfm directory; refusing to "
                    "add the directory schema to it"
                )
        for step in MIGRATIONS[found:]:
            for statement in step:
                conn.execute(statement)
        if found != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID:d}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found
