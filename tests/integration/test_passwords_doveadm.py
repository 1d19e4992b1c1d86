"""Our password hashes against the real Dovecot: `doveadm pw -t` verifies ours, we verify its own."""

from __future__ import annotations

import random
import subprocess

import pytest

from services.directory.passwords import SCHEMES_WRITE, check_hash, hash_password, verify_password
from services.directory.shacrypt import sha_crypt
from tests.conftest import require_binary

pytestmark = pytest.mark.integration

PASSWORDS = ["correct horse battery", "pässwörd 🔑 with spaces ", "p$w{d}'\"\\`;|&<>*?"]
# doveadm pw -s: the schemes Dovecot writes that we read.
DOVEADM_SCHEMES = [
    "ARGON2ID",
    "ARGON2I",
    "BLF-CRYPT",
    "SHA512-CRYPT",
    "SHA256-CRYPT",
    "CRYPT",
    "SSHA",
    "SSHA256",
    "SSHA512",
    "PLAIN",
]


@pytest.fixture(scope="module")
def doveadm() -> str:
    """Path of the real doveadm binary."""
    return require_binary("doveadm")


def pw(doveadm: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `doveadm pw …` without any Dovecot config (-c /dev/null works for pw)."""
    return subprocess.run(
        [doveadm, "-c", "/dev/null", "pw", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def dovecot_verifies(doveadm: str, stored: str, password: str) -> bool:
    """True when `doveadm pw -t` accepts password for stored; False on its mismatch exit 75."""
    proc = pw(doveadm, "-t", stored, "-p", password)
    if proc.returncode == 0:
        assert "(verified)" in proc.stdout
        return True
    assert proc.returncode == 75, proc.stderr
    assert "Password mismatch" in proc.stderr
    return False


def dovecot_hash(doveadm: str, scheme: str, password: str, *extra: str) -> str:
    """A hash that `doveadm pw -s scheme` makes."""
    proc = pw(doveadm, "-s", scheme, "-p", password, *extra)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.removesuffix("\n")


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("scheme", SCHEMES_WRITE)
def test_dovecot_verifies_our_hashes(doveadm: str, scheme: str, password: str) -> None:
    """doveadm pw -t verifies each hash we write and refuses a wrong password for it."""
    stored = hash_password(password, scheme)
    assert dovecot_verifies(doveadm, stored, password)
    assert not dovecot_verifies(doveadm, stored, password + "x")


@pytest.mark.parametrize("scheme", DOVEADM_SCHEMES)
def test_we_verify_dovecot_hashes(doveadm: str, scheme: str) -> None:
    """A hash doveadm pw -s makes checks as its scheme and verifies here; a wrong password fails."""
    for password in PASSWORDS[:2]:
        stored = dovecot_hash(doveadm, scheme, password)
        assert check_hash(stored) == scheme
        assert verify_password(password, stored).ok
        assert not verify_password(password[:-1], stored).ok


@pytest.mark.parametrize(("scheme", "rounds"), [("SHA512-CRYPT", "20000"), ("BLF-CRYPT", "11")])
def test_we_verify_dovecot_hashes_with_rounds(doveadm: str, scheme: str, rounds: str) -> None:
    """doveadm pw -r hashes (rounds=20000, bcrypt cost 11) verify and need no rehash in scheme."""
    stored = dovecot_hash(doveadm, scheme, "password1", "-r", rounds)
    result = verify_password("password1", stored, preferred=scheme)
    assert result.ok
    assert not result.needs_rehash


@pytest.mark.parametrize("rounds", [1000, 5000, 12345])
@pytest.mark.parametrize("bits", [256, 512])
def test_dovecot_verifies_explicit_rounds(doveadm: str, bits: int, rounds: int) -> None:
    """SHA-crypt with an explicit rounds=N$ (256 and 512 bits) verifies with doveadm."""
    scheme = "{SHA256-CRYPT}" if bits == 256 else "{SHA512-CRYPT}"
    stored = scheme + sha_crypt(b"password1", "Abc./xyz0123", rounds, bits=bits)
    assert dovecot_verifies(doveadm, stored, "password1")
    assert verify_password("password1", stored).ok


def test_bcrypt_truncation_agrees_with_dovecot(doveadm: str) -> None:
    """Dovecot, like us, checks only the first 72 bytes of a BLF-CRYPT password."""
    long = "L" * 72
    ours = hash_password(long + "-tail", "BLF-CRYPT")
    assert dovecot_verifies(doveadm, ours, long + "-other")
    assert not dovecot_verifies(doveadm, ours, long[:-1])
    theirs = dovecot_hash(doveadm, "BLF-CRYPT", long + "-tail")
    assert verify_password(long + "-other", theirs).ok


def test_random_passwords_agree_both_ways_for_sha_crypt(doveadm: str) -> None:
    """For 15 random passwords, our pure SHA-crypt and Dovecot's libc crypt agree both ways."""
    rng = random.Random(20261202)
    alphabet = [chr(c) for c in range(0x21, 0x7F)] + list("äöüßéñ€😀 ")
    for _ in range(15):
        password = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 90))).strip() or "x"
        ours = hash_password(password, "SHA512-CRYPT")
        assert dovecot_verifies(doveadm, ours, password), password
        for scheme in ("SHA512-CRYPT", "SHA256-CRYPT"):
            assert verify_password(password, dovecot_hash(doveadm, scheme, password)).ok, password
