"""The LDAP backend against a real private slapd: binds, escaping, outages, undo, schema, maps."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from services.config import LdapConfig
from services.directory.ldap import LdapBackend
from services.directory.ldap3_compat import ldap3
from services.directory.model import (
    Admin,
    Alias,
    AliasDomain,
    AuditEntry,
    Create,
    Domain,
    InvalidInput,
    Mailbox,
    NotFound,
    Replace,
    Unavailable,
)
from tests.conftest import pid_alive, require_binary
from tests.integration.slapd_server import SCHEMA_DIR, SlapdServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TOTP = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


def config(server: SlapdServer, **kw: object) -> LdapConfig:
    """An LdapConfig for the private server, bound as its service account."""
    return LdapConfig(
        uris=(server.uri,),
        base_dn=server.base_dn,
        bind_dn=server.service_dn,
        bind_password_file=str(server.password_file),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def slapd(tmp_path: Path) -> Iterator[SlapdServer]:
    """A fresh private slapd with the pfm schema and an empty base DIT."""
    server = SlapdServer(tmp_path / "slapd", binary=require_binary("slapd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def backend(slapd: SlapdServer) -> Iterator[LdapBackend]:
    """An LdapBackend on the private slapd holding domain example.org."""
    b = LdapBackend(config(slapd, timeout=1, connect_timeout=1))
    b.write([Create(Domain(name="example.org"))], [])
    try:
        yield b
    finally:
        b.close()


def can_bind(server: SlapdServer, dn: str, password: str) -> bool:
    """Whether a simple bind as dn with password succeeds."""
    conn = ldap3.Connection(
        ldap3.Server(server.uri, get_info=ldap3.NONE), user=dn, password=password
    )
    try:
        return bool(conn.bind())
    finally:
        conn.unbind()


def doveadm_hash(scheme: str, password: str) -> str:
    """A hash made by Dovecot itself."""
    doveadm = require_binary("doveadm")
    out = subprocess.run([doveadm, "pw", "-s", scheme, "-p", password], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return out.stdout.strip()


def doveadm_verifies(password_hash: str, password: str) -> bool:
    """Whether Dovecot verifies password against the hash we read back."""
    r = subprocess.run(["doveadm", "pw", "-t", password_hash, "-p", password], capture_output=True,
                       check=False)  # fmt: skip
    return r.returncode == 0


# --------------------------------------------------------------------------- passwords


@pytest.mark.parametrize("scheme", ["ARGON2ID", "SHA512-CRYPT", "BLF-CRYPT"])
def test_mailbox_hash_verifies_by_slapd_bind_and_by_dovecot(
    backend: LdapBackend, slapd: SlapdServer, scheme: str
) -> None:
    """A mailbox written with a Dovecot hash binds with the right password only, and reads back Dovecot-verifiable."""
    if scheme == "ARGON2ID":
        pw_hash = "{ARGON2ID}" + PasswordHasher(time_cost=3, memory_cost=65536, parallelism=1).hash(
            "s3cret pw"
        )
    else:
        pw_hash = doveadm_hash(scheme, "s3cret pw")
    backend.write([Create(Mailbox(address="alice@example.org", password_hash=pw_hash))], [])
    dn = backend.dit.dn("mailbox", "alice@example.org")
    assert can_bind(slapd, dn, "s3cret pw")
    assert not can_bind(slapd, dn, "wrong pw")
    stored = backend.get_mailbox("alice@example.org")
    assert stored is not None
    assert stored.password_hash == pw_hash
    assert doveadm_verifies(stored.password_hash, "s3cret pw")


def test_inactive_mailbox_cannot_bind(backend: LdapBackend, slapd: SlapdServer) -> None:
    """With the README's ACLs a mailbox set inactive is refused a bind even with the right password."""
    mb = Mailbox(address="dave@example.org", password_hash=doveadm_hash("SHA512-CRYPT", "pw"))
    backend.write([Create(mb)], [])
    dn = backend.dit.dn("mailbox", mb.address)
    assert can_bind(slapd, dn, "pw")
    backend.write(
        [Replace(Mailbox(address=mb.address, password_hash=mb.password_hash, active=False))], []
    )
    assert not can_bind(slapd, dn, "pw")


def test_userpassword_is_stored_in_slapd_form(backend: LdapBackend, slapd: SlapdServer) -> None:
    """userPassword holds {CRYPT}$6$ for a SHA512-CRYPT hash (what slapd and Dovecot's CRYPT verify)."""
    pw_hash = doveadm_hash("SHA512-CRYPT", "pw")
    backend.write([Create(Mailbox(address="bob@example.org", password_hash=pw_hash))], [])
    r = slapd.ldap("ldapsearch", "-x", "-LLL", "-D", slapd.root_dn, "-w", "root-secret",
                   "-b", backend.dit.dn("mailbox", "bob@example.org"), "-s", "base", "userPassword")  # fmt: skip
    value = base64.b64decode(r.stdout.split("userPassword:: ")[1].replace("\n ", "").split()[0])
    assert value == pw_hash.replace("{SHA512-CRYPT}", "{CRYPT}").encode()


# --------------------------------------------------------------------------- TOTP / slapo-otp


def totp(secret: str, step: int) -> str:
    """RFC 6238 code (SHA-1, 6 digits) for a time step."""
    key = base64.b32decode(secret)
    digest = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    off = digest[-1] & 0x0F
    return f"{(struct.unpack('>I', digest[off : off + 4])[0] & 0x7FFFFFFF) % 1_000_000:06d}"


def test_totp_secret_is_shared_with_slapo_otp(tmp_path: Path) -> None:
    """With the otp overlay on, slapd accepts password+TOTP for a mailbox pfm enrolled, and not the bare password."""
    server = SlapdServer(tmp_path / "otp", otp_overlay=True, binary=require_binary("slapd"))
    server.start()
    try:
        b = LdapBackend(config(server))
        try:
            b.write([Create(Domain(name="example.org")),
                     Create(Mailbox(address="carol@example.org", password_hash=doveadm_hash("SHA512-CRYPT", "pw"),
                                    totp_secret=TOTP, totp_last_step=0))], [])  # fmt: skip
            dn = b.dit.dn("mailbox", "carol@example.org")
            step = int(time.time()) // 30
            assert not can_bind(server, dn, "pw")
            assert can_bind(server, dn, "pw" + totp(TOTP, step))
            mb = b.get_mailbox("carol@example.org")
            assert mb is not None
            assert mb.totp_secret == TOTP
            assert mb.totp_last_step >= step  # slapo-otp recorded the step (replay guard shared)
        finally:
            b.close()
    finally:
        server.stop()


# --------------------------------------------------------------------------- escaping


@pytest.mark.parametrize(
    "hostile", ["*)(uid=*", "*", "a,b=c@example.org", "\\", "x\x00y@example.org"]
)
def test_hostile_lookups_find_nothing(backend: LdapBackend, hostile: str) -> None:
    """Filter and DN specials in lookup keys are escaped or refused: they never match other entries."""
    backend.write([Create(Mailbox(address="alice@example.org")), Create(Admin(name="root"))], [])
    assert backend.get_mailbox(hostile) is None
    assert backend.get_alias(hostile) is None
    assert backend.get_admin(hostile) is None
    assert backend.get_app_password(hostile) is None
    assert backend.list_mailboxes(hostile) == []
    assert backend.list_app_passwords(hostile) == []


@pytest.mark.parametrize("name", ["a,b=c", "*)(uid=*", "back\\slash", ' lead#+;<>"', "ü"])
def test_hostile_admin_names_round_trip(backend: LdapBackend, name: str) -> None:
    """An admin name full of DN/filter specials is stored and found under exactly that name."""
    backend.write([Create(Admin(name=name)), Create(Admin(name="other"))], [])
    got = backend.get_admin(name)
    assert got is not None
    assert got.name == name
    assert sorted(a.name for a in backend.list_admins()) == sorted([name, "other"])


def test_nul_in_a_key_is_refused(backend: LdapBackend) -> None:
    """A NUL in an admin name is refused with InvalidInput, nothing is written."""
    with pytest.raises(InvalidInput):
        backend.write([Create(Admin(name="a\x00b"))], [])
    assert backend.list_admins() == []


# --------------------------------------------------------------------------- outages


def test_stopped_server_is_unavailable_and_recovery_is_automatic(
    backend: LdapBackend, slapd: SlapdServer
) -> None:
    """Server down -> Unavailable (never None/NotFound) for reads and writes; after a restart the stale pooled connection is replaced."""
    assert backend.get_domain("example.org") is not None
    slapd.stop()
    with pytest.raises(Unavailable):
        backend.get_domain("example.org")
    with pytest.raises(Unavailable):
        backend.write([Create(Domain(name="example.net"))], [])
    slapd.start()
    assert backend.get_domain("example.org") is not None


def test_unreachable_first_uri_falls_over_to_the_next(slapd: SlapdServer) -> None:
    """The server pool skips a dead URI and uses the next one."""
    from tests.conftest import free_port

    dead = f"ldap://127.0.0.1:{free_port()}"
    cfg = config(slapd, connect_timeout=1)
    b = LdapBackend(
        LdapConfig(**{**{f: getattr(cfg, f) for f in cfg.__slots__}, "uris": (dead, slapd.uri)})
    )  # type: ignore[arg-type]
    try:
        assert b.list_domains() == []
    finally:
        b.close()


def test_hung_server_times_out_as_unavailable(backend: LdapBackend, slapd: SlapdServer) -> None:
    """A server that accepts but never answers (SIGSTOP) gives Unavailable after the receive timeout."""
    assert backend.list_domains()
    slapd.pause()
    began = time.monotonic()
    try:
        with pytest.raises(Unavailable, match="timed out"):
            backend.list_domains()
    finally:
        slapd.resume()
    assert time.monotonic() - began < 5
    assert backend.list_domains()


def test_wrong_bind_password_is_unavailable_with_a_clear_message(
    slapd: SlapdServer, tmp_path: Path
) -> None:
    """A refused service bind is Unavailable naming the setting, and never echoes the password."""
    pw = tmp_path / "wrong.pw"
    fd = os.open(pw, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not-the-password")
    os.close(fd)
    cfg = config(slapd)
    b = LdapBackend(
        LdapConfig(**{**{f: getattr(cfg, f) for f in cfg.__slots__}, "bind_password_file": str(pw)})
    )  # type: ignore[arg-type]
    try:
        with pytest.raises(Unavailable, match="bind_password_file") as err:
            b.list_domains()
        assert "not-the-password" not in str(err.value)
    finally:
        b.close()


def test_pool_serves_many_threads(backend: LdapBackend) -> None:
    """32 concurrent readers share the bounded pool without errors."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(10):
                assert backend.get_domain("example.org") is not None
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# --------------------------------------------------------------------------- write batches and audit


def test_failed_batch_undoes_applied_changes(backend: LdapBackend) -> None:
    """A batch failing on its third change leaves the first two (a create and a replace) undone."""
    before = backend.get_domain("example.org")
    with pytest.raises(NotFound):
        backend.write(
            [
                Create(Domain(name="example.net")),
                Replace(Domain(name="example.org", description="changed", max_mailboxes=5)),
                Create(Mailbox(address="x@missing.example")),
            ],
            [AuditEntry(ts=1.0, actor="t", action="x", object="x")],
        )
    assert backend.get_domain("example.net") is None
    assert backend.get_domain("example.org") == before
    assert backend.audit_log() == []


def test_delete_of_mailbox_with_app_passwords_is_undone_as_a_whole(backend: LdapBackend) -> None:
    """Deleting a mailbox removes its app password children; a later failure restores both."""
    from services.directory.model import AppPassword, Delete

    backend.write([Create(Mailbox(address="a@example.org")),
                   Create(AppPassword(id="ap-1", address="a@example.org", name="phone"))], [])  # fmt: skip
    with pytest.raises(NotFound):
        backend.write([Delete("mailbox", "a@example.org"), Delete("alias", "nope@example.org")], [])
    assert backend.get_mailbox("a@example.org") is not None
    got = backend.get_app_password("ap-1")
    assert got is not None and got.address == "a@example.org"
    backend.write([Delete("mailbox", "a@example.org")], [])
    assert backend.get_app_password("ap-1") is None


def test_audit_entries_are_append_only_for_the_service_account(
    backend: LdapBackend, slapd: SlapdServer
) -> None:
    """Audit entries land under ou=audit with increasing ids; the service account cannot delete them."""
    backend.write([Create(Alias(address="info@example.org", targets=("a@example.org",)))],
                  [AuditEntry(ts=10.5, actor="root", action="alias.add", object="info@example.org"),
                   AuditEntry(ts=11.5, actor="root", action="x", object="y")])  # fmt: skip
    backend.write([], [AuditEntry(ts=12.5, actor="root", action="z", object="y")])
    log = backend.audit_log()
    assert [e.id for e in log] == [1, 2, 3]
    assert [e.ts for e in backend.audit_log(since=11.5)] == [11.5, 12.5]
    r = slapd.ldap("ldapdelete", "-x", "-D", slapd.service_dn, "-y", str(slapd.password_file),
                   f"pfmAuditId=1,ou=audit,{slapd.base_dn}")  # fmt: skip
    assert r.returncode == 50, r.stderr  # insufficientAccess
    assert len(backend.audit_log()) == 3


# --------------------------------------------------------------------------- schema loading, Postfix maps


def test_pfm_ldif_loads_into_cn_config_with_ldapadd_external(tmp_path: Path) -> None:
    """configs/ldap/pfm.ldif is accepted by a cn=config slapd via `ldapadd -Y EXTERNAL`."""
    slapd = require_binary("slapd")
    conf = tmp_path / "boot.conf"
    peer = f"gidNumber={os.getgid()}+uidNumber={os.getuid()},cn=peercred,cn=external,cn=auth"
    conf.write_text(
        "".join(f"include {SCHEMA_DIR}/{n}.schema\n" for n in ("core", "cosine", "inetorgperson"))
        + f"pidfile {tmp_path}/slapd.pid\ndatabase config\naccess to * by dn.exact={peer} manage\n"
    )
    (tmp_path / "cn").mkdir()
    subprocess.run(
        ["slaptest", "-f", str(conf), "-F", str(tmp_path / "cn")], check=True, capture_output=True
    )
    sock = tmp_path / "ldapi"
    uri = "ldapi://" + str(sock).replace("/", "%2F")
    subprocess.run([slapd, "-F", str(tmp_path / "cn"), "-h", uri], check=True, capture_output=True)
    pid = int((tmp_path / "slapd.pid").read_text())
    try:
        r = subprocess.run(["ldapadd", "-Q", "-Y", "EXTERNAL", "-H", uri, "-f", str(REPO / "configs/ldap/pfm.ldif")],
                           capture_output=True, text=True, check=False)  # fmt: skip
        assert r.returncode == 0, r.stderr
        r = subprocess.run(["ldapsearch", "-Q", "-LLL", "-Y", "EXTERNAL", "-H", uri, "-b", "cn=schema,cn=config",
                            "(cn=*pfm)", "olcObjectClasses"], capture_output=True, text=True, check=True)  # fmt: skip
        assert "pfmMailbox" in r.stdout.replace("\n ", "")
    finally:
        os.kill(pid, 15)
        while pid_alive(pid):
            time.sleep(0.01)


POSTFIX_MAPS = {  # name -> (search_base below BASE, scope, query_filter, result_attribute, result_format)
    "domains": ("ou=domains,", "one", "(&(objectClass=pfmDomain)(pfmDomainName=%s)(pfmActive=TRUE))", "pfmDomainName", ""),
    "mailboxes": ("ou=mailboxes,", "one", "(&(objectClass=pfmMailbox)(mail=%s)(pfmActive=TRUE))", "mail", "%d/%u/"),
    "aliases": ("ou=aliases,", "one", "(&(objectClass=pfmAlias)(mail=%s)(pfmActive=TRUE))", "pfmAliasTarget", ""),
    "mailbox_self": ("ou=mailboxes,", "one", "(&(objectClass=pfmMailbox)(mail=%s)(pfmActive=TRUE))", "mail", ""),
    "alias_domain_names": ("ou=aliasdomains,", "one", "(&(objectClass=pfmAliasDomain)(pfmDomainName=%s)(pfmActive=TRUE))", "pfmDomainName", ""),
    "alias_domain_rewrite": ("ou=aliasdomains,", "one", "(&(objectClass=pfmAliasDomain)(pfmDomainName=%d)(pfmActive=TRUE))", "pfmTargetDomain", "@%s"),
    "sender_logins": ("", "sub", "(|(&(objectClass=pfmMailbox)(mail=%s)(pfmActive=TRUE))(&(objectClass=pfmAlias)(mail=%s)(pfmActive=TRUE)))", "mail,pfmAliasTarget", ""),
}  # fmt: skip


def postmap_query(tmp: Path, slapd: SlapdServer, name: str, key: str) -> str | None:
    """`postmap -q key ldap:FILE` with the README's map parameters for ``name``."""
    base, scope, flt, attr, fmt = POSTFIX_MAPS[name]
    cf = tmp / f"{name}.cf"
    cf.write_text(
        f"server_host = {slapd.uri}\nversion = 3\nsearch_base = {base}{slapd.base_dn}\nscope = {scope}\n"
        f"query_filter = {flt}\nresult_attribute = {attr}\nbind = yes\nbind_dn = {slapd.service_dn}\n"
        f"bind_pw = {slapd.password_file.read_text()}\n"
        + (f"result_format = {fmt}\n" if fmt else "")
    )
    main_cf = tmp / "main.cf"
    if not main_cf.exists():
        main_cf.write_text("compatibility_level = 3.6\nmyhostname = localhost.localdomain\n")
    old = time.time() - 60  # postmap waits ~2 s before reading a file modified in the last seconds
    for path in (cf, main_cf):
        os.utime(path, (old, old))
    r = subprocess.run(
        ["postmap", "-c", str(tmp), "-q", key, f"ldap:{cf}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode in (0, 1), r.stderr
    return r.stdout.strip() if r.returncode == 0 else None


def test_postfix_ldap_maps_read_the_dit(
    backend: LdapBackend, slapd: SlapdServer, tmp_path: Path
) -> None:
    """Postfix's own ldap: table client answers domain, mailbox, alias, catch-all and alias-domain lookups."""
    require_binary("postmap")
    backend.write([
        Create(Mailbox(address="alice@example.org")),
        Create(Mailbox(address="off@example.org", active=False)),
        Create(Alias(address="info@example.org", targets=("alice@example.org", "bob@example.net"))),
        Create(Alias(address="@example.org", targets=("alice@example.org",))),
        Create(AliasDomain(name="example.net", target="example.org")),
    ], [])  # fmt: skip
    q = lambda name, key: postmap_query(tmp_path, slapd, name, key)  # noqa: E731
    assert q("domains", "example.org") == "example.org"
    assert q("domains", "example.net") is None
    assert q("mailboxes", "alice@example.org") == "example.org/alice/"
    assert q("mailboxes", "off@example.org") is None
    assert q("aliases", "info@example.org") == "alice@example.org,bob@example.net"
    assert q("aliases", "@example.org") == "alice@example.org"
    assert q("mailbox_self", "alice@example.org") == "alice@example.org"
    assert q("alias_domain_names", "example.net") == "example.net"
    assert q("alias_domain_rewrite", "x@example.net") == "@example.org"
    assert q("sender_logins", "alice@example.org") == "alice@example.org"
    assert (
        q("sender_logins", "info@example.org")
        == "info@example.org,alice@example.org,bob@example.net"
    )
    assert q("mailboxes", "*)(mail=*") is None
