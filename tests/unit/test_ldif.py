"""The pure LDIF writer and parser (RFC 2849 content records)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.directory.ldif import LdifError, parse_ldif, write_ldif


@pytest.mark.parametrize(
    ("value", "line"),
    [
        (b"plain", "cn: plain"),
        (b"", "cn:"),
        (b"has: colon inside", "cn: has: colon inside"),
        (b" leading space", "cn:: " + base64.b64encode(b" leading space").decode()),
        (b":leading colon", "cn:: " + base64.b64encode(b":leading colon").decode()),
        (b"<leading lt", "cn:: " + base64.b64encode(b"<leading lt").decode()),
        (b"trailing space ", "cn:: " + base64.b64encode(b"trailing space ").decode()),
        ("Jürgen".encode(), "cn:: " + base64.b64encode("Jürgen".encode()).decode()),
        (b"\x00\xffraw", "cn:: " + base64.b64encode(b"\x00\xffraw").decode()),
        (b"two\nlines", "cn:: " + base64.b64encode(b"two\nlines").decode()),
    ],
)
def test_values_are_written_plain_or_base64(value: bytes, line: str) -> None:
    """SAFE-STRING values are written as text; anything else as base64 (attr:: ...)."""
    text = write_ldif([("cn=x,dc=example,dc=org", {"cn": [value]})]).decode()
    assert text.splitlines()[3] == line
    assert parse_ldif(text.encode()) == [("cn=x,dc=example,dc=org", {"cn": [value]})]


def test_non_ascii_dn_is_base64_and_long_lines_fold() -> None:
    """A UTF-8 DN is written as dn:: and lines over 76 characters are folded."""
    dn = "mail=jörg@example.org,ou=mailboxes,dc=example,dc=org"
    long = b"x" * 200
    text = write_ldif([(dn, {"description": [long]})]).decode()
    lines = text.splitlines()
    assert lines[0] == "version: 1" and lines[2].startswith("dn:: ")
    assert all(len(ln) <= 76 for ln in lines)
    assert any(ln.startswith(" x") for ln in lines)
    assert parse_ldif(text.encode()) == [(dn, {"description": [long]})]


def test_parser_reads_comments_folding_crlf_and_repeated_attributes() -> None:
    """Comments (folded too), CRLF, folded values and repeated attributes are understood."""
    data = (
        b"# a comment\r\n"
        b"#  that is folded\r\n"
        b" onto a second line\r\n"
        b"version: 1\r\n"
        b"\r\n"
        b"dn: ou=domains,dc=exa\r\n"
        b" mple,dc=org\r\n"
        b"objectClass: organizationalUnit\r\n"
        b"# between attributes\r\n"
        b"ou: dom\r\n"
        b" ains\r\n"
        b"objectclass: top\r\n"
        b"\r\n"
        b"\r\n"
        b"dn: cn=b,dc=example,dc=org\n"
        b"cn:: Yg==\n"
        b"oathSecret:: AAEC/w==\n"
    )
    assert parse_ldif(data) == [
        (
            "ou=domains,dc=example,dc=org",
            {"objectClass": [b"organizationalUnit", b"top"], "ou": [b"domains"]},
        ),
        ("cn=b,dc=example,dc=org", {"cn": [b"b"], "oathSecret": [b"\x00\x01\x02\xff"]}),
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"cn: x\n", "line 1: a record must start with 'dn:'"),
        (b"dn: cn=x\n", "has no attributes"),
        (b"dn: cn=x\ncn:: !!!\n", "line 2: cn:: is not valid base64"),
        (b"dn: cn=x\ncn:< file:///etc/shadow\n", "line 2: URL values"),
        (b"dn: cn=x\nchangetype: delete\n", "change records are not supported"),
        (b"dn: cn=x\ncn: a\ndn: cn=y\n", "line 3: a second 'dn:'"),
        (b" folded\n", "line 1: continuation line"),
        (b"dn: cn=x\nnovalue\n", "line 2: expected 'attribute: value'"),
        (b"dn: cn=x\ncn: caf\xc3\xa9\n", "line 2: non-ASCII byte"),
        (b"version: 2\n", "unsupported LDIF version"),
        (b"dn: cn=x\nbad name: v\n", "is not an attribute description"),
    ],
)
def test_malformed_ldif_is_refused_with_the_line(data: bytes, message: str) -> None:
    """Malformed input raises LdifError saying what is wrong (and where, when it can)."""
    with pytest.raises(LdifError, match=message.replace("(", r"\(")):
        parse_ldif(data)


def test_writer_refuses_entries_without_values_and_bad_names() -> None:
    """An entry with no values, a bad attribute name, or a name LDIF reserves cannot be written."""
    with pytest.raises(LdifError, match="no attribute values"):
        write_ldif([("cn=x", {"cn": []})])
    with pytest.raises(LdifError, match="not an attribute description"):
        write_ldif([("cn=x", {"bad name": [b"v"]})])
    for reserved in ("dn", "DN", "changetype", "Control"):
        with pytest.raises(LdifError, match="read as LDIF syntax"):
            write_ldif([("cn=x", {reserved: [b"v"]})])


def test_empty_input_has_no_entries() -> None:
    """An empty file, or one with only a version line and comments, holds no entries."""
    assert parse_ldif(b"") == []
    assert parse_ldif(b"version: 1\n# nothing\n") == []
    assert write_ldif([]) == b"version: 1\n"


_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}(;[a-z0-9-]{1,8})?", fullmatch=True).filter(
    lambda n: n.lower() not in ("dn", "changetype", "control")  # the writer refuses those
)
_attrs = st.dictionaries(
    _names, st.lists(st.binary(max_size=120), min_size=1, max_size=4), min_size=1, max_size=6
).filter(lambda d: len({k.lower() for k in d}) == len(d))
_dns = st.text(st.characters(blacklist_categories=("Cs",)), max_size=90)
_entries = st.lists(st.tuples(_dns, _attrs), max_size=5)


@settings(max_examples=150, deadline=None)
@given(_entries)
def test_round_trip(entries: list[tuple[str, dict[str, list[bytes]]]]) -> None:
    """parse_ldif(write_ldif(x)) == x for any DNs, names and binary values."""
    assert parse_ldif(write_ldif(entries)) == entries
