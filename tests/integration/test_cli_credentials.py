"""``pfm totp`` and ``pfm app-password`` end to end against a real SQLite directory.

Most tests run ``services.cli.main.main([...])`` in-process; one runs the installed
``.venv/bin/pfm`` on a real pseudo-terminal to see the QR code a user would scan.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp
import pytest

from services.cli import exitcodes
from services.cli.commands.app_password import parse_expires
from services.cli.main import main
from services.cli.qr import qr_matrix, with_quiet_zone
from services.directory.credentials import Credentials
from services.directory.ops import Directory
from services.directory.sqlite import SqliteBackend

pytestmark = pytest.mark.integration

PASSWORD = "Correct-Horse-9-battery"
PFM = Path(sys.executable).with_name("pfm")
ADDRESS = "alice@example.org"
SECRET_RE = re.compile(r"\b[a-km-np-z2-9]{4}(?:-[a-km-np-z2-9]{4}){3}\b")


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
    run: Callable[..., Run]

    def credentials(self) -> tuple[Credentials, SqliteBackend]:
        backend = SqliteBackend(str(self.db))
        return Credentials(Directory(backend, actor="test")), backend


@pytest.fixture
def env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Env]:
    """A pfm.toml on a fresh SQLite directory holding example.org and alice@example.org."""
    db = tmp_path / "directory.db"
    config = tmp_path / "pfm.toml"
    config.write_text(f'[directory]\npath = "{db}"\npassword_scheme = "SHA512-CRYPT"\n')
    fd = os.open(tmp_path / "pw", os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(PASSWORD + "\n")

    def run(*argv: str) -> Run:
        capsys.readouterr()
        code = main(["--config", str(config), *argv])
        cap = capsys.readouterr()
        return Run(code, cap.out, cap.err)

    e = Env(tmp_path, config, db, run)
    assert run("domain", "add", "example.org").code == 0
    r = run("mailbox", "add", ADDRESS, "--password-file", str(tmp_path / "pw"))
    assert r.code == 0, r.err
    yield e


def _audit(env: Env) -> str:
    r = env.run("audit", "--limit", "0", "--json")
    assert r.code == 0, r.err
    return r.out


# --------------------------------------------------------------------------- totp


def test_totp_enroll_status_disable(env: Env) -> None:
    """enroll prints a working URI and secret once; status shows enrolled; disable clears."""
    r = env.run("totp", "enroll", ADDRESS)
    assert r.code == 0, r.err
    uri = next(line.split(None, 1)[1] for line in r.out.splitlines() if line.startswith("URI:"))
    totp = pyotp.parse_uri(uri)
    assert isinstance(totp, pyotp.TOTP)
    creds, backend = env.credentials()
    try:
        assert backend.get_mailbox(ADDRESS).totp_secret == totp.secret  # type: ignore[union-attr]
    finally:
        backend.close()
    assert "shown only now" in r.out
    assert "\u2580" not in r.out and "\u2584" not in r.out  # no QR when stdout is not a TTY
    assert totp.secret not in _audit(env)

    s = env.run("totp", "status", ADDRESS, "--json")
    assert s.code == 0 and s.json()["enrolled"] is True
    assert totp.secret not in s.out
    text = env.run("totp", "status", ADDRESS)
    assert "enrolled:  yes" in text.out and totp.secret not in text.out

    again = env.run("totp", "enroll", ADDRESS)
    assert again.code == exitcodes.CONFLICT and "--force" in again.err

    d = env.run("totp", "disable", ADDRESS)
    assert d.code == 0, d.err
    assert env.run("totp", "status", ADDRESS, "--json").json()["enrolled"] is False


def test_totp_enroll_json_force_and_dry_run(env: Env) -> None:
    """--json carries uri and secret; --force replaces; --dry-run shows no secret, writes none."""
    first = env.run("totp", "enroll", ADDRESS, "--json", "--issuer", "Example Mail")
    assert first.code == 0, first.err
    data = first.json()
    assert data["action"] == "totp.enroll" and data["applied"] is True
    assert data["otpauth_uri"].startswith("otpauth://totp/Example%20Mail:alice@example.org?")
    assert f"secret={data['secret']}" in data["otpauth_uri"]
    assert data["after"]["totp_enrolled"] is True and "totp_secret" not in data["after"]

    dry = env.run("totp", "enroll", ADDRESS, "--force", "--dry-run", "--json").json()
    assert dry["dry_run"] is True and dry["secret"] is None and dry["otpauth_uri"] is None
    dry_text = env.run("totp", "enroll", ADDRESS, "--force", "--dry-run")
    assert "dry run: nothing written" in dry_text.out and "URI" not in dry_text.out

    second = env.run("totp", "enroll", ADDRESS, "--force", "--json").json()
    assert second["secret"] != data["secret"]
    assert "replaced" in second["message"]


def test_totp_bad_input_errors(env: Env) -> None:
    """Unknown mailboxes exit NOT_FOUND, a colon in --issuer exits INVALID naming issuer."""
    r = env.run("totp", "enroll", "nobody@example.org")
    assert r.code == exitcodes.NOT_FOUND and "does not exist" in r.err
    r = env.run("totp", "enroll", ADDRESS, "--issuer", "A:B")
    assert r.code == exitcodes.INVALID and r.err.startswith("pfm: issuer:")


def _run_on_tty(argv: list[str]) -> tuple[int, str]:
    """Run argv with a pseudo-terminal as stdin/stdout/stderr; its whole output."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    finally:
        os.close(slave)
    out = b""
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, out.decode(errors="replace").replace("\r\n", "\n")


def test_totp_enroll_draws_the_qr_code_on_a_terminal(env: Env) -> None:
    """On a TTY enroll draws black-on-white half blocks that read back as the URI's QR code."""
    argv = [str(PFM), "--config", str(env.config), "totp", "enroll", ADDRESS]
    code, out = _run_on_tty(argv)
    assert code == 0, out
    uri = next(line.split(None, 1)[1] for line in out.splitlines() if line.startswith("URI:"))
    qr_lines = [line for line in out.splitlines() if line.startswith("\x1b[30;107m")]
    assert qr_lines and all(line.endswith("\x1b[0m") for line in qr_lines)
    modules = {"\u2588": (1, 1), "\u2580": (1, 0), "\u2584": (0, 1), " ": (0, 0)}
    grid: list[list[int]] = []
    for line in qr_lines:
        pairs = [modules[c] for c in line[len("\x1b[30;107m") : -len("\x1b[0m")]]
        grid += [[t for t, _ in pairs], [b for _, b in pairs]]
    expected = with_quiet_zone(qr_matrix(uri))
    assert grid[: len(expected)] == expected


# --------------------------------------------------------------------------- app passwords


def test_app_password_add_list_revoke(env: Env) -> None:
    """add prints the secret once; list never shows it; it verifies until revoked."""
    r = env.run(
        "app-password", "add", ADDRESS, "--name", "Thunderbird", "--scope", "imap",
        "--scope", "submission", "--expires", "90d",
    )  # fmt: skip
    assert r.code == 0, r.err
    secrets_shown = SECRET_RE.findall(r.out)
    assert len(secrets_shown) == 1 and "cannot be shown again" in r.out
    secret = secrets_shown[0]
    assert "scopes:  imap, smtp" in r.out

    listing = env.run("app-password", "list", ADDRESS)
    assert listing.code == 0 and "Thunderbird" in listing.out and "imap,smtp" in listing.out
    rows = env.run("app-password", "list", ADDRESS, "--json").json()
    assert len(rows) == 1 and rows[0]["name"] == "Thunderbird"
    assert set(rows[0]) == {
        "id", "address", "name", "scopes", "expires", "created", "last_used", "last_ip",
    }  # fmt: skip
    assert 89 * 86400 < rows[0]["expires"] - time.time() <= 90 * 86400
    for out in (listing.out, json.dumps(rows), _audit(env)):
        assert secret not in out and "SSHA512" not in out

    creds, backend = env.credentials()
    try:
        assert creds.verify_app_password(ADDRESS, secret, "imap") is not None
        assert creds.verify_app_password(ADDRESS, secret, "pop3") is None
    finally:
        backend.close()

    ap_id = rows[0]["id"]
    dry = env.run("app-password", "revoke", ADDRESS, ap_id, "--dry-run")
    assert dry.code == 0 and "would remove app password" in dry.out
    rv = env.run("app-password", "revoke", ADDRESS, ap_id)
    assert rv.code == 0 and f"removed app password {ap_id}" in rv.out
    assert env.run("app-password", "list", ADDRESS, "--json").json() == []
    creds, backend = env.credentials()
    try:
        assert creds.verify_app_password(ADDRESS, secret, "imap") is None
    finally:
        backend.close()
    missing = env.run("app-password", "revoke", ADDRESS, ap_id)
    assert missing.code == exitcodes.NOT_FOUND and secret not in missing.err


def test_app_password_json_revoke_all_and_passwd(env: Env) -> None:
    """--json add carries the secret; revoke --all and mailbox passwd remove them all."""
    first = env.run("app-password", "add", ADDRESS, "--name", "Phone", "--json")
    assert first.code == 0, first.err
    data = first.json()
    assert SECRET_RE.fullmatch(data["secret"]) and data["after"]["scopes"] == [
        "imap", "pop3", "smtp", "sieve",
    ]  # fmt: skip
    assert "password_hash" not in data["after"]
    env.run("app-password", "add", ADDRESS, "--name", "Laptop")
    r = env.run("app-password", "revoke", ADDRESS, "--all", "--dry-run")
    assert r.code == 0 and "would revoke 2" in r.out
    r = env.run("app-password", "revoke", ADDRESS, "--all")
    assert r.code == 0 and "revoked 2" in r.out
    env.run("app-password", "add", ADDRESS, "--name", "Tablet")
    pw = env.run("mailbox", "passwd", ADDRESS, "--password-file", str(env.root / "pw"))
    assert pw.code == 0 and "1 app password(s) revoked" in pw.out
    assert env.run("app-password", "list", ADDRESS, "--json").json() == []


def test_app_password_bad_input_errors(env: Env) -> None:
    """Bad scope, expiry or id/--all usage exit INVALID with a message naming the field."""
    r = env.run("app-password", "add", ADDRESS, "--name", "X", "--scope", "ftp")
    assert r.code == exitcodes.INVALID and r.err.startswith("pfm: scope:")
    r = env.run("app-password", "add", ADDRESS, "--name", "X", "--expires", "someday")
    assert r.code == exitcodes.INVALID and r.err.startswith("pfm: expires:")
    r = env.run("app-password", "add", ADDRESS, "--name", "X", "--expires", "2001-01-01")
    assert r.code == exitcodes.INVALID and "past" in r.err
    r = env.run("app-password", "revoke", ADDRESS)
    assert r.code == exitcodes.INVALID and "--all" in r.err
    r = env.run("app-password", "list", "nobody@example.org")
    assert r.code == exitcodes.NOT_FOUND
    assert env.run("app-password", "list", ADDRESS, "--json").json() == []


def test_parse_expires_forms() -> None:
    """--expires takes a duration from now, an ISO date, or never."""
    assert parse_expires("90d", 1000.0) == 1000.0 + 90 * 86400
    assert parse_expires("12h", 0.0) == 43200.0
    assert parse_expires("never", 5.0) == 0.0
    assert parse_expires("2030-01-01T00:00+00:00", 0.0) == 1893456000.0
    with pytest.raises(ValueError, match="--expires"):
        parse_expires("soon", 0.0)
