"""Zone-file parsing (pure) and comparing a zone with the records we would publish."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.config import DnsConfig
from services.dns.check import check_zone, tags
from services.dns.records import (
    DkimPublicKey,
    Record,
    RecordSet,
    build_records,
    render_record,
    render_zone,
)
from services.dns.zonefile import ZoneError, ZoneRecord, parse_ttl, parse_zone

ZONE = """\
$ORIGIN example.org.
$TTL 1h
@   IN  SOA ns1 hostmaster.example.org. (
        2026120201 ; serial
        2h 1h 1w 5m )
    IN  NS  ns1
@   300 IN MX 10 mail
        IN 600 MX 20 backup.example.net.
        TXT "v=spf1 mx " "-all" ; a comment "with quotes"
mail    A   192.0.2.25
s1._domainkey IN TXT ( "v=DKIM1; k=rsa; "
                       "p=AB\\"C\\\\D\\059E" )
_dmarc  TXT "v=DMARC1;p=reject"
$ORIGIN sub
www CNAME @
$TTL 90
x.example.com. in txt unquoted-word
"""


def test_golden_parse() -> None:
    """$ORIGIN, $TTL, @, blank owners, TTL/class order, parens, escapes and comments all parse."""
    recs = parse_zone(ZONE)
    got = [(r.name, r.ttl, r.type, r.value, r.line) for r in recs]
    assert got == [
        ("example.org.", 3600, "SOA", "ns1 hostmaster.example.org. 2026120201 2h 1h 1w 5m", 3),
        ("example.org.", 3600, "NS", "ns1.example.org.", 6),
        ("example.org.", 300, "MX", "10 mail.example.org.", 7),
        ("example.org.", 600, "MX", "20 backup.example.net.", 8),
        ("example.org.", 3600, "TXT", "v=spf1 mx -all", 9),
        ("mail.example.org.", 3600, "A", "192.0.2.25", 10),
        ("s1._domainkey.example.org.", 3600, "TXT", 'v=DKIM1; k=rsa; p=AB"C\\D;E', 11),
        ("_dmarc.example.org.", 3600, "TXT", "v=DMARC1;p=reject", 13),
        ("www.sub.example.org.", 3600, "CNAME", "sub.example.org.", 15),
        ("x.example.com.", 90, "TXT", "unquoted-word", 17),
    ]
    assert recs[4].rdata == ("v=spf1 mx ", "-all")


def test_initial_origin_argument_and_crlf() -> None:
    """Without $ORIGIN the caller's origin applies; CRLF line ends are fine."""
    recs = parse_zone("@ 60 IN MX 5 mx\r\nfoo TXT hi\r\n", origin="example.org")
    assert [(r.name, r.value) for r in recs] == [
        ("example.org.", "5 mx.example.org."),
        ("foo.example.org.", "hi"),
    ]


@pytest.mark.parametrize(
    ("text", "value"),
    [("3600", 3600), ("1h", 3600), ("1h30m", 5400), ("1W", 604800), ("2d3s", 172803)],
)
def test_ttl_units(text: str, value: int) -> None:
    """TTLs accept seconds and BIND units."""
    assert parse_ttl(text, 1) == value


@pytest.mark.parametrize(
    ("text", "line", "msg"),
    [
        ('$ORIGIN example.org.\n@ TXT "open\n', 2, "unterminated"),
        ("$ORIGIN example.org.\n\n@ SOA a b ( 1 2\n 3 4 5\n", 3, "never closed"),
        ("$ORIGIN example.org.\n@ TXT x )\n", 2, "without a matching"),
        ("$ORIGIN example.org.\nhello world\n", 2, "unknown record type"),
        ("$INCLUDE other.zone\n", 1, "not supported"),
        ("$FOO bar\n", 1, "unknown directive"),
        ("www A 192.0.2.1\n", 1, "no $ORIGIN"),
        ("$ORIGIN example.org.\n@ MX high mail\n", 2, "priority"),
        ("$ORIGIN example.org.\n@ MX 10\n", 2, "MX needs"),
        ("$ORIGIN example.org.\n  A 192.0.2.1\n", 2, "no previous owner"),
        ("$ORIGIN example.org.\n@ IN\n", 2, "type missing"),
        ("$ORIGIN example.org.\n@ A\n", 2, "without data"),
        ("$ORIGIN example.org.\n@ A 1\n\0\0\n", 3, "NUL"),
        ("$TTL forever\n", 1, "invalid TTL"),
    ],
)
def test_errors_name_the_line(text: str, line: int, msg: str) -> None:
    """Garbage raises ZoneError carrying the offending line number and a clear message."""
    with pytest.raises(ZoneError) as exc:
        parse_zone(text)
    assert exc.value.line == line
    assert msg in exc.value.message
    assert str(exc.value).startswith(f"line {line}: ")


# --------------------------------------------------------------------------- round trip

_label = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_domains = st.lists(_label, min_size=1, max_size=3).map(lambda ls: ".".join([*ls, "example"]))
_txt = st.text(st.characters(min_codepoint=1, max_codepoint=0x2FF), min_size=0, max_size=700)


@settings(max_examples=150, deadline=None)
@given(domain=_domains, values=st.lists(_txt, min_size=1, max_size=4), prio=st.integers(0, 65535))
def test_parse_render_round_trip(domain: str, values: list[str], prio: int) -> None:
    """parse(render(records)) gives back the same names, types, TTLs and values."""
    apex = domain + "."
    recs = [Record(apex, "MX", f"{prio} mx.{apex}", 60, "mx")]
    recs += [Record(f"t{i}.{apex}", "TXT", v, 300 + i, "spf") for i, v in enumerate(values)]
    text = "\n".join(render_record(r) for r in recs) + "\n"
    parsed = parse_zone(text)
    assert [(p.name, p.type, p.ttl, p.value) for p in parsed] == [
        (r.name, r.type, r.ttl, r.value) for r in recs
    ]


@settings(max_examples=50, deadline=None)
@given(domain=_domains, sel=_label, p=st.from_regex(r"[A-Za-z0-9+/]{300,500}", fullmatch=True))
def test_generated_zone_round_trips(domain: str, sel: str, p: str) -> None:
    """A whole generated record set (with comments) parses back to the same records."""
    rs = build_records(domain, DnsConfig(), [DkimPublicKey(sel, "rsa", p)])
    parsed = parse_zone(render_zone(rs))
    assert [(z.name, z.type, z.value) for z in parsed] == [
        (r.name, r.type, r.value) for r in rs.records
    ]
    assert check_zone(rs, parsed).ok


# --------------------------------------------------------------------------- check

P = "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE="


def _rs(**kw: object) -> RecordSet:
    cfg = dataclasses.replace(DnsConfig(), mx_hosts=("mx1.example.org", "mx2.example.org"), **kw)  # type: ignore[arg-type]
    return build_records("example.org", cfg, [DkimPublicKey("s1", "ed25519", P)])


def _zone(rs: RecordSet, drop: str = "", extra: str = "") -> list[ZoneRecord]:
    lines = [render_record(r) for r in rs.records if r.purpose != drop]
    return parse_zone("\n".join(lines) + "\n" + extra)


def test_check_all_ok() -> None:
    """A zone made from our own records has nothing missing, different or extra."""
    rs = _rs()
    res = check_zone(rs, _zone(rs))
    assert res.ok
    assert res.counts() == {"ok": 7, "missing": 0, "different": 0, "extra": 0}


def test_check_missing_dmarc() -> None:
    """A zone without _dmarc reports it missing with the expected value."""
    rs = _rs()
    res = check_zone(rs, _zone(rs, drop="dmarc"))
    assert not res.ok
    (f,) = [f for f in res.findings if f.status != "ok"]
    assert (f.status, f.name, f.expected) == (
        "missing",
        "_dmarc.example.org.",
        "v=DMARC1; p=quarantine; rua=mailto:postmaster@example.org",
    )


def test_check_tag_lists_ignore_spacing_and_order() -> None:
    """DMARC/DKIM tags compare as sets: spacing and order differences are still ok."""
    rs = _rs()
    extra = (
        '_dmarc.example.org. IN TXT "v=DMARC1;rua=mailto:Postmaster@example.org;  p=QUARANTINE"\n'
        f's1._domainkey.example.org. IN TXT "v=DKIM1;k=ed25519;" "p={P[:20]} {P[20:]}"\n'
    )
    zone = [z for z in _zone(rs) if z.name.split(".")[0] not in ("_dmarc", "s1")]
    zone += parse_zone(extra)
    assert check_zone(rs, zone).ok


def test_check_dkim_p_is_case_sensitive() -> None:
    """A DKIM key differing only in letter case is reported different."""
    rs = _rs()
    zone = [z for z in _zone(rs) if not z.name.startswith("s1.")]
    zone += parse_zone(f's1._domainkey.example.org. TXT "v=DKIM1; k=ed25519; p={P.lower()}"\n')
    res = check_zone(rs, zone)
    assert [(f.status, f.purpose) for f in res.findings if f.status != "ok"] == [
        ("different", "dkim")
    ]


def test_check_mx_priority_different_and_extra_mx() -> None:
    """An MX with another priority is different; an unexpected MX host is extra."""
    rs = _rs()
    zone = [z for z in _zone(rs) if z.type != "MX"]
    zone += parse_zone(
        "example.org. MX 10 mx1.example.org.\nexample.org. MX 50 mx2.example.org.\n"
        "example.org. MX 90 old.example.org.\n"
    )
    res = check_zone(rs, zone)
    bad = [(f.status, f.found) for f in res.findings if f.purpose == "mx" and f.status != "ok"]
    assert bad == [("different", "50 mx2.example.org."), ("extra", "90 old.example.org.")]
    assert not res.ok


def test_check_two_spf_records_and_foreign_dkim() -> None:
    """Two SPF TXT records: one ok, one extra with the permerror note; unknown selectors are extra."""
    rs = _rs()
    zone = _zone(
        rs,
        extra='example.org. TXT "v=spf1 a -all"\nexample.org. TXT "google-site-verification=x"\n'
        'old._domainkey.example.org. TXT "v=DKIM1; p="\n',
    )
    res = check_zone(rs, zone)
    assert res.ok
    extras = [(f.purpose, f.name, f.note[:20]) for f in res.findings if f.status == "extra"]
    assert extras == [
        ("spf", "example.org.", "more than one SPF re"),
        ("dkim", "old._domainkey.example.org.", "selector not managed"),
    ]


def test_check_spf_different() -> None:
    """An SPF record with other mechanisms is different (whitespace alone is not)."""
    rs = _rs()
    zone = _zone(rs, drop="spf", extra='@ TXT "v=spf1   mx   -all"\n'.replace("@", "example.org."))
    assert check_zone(rs, zone).ok
    zone = _zone(rs, drop="spf", extra='example.org. TXT "v=spf1 mx ~all"\n')
    res = check_zone(rs, zone)
    assert [(f.status, f.found) for f in res.findings if f.purpose == "spf"] == [
        ("different", "v=spf1 mx ~all")
    ]


def test_check_without_dkim_key_reports_missing() -> None:
    """With no DKIM key generated, check reports DKIM missing and how to create it."""
    rs = build_records("example.org", DnsConfig())
    res = check_zone(rs, parse_zone(render_zone(rs)))
    (f,) = [f for f in res.findings if f.status != "ok"]
    assert f.status == "missing" and "pfm dns dkim generate example.org" in f.note


def test_tags_parser() -> None:
    """Tag lists lower-case names and values except case-sensitive tags, dropping spaces."""
    assert tags(" V=DKIM1 ; P=Ab C; ", frozenset({"p"})) == {"v": "dkim1", "p": "AbC"}
