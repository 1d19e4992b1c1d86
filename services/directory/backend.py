"""The interface every directory backend implements (sqlite, ldap), and the opener.

Backends are synchronous and thread-safe for reads; callers on an event loop run them in a
thread pool. Reads return normalised objects; :meth:`Backend.write` applies a batch of
changes plus its audit entries all-or-nothing where the backend can (SQLite: one
transaction; LDAP: in order, undoing what it applied if a later change fails).
Errors are the :mod:`services.directory.model` ones; an unreachable or timed-out backend
raises :class:`~services.directory.model.Unavailable`, never NotFound.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from .model import (
    Admin,
    Alias,
    AliasDomain,
    AppPassword,
    AuditEntry,
    Change,
    Domain,
    Mailbox,
)

if TYPE_CHECKING:
    from services.config import DirectoryConfig


class Backend(Protocol):
    kind: str  # "sqlite" | "ldap"

    # reads (None when absent)
    def get_domain(self, name: str) -> Domain | None: ...
    def list_domains(self) -> list[Domain]: ...
    def get_mailbox(self, address: str) -> Mailbox | None: ...
    def list_mailboxes(self, domain: str | None = None) -> list[Mailbox]: ...
    def count_mailboxes(self, domain: str) -> int: ...
    def list_mailboxes_with_limits(self) -> list[Mailbox]: ...
    def get_alias(self, address: str) -> Alias | None: ...
    def list_aliases(self, domain: str | None = None) -> list[Alias]: ...
    def get_alias_domain(self, name: str) -> AliasDomain | None: ...
    def list_alias_domains(self) -> list[AliasDomain]: ...
    def get_app_password(self, id: str) -> AppPassword | None: ...
    def list_app_passwords(self, address: str) -> list[AppPassword]: ...
    def get_admin(self, name: str) -> Admin | None: ...
    def list_admins(self) -> list[Admin]: ...
    def audit_log(self, since: float = 0.0, limit: int = 0) -> list[AuditEntry]: ...

    # the one write path: changes and their audit entries together
    def write(self, changes: Sequence[Change], audit: Sequence[AuditEntry]) -> None: ...

    def close(self) -> None: ...


def open_backend(cfg: DirectoryConfig, *, create: bool = True) -> Backend:
    """The configured backend (imported lazily: the CLI must start fast).

    ``create=False`` (daemons that only read) refuses a SQLite file that does not exist
    instead of creating an empty directory.
    """
    if cfg.backend == "ldap":
        from .ldap import LdapBackend

        return LdapBackend(cfg.ldap)
    from .sqlite import SqliteBackend

    return SqliteBackend(
        cfg.path, create=create, maps_path=cfg.maps_path, maps_group=cfg.maps_group
    )
