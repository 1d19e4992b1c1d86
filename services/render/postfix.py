"""Postfix ``sqlite:``/``ldap:`` map files and the ``main.cf`` lines that use them (pure).

Address classes (Postfix ADDRESS_CLASS_README): a domain belongs to exactly one class.
Real pfm domains hold mailboxes, so they are **virtual mailbox domains**. An alias domain
only rewrites ``user@alias`` to ``user@target`` and never holds a mailbox, so it is a
**virtual alias domain**: listed in ``virtual_alias_domains`` and resolved through
``virtual_alias_maps``. Listing a domain in both makes Postfix warn and is never needed.

Lookup order matters for catch-alls: for ``user@domain`` Postfix first asks *every* table
of ``virtual_alias_maps`` for the full address, and only then for ``@domain``. So each
mailbox is also mapped to itself in ``virtual_alias_maps`` (the ``virtual_alias_mailbox``
table): a catch-all ``@domain`` then never swallows mail for an existing mailbox.

Postfix expands ``%s`` (the key), ``%u`` (its local part) and ``%d`` (its domain) in
queries, quoting them for SQL or LDAP. A query that uses ``%u`` or ``%d`` is skipped when
the key has no local part or domain: the alias-domain tables and the sender-login table for
alias domains therefore never answer the ``@domain`` (catch-all) lookup.
"""

from __future__ import annotations

from collections.abc import Mapping

from services.config import DirectoryConfig, LdapConfig
from services.directory.sqlite_maps import resolve_maps_path

from . import Rendered, RenderedFile

# --------------------------------------------------------------------------- SQL queries

DOMAINS_SQL = "SELECT name FROM domains WHERE name = '%s' AND active = 1"

ALIAS_DOMAINS_SQL = (
    "SELECT ad.name FROM alias_domains ad JOIN domains d ON d.name = ad.target"
    " WHERE ad.name = '%s' AND ad.active = 1 AND d.active = 1"
)

MAILBOX_SQL = (
    "SELECT m.domain || '/' || m.local_part || '/' FROM mailboxes m"
    " JOIN domains d ON d.name = m.domain"
    " WHERE m.address = '%s' AND m.active = 1 AND d.active = 1"
)

# One row per target: Postfix joins the rows with commas.
ALIAS_SQL = (
    "SELECT t.target FROM aliases a JOIN alias_targets t ON t.alias = a.address"
    " JOIN domains d ON d.name = a.domain"
    " WHERE a.address = '%s' AND a.active = 1 AND d.active = 1 ORDER BY t.position"
)

# Each active mailbox maps to itself so a catch-all cannot swallow it (see module doc).
ALIAS_MAILBOX_SQL = (
    "SELECT m.address FROM mailboxes m JOIN domains d ON d.name = m.domain"
    " WHERE m.address = '%s' AND m.active = 1 AND d.active = 1"
)

# user@aliasdomain -> user@target, only when user@target exists (a mailbox or an alias) or
# the target has a catch-all: unknown users are refused at RCPT, not bounced later.
ALIAS_DOMAIN_SQL = (
    "SELECT '%u@' || ad.target FROM alias_domains ad JOIN domains d ON d.name = ad.target"
    " WHERE ad.name = '%d' AND ad.active = 1 AND d.active = 1 AND ("
    "EXISTS (SELECT 1 FROM mailboxes m WHERE m.address = '%u@' || ad.target AND m.active = 1)"
    " OR EXISTS (SELECT 1 FROM aliases a WHERE a.active = 1"
    " AND a.address IN ('%u@' || ad.target, '@' || ad.target)))"
)

# Who may send as an address: the mailbox itself, plus the mailboxes an alias points to.
# Catch-alls are left out on purpose: a catch-all target must not own every address.
SENDER_LOGIN_SQL = (
    "SELECT m.address FROM mailboxes m JOIN domains d ON d.name = m.domain"
    " WHERE m.address = '%s' AND m.active = 1 AND d.active = 1"
    " UNION SELECT t.target FROM aliases a JOIN alias_targets t ON t.alias = a.address"
    " JOIN mailboxes m ON m.address = t.target JOIN domains d ON d.name = a.domain"
    " WHERE a.address = '%s' AND substr(a.address, 1, 1) <> '@'"
    " AND a.active = 1 AND m.active = 1 AND d.active = 1"
)

# The same for user@aliasdomain, through user@target.
SENDER_LOGIN_ALIAS_DOMAIN_SQL = (
    "SELECT m.address FROM alias_domains ad JOIN domains d ON d.name = ad.target"
    " JOIN mailboxes m ON m.address = '%u@' || ad.target"
    " WHERE ad.name = '%d' AND ad.active = 1 AND d.active = 1 AND m.active = 1"
    " UNION SELECT t.target FROM alias_domains ad JOIN domains d ON d.name = ad.target"
    " JOIN aliases a ON a.address = '%u@' || ad.target"
    " JOIN alias_targets t ON t.alias = a.address JOIN mailboxes m ON m.address = t.target"
    " WHERE ad.name = '%d' AND ad.active = 1 AND d.active = 1 AND a.active = 1"
    " AND m.active = 1"
)

SQL_MAPS: dict[str, str] = {
    "virtual_mailbox_domains.cf": DOMAINS_SQL,
    "virtual_alias_domains.cf": ALIAS_DOMAINS_SQL,
    "virtual_mailbox_maps.cf": MAILBOX_SQL,
    "virtual_alias_maps.cf": ALIAS_SQL,
    "virtual_alias_mailbox_maps.cf": ALIAS_MAILBOX_SQL,
    "virtual_alias_domain_maps.cf": ALIAS_DOMAIN_SQL,
    "sender_login_maps.cf": SENDER_LOGIN_SQL,
    "sender_login_alias_domain_maps.cf": SENDER_LOGIN_ALIAS_DOMAIN_SQL,
}
"""Map file name -> its query (the same names are used for the LDAP maps)."""

# main.cf parameter -> the map files it lists, in lookup order
PARAMETERS: dict[str, tuple[str, ...]] = {
    "virtual_mailbox_domains": ("virtual_mailbox_domains.cf",),
    "virtual_alias_domains": ("virtual_alias_domains.cf",),
    "virtual_mailbox_maps": ("virtual_mailbox_maps.cf",),
    "virtual_alias_maps": (
        "virtual_alias_maps.cf",
        "virtual_alias_mailbox_maps.cf",
        "virtual_alias_domain_maps.cf",
    ),
    "smtpd_sender_login_maps": ("sender_login_maps.cf", "sender_login_alias_domain_maps.cf"),
}

SNIPPET = "main.cf.snippet"

_HEADER = "# Rendered by `pfm config render postfix`: edit pfm.toml and re-render, not this file.\n"


def _sqlite_map(dbpath: str, query: str) -> str:
    return f"{_HEADER}dbpath = {dbpath}\nquery = {query}\n"


# --------------------------------------------------------------------------- LDAP

# name -> (container, filter, result_attribute, result_format)
LDAP_MAPS: dict[str, tuple[str, str, str, str]] = {
    "virtual_mailbox_domains.cf": (
        "ou=domains",
        "(&(objectClass=pfmDomain)(pfmDomainName=%s)(pfmActive=TRUE))",
        "pfmDomainName",
        "",
    ),
    "virtual_alias_domains.cf": (
        "ou=aliasdomains",
        "(&(objectClass=pfmAliasDomain)(pfmDomainName=%s)(pfmActive=TRUE))",
        "pfmDomainName",
        "",
    ),
    "virtual_mailbox_maps.cf": (
        "ou=mailboxes",
        "(&(objectClass=pfmMailbox)(mail=%s)(pfmActive=TRUE))",
        "mail",
        "%d/%u/",
    ),
    "virtual_alias_maps.cf": (
        "ou=aliases",
        "(&(objectClass=pfmAlias)(mail=%s)(pfmActive=TRUE))",
        "pfmAliasTarget",
        "",
    ),
    "virtual_alias_mailbox_maps.cf": (
        "ou=mailboxes",
        "(&(objectClass=pfmMailbox)(mail=%s)(pfmActive=TRUE))",
        "mail",
        "",
    ),
    # LDAP cannot build "%u@target" from the key: answer "@target" and let Postfix keep the
    # local part (its "user@domain -> @otherdomain" rule). Unlike the SQL map this accepts
    # any user of the alias domain at RCPT (unknown ones bounce later).
    "virtual_alias_domain_maps.cf": (
        "ou=aliasdomains",
        "(&(objectClass=pfmAliasDomain)(pfmDomainName=%d)(pfmActive=TRUE))",
        "pfmTargetDomain",
        "@%s",
    ),
    "sender_login_maps.cf": (
        "ou=mailboxes",
        "(&(objectClass=pfmMailbox)(mail=%u@%d)(pfmActive=TRUE))",
        "mail",
        "",
    ),
    # %u@%d instead of %s: Postfix skips the query for "@domain", so catch-alls own nothing
    "sender_login_alias_domain_maps.cf": (
        "ou=aliases",
        "(&(objectClass=pfmAlias)(mail=%u@%d)(pfmActive=TRUE))",
        "pfmAliasTarget",
        "",
    ),
}


def _ldap_map(
    ldap: LdapConfig,
    bind_password: str,
    container: str,
    query_filter: str,
    result_attribute: str,
    result_format: str,
) -> str:
    lines = [
        _HEADER.rstrip("\n"),
        "# Holds the LDAP bind password: keep it mode 0640, owner root, group postfix.",
        f"server_host = {' '.join(ldap.uris)}",
        "version = 3",
        f"search_base = {container},{ldap.base_dn}",
        "scope = one",
        f"query_filter = {query_filter}",
        f"result_attribute = {result_attribute}",
    ]
    if result_format:
        lines.append(f"result_format = {result_format}")
    lines.append(f"timeout = {max(1, round(float(ldap.timeout)))}")
    if ldap.bind_dn:
        lines += ["bind = yes", f"bind_dn = {ldap.bind_dn}", f"bind_pw = {bind_password}"]
    else:
        lines.append("bind = no")
    if ldap.start_tls:
        lines.append("start_tls = yes")
    if ldap.ca_file:
        lines.append(f"tls_ca_cert_file = {ldap.ca_file}")
        lines.append("tls_require_cert = yes")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main.cf


def policy_endpoint(listen: str) -> str:
    """The ``check_policy_service`` endpoint of a pfm-policyd ``listen`` entry.

    ``127.0.0.1:10040`` -> ``inet:127.0.0.1:10040``; ``unix:/path:0666`` -> ``unix:/path``.
    """
    if listen.startswith("unix:"):
        path = listen[5:]
        head, sep, mode = path.rpartition(":")
        if sep and mode.isdigit():
            path = head
        return f"unix:{path}"
    return f"inet:{listen}"


def main_cf_lines(
    directory: DirectoryConfig, map_dir: str, policy: str | None
) -> list[tuple[str, str]]:
    """``(parameter, value)`` pairs for main.cf, in order."""
    kind = directory.backend
    params = [
        (name, ", ".join(f"proxy:{kind}:{map_dir}/{f}" for f in files))
        for name, files in PARAMETERS.items()
    ]
    params += [
        ("virtual_mailbox_base", directory.mail_root),
        ("virtual_uid_maps", f"static:{directory.mail_uid}"),
        ("virtual_gid_maps", f"static:{directory.mail_gid}"),
        ("virtual_minimum_uid", str(min(directory.mail_uid, 100))),
        ("smtpd_sender_restrictions", "reject_authenticated_sender_login_mismatch"),
    ]
    if policy:
        clause = f"check_policy_service {{ {policy}, default_action=DUNNO }}"
        params += [
            (
                "smtpd_relay_restrictions",
                "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination",
            ),
            ("smtpd_recipient_restrictions", clause),
            ("smtpd_end_of_data_restrictions", clause),
            ("smtpd_policy_service_timeout", "10s"),
            ("smtpd_policy_service_max_idle", "300s"),
            ("smtpd_policy_service_max_ttl", "1000s"),
            ("smtpd_policy_service_try_limit", "2"),
            ("smtpd_policy_service_retry_delay", "1s"),
        ]
    return params


def _snippet(params: list[tuple[str, str]], kind: str) -> str:
    head = (
        f"{_HEADER}"
        f"# Postfix Manager: virtual domains, mailboxes and aliases from the pfm directory ({kind}).\n"
        "# Apply with:  grep -v '^#' main.cf.snippet | xargs -d '\\n' postconf -e\n"
        "# Real domains are virtual_mailbox_domains; alias domains are virtual_alias_domains\n"
        "# (a domain belongs to one address class only). Mail is delivered by virtual(8) to\n"
        "# virtual_mailbox_base/DOMAIN/LOCALPART/ (Maildir); for Dovecot LMTP set\n"
        "# virtual_transport = lmtp:unix:private/dovecot-lmtp instead.\n"
        "# smtpd_relay_restrictions guards relaying first, so pfm-policyd sees only mail that\n"
        "# may pass; default_action=DUNNO fails open when pfm-policyd is down.\n"
    )
    return head + "".join(f"{k} = {v}\n" for k, v in params)


def render_postfix(
    directory: DirectoryConfig,
    *,
    map_dir: str = "/etc/postfix/pfm",
    policy: str | None = "inet:127.0.0.1:10040",
    bind_password: str = "",
) -> Rendered:
    """The map files and ``main.cf.snippet`` for the configured backend.

    ``map_dir`` is where the files will be installed (the snippet names them there);
    ``policy`` is the pfm-policyd endpoint (None leaves the restriction lines out);
    ``bind_password`` is written into LDAP maps, which are then marked secret (0640,
    group postfix): Postfix's ldap_table has no password-file option.
    """
    files: Rendered = {}
    if directory.backend == "ldap":
        ldap = directory.ldap
        secret = bool(ldap.bind_dn)
        for name, (container, flt, attr, fmt) in LDAP_MAPS.items():
            files[name] = RenderedFile(
                _ldap_map(ldap, bind_password, container, flt, attr, fmt),
                mode=0o640 if secret else 0o644,
                group="postfix" if secret else "",
                secret=secret,
            )
    else:
        # the secret-free maps file, never the directory itself (hashes, 0600)
        dbpath = resolve_maps_path(directory.path, directory.maps_path)
        for name, query in SQL_MAPS.items():
            files[name] = RenderedFile(_sqlite_map(dbpath, query))
    files[SNIPPET] = RenderedFile(
        _snippet(main_cf_lines(directory, map_dir, policy), directory.backend)
    )
    return files


def parse_snippet(text: str) -> Mapping[str, str]:
    """The ``parameter = value`` lines of a rendered snippet (comments skipped)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, value = line.partition("=")
        out[name.strip()] = value.strip()
    return out
