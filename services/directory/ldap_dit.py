"""The pfm LDAP tree: DNs, and objects <-> entries of ``configs/ldap/pfm.schema`` (pure, no I/O).

Layout under the configured base DN (flat containers, so a mailbox's DN follows from its
address and Dovecot/pfm-authd can bind without a search)::

    ou=domains       pfmDomainName=example.org          pfmDomain
    ou=mailboxes     mail=alice@example.org             inetOrgPerson + pfmMailbox
                       pfmAppPasswordId=ap-3f9c2a       pfmAppPassword (child of its mailbox)
    ou=aliases       mail=info@example.org              pfmAlias (mail=@example.org: catch-all)
    ou=aliasdomains  pfmDomainName=example.net          pfmAliasDomain
    ou=admins        cn=alice                           pfmAdmin
    ou=audit         pfmAuditId=17                      pfmAuditEntry (ou=audit holds pfmNextId)
    ou=oath          cn=totp                            oathTOTPParams (slapo-otp parameters)

Password hashes are kept in ``userPassword`` in the form slapd verifies on a simple bind
(``{CRYPT}$6$...``, ``{CRYPT}$2y$...``, ``{ARGON2}$argon2id$...``, ``{SSHA}...``) and
converted back to Dovecot's names (``{SHA512-CRYPT}``, ``{BLF-CRYPT}``, ``{ARGON2ID}``) when
read. TOTP secrets are the OATH-LDAP ``oathSecret`` (raw bytes; the model holds base32).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .ldap3_compat import escape_filter_chars, escape_rdn, parse_dn
from .model import (
    Admin,
    Alias,
    AliasDomain,
    AppPassword,
    AuditEntry,
    DirectoryObject,
    Domain,
    InvalidInput,
    Kind,
    LimitOverrides,
    Mailbox,
    scheme_of,
)

Attrs = dict[str, list[bytes]]
"""An entry's attributes as written: name -> raw values."""

RawAttrs = Mapping[str, Sequence[bytes]]
"""An entry's attributes as read (ldap3 ``raw_attributes``)."""

HMAC_SHA1_OID = "1.2.840.113549.2.7"

# Objects of each kind: object classes written and attributes managed (what Replace rewrites).
MAILBOX_CLASSES = ("inetOrgPerson", "pfmMailbox")
TOTP_CLASSES = ("oathTOTPUser", "oathTOTPToken")
TOTP_ATTRS = ("oathTOTPToken", "oathTOTPParams", "oathSecret", "oathTOTPLastTimeStep")

CONTAINERS: dict[Kind, str] = {
    "domain": "ou=domains",
    "mailbox": "ou=mailboxes",
    "alias": "ou=aliases",
    "alias_domain": "ou=aliasdomains",
    "admin": "ou=admins",
    "app_password": "ou=mailboxes",
}

OBJECT_CLASS_OF: dict[Kind, str] = {
    "domain": "pfmDomain",
    "mailbox": "pfmMailbox",
    "alias": "pfmAlias",
    "alias_domain": "pfmAliasDomain",
    "admin": "pfmAdmin",
    "app_password": "pfmAppPassword",
}

NAMING_ATTR: dict[Kind, str] = {
    "domain": "pfmDomainName",
    "mailbox": "mail",
    "alias": "mail",
    "alias_domain": "pfmDomainName",
    "admin": "cn",
    "app_password": "pfmAppPasswordId",
}


# --------------------------------------------------------------------------- escaping


def rdn_value(value: str, field_name: str = "key") -> str:
    """``value`` escaped for use as an RDN value (RFC 4514); NUL is refused."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(field_name, "is empty")
    if "\x00" in value:
        raise InvalidInput(field_name, "contains a NUL character")
    return str(escape_rdn(value))


def filter_value(value: str) -> str:
    """``value`` escaped for use inside a search filter (RFC 4515)."""
    return str(escape_filter_chars(value))


@dataclass(frozen=True, slots=True)
class Dit:
    """DNs of the pfm tree under ``base``."""

    base: str

    def container(self, kind: Kind) -> str:
        return f"{CONTAINERS[kind]},{self.base}"

    @property
    def audit(self) -> str:
        return f"ou=audit,{self.base}"

    @property
    def totp_params(self) -> str:
        return f"cn=totp,ou=oath,{self.base}"

    def dn(self, kind: Kind, key: str) -> str:
        """DN of an object of ``kind`` (not app passwords: see :meth:`app_password_dn`)."""
        if kind == "app_password":
            raise ValueError("app password DNs need the mailbox: use app_password_dn()")
        return f"{NAMING_ATTR[kind]}={rdn_value(key)},{self.container(kind)}"

    def app_password_dn(self, address: str, id: str) -> str:
        return f"pfmAppPasswordId={rdn_value(id, 'id')},{self.dn('mailbox', address)}"

    def audit_dn(self, id: int) -> str:
        return f"pfmAuditId={int(id)},{self.audit}"

    def dn_of(self, obj: DirectoryObject) -> str:
        if isinstance(obj, AppPassword):
            return self.app_password_dn(obj.address, obj.id)
        return self.dn(kind_of(obj), key_value(obj))


def kind_of(obj: DirectoryObject) -> Kind:
    from .model import KIND_OF

    return KIND_OF[type(obj)]


def key_value(obj: DirectoryObject) -> str:
    from .model import key_of

    return key_of(obj)


# --------------------------------------------------------------------------- values


def _b(value: str) -> list[bytes]:
    return [value.encode("utf-8")]


def fmt_time(value: float) -> list[bytes]:
    return _b(repr(float(value)))


def fmt_bool(value: bool) -> list[bytes]:
    return [b"TRUE" if value else b"FALSE"]


def fmt_int(value: int) -> list[bytes]:
    return _b(str(int(value)))


def fmt_limits(limits: LimitOverrides) -> list[bytes]:
    if not limits:
        return []
    data = {k: list(v) for k, v in sorted(limits.items())}
    return _b(json.dumps(data, separators=(",", ":"), sort_keys=True))


def _first(attrs: RawAttrs, name: str) -> bytes | None:
    for key, values in attrs.items():
        if key.lower() == name.lower():
            return values[0] if values else None
    return None


def _all(attrs: RawAttrs, name: str) -> list[bytes]:
    for key, values in attrs.items():
        if key.lower() == name.lower():
            return list(values)
    return []


def get_str(attrs: RawAttrs, name: str, default: str = "") -> str:
    v = _first(attrs, name)
    return v.decode("utf-8") if v is not None else default


def get_strs(attrs: RawAttrs, name: str) -> tuple[str, ...]:
    return tuple(v.decode("utf-8") for v in _all(attrs, name))


def get_int(attrs: RawAttrs, name: str, default: int = 0) -> int:
    v = _first(attrs, name)
    try:
        return int(v) if v is not None else default
    except ValueError:
        return default


def get_float(attrs: RawAttrs, name: str, default: float = 0.0) -> float:
    v = _first(attrs, name)
    try:
        return float(v) if v is not None else default
    except ValueError:
        return default


def get_bool(attrs: RawAttrs, name: str, default: bool = True) -> bool:
    v = _first(attrs, name)
    return default if v is None else v.upper() == b"TRUE"


def get_limits(attrs: RawAttrs, name: str = "pfmLimits") -> dict[str, tuple[str, ...]]:
    raw = _first(attrs, name)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): tuple(str(w) for w in v) for k, v in data.items() if isinstance(v, list)}


# --------------------------------------------------------------------------- passwords

# Dovecot scheme -> slapd scheme, for the hashes slapd can verify on a simple bind
# ({CRYPT} via libxcrypt's crypt(3); {ARGON2} via the argon2 module; {SSHA*} built in or
# via pw-sha2). Schemes not listed are stored unchanged.
_TO_SLAPD = {
    "SHA512-CRYPT": "CRYPT",
    "SHA256-CRYPT": "CRYPT",
    "BLF-CRYPT": "CRYPT",
    "MD5-CRYPT": "CRYPT",
    "ARGON2ID": "ARGON2",
    "ARGON2I": "ARGON2",
}


def password_to_ldap(dovecot_hash: str) -> bytes:
    """The ``userPassword`` value for a Dovecot ``{SCHEME}hash`` (slapd-verifiable form)."""
    scheme = scheme_of(dovecot_hash)
    target = _TO_SLAPD.get(scheme)
    if target is None:
        return dovecot_hash.encode("utf-8")
    body = dovecot_hash[len(scheme) + 2 :]
    return f"{{{target}}}{body}".encode()


def password_from_ldap(value: bytes) -> str:
    """The Dovecot ``{SCHEME}hash`` of a ``userPassword`` value."""
    text = value.decode("utf-8", "replace")
    scheme = scheme_of(text)
    body = text[len(scheme) + 2 :] if scheme else text
    if scheme == "CRYPT":
        for prefix, name in (
            ("$6$", "SHA512-CRYPT"),
            ("$5$", "SHA256-CRYPT"),
            ("$2y$", "BLF-CRYPT"),
            ("$2b$", "BLF-CRYPT"),
            ("$2a$", "BLF-CRYPT"),
            ("$1$", "MD5-CRYPT"),
        ):
            if body.startswith(prefix):
                return f"{{{name}}}{body}"
    if scheme == "ARGON2":
        if body.startswith("$argon2id$"):
            return f"{{ARGON2ID}}{body}"
        if body.startswith("$argon2i$"):
            return f"{{ARGON2I}}{body}"
    return text


# --------------------------------------------------------------------------- TOTP


def totp_to_raw(secret: str) -> bytes:
    """The raw key of a base32 TOTP secret; refuses what would not read back identically."""
    text = secret.strip().upper()
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raise InvalidInput("totp_secret", "is not valid base32") from None
    if not raw or totp_from_raw(raw) != secret:
        raise InvalidInput("totp_secret", "must be upper-case base32 without padding")
    return raw


def totp_from_raw(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=")


# --------------------------------------------------------------------------- objects -> entries


def to_entry(obj: DirectoryObject, dit: Dit) -> tuple[str, Attrs]:
    """``(dn, attributes)`` of an object; empty values are left out."""
    dn = dit.dn_of(obj)
    attrs: Attrs
    if isinstance(obj, Domain):
        attrs = {
            "objectClass": [b"pfmDomain"],
            "pfmDomainName": _b(obj.name),
            "pfmActive": fmt_bool(obj.active),
            "description": _b(obj.description) if obj.description else [],
            "pfmMaxMailboxes": fmt_int(obj.max_mailboxes),
            "pfmMaxAliases": fmt_int(obj.max_aliases),
            "pfmDefaultQuota": fmt_int(obj.default_quota),
            "pfmLimits": fmt_limits(obj.limits),
            "pfmCreated": fmt_time(obj.created),
            "pfmModified": fmt_time(obj.modified),
        }
    elif isinstance(obj, Mailbox):
        classes = list(MAILBOX_CLASSES) + (list(TOTP_CLASSES) if obj.totp_secret else [])
        attrs = {
            "objectClass": [c.encode() for c in classes],
            "mail": _b(obj.address),
            "cn": _b(obj.address),
            "sn": _b(obj.local_part),
            "displayName": _b(obj.name) if obj.name else [],
            "userPassword": [password_to_ldap(obj.password_hash)] if obj.password_hash else [],
            "pfmActive": fmt_bool(obj.active),
            "pfmQuota": fmt_int(obj.quota),
            "pfmLimits": fmt_limits(obj.limits),
            "pfmPasswordChanged": fmt_time(obj.password_changed),
            "pfmCreated": fmt_time(obj.created),
            "pfmModified": fmt_time(obj.modified),
        }
        if obj.totp_secret:
            attrs["oathTOTPToken"] = _b(dn)
            attrs["oathTOTPParams"] = _b(dit.totp_params)
            attrs["oathSecret"] = [totp_to_raw(obj.totp_secret)]
            attrs["oathTOTPLastTimeStep"] = fmt_int(obj.totp_last_step)
    elif isinstance(obj, Alias):
        attrs = {
            "objectClass": [b"pfmAlias"],
            "mail": _b(obj.address),
            "pfmAliasTarget": [t.encode("utf-8") for t in obj.targets],
            "pfmActive": fmt_bool(obj.active),
            "pfmCreated": fmt_time(obj.created),
            "pfmModified": fmt_time(obj.modified),
        }
    elif isinstance(obj, AliasDomain):
        attrs = {
            "objectClass": [b"pfmAliasDomain"],
            "pfmDomainName": _b(obj.name),
            "pfmTargetDomain": _b(obj.target),
            "pfmActive": fmt_bool(obj.active),
            "pfmCreated": fmt_time(obj.created),
            "pfmModified": fmt_time(obj.modified),
        }
    elif isinstance(obj, AppPassword):
        attrs = {
            "objectClass": [b"pfmAppPassword"],
            "pfmAppPasswordId": _b(obj.id),
            "description": _b(obj.name) if obj.name else [],
            "pfmAppPasswordHash": _b(obj.password_hash) if obj.password_hash else [],
            "pfmScope": [s.encode("utf-8") for s in obj.scopes],
            "pfmExpires": fmt_time(obj.expires),
            "pfmCreated": fmt_time(obj.created),
            "pfmLastUsed": fmt_time(obj.last_used),
            "pfmLastIP": _b(obj.last_ip) if obj.last_ip else [],
        }
    else:
        attrs = {
            "objectClass": [b"pfmAdmin"],
            "cn": _b(obj.name),
            "pfmRole": _b(obj.role),
            "pfmAdminDomain": [d.encode("utf-8") for d in obj.domains],
            "pfmActive": fmt_bool(obj.active),
            "pfmCreated": fmt_time(obj.created),
            "pfmModified": fmt_time(obj.modified),
        }
    return dn, {k: v for k, v in attrs.items() if v}


def audit_to_entry(entry: AuditEntry, id: int, dit: Dit) -> tuple[str, Attrs]:
    """``(dn, attributes)`` of an audit entry numbered ``id``."""
    attrs: Attrs = {
        "objectClass": [b"pfmAuditEntry"],
        "pfmAuditId": fmt_int(id),
        "pfmTimestamp": fmt_time(entry.ts),
        "pfmTimeSec": fmt_int(int(entry.ts)),
        "pfmActor": _b(entry.actor) if entry.actor else [],
        "pfmAction": _b(entry.action) if entry.action else [],
        "pfmObject": _b(entry.object) if entry.object else [],
        "pfmBefore": _b(_json(entry.before)) if entry.before is not None else [],
        "pfmAfter": _b(_json(entry.after)) if entry.after is not None else [],
    }
    return dit.audit_dn(id), {k: v for k, v in attrs.items() if v}


def _json(data: Mapping[str, Any]) -> str:
    return json.dumps(dict(data), separators=(",", ":"), sort_keys=True, default=str)


# --------------------------------------------------------------------------- entries -> objects


def domain_from(attrs: RawAttrs) -> Domain:
    return Domain(
        name=get_str(attrs, "pfmDomainName"),
        active=get_bool(attrs, "pfmActive"),
        description=get_str(attrs, "description"),
        max_mailboxes=get_int(attrs, "pfmMaxMailboxes"),
        max_aliases=get_int(attrs, "pfmMaxAliases"),
        default_quota=get_int(attrs, "pfmDefaultQuota"),
        limits=get_limits(attrs),
        created=get_float(attrs, "pfmCreated"),
        modified=get_float(attrs, "pfmModified"),
    )


def mailbox_from(attrs: RawAttrs) -> Mailbox:
    pw = _first(attrs, "userPassword")
    secret = _first(attrs, "oathSecret")
    return Mailbox(
        address=get_str(attrs, "mail").lower(),
        password_hash=password_from_ldap(pw) if pw else "",
        name=get_str(attrs, "displayName"),
        quota=get_int(attrs, "pfmQuota"),
        active=get_bool(attrs, "pfmActive"),
        limits=get_limits(attrs),
        totp_secret=totp_from_raw(secret) if secret else "",
        totp_last_step=get_int(attrs, "oathTOTPLastTimeStep"),
        password_changed=get_float(attrs, "pfmPasswordChanged"),
        created=get_float(attrs, "pfmCreated"),
        modified=get_float(attrs, "pfmModified"),
    )


def alias_from(attrs: RawAttrs) -> Alias:
    return Alias(
        address=get_str(attrs, "mail").lower(),
        targets=get_strs(attrs, "pfmAliasTarget"),
        active=get_bool(attrs, "pfmActive"),
        created=get_float(attrs, "pfmCreated"),
        modified=get_float(attrs, "pfmModified"),
    )


def alias_domain_from(attrs: RawAttrs) -> AliasDomain:
    return AliasDomain(
        name=get_str(attrs, "pfmDomainName"),
        target=get_str(attrs, "pfmTargetDomain"),
        active=get_bool(attrs, "pfmActive"),
        created=get_float(attrs, "pfmCreated"),
        modified=get_float(attrs, "pfmModified"),
    )


def app_password_from(attrs: RawAttrs, address: str) -> AppPassword:
    return AppPassword(
        id=get_str(attrs, "pfmAppPasswordId"),
        address=address,
        name=get_str(attrs, "description"),
        password_hash=get_str(attrs, "pfmAppPasswordHash"),
        scopes=get_strs(attrs, "pfmScope"),
        expires=get_float(attrs, "pfmExpires"),
        created=get_float(attrs, "pfmCreated"),
        last_used=get_float(attrs, "pfmLastUsed"),
        last_ip=get_str(attrs, "pfmLastIP"),
    )


def admin_from(attrs: RawAttrs) -> Admin:
    role = get_str(attrs, "pfmRole", "domain")
    return Admin(
        name=get_str(attrs, "cn"),
        role="global" if role == "global" else "domain",
        domains=get_strs(attrs, "pfmAdminDomain"),
        active=get_bool(attrs, "pfmActive"),
        created=get_float(attrs, "pfmCreated"),
        modified=get_float(attrs, "pfmModified"),
    )


def audit_from(attrs: RawAttrs) -> AuditEntry:
    def load(name: str) -> dict[str, Any] | None:
        raw = _first(attrs, name)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    return AuditEntry(
        ts=get_float(attrs, "pfmTimestamp"),
        actor=get_str(attrs, "pfmActor"),
        action=get_str(attrs, "pfmAction"),
        object=get_str(attrs, "pfmObject"),
        before=load("pfmBefore"),
        after=load("pfmAfter"),
        id=get_int(attrs, "pfmAuditId"),
    )


def unescape_rdn(value: str) -> str:
    """Undo RFC 4514 escaping of one RDN value (``\\,`` and ``\\2c`` forms)."""
    out = bytearray()
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            pair = value[i + 1 : i + 3]
            if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
                out.append(int(pair, 16))
                i += 3
                continue
            out.extend(value[i + 1].encode("utf-8"))
            i += 2
            continue
        out.extend(ch.encode("utf-8"))
        i += 1
    return out.decode("utf-8", "replace")


def address_of_app_password_dn(dn: str) -> str:
    """The mailbox address in ``pfmAppPasswordId=...,mail=ADDR,ou=mailboxes,BASE``."""
    for attr, value, _sep in parse_dn(dn, escape=False, strip=True):
        if attr.lower() == "mail":
            return unescape_rdn(str(value)).lower()
    raise ValueError("not an app password DN")
