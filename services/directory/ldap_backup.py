"""The pfm LDAP subtree read as entries and written back: the I/O of an LDAP ``pfm backup``.

What is read: every entry (user attributes, ``*``) of the pfm containers under the base DN,
``ou=domains``, ``ou=mailboxes`` (mailboxes and their app-password children), ``ou=aliases``,
``ou=aliasdomains``, ``ou=admins``, ``ou=audit`` and ``ou=oath``, the containers included,
parents before children. The base entry and service accounts (``cn=pfm``, ...) are the
admin's, not pfm's, and are left alone. All I/O goes through an
:class:`~services.directory.ldap.LdapBackend`'s connection pool (its bind, StartTLS, timeouts,
server failover and error mapping).

Restore (:func:`restore_entries`): pfm objects present in the target (everything but the
containers and ``cn=totp,ou=oath``) are deleted children first, then the backup's entries are
added parents first; a container that exists already gets the backup's attributes (e.g. the
audit counter). LDAP has no multi-entry transactions: if a step fails, what was done stays
done, and :class:`RestoreIncomplete` says exactly how far the restore got. Audit entries the
server's ACL makes append-only (insufficient access to delete them) are kept; a backup audit
entry whose id is taken by a different kept entry is appended under a fresh id, and
``pfmNextId`` is moved past every id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .ldap import MODIFY_REPLACE, SUBTREE, Conn, LdapBackend
from .ldap3_compat import parse_dn
from .ldif import Entry
from .model import DirectoryError

CONTAINERS = (
    "ou=domains",
    "ou=mailboxes",
    "ou=aliases",
    "ou=aliasdomains",
    "ou=admins",
    "ou=audit",
    "ou=oath",
)

# object class (lower case) -> manifest count key
COUNT_OF = {
    "pfmdomain": "domains",
    "pfmmailbox": "mailboxes",
    "pfmapppassword": "app_passwords",
    "pfmalias": "aliases",
    "pfmaliasdomain": "alias_domains",
    "pfmadmin": "admins",
    "pfmauditentry": "audit",
}
_INSUFFICIENT_ACCESS = 50


class RestoreIncomplete(DirectoryError):
    """A restore failed after it had started changing the directory (message says how far)."""


def norm_dn(dn: str) -> str:
    """A DN compared case-insensitively, spaces around ``=`` and ``,`` ignored."""
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except Exception:  # an unparsable DN compares as its lower-case text
        return dn.lower()
    return ",".join(f"{a.lower()}={str(v).lower()}" for a, v, _sep in parts)


def depth(dn: str) -> int:
    try:
        return len(parse_dn(dn, escape=False, strip=True))
    except Exception:
        return dn.count(",") + 1


def classes(attrs: Mapping[str, Sequence[bytes]]) -> set[str]:
    for name, values in attrs.items():
        if name.lower() == "objectclass":
            return {bytes(v).decode("utf-8", "replace").lower() for v in values}
    return set()


def is_object(attrs: Mapping[str, Sequence[bytes]]) -> bool:
    """A pfm object (not a container or the TOTP parameters entry)."""
    return bool(classes(attrs) & COUNT_OF.keys())


def counts(entries: Sequence[Entry]) -> dict[str, int]:
    """Entries per kind (``domains``, ``mailboxes``, ``app_passwords``, ...) and in all."""
    out = dict.fromkeys(COUNT_OF.values(), 0)
    for _dn, attrs in entries:
        for c in classes(attrs) & COUNT_OF.keys():
            out[COUNT_OF[c]] += 1
    out["entries"] = len(entries)
    return out


def in_subtree(dn: str, base_dn: str) -> bool:
    """Whether ``dn`` is one of the pfm containers under ``base_dn`` or below one."""
    n = norm_dn(dn)
    return any(n == (c := norm_dn(f"{ou},{base_dn}")) or n.endswith("," + c) for ou in CONTAINERS)


def _read(backend: LdapBackend, conn: Conn) -> list[Entry]:
    base = backend.config.base_dn
    out: list[Entry] = []
    for ou in CONTAINERS:
        found = backend._search(conn, f"{ou},{base}", "(objectClass=*)", SUBTREE, attrs=["*"])
        found.sort(key=lambda e: depth(e[0]))  # stable: parents first, server order kept
        out.extend((dn, {str(k): [bytes(v) for v in vs] for k, vs in a.items()}) for dn, a in found)
    return out


def read_subtree(backend: LdapBackend) -> list[Entry]:
    """Every entry of the pfm containers, parents before children."""
    return backend._call(lambda conn: _read(backend, conn))


def has_objects(backend: LdapBackend) -> bool:
    """Whether the target holds pfm objects other than audit entries."""
    return any(
        is_object(a) and "pfmauditentry" not in classes(a) for _dn, a in read_subtree(backend)
    )


@dataclass
class Progress:
    """How far a restore got."""

    existing: int = 0  # pfm objects found in the target
    deleted: int = 0
    kept_audit: int = 0  # append-only audit entries that could not be deleted
    total: int = 0  # entries in the backup
    added: int = 0
    updated: int = 0  # containers given the backup's attributes
    unchanged: int = 0  # containers (or kept audit entries) already equal
    renumbered: int = 0  # backup audit entries appended under a fresh id
    at: str = ""  # the step that failed

    def started(self) -> bool:
        return bool(self.deleted or self.added or self.updated)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "at"}

    def summary(self) -> str:
        return (
            f"deleted {self.deleted} of {self.existing} existing entries"
            + (f" ({self.kept_audit} append-only audit entries kept)" if self.kept_audit else "")
            + f", restored {self.added + self.updated + self.unchanged} of {self.total} "
            f"backup entries"
        )


def _same(a: Mapping[str, Sequence[bytes]], b: Mapping[str, Sequence[bytes]]) -> bool:
    def key(x: Mapping[str, Sequence[bytes]]) -> dict[str, list[bytes]]:
        return {k.lower(): sorted(bytes(v) for v in vs) for k, vs in x.items() if vs}

    return key(a) == key(b)


def _diff(old: Mapping[str, Sequence[bytes]], new: Mapping[str, Sequence[bytes]]) -> dict[str, Any]:
    olds = {k.lower(): sorted(bytes(v) for v in vs) for k, vs in old.items()}
    changes: dict[str, Any] = {}
    for name, values in new.items():
        if olds.pop(name.lower(), []) != sorted(bytes(v) for v in values):
            changes[name] = [(MODIFY_REPLACE, [bytes(v) for v in values])]
    for lname, values in olds.items():
        if values:
            changes[lname] = [(MODIFY_REPLACE, [])]
    return changes


def _audit_id(attrs: Mapping[str, Sequence[bytes]]) -> int:
    for name, values in attrs.items():
        if name.lower() == "pfmauditid" and values:
            try:
                return int(bytes(values[0]))
            except ValueError:
                return 0
    return 0


def _next_id(attrs: Mapping[str, Sequence[bytes]]) -> int:
    for name, values in attrs.items():
        if name.lower() == "pfmnextid" and values:
            try:
                return int(bytes(values[0]))
            except ValueError:
                return 0
    return 0


def _restore(
    backend: LdapBackend, conn: Conn, entries: Sequence[Entry], delete: bool, p: Progress
) -> None:
    base = backend.config.base_dn
    current = _read(backend, conn)
    present = {norm_dn(dn): attrs for dn, attrs in current}
    victims = [(dn, a) for dn, a in current if is_object(a)]
    p.existing = len(victims)
    kept: dict[str, Mapping[str, Sequence[bytes]]] = {}
    for dn, attrs in sorted(victims, key=lambda e: -depth(e[0])):  # children first
        audit = "pfmauditentry" in classes(attrs)
        if not delete:
            if not audit:  # the caller checked: only audit entries may be there
                raise DirectoryError(f"{dn} exists in the target")
            kept[norm_dn(dn)] = attrs
            p.kept_audit += 1
            continue
        p.at = f"deleting {dn}"
        conn.delete(dn)
        if audit and (conn.result or {}).get("result") == _INSUFFICIENT_ACCESS:
            kept[norm_dn(dn)] = attrs
            p.kept_audit += 1
            continue
        backend._check(conn, dn)
        p.deleted += 1
        del present[norm_dn(dn)]
    ids = [_audit_id(a) for a in kept.values()] + [_audit_id(a) for _dn, a in entries]
    fresh = max(ids, default=0) + 1
    p.total = len(entries)
    for dn, attrs in entries:  # parents first (the order of the backup)
        key = norm_dn(dn)
        if key in kept:
            if _same(kept[key], attrs):
                p.unchanged += 1
                continue
            attrs = dict(attrs)
            for name in list(attrs):
                if name.lower() == "pfmauditid":
                    del attrs[name]
            attrs["pfmAuditId"] = [str(fresh).encode()]
            dn = f"pfmAuditId={fresh},ou=audit,{base}"
            fresh += 1
            p.renumbered += 1
        old = present.get(norm_dn(dn))
        if old is not None:
            changes = _diff(old, attrs)
            if not changes:
                p.unchanged += 1
                continue
            p.at = f"updating {dn}"
            conn.modify(dn, changes)
            backend._check(conn, dn)
            p.updated += 1
            continue
        p.at = f"adding {dn}"
        conn.add(dn, attributes={k: [bytes(v) for v in vs] for k, vs in attrs.items()})
        backend._check(conn, dn)
        p.added += 1
    audit_dn = f"ou=audit,{base}"
    if kept:
        restored = next((a for d, a in entries if norm_dn(d) == norm_dn(audit_dn)), None)
        want = max(fresh, _next_id(restored) if restored is not None else 0)
        p.at = f"updating the audit counter on {audit_dn}"
        conn.modify(audit_dn, {"pfmNextId": [(MODIFY_REPLACE, [str(want).encode()])]})
        backend._check(conn, audit_dn)
    p.at = ""


def restore_entries(
    backend: LdapBackend, entries: Sequence[Entry], *, delete: bool, progress: Progress
) -> None:
    """Replace the target's pfm objects with ``entries`` (see the module docstring)."""
    try:
        backend._call(
            lambda conn: _restore(backend, conn, entries, delete, progress),
            may_retry=lambda: not progress.started(),
        )
    except DirectoryError as exc:
        where = f" while {progress.at}" if progress.at else ""
        raise RestoreIncomplete(
            f"restore stopped{where}: {exc}. So far it {progress.summary()}. LDAP has no "
            "transactions, so the directory is now partly restored: fix the cause and run "
            "pfm restore --force again"
        ) from None
