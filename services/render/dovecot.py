"""Dovecot auth snippets for the pfm directory (pure).

* passdb: ``checkpassword`` running ``/usr/bin/pfm-checkpassword`` (which asks pfm-authd);
* userdb: native lookups in the directory, so Dovecot finds home, Maildir, uid/gid and quota
  without pfm-authd: ``dovecot-sql.conf.ext`` (SQLite; Debian package ``dovecot-sqlite``)
  or ``dovecot-ldap.conf.ext`` (``dovecot-ldap``).

Mailboxes live in ``MAIL_ROOT/DOMAIN/LOCALPART/`` as a Maildir, exactly where Postfix's
virtual(8) delivers (``virtual_mailbox_maps`` answers ``DOMAIN/LOCALPART/``).
"""

from __future__ import annotations

from services.config import DirectoryConfig
from services.directory.sqlite_maps import resolve_maps_path

from . import Rendered, RenderedFile

CHECKPASSWORD = "/usr/bin/pfm-checkpassword"
AUTH_CONF = "auth-pfm.conf.ext"
SQL_CONF = "dovecot-sql.conf.ext"
LDAP_CONF = "dovecot-ldap.conf.ext"

_HEADER = "# Rendered by `pfm config render dovecot`: edit pfm.toml and re-render, not this file.\n"


def _sql_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def user_query(directory: DirectoryConfig) -> str:
    """The SQL userdb query (Dovecot expands ``%Lu`` to the lower-cased, escaped user)."""
    root = directory.mail_root.rstrip("/") or "/"
    base = _sql_quote(root + "/")
    # mail_root is quoted by _sql_quote and uid/gid are ints: no injection possible
    return (
        f"SELECT {base} || m.domain || '/' || m.local_part AS home,"  # noqa: S608
        f" 'maildir:' || {base} || m.domain || '/' || m.local_part AS mail,"
        f" {int(directory.mail_uid)} AS uid, {int(directory.mail_gid)} AS gid,"
        " CASE WHEN m.quota > 0 THEN '*:bytes=' || m.quota END AS quota_rule"
        " FROM mailboxes m JOIN domains d ON d.name = m.domain"
        " WHERE m.address = '%Lu' AND m.active = 1 AND d.active = 1"
    )


ITERATE_QUERY = (
    "SELECT m.address AS user FROM mailboxes m JOIN domains d ON d.name = m.domain"
    " WHERE m.active = 1 AND d.active = 1"
)


def _auth_conf(userdb_driver: str, args_file: str) -> str:
    return (
        f"{_HEADER}"
        "# Include from conf.d/10-auth.conf:  !include /etc/dovecot/pfm/auth-pfm.conf.ext\n"
        "# (and comment out !include auth-system.conf.ext). pfm-checkpassword asks pfm-authd.\n"
        "passdb {\n"
        "  driver = checkpassword\n"
        f"  args = {CHECKPASSWORD}\n"
        "}\n"
        "userdb {\n"
        f"  driver = {userdb_driver}\n"
        f"  args = {args_file}\n"
        "}\n"
    )


def _ldap_conf(directory: DirectoryConfig, bind_password: str) -> str:
    ldap = directory.ldap
    root = directory.mail_root.rstrip("/") or "/"
    lines = [
        _HEADER.rstrip("\n"),
        f"uris = {' '.join(ldap.uris)}",
        "ldap_version = 3",
        f"base = ou=mailboxes,{ldap.base_dn}",
        "scope = onelevel",
        "deref = never",
        "user_filter = (&(objectClass=pfmMailbox)(mail=%Lu)(pfmActive=TRUE))",
        f"user_attrs = =home={root}/%Ld/%Ln, =mail=maildir:{root}/%Ld/%Ln,"
        f" =uid={int(directory.mail_uid)}, =gid={int(directory.mail_gid)},"
        " pfmQuota=quota_rule=*:bytes=%$",
        "iterate_filter = (&(objectClass=pfmMailbox)(pfmActive=TRUE))",
        "iterate_attrs = mail=user",
    ]
    if ldap.bind_dn:
        lines += [
            "# Holds the LDAP bind password: keep it mode 0640, owner root, group dovecot.",
            f"dn = {ldap.bind_dn}",
            f"dnpass = {bind_password}",
        ]
    if ldap.start_tls:
        lines.append("tls = yes")
    if ldap.ca_file:
        lines += [f"tls_ca_cert_file = {ldap.ca_file}", "tls_require_cert = hard"]
    return "\n".join(lines) + "\n"


def render_dovecot(
    directory: DirectoryConfig, *, conf_dir: str = "/etc/dovecot/pfm", bind_password: str = ""
) -> Rendered:
    """``auth-pfm.conf.ext`` plus the userdb file of the configured backend.

    ``conf_dir`` is where the files will be installed (the auth snippet names the userdb
    file there). An LDAP userdb file with a bind DN holds the password: 0640, group dovecot.
    """
    files: Rendered = {}
    if directory.backend == "ldap":
        secret = bool(directory.ldap.bind_dn)
        files[AUTH_CONF] = RenderedFile(_auth_conf("ldap", f"{conf_dir}/{LDAP_CONF}"))
        files[LDAP_CONF] = RenderedFile(
            _ldap_conf(directory, bind_password),
            mode=0o640 if secret else 0o644,
            group="dovecot" if secret else "",
            secret=secret,
        )
    else:
        files[AUTH_CONF] = RenderedFile(_auth_conf("sql", f"{conf_dir}/{SQL_CONF}"))
        files[SQL_CONF] = RenderedFile(
            f"{_HEADER}"
            "# Needs the Debian package dovecot-sqlite; Dovecot reads the directory read-only.\n"
            "driver = sqlite\n"
            f"connect = {resolve_maps_path(directory.path, directory.maps_path)}\n"
            f"user_query = {user_query(directory)}\n"
            f"iterate_query = {ITERATE_QUERY}\n"
        )
    return files
