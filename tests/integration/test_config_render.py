"""Rendered Postfix maps read by the real postmap, and `pfm config check` against real tools."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cli.main import main
from services.config import DirectoryConfig
from services.directory.ops import Directory
from services.directory.sqlite import SqliteBackend
from services.render.files import apply, plan
from services.render.postfix import render_postfix
from tests.conftest import require_binary
from tests.e2e.postfix_instance import world_dir

pytestmark = pytest.mark.integration


@pytest.fixture
def rendered(tmp_path: Path) -> Iterator[Path]:
    """A directory with a mailbox, a disabled one, a 2-target alias, a catch-all, an alias domain,
    and its maps rendered (plus a main.cf, which postmap needs) into ``tmp_path/maps``."""
    db = str(tmp_path / "directory.db")
    backend = SqliteBackend(db)
    d = Directory(backend, actor="test", password_scheme="SHA512-CRYPT")
    d.add_domain("example.com")
    d.add_mailbox("alice@example.com", password="correct horse battery")
    d.add_mailbox("bob@example.com", password="correct horse battery")
    d.add_mailbox("gone@example.com", password="correct horse battery")
    d.update_mailbox("gone@example.com", active=False)
    d.add_alias("team@example.com", ["alice@example.com", "bob@example.com"])
    d.add_alias("@example.com", ["bob@example.com"])
    d.add_alias_domain("example.info", "example.com")
    backend.close()
    out = tmp_path / "maps"
    files = render_postfix(DirectoryConfig(path=db), map_dir=str(out), policy=None)
    apply(plan(out, files))
    shutil.copy(out / "main.cf.snippet", out / "main.cf")
    shutil.copy("/usr/share/postfix/master.cf.dist", out / "master.cf")
    past = time.time() - 60  # Postfix commands wait ~2 s for a fresh main.cf or map file to age
    for path in out.iterdir():
        os.utime(path, (past, past))
    yield out


def postmap(out: Path, key: str, name: str) -> str | None:
    """``postmap -q KEY sqlite:FILE``: the value, or None when not found (errors fail the test)."""
    proc = subprocess.run(
        ("postmap", "-c", str(out), "-q", key, f"sqlite:{out / name}"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.stderr == "", proc.stderr
    assert proc.returncode in (0, 1)
    return proc.stdout.strip() if proc.returncode == 0 else None


@pytest.mark.parametrize(
    ("key", "name", "expected"),
    [
        ("example.com", "virtual_mailbox_domains.cf", "example.com"),
        ("example.org", "virtual_mailbox_domains.cf", None),
        ("example.info", "virtual_alias_domains.cf", "example.info"),
        ("alice@example.com", "virtual_mailbox_maps.cf", "example.com/alice/"),
        ("ALICE@Example.COM", "virtual_mailbox_maps.cf", "example.com/alice/"),
        ("gone@example.com", "virtual_mailbox_maps.cf", None),
        ("team@example.com", "virtual_alias_maps.cf", "alice@example.com,bob@example.com"),
        ("@example.com", "virtual_alias_maps.cf", "bob@example.com"),
        ("alice@example.com", "virtual_alias_mailbox_maps.cf", "alice@example.com"),
        ("gone@example.com", "virtual_alias_mailbox_maps.cf", None),
        ("alice@example.info", "virtual_alias_domain_maps.cf", "alice@example.com"),
        ("@example.info", "virtual_alias_domain_maps.cf", None),
        ("o'hara@example.info", "virtual_alias_domain_maps.cf", "o'hara@example.com"),
        ("alice@example.com", "sender_login_maps.cf", "alice@example.com"),
        ("@example.com", "sender_login_maps.cf", None),
        (
            "team@example.info",
            "sender_login_alias_domain_maps.cf",
            "alice@example.com,bob@example.com",
        ),
    ],
)
def test_postmap_reads_rendered_maps(
    rendered: Path, key: str, name: str, expected: str | None
) -> None:
    """The real postmap answers each rendered sqlite map as the directory says."""
    require_binary("postmap")
    assert postmap(rendered, key, name) == expected


def test_postconf_accepts_snippet(rendered: Path) -> None:
    """postconf parses the rendered main.cf snippet without warnings."""
    require_binary("postconf")
    proc = subprocess.run(
        ("postconf", "-c", str(rendered), "-n"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert f"virtual_mailbox_maps = proxy:sqlite:{rendered}/virtual_mailbox_maps.cf" in proc.stdout


def _config(tmp_path: Path, db: Path) -> Path:
    conf = tmp_path / "pfm.toml"
    conf.write_text(f'[directory]\npath = "{db}"\nmail_root = "{tmp_path}/vmail"\n')
    return conf


def test_config_check_passes(capsys: pytest.CaptureFixture[str]) -> None:
    """`pfm config check` runs postmap (as user postfix when root), postconf and doveconf: all ok."""
    require_binary("postmap")
    require_binary("doveconf")
    top = world_dir("pfm-check-")  # Postfix must traverse to the directory file
    try:
        base = top / "pfm"
        base.mkdir()
        db = base / "directory.db"
        conf = _config(top, db)
        for argv in (
            ["domain", "add", "example.com"],
            ["alias", "add", "info@example.com", "someone@example.net"],
        ):
            assert main(["-c", str(conf), *argv]) == 0
        if os.geteuid() == 0:  # the documented permissions for a directory Postfix reads
            shutil.chown(base, group="postfix")
            base.chmod(0o1770)
            shutil.chown(db, group="postfix")
            db.chmod(0o640)
        capsys.readouterr()
        rc = main(["-c", str(conf), "config", "check"])
        out = capsys.readouterr().out
    finally:
        shutil.rmtree(top, ignore_errors=True)
    assert rc == 0, out
    assert "ok    postmap -q example.com sqlite:virtual_mailbox_domains.cf" in out
    assert "-> someone@example.net" in out
    assert "ok    postconf -n main.cf.snippet" in out
    assert "ok    doveconf -n with auth-pfm.conf.ext" in out
    assert "all checks passed" in out


def test_config_check_fails_on_unreadable_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pfm config check` fails when the directory file is missing, exiting 1 with a clear report."""
    require_binary("postmap")
    conf = _config(tmp_path, tmp_path / "missing.db")
    rc = main(["-c", str(conf), "config", "check"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAIL  open the directory" in out and "missing.db" in out
