"""The DNS records a mail domain needs, generated from ``[dns]`` settings (pure, no I/O).

Records are plain frozen values: ``name`` is an absolute lower-case A-label name with a
trailing dot, ``value`` is the record data as the resolver returns it (a TXT record's
strings joined, an MX record as ``PRIORITY HOST.``). :func:`render_zone` turns them into
zone-file lines, splitting long TXT data into quoted strings of at most 255 bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from services.config import DnsConfig
from services.directory.model import InvalidInput, normalize_address, normalize_domain

Purpose = Literal["mx", "spf", "dkim", "dmarc", "mta-sts", "tls-rpt"]
Algorithm = Literal["rsa", "ed25519"]

TXT_CHUNK = 255
"""A TXT character-string holds at most 255 bytes (RFC 1035 §3.3)."""
MTA_STS_MAX_AGE = 31_557_600
"""The largest ``max_age`` RFC 8461 §3.2 allows (about a year)."""


class DnsError(ValueError):
    """A bad setting or argument; ``field`` names it (``dns.mx_hosts``, ``domain`` ...)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}" if field_name else message)
        self.field = field_name


@dataclass(frozen=True, slots=True)
class DkimPublicKey:
    """What DNS needs of one DKIM key: its selector, algorithm and base64 ``p=`` value."""

    selector: str
    algorithm: Algorithm
    public_b64: str
    state: Literal["active", "retiring"] = "active"


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record."""

    name: str
    type: Literal["MX", "TXT"]
    value: str
    ttl: int
    purpose: Purpose
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (MX records also get ``priority`` and ``exchange``)."""
        out: dict[str, Any] = {
            "name": self.name,
            "ttl": self.ttl,
            "class": "IN",
            "type": self.type,
            "value": self.value,
            "purpose": self.purpose,
        }
        if self.type == "MX":
            prio, _, host = self.value.partition(" ")
            out["priority"] = int(prio)
            out["exchange"] = host
        else:
            out["strings"] = txt_strings(self.value)
        if self.note:
            out["note"] = self.note
        return out


@dataclass(frozen=True, slots=True)
class RecordSet:
    """Every record of a domain plus the MTA-STS policy file that goes with them."""

    domain: str
    records: tuple[Record, ...]
    mta_sts_policy: str
    mta_sts_policy_url: str
    dkim_selectors: tuple[str, ...] = field(default=())


# --------------------------------------------------------------------------- settings


def _invalid(exc: InvalidInput) -> DnsError:
    return DnsError(exc.field, str(exc).removeprefix(f"{exc.field}: "))


def _fill(template: str, domain: str) -> str:
    return template.replace("{domain}", domain)


def _check_text(value: str, field_name: str) -> str:
    value = value.strip()
    if not value.isascii() or not value.isprintable():
        raise DnsError(field_name, "must be printable ASCII on one line")
    return value


def mx_hosts(cfg: DnsConfig, domain: str, override: Sequence[str] = ()) -> tuple[str, ...]:
    """The MX host names (A-labels, no trailing dot): ``override``, else config, else mail.DOMAIN."""
    raw = tuple(override) or cfg.mx_hosts or ("mail.{domain}",)
    field_name = "--mx" if override else "dns.mx_hosts"
    hosts: list[str] = []
    for item in raw:
        try:
            host = normalize_domain(_fill(item, domain), field_name)
        except InvalidInput as exc:
            raise _invalid(exc) from None
        if host not in hosts:
            hosts.append(host)
    return tuple(hosts)


def _mailto_list(value: str, domain: str, field_name: str) -> str:
    parts = []
    for item in _fill(value, domain).split(","):
        addr = item.strip()
        if not addr:
            continue
        if addr.lower().startswith("mailto:"):
            addr = addr[7:]
        try:
            parts.append("mailto:" + normalize_address(addr, field_name))
        except InvalidInput as exc:
            raise _invalid(exc) from None
    return ",".join(parts)


def spf_value(cfg: DnsConfig, domain: str) -> str:
    """The SPF policy: ``[dns] spf`` or ``v=spf1 mx -all``."""
    value = _check_text(_fill(cfg.spf, domain), "dns.spf") if cfg.spf else "v=spf1 mx -all"
    head = value.split(" ", 1)[0].lower()
    if head != "v=spf1":
        raise DnsError("dns.spf", f"must start with 'v=spf1', not {value[:20]!r}")
    return " ".join(value.split())


def dmarc_value(cfg: DnsConfig, domain: str) -> str:
    """The DMARC policy record data."""
    tags = [f"v=DMARC1; p={cfg.dmarc_policy}"]
    if cfg.dmarc_rua:
        rua = _mailto_list(cfg.dmarc_rua, domain, "dns.dmarc_rua")
        if rua:
            tags.append(f"rua={rua}")
    if cfg.dmarc_ruf:
        ruf = _mailto_list(cfg.dmarc_ruf, domain, "dns.dmarc_ruf")
        if ruf:
            tags.append(f"ruf={ruf}")
            tags.append("fo=1")
    return "; ".join(tags)


def tls_rpt_value(cfg: DnsConfig, domain: str) -> str | None:
    """The TLS-RPT record data, or ``None`` when ``[dns] tls_rpt_rua`` is empty."""
    rua = _mailto_list(cfg.tls_rpt_rua, domain, "dns.tls_rpt_rua") if cfg.tls_rpt_rua else ""
    return f"v=TLSRPTv1; rua={rua}" if rua else None


def mta_sts_policy(cfg: DnsConfig, hosts: Sequence[str]) -> str:
    """The text of ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt`` (RFC 8461 §3.2)."""
    max_age = float(cfg.mta_sts_max_age)
    if max_age != int(max_age) or not 0 <= max_age <= MTA_STS_MAX_AGE:
        raise DnsError(
            "dns.mta_sts_max_age", f"must be whole seconds between 0 and {MTA_STS_MAX_AGE}"
        )
    lines = ["version: STSv1", f"mode: {cfg.mta_sts_mode}"]
    lines += [f"mx: {h}" for h in hosts]
    lines.append(f"max_age: {int(max_age)}")
    return "\n".join(lines) + "\n"


def mta_sts_id(policy: str) -> str:
    """A policy id that changes exactly when the policy text does (20 hex digits)."""
    return hashlib.sha256(policy.encode("ascii")).hexdigest()[:20]


def dkim_value(key: DkimPublicKey) -> str:
    """The DKIM key record data (RFC 6376 §3.6.1, RFC 8463 for ed25519)."""
    return f"v=DKIM1; k={key.algorithm}; p={key.public_b64}"


# --------------------------------------------------------------------------- records


def build_records(
    domain: str,
    cfg: DnsConfig,
    dkim_keys: Iterable[DkimPublicKey] = (),
    mx_override: Sequence[str] = (),
) -> RecordSet:
    """Every record ``domain`` needs; raises :class:`DnsError` naming a bad setting."""
    try:
        dom = normalize_domain(domain, "domain")
    except InvalidInput as exc:
        raise _invalid(exc) from None
    if not 0 <= cfg.ttl <= 2_147_483_647:
        raise DnsError("dns.ttl", "must be between 0 and 2147483647 seconds")
    if not 0 <= cfg.mx_priority <= 65535:
        raise DnsError("dns.mx_priority", "must be between 0 and 65535")
    ttl = cfg.ttl
    apex = dom + "."
    hosts = mx_hosts(cfg, dom, mx_override)
    recs: list[Record] = [Record(apex, "MX", f"{cfg.mx_priority} {h}.", ttl, "mx") for h in hosts]
    recs.append(Record(apex, "TXT", spf_value(cfg, dom), ttl, "spf"))
    selectors: list[str] = []
    for key in dkim_keys:
        note = "retiring: keep until pfm dns dkim retire" if key.state == "retiring" else ""
        name = f"{key.selector}._domainkey.{apex}"
        recs.append(Record(name, "TXT", dkim_value(key), ttl, "dkim", note))
        selectors.append(key.selector)
    recs.append(Record(f"_dmarc.{apex}", "TXT", dmarc_value(cfg, dom), ttl, "dmarc"))
    policy = mta_sts_policy(cfg, hosts)
    recs.append(
        Record(f"_mta-sts.{apex}", "TXT", f"v=STSv1; id={mta_sts_id(policy)}", ttl, "mta-sts")
    )
    tlsrpt = tls_rpt_value(cfg, dom)
    if tlsrpt:
        recs.append(Record(f"_smtp._tls.{apex}", "TXT", tlsrpt, ttl, "tls-rpt"))
    return RecordSet(
        domain=dom,
        records=tuple(recs),
        mta_sts_policy=policy,
        mta_sts_policy_url=f"https://mta-sts.{dom}/.well-known/mta-sts.txt",
        dkim_selectors=tuple(selectors),
    )


# --------------------------------------------------------------------------- rendering


def txt_strings(value: str) -> list[str]:
    """``value`` cut into character-strings of at most 255 bytes (UTF-8), never mid-character."""
    out: list[str] = []
    cur = ""
    size = 0
    for ch in value:
        n = len(ch.encode("utf-8"))
        if size + n > TXT_CHUNK:
            out.append(cur)
            cur, size = "", 0
        cur += ch
        size += n
    if cur or not out:
        out.append(cur)
    return out


def quote_txt(s: str) -> str:
    """One zone-file character-string: quoted, ``"`` and ``\\`` escaped, controls as ``\\DDD``."""
    parts = ['"']
    for ch in s:
        if ch in '"\\':
            parts.append("\\" + ch)
        elif " " <= ch <= "~":
            parts.append(ch)
        else:
            parts.extend(f"\\{b:03d}" for b in ch.encode("utf-8"))
    parts.append('"')
    return "".join(parts)


def render_record(rec: Record) -> str:
    """One zone-file line ``NAME TTL IN TYPE DATA``."""
    data = rec.value if rec.type == "MX" else " ".join(quote_txt(s) for s in txt_strings(rec.value))
    return f"{rec.name} {rec.ttl} IN {rec.type} {data}"


def render_zone(rs: RecordSet, comments: bool = True) -> str:
    """The records as zone-file text, with the MTA-STS policy as trailing comments."""
    lines: list[str] = []
    if comments:
        lines.append(f"; DNS records for {rs.domain} (generated by pfm dns records)")
    for rec in rs.records:
        if comments and rec.note:
            lines.append(f"; {rec.note}")
        lines.append(render_record(rec))
    if comments:
        lines.append(f"; mta-sts.{rs.domain} needs an A/AAAA (or CNAME) record and a valid")
        lines.append(f"; HTTPS certificate serving this policy at {rs.mta_sts_policy_url}:")
        lines.extend(f";   {line}" for line in rs.mta_sts_policy.splitlines())
    return "\n".join(lines) + "\n"
