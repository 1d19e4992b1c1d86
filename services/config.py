"""Typed, frozen configuration for every Postfix Manager daemon.

One TOML file (``/etc/pfm/pfm.toml``, ``--config`` or ``$PFM_CONFIG``) with a section per
daemon. Defaults live here and only here. Unknown keys and wrong types are errors that name
the dotted key and, when the source text is known, its line. The loader takes a mapping, so
tests never patch the environment.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias, Union, get_args, get_origin

DEFAULT_PATH = "/etc/pfm/pfm.toml"

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """A configuration problem, naming the key (and line when known)."""

    def __init__(self, key: str, message: str, line: int | None = None, source: str = "") -> None:
        self.key = key
        self.message = message
        self.line = line
        self.source = source
        where = f"{source}:" if source else ""
        where += f"{line}: " if line else (" " if source else "")
        super().__init__(f"{where}{key}: {message}" if key else f"{where}{message}")


# --------------------------------------------------------------------------- value types


class Duration(float):
    """Seconds, written as a number or ``"90s"``, ``"5m"``, ``"2h"``, ``"1d"``, ``"1w"``."""

    UNITS: typing.ClassVar[dict[str, float]] = {
        "ms": 0.001,
        "s": 1.0,
        "m": 60.0,
        "min": 60.0,
        "minute": 60.0,
        "h": 3600.0,
        "hour": 3600.0,
        "d": 86400.0,
        "day": 86400.0,
        "w": 604800.0,
        "week": 604800.0,
    }
    _RE = re.compile(r"^\s*(\d+(?:\.\d+)?)?\s*([a-z]+)?\s*$")

    @classmethod
    def parse(cls, value: object) -> Duration:
        if isinstance(value, bool):
            raise ValueError("expected a duration such as 30, '30s', '5m', '1h' or '1d'")
        if isinstance(value, int | float):
            if value < 0:
                raise ValueError("duration must not be negative")
            return cls(float(value))
        if isinstance(value, str):
            m = cls._RE.match(value.lower())
            if m and (m.group(1) or m.group(2)):
                num = float(m.group(1)) if m.group(1) else 1.0
                unit = m.group(2) or "s"
                if unit.endswith("s") and unit not in cls.UNITS:
                    unit = unit[:-1]
                if unit in cls.UNITS:
                    return cls(num * cls.UNITS[unit])
        raise ValueError(f"invalid duration {value!r}: use e.g. 30, '30s', '5m', '1h', '1d'")


@dataclass(frozen=True, slots=True)
class Window:
    """A limit over a sliding window: at most ``count`` units in any ``seconds``."""

    count: int
    seconds: float

    @classmethod
    def parse(cls, value: object) -> Window:
        if isinstance(value, str) and "/" in value:
            count_s, _, span = value.partition("/")
            try:
                count = int(count_s.strip().replace("_", ""))
            except ValueError:
                raise ValueError(f"invalid window {value!r}: count must be an integer") from None
            if count < 0:
                raise ValueError(f"invalid window {value!r}: count must not be negative")
            seconds = float(Duration.parse(span.strip()))
            if seconds <= 0:
                raise ValueError(f"invalid window {value!r}: the period must be positive")
            return cls(count, seconds)
        raise ValueError(
            f"invalid window {value!r}: use 'COUNT/PERIOD' such as '100/1h' or '1000/1d'"
        )

    def __str__(self) -> str:
        return f"{self.count}/{_fmt_seconds(self.seconds)}"


def _fmt_seconds(seconds: float) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def parse_network(value: object) -> IPNetwork:
    """Parse ``192.0.2.0/24``, ``2001:db8::/32`` or a bare address (a host network)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a network such as '192.0.2.0/24', got {value!r}")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"invalid network {value!r}") from None


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True, slots=True)
class LogConfig:
    """``[log]``: how every daemon logs."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """``[redis]``: the shared state store for fleets."""

    url: str = "redis://127.0.0.1:6379/0"
    password_file: str = ""
    prefix: str = "pfm"
    connect_timeout: Duration = Duration(0.5)
    command_timeout: Duration = Duration(0.5)
    sentinel_master: str = ""
    sentinels: tuple[str, ...] = ()
    cluster: bool = False


@dataclass(frozen=True, slots=True)
class AllowList:
    """Requests matching any entry skip a limit (or every limit, at ``[policyd.allow]``)."""

    networks: tuple[IPNetwork, ...] = ()
    senders: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    users: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.networks or self.senders or self.domains or self.users)


KEY_PARTS = (
    "sasl_username",
    "sender",
    "sender_domain",
    "client_address",
    "client_prefix",
    "recipient",
    "recipient_domain",
    "global",
)
KeyPart = Literal[
    "sasl_username",
    "sender",
    "sender_domain",
    "client_address",
    "client_prefix",
    "recipient",
    "recipient_domain",
    "global",
]
Unit = Literal["messages", "recipients", "bytes"]
Mode = Literal["enforce", "shadow"]
FailMode = Literal["open", "closed"]
BreachAction = Literal["defer", "defer_if_permit", "reject", "hold", "prepend", "warn", "discard"]
Override: TypeAlias = tuple[Window, ...]


@dataclass(frozen=True, slots=True)
class LimitConfig:
    """``[policyd.limits.NAME]``: one rate limit or quota."""

    key: tuple[KeyPart, ...]
    windows: tuple[Window, ...]
    unit: Unit = "messages"
    applies_to: Literal["all", "authenticated", "unauthenticated"] = "all"
    networks: tuple[IPNetwork, ...] = ()
    exclude_networks: tuple[IPNetwork, ...] = ()
    exclude_senders: tuple[str, ...] = ()
    action: BreachAction = "defer"
    reply: str = ""
    prepend_header: str = ""
    mode: Mode = "enforce"
    on_store_error: Literal["open", "closed", ""] = ""
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64
    allow: AllowList = AllowList()
    overrides: Mapping[str, Override] = field(default_factory=dict)
    name: str = ""


@dataclass(frozen=True, slots=True)
class PolicydConfig:
    """``[policyd]``: the Postfix SMTP access policy server."""

    listen: tuple[str, ...] = ("127.0.0.1:10040",)
    max_connections: int = 1000
    idle_timeout: Duration = Duration(300)
    grace: Duration = Duration(10)
    state: Literal["memory", "redis"] = "memory"
    memory_max_keys: int = 1_000_000
    accounting: Literal["two-phase", "rcpt"] = "two-phase"
    reservation_ttl: Duration = Duration(900)
    on_store_error: FailMode = "open"
    tempfail_action: str = (
        "DEFER_IF_PERMIT 4.3.0 Policy service temporarily unavailable, try again later"
    )
    bad_request_action: str = "DUNNO"
    overload_action: str = "DEFER_IF_PERMIT 4.3.2 Policy service busy, try again later"
    fallback: bool = True
    store_retry: Duration = Duration(2)
    admin_socket: str = "/run/pfm/policyd-admin.sock"
    metrics_listen: str = "127.0.0.1:9155"
    log_decisions: Literal["all", "actions", "none"] = "all"
    maillog: str = ""
    maillog_poll: Duration = Duration(0.25)
    directory_limits: bool = True
    directory_refresh: Duration = Duration(60)
    allow: AllowList = AllowList()
    limits: Mapping[str, LimitConfig] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LdapConfig:
    """``[directory.ldap]``: the OpenLDAP directory backend."""

    uris: tuple[str, ...] = ("ldap://127.0.0.1:389",)
    base_dn: str = "dc=example,dc=org"
    bind_dn: str = ""
    bind_password_file: str = ""
    start_tls: bool = False
    ca_file: str = ""
    connect_timeout: Duration = Duration(3)
    timeout: Duration = Duration(5)
    pool_size: int = 4


@dataclass(frozen=True, slots=True)
class DirectoryConfig:
    """``[directory]``: where domains, mailboxes and aliases live, and password policy."""

    backend: Literal["sqlite", "ldap"] = "sqlite"
    path: str = "/var/lib/pfm/directory.db"
    # secret-free copy of the lookup tables for Postfix/Dovecot; "" = <path stem>.maps.db
    maps_path: str = ""
    maps_group: str = "postfix"  # group given read access (0640) to the maps file
    password_scheme: Literal["ARGON2ID", "BLF-CRYPT", "SHA512-CRYPT"] = "ARGON2ID"  # noqa: S105
    rehash_on_login: bool = True
    revoke_app_passwords_on_passwd: bool = True
    dkim_dir: str = "/var/lib/pfm/dkim"
    backup_dir: str = "/var/backups/pfm"
    mail_root: str = "/var/vmail"
    mail_uid: int = 5000  # owner of the Maildirs (Postfix virtual_uid_maps, Dovecot uid)
    mail_gid: int = 5000
    ldap: LdapConfig = LdapConfig()


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """``[dns]``: the DNS records ``pfm dns records`` proposes and how DKIM keys are made.

    Empty strings mean "derive": ``mx_hosts`` -> ``mail.DOMAIN``, ``spf`` -> ``v=spf1 mx -all``.
    ``{domain}`` in ``mx_hosts``, ``spf``, ``dmarc_*`` and ``tls_rpt_rua`` is the mail domain.
    """

    ttl: int = 3600
    mx_hosts: tuple[str, ...] = ()
    mx_priority: int = 10
    spf: str = ""
    dmarc_policy: Literal["none", "quarantine", "reject"] = "quarantine"
    dmarc_rua: str = "postmaster@{domain}"
    dmarc_ruf: str = ""
    mta_sts_mode: Literal["testing", "enforce", "none"] = "testing"
    mta_sts_max_age: Duration = Duration(604800)
    tls_rpt_rua: str = "postmaster@{domain}"
    dkim_algorithm: Literal["rsa", "ed25519"] = "rsa"
    dkim_rsa_bits: int = 2048
    dkim_selector_format: str = "s%Y%m"
    dkim_retire_after: Duration = Duration(7 * 86400)


@dataclass(frozen=True, slots=True)
class PostfixConfig:
    """``[postfix]``: the Postfix instance ``pfm queue`` manages."""

    config_dir: str = "/etc/postfix"


@dataclass(frozen=True, slots=True)
class MetricsSourceConfig:
    """``[[metricsd.sources]]``: one log source of pfm-metricsd.

    ``type = "file"`` follows ``path`` (from its start when ``from_start``); ``"syslog"``
    receives RFC 3164/5424 datagrams on ``listen`` (``HOST:PORT``); ``"journald"`` reads
    ``journalctl -o json -f`` for ``units`` (all units when empty).
    """

    type: Literal["file", "syslog", "journald"]
    path: str = ""
    from_start: bool = False
    poll: Duration = Duration(0.25)
    listen: str = ""
    queue_size: int = 10000
    units: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MetricsdConfig:
    """``[metricsd]``: the Prometheus exporter for Postfix/Dovecot logs and the queue."""

    listen: str = "127.0.0.1:9154"
    sources: tuple[MetricsSourceConfig, ...] = (
        MetricsSourceConfig(type="file", path="/var/log/mail.log"),
    )
    postfix_config_dir: str = "/etc/postfix"
    queue_scrape: bool = True
    queue_timeout: Duration = Duration(10)
    queue_cache: Duration = Duration(5)
    top_domains: int = 20
    max_sasl_usernames: int = 0
    dovecot: bool = True
    max_pending_lines: int = 5000
    grace: Duration = Duration(5)


@dataclass(frozen=True, slots=True)
class AuthdGuardConfig:
    """``[authd.guard]``: brute-force guard (maps onto ``authd.guard.GuardConfig``).

    A window ``"5/10m"`` means: 5 *distinct* wrong passwords within 10 minutes block the
    subject (IP, login, IP+login pair, network prefix) for ``block_time``.
    """

    enabled: bool = True
    per_ip: Window = Window(10, 600.0)
    per_login: Window = Window(5, 600.0)
    per_ip_login: Window = Window(3, 300.0)
    per_prefix: Window = Window(30, 600.0)
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64
    tarpit_start: Duration = Duration(0.5)
    tarpit_max: Duration = Duration(8)
    tarpit_windows: tuple[Literal["ip", "login", "ip_login", "prefix"], ...] = ("ip", "ip_login")
    block_time: Duration = Duration(900)
    known_device_time: Duration = Duration(30 * 86400)
    key_file: str = ""  # HMAC key for failure hashes; share it in a fleet ("" = per process)


@dataclass(frozen=True, slots=True)
class AuthdConfig:
    """``[authd]``: the Dovecot authentication daemon (pfm-checkpassword, Lua passdb)."""

    # pfm-checkpassword runs as user dovecot: give the socket's directory/group to dovecot
    # (systemd: Group=dovecot in the unit) and keep mode 0660. inet ("127.0.0.1:10041") too.
    listen: tuple[str, ...] = ("unix:/run/pfm/authd.sock:0660",)
    http_listen: str = ""  # HTTP endpoint (Lua dovecot.http passdb, auth_policy); "" = off
    http_api_key_file: str = ""  # shared secret the HTTP endpoint requires ("" = none)
    admin_socket: str = "/run/pfm/authd-admin.sock"
    metrics_listen: str = "127.0.0.1:9156"
    state: Literal["memory", "redis"] = "memory"
    memory_max_keys: int = 100_000
    verify_workers: int = 0  # threads for hashing and LDAP binds; 0 = number of CPUs
    verify_timeout: Duration = Duration(8)  # a verification slower than this is a TEMPFAIL
    verify_cache_ttl: Duration = Duration(300)  # 0 disables the verify cache
    # mailbox + domain state reused this long (bounds how late a disable or password
    # change is seen); 0 reads the directory on every login
    account_cache_ttl: Duration = Duration(5)
    verify_cache_size: int = 100_000
    totp_services: tuple[str, ...] = ("imap", "submission", "smtp")
    totp_issuer: str = "Postfix Manager"
    app_passwords: bool = True
    grace_ttl: Duration = Duration(300)  # TOTP re-login without a new code; 0 disables
    trusted_networks: tuple[IPNetwork, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    max_connections: int = 1000
    max_pipeline: int = 64  # requests queued on one connection before it is closed
    idle_timeout: Duration = Duration(300)
    grace: Duration = Duration(10)
    guard: AuthdGuardConfig = AuthdGuardConfig()


@dataclass(frozen=True, slots=True)
class Config:
    """The whole ``pfm.toml``."""

    log: LogConfig = LogConfig()
    redis: RedisConfig = RedisConfig()
    policyd: PolicydConfig = PolicydConfig()
    directory: DirectoryConfig = DirectoryConfig()
    dns: DnsConfig = DnsConfig()
    postfix: PostfixConfig = PostfixConfig()
    metricsd: MetricsdConfig = MetricsdConfig()
    authd: AuthdConfig = AuthdConfig()
    source: str = ""


# --------------------------------------------------------------------------- loader


def config_path(argv_path: str | None, environ: Mapping[str, str]) -> str:
    """The file to load: ``--config``, else ``$PFM_CONFIG``, else the default path."""
    return argv_path or environ.get("PFM_CONFIG") or DEFAULT_PATH


def load_config(path: str | Path) -> Config:
    """Read, parse and validate a TOML file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"config file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"cannot read config file {p}: {exc}") from None
    return parse_config_text(text, source=str(p))


def parse_config_text(text: str, source: str = "<string>") -> Config:
    """Parse TOML text; errors carry the line of the offending key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError(
            "", f"TOML syntax error: {exc}", int(m.group(1)) if m else None, source
        ) from None
    try:
        return build_config(data, source=source)
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.message, _locate(text, exc.key), source) from None


def build_config(data: Mapping[str, Any], source: str = "") -> Config:
    """Build a :class:`Config` from an already-parsed mapping (what tests use)."""
    cfg = _convert(Config, {k: v for k, v in data.items()}, "")
    assert isinstance(cfg, Config)
    cfg = dataclasses.replace(cfg, source=source)
    _validate(cfg)
    return cfg


def _validate(cfg: Config) -> None:
    _validate_metricsd(cfg.metricsd)
    _validate_authd(cfg.authd)
    p = cfg.policyd
    if not p.listen:
        raise ConfigError("policyd.listen", "at least one listen address is needed")
    if p.max_connections < 1:
        raise ConfigError("policyd.max_connections", "must be at least 1")
    if p.memory_max_keys < 1000:
        raise ConfigError("policyd.memory_max_keys", "must be at least 1000")
    for name, lim in p.limits.items():
        base = f"policyd.limits.{name}"
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise ConfigError(base, "limit names use letters, digits, '_', '-', '.' (at most 64)")
        if not lim.key:
            raise ConfigError(f"{base}.key", "name at least one key part")
        if "global" in lim.key and len(lim.key) > 1:
            raise ConfigError(f"{base}.key", "'global' cannot be combined with other key parts")
        if len(set(lim.key)) != len(lim.key):
            raise ConfigError(f"{base}.key", "a key part is repeated")
        if not lim.windows:
            raise ConfigError(f"{base}.windows", "name at least one window such as '100/1h'")
        spans = [w.seconds for w in lim.windows]
        if len(set(spans)) != len(spans):
            raise ConfigError(f"{base}.windows", "two windows have the same period")
        if not 0 <= lim.ipv4_prefix <= 32:
            raise ConfigError(f"{base}.ipv4_prefix", "must be between 0 and 32")
        if not 0 <= lim.ipv6_prefix <= 128:
            raise ConfigError(f"{base}.ipv6_prefix", "must be between 0 and 128")
        if lim.action == "prepend" and not lim.prepend_header:
            raise ConfigError(f"{base}.prepend_header", "action 'prepend' needs a header line")
        if lim.prepend_header and not re.fullmatch(r"[!-9;-~]+:[^\r\n]*", lim.prepend_header):
            raise ConfigError(
                f"{base}.prepend_header", "must be a single 'Name: value' header line"
            )
        if any(ch in lim.reply for ch in "\r\n\0"):
            raise ConfigError(f"{base}.reply", "must be a single line")
        if "recipient" in lim.key and lim.unit == "messages":
            raise ConfigError(
                f"{base}.key", "a per-recipient key counts recipients: use unit = 'recipients'"
            )
        for subject, windows in lim.overrides.items():
            if windows and {w.seconds for w in windows} - set(spans):
                raise ConfigError(
                    f"{base}.overrides.{subject}",
                    "override windows must use the limit's periods "
                    f"({', '.join(_fmt_seconds(s) for s in spans)})",
                )
    for key in ("tempfail_action", "bad_request_action", "overload_action"):
        value = getattr(p, key)
        if not _ACTION_RE.match(value):
            raise ConfigError(f"policyd.{key}", f"not a Postfix access(5) action: {value!r}")


def _validate_authd(a: AuthdConfig) -> None:
    if not a.listen:
        raise ConfigError("authd.listen", "at least one listen address is needed")
    for i, spec in enumerate(a.listen):
        if spec.startswith("unix:") and not spec[5:].startswith("/"):
            raise ConfigError(f"authd.listen[{i}]", "the unix socket path must be absolute")
        if not spec.startswith("unix:") and _host_port_problem(spec):
            raise ConfigError(f"authd.listen[{i}]", str(_host_port_problem(spec)))
    for key in ("http_listen", "metrics_listen"):
        spec = getattr(a, key)
        if spec and not spec.startswith("unix:") and _host_port_problem(spec):
            raise ConfigError(f"authd.{key}", str(_host_port_problem(spec)))
    for key, value, low in (
        ("max_connections", a.max_connections, 1),
        ("max_pipeline", a.max_pipeline, 1),
        ("memory_max_keys", a.memory_max_keys, 1000),
        ("verify_workers", a.verify_workers, 0),
        ("verify_cache_size", a.verify_cache_size, 1),
    ):
        if value < low:
            raise ConfigError(f"authd.{key}", f"must be at least {low}")
    if a.verify_timeout <= 0:
        raise ConfigError("authd.verify_timeout", "must be positive")
    for i, service in enumerate(a.totp_services):
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", service):
            raise ConfigError(f"authd.totp_services[{i}]", f"{service!r} is not a service name")
    g = a.guard
    for key in ("per_ip", "per_login", "per_ip_login", "per_prefix"):
        if getattr(g, key).count < 1:
            raise ConfigError(f"authd.guard.{key}", "the count must be at least 1")
    if not 8 <= g.ipv4_prefix <= 32:
        raise ConfigError("authd.guard.ipv4_prefix", "must be between 8 and 32")
    if not 16 <= g.ipv6_prefix <= 128:
        raise ConfigError("authd.guard.ipv6_prefix", "must be between 16 and 128")
    if g.tarpit_max < g.tarpit_start:
        raise ConfigError("authd.guard.tarpit_max", "must be >= tarpit_start")
    if g.block_time <= 0:
        raise ConfigError("authd.guard.block_time", "must be positive")


def _host_port_problem(spec: str) -> str | None:
    """Why ``spec`` is not ``HOST:PORT`` / ``[IPv6]:PORT`` (None when it is)."""
    host, sep, port = spec.strip().rpartition(":")
    if not sep or not host or any(c.isspace() for c in host):
        return f"{spec!r} is not HOST:PORT (IPv6 as [::1]:PORT)"
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        return f"{spec!r}: IPv6 addresses need brackets, [::1]:PORT"
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        return f"{spec!r}: the port must be 0-65535"
    return None


def _validate_metricsd(m: MetricsdConfig) -> None:
    if not m.listen or (not m.listen.startswith("unix:") and _host_port_problem(m.listen)):
        raise ConfigError("metricsd.listen", _host_port_problem(m.listen) or "must not be empty")
    for key, value, low in (
        ("top_domains", m.top_domains, 1),
        ("max_sasl_usernames", m.max_sasl_usernames, 0),
        ("max_pending_lines", m.max_pending_lines, 100),
    ):
        if value < low:
            raise ConfigError(f"metricsd.{key}", f"must be at least {low}")
    if m.queue_timeout <= 0:
        raise ConfigError("metricsd.queue_timeout", "must be positive")
    seen: set[str] = set()
    for i, src in enumerate(m.sources):
        base = f"metricsd.sources[{i}]"
        if src.type == "file" and not src.path.startswith("/"):
            raise ConfigError(f"{base}.path", "a file source needs an absolute path")
        if src.type != "file" and src.path:
            raise ConfigError(f"{base}.path", f"only for type 'file', not {src.type!r}")
        if src.type == "syslog":
            problem = _host_port_problem(src.listen) if src.listen else "is required"
            if problem:
                raise ConfigError(f"{base}.listen", f"syslog source (HOST:PORT): {problem}")
        elif src.listen:
            raise ConfigError(f"{base}.listen", f"only for type 'syslog', not {src.type!r}")
        if src.type != "journald" and src.units:
            raise ConfigError(f"{base}.units", f"only for type 'journald', not {src.type!r}")
        if src.queue_size < 1:
            raise ConfigError(f"{base}.queue_size", "must be at least 1")
        ident = f"{src.type}:{src.path or src.listen or ','.join(src.units)}"
        if ident in seen:
            raise ConfigError(base, f"the same source is listed twice ({ident})")
        seen.add(ident)


_ACTION_RE = re.compile(
    r"^(OK|DUNNO|REJECT|DEFER|DEFER_IF_REJECT|DEFER_IF_PERMIT|HOLD|WARN|INFO|DISCARD"
    r"|PREPEND|BCC|FILTER|REDIRECT|[45]\d\d)(\s[^\r\n\0]*)?$",
    re.IGNORECASE,
)


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Convert a TOML value to the annotated type, raising ConfigError naming ``key``."""
    origin = get_origin(tp)
    try:
        if tp is Duration:
            return Duration.parse(value)
        if tp is Window:
            return Window.parse(value)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            return _convert_dataclass(tp, value, key)
        if tp is IPNetwork or (origin in (Union, types.UnionType) and _is_network_union(tp)):
            return parse_network(value)
        if origin is Literal:
            allowed = get_args(tp)
            if value not in allowed:
                choices = ", ".join(repr(a) for a in allowed if a != "")
                raise ConfigError(key, f"must be one of {choices}, not {value!r}")
            return value
        if origin is tuple:
            args = get_args(tp)
            item_tp = args[0]
            if isinstance(value, str) and item_tp is not Window:
                value = [value]
            if isinstance(value, str) and item_tp is Window:
                value = [value]
            if not isinstance(value, list):
                raise ConfigError(key, f"expected a list, got {_tname(value)}")
            return tuple(_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value))
        if origin in (Mapping, dict) or tp is Mapping:
            _, val_tp = get_args(tp)
            if not isinstance(value, dict):
                raise ConfigError(key, f"expected a table, got {_tname(value)}")
            out = {}
            for k, v in value.items():
                sub = f"{key}.{k}" if key else k
                if val_tp is LimitConfig and isinstance(v, dict):
                    v = {**v, "name": k}
                if val_tp == Override and v in ("unlimited", "none", []):
                    out[k] = ()
                    continue
                out[k] = _convert(val_tp, v, sub)
            return types.MappingProxyType(out)
        if tp is bool:
            if not isinstance(value, bool):
                raise ConfigError(key, f"expected true or false, got {_tname(value)}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(key, f"expected an integer, got {_tname(value)}")
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(key, f"expected a number, got {_tname(value)}")
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                raise ConfigError(key, f"expected a string, got {_tname(value)}")
            return value
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None
    raise ConfigError(key, f"unsupported type {tp!r}")  # pragma: no cover - schema bug


def _is_network_union(tp: Any) -> bool:
    return set(get_args(tp)) == {ipaddress.IPv4Network, ipaddress.IPv6Network}


def _tname(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


_HINTS: dict[type, dict[str, Any]] = {}


def _convert_dataclass(cls: type, value: Any, key: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a table, got {_tname(value)}")
    hints = _HINTS.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = hints
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs: dict[str, Any] = {}
    for name, raw in value.items():
        sub = f"{key}.{name}" if key else name
        if name not in fields:
            close = [f for f in fields if f.startswith(name[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(sub, f"unknown key{hint}")
        kwargs[name] = _convert(hints[name], raw, sub)
    for name, f in fields.items():
        if (
            name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            raise ConfigError(f"{key}.{name}" if key else name, "is required")
    return cls(**kwargs)


_HEADER_RE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


def _locate(text: str, key: str) -> int | None:
    """Best-effort line number of a dotted key in TOML source text."""
    if not key:
        return None
    parts = [p for p in re.split(r"\.(?![^\[]*\])", re.sub(r"\[\d+\]", "", key)) if p]
    table: list[str] = []
    best: int | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        m = _HEADER_RE.match(line)
        if m:
            table = [s.strip().strip('"') for s in m.group(1).split(".")]
            if table == parts:
                best = best or lineno
            continue
        km = re.match(r'^\s*("?)([^=\s"]+)\1\s*=', line)
        if not km:
            continue
        dotted = table + [s.strip().strip('"') for s in km.group(2).split(".")]
        if dotted == parts:
            return lineno
        if dotted == parts[: len(dotted)] and best is None:
            best = lineno
    return best


def locate_error(exc: ConfigError, path: str) -> ConfigError:
    """The same error with the source file and the key's line filled in (best effort)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ConfigError(exc.key, exc.message, exc.line, path)
    return ConfigError(exc.key, exc.message, exc.line or _locate(text, exc.key), path)


def read_secret_file(path: str) -> str:
    """Read a secret from a ``*_file`` setting (first line, stripped); never logged."""
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()[0].strip()
    except IndexError:
        return ""
    except OSError as exc:
        raise ConfigError("", f"cannot read secret file {path}: {exc.strerror}") from None
