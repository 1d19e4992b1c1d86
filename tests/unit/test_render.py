"""Rendered Postfix/Dovecot config: golden text, and the SQL queries run against a real directory."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from services.cli.main import main
from services.config import DirectoryConfig, LdapConfig
from services.directory.ops import Directory
from services.directory.sqlite import SqliteBackend
from services.render import RenderedFile
from services.render.dovecot import ITERATE_QUERY, render_dovecot, user_query
from services.render.files import apply, plan
from services.render.postfix import (
    PARAMETERS,
    SQL_MAPS,
    parse_snippet,
    policy_endpoint,
    render_postfix,
)

# --------------------------------------------------------------------------- Postfix emulation


def _quote(value: str) -> str:
    return value.replace("'", "''")


def expand(query: str, key: str) -> str | None:
    """Expand %s/%u/%d/%% as Postfix's sqlite_table does; None when the query is suppressed."""
    local, at, domain = key.rpartition("@")
    if not at:
        local, domain = key, ""
    out = []
    i = 0
    while i < len(query):
        ch = query[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        code = query[i + 1]
        if code == "%":
            out.append("%")
        elif code == "s":
            out.append(_quote(key))
        elif code == "u":
            if not local:
                return None
            out.append(_quote(local))
        elif code == "d":
            if not domain:
                return None
            out.append(_quote(domain))
        else:
            raise AssertionError(f"unexpected %{code}")
        i += 2
    return "".join(out)


class Maps:
    """The rendered SQL maps queried the way Postfix queries them."""

    def __init__(self, db: str) -> None:
        self.conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)

    def lookup(self, name: str, key: str) -> str | None:
        """One table lookup: rows joined with commas, None when not found."""
        sql = expand(SQL_MAPS[name], key.lower())
        if sql is None:
            return None
        rows = [str(r[0]) for r in self.conn.execute(sql)]
        return ",".join(rows) if rows else None

    def param(self, param: str, key: str) -> str | None:
        """A main.cf parameter's table list: the first table that answers wins."""
        for name in PARAMETERS[param]:
            found = self.lookup(name, key)
            if found is not None:
                return found
        return None

    def find(self, param: str, address: str) -> str | None:
        """mail_addr_find: the full address in every table, then @domain in every table."""
        found = self.param(param, address)
        if found is None:
            found = self.param(param, "@" + address.rpartition("@")[2])
        return found


@pytest.fixture
def db(tmp_path: Path) -> Iterator[str]:
    """A directory with active/disabled domains, mailboxes, aliases, a catch-all, an alias domain."""
    path = str(tmp_path / "directory.db")
    backend = SqliteBackend(path)
    d = Directory(backend, actor="test", password_scheme="SHA512-CRYPT")
    d.add_domain("example.com")
    d.add_domain("off.example")
    d.add_mailbox("alice@example.com", password="correct horse battery", quota=2 * 1024**3)
    d.add_mailbox("bob@example.com", password="correct horse battery")
    d.add_mailbox("gone@example.com", password="correct horse battery")
    d.update_mailbox("gone@example.com", active=False)
    d.add_mailbox("carol@off.example", password="correct horse battery")
    d.add_alias("team@example.com", ["alice@example.com", "bob@example.com"])
    d.add_alias("ext@example.com", ["someone@elsewhere.example"])
    d.add_alias("@example.com", ["bob@example.com"])
    d.add_alias("info@off.example", ["alice@example.com"])
    d.add_alias_domain("example.info", "example.com")
    d.update_domain("off.example", active=False)
    backend.close()
    yield path


@pytest.fixture
def maps(db: str) -> Iterator[Maps]:
    """The rendered maps over ``db``."""
    m = Maps(db)
    yield m
    m.conn.close()


# --------------------------------------------------------------------------- map semantics


def test_mailbox_map_returns_maildir_path(maps: Maps) -> None:
    """An active mailbox maps to DOMAIN/LOCAL/ (trailing slash: Maildir)."""
    assert maps.lookup("virtual_mailbox_maps.cf", "alice@example.com") == "example.com/alice/"
    assert maps.lookup("virtual_mailbox_domains.cf", "example.com") == "example.com"


def test_disabled_mailbox_is_unknown(maps: Maps) -> None:
    """A disabled mailbox is in no map: not a mailbox, not self-mapped, not a sender login."""
    for name in (
        "virtual_mailbox_maps.cf",
        "virtual_alias_mailbox_maps.cf",
        "sender_login_maps.cf",
    ):
        assert maps.lookup(name, "gone@example.com") is None


def test_disabled_domain_returns_nothing(maps: Maps) -> None:
    """A disabled domain, its mailboxes and its aliases are not returned."""
    assert maps.lookup("virtual_mailbox_domains.cf", "off.example") is None
    assert maps.lookup("virtual_mailbox_maps.cf", "carol@off.example") is None
    assert maps.lookup("virtual_alias_maps.cf", "info@off.example") is None
    assert maps.lookup("sender_login_maps.cf", "carol@off.example") is None


def test_alias_with_two_targets(maps: Maps) -> None:
    """An alias returns one value per target, in order, comma-joined like Postfix does."""
    assert maps.lookup("virtual_alias_maps.cf", "team@example.com") == (
        "alice@example.com,bob@example.com"
    )


def test_catch_all_does_not_swallow_mailboxes(maps: Maps) -> None:
    """With a catch-all, a real mailbox still resolves to itself; unknown users hit the catch-all."""
    assert maps.lookup("virtual_alias_maps.cf", "@example.com") == "bob@example.com"
    assert maps.find("virtual_alias_maps", "alice@example.com") == "alice@example.com"
    assert maps.find("virtual_alias_maps", "nobody@example.com") == "bob@example.com"
    assert maps.find("virtual_alias_maps", "team@example.com") == (
        "alice@example.com,bob@example.com"
    )
    # a disabled mailbox is no longer protected: the catch-all takes its mail
    assert maps.find("virtual_alias_maps", "gone@example.com") == "bob@example.com"


def test_alias_domain_maps_users_to_target(db: str, maps: Maps) -> None:
    """user@aliasdomain -> user@target only while user@target exists (or target has a catch-all)."""
    assert maps.lookup("virtual_alias_domains.cf", "example.info") == "example.info"
    assert maps.lookup("virtual_mailbox_domains.cf", "example.info") is None
    assert maps.find("virtual_alias_maps", "alice@example.info") == "alice@example.com"
    assert maps.find("virtual_alias_maps", "team@example.info") == "team@example.com"
    # the catch-all key never runs the %u query
    assert maps.lookup("virtual_alias_domain_maps.cf", "@example.info") is None
    # the target's catch-all covers unknown users; without it they are unknown
    assert maps.find("virtual_alias_maps", "zed@example.info") == "zed@example.com"
    backend = SqliteBackend(db)
    Directory(backend, actor="test").remove_alias("@example.com")
    backend.close()
    assert maps.find("virtual_alias_maps", "zed@example.info") is None
    assert maps.find("virtual_alias_maps", "alice@example.info") == "alice@example.com"


def test_sender_login_map(maps: Maps) -> None:
    """Owners: the mailbox itself, mailboxes an alias points to, via alias domains; not catch-alls."""
    assert maps.find("smtpd_sender_login_maps", "alice@example.com") == "alice@example.com"
    owners = maps.find("smtpd_sender_login_maps", "team@example.com")
    assert owners is not None and sorted(owners.split(",")) == [
        "alice@example.com",
        "bob@example.com",
    ]
    assert maps.find("smtpd_sender_login_maps", "ext@example.com") is None
    assert maps.find("smtpd_sender_login_maps", "nobody@example.com") is None
    assert maps.find("smtpd_sender_login_maps", "alice@example.info") == "alice@example.com"
    owners = maps.find("smtpd_sender_login_maps", "team@example.info")
    assert owners is not None and sorted(owners.split(",")) == [
        "alice@example.com",
        "bob@example.com",
    ]


def test_quote_in_local_part_is_escaped(maps: Maps) -> None:
    """A key with a single quote is quoted like Postfix does and finds nothing, without error."""
    assert maps.lookup("virtual_mailbox_maps.cf", "o'hara@example.com") is None
    assert maps.lookup("virtual_alias_domain_maps.cf", "o'hara@example.info") is not None


def test_dovecot_user_query(db: str) -> None:
    """The userdb query returns home, Maildir, uid/gid and quota for active mailboxes only."""
    cfg = DirectoryConfig(path=db, mail_root="/srv/vmail/", mail_uid=2000, mail_gid=3000)
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row

    def user(name: str) -> dict[str, object] | None:
        row = conn.execute(user_query(cfg).replace("%Lu", name.lower())).fetchone()
        return dict(row) if row else None

    assert user("alice@example.com") == {
        "home": "/srv/vmail/example.com/alice",
        "mail": "maildir:/srv/vmail/example.com/alice",
        "uid": 2000,
        "gid": 3000,
        "quota_rule": f"*:bytes={2 * 1024**3}",
    }
    bob = user("bob@example.com")
    assert bob is not None and bob["quota_rule"] is None
    assert user("gone@example.com") is None
    assert user("carol@off.example") is None
    users = {r[0] for r in conn.execute(ITERATE_QUERY)}
    assert users == {"alice@example.com", "bob@example.com"}
    conn.close()


# --------------------------------------------------------------------------- golden text


def test_postfix_sqlite_render_golden() -> None:
    """The sqlite rendering: one map per file with dbpath/query, and main.cf lines naming them."""
    cfg = DirectoryConfig(path="/var/lib/pfm/directory.db", mail_uid=5000, mail_gid=5001)
    files = render_postfix(cfg, map_dir="/etc/postfix/pfm", policy="inet:127.0.0.1:10040")
    assert set(files) == {*SQL_MAPS, "main.cf.snippet"}
    text = files["virtual_mailbox_domains.cf"].text
    assert text.splitlines()[1:] == [
        "dbpath = /var/lib/pfm/directory.maps.db",
        "query = SELECT name FROM domains WHERE name = '%s' AND active = 1",
    ]
    params = parse_snippet(files["main.cf.snippet"].text)
    assert (
        params["virtual_mailbox_domains"]
        == "proxy:sqlite:/etc/postfix/pfm/virtual_mailbox_domains.cf"
    )
    assert (
        params["virtual_alias_domains"] == "proxy:sqlite:/etc/postfix/pfm/virtual_alias_domains.cf"
    )
    assert params["virtual_alias_maps"] == (
        "proxy:sqlite:/etc/postfix/pfm/virtual_alias_maps.cf, "
        "proxy:sqlite:/etc/postfix/pfm/virtual_alias_mailbox_maps.cf, "
        "proxy:sqlite:/etc/postfix/pfm/virtual_alias_domain_maps.cf"
    )
    assert params["virtual_mailbox_base"] == "/var/vmail"
    assert params["virtual_uid_maps"] == "static:5000"
    assert params["virtual_gid_maps"] == "static:5001"
    assert params["smtpd_recipient_restrictions"] == (
        "check_policy_service { inet:127.0.0.1:10040, default_action=DUNNO }"
    )
    assert params["smtpd_end_of_data_restrictions"] == params["smtpd_recipient_restrictions"]
    assert all(f.mode == 0o644 and not f.secret for f in files.values())


def test_postfix_render_without_policy() -> None:
    """policy=None leaves every policy-service line out."""
    files = render_postfix(DirectoryConfig(), policy=None)
    assert "check_policy_service" not in files["main.cf.snippet"].text


def test_postfix_ldap_render_golden() -> None:
    """LDAP maps carry server, base, filter, result attribute and bind settings; 0640 root:postfix."""
    ldap = LdapConfig(
        uris=("ldap://ldap1:389", "ldap://ldap2:389"),
        base_dn="dc=example,dc=org",
        bind_dn="cn=postfix,dc=example,dc=org",
        start_tls=True,
        ca_file="/etc/ssl/ca.pem",
    )
    cfg = replace(DirectoryConfig(), backend="ldap", ldap=ldap)
    files = render_postfix(cfg, bind_password="s3cret")
    mbox = files["virtual_mailbox_maps.cf"]
    assert mbox.mode == 0o640 and mbox.group == "postfix" and mbox.secret
    lines = mbox.text.splitlines()
    for expected in (
        "server_host = ldap://ldap1:389 ldap://ldap2:389",
        "search_base = ou=mailboxes,dc=example,dc=org",
        "query_filter = (&(objectClass=pfmMailbox)(mail=%s)(pfmActive=TRUE))",
        "result_attribute = mail",
        "result_format = %d/%u/",
        "bind = yes",
        "bind_dn = cn=postfix,dc=example,dc=org",
        "bind_pw = s3cret",
        "start_tls = yes",
        "tls_ca_cert_file = /etc/ssl/ca.pem",
    ):
        assert expected in lines
    assert "pfmAliasTarget" in files["virtual_alias_maps.cf"].text
    assert "(mail=%u@%d)" in files["sender_login_maps.cf"].text
    assert "ldap:/etc/postfix/pfm/virtual_mailbox_maps.cf" in files["main.cf.snippet"].text
    assert "s3cret" not in files["main.cf.snippet"].text


def test_dovecot_sqlite_render_golden() -> None:
    """Dovecot: checkpassword passdb via pfm-checkpassword, SQL userdb over the directory file."""
    cfg = DirectoryConfig(path="/var/lib/pfm/directory.db")
    files = render_dovecot(cfg, conf_dir="/etc/dovecot/pfm")
    auth = files["auth-pfm.conf.ext"].text
    assert "driver = checkpassword\n  args = /usr/bin/pfm-checkpassword\n" in auth
    assert "driver = sql\n  args = /etc/dovecot/pfm/dovecot-sql.conf.ext\n" in auth
    sql = files["dovecot-sql.conf.ext"].text.splitlines()
    assert "driver = sqlite" in sql
    assert "connect = /var/lib/pfm/directory.maps.db" in sql
    assert any(line.startswith("user_query = SELECT ") for line in sql)


def test_dovecot_ldap_render_golden() -> None:
    """Dovecot LDAP userdb: filter on active mailboxes, templates for home/mail; dnpass 0640."""
    ldap = LdapConfig(base_dn="dc=example,dc=org", bind_dn="cn=dovecot,dc=example,dc=org")
    cfg = replace(DirectoryConfig(mail_root="/var/vmail"), backend="ldap", ldap=ldap)
    files = render_dovecot(cfg, bind_password="pw")
    conf = files["dovecot-ldap.conf.ext"]
    assert conf.mode == 0o640 and conf.group == "dovecot" and conf.secret
    assert "user_filter = (&(objectClass=pfmMailbox)(mail=%Lu)(pfmActive=TRUE))" in conf.text
    assert "=home=/var/vmail/%Ld/%Ln" in conf.text
    assert "dnpass = pw" in conf.text
    assert "driver = ldap" in files["auth-pfm.conf.ext"].text


def test_policy_endpoint() -> None:
    """pfm-policyd listen entries become check_policy_service endpoints."""
    assert policy_endpoint("127.0.0.1:10040") == "inet:127.0.0.1:10040"
    assert policy_endpoint("unix:/var/spool/postfix/private/pfm:0666") == (
        "unix:/var/spool/postfix/private/pfm"
    )
    assert policy_endpoint("unix:/run/pfm.sock") == "unix:/run/pfm.sock"


# --------------------------------------------------------------------------- installing files


def test_apply_writes_changed_files_only(tmp_path: Path) -> None:
    """New and changed files are written; an unchanged file keeps its inode and mtime."""
    files = {"a.cf": RenderedFile("one\n"), "b.cf": RenderedFile("two\n")}
    assert [p.name for p in apply(plan(tmp_path, files))] == ["a.cf", "b.cf"]
    before = (tmp_path / "a.cf").stat()
    files["b.cf"] = RenderedFile("two, changed\n")
    changes = plan(tmp_path, files)
    assert [c.path.name for c in changes if c.changed] == ["b.cf"]
    assert "-two\n+two, changed\n" in changes[1].diff()
    assert [p.name for p in apply(changes)] == ["b.cf"]
    after = (tmp_path / "a.cf").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert (tmp_path / "b.cf").read_text() == "two, changed\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.cf", "b.cf"]


def test_secret_file_mode_and_redacted_diff(tmp_path: Path) -> None:
    """A secret file is created 0640 and its password never shows in the diff."""
    files = {"m.cf": RenderedFile("bind_pw = hunter2\nx = 1\n", mode=0o640, secret=True)}
    changes = plan(tmp_path, files)
    diff = changes[0].diff()
    assert "hunter2" not in diff and "+bind_pw = ********" in diff
    apply(changes)
    assert (tmp_path / "m.cf").stat().st_mode & 0o777 == 0o640


def test_cli_render_dry_run_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pfm config render postfix --dry-run` prints the diff and creates no file."""
    conf = tmp_path / "pfm.toml"
    conf.write_text(f'[directory]\npath = "{tmp_path}/d.db"\n')
    out = tmp_path / "out"
    rc = main(["-c", str(conf), "config", "render", "postfix", "--out", str(out), "--dry-run"])
    assert rc == 0
    text = capsys.readouterr().out
    assert f"+++ {out}/virtual_mailbox_maps.cf" in text
    assert "dry run: 9 of 9 files would change" in text
    assert not out.exists()
    assert main(["-c", str(conf), "config", "render", "postfix", "--out", str(out)]) == 0
    assert "wrote 9 files" in capsys.readouterr().out
    assert main(["-c", str(conf), "config", "render", "postfix", "--out", str(out)]) == 0
    assert "wrote 0 files, 9 unchanged" in capsys.readouterr().out


def test_cli_check_bad_config_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`pfm config check` on a bad pfm.toml exits 78 naming the key and its line."""
    conf = tmp_path / "pfm.toml"
    conf.write_text('[directory]\nbackend = "sqlite"\nmail_uid = "x"\n')
    assert main(["-c", str(conf), "config", "check"]) == 78
    err = capsys.readouterr().err
    assert "pfm.toml:3: directory.mail_uid" in err
