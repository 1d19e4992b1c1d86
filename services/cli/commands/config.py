"""``pfm config``: render Postfix/Dovecot config for the directory, and check the setup."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import common
from ..exitcodes import FAILURE, INVALID, OK, CliError

if TYPE_CHECKING:
    import subprocess

    from services.config import Config
    from services.render import Rendered

DB_HINT = (
    "Postfix reads the maps file ([directory] maps_path), never the directory: "
    "chgrp postfix MAPSFILE DIR && chmod 0640 MAPSFILE && chmod 0750 DIR"
)

DEFAULT_OUT = {"postfix": "/etc/postfix/pfm", "dovecot": "/etc/dovecot/pfm"}

EPILOG = """\
examples:
  pfm config render postfix --dry-run        # show the diff, write nothing
  pfm config render postfix                  # write /etc/postfix/pfm/*.cf + main.cf.snippet
  pfm config render dovecot --out /etc/dovecot/pfm
  pfm config check                           # pfm.toml, directory, postmap/postconf/doveconf
"""


def register(sub: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "config",
        help="render Postfix/Dovecot config for the directory; check the setup",
        description="Render the Postfix maps and Dovecot auth snippets that read the pfm "
        "directory natively, and check that pfm.toml, the directory and those files work.",
        epilog=EPILOG,
        formatter_class=fmt,
    )
    ps = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    r = ps.add_parser(
        "render",
        help="write Postfix maps + main.cf snippet, or Dovecot passdb/userdb snippets",
        epilog="example:\n  pfm config render postfix --out /etc/postfix/pfm --dry-run",
        formatter_class=fmt,
    )
    r.add_argument("target", choices=("postfix", "dovecot"))
    r.add_argument(
        "--out",
        metavar="DIR",
        help="where to write (default /etc/postfix/pfm or /etc/dovecot/pfm); "
        "the snippets name the files there",
    )
    r.add_argument("-n", "--dry-run", action="store_true", help="show the diff, write nothing")
    r.add_argument(
        "--no-policy",
        action="store_true",
        help="leave the pfm-policyd check_policy_service lines out of main.cf.snippet",
    )
    r.set_defaults(func=cmd_render)

    c = ps.add_parser(
        "check",
        help="validate pfm.toml, open the directory, test rendered maps with postmap/doveconf",
    )
    c.set_defaults(func=cmd_check)


# --------------------------------------------------------------------------- render


def _bind_password(cfg: Config) -> str:
    ldap = cfg.directory.ldap
    if cfg.directory.backend != "ldap" or not ldap.bind_dn:
        return ""
    if not ldap.bind_password_file:
        raise CliError("directory.ldap.bind_password_file: needed when bind_dn is set", INVALID)
    return common.read_secret_file(ldap.bind_password_file, "LDAP bind password")


def render(cfg: Config, target: str, out_dir: str, policy: bool = True) -> Rendered:
    """The files of ``target`` ("postfix" or "dovecot") as they will be installed in out_dir."""
    from services.render.dovecot import render_dovecot
    from services.render.postfix import policy_endpoint, render_postfix

    secret = _bind_password(cfg)
    if target == "postfix":
        listen = cfg.policyd.listen[0] if policy and cfg.policyd.listen else None
        return render_postfix(
            cfg.directory,
            map_dir=out_dir,
            policy=policy_endpoint(listen) if listen else None,
            bind_password=secret,
        )
    return render_dovecot(cfg.directory, conf_dir=out_dir, bind_password=secret)


def cmd_render(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from services.render.files import apply, plan

    cfg = common.load_cfg(args, environ)
    out_dir = os.path.abspath(args.out or DEFAULT_OUT[args.target])
    files = render(cfg, args.target, out_dir, policy=not args.no_policy)
    changes = plan(out_dir, files)
    for change in changes:
        if change.changed:
            sys.stdout.write(change.diff())
    changed = [c for c in changes if c.changed]
    if args.dry_run:
        print(f"dry run: {len(changed)} of {len(changes)} files would change in {out_dir}")
        return OK
    try:
        written = apply(changes)
    except OSError as exc:
        raise CliError(f"cannot write {exc.filename or out_dir}: {exc.strerror}", FAILURE) from None
    print(f"wrote {len(written)} files, {len(changes) - len(written)} unchanged in {out_dir}")
    if written and args.target == "postfix":
        print(
            "apply the main.cf lines with: grep -v '^#' "
            f"{out_dir}/main.cf.snippet | xargs -d '\\n' postconf -e && postfix reload"
        )
    elif written:
        print("then: doveadm reload")
    return OK


# --------------------------------------------------------------------------- check


class Report:
    """Collects ``ok``/``FAIL`` lines; failed() tells whether anything failed."""

    def __init__(self) -> None:
        self.failures = 0

    def ok(self, what: str) -> None:
        print(f"ok    {what}")

    def fail(self, what: str, detail: str = "") -> None:
        self.failures += 1
        print(f"FAIL  {what}" + (f": {detail}" if detail else ""))

    def warn(self, what: str) -> None:
        print(f"warn  {what}")

    def skip(self, what: str) -> None:
        print(f"skip  {what}")


def _run(cmd: list[str], user: str | None = None) -> subprocess.CompletedProcess[str]:
    import subprocess

    extra: dict[str, Any] = {}
    if user:
        extra = {"user": user, "group": user, "extra_groups": []}
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30, **extra)


def _postfix_user() -> str | None:
    """``postfix`` when we are root and it exists: maps are then read as Postfix reads them."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return None
    return "postfix"


def _which(name: str) -> str | None:
    import shutil

    return shutil.which(name) or shutil.which(f"/usr/sbin/{name}")


def _sample_keys(cfg: Config, report: Report) -> dict[str, tuple[str, str]] | None:
    """Map file -> (key, expected value) from the directory's first active objects."""
    from services.directory.backend import open_backend
    from services.directory.model import DirectoryError

    try:
        backend = open_backend(cfg.directory, create=False)
    except (DirectoryError, OSError) as exc:
        report.fail("open the directory", str(exc))
        return None
    try:
        domains = [d for d in backend.list_domains() if d.active]
        active = {d.name for d in domains}
        mailboxes = [m for m in backend.list_mailboxes() if m.active and m.domain in active]
        aliases = [
            a
            for a in backend.list_aliases()
            if a.active and a.domain in active and not a.address.startswith("@")
        ]
        alias_domains = [a for a in backend.list_alias_domains() if a.active and a.target in active]
        for warning in getattr(backend, "maps_warnings", ()):
            report.warn(f"maps file: {warning}")
    except DirectoryError as exc:
        report.fail("read the directory", str(exc))
        return None
    finally:
        backend.close()
    report.ok(
        f"directory ({cfg.directory.backend}): {len(domains)} active domains, "
        f"{len(mailboxes)} active mailboxes, {len(aliases)} active aliases"
    )
    keys: dict[str, tuple[str, str]] = {}
    if domains:
        keys["virtual_mailbox_domains.cf"] = (domains[0].name, domains[0].name)
    if mailboxes:
        mb = mailboxes[0]
        keys["virtual_mailbox_maps.cf"] = (mb.address, f"{mb.domain}/{mb.local_part}/")
        keys["virtual_alias_mailbox_maps.cf"] = (mb.address, mb.address)
        keys["sender_login_maps.cf"] = (mb.address, mb.address)
    for ad in alias_domains:
        keys["virtual_alias_domains.cf"] = (ad.name, ad.name)
        owned = [m for m in mailboxes if m.domain == ad.target]
        if owned:
            key = f"{owned[0].local_part}@{ad.name}"
            keys["virtual_alias_domain_maps.cf"] = (key, owned[0].address)
            keys["sender_login_alias_domain_maps.cf"] = (key, owned[0].address)
            break
    if aliases:
        keys["virtual_alias_maps.cf"] = (aliases[0].address, ",".join(aliases[0].targets))
    return keys


def _check_postfix(
    cfg: Config, report: Report, work: Path, keys: Mapping[str, tuple[str, str]]
) -> None:
    import time

    postmap, postconf = _which("postmap"), _which("postconf")
    if not postmap or not postconf:
        report.skip("Postfix checks (postmap/postconf not installed)")
        return
    out = work / "postfix"
    out.mkdir()
    files = render(cfg, "postfix", str(out))
    for name, content in files.items():
        (out / name).write_text(content.text)
    # postmap and postconf need a config dir with main.cf (and master.cf for postconf)
    (out / "main.cf").write_text(files["main.cf.snippet"].text)
    dist = Path("/usr/share/postfix/master.cf.dist")
    (out / "master.cf").write_text(dist.read_text() if dist.exists() else "")
    # Postfix commands wait (~2 s each) until a freshly written main.cf or map file has aged:
    # backdate these scratch copies
    past = time.time() - 60
    for path in out.iterdir():
        os.utime(path, (past, past))
    kind = cfg.directory.backend
    user = _postfix_user() if kind == "sqlite" else None
    if user:
        # Postfix's daemons read the maps (and the directory file) as user postfix
        for path in (work, out, *out.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
    as_user = f" (as user {user})" if user else ""
    hinted = False
    for name in sorted(files):
        if not name.endswith(".cf"):
            continue
        key, expected = keys.get(name, ("postmaster@pfm-check.invalid", ""))
        proc = _run([postmap, "-c", str(out), "-q", key, f"{kind}:{out / name}"], user)
        got = proc.stdout.strip()
        what = f"postmap -q {key} {kind}:{name}{as_user}"
        errors = proc.stderr.strip().splitlines()
        if errors or proc.returncode not in (0, 1):
            report.fail(what, errors[-1] if errors else f"exit {proc.returncode}")
            if user and any("database" in e for e in errors) and not hinted:
                hinted = True
                print(f"      hint: Postfix reads {cfg.directory.path} as user postfix; {DB_HINT}")
        elif expected and got != expected:
            report.fail(what, f"got {got!r}, expected {expected!r}")
        else:
            report.ok(what + (f" -> {got}" if got else " (no match, map readable)"))
    proc = _run([postconf, "-c", str(out), "-n"])
    warnings = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    if proc.returncode != 0 or warnings:
        report.fail("postconf -n main.cf.snippet", "; ".join(warnings) or f"exit {proc.returncode}")
    else:
        report.ok(f"postconf -n main.cf.snippet ({len(proc.stdout.splitlines())} parameters)")


def _check_dovecot(cfg: Config, report: Report, work: Path) -> None:
    doveconf = _which("doveconf")
    if not doveconf:
        report.skip("Dovecot checks (doveconf not installed)")
        return
    out = work / "dovecot"
    out.mkdir()
    files = render(cfg, "dovecot", str(out))
    for name, content in files.items():
        (out / name).write_text(content.text)
    conf = out / "dovecot.conf"
    conf.write_text(
        f"base_dir = {out}/base\nprotocols = imap\nssl = no\n!include {out}/auth-pfm.conf.ext\n"
    )
    proc = _run([doveconf, "-c", str(conf), "-n"])
    if proc.returncode != 0:
        report.fail(
            "doveconf -n with auth-pfm.conf.ext", proc.stderr.strip() or f"exit {proc.returncode}"
        )
    else:
        report.ok("doveconf -n with auth-pfm.conf.ext")


def cmd_check(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    import tempfile

    cfg = common.load_cfg(args, environ)
    report = Report()
    report.ok(f"configuration {cfg.source}")
    keys = _sample_keys(cfg, report)
    if keys is not None:
        with tempfile.TemporaryDirectory(prefix="pfm-check-") as tmp:
            work = Path(tmp)
            _check_postfix(cfg, report, work, keys)
            _check_dovecot(cfg, report, work)
    if report.failures:
        print(f"{report.failures} check(s) failed")
        return FAILURE
    print("all checks passed")
    return OK
