"""Compiled limits: which requests a limit applies to, its subject and its windows.

Pure: turns a :class:`services.config.LimitConfig` into a :class:`Rule` once per config load,
so the per-request path does dictionary lookups and string joins only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from services.config import AllowList, ConfigError, IPNetwork, LimitConfig, PolicydConfig, Window

from .protocol import Action
from .store import Counter

BLOCKING = frozenset({"defer", "defer_if_permit", "reject", "discard"})
# Precedence when several limits are breached at once: the strongest answer wins.
SEVERITY = {
    "reject": 6,
    "defer": 5,
    "defer_if_permit": 4,
    "discard": 3,
    "hold": 2,
    "prepend": 1,
    "warn": 0,
}

DEFAULT_REPLY = {
    "defer": "4.7.1 Rate limit exceeded ({limit} {unit} per {period}), try again later",
    "defer_if_permit": "4.7.1 Rate limit exceeded ({limit} {unit} per {period}), try again later",
    "reject": "5.7.1 Rate limit exceeded ({limit} {unit} per {period})",
    "hold": "rate limit {name} exceeded",
    "discard": "rate limit {name} exceeded",
    "warn": "rate limit {name} exceeded for {subject}",
}
VERB = {
    "defer": "DEFER",
    "defer_if_permit": "DEFER_IF_PERMIT",
    "reject": "REJECT",
    "hold": "HOLD",
    "discard": "DISCARD",
    "prepend": "PREPEND",
    "warn": "WARN",
}


def domain_of(address: str) -> str:
    """The lower-cased domain of an address, '' for the null sender or a bare local part."""
    at = address.rfind("@")
    return address[at + 1 :].lower().rstrip(".") if at >= 0 else ""


def _v4_int(address: str) -> int | None:
    """A strict dotted-quad IPv4 address as an integer, None for anything else."""
    parts = address.split(".")
    if len(parts) != 4:
        return None
    for p in parts:
        if not (p.isascii() and p.isdigit() and len(p) <= 3) or (len(p) > 1 and p[0] == "0"):
            return None
    a, b, c, d = (int(p) for p in parts)
    if a > 255 or b > 255 or c > 255 or d > 255:
        return None
    return a << 24 | b << 16 | c << 8 | d


def client_prefix(address: str, v4: int, v6: int) -> str:
    """The network of a client address at the configured prefix length, '' if not an IP."""
    if ":" not in address:
        # Dotted-quad fast path (most clients): no ipaddress objects per request.
        ip = _v4_int(address)
        if ip is None:
            return ""
        n = ip & ((0xFFFFFFFF << (32 - v4)) & 0xFFFFFFFF)
        return f"{n >> 24}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}/{v4}"
    return _slow_prefix(address, v4, v6)


@lru_cache(maxsize=65536)
def _slow_prefix(address: str, v4: int, v6: int) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return ""
    net = ipaddress.ip_network(f"{ip}/{v4 if ip.version == 4 else v6}", strict=False)
    return str(net)


@lru_cache(maxsize=65536)
def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


_V4_TABLES: dict[int, tuple[tuple[IPNetwork, ...], tuple[tuple[int, int], ...]]] = {}


def _v4_table(networks: tuple[IPNetwork, ...]) -> tuple[tuple[int, int], ...]:
    """(network, mask) integers of the IPv4 networks, cached per configured tuple."""
    entry = _V4_TABLES.get(id(networks))
    if entry is not None and entry[0] is networks:
        return entry[1]
    table = tuple((int(n.network_address), int(n.netmask)) for n in networks if n.version == 4)
    if len(_V4_TABLES) > 1024:
        _V4_TABLES.clear()
    _V4_TABLES[id(networks)] = (networks, table)  # keeps the tuple alive: ids stay unique
    return table


def in_networks(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    """True when the client address lies in one of the networks."""
    if not networks:
        return False
    if ":" not in address:
        v4 = _v4_int(address)
        if v4 is None:
            return False
        return any(v4 & mask == net for net, mask in _v4_table(networks))
    ip = _ip(address)
    if ip is None:
        return False
    return any(ip.version == n.version and ip in n for n in networks)


def allowed(allow: AllowList, attrs: Mapping[str, str]) -> str:
    """The allow-list entry kind that matches a request, '' when none does."""
    if not allow:
        return ""
    if allow.networks and in_networks(attrs.get("client_address", ""), allow.networks):
        return "network"
    sender = attrs.get("sender", "").lower()
    if sender and sender in allow.senders:
        return "sender"
    if allow.domains and domain_of(sender) in allow.domains:
        return "domain"
    user = attrs.get("sasl_username", "").lower()
    if user and user in allow.users:
        return "user"
    return ""


def _part_getter(part: str, v4: int, v6: int) -> Callable[[Mapping[str, str]], str]:
    if part == "global":
        return lambda a: "*"
    if part == "sender_domain":
        return lambda a: domain_of(a.get("sender", ""))
    if part == "recipient_domain":
        return lambda a: domain_of(a.get("recipient", ""))
    if part == "client_prefix":
        return lambda a: client_prefix(a.get("client_address", ""), v4, v6)
    if part == "client_address":
        return lambda a: a.get("client_address", "")
    name = part

    def get(a: Mapping[str, str]) -> str:
        return a.get(name, "").lower()

    return get


@dataclass(frozen=True, slots=True)
class Rule:
    """One configured limit, compiled for the request path."""

    name: str
    cfg: LimitConfig
    getters: tuple[Callable[[Mapping[str, str]], str], ...]
    windows: tuple[Window, ...]
    overrides: Mapping[str, tuple[Window, ...]]
    blocking: bool
    shadow: bool
    fail_open: bool
    per_recipient: bool
    auth: int = 0  # 0: everyone, 1: authenticated only, 2: unauthenticated only
    filtered: bool = False  # networks, exclusions or an allow list to check
    prefix: str = ""  # counter key prefix "NAME|"
    cache: dict[str, tuple[tuple[Counter, Window], ...]] = field(default_factory=dict)

    def counters(self, subject: str) -> tuple[tuple[Counter, Window], ...]:
        """The counters (one per window in force) of a subject, built once and cached."""
        pairs = self.cache.get(subject)
        if pairs is None:
            windows = self.windows_for(subject) if self.overrides else self.windows
            base = f"{self.prefix}{subject}|"
            pairs = tuple(
                (Counter(f"{base}{int(w.seconds)}", w.seconds, w.count), w) for w in windows
            )
            if len(self.cache) >= 100_000:
                self.cache.clear()  # bounded; rebuilt on demand
            self.cache[subject] = pairs
        return pairs

    @property
    def unit(self) -> str:
        return self.cfg.unit

    def applies(self, attrs: Mapping[str, str]) -> bool:
        """Whether the limit's filters and allow list select this request."""
        if self.auth and bool(attrs.get("sasl_username")) != (self.auth == 1):
            return False
        return not self.filtered or self.passes_filters(attrs)

    def passes_filters(self, attrs: Mapping[str, str]) -> bool:
        """Networks, exclusions and the per-limit allow list."""
        cfg = self.cfg
        if cfg.networks and not in_networks(attrs.get("client_address", ""), cfg.networks):
            return False
        if cfg.exclude_networks and in_networks(
            attrs.get("client_address", ""), cfg.exclude_networks
        ):
            return False
        if cfg.exclude_senders:
            sender = attrs.get("sender", "").lower()
            if sender in cfg.exclude_senders or ("@" + domain_of(sender)) in cfg.exclude_senders:
                return False
        return not (cfg.allow and allowed(cfg.allow, attrs))

    def subject(self, attrs: Mapping[str, str]) -> str:
        """The key value this request is counted under, '' when a key part is missing."""
        if len(self.getters) == 1:
            return self.getters[0](attrs)
        parts = []
        for get in self.getters:
            v = get(attrs)
            if not v:
                return ""
            parts.append(v)
        return "|".join(parts)

    def windows_for(self, subject: str) -> tuple[Window, ...]:
        """Windows in force for a subject: its own override, its domain's, else the defaults."""
        if not self.overrides:
            return self.windows
        found = self.overrides.get(subject)
        if found is None and "@" in subject:
            found = self.overrides.get("@" + domain_of(subject))
        if found is None:
            return self.windows
        if not found:
            return ()  # unlimited
        spans = {w.seconds: w for w in found}
        return tuple(spans.get(w.seconds, w) for w in self.windows)

    def breach_action(self, window: Window, subject: str) -> Action:
        """The answer Postfix gets when this limit is exceeded."""
        cfg = self.cfg
        if cfg.action == "prepend":
            return Action("PREPEND", cfg.prepend_header)
        template = cfg.reply or DEFAULT_REPLY[cfg.action]
        text = template.format_map(
            _SafeDict(
                name=self.name,
                limit=window.count,
                unit=cfg.unit,
                period=str(window).split("/", 1)[1],
                subject=subject,
            )
        )
        verb = VERB[cfg.action]
        code, _, rest = text.partition(" ")
        if (
            len(code) == 3
            and code.isdigit()
            and cfg.action in ("defer", "defer_if_permit", "reject")
        ):
            # An explicit SMTP code ("451 4.7.1 ...") is answered as such; its class must
            # match the action (4xx to defer, 5xx to reject).
            want = "5" if cfg.action == "reject" else "4"
            if code[0] != want:
                raise ValueError(f"reply code {code} does not fit action {cfg.action!r} ({want}xx)")
            if cfg.action != "defer_if_permit":
                verb, text = code, rest
        return Action(verb, text)


class _SafeDict(dict[str, object]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def compile_rules(cfg: PolicydConfig) -> tuple[Rule, ...]:
    """Compile every configured limit, in configuration order."""
    rules = []
    for name, lim in cfg.limits.items():
        getters = tuple(_part_getter(p, lim.ipv4_prefix, lim.ipv6_prefix) for p in lim.key)
        overrides = {k.lower(): v for k, v in lim.overrides.items()}
        fail = lim.on_store_error or cfg.on_store_error
        rule = Rule(
            name=name,
            cfg=lim,
            getters=getters,
            windows=lim.windows,
            overrides=overrides,
            blocking=lim.action in BLOCKING,
            shadow=lim.mode == "shadow",
            fail_open=fail == "open",
            per_recipient=any(p in ("recipient", "recipient_domain") for p in lim.key),
            auth={"all": 0, "authenticated": 1, "unauthenticated": 2}[lim.applies_to],
            filtered=bool(lim.networks or lim.exclude_networks or lim.exclude_senders or lim.allow),
            prefix=f"{name}|",
        )
        # Build the breach answer once now, so a bad reply is a config error, not a
        # failure at the first breach.
        try:
            rule.breach_action(lim.windows[0], "subject@example.org")
        except ValueError as exc:
            key = "prepend_header" if lim.action == "prepend" else "reply"
            raise ConfigError(f"policyd.limits.{name}.{key}", str(exc)) from None
        rules.append(rule)
    return tuple(rules)


def parse_action(value: str, key: str) -> Action:
    """A configured access(5) answer, or a ConfigError naming its key."""
    try:
        return Action.parse(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None
