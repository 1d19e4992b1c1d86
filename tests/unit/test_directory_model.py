"""Normalisation and helpers of the directory model (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.directory.model import (
    Alias,
    AppPassword,
    Domain,
    InvalidInput,
    Mailbox,
    display_domain,
    domain_of,
    key_of,
    normalize_address,
    normalize_alias_source,
    normalize_domain,
    normalize_local_part,
    public,
    scheme_of,
    split_address,
)

SECRET_HASH = "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c2FsdA$c2VjcmV0aGFzaA"
SECRET_TOTP = "JBSWY3DPEHPK3PXP"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("example.org", "example.org"),
        ("Example.ORG", "example.org"),
        ("  example.org.  ", "example.org"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("mail.例え.jp", "mail.xn--r8jz45g.jp"),
        ("a-b.c-d.example", "a-b.c-d.example"),
    ],
)
def test_normalize_domain(raw: str, expected: str) -> None:
    """Domains are trimmed, lower-cased and converted to A-labels."""
    assert normalize_domain(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("localhost", "two labels"),
        ("-bad.example", "not a valid"),
        ("bad-.example", "not a valid"),
        ("a..example", "not a valid"),
        ("under_score.example", "not a valid"),
        ("192.0.2.1", "IP address"),
        ("a" * 64 + ".example", "not a valid"),
        (".".join(["abcdefghi"] * 26) + ".org", "253"),
        ("xn--zz.example", "not a valid IDN"),
    ],
)
def test_normalize_domain_refuses(raw: str, reason: str) -> None:
    """Invalid domains raise InvalidInput naming the field and why."""
    with pytest.raises(InvalidInput, match=reason) as err:
        normalize_domain(raw, "domain")
    assert err.value.field == "domain"
    assert str(err.value).startswith("domain: ")


def test_normalize_domain_refuses_non_strings() -> None:
    """A non-string domain is refused with a clear message, not a TypeError."""
    with pytest.raises(InvalidInput, match="must be a string"):
        normalize_domain(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Bob", "bob"),
        ("first.last", "first.last"),
        ("a+tag", "a+tag"),
        ("o'neil", "o'neil"),
        ("x" * 64, "x" * 64),
    ],
)
def test_normalize_local_part(raw: str, expected: str) -> None:
    """Local parts are ASCII dot-atoms, lower-cased."""
    assert normalize_local_part(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("x" * 65, "longer than 64"),
        ("jörg", "non-ASCII"),
        ('"quoted"', "not a valid local part"),
        ("a..b", "not a valid local part"),
        (".a", "not a valid local part"),
        ("a b", "not a valid local part"),
    ],
)
def test_normalize_local_part_refuses(raw: str, reason: str) -> None:
    """Empty, too long, non-ASCII and quoted local parts are refused."""
    with pytest.raises(InvalidInput, match=reason):
        normalize_local_part(raw)


def test_normalize_address() -> None:
    """An address gets a lower-case local part and an A-label domain."""
    assert normalize_address(" Anna@Bücher.Example ") == "anna@xn--bcher-kva.example"
    assert split_address("Bob@Example.org") == ("bob", "example.org")


@pytest.mark.parametrize("raw", ["no-at-sign", "@example.org", "bob@", "bob@localhost"])
def test_normalize_address_refuses(raw: str) -> None:
    """Strings that aren't full addresses raise InvalidInput naming the field."""
    with pytest.raises(InvalidInput) as err:
        normalize_address(raw, "target")
    assert err.value.field == "target"


def test_alias_source_allows_catch_all() -> None:
    """An alias source may be '@domain' (catch-all), normalised like a domain."""
    assert normalize_alias_source("@Example.ORG") == "@example.org"
    assert normalize_alias_source("Info@Example.org") == "info@example.org"
    assert domain_of("@example.org") == "example.org"
    with pytest.raises(InvalidInput):
        normalize_alias_source("@nodot")


def test_display_domain_shows_u_labels() -> None:
    """Stored A-labels are shown to humans as U-labels; plain names are unchanged."""
    assert display_domain("xn--bcher-kva.example") == "bücher.example"
    assert display_domain("example.org") == "example.org"


def test_secrets_stay_out_of_repr_and_public() -> None:
    """Password hashes and TOTP secrets appear in neither repr() nor public()."""
    mb = Mailbox("bob@example.org", SECRET_HASH, totp_secret=SECRET_TOTP)
    ap = AppPassword("ap-1", "bob@example.org", "phone", SECRET_HASH)
    for obj in (mb, ap):
        assert SECRET_HASH not in repr(obj)
        assert SECRET_HASH not in str(public(obj))
    assert SECRET_TOTP not in repr(mb) and SECRET_TOTP not in str(public(mb))
    assert public(mb)["totp_enrolled"] is True
    assert public(mb)["password_scheme"] == "ARGON2ID"


def test_public_is_json_shaped() -> None:
    """public() turns tuples into lists and limit mappings into dicts of lists."""
    d = Domain("example.org", limits={"send": ("10/1m",)})
    assert public(d)["limits"] == {"send": ["10/1m"]}
    assert public(Alias("a@example.org", ("b@example.org",)))["targets"] == ["b@example.org"]


def test_key_of_each_kind() -> None:
    """key_of() is the name, address or id, depending on the kind."""
    assert key_of(Domain("example.org")) == "example.org"
    assert key_of(Mailbox("bob@example.org")) == "bob@example.org"
    assert key_of(AppPassword("ap-1", "bob@example.org")) == "ap-1"


@pytest.mark.parametrize(
    ("value", "scheme"),
    [
        ("{ARGON2ID}$argon2id$x", "ARGON2ID"),
        ("{ssha512}abc", "SSHA512"),
        ("plain", ""),
        ("{}x", ""),
    ],
)
def test_scheme_of(value: str, scheme: str) -> None:
    """scheme_of() reads the '{SCHEME}' prefix, upper-cased, or '' without one."""
    assert scheme_of(value) == scheme


# --------------------------------------------------------------------------- properties

_label = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?", fullmatch=True)
_tld = st.from_regex(r"[a-zA-Z]{2,6}", fullmatch=True)
_domains = st.builds(
    lambda ls, t: ".".join([*ls, t]), st.lists(_label, min_size=1, max_size=4), _tld
)
_unicode_labels = st.text(
    alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyzäöüßéñçøåæ"), min_size=1, max_size=12
)
_idn_domains = st.builds(lambda a, t: f"{a}.{t}", _unicode_labels, _tld)
_local = st.from_regex(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\.[A-Za-z0-9_+-]{1,10}){0,2}", fullmatch=True
)


@given(_domains)
def test_domain_normalisation_is_idempotent(raw: str) -> None:
    """Normalising an already normalised ASCII domain changes nothing."""
    once = normalize_domain(raw)
    assert normalize_domain(once) == once
    assert once == once.lower()


@given(_idn_domains)
def test_idn_normalisation_is_idempotent(raw: str) -> None:
    """IDN domains normalise to an ASCII A-label form that normalises to itself."""
    try:
        once = normalize_domain(raw)
    except InvalidInput:
        return  # some generated labels are not valid IDNA (that is normalize_domain's call)
    assert once.isascii()
    assert normalize_domain(once) == once
    assert normalize_domain(display_domain(once)) == once


@given(_local, _domains)
def test_address_normalisation_is_idempotent(local: str, domain: str) -> None:
    """Normalising a normalised address changes nothing, and case never matters."""
    once = normalize_address(f"{local}@{domain}")
    assert normalize_address(once) == once
    assert normalize_address(once.upper()) == once
