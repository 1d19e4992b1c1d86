"""Directory operations: validation, business rules, audit, one write per change.

Every admin surface (the ``pfm`` CLI now, a REST API later) calls these and only these, so no
rule lives in a front end. Each operation validates and normalises its input, reads what it
needs, builds the list of changes plus audit entries and hands them to the backend in one
:meth:`~services.directory.backend.Backend.write` (all-or-nothing). With ``dry_run`` the
same result is returned without writing. ``ensure`` makes an ``add`` idempotent: an equal
object is left alone, a different one is brought to the requested values.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .backend import Backend
from .model import (
    Admin,
    Alias,
    AliasDomain,
    AlreadyExists,
    AuditEntry,
    Change,
    Conflict,
    Create,
    Delete,
    DirectoryObject,
    Domain,
    InvalidInput,
    LimitOverrides,
    Mailbox,
    NotFound,
    Replace,
    domain_of,
    key_of,
    normalize_address,
    normalize_alias_source,
    normalize_domain,
    public,
)

UNLIMITED = "unlimited"


@dataclass(frozen=True, slots=True)
class Result:
    """What an operation did (or, on a dry run, would do)."""

    action: str
    object: str
    changes: tuple[Change, ...] = ()
    audit: tuple[AuditEntry, ...] = ()
    applied: bool = False
    dry_run: bool = False
    message: str = ""
    after: Mapping[str, Any] | None = None

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "object": self.object,
            "changed": self.changed,
            "applied": self.applied,
            "dry_run": self.dry_run,
            "message": self.message,
            "changes": [_describe(c) for c in self.changes],
            "after": dict(self.after) if self.after is not None else None,
        }


def _describe(change: Change) -> dict[str, str]:
    if isinstance(change, Delete):
        return {"op": "delete", "kind": change.kind, "key": change.key}
    op = "create" if isinstance(change, Create) else "replace"
    return {"op": op, "kind": type(change.obj).__name__.lower(), "key": key_of(change.obj)}


def validate_windows(value: Sequence[str] | str, field_name: str) -> tuple[str, ...]:
    """Windows like ``["500/1d", "50/1h"]``; ``"unlimited"`` gives ``()``."""
    from services.config import Window

    if isinstance(value, str):
        if value.strip().lower() in (UNLIMITED, "none"):
            return ()
        value = [v for v in value.replace(",", " ").split() if v]
    if not value:
        raise InvalidInput(field_name, "give at least one window like 500/1d, or 'unlimited'")
    out = []
    for item in value:
        try:
            w = Window.parse(item)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(field_name, str(exc)) from None
        out.append(str(w))
    return tuple(out)


class Directory:
    """The operations layer over one backend."""

    def __init__(
        self,
        backend: Backend,
        *,
        actor: str = "unknown",
        password_scheme: str = "ARGON2ID",  # noqa: S107 - a scheme name
        revoke_app_passwords_on_passwd: bool = True,
        known_limits: Mapping[str, Any] | Collection[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.actor = actor
        self.password_scheme = password_scheme
        self.revoke_app_passwords_on_passwd = revoke_app_passwords_on_passwd
        self.known_limits = known_limits
        self.clock = clock

    # ------------------------------------------------------------------ plumbing

    def _commit(
        self,
        action: str,
        obj_key: str,
        changes: list[Change],
        before: DirectoryObject | None,
        after: DirectoryObject | None,
        dry_run: bool,
        message: str = "",
        extra_audit: Iterable[AuditEntry] = (),
    ) -> Result:
        audit: list[AuditEntry] = []
        if changes:
            audit.append(
                AuditEntry(
                    ts=self.clock(),
                    actor=self.actor,
                    action=action,
                    object=obj_key,
                    before=public(before) if before is not None else None,
                    after=public(after) if after is not None else None,
                )
            )
            audit.extend(extra_audit)
            if not dry_run:
                self.backend.write(changes, audit)
        return Result(
            action=action,
            object=obj_key,
            changes=tuple(changes),
            audit=tuple(audit),
            applied=bool(changes) and not dry_run,
            dry_run=dry_run,
            message=message,
            after=public(after) if after is not None else None,
        )

    def _require_domain(self, name: str) -> Domain:
        dom = self.backend.get_domain(name)
        if dom is None:
            raise NotFound(f"domain {name} does not exist (add it with: pfm domain add {name})")
        return dom

    def _check_limits(
        self, limits: Mapping[str, Sequence[str] | str]
    ) -> dict[str, tuple[str, ...]]:
        """Valid windows for configured limits (and their periods, when the config is known)."""
        from services.config import Window

        out: dict[str, tuple[str, ...]] = {}
        for name, windows in limits.items():
            known = self.known_limits
            if known is not None and name not in known:
                names = ", ".join(sorted(known)) or "none configured"
                raise InvalidInput(
                    "limit", f"no limit named {name!r} in [policyd.limits] ({names})"
                )
            checked = validate_windows(windows, f"limit {name}")
            lim = known.get(name) if isinstance(known, Mapping) else None
            spans = {w.seconds for w in getattr(lim, "windows", ())}
            if spans and checked:
                periods = {Window.parse(w).seconds for w in checked}
                if periods - spans:
                    allowed = ", ".join(
                        str(w).split("/", 1)[1] for w in getattr(lim, "windows", ())
                    )
                    raise InvalidInput(
                        f"limit {name}", f"windows must use the limit's periods ({allowed})"
                    )
            out[name] = checked
        return out

    # ------------------------------------------------------------------ domains

    def get_domain(self, name: str) -> Domain:
        return self._require_domain(normalize_domain(name))

    def list_domains(self) -> list[Domain]:
        return self.backend.list_domains()

    def add_domain(
        self,
        name: str,
        *,
        description: str | None = None,
        max_mailboxes: int | None = None,
        max_aliases: int | None = None,
        default_quota: int | None = None,
        active: bool | None = None,
        ensure: bool = False,
        dry_run: bool = False,
    ) -> Result:
        """Add a domain. ``None`` means "not given": the default on create, kept on ensure."""
        dname = normalize_domain(name)
        given: dict[str, Any] = {
            k: v
            for k, v in (
                ("description", description),
                ("max_mailboxes", max_mailboxes),
                ("max_aliases", max_aliases),
                ("default_quota", default_quota),
                ("active", active),
            )
            if v is not None
        }
        for fname in ("max_mailboxes", "max_aliases", "default_quota"):
            if given.get(fname, 0) < 0:
                raise InvalidInput(fname, "must be 0 (no limit) or more")
        if self.backend.get_alias_domain(dname) is not None:
            raise Conflict(f"{dname} is an alias domain; remove it first (pfm alias-domain remove)")
        now = self.clock()
        old = self.backend.get_domain(dname)
        if old is not None:
            if not ensure:
                raise AlreadyExists(f"domain {dname} exists already")
            new = dataclasses.replace(old, **given)
            if new == old:
                return self._commit("domain.add", dname, [], old, old, dry_run, "unchanged")
            new = dataclasses.replace(new, modified=now)
            return self._commit("domain.update", dname, [Replace(new)], old, new, dry_run)
        want = Domain(name=dname, created=now, modified=now, **given)
        return self._commit("domain.add", dname, [Create(want)], None, want, dry_run)

    def update_domain(self, name: str, *, dry_run: bool = False, **changes: Any) -> Result:
        allowed = {"active", "description", "max_mailboxes", "max_aliases", "default_quota"}
        bad = set(changes) - allowed
        if bad:
            raise InvalidInput(sorted(bad)[0], "cannot be changed this way")
        old = self.get_domain(name)
        new = dataclasses.replace(old, **changes)
        if new == old:
            return self._commit("domain.update", old.name, [], old, old, dry_run, "unchanged")
        new = dataclasses.replace(new, modified=self.clock())
        action = "domain.update"
        if set(changes) == {"active"}:
            action = "domain.enable" if changes["active"] else "domain.disable"
        return self._commit(action, old.name, [Replace(new)], old, new, dry_run)

    def remove_domain(self, name: str, *, cascade: bool = False, dry_run: bool = False) -> Result:
        dom = self.get_domain(name)
        mailboxes = self.backend.list_mailboxes(dom.name)
        aliases = self.backend.list_aliases(dom.name)
        alias_domains = [a for a in self.backend.list_alias_domains() if a.target == dom.name]
        if (mailboxes or aliases or alias_domains) and not cascade:
            raise Conflict(
                f"domain {dom.name} still has {len(mailboxes)} mailbox(es), {len(aliases)} "
                f"alias(es) and {len(alias_domains)} alias domain(s); remove them first or use "
                "--cascade"
            )
        changes: list[Change] = []
        for ad in alias_domains:
            changes.append(Delete("alias_domain", ad.name))
        for al in aliases:
            changes.append(Delete("alias", al.address))
        for mb in mailboxes:
            for ap in self.backend.list_app_passwords(mb.address):
                changes.append(Delete("app_password", ap.id))
            changes.append(Delete("mailbox", mb.address))
        changes.append(Delete("domain", dom.name))
        msg = ""
        if cascade and len(changes) > 1:
            msg = (
                f"with {len(mailboxes)} mailbox(es), {len(aliases)} alias(es), "
                f"{len(alias_domains)} alias domain(s)"
            )
        return self._commit("domain.remove", dom.name, changes, dom, None, dry_run, msg)

    # ------------------------------------------------------------------ mailboxes

    def get_mailbox(self, address: str) -> Mailbox:
        addr = normalize_address(address)
        mb = self.backend.get_mailbox(addr)
        if mb is None:
            raise NotFound(f"mailbox {addr} does not exist")
        return mb

    def list_mailboxes(self, domain: str | None = None) -> list[Mailbox]:
        return self.backend.list_mailboxes(normalize_domain(domain) if domain else None)

    def _hash(self, password: str) -> str:
        from . import passwords

        passwords.validate_new_password(password)
        return passwords.hash_password(password, self.password_scheme)

    def add_mailbox(
        self,
        address: str,
        *,
        password: str | None = None,
        password_hash: str | None = None,
        name: str | None = None,
        quota: int | None = None,
        active: bool | None = None,
        ensure: bool = False,
        dry_run: bool = False,
    ) -> Result:
        """Add a mailbox; exactly one of ``password`` and ``password_hash`` (an import).

        ``None`` means "not given": the default on create (the domain's default quota), kept
        as it is on ensure.
        """
        addr = normalize_address(address)
        if (password is None) == (password_hash is None):
            raise InvalidInput("password", "give a password or an existing password hash")
        if quota is not None and quota < 0:
            raise InvalidInput("quota", "must be 0 (unlimited) or more")
        dom = self._require_domain(domain_of(addr))
        old = self.backend.get_mailbox(addr)
        if old is not None and not ensure:
            raise AlreadyExists(f"mailbox {addr} exists already")
        alias = self.backend.get_alias(addr)
        if alias is not None and addr not in alias.targets:
            raise Conflict(
                f"{addr} is an alias (to {', '.join(alias.targets)}); Postfix would never deliver "
                "to a mailbox behind it. Remove the alias first"
            )
        if password_hash is not None:
            from . import passwords

            passwords.check_hash(password_hash)
        now = self.clock()
        if old is None:
            if dom.max_mailboxes and self.backend.count_mailboxes(dom.name) >= dom.max_mailboxes:
                raise Conflict(f"domain {dom.name} is at its cap of {dom.max_mailboxes} mailboxes")
            hashed = password_hash if password_hash is not None else self._hash(password or "")
            mb = Mailbox(
                address=addr,
                password_hash=hashed,
                name=name or "",
                quota=dom.default_quota if quota is None else quota,
                active=True if active is None else active,
                password_changed=now,
                created=now,
                modified=now,
            )
            return self._commit("mailbox.add", addr, [Create(mb)], None, mb, dry_run)
        # ensure: converge on the requested values, keeping a hash that already matches
        new = dataclasses.replace(
            old,
            name=old.name if name is None else name,
            active=old.active if active is None else active,
            quota=old.quota if quota is None else quota,
        )
        if password_hash is not None:
            new = dataclasses.replace(new, password_hash=password_hash)
        elif password is not None:
            from . import passwords

            if not passwords.verify_password(password, old.password_hash).ok:
                new = dataclasses.replace(new, password_hash=self._hash(password))
        if new == old:
            return self._commit("mailbox.add", addr, [], old, old, dry_run, "unchanged")
        if new.password_hash != old.password_hash:
            new = dataclasses.replace(new, password_changed=now)
        new = dataclasses.replace(new, modified=now)
        return self._commit("mailbox.update", addr, [Replace(new)], old, new, dry_run)

    def set_password(self, address: str, password: str, *, dry_run: bool = False) -> Result:
        """Change a password; revokes the user's app passwords when so configured."""
        old = self.get_mailbox(address)
        now = self.clock()
        new = dataclasses.replace(
            old, password_hash=self._hash(password), password_changed=now, modified=now
        )
        changes: list[Change] = [Replace(new)]
        msg = ""
        if self.revoke_app_passwords_on_passwd:
            revoked = self.backend.list_app_passwords(old.address)
            changes.extend(Delete("app_password", ap.id) for ap in revoked)
            if revoked:
                msg = f"revoked {len(revoked)} app password(s)"
        return self._commit("mailbox.passwd", old.address, changes, old, new, dry_run, msg)

    def rehash(self, address: str, password: str) -> bool:
        """After a successful login: store a fresh hash if the stored one is outdated."""
        from . import passwords

        mb = self.backend.get_mailbox(normalize_address(address))
        if mb is None:
            return False
        v = passwords.verify_password(password, mb.password_hash, self.password_scheme)
        if not (v.ok and v.needs_rehash):
            return False
        # hash_password, not _hash: a legacy password may not meet today's rules for new ones
        rehashed = passwords.hash_password(password, self.password_scheme)
        new = dataclasses.replace(mb, password_hash=rehashed, modified=self.clock())
        self._commit("mailbox.rehash", mb.address, [Replace(new)], mb, new, False)
        return True

    def update_mailbox(self, address: str, *, dry_run: bool = False, **changes: Any) -> Result:
        allowed = {"active", "name", "quota"}
        bad = set(changes) - allowed
        if bad:
            raise InvalidInput(sorted(bad)[0], "cannot be changed this way")
        if "quota" in changes and changes["quota"] < 0:
            raise InvalidInput("quota", "must be 0 (unlimited) or more")
        old = self.get_mailbox(address)
        new = dataclasses.replace(old, **changes)
        if new == old:
            return self._commit("mailbox.update", old.address, [], old, old, dry_run, "unchanged")
        new = dataclasses.replace(new, modified=self.clock())
        action = "mailbox.update"
        if set(changes) == {"active"}:
            action = "mailbox.enable" if changes["active"] else "mailbox.disable"
        elif set(changes) == {"quota"}:
            action = "mailbox.quota"
        return self._commit(action, old.address, [Replace(new)], old, new, dry_run)

    def remove_mailbox(self, address: str, *, dry_run: bool = False) -> Result:
        mb = self.get_mailbox(address)
        changes: list[Change] = [
            Delete("app_password", ap.id) for ap in self.backend.list_app_passwords(mb.address)
        ]
        changes.append(Delete("mailbox", mb.address))
        return self._commit("mailbox.remove", mb.address, changes, mb, None, dry_run)

    # ------------------------------------------------------------------ aliases

    def list_aliases(self, domain: str | None = None) -> list[Alias]:
        return self.backend.list_aliases(normalize_domain(domain) if domain else None)

    def get_alias(self, source: str) -> Alias:
        src = normalize_alias_source(source)
        al = self.backend.get_alias(src)
        if al is None:
            raise NotFound(f"alias {src} does not exist")
        return al

    def add_alias(
        self,
        source: str,
        targets: Sequence[str],
        *,
        replace: bool = False,
        dry_run: bool = False,
    ) -> Result:
        """Add targets to an alias (created if new); ``replace`` sets exactly ``targets``."""
        src = normalize_alias_source(source)
        if not targets:
            raise InvalidInput("targets", "give at least one target address")
        tgts: list[str] = []
        for t in targets:
            n = normalize_address(t, "target")
            if n not in tgts:
                tgts.append(n)
        dom = self._require_domain(domain_of(src))
        mb = self.backend.get_mailbox(src) if not src.startswith("@") else None
        if mb is not None and src not in tgts:
            raise Conflict(
                f"{src} is a mailbox; an alias for it must keep a copy in the mailbox: "
                f"include {src} itself among the targets"
            )
        old = self.backend.get_alias(src)
        now = self.clock()
        if old is None:
            if dom.max_aliases and len(self.backend.list_aliases(dom.name)) >= dom.max_aliases:
                raise Conflict(f"domain {dom.name} is at its cap of {dom.max_aliases} aliases")
            new = Alias(address=src, targets=tuple(tgts), created=now, modified=now)
        else:
            merged = (
                tuple(tgts)
                if replace
                else old.targets + tuple(t for t in tgts if t not in old.targets)
            )
            new = dataclasses.replace(old, targets=merged)
            if new == old:
                return self._commit("alias.add", src, [], old, old, dry_run, "unchanged")
            new = dataclasses.replace(new, modified=now)
        self._check_loops(new)
        change: Change = Create(new) if old is None else Replace(new)
        return self._commit(
            "alias.add" if old is None else "alias.update", src, [change], old, new, dry_run
        )

    def _check_loops(self, changed: Alias) -> None:
        """Refuse an alias that makes a forwarding loop through other local aliases."""
        graph: dict[str, tuple[str, ...]] = {
            a.address: a.targets for a in self.backend.list_aliases()
        }
        graph[changed.address] = changed.targets
        # depth-first from the changed alias; an address expanding to itself is a copy, not a loop
        stack: list[tuple[str, tuple[str, ...]]] = [(changed.address, (changed.address,))]
        while stack:
            node, path = stack.pop()
            for t in graph.get(node, ()):
                if t == node:
                    continue
                if t == changed.address or t in path:
                    chain = " -> ".join((*path, t))
                    raise Conflict(f"alias loop: {chain}")
                if t in graph and len(path) < 64:
                    stack.append((t, (*path, t)))

    def remove_alias(
        self, source: str, targets: Sequence[str] = (), *, dry_run: bool = False
    ) -> Result:
        """Remove some targets of an alias, or the whole alias when no targets are given."""
        old = self.get_alias(source)
        if not targets:
            return self._commit(
                "alias.remove", old.address, [Delete("alias", old.address)], old, None, dry_run
            )
        drop = {normalize_address(t, "target") for t in targets}
        missing = drop - set(old.targets)
        if missing:
            raise NotFound(f"{', '.join(sorted(missing))} is not a target of {old.address}")
        left = tuple(t for t in old.targets if t not in drop)
        if not left:
            return self._commit(
                "alias.remove", old.address, [Delete("alias", old.address)], old, None, dry_run
            )
        new = dataclasses.replace(old, targets=left, modified=self.clock())
        return self._commit("alias.update", old.address, [Replace(new)], old, new, dry_run)

    # ------------------------------------------------------------------ alias domains

    def list_alias_domains(self) -> list[AliasDomain]:
        return self.backend.list_alias_domains()

    def add_alias_domain(self, name: str, target: str, *, dry_run: bool = False) -> Result:
        src = normalize_domain(name, "alias domain")
        dst = normalize_domain(target, "target")
        if src == dst:
            raise InvalidInput("target", "an alias domain cannot point to itself")
        if self.backend.get_domain(src) is not None:
            raise Conflict(f"{src} is a real domain; an alias domain must not be one")
        self._require_domain(dst)
        if self.backend.get_alias_domain(dst) is not None:
            raise Conflict(f"{dst} is itself an alias domain; point {src} at a real domain")
        old = self.backend.get_alias_domain(src)
        now = self.clock()
        if old is not None:
            if old.target == dst:
                return self._commit("alias_domain.add", src, [], old, old, dry_run, "unchanged")
            new = dataclasses.replace(old, target=dst, modified=now)
            return self._commit("alias_domain.update", src, [Replace(new)], old, new, dry_run)
        new = AliasDomain(name=src, target=dst, created=now, modified=now)
        return self._commit("alias_domain.add", src, [Create(new)], None, new, dry_run)

    def remove_alias_domain(self, name: str, *, dry_run: bool = False) -> Result:
        src = normalize_domain(name, "alias domain")
        old = self.backend.get_alias_domain(src)
        if old is None:
            raise NotFound(f"alias domain {src} does not exist")
        return self._commit(
            "alias_domain.remove", src, [Delete("alias_domain", src)], old, None, dry_run
        )

    # ------------------------------------------------------------------ sending limits

    def _subject(self, subject: str) -> Domain | Mailbox:
        text = subject.strip()
        if "@" in text and not text.startswith("@"):
            return self.get_mailbox(text)
        return self.get_domain(text.lstrip("@"))

    def show_limits(self, subject: str) -> tuple[str, LimitOverrides]:
        """The stored key of a mailbox or domain subject, and its overrides."""
        obj = self._subject(subject)
        return key_of(obj), obj.limits

    def set_limit(
        self, subject: str, limit: str, windows: Sequence[str] | str, *, dry_run: bool = False
    ) -> Result:
        """Override one pfm-policyd limit for a mailbox, or for every mailbox of a domain."""
        checked = self._check_limits({limit: windows})
        old = self._subject(subject)
        limits = dict(old.limits)
        limits.update(checked)
        return self._set_limits(old, limits, dry_run)

    def clear_limit(
        self, subject: str, limit: str | None = None, *, dry_run: bool = False
    ) -> Result:
        old = self._subject(subject)
        limits = dict(old.limits)
        if limit is None:
            limits.clear()
        elif limit not in limits:
            raise NotFound(f"{key_of(old)} has no override for limit {limit}")
        else:
            del limits[limit]
        return self._set_limits(old, limits, dry_run)

    def _set_limits(
        self, old: Domain | Mailbox, limits: dict[str, tuple[str, ...]], dry_run: bool
    ) -> Result:
        key = key_of(old)
        if limits == dict(old.limits):
            return self._commit("limit.set", key, [], old, old, dry_run, "unchanged")
        new = dataclasses.replace(old, limits=limits, modified=self.clock())
        return self._commit("limit.set", key, [Replace(new)], old, new, dry_run)

    def limit_overrides(self) -> dict[str, dict[str, tuple[str, ...]]]:
        """Every override in the directory as pfm-policyd reads them.

        ``{limit name: {subject: windows}}`` with ``@domain`` subjects for domain defaults;
        inactive mailboxes and domains are left out (they can't send anyway).
        """
        out: dict[str, dict[str, tuple[str, ...]]] = {}
        for dom in self.backend.list_domains():
            if dom.active:
                for name, windows in dom.limits.items():
                    out.setdefault(name, {})["@" + dom.name] = tuple(windows)
        for mb in self.backend.list_mailboxes_with_limits():
            if mb.active and mb.limits:
                for name, windows in mb.limits.items():
                    out.setdefault(name, {})[mb.address] = tuple(windows)
        return out

    # ------------------------------------------------------------------ admins

    def list_admins(self) -> list[Admin]:
        return self.backend.list_admins()

    def add_admin(
        self,
        name: str,
        *,
        role: str = "domain",
        domains: Sequence[str] = (),
        ensure: bool = False,
        dry_run: bool = False,
    ) -> Result:
        login = name.strip()
        if not login or any(c.isspace() or c in ",;:/\\\0" for c in login) or len(login) > 64:
            raise InvalidInput("name", "an admin name is 1-64 characters, no spaces or ,;:/\\")
        if role not in ("global", "domain"):
            raise InvalidInput("role", "must be 'global' or 'domain'")
        doms = tuple(sorted({normalize_domain(d) for d in domains}))
        if role == "domain" and not doms:
            raise InvalidInput("domains", "a domain admin needs at least one domain")
        if role == "global" and doms:
            raise InvalidInput("domains", "a global admin takes no domains")
        for d in doms:
            self._require_domain(d)
        now = self.clock()
        old = self.backend.get_admin(login)
        new = Admin(name=login, role=role, domains=doms, created=now, modified=now)  # type: ignore[arg-type]
        if old is not None:
            if not ensure:
                raise AlreadyExists(f"admin {login} exists already")
            upd = dataclasses.replace(old, role=new.role, domains=doms)
            if upd == old:
                return self._commit("admin.add", login, [], old, old, dry_run, "unchanged")
            upd = dataclasses.replace(upd, modified=now)
            return self._commit("admin.update", login, [Replace(upd)], old, upd, dry_run)
        return self._commit("admin.add", login, [Create(new)], None, new, dry_run)

    def remove_admin(self, name: str, *, dry_run: bool = False) -> Result:
        old = self.backend.get_admin(name.strip())
        if old is None:
            raise NotFound(f"admin {name} does not exist")
        return self._commit(
            "admin.remove", old.name, [Delete("admin", old.name)], old, None, dry_run
        )

    # ------------------------------------------------------------------ audit

    def audit_log(self, since: float = 0.0, limit: int = 0) -> list[AuditEntry]:
        return self.backend.audit_log(since, limit)


def current_actor(environ: Mapping[str, str]) -> str:
    """Who is acting, for the audit log: the unix user, and the sudo user behind it."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {__import__('os').getuid()}"
    sudo = environ.get("SUDO_USER")
    return f"{user} (sudo: {sudo})" if sudo and sudo != user else user
