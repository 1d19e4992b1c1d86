"""Compare a parsed zone with the records ``pfm dns records`` would publish (pure).

Only the records we manage are looked at: the apex MX set and SPF TXT, ``*._domainkey``,
``_dmarc``, ``_mta-sts`` and ``_smtp._tls`` TXT. Tag-list records (DKIM, DMARC, MTA-STS,
TLS-RPT) compare as tag sets, so spacing and tag order don't matter; SPF compares with
whitespace collapsed; MX compares (priority, host) pairs. TTLs are not compared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from .records import Record, RecordSet
from .zonefile import ZoneRecord

Status = Literal["ok", "missing", "different", "extra"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One expected or found record and how they compare."""

    status: Status
    purpose: str
    name: str
    type: str
    expected: str | None = None
    found: str | None = None
    line: int | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Every finding for one domain."""

    domain: str
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        """Nothing is missing or different (extra records alone are fine)."""
        return not any(f.status in ("missing", "different") for f in self.findings)

    def counts(self) -> dict[str, int]:
        """Number of findings per status."""
        out = {"ok": 0, "missing": 0, "different": 0, "extra": 0}
        for f in self.findings:
            out[f.status] += 1
        return out


def tags(value: str, case_sensitive: frozenset[str] = frozenset()) -> dict[str, str]:
    """A ``tag=value; ...`` record as a mapping (names lower-case, spaces dropped)."""
    out: dict[str, str] = {}
    for part in value.split(";"):
        name, eq, val = part.partition("=")
        name = name.strip().lower()
        if not name and not eq:
            continue
        val = "".join(val.split())
        out[name] = val if name in case_sensitive else val.lower()
    return out


def _spf(value: str) -> str:
    return " ".join(value.lower().split())


def _is_spf(value: str) -> bool:
    v = value.strip().lower()
    return v == "v=spf1" or v.startswith("v=spf1 ")


def normalized(purpose: str, value: str) -> object:
    """The comparable form of a record value of ``purpose``."""
    if purpose == "spf":
        return _spf(value)
    if purpose == "dkim":
        return tags(value, frozenset({"p"}))
    return tags(value)


def check_zone(rs: RecordSet, zone: Sequence[ZoneRecord]) -> CheckResult:
    """Compare ``zone`` with ``rs``; findings in the order of ``rs`` then extras."""
    apex = rs.domain + "."
    recs = [z for z in zone if z.rclass == "IN"]
    findings: list[Finding] = []
    findings += _check_mx(rs, [z for z in recs if z.name == apex and z.type == "MX"])

    def txt_at(name: str, pred: Callable[[str], bool] = lambda _v: True) -> list[ZoneRecord]:
        return [z for z in recs if z.name == name and z.type == "TXT" and pred(z.value)]

    seen_dkim: set[str] = set()
    for rec in rs.records:
        if rec.type != "TXT":
            continue
        if rec.purpose == "spf":
            found = txt_at(apex, _is_spf)
            many = "more than one SPF record is a permerror (RFC 7208 §4.5)"
            findings += _compare(rec, found, many if len(found) > 1 else "")
        else:
            findings += _compare(rec, txt_at(rec.name))
            if rec.purpose == "dkim":
                seen_dkim.add(rec.name)
    dkim_suffix = "._domainkey." + apex
    if not rs.dkim_selectors:
        findings.append(
            Finding(
                "missing",
                "dkim",
                "*" + dkim_suffix,
                "TXT",
                note=f"no DKIM key yet: run 'pfm dns dkim generate {rs.domain}'",
            )
        )
    for z in recs:
        if z.type == "TXT" and z.name.endswith(dkim_suffix) and z.name not in seen_dkim:
            findings.append(
                Finding(
                    "extra",
                    "dkim",
                    z.name,
                    "TXT",
                    found=z.value,
                    line=z.line,
                    note="selector not managed by pfm (retired, or another signer?)",
                )
            )
        if z.type == "SPF" and z.name == apex:
            findings.append(
                Finding(
                    "extra",
                    "spf",
                    z.name,
                    "SPF",
                    found=z.value,
                    line=z.line,
                    note="the SPF record type is obsolete (RFC 7208 §14.1): publish TXT only",
                )
            )
    return CheckResult(rs.domain, tuple(findings))


def _compare(rec: Record, found: list[ZoneRecord], note: str = "") -> list[Finding]:
    if not found:
        return [Finding("missing", rec.purpose, rec.name, rec.type, expected=rec.value)]
    want = normalized(rec.purpose, rec.value)
    match = next((z for z in found if normalized(rec.purpose, z.value) == want), None)
    out: list[Finding] = []
    first = match or found[0]
    status: Status = "ok" if match else "different"
    out.append(
        Finding(status, rec.purpose, rec.name, rec.type, rec.value, first.value, first.line, note)
    )
    for z in found:
        if z is not first:
            out.append(
                Finding("extra", rec.purpose, rec.name, rec.type, None, z.value, z.line, note)
            )
    return out


def _check_mx(rs: RecordSet, found: list[ZoneRecord]) -> list[Finding]:
    out: list[Finding] = []
    by_host = {z.rdata[1]: z for z in found}
    for rec in rs.records:
        if rec.type != "MX":
            continue
        prio, _, host = rec.value.partition(" ")
        z = by_host.pop(host, None)
        if z is None:
            out.append(Finding("missing", "mx", rec.name, "MX", expected=rec.value))
        else:
            status: Status = "ok" if int(z.rdata[0]) == int(prio) else "different"
            out.append(Finding(status, "mx", rec.name, "MX", rec.value, z.value, z.line))
    for z in by_host.values():
        out.append(
            Finding("extra", "mx", z.name, "MX", found=z.value, line=z.line, note="not in [dns] mx")
        )
    return out
