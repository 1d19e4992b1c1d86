"""``pfm backup`` and ``pfm restore``: the directory and DKIM keys in one verified tar.gz.

What is in an archive and how restore protects the live directory is described in
:mod:`services.directory.backup`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from .. import common
from ..exitcodes import CONFLICT, FAILURE, INVALID, OK, CliError

BACKUP_EPILOG = """\
The SQLite directory is copied online with SQLite's backup API (a consistent snapshot while
pfm-authd and the CLI keep writing); the DKIM key directory is added when it exists. The
archive is written mode 0600, atomically. With backend = "ldap" the directory is an LDIF of
every entry pfm manages under base_dn (TOTP secrets, app passwords, admins and the audit log
included), read with the backend's connection settings. Default: [directory] backup_dir/pfm-backup-<UTC>.tar.gz

examples:
  pfm backup
  pfm backup --out /root/pfm-before-upgrade.tar.gz --json
"""

RESTORE_EPILOG = """\
Everything is verified first (sha256 of every member, PRAGMA integrity_check, schema
version, LDIF syntax); a bad archive changes nothing. A non-empty directory is only replaced
with --force; the previous database is kept as <path>.pre-restore and the previous DKIM keys as
<dkim_dir>.pre-restore. LDAP: --force deletes the pfm entries under base_dn, then adds the
backup's; LDAP has no transactions, so a failure midway exits 1 saying how far it got (run it
again). Stop pfm-authd while restoring, start it again afterwards.

examples:
  pfm restore /var/backups/pfm/pfm-backup-20260101T000000Z.tar.gz --dry-run
  pfm restore backup.tar.gz --force
"""


def register(sub: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    b = sub.add_parser(
        "backup",
        help="back up the directory and DKIM keys into one tar.gz",
        description="Write a consistent backup of the directory and the DKIM keys.",
        epilog=BACKUP_EPILOG,
        formatter_class=fmt,
    )
    b.add_argument(
        "--out", metavar="FILE", help="archive path (default: in [directory] backup_dir)"
    )
    b.add_argument("--json", action="store_true", help="print JSON")
    b.set_defaults(func=cmd_backup)

    r = sub.add_parser(
        "restore",
        help="restore the directory and DKIM keys from a backup (verified first)",
        description="Verify a backup archive, then replace the directory and DKIM keys with it.",
        epilog=RESTORE_EPILOG,
        formatter_class=fmt,
    )
    r.add_argument("file", metavar="FILE", help="a pfm backup archive")
    r.add_argument("--force", action="store_true", help="replace a non-empty directory")
    common.add_output_flags(r)
    r.set_defaults(func=cmd_restore)


def _counts_line(counts: Mapping[str, int]) -> str:
    keys = ("domains", "mailboxes", "aliases", "alias_domains", "app_passwords", "admins")
    shown = [f"{counts[k]} {k.replace('_', ' ')}" for k in keys if k in counts]
    return ", ".join(shown) or "-"


def cmd_backup(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from services.directory.backup import BackupError, create_backup

    cfg = common.load_cfg(args, environ)
    try:
        info = create_backup(cfg.directory, args.out)
    except BackupError as exc:
        raise CliError(str(exc), FAILURE) from None
    if args.json:
        common.print_json(info.as_dict())
        return OK
    d = info.as_dict()
    print(f"backup written: {info.path} ({d['size']} bytes)")
    print(f"  {info.backend}: {_counts_line(info.counts)}")
    print(f"  dkim: {d['dkim_files']} file(s)" if info.dkim else "  dkim: no DKIM directory")
    return OK


def cmd_restore(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from services.directory.backup import BackupError, restore_backup
    from services.directory.model import DirectoryError

    cfg = common.load_cfg(args, environ)
    try:
        report = restore_backup(cfg.directory, args.file, dry_run=args.dry_run, force=args.force)
    except DirectoryError as exc:
        if not isinstance(exc, BackupError):  # an LDAP restore failed midway
            raise CliError(str(exc), FAILURE) from None
        code = CONFLICT if "is not empty" in str(exc) else INVALID
        raise CliError(str(exc), code) from None
    if args.json:
        common.print_json(report.as_dict())
        return OK
    info = report.info
    verb = "would restore" if report.dry_run else "restored"
    print(f"{info.path}: verified ({info.backend}, {_counts_line(info.counts)})")
    print(f"{verb} the directory {report.target} from {common.fmt_time(info.created)}")
    if report.kept:
        print(f"  previous database kept as {report.kept}")
    if report.dkim_dir:
        print(f"  {verb} DKIM keys in {report.dkim_dir}")
    if report.dkim_kept:
        print(f"  previous DKIM keys kept as {report.dkim_kept}")
    if report.ldap:
        d = report.ldap
        print(
            f"  ldap: deleted {d['deleted']} existing entries, added {d['added']}, "
            f"updated {d['updated']} container(s)"
        )
    for note in report.notes:
        print(f"  {note}")
    if report.dry_run:
        print("dry run: nothing written")
    return OK
