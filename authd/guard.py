"""Brute-force guard: sliding windows of distinct failures, tarpit, blocks, allow/deny lists.

Policy only; all state lives in an :class:`~authd.state.AuthState`. Four windows per
failed login: the client IP, the login, the IP+login pair and the client's network
prefix (IPv4 /24, IPv6 /64 by default). A window counts **distinct** wrong passwords:
each failure is stored as a short keyed hash (HMAC-SHA256 with the guard's key, 128 bits)
of ``login NUL password``, never the password, so a phone retrying one stale password
counts once, while spraying one password over many logins counts once per login.

Verdicts: below every threshold a login is allowed, or tarpitted (a delay of
``tarpit_start`` doubling per distinct failure in the IP or IP+login window, capped at
``tarpit_max``); when a window reaches its threshold, its subject (IP, login, pair or
prefix) is blocked for ``block_seconds``. Trusted networks bypass everything; admin
``allow`` entries (IPs and networks) bypass for a while; admin ``block`` entries deny
for a while. A successful login clears the IP+login window (not the IP window) and
remembers the pair as a known device (30 days): an automatic *login* block, which
failures from elsewhere can cause, does not lock a known device out.

Keys (as admins type them): an IP (``192.0.2.7``), a network at the configured prefix
length (``192.0.2.0/24``, ``2001:db8:1:2::/64``), a login (``alice@example.org``) or a
pair (``alice@example.org|192.0.2.7``, as listed for pair blocks).

Any state failure raises :class:`~authd.state.StateError`: the daemon must then let the
login proceed to the password check (fail open), never refuse it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .state import AuthState, Clock, Entry, Window

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Action = Literal["allow", "tarpit", "block"]
WindowName = Literal["ip", "login", "ip_login", "prefix"]
MAX_LOGIN = 256
LOGIN_BLOCK = "login_failures"
KNOWN = "known_device"


@dataclass(frozen=True, slots=True)
class WindowLimit:
    """A threshold: ``failures`` distinct failures within ``seconds`` block the subject."""

    failures: int
    seconds: float


def _default_trusted() -> tuple[IPNetwork, ...]:
    return (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True, slots=True)
class GuardConfig:
    """Brute-force guard settings (defaults in one place)."""

    enabled: bool = True
    per_ip: WindowLimit = WindowLimit(10, 600.0)
    per_login: WindowLimit = WindowLimit(5, 600.0)
    per_ip_login: WindowLimit = WindowLimit(3, 300.0)
    per_prefix: WindowLimit = WindowLimit(30, 600.0)
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64
    tarpit_start: float = 0.5
    tarpit_max: float = 8.0
    tarpit_windows: tuple[WindowName, ...] = ("ip", "ip_login")
    block_seconds: float = 900.0
    known_device_seconds: float = 30 * 86400.0  # 0: no known-device exemption
    trusted_networks: tuple[IPNetwork, ...] = field(default_factory=_default_trusted)

    def __post_init__(self) -> None:
        for name in ("per_ip", "per_login", "per_ip_login", "per_prefix"):
            lim: WindowLimit = getattr(self, name)
            if lim.failures < 1 or lim.seconds <= 0:
                raise ValueError(f"guard.{name}: failures must be >= 1 and seconds > 0")
        if not 8 <= self.ipv4_prefix <= 32:
            raise ValueError("guard.ipv4_prefix: must be between 8 and 32")
        if not 16 <= self.ipv6_prefix <= 128:
            raise ValueError("guard.ipv6_prefix: must be between 16 and 128")
        if self.tarpit_start < 0 or self.tarpit_max < self.tarpit_start:
            raise ValueError("guard.tarpit_start/tarpit_max: need 0 <= tarpit_start <= tarpit_max")
        if self.block_seconds <= 0:
            raise ValueError("guard.block_seconds: must be > 0")
        if self.known_device_seconds < 0:
            raise ValueError("guard.known_device_seconds: must be >= 0")
        for w in self.tarpit_windows:
            if w not in ("ip", "login", "ip_login", "prefix"):
                raise ValueError(f"guard.tarpit_windows: unknown window {w!r}")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a login attempt: allow, delay by ``delay`` seconds, or refuse."""

    action: Action
    delay: float = 0.0
    reason: str = ""  # short: "trusted", "allowlisted", "ip_failures", "admin" ...
    until: float = 0.0  # block end (epoch seconds)

    @property
    def blocked(self) -> bool:
        return self.action == "block"


ALLOW = Verdict("allow")


@dataclass(frozen=True, slots=True)
class ListedEntry:
    """An allow/deny entry as admins see it (``key`` as typed for ``block``/``unblock``)."""

    key: str
    action: Literal["allow", "block"]
    until: float
    reason: str


@dataclass(frozen=True, slots=True)
class _Subjects:
    ip: IPAddress | None
    login: str
    windows: dict[WindowName, Window]


def normalize_ip(ip: str) -> IPAddress | None:
    """The client address (IPv4-mapped IPv6 unwrapped, zone dropped), or None if not an IP."""
    try:
        addr = ipaddress.ip_address(ip.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def normalize_login(login: str) -> str:
    """Logins compare case-insensitively and are capped in length (keys stay bounded)."""
    return login.strip().lower()[:MAX_LOGIN]


class Guard:
    """The policy over a state store. ``key`` keys the password hashes (share it in a fleet)."""

    def __init__(
        self,
        state: AuthState,
        config: GuardConfig | None = None,
        *,
        key: bytes | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.state = state
        self.config = config or GuardConfig()
        self._key = key if key else os.urandom(32)
        self.clock = clock

    def __repr__(self) -> str:
        return f"Guard(state={self.state.name}, enabled={self.config.enabled})"

    # -- subjects ---------------------------------------------------------------------

    def prefix_of(self, addr: IPAddress) -> IPNetwork:
        """The network prefix an address is counted in."""
        bits = self.config.ipv4_prefix if addr.version == 4 else self.config.ipv6_prefix
        return ipaddress.ip_network(f"{addr}/{bits}", strict=False)

    def _subjects(self, ip: str, login: str) -> _Subjects:
        cfg = self.config
        addr = normalize_ip(ip)
        user = normalize_login(login)
        windows: dict[WindowName, Window] = {}
        if addr is not None:
            windows["ip"] = Window(f"ip:{addr}", cfg.per_ip.seconds)
            windows["prefix"] = Window(f"net:{self.prefix_of(addr)}", cfg.per_prefix.seconds)
            if user:
                windows["ip_login"] = Window(f"pair:{user}|{addr}", cfg.per_ip_login.seconds)
        if user:
            windows["login"] = Window(f"login:{user}", cfg.per_login.seconds)
        return _Subjects(addr, user, windows)

    def _limit(self, name: WindowName) -> WindowLimit:
        cfg = self.config
        return {
            "ip": cfg.per_ip,
            "login": cfg.per_login,
            "ip_login": cfg.per_ip_login,
            "prefix": cfg.per_prefix,
        }[name]

    def _trusted(self, addr: IPAddress | None) -> bool:
        return addr is not None and any(addr in net for net in self.config.trusted_networks)

    def member(self, login: str, password: str) -> str:
        """The keyed hash a wrong password is counted as (never the password itself)."""
        data = normalize_login(login).encode() + b"\0" + password.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, data, hashlib.sha256).hexdigest()[:32]

    def tarpit_delay(self, failures: int) -> float:
        """The delay after ``failures`` distinct failures: start, doubling, capped."""
        if failures <= 0:
            return 0.0
        cfg = self.config
        return min(cfg.tarpit_max, cfg.tarpit_start * 2.0 ** min(failures - 1, 64))

    # -- the decision path ------------------------------------------------------------

    async def _listed(self, s: _Subjects) -> tuple[Verdict | None, dict[str, Entry]]:
        """An allow or block verdict from the lists, plus the active entries by subject."""
        subjects = [w.key for w in s.windows.values()]
        if not subjects:
            return None, {}
        found = await self.state.get_entries(subjects)
        active = {e.subject: e for e in found if e is not None}
        allowable: tuple[WindowName, ...] = ("ip", "prefix")
        for name in allowable:
            w = s.windows.get(name)
            e = active.get(w.key) if w is not None else None
            if e is not None and e.action == "allow":
                return Verdict("allow", reason="allowlisted"), active
        blocks = [e for e in active.values() if e.action == "block"]
        pair = s.windows.get("ip_login")
        known = pair is not None and getattr(active.get(pair.key), "action", "") == "allow"
        if known:
            # A device that logged in from here before is not locked out by failures
            # others cause on its login (only the automatic login block is skipped).
            blocks = [
                e for e in blocks if not e.subject.startswith("login:") or e.reason != LOGIN_BLOCK
            ]
        if blocks:
            last = max(blocks, key=lambda e: e.until)
            return Verdict("block", reason=last.reason or "blocked", until=last.until), active
        return None, active

    async def check(self, ip: str, login: str) -> Verdict:
        """Before verifying a password: allow, tarpit (sleep ``delay`` first) or block."""
        if not self.config.enabled:
            return ALLOW
        s = self._subjects(ip, login)
        if self._trusted(s.ip):
            return Verdict("allow", reason="trusted")
        listed, _ = await self._listed(s)
        if listed is not None:
            return listed
        names = [n for n in self.config.tarpit_windows if n in s.windows]
        if not names:
            return ALLOW
        counts = await self.state.failure_counts([s.windows[n] for n in names])
        return self._tarpit(zip(names, counts, strict=True))

    def _tarpit(self, counted: Iterable[tuple[WindowName, int]]) -> Verdict:
        """Tarpit by the fullest tarpit window (the first configured one on a tie)."""
        level, worst = 0, ""
        for name, count in counted:
            if name in self.config.tarpit_windows and count > level:
                level, worst = count, name
        if level <= 0:
            return ALLOW
        return Verdict("tarpit", delay=self.tarpit_delay(level), reason=f"{worst}_failures")

    async def record_failure(self, ip: str, login: str, password: str) -> Verdict:
        """Count a wrong password; the verdict for this attempt (tarpit, or block on a threshold)."""
        if not self.config.enabled:
            return ALLOW
        s = self._subjects(ip, login)
        if self._trusted(s.ip):
            return Verdict("allow", reason="trusted")
        if not s.windows:
            return ALLOW
        listed, active = await self._listed(s)
        if listed is not None and listed.action == "allow":
            return listed
        names = list(s.windows)
        member = self.member(login, password)
        counts = await self.state.add_failure([s.windows[n] for n in names], member)
        now = self.clock()
        until = now + self.config.block_seconds
        verdict: Verdict | None = listed
        for name, count in zip(names, counts, strict=True):
            w = s.windows[name]
            current = active.get(w.key)
            if count < self._limit(name).failures or (current and current.action == "block"):
                continue
            reason = f"{name}_failures"
            await self.state.set_entry(Entry(w.key, "block", until, reason))
            if verdict is None or verdict.until < until:
                verdict = Verdict("block", reason=reason, until=until)
        if verdict is not None:
            return verdict
        order = {n: i for i, n in enumerate(self.config.tarpit_windows)}
        counted = sorted(zip(names, counts, strict=True), key=lambda nc: order.get(nc[0], 99))
        return self._tarpit(counted)

    async def record_success(self, ip: str, login: str) -> None:
        """A successful login clears its IP+login window (the IP window keeps counting).

        It also remembers the pair as a known device for ``known_device_seconds``: failures
        others cause on the login then do not lock this device out (the automatic login
        block is skipped for it; IP, prefix, pair and admin blocks still apply).
        """
        if not self.config.enabled:
            return
        w = self._subjects(ip, login).windows.get("ip_login")
        if w is None:
            return
        await self.state.clear_windows([w.key])
        seconds = self.config.known_device_seconds
        if seconds > 0:
            await self.state.set_entry(Entry(w.key, "allow", self.clock() + seconds, KNOWN))

    # -- admin lists ----------------------------------------------------------------------

    def subject(self, key: str) -> str:
        """The state subject of an admin key; ValueError naming the problem."""
        text = key.strip()
        if not text:
            raise ValueError("key: empty (use an IP, a network, a login or login|ip)")
        if "|" in text:
            user, _, ip = text.rpartition("|")
            addr = normalize_ip(ip)
            if addr is None or not normalize_login(user):
                raise ValueError(f"key {key!r}: a pair is login|ip")
            return f"pair:{normalize_login(user)}|{addr}"
        addr = normalize_ip(text)
        if addr is not None:
            return f"ip:{addr}"
        if "/" in text:
            try:
                net = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError(f"key {key!r}: not a valid network") from None
            if net.prefixlen == net.max_prefixlen:
                return f"ip:{net.network_address}"
            want = self.config.ipv4_prefix if net.version == 4 else self.config.ipv6_prefix
            if net.prefixlen != want:
                raise ValueError(
                    f"key {key!r}: networks must be /{want} (the guard's prefix length); "
                    "block wider ranges in the firewall"
                )
            return f"net:{net}"
        if any(c.isspace() or ord(c) < 32 for c in text):
            raise ValueError(f"key {key!r}: a login has no spaces or control characters")
        return f"login:{normalize_login(text)}"

    @staticmethod
    def key_of(subject: str) -> str:
        """The admin key of a state subject (inverse of :meth:`subject`)."""
        return subject.partition(":")[2]

    async def block(self, key: str, for_seconds: float, reason: str = "admin") -> ListedEntry:
        """Deny a subject for ``for_seconds``."""
        return await self._set(key, "block", for_seconds, reason)

    async def allow(self, key: str, for_seconds: float, reason: str = "admin") -> ListedEntry:
        """Let an IP or network bypass the guard for ``for_seconds`` (not logins: use unblock)."""
        subject = self.subject(key)
        if not subject.startswith(("ip:", "net:")):
            raise ValueError(f"key {key!r}: allow entries take an IP or a network")
        return await self._set(key, "allow", for_seconds, reason)

    async def _set(
        self, key: str, action: Literal["allow", "block"], for_seconds: float, reason: str
    ) -> ListedEntry:
        if not for_seconds > 0:
            raise ValueError("for_seconds: must be > 0")
        subject = self.subject(key)
        until = self.clock() + for_seconds
        await self.state.set_entry(Entry(subject, action, until, reason))
        return ListedEntry(self.key_of(subject), action, until, reason)

    async def unblock(self, key: str) -> bool:
        """Remove a subject's entry and forget its failure window; True if an entry was active."""
        subject = self.subject(key)
        removed = await self.state.delete_entry(subject)
        await self.state.clear_windows([subject])
        return removed

    async def blocks(self, *, known_devices: bool = False) -> list[ListedEntry]:
        """Active allow and block entries, soonest to expire first (known devices on request)."""
        found = await self.state.entries()
        return sorted(
            (
                ListedEntry(self.key_of(e.subject), e.action, e.until, e.reason)
                for e in found
                if known_devices or e.reason != KNOWN
            ),
            key=lambda e: (e.until, e.key),
        )


def parse_networks(values: Sequence[str]) -> tuple[IPNetwork, ...]:
    """Networks from config strings; ValueError naming the bad one."""
    out = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError:
            raise ValueError(f"trusted_networks: {v!r} is not a network") from None
    return tuple(out)
