"""Second factors and app passwords: TOTP enrolment and scoped app passwords (operations layer).

Like :class:`~services.directory.ops.Directory`, every change here validates its input,
builds its changes plus one audit entry and hands them to the backend in one
:meth:`~services.directory.backend.Backend.write`; ``dry_run`` returns the same result without
writing. No secret ever reaches an audit entry, a ``repr`` or an error message: audit entries
carry :func:`~services.directory.model.public` views (no TOTP secret, no hash).

* **TOTP** (RFC 6238, SHA-1, 6 digits, 30 s, the parameters every authenticator app supports):
  a 160-bit random key (RFC 4226 §4 recommends 160 bits), stored as upper-case base32 without
  padding — the canonical form the LDAP backend maps to ``oathSecret`` bytes. The secret and
  its ``otpauth://`` URI are returned only by :meth:`Credentials.enroll_totp`.
* **App passwords**: :func:`~services.directory.passwords.generate_secret` (80 bits), shown
  once, stored as ``{SSHA512}`` (see :data:`APP_PASSWORD_SCHEME` for why a fast hash),
  scoped to services, optionally expiring. :meth:`Credentials.verify_app_password` is what
  pfm-authd calls on a login; :meth:`Credentials.record_app_password_use` records the use
  without an audit entry (it is not an admin change, and logins would flood the log).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import ipaddress
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from . import passwords
from .model import (
    SCOPES,
    AppPassword,
    AuditEntry,
    Change,
    Conflict,
    Create,
    Delete,
    DirectoryObject,
    InvalidInput,
    Mailbox,
    NotFound,
    Replace,
    normalize_address,
    public,
)
from .ops import Directory, Result

DEFAULT_ISSUER = "Postfix Manager"
TOTP_SECRET_BYTES = 20  # 160 bits: 32 base32 characters, no padding needed
TOTP_DIGITS = 6
TOTP_PERIOD = 30
TOTP_ALGORITHM = "SHA1"
ISSUER_MAX = 64

MAX_APP_PASSWORDS = 20
"""Per mailbox: a login tries each of them, and nobody needs more devices than this."""
APP_PASSWORD_NAME_MAX = 64
APP_PASSWORD_SCHEME = "SSHA512"  # noqa: S105 - a scheme name
"""How app passwords are stored: ``{SSHA512}`` = base64(SHA-512(secret + salt) + salt).

A slow hash (Argon2, bcrypt, many SHA-crypt rounds) protects *guessable* human passwords
when the hashes are stolen. App passwords are 80-bit random secrets: brute-forcing one
SHA-512 preimage of that size is out of reach at any hash speed, so a slow hash buys no
security. It would cost a lot, though: a login must try every app password of the mailbox
(the client sends only the secret, not its id), on every IMAP/SMTP connection, and our pure
SHA512-CRYPT (5000 rounds) holds the GIL ~3 ms each (up to 60 ms for 20). The 16-byte salt
stops precomputation and makes equal secrets hash differently; Dovecot reads the format.
"""
SALT_BYTES = 16
ID_PREFIX = "ap-"

SERVICE_SCOPES: dict[str, str] = {
    "imap": "imap",
    "pop3": "pop3",
    "smtp": "smtp",
    "submission": "smtp",
    "sieve": "sieve",
    "managesieve": "sieve",
}
"""Service names (``pfm`` options, Dovecot's ``%{service}``) -> the scope they need."""


# --------------------------------------------------------------------------- pure helpers


def new_totp_secret() -> str:
    """A fresh random 160-bit TOTP key as upper-case base32 without padding."""
    return base64.b32encode(secrets.token_bytes(TOTP_SECRET_BYTES)).decode("ascii").rstrip("=")


def validate_issuer(issuer: str) -> str:
    """The issuer shown by authenticator apps: 1-64 printable characters, no colon."""
    if not isinstance(issuer, str):
        raise InvalidInput("issuer", "must be a string")
    text = issuer.strip()
    if not text:
        raise InvalidInput("issuer", "is empty")
    if len(text) > ISSUER_MAX:
        raise InvalidInput("issuer", f"is longer than {ISSUER_MAX} characters")
    if ":" in text:
        raise InvalidInput("issuer", "may not contain ':' (it separates issuer and account)")
    if not text.isprintable():
        raise InvalidInput("issuer", "may not contain control characters")
    return text


def otpauth_uri(secret: str, account: str, issuer: str = DEFAULT_ISSUER) -> str:
    """The ``otpauth://totp/ISSUER:ACCOUNT?...`` URI authenticator apps scan (Key URI Format).

    Label and parameters are percent-encoded (spaces as ``%20``: several apps show a ``+``
    literally). The account is the stored address, so an IDN domain appears as its
    A-label (``bob@xn--bcher-kva.example``): plain ASCII every app shows the same way.
    """
    iss = validate_issuer(issuer)
    label = f"{quote(iss, safe='')}:{quote(account, safe='@')}"
    query = "&".join(
        (
            f"secret={secret}",
            f"issuer={quote(iss, safe='')}",
            f"algorithm={TOTP_ALGORITHM}",
            f"digits={TOTP_DIGITS}",
            f"period={TOTP_PERIOD}",
        )
    )
    return f"otpauth://totp/{label}?{query}"


def normalize_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Known scopes in canonical order (``submission`` means ``smtp``); at least one."""
    if isinstance(scopes, str):
        scopes = scopes.replace(",", " ").split()
    wanted: set[str] = set()
    for s in scopes:
        name = s.strip().lower() if isinstance(s, str) else ""
        scope = SERVICE_SCOPES.get(name)
        if scope is None:
            raise InvalidInput(
                "scope", f"{s!r} is not a scope; use {', '.join(SCOPES)} (submission = smtp)"
            )
        wanted.add(scope)
    if not wanted:
        raise InvalidInput("scope", "give at least one scope")
    return tuple(s for s in SCOPES if s in wanted)


def validate_app_password_name(name: str) -> str:
    """A label like ``Thunderbird on laptop``: 1-64 printable characters."""
    if not isinstance(name, str):
        raise InvalidInput("name", "must be a string")
    text = name.strip()
    if not text:
        raise InvalidInput("name", "is empty (say which device or program uses it)")
    if len(text) > APP_PASSWORD_NAME_MAX:
        raise InvalidInput("name", f"is longer than {APP_PASSWORD_NAME_MAX} characters")
    if not text.isprintable():
        raise InvalidInput("name", "may not contain control characters")
    return text


def hash_app_password(secret: str) -> str:
    """``{SSHA512}`` of an app password (see :data:`APP_PASSWORD_SCHEME`)."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.sha512(secret.encode("utf-8") + salt).digest()
    return "{SSHA512}" + base64.b64encode(digest + salt).decode("ascii")


def canonical_app_password(typed: str) -> str:
    """What a user typed, back in ``xxxx-xxxx-xxxx-xxxx`` form (case, spaces, dashes ignored).

    Something that can't be one of ours is returned unchanged (it then matches nothing).
    """
    compact = "".join(c for c in typed.strip().lower() if c not in " -")
    if len(compact) % 4 or not 8 <= len(compact) <= 64:
        return typed
    if any(c not in passwords.SYMBOLS for c in compact):
        return typed
    return "-".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def _matches(secret: str, stored: str) -> bool:
    """Whether ``secret`` matches a stored hash; a malformed stored hash matches nothing."""
    try:
        return passwords.verify_password(secret, stored, "SHA512-CRYPT").ok
    except InvalidInput:
        return False


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class TotpStatus:
    """Whether a mailbox uses TOTP (never the secret)."""

    address: str
    enrolled: bool
    last_step: int  # the last time step used for a login, 0 = none yet

    def as_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "enrolled": self.enrolled,
            "last_step": self.last_step,
            "last_used": float(self.last_step * TOTP_PERIOD) if self.last_step else 0.0,
        }


@dataclass(frozen=True, slots=True)
class TotpEnrolment:
    """What :meth:`Credentials.enroll_totp` returns; the secret stays out of ``repr``."""

    result: Result
    secret: str = dataclasses.field(repr=False)  # "" on a dry run
    uri: str = dataclasses.field(repr=False)  # "" on a dry run

    def __iter__(self) -> Iterator[Any]:
        return iter((self.result, self.secret, self.uri))


@dataclass(frozen=True, slots=True)
class NewAppPassword:
    """What :meth:`Credentials.add_app_password` returns; the secret stays out of ``repr``."""

    result: Result
    app_password: AppPassword
    secret: str = dataclasses.field(repr=False)  # shown once; "" on a dry run

    def __iter__(self) -> Iterator[Any]:
        return iter((self.result, self.secret))


def app_password_data(ap: AppPassword) -> dict[str, Any]:
    """An app password for listings and JSON: id, name, scopes, times, last IP; no hash."""
    data = public(ap)
    data.pop("password_hash", None)  # public() drops it already; be explicit
    return data


# --------------------------------------------------------------------------- operations


class Credentials:
    """TOTP and app password operations over a :class:`Directory` (its backend, actor, clock)."""

    def __init__(
        self,
        directory: Directory,
        *,
        clock: Callable[[], float] | None = None,
        max_app_passwords: int = MAX_APP_PASSWORDS,
    ) -> None:
        self.directory = directory
        self.backend = directory.backend
        self.clock = clock or directory.clock
        self.max_app_passwords = max_app_passwords

    # ------------------------------------------------------------------ plumbing

    def _commit(
        self,
        action: str,
        obj_key: str,
        changes: Sequence[Change],
        before: DirectoryObject | Mapping[str, Any] | None,
        after: DirectoryObject | None,
        dry_run: bool,
        message: str = "",
    ) -> Result:
        audit: tuple[AuditEntry, ...] = ()
        if changes:
            if before is not None and not isinstance(before, Mapping):
                before = public(before)
            audit = (
                AuditEntry(
                    ts=self.clock(),
                    actor=self.directory.actor,
                    action=action,
                    object=obj_key,
                    before=before,
                    after=public(after) if after is not None else None,
                ),
            )
            if not dry_run:
                self.backend.write(list(changes), list(audit))
        return Result(
            action=action,
            object=obj_key,
            changes=tuple(changes),
            audit=audit,
            applied=bool(changes) and not dry_run,
            dry_run=dry_run,
            message=message,
            after=public(after) if after is not None else None,
        )

    def _mailbox(self, address: str) -> Mailbox:
        return self.directory.get_mailbox(address)

    # ------------------------------------------------------------------ TOTP

    def enroll_totp(
        self,
        address: str,
        *,
        issuer: str = DEFAULT_ISSUER,
        force: bool = False,
        dry_run: bool = False,
    ) -> TotpEnrolment:
        """Give a mailbox a new TOTP secret; unpacks as ``(result, secret, otpauth_uri)``.

        Refused (Conflict) when it has one already, unless ``force`` (a new secret: the old
        authenticator entry stops working). The replay guard step is reset to 0. On a dry
        run secret and URI are "" (a code that was never stored must not be scanned).
        """
        iss = validate_issuer(issuer)
        old = self._mailbox(address)
        if old.totp_secret and not force:
            raise Conflict(
                f"{old.address} uses TOTP already; --force replaces the secret (the old "
                "authenticator entry stops working), or disable it first"
            )
        secret = new_totp_secret()
        new = dataclasses.replace(old, totp_secret=secret, totp_last_step=0, modified=self.clock())
        msg = "replaced the previous TOTP secret" if old.totp_secret else ""
        result = self._commit("totp.enroll", old.address, [Replace(new)], old, new, dry_run, msg)
        if dry_run:
            return TotpEnrolment(result, "", "")
        return TotpEnrolment(result, secret, otpauth_uri(secret, old.address, iss))

    def disable_totp(self, address: str, *, dry_run: bool = False) -> Result:
        """Remove a mailbox's TOTP secret (unchanged when it has none)."""
        old = self._mailbox(address)
        if not old.totp_secret:
            return self._commit(
                "totp.disable", old.address, [], old, old, dry_run, "TOTP was not enrolled"
            )
        new = dataclasses.replace(old, totp_secret="", totp_last_step=0, modified=self.clock())
        return self._commit("totp.disable", old.address, [Replace(new)], old, new, dry_run)

    def totp_status(self, address: str) -> TotpStatus:
        """Whether the mailbox is enrolled, and its last used time step."""
        mb = self._mailbox(address)
        return TotpStatus(mb.address, bool(mb.totp_secret), mb.totp_last_step)

    # ------------------------------------------------------------------ app passwords

    def _new_id(self) -> str:
        for _ in range(16):
            candidate = ID_PREFIX + secrets.token_hex(4)
            if self.backend.get_app_password(candidate) is None:
                return candidate
        raise Conflict("could not pick a free app password id; try again")  # pragma: no cover

    def add_app_password(
        self,
        address: str,
        *,
        name: str,
        scopes: Iterable[str] = SCOPES,
        expires: float = 0.0,
        dry_run: bool = False,
    ) -> NewAppPassword:
        """Create an app password; unpacks as ``(result, secret)``, the secret shown once.

        ``expires`` is a Unix time (0 = never) that must lie in the future. At most
        :attr:`max_app_passwords` per mailbox, names unique within a mailbox.
        """
        label = validate_app_password_name(name)
        wanted = normalize_scopes(scopes)
        now = self.clock()
        if not isinstance(expires, int | float) or expires != expires or expires < 0:
            raise InvalidInput("expires", "must be a Unix time, or 0 for never")
        if expires and expires <= now:
            raise InvalidInput("expires", "lies in the past")
        mb = self._mailbox(address)
        existing = self.backend.list_app_passwords(mb.address)
        if len(existing) >= self.max_app_passwords:
            raise Conflict(
                f"{mb.address} has {len(existing)} app passwords, the most allowed; revoke one "
                "first (pfm app-password list / revoke)"
            )
        for ap in existing:
            if ap.name.casefold() == label.casefold():
                raise Conflict(
                    f"{mb.address} has an app password named {label!r} already ({ap.id}); "
                    "revoke it or pick another name"
                )
        secret = passwords.generate_secret()
        ap = AppPassword(
            id=self._new_id(),
            address=mb.address,
            name=label,
            password_hash=hash_app_password(secret),
            scopes=wanted,
            expires=float(expires),
            created=now,
        )
        result = self._commit("app_password.add", ap.id, [Create(ap)], None, ap, dry_run)
        return NewAppPassword(result, ap, "" if dry_run else secret)

    def list_app_passwords(self, address: str) -> list[AppPassword]:
        """A mailbox's app passwords, sorted by id (NotFound for an unknown mailbox)."""
        mb = self._mailbox(address)
        return self.backend.list_app_passwords(mb.address)

    def revoke_app_password(
        self,
        address: str,
        id: str | None = None,
        *,
        all: bool = False,
        dry_run: bool = False,
    ) -> Result:
        """Revoke one app password of a mailbox by id, or all of them (``all``)."""
        if (id is None) == (not all):
            raise InvalidInput("id", "give an app password id, or all")
        mb = self._mailbox(address)
        if all:
            aps = self.backend.list_app_passwords(mb.address)
            changes: list[Change] = [Delete("app_password", ap.id) for ap in aps]
            msg = f"revoked {len(aps)} app password(s)" if aps else "no app passwords"
            if dry_run and aps:
                msg = f"would revoke {len(aps)} app password(s)"
            before = {"app_passwords": [app_password_data(ap) for ap in aps]}
            return self._commit(
                "app_password.revoke", mb.address, changes, before, None, dry_run, msg
            )
        key = (id or "").strip().lower()
        found = self.backend.get_app_password(key) if key else None
        if found is None or found.address != mb.address:
            raise NotFound(f"{mb.address} has no app password {key or '(empty id)'}")
        return self._commit(
            "app_password.revoke",
            found.id,
            [Delete("app_password", found.id)],
            found,
            None,
            dry_run,
        )

    def verify_app_password(self, address: str, secret: str, service: str) -> AppPassword | None:
        """The app password of ``address`` that ``secret`` opens for ``service``, else None.

        None too for an unknown service, an unknown or disabled mailbox, an expired or
        out-of-scope app password. Every stored hash is checked, with no early exit, so the
        time taken does not tell which one matched. CPU-bound: call from a thread pool.
        """
        scope = SERVICE_SCOPES.get(service.strip().lower()) if isinstance(service, str) else None
        if scope is None or not isinstance(secret, str) or not secret:
            return None
        try:
            addr = normalize_address(address)
        except InvalidInput:
            return None
        mb = self.backend.get_mailbox(addr)
        if mb is None or not mb.active:
            return None
        typed = canonical_app_password(secret)
        match: AppPassword | None = None
        for ap in self.backend.list_app_passwords(mb.address):
            if _matches(typed, ap.password_hash) and match is None:
                match = ap
        if match is None or scope not in match.scopes:
            return None
        if match.expires and match.expires <= self.clock():
            return None
        return match

    def record_app_password_use(self, id: str, ts: float, ip: str = "") -> bool:
        """Store the last use (time, client IP) of an app password, without an audit entry.

        False when the app password is gone (revoked meanwhile).
        """
        addr_ip = ""
        if ip:
            try:
                addr_ip = str(ipaddress.ip_address(ip.strip()))
            except ValueError:
                raise InvalidInput("ip", "is not an IP address") from None
        ap = self.backend.get_app_password(id)
        if ap is None:
            return False
        new = dataclasses.replace(ap, last_used=float(ts), last_ip=addr_ip)
        try:
            self.backend.write([Replace(new)], [])
        except NotFound:
            return False
        return True
