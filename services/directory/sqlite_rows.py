"""Mapping between directory objects and rows of the SQLite schema (pure, stdlib + model).

One :class:`TableSpec` per kind names its table, key column and columns, and converts an
object to a row tuple (in column order) and back. Kinds with a list attribute (alias
targets, admin domains) have a child table with one row per element and a ``position``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
)

Row = tuple[Any, ...]

KIND_LABEL: dict[str, str] = {
    "domain": "domain",
    "mailbox": "mailbox",
    "alias": "alias",
    "alias_domain": "alias domain",
    "app_password": "app password",
    "admin": "admin",
}


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """A child table holding one row per element of a tuple attribute."""

    table: str
    parent: str  # column referring to the parent key
    value: str  # column holding the element
    values_of: Callable[[Any], tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class TableSpec:
    kind: Kind
    table: str
    key: str
    columns: tuple[str, ...]  # key first
    to_row: Callable[[Any], Row]
    from_row: Callable[[Row, tuple[str, ...]], DirectoryObject]
    child: ChildSpec | None = None
    parent_label: str = ""  # what a failing foreign key on create/replace refers to

    @property
    def select(self) -> str:
        return f"SELECT {', '.join(self.columns)} FROM {self.table}"  # noqa: S608 - constants

    @property
    def insert(self) -> str:
        marks = ", ".join("?" * len(self.columns))
        return f"INSERT INTO {self.table} ({', '.join(self.columns)}) VALUES ({marks})"  # noqa: S608

    @property
    def update(self) -> str:
        sets = ", ".join(f"{c} = ?" for c in self.columns[1:])
        return f"UPDATE {self.table} SET {sets} WHERE {self.key} = ?"  # noqa: S608

    @property
    def delete(self) -> str:
        return f"DELETE FROM {self.table} WHERE {self.key} = ?"  # noqa: S608

    def update_row(self, obj: Any) -> Row:
        row = self.to_row(obj)
        return (*row[1:], row[0])

    def child_rows(self, obj: Any) -> list[Row]:
        if self.child is None:
            return []
        key = self.to_row(obj)[0]
        return [(key, i, v) for i, v in enumerate(self.child.values_of(obj))]


# --------------------------------------------------------------------------- JSON columns

_EMPTY_LIMITS = "{}"


def dump_limits(limits: LimitOverrides, field_name: str = "limits") -> str:
    """The JSON text of a limits mapping (name -> list of windows)."""
    if not limits:
        return _EMPTY_LIMITS
    if not isinstance(limits, Mapping):
        raise InvalidInput(field_name, "must map limit names to lists of windows")
    out: dict[str, list[str]] = {}
    for name, windows in limits.items():
        if not isinstance(name, str) or isinstance(windows, str):
            raise InvalidInput(field_name, f"{name!r} must map a name to a list of windows")
        out[name] = list(_strs(windows, field_name))
    return json.dumps(out, separators=(",", ":"), sort_keys=True)


def load_limits(text: str) -> dict[str, tuple[str, ...]]:
    if text == _EMPTY_LIMITS or not text:
        return {}
    data = json.loads(text)
    return {str(k): tuple(str(w) for w in v) for k, v in data.items()}


def dump_json(value: Mapping[str, Any] | None) -> str | None:
    if value is None:
        return None
    return json.dumps(dict(value), separators=(",", ":"), ensure_ascii=False, default=str)


def load_json(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    data = json.loads(text)
    return data if isinstance(data, dict) else {"value": data}


# --------------------------------------------------------------------------- typed columns


def _int(value: Any, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise InvalidInput(field_name, f"must be an integer, not {type(value).__name__}")
    return value


def _float(value: Any, field_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(field_name, f"must be a number, not {type(value).__name__}")
    return float(value)


def _str(value: Any, field_name: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(field_name, f"must be a string, not {type(value).__name__}")
    return value


def _flag(value: Any, field_name: str = "active") -> int:
    if not isinstance(value, bool | int) or value not in (0, 1):
        raise InvalidInput(field_name, "must be true or false")
    return int(value)


def _strs(values: Any, field_name: str) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, tuple | list):
        raise InvalidInput(field_name, "must be a list of strings")
    return tuple(_str(v, field_name) for v in values)


# --------------------------------------------------------------------------- per kind


def _domain_row(d: Domain) -> Row:
    return (
        d.name,
        _flag(d.active),
        _str(d.description, "description"),
        _int(d.max_mailboxes, "max_mailboxes"),
        _int(d.max_aliases, "max_aliases"),
        _int(d.default_quota, "default_quota"),
        dump_limits(d.limits),
        _float(d.created, "created"),
        _float(d.modified, "modified"),
    )


def _domain(row: Row, _children: tuple[str, ...]) -> Domain:
    return Domain(
        name=row[0],
        active=bool(row[1]),
        description=row[2],
        max_mailboxes=row[3],
        max_aliases=row[4],
        default_quota=row[5],
        limits=load_limits(row[6]),
        created=row[7],
        modified=row[8],
    )


def _mailbox_row(m: Mailbox) -> Row:
    local, _, domain = m.address.rpartition("@")
    return (
        m.address,
        local,
        domain,
        _str(m.password_hash, "password_hash"),
        _str(m.name, "name"),
        _int(m.quota, "quota"),
        _flag(m.active),
        dump_limits(m.limits),
        _str(m.totp_secret, "totp_secret"),
        _int(m.totp_last_step, "totp_last_step"),
        _float(m.password_changed, "password_changed"),
        _float(m.created, "created"),
        _float(m.modified, "modified"),
    )


def _mailbox(row: Row, _children: tuple[str, ...]) -> Mailbox:
    return Mailbox(
        address=row[0],
        password_hash=row[3],
        name=row[4],
        quota=row[5],
        active=bool(row[6]),
        limits=load_limits(row[7]),
        totp_secret=row[8],
        totp_last_step=row[9],
        password_changed=row[10],
        created=row[11],
        modified=row[12],
    )


def _alias_row(a: Alias) -> Row:
    local, _, domain = a.address.rpartition("@")
    return (
        a.address,
        local,
        domain,
        _flag(a.active),
        _float(a.created, "created"),
        _float(a.modified, "modified"),
    )


def _alias(row: Row, children: tuple[str, ...]) -> Alias:
    return Alias(
        address=row[0], targets=children, active=bool(row[3]), created=row[4], modified=row[5]
    )


def _alias_domain_row(a: AliasDomain) -> Row:
    return (
        a.name,
        a.target,
        _flag(a.active),
        _float(a.created, "created"),
        _float(a.modified, "modified"),
    )


def _alias_domain(row: Row, _children: tuple[str, ...]) -> AliasDomain:
    return AliasDomain(
        name=row[0], target=row[1], active=bool(row[2]), created=row[3], modified=row[4]
    )


def _app_password_row(p: AppPassword) -> Row:
    return (
        p.id,
        p.address,
        _str(p.name, "name"),
        _str(p.password_hash, "password_hash"),
        json.dumps(list(_strs(p.scopes, "scopes")), separators=(",", ":")),
        _float(p.expires, "expires"),
        _float(p.created, "created"),
        _float(p.last_used, "last_used"),
        _str(p.last_ip, "last_ip"),
    )


def _app_password(row: Row, _children: tuple[str, ...]) -> AppPassword:
    return AppPassword(
        id=row[0],
        address=row[1],
        name=row[2],
        password_hash=row[3],
        scopes=tuple(json.loads(row[4])),
        expires=row[5],
        created=row[6],
        last_used=row[7],
        last_ip=row[8],
    )


def _admin_row(a: Admin) -> Row:
    return (
        a.name,
        a.role,
        _flag(a.active),
        _float(a.created, "created"),
        _float(a.modified, "modified"),
    )


def _admin(row: Row, children: tuple[str, ...]) -> Admin:
    return Admin(
        name=row[0],
        role=row[1],
        domains=children,
        active=bool(row[2]),
        created=row[3],
        modified=row[4],
    )


SPECS: dict[str, TableSpec] = {
    "domain": TableSpec(
        "domain",
        "domains",
        "name",
        (
            "name",
            "active",
            "description",
            "max_mailboxes",
            "max_aliases",
            "default_quota",
            "limits",
            "created",
            "modified",
        ),
        _domain_row,
        _domain,
    ),
    "mailbox": TableSpec(
        "mailbox",
        "mailboxes",
        "address",
        (
            "address",
            "local_part",
            "domain",
            "password_hash",
            "name",
            "quota",
            "active",
            "limits",
            "totp_secret",
            "totp_last_step",
            "password_changed",
            "created",
            "modified",
        ),
        _mailbox_row,
        _mailbox,
        parent_label="domain",
    ),
    "alias": TableSpec(
        "alias",
        "aliases",
        "address",
        ("address", "local_part", "domain", "active", "created", "modified"),
        _alias_row,
        _alias,
        child=ChildSpec("alias_targets", "alias", "target", lambda a: a.targets),
        parent_label="domain",
    ),
    "alias_domain": TableSpec(
        "alias_domain",
        "alias_domains",
        "name",
        ("name", "target", "active", "created", "modified"),
        _alias_domain_row,
        _alias_domain,
        parent_label="target domain",
    ),
    "app_password": TableSpec(
        "app_password",
        "app_passwords",
        "id",
        (
            "id",
            "address",
            "name",
            "password_hash",
            "scopes",
            "expires",
            "created",
            "last_used",
            "last_ip",
        ),
        _app_password_row,
        _app_password,
        parent_label="mailbox",
    ),
    "admin": TableSpec(
        "admin",
        "admins",
        "name",
        ("name", "role", "active", "created", "modified"),
        _admin_row,
        _admin,
        child=ChildSpec("admin_domains", "admin", "domain", lambda a: a.domains),
    ),
}


def parent_key(spec: TableSpec, row: Row) -> str:
    """The key of the object a row's foreign key points at (for error messages)."""
    return str(row[2] if spec.kind in ("mailbox", "alias") else row[1])


AUDIT_COLUMNS = ("id", "ts", "actor", "action", "object", "before", "after")


def audit_row(entry: AuditEntry) -> Row:
    return (
        _float(entry.ts, "ts"),
        _str(entry.actor, "actor"),
        _str(entry.action, "action"),
        _str(entry.object, "object"),
        dump_json(entry.before),
        dump_json(entry.after),
    )


def audit_entry(row: Sequence[Any]) -> AuditEntry:
    return AuditEntry(
        id=row[0],
        ts=row[1],
        actor=row[2],
        action=row[3],
        object=row[4],
        before=load_json(row[5]),
        after=load_json(row[6]),
    )
