"""Pure mapping between directory objects and pfm LDAP entries (no server)."""

from __future__ import annotations

import pytest

from services.directory.ldap_dit import (
    Dit,
    address_of_app_password_dn,
    admin_from,
    alias_domain_from,
    alias_from,
    app_password_from,
    audit_from,
    audit_to_entry,
    domain_from,
    filter_value,
    mailbox_from,
    password_from_ldap,
    password_to_ldap,
    rdn_value,
    to_entry,
    totp_to_raw,
    unescape_rdn,
)
from services.directory.model import (
    Admin,
    Alias,
    AliasDomain,
    AppPassword,
    AuditEntry,
    Domain,
    InvalidInput,
    Mailbox,
)

DIT = Dit("dc=example,dc=org")


def test_mailbox_dn_is_derived_from_the_address() -> None:
    """A mailbox lives at mail=ADDRESS,ou=mailboxes,BASE so binds need no search."""
    assert (
        DIT.dn("mailbox", "alice@example.org")
        == "mail=alice@example.org,ou=mailboxes,dc=example,dc=org"
    )


@pytest.mark.parametrize(
    ("value", "escaped"),
    [("a,b=c", "a\\,b\\=c"), ("*)(uid=*", "*)(uid\\=*"), ("\\", "\\\\"), ("a+b", "a\\+b")],
)
def test_rdn_values_are_escaped(value: str, escaped: str) -> None:
    """DN specials (, = + \\) in a key are escaped and read back unchanged."""
    assert rdn_value(value) == escaped
    assert unescape_rdn(escaped) == value


def test_nul_in_a_dn_value_is_refused() -> None:
    """A NUL character can't be part of a key."""
    with pytest.raises(InvalidInput, match="NUL"):
        DIT.dn("admin", "a\x00b")


def test_filter_values_are_escaped() -> None:
    """Filter specials * ( ) \\ NUL become \\XX escapes."""
    assert filter_value("*)(uid=*") == "\\2a\\29\\28uid=\\2a"
    assert filter_value("\\\x00") == "\\5c\\00"


def test_app_password_dn_round_trips_the_address() -> None:
    """The mailbox address is recovered from an app password DN, escapes undone."""
    dn = DIT.app_password_dn("a+b=c@example.org", "ap-1")
    assert address_of_app_password_dn(dn) == "a+b=c@example.org"


@pytest.mark.parametrize(
    ("dovecot", "slapd"),
    [
        ("{SHA512-CRYPT}$6$salt$hash", "{CRYPT}$6$salt$hash"),
        ("{SHA256-CRYPT}$5$salt$hash", "{CRYPT}$5$salt$hash"),
        ("{BLF-CRYPT}$2y$05$abc", "{CRYPT}$2y$05$abc"),
        (
            "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$s$h",
            "{ARGON2}$argon2id$v=19$m=65536,t=3,p=1$s$h",
        ),
        ("{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$s$h", "{ARGON2}$argon2i$v=19$m=32768,t=4,p=1$s$h"),
        ("{SSHA}abcd", "{SSHA}abcd"),
        ("{SSHA512}abcd", "{SSHA512}abcd"),
    ],
)
def test_password_schemes_map_both_ways(dovecot: str, slapd: str) -> None:
    """Dovecot scheme names are stored in slapd's bind-verifiable form and mapped back."""
    assert password_to_ldap(dovecot) == slapd.encode()
    assert password_from_ldap(slapd.encode()) == dovecot


def test_bcrypt_2b_reads_as_blf_crypt() -> None:
    """A {CRYPT}$2b$ value (bcrypt package) reads back as {BLF-CRYPT}."""
    assert password_from_ldap(b"{CRYPT}$2b$12$x") == "{BLF-CRYPT}$2b$12$x"


def test_totp_secret_is_stored_raw_and_refuses_non_canonical_base32() -> None:
    """oathSecret holds raw key bytes; a secret that would not read back identically is refused."""
    assert totp_to_raw("JBSWY3DPEHPK3PXP") == b"Hello!\xde\xad\xbe\xef"
    with pytest.raises(InvalidInput, match="totp_secret"):
        totp_to_raw("jbswy3dpehpk3pxp")
    with pytest.raises(InvalidInput, match="totp_secret"):
        totp_to_raw("not base32!")


def _raw(attrs: dict[str, list[bytes]]) -> dict[str, list[bytes]]:
    return attrs


def test_mailbox_round_trip_with_totp() -> None:
    """A mailbox with TOTP maps to inetOrgPerson+pfmMailbox+OATH classes and back unchanged."""
    mb = Mailbox(
        address="alice@example.org",
        password_hash="{SHA512-CRYPT}$6$s$h",
        name="Alice Ä",
        quota=1024,
        active=False,
        limits={"send": ("500/1d", "50/1h")},
        totp_secret="JBSWY3DPEHPK3PXP",
        totp_last_step=12345,
        password_changed=1700000000.123456,
        created=1.5,
        modified=2.25,
    )
    dn, attrs = to_entry(mb, DIT)
    assert attrs["objectClass"] == [
        b"inetOrgPerson",
        b"pfmMailbox",
        b"oathTOTPUser",
        b"oathTOTPToken",
    ]
    assert attrs["oathTOTPToken"] == [dn.encode()]
    assert attrs["oathTOTPParams"] == [b"cn=totp,ou=oath,dc=example,dc=org"]
    assert attrs["userPassword"] == [b"{CRYPT}$6$s$h"]
    assert mailbox_from(_raw(attrs)) == mb


def test_mailbox_without_totp_has_no_oath_attributes() -> None:
    """No TOTP secret: no OATH classes or attributes, no empty values."""
    _dn, attrs = to_entry(Mailbox(address="bob@example.org"), DIT)
    assert not any(k.startswith("oath") for k in attrs)
    assert all(attrs.values())


@pytest.mark.parametrize(
    "obj",
    [
        Domain(name="example.org", description="d", max_mailboxes=3, limits={"x": ()}, created=1.0),
        Alias(address="@example.org", targets=("a@example.org", "b@example.net"), active=False),
        AliasDomain(name="example.net", target="example.org", created=3.0),
        Admin(name="a,b=c\\*)(x", role="global", domains=("example.org",)),
    ],
)
def test_objects_round_trip(obj: Domain | Alias | AliasDomain | Admin) -> None:
    """Domains, aliases, alias domains and admins survive the entry mapping unchanged."""
    _dn, attrs = to_entry(obj, DIT)
    back = {
        Domain: domain_from,
        Alias: alias_from,
        AliasDomain: alias_domain_from,
        Admin: admin_from,
    }
    assert back[type(obj)](_raw(attrs)) == obj  # type: ignore[operator]


def test_app_password_round_trip() -> None:
    """An app password maps to a child entry of its mailbox and back."""
    ap = AppPassword(id="ap-1", address="a@example.org", name="phone", password_hash="{SSHA}x",
                     scopes=("imap",), expires=5.0, created=1.0, last_used=2.0, last_ip="::1")  # fmt: skip
    dn, attrs = to_entry(ap, DIT)
    assert dn == "pfmAppPasswordId=ap-1,mail=a@example.org,ou=mailboxes,dc=example,dc=org"
    assert app_password_from(_raw(attrs), "a@example.org") == ap


def test_audit_entry_round_trip() -> None:
    """An audit entry keeps its exact timestamp and JSON before/after."""
    entry = AuditEntry(ts=1700000000.987654, actor="root", action="mailbox.add",
                       object="a@example.org", before=None, after={"quota": 1}, id=7)  # fmt: skip
    dn, attrs = audit_to_entry(entry, 7, DIT)
    assert dn == "pfmAuditId=7,ou=audit,dc=example,dc=org"
    assert attrs["pfmTimeSec"] == [b"1700000000"]
    assert audit_from(_raw(attrs)) == entry
