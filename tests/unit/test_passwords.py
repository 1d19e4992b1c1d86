"""Unit tests for services.directory.passwords and services.directory.shacrypt (pure logic)."""

from __future__ import annotations

import base64
import hashlib
import re

import argon2
import bcrypt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.directory.model import InvalidInput, scheme_of
from services.directory.passwords import (
    BCRYPT_COST,
    SCHEMES_READ,
    SCHEMES_WRITE,
    WEAK_SCHEMES,
    Verified,
    check_hash,
    generate_secret,
    hash_password,
    validate_new_password,
    verify_password,
)
from services.directory.shacrypt import sha_crypt, sha_crypt_verify

# Drepper's SHA-crypt.txt test vectors: (setting, password, expected).
SPEC_VECTORS = [
    ("$5$saltstring", "Hello world!", "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"),
    ("$5$rounds=10000$saltstringsaltstring", "Hello world!", "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA"),
    ("$5$rounds=5000$toolongsaltstring", "This is just a test", "$5$rounds=5000$toolongsaltstrin$Un/5jzAHMgOGZ5.mWJpuVolil07guHPvOW8mGRcvxa5"),
    ("$5$rounds=1400$anotherlongsaltstring", "a very much longer text to encrypt.  This one even stretches over morethan one line.", "$5$rounds=1400$anotherlongsalts$Rx.j8H.h8HjEDGomFU8bDkXm3XIUnzyxf12oP84Bnq1"),
    ("$5$rounds=77777$short", "we have a short salt string but not a short password", "$5$rounds=77777$short$JiO1O3ZpDAxGJeaDIuqCoEFysAe1mZNJRs3pw0KQRd/"),
    ("$5$rounds=123456$asaltof16chars..", "a short string", "$5$rounds=123456$asaltof16chars..$gP3VQ/6X7UUEW3HkBn2w1/Ptq2jxPyzV/cZKmF/wJvD"),
    ("$5$rounds=10$roundstoolow", "the minimum number is still observed", "$5$rounds=1000$roundstoolow$yfvwcWrQ8l/K0DAWyuPMDNHpIVlTQebY9l/gL972bIC"),
    ("$6$saltstring", "Hello world!", "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"),
    ("$6$rounds=10000$saltstringsaltstring", "Hello world!", "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."),
    ("$6$rounds=5000$toolongsaltstring", "This is just a test", "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0"),
    ("$6$rounds=1400$anotherlongsaltstring", "a very much longer text to encrypt.  This one even stretches over morethan one line.", "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1"),
    ("$6$rounds=77777$short", "we have a short salt string but not a short password", "$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaUeOxFmtlcGZelFl5CxtgfiAc0"),
    ("$6$rounds=123456$asaltof16chars..", "a short string", "$6$rounds=123456$asaltof16chars..$BtCwjqMJGx5hrJhZywWvt0RLE8uZ4oPwcelCjmw2kSYu.Ec6ycULevoBK25fs2xXgMNrCzIMVcgEJAstJeonj1"),
    ("$6$rounds=10$roundstoolow", "the minimum number is still observed", "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX."),
]  # fmt: skip

# Made by Debian's `doveadm pw -s SCHEME -p test` (Dovecot 2.3.19.1).
DOVECOT_MADE = [
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$++O/prl+GEpk5CocFYDIcA$/pv7FKeq/uVbgK6/vx4pxJTBdtaPAkJHuPBWsAHcTN4",
    "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$q1i80g4TDWDQY8diz7LXsA$QbyM8sEtDClhL8F8JAREAMK1HzSDAkwrLX+jG6g6/w4",
    "{BLF-CRYPT}$2y$05$vkZWVxDuHFl1tna.opcolufoYIHrrI8Ep8SN209fyw5mUjsQd5AQK",
    "{CRYPT}$2y$05$Rf33W5b7euLrkpgh6HtBJuPX/9nUGw.8NEEfd357XrlDPEcBNrMbW",
    "{SHA512-CRYPT}$6$lLyDGWrwni0xL5ex$KuziEpCGkc0hPS1N9HMgxctSB76k0svWzHzubUrSuJADQ6v679RJiHrIjssw82UfaneifLHp3ZhKtsxC9GTAN/",
    "{SHA512-CRYPT}$6$rounds=10000$ojWF7ODzI87T6CRN$2/ZchhhM0LHH3NVtx3rxx3O4P5k/W0bBGOYsO7pcAri6BoEaQo7uQQwubM0380TC7U532sUXWNxn3AQJi4vpo/",
    "{SHA256-CRYPT}$5$Z8yCFAZuLUjxLCwZ$QwmKD9c8Zqj/DaNsl0GcayCKV8fa7O0AtRgTbwD4QND",
    "{SSHA}HOR2h951AM6BvttcKMzQzI1b0jtdA/zn",
    "{SSHA256}INhg1ika++DlJdCFGgbREOhV5I3h/MD3v0pyJIP+t4zCFOUt",
    "{SSHA512}rtTkQvw1dJ/RmYTPKj/Jnk7XX/Jed4Z5QFrp3RIxm4dNIeFE9HADz5PIokRFtCLp0IvhGbFy0pdpkA7vD9TOWf3gZEY=",
    "{PLAIN}test",
]

TYPEABLE = st.characters(exclude_categories=["Cs"], exclude_characters="\0")
ARGON2_P4 = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=4)


def ssha(password: str, salt: bytes, scheme: str = "SSHA") -> str:
    """An SSHA-family hash built independently of the module under test."""
    algo = {"SSHA": hashlib.sha1, "SSHA256": hashlib.sha256, "SSHA512": hashlib.sha512}[scheme]
    digest = algo(password.encode() + salt).digest()
    return f"{{{scheme}}}" + base64.b64encode(digest + salt).decode()


# --------------------------------------------------------------------------- SHA-crypt


@pytest.mark.parametrize(("setting", "password", "expected"), SPEC_VECTORS)
def test_sha_crypt_matches_the_spec_vectors(setting: str, password: str, expected: str) -> None:
    """sha_crypt reproduces every test vector of Drepper's SHA-crypt specification."""
    bits = 256 if setting.startswith("$5$") else 512
    rest = setting[3:]
    rounds = None
    if rest.startswith("rounds="):
        spec, _, rest = rest.partition("$")
        rounds = int(spec[len("rounds=") :])
    assert sha_crypt(password.encode(), rest, rounds, bits=bits) == expected


@pytest.mark.parametrize(("setting", "password", "expected"), SPEC_VECTORS[:4] + SPEC_VECTORS[7:11])
def test_sha_crypt_verify_accepts_spec_vectors_and_rejects_others(
    setting: str, password: str, expected: str
) -> None:
    """sha_crypt_verify is true for a spec vector's password and false for another one."""
    assert sha_crypt_verify(password.encode(), expected)
    assert not sha_crypt_verify(password.encode() + b"x", expected)


def test_sha_crypt_refuses_bad_arguments() -> None:
    """A salt with '$' or an unknown digest size is a ValueError."""
    with pytest.raises(ValueError, match="salt"):
        sha_crypt(b"x", "a$b")
    with pytest.raises(ValueError, match="bits"):
        sha_crypt(b"x", "salt", bits=384)


# --------------------------------------------------------------------------- writing


@pytest.mark.parametrize("scheme", SCHEMES_WRITE)
def test_round_trip_for_each_write_scheme(scheme: str) -> None:
    """A hash of each write scheme checks as that scheme, verifies, and refuses a wrong password."""
    stored = hash_password("corrèct hörse 🐎", scheme)
    assert scheme_of(stored) == scheme
    assert check_hash(stored) == scheme
    good = verify_password("corrèct hörse 🐎", stored, preferred=scheme)
    assert good == Verified(ok=True, needs_rehash=False, weak=False, scheme=scheme)
    bad = verify_password("correct horse 🐎", stored, preferred=scheme)
    assert bad == Verified(ok=False, needs_rehash=False, weak=False, scheme=scheme)


def test_hash_formats_look_like_dovecots() -> None:
    """Written hashes use Dovecot's prefixes: argon2id m=65536,t=3,p=1, bcrypt $2y$, $6$ 16-char salt."""
    assert re.fullmatch(
        r"\{ARGON2ID\}\$argon2id\$v=19\$m=65536,t=3,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}",
        hash_password("password1"),
    )
    assert re.fullmatch(
        rf"\{{BLF-CRYPT\}}\$2y\${BCRYPT_COST:02d}\$[./A-Za-z0-9]{{53}}",
        hash_password("password1", "BLF-CRYPT"),
    )
    assert re.fullmatch(
        r"\{SHA512-CRYPT\}\$6\$[./A-Za-z0-9]{16}\$[./A-Za-z0-9]{86}",
        hash_password("password1", "sha512-crypt"),
    )


def test_hashes_are_salted() -> None:
    """Two hashes of the same password differ."""
    assert hash_password("password1", "SHA512-CRYPT") != hash_password("password1", "SHA512-CRYPT")


@pytest.mark.parametrize("scheme", ["SSHA", "PLAIN", "MD5-CRYPT", "", "ARGON2I"])
def test_hash_password_refuses_read_only_or_unknown_schemes(scheme: str) -> None:
    """Only SCHEMES_WRITE can be written; anything else is InvalidInput naming password_scheme."""
    with pytest.raises(InvalidInput) as err:
        hash_password("password1", scheme)
    assert err.value.field == "password_scheme"


@pytest.mark.parametrize("password", ["pass\0word", "bad\udcffsurrogate\ud800"])
def test_hash_password_refuses_untypeable_passwords(password: str) -> None:
    """A password with NUL or an unencodable surrogate is InvalidInput, not a traceback."""
    with pytest.raises(InvalidInput) as err:
        hash_password(password, "SHA512-CRYPT")
    assert err.value.field == "password"


def test_bcrypt_uses_the_first_72_bytes_like_libc() -> None:
    """BLF-CRYPT hashes and verifies long passwords by their first 72 bytes, as Dovecot does."""
    long = "x" * 72
    stored = hash_password(long + "tail", "BLF-CRYPT")
    assert verify_password(long + "other", stored, preferred="BLF-CRYPT").ok
    assert not verify_password("x" * 71, stored, preferred="BLF-CRYPT").ok


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("stored", DOVECOT_MADE)
def test_dovecot_made_hashes_verify(stored: str) -> None:
    """Hashes doveadm wrote for 'test' verify, and 'tesT' does not."""
    scheme = check_hash(stored)
    assert scheme in SCHEMES_READ
    assert verify_password("test", stored).ok
    miss = verify_password("tesT", stored)
    assert not miss.ok
    assert not miss.needs_rehash
    assert miss.weak == (scheme in WEAK_SCHEMES)


@pytest.mark.parametrize("scheme", ["SSHA", "SSHA256", "SSHA512"])
@pytest.mark.parametrize("salt", [b"\x00", b"salt", bytes(range(32))])
def test_ssha_family_verifies_any_salt_length_as_weak(scheme: str, salt: bytes) -> None:
    """SSHA hashes with 1-32 byte salts verify, flagged weak and needing a rehash."""
    stored = ssha("s3cret pass", salt, scheme)
    assert verify_password("s3cret pass", stored) == Verified(
        ok=True, needs_rehash=True, weak=True, scheme=scheme
    )
    assert not verify_password("s3cret pasS", stored).ok


def test_plain_verifies_as_weak() -> None:
    """{PLAIN} compares the text and is weak."""
    assert verify_password("clear text", "{PLAIN}clear text") == Verified(True, True, True, "PLAIN")
    assert not verify_password("clear tex", "{PLAIN}clear text").ok


def test_scheme_names_are_case_insensitive() -> None:
    """{ssha} reads like {SSHA}, reported upper case."""
    stored = ssha("password1", b"abcd").replace("{SSHA}", "{ssha}")
    assert check_hash(stored) == "SSHA"
    assert verify_password("password1", stored).scheme == "SSHA"


@pytest.mark.parametrize("prefix", ["$2a$", "$2b$", "$2y$"])
def test_bcrypt_prefixes_are_all_read(prefix: str) -> None:
    """$2a$, $2b$ and $2y$ bcrypt hashes all verify, under BLF-CRYPT and CRYPT."""
    made = bcrypt.hashpw(b"password1", bcrypt.gensalt(4)).decode()
    body = prefix + made[4:]
    for scheme in ("BLF-CRYPT", "CRYPT"):
        assert verify_password("password1", f"{{{scheme}}}{body}").ok
        assert not verify_password("password2", f"{{{scheme}}}{body}").ok


def test_crypt_scheme_reads_sha_crypt() -> None:
    """{CRYPT}$6$… and {CRYPT}$5$… verify with SHA-crypt."""
    for _, password, expected in (SPEC_VECTORS[0], SPEC_VECTORS[7]):
        assert verify_password(password, "{CRYPT}" + expected).ok
        assert not verify_password("nope", "{CRYPT}" + expected).ok


def test_empty_stored_hash_never_matches() -> None:
    """A mailbox without a password (stored "") refuses every password without raising."""
    assert verify_password("", "") == Verified(ok=False, needs_rehash=False, weak=False, scheme="")
    assert not verify_password("anything", "").ok


@pytest.mark.parametrize("password", ["", "te\0st", "test\udcff\ud800", b"test"])
def test_untypeable_passwords_never_match(password: object) -> None:
    """An empty password, one with NUL or an unencodable surrogate, or a non-string is a mismatch."""
    assert not verify_password(password, "{PLAIN}test").ok  # type: ignore[arg-type]


# --------------------------------------------------------------------------- rehash policy


def test_argon2_with_other_parameters_needs_rehash() -> None:
    """An argon2id hash with other m/t/p (argon2-cffi's p=4) verifies but needs a rehash."""
    stored = "{ARGON2ID}" + ARGON2_P4.hash("password1")
    assert verify_password("password1", stored) == Verified(True, True, False, "ARGON2ID")


def test_another_scheme_than_preferred_needs_rehash() -> None:
    """A match in a scheme other than the preferred one needs a rehash; the same one does not."""
    stored = "{SHA512-CRYPT}" + SPEC_VECTORS[7][2]
    assert verify_password("Hello world!", stored, preferred="ARGON2ID").needs_rehash
    assert not verify_password("Hello world!", stored, preferred="SHA512-CRYPT").needs_rehash
    assert verify_password("Hello world!", "{SHA256-CRYPT}" + SPEC_VECTORS[0][2]).needs_rehash


def test_sha512_crypt_with_fewer_rounds_needs_rehash() -> None:
    """SHA512-CRYPT below 5000 rounds needs a rehash even when preferred; more rounds do not."""
    few = "{SHA512-CRYPT}" + SPEC_VECTORS[10][2]  # rounds=1400
    more = "{SHA512-CRYPT}" + SPEC_VECTORS[8][2]  # rounds=10000
    assert verify_password(SPEC_VECTORS[10][1], few, preferred="SHA512-CRYPT").needs_rehash
    assert not verify_password(SPEC_VECTORS[8][1], more, preferred="SHA512-CRYPT").needs_rehash


def test_bcrypt_below_our_cost_needs_rehash() -> None:
    """Dovecot's cost-5 bcrypt needs a rehash even when BLF-CRYPT is preferred."""
    dovecot = DOVECOT_MADE[2]
    assert verify_password("test", dovecot, preferred="BLF-CRYPT").needs_rehash


def test_preferred_must_be_a_write_scheme() -> None:
    """verify_password refuses a preferred scheme we can't write."""
    with pytest.raises(InvalidInput) as err:
        verify_password("test", "{PLAIN}test", preferred="SSHA")
    assert err.value.field == "password_scheme"


# --------------------------------------------------------------------------- malformed


MALFORMED = [
    "$6$saltsalt$" + "a" * 86,  # no scheme prefix
    "{}secretvalue",
    "{HUNTER2SECRET}abc",
    "{\u017fsha}" + base64.b64encode(b"x" * 24).decode(),  # long s upper-cases to S
    "{MD5-CRYPT}$1$saltsalt$abcdefghijklmnopqrstuv",
    "{SHA256.HEX}" + "ab" * 32,
    "{ARGON2ID}$argon2i$v=19$m=65536,t=3,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
    "{ARGON2ID}$argon2id$v=16$m=65536,t=3,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
    "{ARGON2ID}$argon2id$v=19$m=4194304,t=3,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
    "{ARGON2ID}$argon2id$v=19$m=65536,t=0,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFza",  # 21 chars: no base64
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$$aGFzaGhhc2hoYXNoaGFzaA",
    "{BLF-CRYPT}$2y$05$short",
    "{BLF-CRYPT}$2x$05$" + "a" * 53,
    "{BLF-CRYPT}$2y$31$" + "a" * 53,
    "{BLF-CRYPT}$2y$03$" + "a" * 53,
    "{SHA512-CRYPT}$6$salt$" + "a" * 85,
    "{SHA512-CRYPT}$5$salt$" + "a" * 43,
    "{SHA256-CRYPT}$6$salt$" + "a" * 86,
    "{SHA512-CRYPT}$6$rounds=10$salt$" + "a" * 86,
    "{SHA512-CRYPT}$6$rounds=2000000$salt$" + "a" * 86,
    "{SHA512-CRYPT}$6$rounds=05000$salt$" + "a" * 86,
    "{SHA512-CRYPT}$6$saltsaltsaltsalts$" + "a" * 86,
    "{SHA512-CRYPT}$6$salt$" + "a" * 85 + "*",
    "{SSHA}not base64!",
    "{SSHA}" + base64.b64encode(b"x" * 20).decode(),  # digest only, no salt
    "{SSHA512}" + base64.b64encode(b"x" * 64).decode(),
    "{CRYPT}abDESsalt123",
    "{CRYPT}$1$saltsalt$abcdefghijklmnopqrstuv",
    "{PLAIN}nul\0inside",
    "{PLAIN}",
    "{PLAIN}" + "x" * 3000,
]


@pytest.mark.parametrize("stored", MALFORMED)
def test_malformed_hashes_are_invalid_input_without_the_hash(stored: str) -> None:
    """check_hash and verify_password refuse malformed hashes naming password_hash, never echoing it."""
    for call in (lambda: check_hash(stored), lambda: verify_password("password1", stored)):
        with pytest.raises(InvalidInput) as err:
            call()
        assert err.value.field == "password_hash"
        message = str(err.value)
        assert stored[-10:] not in message  # the salt/digest part
        assert "HUNTER2" not in message.upper()


def test_known_dovecot_scheme_is_named_in_the_error() -> None:
    """An unsupported but real Dovecot scheme is named, so the admin knows what to convert."""
    with pytest.raises(InvalidInput, match="MD5-CRYPT"):
        check_hash("{MD5-CRYPT}$1$saltsalt$abcdefghijklmnopqrstuv")


@pytest.mark.parametrize("stored", ["", None, 42])
def test_check_hash_refuses_empty_and_non_strings(stored: object) -> None:
    """check_hash refuses "" and non-strings with InvalidInput."""
    with pytest.raises(InvalidInput):
        check_hash(stored)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- new secrets


def test_generate_secret_is_four_groups_of_four_typeable_symbols() -> None:
    """The default app password is xxxx-xxxx-xxxx-xxxx without ambiguous or upper-case symbols."""
    secret = generate_secret()
    assert re.fullmatch(r"[a-km-np-z2-9]{4}(-[a-km-np-z2-9]{4}){3}", secret)
    validate_new_password(secret)


def test_generate_secret_length_and_uniqueness() -> None:
    """nbytes sets the symbol count; 1000 secrets are all distinct and use all 32 symbols."""
    assert len(generate_secret(10).replace("-", "")) == 10
    many = {generate_secret() for _ in range(1000)}
    assert len(many) == 1000
    assert len(set("".join(many)) - {"-"}) == 32


@pytest.mark.parametrize("nbytes", [0, 7, 65, 2.5])
def test_generate_secret_refuses_silly_sizes(nbytes: object) -> None:
    """Fewer than 8 or more than 64 symbols is a ValueError."""
    with pytest.raises(ValueError, match="nbytes"):
        generate_secret(nbytes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("", "empty"),
        ("short", "shorter than 8"),
        ("x" * 257, "longer than 256 bytes"),
        ("ü" * 129, "longer than 256 bytes"),
        ("pass\0word", "NUL"),
        ("pass\nword", "line breaks"),
        ("pass\rword", "line breaks"),
        ("bad\ud800surrogate", "not valid text"),
        (None, "string"),
    ],
)
def test_validate_new_password_refuses(password: object, reason: str) -> None:
    """Empty, short, over-long, NUL/CR/LF, unencodable and non-string passwords are refused."""
    with pytest.raises(InvalidInput, match=reason) as err:
        validate_new_password(password)  # type: ignore[arg-type]
    assert err.value.field == "password"


@pytest.mark.parametrize(
    "password", ["12345678", "x" * 256, "pässwörd 🔑 with spaces ", "\ttabbed\t"]
)
def test_validate_new_password_accepts(password: str) -> None:
    """8 characters to 256 bytes of any text without NUL or line breaks are accepted."""
    validate_new_password(password)


# --------------------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=1, max_size=80).filter(lambda s: "\0" not in s and s.isprintable()))
def test_sha512_crypt_round_trip(password: str) -> None:
    """Any printable password verifies against its SHA512-CRYPT hash and differs from password+'x'."""
    stored = hash_password(password, "SHA512-CRYPT")
    assert verify_password(password, stored, preferred="SHA512-CRYPT").ok
    assert not verify_password(password + "x", stored, preferred="SHA512-CRYPT").ok


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_check_hash_only_ever_raises_invalid_input(stored: str) -> None:
    """Arbitrary text is either a known scheme or InvalidInput whose message never contains it."""
    try:
        assert check_hash(stored) in SCHEMES_READ
    except InvalidInput as exc:
        body = stored.partition("}")[2]
        if len(body) >= 8:
            assert body not in str(exc)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["SSHA", "SSHA256", "SSHA512", "PLAIN"]).flatmap(
        lambda scheme: st.tuples(st.just(scheme), st.text(TYPEABLE, min_size=1, max_size=60))
    ),
    st.binary(min_size=1, max_size=16),
)
def test_cheap_schemes_round_trip(case: tuple[str, str], salt: bytes) -> None:
    """SSHA-family and PLAIN hashes of any password verify it, weak, and need a rehash."""
    scheme, password = case
    stored = "{PLAIN}" + password if scheme == "PLAIN" else ssha(password, salt, scheme)
    assert verify_password(password, stored) == Verified(True, True, True, scheme)
