"""``pfm backup`` / ``pfm restore`` of the LDAP backend (LDIF of the pfm subtree), real slapd."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.cli import exitcodes
from services.cli.main import main
from services.config import LdapConfig
from services.directory.credentials import Credentials
from services.directory.ldap import LdapBackend
from services.directory.ldap3_compat import ldap3
from services.directory.ldap_backup import read_subtree
from services.directory.ops import Directory
from tests.conftest import require_binary
from tests.integration.slapd_server import SlapdServer

pytestmark = pytest.mark.integration

PASSWORD = "Backup-ldap-pass-1"


@dataclass
class Run:
    code: int
    out: str
    err: str


@dataclass
class Site:
    """One private slapd and a pfm config pointing at it."""

    server: SlapdServer
    config: Path
    run: Callable[..., Run]

    def ldap(self) -> LdapConfig:
        s = self.server
        return LdapConfig(
            uris=(s.uri,),
            base_dn=s.base_dn,
            bind_dn=s.service_dn,
            bind_password_file=str(s.password_file),
        )

    def backend(self) -> LdapBackend:
        return LdapBackend(self.ldap())


@pytest.fixture
def sites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[str], Site]]:
    """A factory of started private slapds (stopped by PID at the end) with configs."""
    binary = require_binary("slapd")
    started: list[SlapdServer] = []

    def make(name: str) -> Site:
        server = SlapdServer(tmp_path / name, binary=binary)
        server.start()
        started.append(server)
        config = tmp_path / f"{name}.toml"
        config.write_text(
            "[directory]\n"
            'backend = "ldap"\n'
            f'dkim_dir = "{tmp_path / name / "dkim"}"\n'
            f'backup_dir = "{tmp_path / "backups"}"\n'
            "[directory.ldap]\n"
            f'uris = ["{server.uri}"]\n'
            f'base_dn = "{server.base_dn}"\n'
            f'bind_dn = "{server.service_dn}"\n'
            f'bind_password_file = "{server.password_file}"\n'
        )

        def run(*argv: str) -> Run:
            capsys.readouterr()
            code = main(["--config", str(config), *argv])
            cap = capsys.readouterr()
            return Run(code, cap.out, cap.err)

        return Site(server, config, run)

    try:
        yield make
    finally:
        for s in reversed(started):
            s.stop()


@dataclass
class Seeded:
    totp_secret: str
    app_secret: str


def _seed(site: Site) -> Seeded:
    """A domain, a mailbox with TOTP and an app password, an alias, an alias domain, an admin."""
    backend = site.backend()
    try:
        d = Directory(backend, actor="seed", password_scheme="SHA512-CRYPT")
        d.add_domain("example.org", description="Beispiel GmbH, Zürich")
        d.add_domain("example.net")
        d.add_mailbox("alice@example.org", password=PASSWORD, name="Alice Ærø", quota=1000)
        d.add_mailbox("bob@example.org", password=PASSWORD)
        d.add_alias("info@example.org", ["alice@example.org", "bob@example.org"])
        d.add_alias_domain("example.com", "example.org")
        d.add_admin("carol", role="domain", domains=["example.org"])
        c = Credentials(d)
        _r, totp, _uri = c.enroll_totp("alice@example.org")
        _r, app = c.add_app_password("alice@example.org", name="phone", scopes=["imap"])
    finally:
        backend.close()
    return Seeded(totp, app)


def _state(site: Site) -> dict[str, Any]:
    """Every object through the LdapBackend read methods, secrets included."""
    b = site.backend()
    try:
        mailboxes = b.list_mailboxes()
        return {
            "domains": b.list_domains(),
            "mailboxes": mailboxes,
            "app_passwords": {m.address: b.list_app_passwords(m.address) for m in mailboxes},
            "aliases": b.list_aliases(),
            "alias_domains": b.list_alias_domains(),
            "admins": b.list_admins(),
        }
    finally:
        b.close()


def _audit(site: Site) -> list[tuple[float, str, str, str]]:
    b = site.backend()
    try:
        return [(e.ts, e.actor, e.action, e.object) for e in b.audit_log()]
    finally:
        b.close()


def _raw(site: Site) -> list[tuple[str, dict[str, list[bytes]]]]:
    b = site.backend()
    try:
        return read_subtree(b)
    finally:
        b.close()


def _bind(site: Site, address: str, password: str) -> bool:
    dn = f"mail={address},ou=mailboxes,{site.server.base_dn}"
    conn = ldap3.Connection(ldap3.Server(site.server.uri, get_info=ldap3.NONE), dn, password)
    try:
        return bool(conn.bind())
    finally:
        conn.unbind()


def test_backup_restores_every_object_into_a_fresh_slapd(
    sites: Callable[[str], Site], tmp_path: Path
) -> None:
    """backup -> fresh slapd -> restore: all objects, TOTP, app passwords, audit; binds work."""
    a, b = sites("a"), sites("b")
    seeded = _seed(a)
    archive = tmp_path / "ldap.tar.gz"
    r = a.run("backup", "--out", str(archive), "--json")
    assert r.code == 0, r.err
    info = json.loads(r.out)
    assert info["backend"] == "ldap" and info["base_dn"] == a.server.base_dn
    assert info["counts"]["mailboxes"] == 2 and info["counts"]["app_passwords"] == 1
    assert info["counts"]["admins"] == 1 and info["counts"]["alias_domains"] == 1
    assert (archive.stat().st_mode & 0o777) == 0o600
    with tarfile.open(archive, "r:gz") as tar:
        assert sorted(tar.getnames()) == ["directory.ldif", "manifest.json"]
        ldif = tar.extractfile("directory.ldif").read()  # type: ignore[union-attr]
    assert b"\noathSecret:: " in ldif and b"\ndn: ou=domains," in ldif
    assert ldif.index(b"dn: mail=alice@example.org,") < ldif.index(b"dn: pfmAppPasswordId=")

    r = b.run("restore", str(archive))
    assert r.code == 0, r.err
    assert "deleted 0 existing entries" in r.out
    before, after = _state(a), _state(b)
    assert after == before
    alice = next(m for m in after["mailboxes"] if m.address == "alice@example.org")
    assert alice.totp_secret == seeded.totp_secret and alice.name == "Alice Ærø"
    assert [p.name for p in after["app_passwords"]["alice@example.org"]] == ["phone"]
    assert _audit(b) == _audit(a) and len(_audit(b)) >= 8
    assert _raw(b) == _raw(a)
    assert _bind(b, "alice@example.org", PASSWORD)
    assert not _bind(b, "alice@example.org", "wrong-password")
    restored = b.backend()
    try:
        creds = Credentials(Directory(restored, actor="test"))
        assert creds.verify_app_password("alice@example.org", seeded.app_secret, "imap")
        Directory(restored, actor="test").add_domain("after.example")  # audit ids go on
    finally:
        restored.close()
    assert _audit(b)[-1][3] == "after.example"


def test_restore_over_a_non_empty_directory_needs_force(
    sites: Callable[[str], Site], tmp_path: Path
) -> None:
    """A target with pfm objects is refused without --force and replaced with it."""
    a, b = sites("a"), sites("b")
    _seed(a)
    archive = tmp_path / "ldap.tar.gz"
    assert a.run("backup", "--out", str(archive)).code == 0, "backup failed"
    backend = b.backend()
    try:
        d = Directory(backend, actor="other", password_scheme="SHA512-CRYPT")
        d.add_domain("other.example")
        d.add_mailbox("zed@other.example", password="Other-pass-123")
        d.add_domain("example.org", description="a different one")
    finally:
        backend.close()
    old_audit = _audit(b)
    before = _raw(b)
    r = b.run("restore", str(archive))
    assert r.code == exitcodes.CONFLICT and "--force" in r.err
    assert _raw(b) == before
    r = b.run("restore", str(archive), "--force")
    assert r.code == 0, r.err
    assert _state(b) == _state(a)
    assert _bind(b, "alice@example.org", PASSWORD)
    assert not _bind(b, "zed@other.example", "Other-pass-123")
    # the test server's ACL makes audit entries append-only: the old ones stay, and every
    # backup entry is there too (renumbered where its id was taken)
    audit = _audit(b)
    assert "append-only" in r.out
    assert set(old_audit) <= set(audit) and set(_audit(a)) <= set(audit)
    backend = b.backend()
    try:
        Directory(backend, actor="test").add_domain("after.example")
    finally:
        backend.close()
    backend = b.backend()
    try:
        ids = [e.id for e in backend.audit_log()]
    finally:
        backend.close()
    assert len(ids) == len(set(ids)) == len(audit) + 1


def _rebuild(src: Path, dest: Path, ldif: Callable[[bytes], bytes]) -> None:
    """Copy an archive with the LDIF changed by ``ldif`` and the manifest's sha256 fixed."""
    with tarfile.open(src, "r:gz") as tin:
        members = {m.name: tin.extractfile(m).read() for m in tin.getmembers()}  # type: ignore[union-attr]
    data = ldif(members["directory.ldif"])
    manifest = json.loads(members["manifest.json"])
    manifest["members"]["directory.ldif"] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    members["directory.ldif"] = data
    members["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(dest, "w:gz") as tout:
        for name in ("manifest.json", "directory.ldif"):
            ti = tarfile.TarInfo(name)
            ti.size = len(members[name])
            tout.addfile(ti, io.BytesIO(members[name]))


def test_bad_archives_are_refused_before_touching_anything(
    sites: Callable[[str], Site], tmp_path: Path
) -> None:
    """Corrupted bytes, bad LDIF, DNs outside the subtree, another base DN: nothing changes."""
    a = sites("a")
    _seed(a)
    archive = tmp_path / "ok.tar.gz"
    assert a.run("backup", "--out", str(archive)).code == 0
    backend = a.backend()
    try:
        Directory(backend, actor="x").add_domain("later.example")
    finally:
        backend.close()
    before = _raw(a)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped = tmp_path / "flipped.tar.gz"
    flipped.write_bytes(bytes(data))
    bad_ldif = tmp_path / "bad-ldif.tar.gz"
    _rebuild(archive, bad_ldif, lambda d: d + b"\n cn: folded nowhere\n")
    outside = tmp_path / "outside.tar.gz"
    _rebuild(archive, outside, lambda d: d + b"\ndn: cn=evil,dc=example,dc=org\ncn: evil\n")
    for path, why in (
        (flipped, "not a usable pfm backup"),
        (bad_ldif, "directory.ldif: line"),
        (outside, "is outside the pfm subtree"),
    ):
        r = a.run("restore", str(path), "--force")
        assert r.code == exitcodes.INVALID, (path, r.err)
        assert why in r.err and "nothing was changed" in r.err, r.err
        assert _raw(a) == before
    other_base = tmp_path / "other.toml"
    other_base.write_text(a.config.read_text().replace('base_dn = "dc=', 'base_dn = "dc=x,dc='))
    code = main(["--config", str(other_base), "restore", str(archive), "--force"])
    assert code == exitcodes.INVALID and _raw(a) == before


def test_failure_midway_reports_how_far_it_got(
    sites: Callable[[str], Site], tmp_path: Path
) -> None:
    """An entry the server refuses stops the restore with exit 1 and the progress made."""
    a, b = sites("a"), sites("b")
    _seed(a)
    archive = tmp_path / "ok.tar.gz"
    assert a.run("backup", "--out", str(archive)).code == 0
    evil = tmp_path / "evil.tar.gz"
    bad = b"\n\ndn: pfmDomainName=zz.example,ou=domains,dc=example,dc=org\nobjectClass: noSuchClass"
    _rebuild(
        archive, evil, lambda d: d.replace(b"\n\ndn: ou=mailboxes,", bad + b"\n\ndn: ou=mailboxes,")
    )
    r = b.run("restore", str(evil))
    assert r.code == exitcodes.FAILURE, r.err
    assert "restore stopped while adding pfmDomainName=zz.example" in r.err
    assert "restored 3 of " in r.err and "LDAP has no transactions" in r.err
    assert [d.name for d in _state(b)["domains"]] == ["example.net", "example.org"]
    r = b.run("restore", str(archive), "--force")  # running it again finishes the job
    assert r.code == 0, r.err
    assert _state(b) == _state(a)
