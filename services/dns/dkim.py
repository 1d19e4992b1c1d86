"""DKIM keys on disk: generation, rotation, retirement (``cryptography`` for the keys).

Layout under ``[directory] dkim_dir``::

    <dkim_dir>/<domain>/<selector>.key     PEM PKCS#8 private key, mode 0600 from creation
    <dkim_dir>/<domain>/<selector>.pub     PEM public key (SubjectPublicKeyInfo)
    <dkim_dir>/<domain>/selectors.json     the active selector and the retiring ones

Directories are created 0700. Every file is written atomically (temp file, fsync, rename);
a key file is never overwritten. Changes to one domain hold an ``flock`` on
``<domain>/.lock``. Private key material never appears in a return value or message.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from services.directory.model import InvalidInput, normalize_domain

from .records import Algorithm, DkimPublicKey

STATE_FILE = "selectors.json"
STATE_VERSION = 1
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_SELECTOR = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")


class DkimError(Exception):
    """A DKIM store problem; the message is safe to show."""


class DkimNotFound(DkimError):
    """No such domain key or selector."""


class DkimExists(DkimError):
    """The domain already has an active key, or the selector is taken."""


@dataclass(frozen=True, slots=True)
class SelectorInfo:
    """One stored key's public facts (never the key itself)."""

    selector: str
    algorithm: Algorithm
    state: Literal["active", "retiring"]
    created: str
    bits: int | None = None
    retire_after: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class DomainKeys:
    """A domain's selectors (active first) as kept in ``selectors.json``."""

    domain: str
    selectors: tuple[SelectorInfo, ...]

    @property
    def active(self) -> SelectorInfo | None:
        """The selector new mail is signed with."""
        return next((s for s in self.selectors if s.state == "active"), None)

    def get(self, selector: str) -> SelectorInfo | None:
        """The entry for ``selector``."""
        return next((s for s in self.selectors if s.selector == selector), None)


def validate_selector(value: str, field_name: str = "selector") -> str:
    """A selector's canonical form (lower-case LDH labels) or :class:`InvalidInput`."""
    sel = value.strip().lower()
    if not sel or len(sel) > 63 or not _SELECTOR.match(sel):
        raise InvalidInput(
            field_name, f"{value!r} is not a valid selector (letters, digits, inner hyphens)"
        )
    return sel


def iso(t: dt.datetime) -> str:
    """UTC timestamp ``2026-12-02T13:29:21Z``."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


# --------------------------------------------------------------------------- keys


def generate_private_key(
    algorithm: Algorithm, bits: int = 2048
) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    """A fresh private key."""
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if bits not in (1024, 2048, 3072, 4096):
        raise InvalidInput("dns.dkim_rsa_bits", "must be 1024, 2048, 3072 or 4096")
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def public_b64(key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey) -> str:
    """The DKIM ``p=`` value: DER SubjectPublicKeyInfo (RSA) or the raw 32 bytes (RFC 8463)."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    return base64.b64encode(raw).decode("ascii")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` via a temp file created with ``mode``; ``exclusive`` never
    replaces an existing file (:class:`FileExistsError`)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)


# --------------------------------------------------------------------------- store


class DkimStore:
    """The keys under one ``dkim_dir``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ---- paths and reading

    def domain_dir(self, domain: str) -> Path:
        """``<root>/<a-label domain>``."""
        return self.root / normalize_domain(domain)

    def key_path(self, domain: str, selector: str) -> Path:
        """Where the private key of ``selector`` lives."""
        return self.domain_dir(domain) / f"{validate_selector(selector)}.key"

    def pub_path(self, domain: str, selector: str) -> Path:
        """Where the public key of ``selector`` lives."""
        return self.domain_dir(domain) / f"{validate_selector(selector)}.pub"

    def load(self, domain: str) -> DomainKeys:
        """The domain's selectors (none if it has no state file yet)."""
        dom = normalize_domain(domain)
        path = self.root / dom / STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return DomainKeys(dom, ())
        except (OSError, UnicodeDecodeError) as exc:
            raise DkimError(
                f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
            ) from None
        except ValueError:
            raise DkimError(f"{path} is not valid JSON") from None
        try:
            if data.get("version") != STATE_VERSION:
                raise DkimError(f"{path}: unsupported version {data.get('version')!r}")
            items = []
            for raw in data["selectors"]:
                items.append(
                    SelectorInfo(
                        selector=validate_selector(str(raw["selector"])),
                        algorithm=_algorithm(raw["algorithm"]),
                        state="active" if raw["state"] == "active" else "retiring",
                        created=str(raw["created"]),
                        bits=int(raw["bits"]) if raw.get("bits") is not None else None,
                        retire_after=str(raw.get("retire_after") or ""),
                    )
                )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise DkimError(f"{path} is damaged ({type(exc).__name__}: {exc})") from None
        items.sort(key=lambda s: (s.state != "active", s.created, s.selector))
        return DomainKeys(dom, tuple(items))

    def domains(self) -> list[str]:
        """Every domain that has a state file."""
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob(f"*/{STATE_FILE}"))

    def public_keys(self, domain: str, selector: str | None = None) -> list[DkimPublicKey]:
        """The published keys: the active one and the retiring ones (or just ``selector``)."""
        keys = self.load(domain)
        out: list[DkimPublicKey] = []
        for info in keys.selectors:
            if selector is not None and info.selector != selector:
                continue
            out.append(
                DkimPublicKey(
                    info.selector, info.algorithm, self._public_b64(domain, info), info.state
                )
            )
        if selector is not None and not out:
            raise DkimNotFound(f"{keys.domain} has no DKIM selector {selector!r}")
        return out

    def _public_b64(self, domain: str, info: SelectorInfo) -> str:
        pub = self.pub_path(domain, info.selector)
        try:
            key = serialization.load_pem_public_key(pub.read_bytes())
        except FileNotFoundError:
            raise DkimNotFound(
                f"public key file {pub} is missing (selector {info.selector})"
            ) from None
        except (OSError, ValueError) as exc:
            raise DkimError(f"cannot load public key {pub}: {type(exc).__name__}") from None
        if not isinstance(key, rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
            raise DkimError(f"{pub} holds neither an RSA nor an Ed25519 key")
        return public_b64(key)

    # ---- changes

    @contextlib.contextmanager
    def _locked(self, domain: str) -> Iterator[Path]:
        d = self.domain_dir(domain)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        d.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield d
        finally:
            os.close(fd)

    def _save(self, d: Path, keys: DomainKeys) -> None:
        active = keys.active
        data = {
            "version": STATE_VERSION,
            "domain": keys.domain,
            "active": active.selector if active else None,
            "selectors": [s.as_dict() for s in keys.selectors],
        }
        write_atomic(d / STATE_FILE, (json.dumps(data, indent=2) + "\n").encode(), 0o644)

    def new_selector(self, keys: DomainKeys, fmt: str, now: dt.datetime) -> str:
        """``fmt`` (strftime, UTC) made unique among the domain's selectors with ``-2`` ..."""
        try:
            base = validate_selector(
                now.astimezone(dt.UTC).strftime(fmt), "dns.dkim_selector_format"
            )
        except ValueError as exc:
            raise InvalidInput("dns.dkim_selector_format", str(exc)) from None
        taken = {s.selector for s in keys.selectors}
        d = self.root / keys.domain
        for n in range(1, 1000):
            cand = base if n == 1 else f"{base}-{n}"
            if cand not in taken and not (d / f"{cand}.key").exists():
                return cand
        raise DkimExists(f"no free selector derived from {base!r}")  # pragma: no cover

    def generate(
        self,
        domain: str,
        algorithm: Algorithm,
        *,
        bits: int = 2048,
        selector: str | None = None,
        selector_format: str = "s%Y%m",
        now: dt.datetime | None = None,
        dry_run: bool = False,
    ) -> SelectorInfo:
        """Create the domain's first (active) key; :class:`DkimExists` if it has one."""
        return self._add(
            domain, algorithm, bits, selector, selector_format, now, dry_run, rotate=None
        )

    def rotate(
        self,
        domain: str,
        algorithm: Algorithm,
        *,
        bits: int = 2048,
        selector: str | None = None,
        selector_format: str = "s%Y%m",
        retire_after: float = 7 * 86400,
        now: dt.datetime | None = None,
        dry_run: bool = False,
    ) -> tuple[SelectorInfo, SelectorInfo]:
        """A new active key; the old one becomes "retiring". Returns (new, old)."""
        now = now or dt.datetime.now(dt.UTC)
        old = self.load(domain).active
        if old is None:
            raise DkimNotFound(
                f"{normalize_domain(domain)} has no active DKIM key: use 'pfm dns dkim generate'"
            )
        retired = replace(
            old, state="retiring", retire_after=iso(now + dt.timedelta(seconds=retire_after))
        )
        new = self._add(
            domain, algorithm, bits, selector, selector_format, now, dry_run, rotate=retired
        )
        return new, retired

    def _add(
        self,
        domain: str,
        algorithm: Algorithm,
        bits: int,
        selector: str | None,
        selector_format: str,
        now: dt.datetime | None,
        dry_run: bool,
        rotate: SelectorInfo | None,
    ) -> SelectorInfo:
        now = now or dt.datetime.now(dt.UTC)
        dom = normalize_domain(domain)
        sel = validate_selector(selector) if selector else None
        if algorithm == "rsa" and bits not in (1024, 2048, 3072, 4096):
            raise InvalidInput("dns.dkim_rsa_bits", "must be 1024, 2048, 3072 or 4096")
        if dry_run:
            return self._plan(dom, algorithm, bits, sel, selector_format, now, rotate)
        with self._locked(dom) as d:
            info = self._plan(dom, algorithm, bits, sel, selector_format, now, rotate)
            keys = self.load(dom)
            key = generate_private_key(algorithm, bits)
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            pub = key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            key_path, pub_path = d / f"{info.selector}.key", d / f"{info.selector}.pub"
            try:
                write_atomic(key_path, pem, 0o600, exclusive=True)
            except FileExistsError:
                raise DkimExists(f"{key_path} exists already: choose another selector") from None
            try:
                write_atomic(pub_path, pub, 0o644)
                others = tuple(
                    rotate if (rotate and s.selector == rotate.selector) else s
                    for s in keys.selectors
                )
                self._save(d, DomainKeys(dom, (info, *others)))
            except BaseException:
                key_path.unlink(missing_ok=True)
                pub_path.unlink(missing_ok=True)
                raise
            return info

    def _plan(
        self,
        dom: str,
        algorithm: Algorithm,
        bits: int,
        sel: str | None,
        selector_format: str,
        now: dt.datetime,
        rotate: SelectorInfo | None,
    ) -> SelectorInfo:
        keys = self.load(dom)
        active = keys.active
        if rotate is None and active is not None:
            raise DkimExists(
                f"{dom} already has the active DKIM selector {active.selector!r}: "
                "use 'pfm dns dkim rotate'"
            )
        if rotate is not None and (active is None or active.selector != rotate.selector):
            raise DkimError(f"{dom}: the active selector changed meanwhile, try again")
        if sel is None:
            sel = self.new_selector(keys, selector_format, now)
        elif keys.get(sel) is not None or (self.root / dom / f"{sel}.key").exists():
            raise DkimExists(f"{dom} already has a DKIM selector {sel!r}")
        return SelectorInfo(
            selector=sel,
            algorithm=algorithm,
            state="active",
            created=iso(now),
            bits=bits if algorithm == "rsa" else None,
        )

    def retire(
        self,
        domain: str,
        selector: str,
        *,
        force: bool = False,
        now: dt.datetime | None = None,
        dry_run: bool = False,
    ) -> SelectorInfo:
        """Forget a retiring selector and delete its key files."""
        now = now or dt.datetime.now(dt.UTC)
        dom = normalize_domain(domain)
        sel = validate_selector(selector)

        def checked(keys: DomainKeys) -> SelectorInfo:
            info = keys.get(sel)
            if info is None:
                raise DkimNotFound(f"{dom} has no DKIM selector {sel!r}")
            if info.state == "active":
                raise DkimError(
                    f"{sel!r} is the active selector of {dom}: rotate first, then retire it"
                )
            if not force and info.retire_after and now < _parse_iso(info.retire_after):
                raise DkimError(
                    f"{sel!r} should stay published until {info.retire_after} so mail "
                    "signed with it still verifies (use --force to retire it now)"
                )
            return info

        if dry_run:
            return checked(self.load(dom))
        with self._locked(dom) as d:
            keys = self.load(dom)
            info = checked(keys)
            self._save(d, DomainKeys(dom, tuple(s for s in keys.selectors if s.selector != sel)))
            for suffix in (".key", ".pub"):
                (d / f"{sel}{suffix}").unlink(missing_ok=True)
            _fsync_dir(d)
            return info


def _algorithm(value: object) -> Algorithm:
    if value == "rsa":
        return "rsa"
    if value == "ed25519":
        return "ed25519"
    raise ValueError(f"unknown algorithm {value!r}")
