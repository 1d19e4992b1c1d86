"""End to end: directory built with `pfm`, maps rendered by `pfm config render postfix`, real
Postfix delivering by virtual(8) into Maildirs under a private virtual_mailbox_base."""

from __future__ import annotations

import os
import shutil
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cli.main import main
from services.render.postfix import parse_snippet
from tests.e2e.conftest import PostfixFactory
from tests.e2e.postfix_instance import world_dir

pytestmark = pytest.mark.e2e

NOBODY = 65534  # virtual(8) refuses uid 0; the Maildirs belong to this uid/gid


@pytest.fixture
def site() -> Iterator[Path]:
    """A world-traversable dir for pfm.toml, the directory file and virtual_mailbox_base."""
    top = world_dir("pfm-delivery-")
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def pfm(conf: Path, *argv: str) -> None:
    """Run one `pfm` command; it must succeed."""
    assert main(["-c", str(conf), *argv]) == 0, argv


def maildir_subjects(base: Path, address: str) -> list[str]:
    """Subjects of the messages in the Maildir ``new/`` of ``address``."""
    local, _, domain = address.partition("@")
    new = base / domain / local / "new"
    if not new.is_dir():
        return []
    subjects = []
    for f in sorted(new.iterdir()):
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith("Subject: "):
                subjects.append(line[len("Subject: ") :])
    return subjects


def send(port: int, rcpt: str, subject: str) -> None:
    """One message to one recipient (raises SMTPRecipientsRefused when refused)."""
    msg = f"From: sender@example.net\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\nhello\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.sendmail("sender@example.net", [rcpt], msg)


def test_directory_delivery(site: Path, postfix_factory: PostfixFactory) -> None:
    """Mail to a mailbox, an alias, an alias domain and a catch-all lands in the right Maildir;
    a disabled mailbox is refused at RCPT with 550 5.1.1 User unknown."""
    vmail = site / "vmail"
    vmail.mkdir()
    os.chown(vmail, NOBODY, NOBODY)
    db_dir = site / "pfm"
    db = db_dir / "directory.db"
    conf = site / "pfm.toml"
    conf.write_text(
        f'[directory]\npath = "{db}"\nmail_root = "{vmail}"\n'
        f'mail_uid = {NOBODY}\nmail_gid = {NOBODY}\npassword_scheme = "SHA512-CRYPT"\n'
    )
    pwfile = site / "pw"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"correct horse battery staple\n")
    os.close(fd)
    pw = ("--password-file", str(pwfile))
    pfm(conf, "domain", "add", "pfm.test")
    pfm(conf, "domain", "add", "catch.test")
    for address in ("alice@pfm.test", "bob@pfm.test", "gone@pfm.test", "carol@catch.test"):
        pfm(conf, "mailbox", "add", address, *pw)
    pfm(conf, "mailbox", "disable", "gone@pfm.test")
    pfm(conf, "alias", "add", "team@pfm.test", "alice@pfm.test")
    pfm(conf, "alias", "add", "@catch.test", "bob@pfm.test")
    pfm(conf, "alias-domain", "add", "alias.test", "pfm.test")
    # Postfix's daemons read the directory as user postfix (see `pfm config check`)
    shutil.chown(db_dir, group="postfix")
    db_dir.chmod(0o1770)
    shutil.chown(db, group="postfix")
    db.chmod(0o640)

    maps = site / "maps"
    pfm(conf, "config", "render", "postfix", "--out", str(maps), "--no-policy")
    past = time.time() - 60  # Postfix waits ~2 s for freshly written map files to age
    for path in maps.iterdir():
        os.utime(path, (past, past))
    params = dict(parse_snippet((maps / "main.cf.snippet").read_text()))
    assert params["virtual_mailbox_base"] == str(vmail)
    assert params["virtual_uid_maps"] == f"static:{NOBODY}"
    pf = postfix_factory(**params)

    send(pf.port, "alice@pfm.test", "direct")
    send(pf.port, "team@pfm.test", "via alias")
    send(pf.port, "alice@alias.test", "via alias domain")
    send(pf.port, "carol@catch.test", "mailbox beside catch-all")
    send(pf.port, "whoever@catch.test", "to catch-all")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(pf.port, "gone@pfm.test", "disabled")
    code, text = refused.value.recipients["gone@pfm.test"]
    assert code == 550
    assert b"5.1.1" in text and b"User unknown in virtual mailbox table" in text
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(pf.port, "nobody@alias.test", "unknown in alias domain")
    assert refused.value.recipients["nobody@alias.test"][0] == 550

    expected = {
        "alice@pfm.test": ["direct", "via alias", "via alias domain"],
        "carol@catch.test": ["mailbox beside catch-all"],
        "bob@pfm.test": ["to catch-all"],
    }
    deadline = time.monotonic() + 15
    while True:
        got = {a: sorted(maildir_subjects(vmail, a)) for a in expected}
        if got == {a: sorted(s) for a, s in expected.items()} or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert got == {a: sorted(s) for a, s in expected.items()}, pf.log_text()[-3000:]
    assert pf.log_text().count("status=sent (delivered to maildir)") == 5
    alice_new = vmail / "pfm.test" / "alice" / "new"
    assert alice_new.stat().st_uid == NOBODY
    assert not (vmail / "pfm.test" / "gone").exists()
