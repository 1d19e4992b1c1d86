"""The directory's objects, their validation and address normalisation (pure, no I/O).

Normalisation rules (what every backend stores and every lookup uses):

* Domains: surrounding space and one trailing dot removed, lower-cased, IDN converted to the
  A-label (``bücher.example`` -> ``xn--bcher-kva.example``) with UTS #46 mapping, each label
  1-63 characters of letters, digits and inner hyphens, at least two labels, 253 at most.
* Local parts: ASCII dot-atom (RFC 5321), 64 characters at most, **lower-cased**. Postfix
  folds table lookup keys to lower case, so two mailboxes differing only in case could not
  be told apart by the MTA anyway; storing them lower-case keeps every lookup exact.
  Quoted local parts and non-ASCII (SMTPUTF8) local parts are refused with a clear error.
* An alias source may be a catch-all ``@domain``.

Objects are frozen dataclasses. Secrets (password hashes, TOTP secrets, app password hashes)
are excluded from ``repr`` and from :func:`public`, which is what JSON output and the audit
log use.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import idna

# --------------------------------------------------------------------------- errors


class DirectoryError(Exception):
    """Base of every directory error; the message is safe to show (never a secret)."""


class InvalidInput(DirectoryError):
    """A value that can't be stored; ``field`` names what was wrong."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}" if field_name else message)
        self.field = field_name


class NotFound(DirectoryError):
    """The object does not exist."""


class AlreadyExists(DirectoryError):
    """An object with that key exists already."""


class Conflict(DirectoryError):
    """The change contradicts the directory's state (e.g. a domain that still has mailboxes)."""


class Unavailable(DirectoryError):
    """The backend could not be reached or timed out: a temporary failure."""


# --------------------------------------------------------------------------- normalisation

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"^{_ATEXT}(?:\.{_ATEXT})*$")


def normalize_domain(value: str, field_name: str = "domain") -> str:
    """A domain's canonical form (lower-case A-label), or :class:`InvalidInput`."""
    if not isinstance(value, str):
        raise InvalidInput(field_name, "must be a string")
    name = value.strip()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise InvalidInput(field_name, "is empty")
    if len(name) > 1024:
        raise InvalidInput(field_name, "is too long")
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise InvalidInput(
                field_name, f"{value!r} is not a valid domain name ({exc})"
            ) from None
    name = name.lower()
    labels = name.split(".")
    if len(labels) < 2:
        raise InvalidInput(field_name, f"{value!r} needs at least two labels (example.org)")
    if len(name) > 253:
        raise InvalidInput(field_name, "is longer than 253 characters")
    for label in labels:
        if not _LABEL.match(label):
            raise InvalidInput(field_name, f"{value!r} is not a valid domain name")
    if labels[-1].isdigit():
        raise InvalidInput(field_name, f"{value!r} looks like an IP address, not a domain")
    if name.startswith("xn--") or ".xn--" in name:
        try:
            idna.decode(name)
        except (idna.IDNAError, UnicodeError) as exc:
            raise InvalidInput(field_name, f"{value!r} is not a valid IDN ({exc})") from None
    return name


def normalize_local_part(value: str, field_name: str = "address") -> str:
    """A local part's canonical form (lower-case ASCII dot-atom), or :class:`InvalidInput`."""
    if not value:
        raise InvalidInput(field_name, "the local part is empty")
    if not value.isascii():
        raise InvalidInput(field_name, "non-ASCII local parts (SMTPUTF8) are not supported")
    if len(value) > 64:
        raise InvalidInput(field_name, "the local part is longer than 64 characters")
    if not _DOT_ATOM.match(value):
        raise InvalidInput(field_name, f"{value!r} is not a valid local part")
    return value.lower()


def split_address(value: str, field_name: str = "address") -> tuple[str, str]:
    """``(local_part, domain)`` of a normalised address."""
    if not isinstance(value, str):
        raise InvalidInput(field_name, "must be a string")
    text = value.strip()
    local, at, domain = text.rpartition("@")
    if not at:
        raise InvalidInput(field_name, f"{value!r} is not an address (no @)")
    return normalize_local_part(local, field_name), normalize_domain(domain, field_name)


def normalize_address(value: str, field_name: str = "address") -> str:
    """An address's canonical form ``local@a-label-domain``."""
    local, domain = split_address(value, field_name)
    return f"{local}@{domain}"


def normalize_alias_source(value: str, field_name: str = "alias") -> str:
    """An alias source: an address, or ``@domain`` for a catch-all."""
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and text.startswith("@"):
        return "@" + normalize_domain(text[1:], field_name)
    return normalize_address(value, field_name)


def domain_of(address: str) -> str:
    """The domain part of a normalised address or ``@domain``."""
    return address.rpartition("@")[2]


def display_domain(name: str) -> str:
    """The U-label form of a stored domain, for humans (falls back to the A-label)."""
    if "xn--" not in name:
        return name
    try:
        return str(idna.decode(name))
    except (idna.IDNAError, UnicodeError):
        return name


# --------------------------------------------------------------------------- objects

LimitOverrides = Mapping[str, tuple[str, ...]]
"""pfm-policyd limit name -> windows (``("500/1d",)``); an empty tuple means unlimited."""

Scope = Literal["imap", "pop3", "smtp", "sieve"]
SCOPES: tuple[str, ...] = ("imap", "pop3", "smtp", "sieve")


def now() -> float:
    return time.time()


@dataclass(frozen=True, slots=True)
class Domain:
    name: str
    active: bool = True
    description: str = ""
    max_mailboxes: int = 0  # 0 = no cap
    max_aliases: int = 0  # 0 = no cap
    default_quota: int = 0  # bytes given to a new mailbox; 0 = unlimited
    limits: LimitOverrides = field(default_factory=dict)  # defaults for its mailboxes
    created: float = 0.0
    modified: float = 0.0


@dataclass(frozen=True, slots=True)
class Mailbox:
    address: str
    password_hash: str = field(default="", repr=False)  # "{SCHEME}..." as Dovecot reads it
    name: str = ""
    quota: int = 0  # bytes; 0 = unlimited
    active: bool = True
    limits: LimitOverrides = field(default_factory=dict)
    totp_secret: str = field(default="", repr=False)  # base32; "" = not enrolled
    totp_last_step: int = 0  # RFC 6238 5.2: the last time step used (replay guard)
    password_changed: float = 0.0
    created: float = 0.0
    modified: float = 0.0

    @property
    def local_part(self) -> str:
        return self.address.rpartition("@")[0]

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


@dataclass(frozen=True, slots=True)
class Alias:
    address: str  # normalised address, or "@domain" for a catch-all
    targets: tuple[str, ...] = ()
    active: bool = True
    created: float = 0.0
    modified: float = 0.0

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


@dataclass(frozen=True, slots=True)
class AliasDomain:
    name: str  # mail to user@name goes to user@target
    target: str = ""
    active: bool = True
    created: float = 0.0
    modified: float = 0.0


@dataclass(frozen=True, slots=True)
class AppPassword:
    id: str  # short random id shown to the user, e.g. "ap-3f9c2a"
    address: str
    name: str = ""  # "Thunderbird on laptop"
    password_hash: str = field(default="", repr=False)
    scopes: tuple[str, ...] = SCOPES
    expires: float = 0.0  # 0 = never
    created: float = 0.0
    last_used: float = 0.0
    last_ip: str = ""


@dataclass(frozen=True, slots=True)
class Admin:
    name: str  # login (unix user for the CLI, account for a future web console)
    role: Literal["global", "domain"] = "domain"
    domains: tuple[str, ...] = ()  # for role "domain"
    active: bool = True
    created: float = 0.0
    modified: float = 0.0


@dataclass(frozen=True, slots=True)
class AuditEntry:
    ts: float
    actor: str  # "root (sudo: alice)", "alice"
    action: str  # "mailbox.add", "domain.remove", "mailbox.passwd", ...
    object: str  # the key of the object changed
    before: Mapping[str, Any] | None = None  # public() of the old object, never secrets
    after: Mapping[str, Any] | None = None
    id: int = 0  # assigned by the backend


DirectoryObject = Domain | Mailbox | Alias | AliasDomain | AppPassword | Admin
Kind = Literal["domain", "mailbox", "alias", "alias_domain", "app_password", "admin"]

KIND_OF: dict[type, Kind] = {
    Domain: "domain",
    Mailbox: "mailbox",
    Alias: "alias",
    AliasDomain: "alias_domain",
    AppPassword: "app_password",
    Admin: "admin",
}

SECRET_FIELDS = frozenset({"password_hash", "totp_secret"})


def key_of(obj: DirectoryObject) -> str:
    """The unique key of an object within its kind."""
    if isinstance(obj, Domain | AliasDomain | Admin):
        return obj.name
    if isinstance(obj, AppPassword):
        return obj.id
    return obj.address


def public(obj: DirectoryObject) -> dict[str, Any]:
    """The object as JSON-able data without secrets (``totp_enrolled`` instead of the secret)."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        if f.name in SECRET_FIELDS:
            continue
        v = getattr(obj, f.name)
        if isinstance(v, Mapping):
            v = {k: list(w) for k, w in v.items()}
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    if isinstance(obj, Mailbox):
        out["totp_enrolled"] = bool(obj.totp_secret)
        out["password_scheme"] = scheme_of(obj.password_hash)
    return out


def scheme_of(password_hash: str) -> str:
    """``ARGON2ID`` of ``{ARGON2ID}$argon2id$...``; "" when no scheme prefix."""
    if password_hash.startswith("{"):
        end = password_hash.find("}")
        if end > 1:
            return password_hash[1:end].upper()
    return ""


# --------------------------------------------------------------------------- changes


@dataclass(frozen=True, slots=True)
class Create:
    """Add an object; the backend raises :class:`AlreadyExists` if its key is taken."""

    obj: DirectoryObject


@dataclass(frozen=True, slots=True)
class Replace:
    """Overwrite an existing object (same kind and key); :class:`NotFound` if it is gone."""

    obj: DirectoryObject


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove an object by kind and key; :class:`NotFound` if it is gone."""

    kind: Kind
    key: str


Change = Create | Replace | Delete
