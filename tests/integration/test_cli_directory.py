"""The ``pfm`` directory commands end to end against a real SQLite directory in a temp dir.

Most tests run the real entry point ``services.cli.main.main([...])`` in-process; a few run
the installed ``.venv/bin/pfm`` console script as a subprocess (exit codes, a real TTY).
"""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.cli import exitcodes
from services.cli.main import main
from services.directory.model import AppPassword, Create
from services.directory.passwords import hash_password, verify_password
from services.directory.sqlite import SqliteBackend

PASSWORD = "Correct-Horse-9-battery"
NEW_PASSWORD = "Another-Staple-7-river"
PFM = Path(sys.executable).with_name("pfm")


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Env:
    root: Path
    config: Path
    db: Path
    pwfile: Path
    run: Callable[..., Run]

    def backend(self) -> SqliteBackend:
        return SqliteBackend(str(self.db))


def _secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.chmod(path, mode)
    return path


@pytest.fixture
def env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Env]:
    """A pfm.toml naming a fresh SQLite directory, and a runner for ``pfm -c pfm.toml ...``."""
    db = tmp_path / "directory.db"
    config = tmp_path / "pfm.toml"
    config.write_text(
        f'[directory]\npath = "{db}"\npassword_scheme = "ARGON2ID"\n\n'
        '[policyd.limits.outbound]\nkey = ["sasl_username"]\nwindows = ["100/1h"]\n'
    )
    pwfile = _secret_file(tmp_path / "pw", PASSWORD)

    def run(*argv: str) -> Run:
        capsys.readouterr()
        code = main(["--config", str(config), *argv])
        cap = capsys.readouterr()
        return Run(code, cap.out, cap.err)

    yield Env(tmp_path, config, db, pwfile, run)


def _snapshot(env: Env) -> dict[str, object]:
    """Every object and the whole audit log, as the CLI prints them in JSON."""
    out: dict[str, object] = {}
    for argv in (
        ("domain", "list", "--json"),
        ("mailbox", "list", "--json"),
        ("alias", "list", "--json"),
        ("alias-domain", "list", "--json"),
        ("admin", "list", "--json"),
        ("audit", "--limit", "0", "--json"),
    ):
        r = env.run(*argv)
        assert r.code == 0, r.err
        out[" ".join(argv)] = r.json()
    return out


def _populate(env: Env) -> None:
    assert env.run("domain", "add", "example.org").code == 0
    assert env.run("domain", "add", "example.net").code == 0
    r = env.run("mailbox", "add", "alice@example.org", "--password-file", str(env.pwfile))
    assert r.code == 0, r.err
    assert env.run("alias", "add", "info@example.org", "alice@example.org").code == 0


def test_full_lifecycle(env: Env) -> None:
    """domain add → mailbox add → show → passwd → disable → aliases → guarded domain removal."""
    r = env.run("domain", "add", "example.org", "--description", "Example", "--default-quota", "1G")
    assert (r.code, r.out.splitlines()[0]) == (0, "created domain example.org")

    r = env.run(
        "mailbox", "add", "Alice@Example.org", "--name", "Alice", "--password-file", str(env.pwfile)
    )
    assert r.code == 0, r.err
    assert "created mailbox alice@example.org" in r.out

    r = env.run("mailbox", "show", "alice@example.org", "--json")
    data = r.json()
    assert isinstance(data, dict)
    assert data["address"] == "alice@example.org"
    assert data["quota"] == 1024**3  # the domain's default quota
    assert data["password_scheme"] == "ARGON2ID"
    assert data["name"] == "Alice" and data["active"] is True
    assert "password_hash" not in data

    pw2 = _secret_file(env.root / "pw2", NEW_PASSWORD)
    r = env.run("mailbox", "passwd", "alice@example.org", "--password-file", str(pw2))
    assert r.code == 0, r.err
    assert "0 app password(s) revoked" in r.out
    be = env.backend()
    try:
        mb = be.get_mailbox("alice@example.org")
        assert mb is not None
        assert verify_password(NEW_PASSWORD, mb.password_hash).ok
    finally:
        be.close()

    r = env.run("mailbox", "disable", "alice@example.org")
    assert r.code == 0 and "active: yes -> no" in r.out
    shown = env.run("mailbox", "show", "alice@example.org", "--json").json()
    assert isinstance(shown, dict) and shown["active"] is False

    r = env.run("alias", "add", "info@example.org", "alice@example.org", "sales@example.org")
    assert r.code == 0, r.err
    r = env.run("alias", "remove", "info@example.org", "sales@example.org")
    assert r.code == 0 and "sales@example.org -> -" not in r.out
    shown_alias = env.run("alias", "show", "info@example.org", "--json").json()
    assert isinstance(shown_alias, dict) and shown_alias["targets"] == ["alice@example.org"]

    assert env.run("alias", "add", "sales@example.org", "info@example.org").code == 0
    r = env.run("alias", "add", "alice@example.org", "alice@example.org", "sales@example.org")
    assert r.code == exitcodes.CONFLICT
    assert r.err.startswith("pfm: alias loop: ") and r.err.count("\n") == 1

    r = env.run("domain", "remove", "example.org")
    assert r.code == exitcodes.CONFLICT
    assert "--cascade" in r.err and r.err.count("\n") == 1
    r = env.run("domain", "remove", "example.org", "--cascade")
    assert r.code == 0, r.err
    assert "removed mailbox alice@example.org" in r.out
    assert "removed domain example.org" in r.out
    r = env.run("domain", "show", "example.org")
    assert r.code == exitcodes.NOT_FOUND
    assert (
        r.err
        == "pfm: domain example.org does not exist (add it with: pfm domain add example.org)\n"
    )


def test_dry_run_writes_nothing(env: Env) -> None:
    """Every change with --dry-run reports what it would do and leaves objects and audit alone."""
    _populate(env)
    before = _snapshot(env)
    changes = [
        ("domain", "add", "new.example"),
        ("domain", "disable", "example.org"),
        ("domain", "remove", "example.org", "--cascade"),
        ("mailbox", "add", "bob@example.org", "--password-file", str(env.pwfile)),
        ("mailbox", "passwd", "alice@example.org", "--password-file", str(env.pwfile)),
        ("mailbox", "quota", "alice@example.org", "5G"),
        ("mailbox", "disable", "alice@example.org"),
        ("mailbox", "remove", "alice@example.org"),
        ("alias", "add", "info@example.org", "bob@example.org"),
        ("alias", "remove", "info@example.org"),
        ("alias-domain", "add", "example.com", "example.org"),
        ("limit", "set", "alice@example.org", "outbound", "10/1h"),
        ("admin", "add", "carol", "--role", "global"),
    ]
    for argv in changes:
        r = env.run(*argv, "--dry-run")
        assert r.code == 0, (argv, r.err)
        assert "would " in r.out and "dry run: nothing written" in r.out, argv
        j = env.run(*argv, "--dry-run", "--json")
        assert j.code == 0, (argv, j.err)
        data = j.json()
        assert isinstance(data, dict) and data["dry_run"] is True and data["applied"] is False
    assert _snapshot(env) == before


def test_ensure_is_idempotent(env: Env) -> None:
    """--ensure on an existing equal object exits 0 saying "unchanged" and writes no audit."""
    for _ in range(2):
        r = env.run("domain", "add", "example.org", "--max-mailboxes", "10", "--ensure")
        assert r.code == 0, r.err
    assert r.out == "domain example.org unchanged\n"
    add = ("mailbox", "add", "alice@example.org", "--password-file", str(env.pwfile), "--ensure")
    assert env.run(*add).code == 0
    audit_before = env.run("audit", "--limit", "0", "--json").json()
    r = env.run(*add)
    assert (r.code, r.out) == (0, "mailbox alice@example.org unchanged\n")
    r = env.run(*add, "--json")
    data = r.json()
    assert isinstance(data, dict) and data["changed"] is False and data["message"] == "unchanged"
    r = env.run("domain", "add", "example.org", "--max-mailboxes", "10", "--ensure")
    assert r.code == 0
    assert env.run("audit", "--limit", "0", "--json").json() == audit_before
    # a different value is brought to the requested one
    r = env.run("domain", "add", "example.org", "--max-mailboxes", "20", "--ensure")
    assert r.code == 0 and "max_mailboxes: 10 -> 20" in r.out


def test_bad_input_exit_codes(env: Env) -> None:
    """Invalid values, unknown objects and duplicates give one-line errors and named exit codes."""
    _populate(env)
    cases = [
        (
            ("mailbox", "add", "not-an-address", "--password-file", str(env.pwfile)),
            exitcodes.INVALID,
            "address",
        ),
        (
            ("mailbox", "add", "x@unknown.example", "--password-file", str(env.pwfile)),
            exitcodes.NOT_FOUND,
            "domain unknown.example does not exist",
        ),
        (
            ("mailbox", "add", "alice@example.org", "--password-file", str(env.pwfile)),
            exitcodes.EXISTS,
            "mailbox alice@example.org exists already",
        ),
        (("domain", "add", "example.org"), exitcodes.EXISTS, "--ensure"),
        (
            ("domain", "add", "nodot"),
            exitcodes.INVALID,
            "domain: 'nodot' needs at least two labels",
        ),
        (
            ("mailbox", "quota", "alice@example.org", "lots"),
            exitcodes.INVALID,
            "quota: invalid size",
        ),
        (("mailbox", "show", "ghost@example.org"), exitcodes.NOT_FOUND, "does not exist"),
        (("limit", "set", "alice@example.org", "nosuch", "1/1h"), exitcodes.INVALID, "nosuch"),
        (("limit", "set", "alice@example.org", "outbound", "lots"), exitcodes.INVALID, "window"),
        (("alias-domain", "add", "example.net", "example.org"), exitcodes.CONFLICT, "real domain"),
        (("admin", "add", "bob", "--role", "domain"), exitcodes.INVALID, "domains"),
        (("audit", "--since", "yesterday-ish"), exitcodes.INVALID, "--since"),
    ]
    for argv, code, text in cases:
        r = env.run(*argv)
        assert r.code == code, (argv, r.code, r.err)
        assert r.err.startswith("pfm: ") and r.err.count("\n") == 1, (argv, r.err)
        assert text in r.err, (argv, r.err)
        assert "Traceback" not in r.err
    weak = _secret_file(env.root / "weak", "short")
    r = env.run("mailbox", "add", "bob@example.org", "--password-file", str(weak))
    assert r.code == exitcodes.INVALID and r.err.startswith("pfm: password: is shorter than")


def test_unusable_config_and_directory(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Missing config exits CONFIG, reads never create the database, a non-database fails cleanly."""
    assert main(["--config", str(tmp_path / "nope.toml"), "domain", "list"]) == exitcodes.CONFIG
    assert capsys.readouterr().err.startswith("pfm: invalid configuration: config file not found")
    fresh = tmp_path / "fresh" / "directory.db"
    cfg = tmp_path / "fresh.toml"
    cfg.write_text(f'[directory]\npath = "{fresh}"\n')
    assert main(["--config", str(cfg), "mailbox", "list"]) == exitcodes.CONFIG
    assert "does not exist: check [directory] path" in capsys.readouterr().err
    assert not fresh.exists()  # a read never creates the database
    assert main(["--config", str(cfg), "domain", "add", "example.org"]) == 0
    assert fresh.exists()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not an SQLite database" * 100)
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[directory]\npath = "{garbage}"\n')
    code = main(["--config", str(bad), "domain", "list"])
    err = capsys.readouterr().err
    assert code in (exitcodes.TEMPFAIL, exitcodes.FAILURE), err
    assert err.startswith("pfm: ") and err.count("\n") == 1 and str(garbage) in err


def test_password_never_shown(env: Env) -> None:
    """Neither the password nor its hash appears in stdout, stderr or the audit log."""
    _populate(env)
    pw2 = _secret_file(env.root / "pw2", NEW_PASSWORD)
    outputs = [
        env.run("mailbox", "passwd", "alice@example.org", "--password-file", str(pw2)),
        env.run("mailbox", "passwd", "alice@example.org", "--password-file", str(pw2), "--json"),
        env.run("mailbox", "show", "alice@example.org"),
        env.run("mailbox", "show", "alice@example.org", "--json"),
        env.run("mailbox", "list", "--json"),
        env.run("audit", "--limit", "0"),
        env.run("audit", "--limit", "0", "--json"),
        env.run("mailbox", "add", "bob@example.org", "--password-file", str(env.pwfile), "--json"),
    ]
    be = env.backend()
    try:
        mb = be.get_mailbox("alice@example.org")
        assert mb is not None
        stored = mb.password_hash
        audit_rows = be.audit_log()
    finally:
        be.close()
    body = stored.partition("}")[2]
    assert len(body) > 20
    for r in outputs:
        assert r.code == 0, r.err
        for secret in (PASSWORD, NEW_PASSWORD, body, body.rsplit("$", 1)[-1]):
            assert secret not in r.out and secret not in r.err
    for entry in audit_rows:
        dumped = json.dumps([entry.before, entry.after])
        assert PASSWORD not in dumped and NEW_PASSWORD not in dumped and body not in dumped
    actions = [e["action"] for e in env.run("audit", "--limit", "0", "--json").json()]
    assert actions.count("mailbox.passwd") == 2


def test_password_sources(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """--password-stdin reads one line; no source and no terminal is a usage error; hashes import."""
    assert env.run("domain", "add", "example.org").code == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\nignored\n"))
    r = env.run("mailbox", "add", "carol@example.org", "--password-stdin")
    assert r.code == 0, r.err
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    r = env.run("mailbox", "add", "dave@example.org")
    assert r.code == exitcodes.USAGE and "--password-file" in r.err

    hashfile = _secret_file(env.root / "hash", hash_password(NEW_PASSWORD, "BLF-CRYPT"))
    r = env.run("mailbox", "add", "erin@example.org", "--password-hash-file", str(hashfile))
    assert r.code == 0, r.err
    bad = _secret_file(env.root / "bad", "$6$nothing")
    r = env.run("mailbox", "add", "frank@example.org", "--password-hash-file", str(bad))
    assert r.code == exitcodes.INVALID and r.err.startswith("pfm: password_hash")

    be = env.backend()
    try:
        carol = be.get_mailbox("carol@example.org")
        erin = be.get_mailbox("erin@example.org")
        assert carol is not None and verify_password(PASSWORD, carol.password_hash).ok
        assert erin is not None and verify_password(NEW_PASSWORD, erin.password_hash).ok
        assert be.get_mailbox("frank@example.org") is None
    finally:
        be.close()
    shown = env.run("mailbox", "show", "erin@example.org", "--json").json()
    assert isinstance(shown, dict) and shown["password_scheme"] == "BLF-CRYPT"


def test_password_on_command_line_refused(env: Env) -> None:
    """There is no option taking a clear password: argparse refuses --password VALUE."""
    with pytest.raises(SystemExit) as exc:
        env.run("mailbox", "add", "a@example.org", "--password", PASSWORD)
    assert exc.value.code == exitcodes.USAGE


def test_readable_password_file_warns(env: Env) -> None:
    """A group/world-readable password file is used but draws a warning naming it."""
    assert env.run("domain", "add", "example.org").code == 0
    open_file = _secret_file(env.root / "open.pw", PASSWORD, mode=0o644)
    r = env.run("mailbox", "add", "alice@example.org", "--password-file", str(open_file))
    assert r.code == 0
    assert f"pfm: warning: {open_file} is readable by group or others" in r.err
    assert PASSWORD not in r.err


def test_passwd_reports_revoked_app_passwords(env: Env) -> None:
    """passwd revokes the mailbox's app passwords and says how many."""
    _populate(env)
    be = env.backend()
    try:
        for n in (1, 2):
            ap = AppPassword(
                id=f"ap-00000{n}",
                address="alice@example.org",
                name=f"phone {n}",
                password_hash=hash_password(f"app-password-{n}-xyz", "ARGON2ID"),
                created=time.time(),
            )
            be.write([Create(ap)], [])
    finally:
        be.close()
    r = env.run("mailbox", "show", "alice@example.org", "--json")
    assert r.json()["app_passwords"] == 2
    r = env.run(
        "mailbox", "passwd", "alice@example.org", "--password-file", str(env.pwfile), "--dry-run"
    )
    assert "revoke 2 app password(s)" in r.out
    r = env.run("mailbox", "passwd", "alice@example.org", "--password-file", str(env.pwfile))
    assert r.code == 0 and "2 app password(s) revoked" in r.out
    assert env.run("mailbox", "show", "alice@example.org", "--json").json()["app_passwords"] == 0


def test_unicode_domain_display(env: Env) -> None:
    """An IDN is stored and printed in JSON as A-label, with a U-label display form."""
    r = env.run("domain", "add", "Bücher.Example")
    assert r.code == 0 and "bücher.example (xn--bcher-kva.example)" in r.out
    r = env.run("mailbox", "add", "anna@bücher.example", "--password-file", str(env.pwfile))
    assert r.code == 0, r.err
    doms = env.run("domain", "list", "--json").json()
    assert doms == [dict(doms[0], name="xn--bcher-kva.example", display_name="bücher.example")]
    mb = env.run("mailbox", "show", "anna@xn--bcher-kva.example", "--json").json()
    assert isinstance(mb, dict)
    assert mb["address"] == "anna@xn--bcher-kva.example"
    assert mb["display_address"] == "anna@bücher.example"
    text = env.run("mailbox", "list").out
    assert "anna@bücher.example (anna@xn--bcher-kva.example)" in text


def test_limits_alias_domains_admins(env: Env) -> None:
    """limit set/show/clear, alias-domain add/list/remove and admin add/list/remove round-trip."""
    _populate(env)
    r = env.run("limit", "set", "alice@example.org", "outbound", "500/1d", "50/1h")
    assert r.code == 0, r.err
    assert env.run("limit", "set", "example.org", "outbound", "unlimited").code == 0
    assert env.run("limit", "show", "alice@example.org", "--json").json() == {
        "subject": "alice@example.org",
        "limits": {"outbound": ["500/1d", "50/1h"]},
    }
    assert "outbound  unlimited" in env.run("limit", "show", "example.org").out
    assert env.run("limit", "clear", "alice@example.org", "outbound").code == 0
    r = env.run("limit", "clear", "alice@example.org", "outbound")
    assert r.code == exitcodes.NOT_FOUND
    assert "defaults apply" in env.run("limit", "show", "alice@example.org").out

    assert env.run("alias-domain", "add", "example.com", "example.org").code == 0
    ads = env.run("alias-domain", "list", "--json").json()
    assert [(a["name"], a["target"]) for a in ads] == [("example.com", "example.org")]
    shown = env.run("domain", "show", "example.org", "--json").json()
    assert isinstance(shown, dict)
    assert (shown["mailboxes"], shown["aliases"], shown["alias_domains"]) == (1, 1, ["example.com"])
    assert env.run("alias-domain", "remove", "example.com").code == 0
    assert env.run("alias-domain", "list", "--json").json() == []

    assert env.run("admin", "add", "root-admin", "--role", "global").code == 0
    r = env.run("admin", "add", "bob", "--role", "domain", "--domain", "example.org")
    assert r.code == 0, r.err
    admins = env.run("admin", "list", "--json").json()
    assert {a["name"]: a["domains"] for a in admins} == {"bob": ["example.org"], "root-admin": []}
    assert env.run("admin", "remove", "bob").code == 0
    assert env.run("admin", "remove", "bob").code == exitcodes.NOT_FOUND

    r = env.run("alias", "add", "@example.org", "alice@example.org")
    assert r.code == 0, r.err
    assert "@example.org" in env.run("alias", "list", "example.org").out


def test_audit_output(env: Env) -> None:
    """audit shows who did what with before -> after, filtered by --since and --limit."""
    _populate(env)
    assert env.run("mailbox", "quota", "alice@example.org", "2G").code == 0
    r = env.run("audit")
    assert r.code == 0
    line = next(ln for ln in r.out.splitlines() if "mailbox.quota" in ln)
    assert "alice@example.org" in line and "quota: unlimited -> 2G" in line
    entries = env.run("audit", "--json", "--since", "1h").json()
    assert isinstance(entries, list) and len(entries) == 5
    assert entries[-1]["action"] == "mailbox.quota"
    assert entries[-1]["before"]["quota"] == 0 and entries[-1]["after"]["quota"] == 2 * 1024**3
    assert all(e["actor"] for e in entries)
    assert len(env.run("audit", "--json", "--limit", "2").json()) == 2
    assert env.run("audit", "--json", "--since", "2999-01-01").json() == []


def test_help_has_examples(env: Env) -> None:
    """Every directory group's --help shows examples and the top-level help lists exit codes."""
    for group in ("domain", "mailbox", "alias", "alias-domain", "limit", "admin", "audit"):
        with pytest.raises(SystemExit) as exc:
            env.run(group, "--help")
        assert exc.value.code == 0
    # the last help printed is captured by the next run's readouterr; check via subprocess
    out = subprocess.run(
        [str(PFM), "mailbox", "--help"], capture_output=True, text=True, check=True
    )
    assert "examples:" in out.stdout and "--password-file" not in out.stdout.split("examples:")[0]
    top = subprocess.run([str(PFM), "--help"], capture_output=True, text=True, check=True)
    assert "5 exists already" in " ".join(top.stdout.split())


def test_subprocess_exit_codes(env: Env) -> None:
    """The installed pfm script prints one-line errors and exits with the named codes."""
    _populate(env)
    base = [str(PFM), "--config", str(env.config)]
    ok = subprocess.run(
        [*base, "mailbox", "show", "alice@example.org", "--json"], capture_output=True, text=True
    )
    assert ok.returncode == 0 and json.loads(ok.stdout)["address"] == "alice@example.org"
    missing = subprocess.run(
        [*base, "mailbox", "show", "nobody@example.org"], capture_output=True, text=True
    )
    assert missing.returncode == exitcodes.NOT_FOUND
    assert missing.stderr == "pfm: mailbox nobody@example.org does not exist\n"
    dup = subprocess.run([*base, "domain", "add", "example.org"], capture_output=True, text=True)
    assert dup.returncode == exitcodes.EXISTS
    piped = subprocess.run(
        [*base, "mailbox", "add", "bob@example.org", "--password-stdin"],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
    )
    assert piped.returncode == 0, piped.stderr
    assert PASSWORD not in piped.stdout + piped.stderr


def _run_on_tty(argv: list[str], answer: bytes) -> tuple[int, str]:
    """Run argv with a real pseudo-terminal as stdin/stdout, typing ``answer``."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    finally:
        os.close(slave)
    out = b""
    sent = False
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            if not sent and b"[y/N]" in out:
                os.write(master, answer)
                sent = True
            if proc.poll() is not None and not ready:
                break
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, out.decode(errors="replace")


def test_cascade_asks_on_a_terminal(env: Env) -> None:
    """remove --cascade on a TTY asks first: "n" aborts with nothing removed, "y" removes."""
    _populate(env)
    argv = [str(PFM), "--config", str(env.config), "domain", "remove", "example.org", "--cascade"]
    code, out = _run_on_tty(argv, b"n\n")
    assert code == exitcodes.FAILURE and "aborted, nothing changed" in out
    assert "with 1 mailbox(es), 1 alias(es)" in out
    assert env.run("domain", "show", "example.org").code == 0
    code, out = _run_on_tty(argv, b"y\n")
    assert code == 0, out
    assert "removed domain example.org" in out
    assert env.run("domain", "show", "example.org").code == exitcodes.NOT_FOUND


def test_prompts_for_password_on_a_terminal(env: Env) -> None:
    """On a TTY mailbox add asks twice without echo; a mismatch changes nothing."""
    assert env.run("domain", "add", "example.org").code == 0
    argv = [str(PFM), "--config", str(env.config), "mailbox", "add", "tty@example.org"]
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    try:
        for prompt, reply in ((b"New password: ", PASSWORD), (b"Repeat password: ", PASSWORD)):
            deadline = time.monotonic() + 20
            while prompt not in out and time.monotonic() < deadline:
                if select.select([master], [], [], 0.2)[0]:
                    out += os.read(master, 4096)
            os.write(master, reply.encode() + b"\n")
            out = out.replace(prompt, b"", 1)
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    out += os.read(master, 4096)
                except OSError:
                    break
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = out.decode(errors="replace")
    assert code == 0, text
    assert PASSWORD not in text  # no echo
    be = env.backend()
    try:
        mb = be.get_mailbox("tty@example.org")
        assert mb is not None and verify_password(PASSWORD, mb.password_hash).ok
    finally:
        be.close()


def test_bash_completion_script_works(env: Env, tmp_path: Path) -> None:
    """`pfm completion bash` completes groups, actions and options in a real bash."""
    r = env.run("completion", "bash")
    assert r.code == 0
    script = tmp_path / "pfm.bash"
    script.write_text(r.out)
    probe = (
        f"source {script}\n"
        'c() { COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); _pfm;'
        ' echo "${COMPREPLY[*]}"; }\n'
        "c pfm mai\nc pfm mailbox ''\nc pfm -c x.toml alias-domain re\n"
        "c pfm mailbox add a@b --pass\nc pfm admin add bob --role ''\nc pfm completion ''\n"
    )
    out = subprocess.run(
        ["bash", "--norc", "-c", probe], capture_output=True, text=True, check=True
    )
    lines = out.stdout.splitlines()
    assert lines[0] == "mailbox"
    assert set(lines[1].split()) >= {"add", "list", "show", "passwd", "quota", "remove"}
    assert lines[2] == "remove"
    assert set(lines[3].split()) == {"--password-file", "--password-stdin", "--password-hash-file"}
    assert lines[4] == "global domain"
    assert lines[5] == "bash zsh"
    z = env.run("completion", "zsh")
    assert z.out.startswith("#compdef pfm\n") and "bashcompinit" in z.out
