"""Password hashes in Dovecot's ``{SCHEME}…`` format: make, check and verify them (no I/O).

What we write (:data:`SCHEMES_WRITE`) verifies with ``doveadm pw -t``, and what Dovecot writes
with ``doveadm pw -s`` verifies here:

* ``ARGON2ID`` (default): ``$argon2id$v=19$m=65536,t=3,p=1$…`` — Dovecot's own parameters.
* ``BLF-CRYPT``: bcrypt, written ``$2y$`` like Dovecot, cost :data:`BCRYPT_COST`; ``$2a$``/
  ``$2b$`` are read too. Passwords are cut at 72 bytes, as libc's bcrypt does.
* ``SHA512-CRYPT`` (and reading ``SHA256-CRYPT``): Drepper's SHA-crypt, 5000 rounds by default.
* Read only: ``ARGON2I``, ``SSHA``/``SSHA256``/``SSHA512`` (base64 of digest + salt),
  ``PLAIN`` and ``CRYPT`` (libc ``crypt()`` strings of the ``$2y$``/``$5$``/``$6$`` kinds).

Hashing and verifying cost 1-250 ms of CPU: call these from a thread, never on an event loop.
(argon2 and bcrypt release the GIL; the pure-Python SHA-crypt, ~3-6 ms, does not.)
Nothing here logs, and no error message or ``repr`` contains a password or a hash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

import argon2
import bcrypt
from argon2.exceptions import VerificationError
from argon2.low_level import Type, verify_secret

from services.directory.model import InvalidInput, scheme_of
from services.directory.shacrypt import ROUNDS_DEFAULT, sha_crypt, sha_crypt_verify

SCHEMES_WRITE: tuple[str, ...] = ("ARGON2ID", "BLF-CRYPT", "SHA512-CRYPT")
SCHEMES_READ: tuple[str, ...] = (
    *SCHEMES_WRITE,
    "ARGON2I",
    "SHA256-CRYPT",
    "SSHA",
    "SSHA256",
    "SSHA512",
    "PLAIN",
    "CRYPT",
)
WEAK_SCHEMES = frozenset({"PLAIN", "SSHA", "SSHA256", "SSHA512"})
"""Schemes that verify, flagged ``weak`` (fast unsalted-ish digests or clear text)."""

ARGON2_MEMORY_KIB = 65536  # Dovecot's defaults
ARGON2_TIME = 3
ARGON2_LANES = 1
ARGON2_SALT_LEN = 16
ARGON2_HASH_LEN = 32
BCRYPT_COST = 11
"""~120 ms here, the same budget as the default ARGON2ID (~150 ms); above OWASP's minimum of 10."""
SHA_CRYPT_ROUNDS = ROUNDS_DEFAULT  # 5000, Dovecot's default (no ``rounds=`` in the output)

# Bounds on imported hashes, so one stored value can't make a login take minutes or GiBs.
MAX_STORED_LEN = 2048
MAX_ARGON2_MEMORY_KIB = 1 << 20  # 1 GiB
MAX_ARGON2_TIME = 100
MAX_ARGON2_LANES = 64
MAX_BCRYPT_COST = 16  # ~4 s here
MAX_SHA_CRYPT_ROUNDS = 1_000_000  # ~0.5 s in pure Python

PASSWORD_MIN = 8
PASSWORD_MAX = 256  # bytes (UTF-8); see validate_new_password
BCRYPT_MAX_BYTES = 72

_B64 = "A-Za-z0-9+/"
_ARGON2 = re.compile(
    rf"\$argon2(id|i)\$v=19\$m=(\d{{1,10}}),t=(\d{{1,10}}),p=(\d{{1,3}})"
    rf"\$([{_B64}]{{11,86}})\$([{_B64}]{{6,86}})"
)
_BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
_SHA_CRYPT = re.compile(
    r"\$([56])\$(?:rounds=([1-9]\d{0,9})\$)?([!-#%-9<-~]{0,16})\$([./0-9A-Za-z]+)"
)
_SHA_CRYPT_LEN = {"5": 43, "6": 86}
_SSHA_DIGEST = {"SSHA": hashlib.sha1, "SSHA256": hashlib.sha256, "SSHA512": hashlib.sha512}

_ARGON2_HASHER = argon2.PasswordHasher(
    time_cost=ARGON2_TIME,
    memory_cost=ARGON2_MEMORY_KIB,
    parallelism=ARGON2_LANES,
    hash_len=ARGON2_HASH_LEN,
    salt_len=ARGON2_SALT_LEN,
    type=Type.ID,
)

_CRYPT_SALT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# `doveadm pw -l` (2.3.19): names we may echo in an error (anything else could be a secret).
_DOVECOT_SCHEMES = frozenset({
    "ARGON2I", "ARGON2ID", "BLF-CRYPT", "CLEAR", "CLEARTEXT", "CRAM-MD5", "CRYPT", "DES-CRYPT",
    "DIGEST-MD5", "HMAC-MD5", "LDAP-MD5", "MD5", "MD5-CRYPT", "OTP", "PBKDF2", "PLAIN",
    "PLAIN-MD4", "PLAIN-MD5", "PLAIN-TRUNC", "SCRAM-SHA-1", "SCRAM-SHA-256", "SHA", "SHA1",
    "SHA256", "SHA256-CRYPT", "SHA512", "SHA512-CRYPT", "SMD5", "SSHA", "SSHA256", "SSHA512",
})  # fmt: skip

SYMBOLS = "abcdefghijkmnpqrstuvwxyz23456789"
"""32 symbols (5 bits each): lower-case letters and digits without 0/o and 1/l."""


@dataclass(frozen=True, slots=True)
class Verified:
    """The outcome of :func:`verify_password` (holds no secret)."""

    ok: bool
    needs_rehash: bool  # only ever True when ok: store hash_password(password, preferred)
    weak: bool  # the stored scheme is in WEAK_SCHEMES (warn, suggest a reset)
    scheme: str  # the stored scheme, upper case; "" for an empty stored hash


# --------------------------------------------------------------------------- parsing


def _split(stored: object) -> tuple[str, str]:
    """``(SCHEME, body)`` of a ``{SCHEME}body`` string, or InvalidInput (never echoing it)."""
    if not isinstance(stored, str):
        raise InvalidInput("password_hash", "must be a string")
    if not stored:
        raise InvalidInput("password_hash", "is empty")
    if len(stored) > MAX_STORED_LEN:
        raise InvalidInput("password_hash", f"is longer than {MAX_STORED_LEN} characters")
    scheme = scheme_of(stored)
    if not scheme:
        raise InvalidInput("password_hash", "needs a {SCHEME} prefix, e.g. {ARGON2ID}")
    if "." in scheme:
        raise InvalidInput("password_hash", "encoding suffixes ({SCHEME.HEX}) are not supported")
    if scheme not in SCHEMES_READ or not stored[1 : stored.find("}")].isascii():
        what = f"scheme {scheme}" if scheme in _DOVECOT_SCHEMES else "an unknown scheme"
        raise InvalidInput("password_hash", f"has {what}; supported: {', '.join(SCHEMES_READ)}")
    return scheme, stored[len(scheme) + 2 :]


def _bad(scheme: str, why: str) -> InvalidInput:
    return InvalidInput("password_hash", f"malformed {scheme} hash: {why}")


def _check_argon2(scheme: str, body: str) -> re.Match[str]:
    m = _ARGON2.fullmatch(body)
    if not m or m.group(1).upper() != scheme[len("ARGON2") :]:
        raise _bad(scheme, f"expected $argon2{scheme[6:].lower()}$v=19$m=…,t=…,p=…$salt$hash")
    memory, time_cost, lanes = int(m.group(2)), int(m.group(3)), int(m.group(4))
    if not 1 <= lanes <= MAX_ARGON2_LANES or not 1 <= time_cost <= MAX_ARGON2_TIME:
        raise _bad(scheme, f"t must be 1-{MAX_ARGON2_TIME} and p 1-{MAX_ARGON2_LANES}")
    if not 8 * lanes <= memory <= MAX_ARGON2_MEMORY_KIB:
        raise _bad(scheme, f"m must be between 8*p and {MAX_ARGON2_MEMORY_KIB} KiB")
    if len(m.group(5)) % 4 == 1 or len(m.group(6)) % 4 == 1:
        raise _bad(scheme, "the salt or hash is not valid base64")
    return m


def _check_bcrypt(scheme: str, body: str) -> int:
    m = _BCRYPT.fullmatch(body)
    if not m:
        raise _bad(scheme, "expected $2y$NN$ and 53 characters of salt and hash")
    cost = int(m.group(1))
    if not 4 <= cost <= MAX_BCRYPT_COST:
        raise _bad(scheme, f"the cost must be 4-{MAX_BCRYPT_COST}")
    return cost


def _check_sha_crypt(scheme: str, body: str, kind: str | None) -> int:
    m = _SHA_CRYPT.fullmatch(body)
    prefix = "$5$" if kind == "5" else "$6$" if kind == "6" else "$5$ or $6$"
    if not m or (kind and m.group(1) != kind) or len(m.group(4)) != _SHA_CRYPT_LEN[m.group(1)]:
        raise _bad(scheme, f"expected {prefix}[rounds=N$]salt$hash")
    rounds = int(m.group(2)) if m.group(2) else SHA_CRYPT_ROUNDS
    if not 1000 <= rounds <= MAX_SHA_CRYPT_ROUNDS:
        raise _bad(scheme, f"rounds must be 1000-{MAX_SHA_CRYPT_ROUNDS}")
    return rounds


def _decode_ssha(scheme: str, body: str) -> tuple[bytes, bytes]:
    try:
        raw = base64.b64decode(body.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise _bad(scheme, "not valid base64") from None
    size = _SSHA_DIGEST[scheme]().digest_size
    if len(raw) <= size:
        raise _bad(scheme, f"shorter than its {size}-byte digest plus a salt")
    return raw[:size], raw[size:]


def _check_body(scheme: str, body: str) -> None:
    if scheme.startswith("ARGON2"):
        _check_argon2(scheme, body)
    elif scheme == "BLF-CRYPT":
        _check_bcrypt(scheme, body)
    elif scheme in ("SHA512-CRYPT", "SHA256-CRYPT"):
        _check_sha_crypt(scheme, body, "6" if scheme == "SHA512-CRYPT" else "5")
    elif scheme == "CRYPT":
        if body.startswith("$2"):
            _check_bcrypt(scheme, body)
        elif body.startswith(("$5$", "$6$")):
            _check_sha_crypt(scheme, body, None)
        else:
            raise _bad(scheme, "only $2y$ (bcrypt), $5$ and $6$ (SHA-crypt) are supported")
    elif scheme in _SSHA_DIGEST:
        _decode_ssha(scheme, body)
    elif scheme == "PLAIN" and (not body or "\0" in body):
        raise _bad(scheme, "empty or contains NUL")


def check_hash(stored: str) -> str:
    """The scheme of a well-formed importable ``{SCHEME}…`` hash, else :class:`InvalidInput`."""
    scheme, body = _split(stored)
    _check_body(scheme, body)
    return scheme


# --------------------------------------------------------------------------- hashing


def _utf8(password: str) -> bytes:
    return password.encode("utf-8", "surrogateescape")


def hash_password(password: str, scheme: str = "ARGON2ID") -> str:
    """``{SCHEME}…`` of password, as Dovecot stores it (``scheme`` one of SCHEMES_WRITE)."""
    scheme = scheme.upper() if isinstance(scheme, str) else ""
    if scheme not in SCHEMES_WRITE:
        raise InvalidInput("password_scheme", f"must be one of {', '.join(SCHEMES_WRITE)}")
    if not isinstance(password, str):
        raise InvalidInput("password", "must be a string")
    try:
        secret = _utf8(password)
    except UnicodeEncodeError:
        raise InvalidInput("password", "is not valid text") from None
    if b"\0" in secret:
        raise InvalidInput("password", "contains NUL")
    if scheme == "ARGON2ID":
        return "{ARGON2ID}" + _ARGON2_HASHER.hash(secret)
    if scheme == "BLF-CRYPT":
        setting = b"$2y" + bcrypt.gensalt(BCRYPT_COST)[3:]
        return "{BLF-CRYPT}" + bcrypt.hashpw(secret[:BCRYPT_MAX_BYTES], setting).decode("ascii")
    salt = "".join(secrets.choice(_CRYPT_SALT_ALPHABET) for _ in range(16))
    return "{SHA512-CRYPT}" + sha_crypt(secret, salt, bits=512)


# --------------------------------------------------------------------------- verifying


def _matches(scheme: str, body: str, secret: bytes) -> bool:
    if scheme.startswith("ARGON2"):
        kind = Type.ID if scheme == "ARGON2ID" else Type.I
        try:
            return verify_secret(body.encode("ascii"), secret, kind)
        except VerificationError:
            return False
    if scheme == "BLF-CRYPT" or (scheme == "CRYPT" and body.startswith("$2")):
        return bcrypt.checkpw(secret[:BCRYPT_MAX_BYTES], body.encode("ascii"))
    if scheme in ("SHA512-CRYPT", "SHA256-CRYPT", "CRYPT"):
        return sha_crypt_verify(secret, body)
    if scheme in _SSHA_DIGEST:
        digest, salt = _decode_ssha(scheme, body)
        return hmac.compare_digest(_SSHA_DIGEST[scheme](secret + salt).digest(), digest)
    return hmac.compare_digest(secret, _utf8(body))  # PLAIN


def _needs_rehash(scheme: str, body: str, preferred: str) -> bool:
    if scheme != preferred or scheme in WEAK_SCHEMES:
        return True
    if scheme == "ARGON2ID":
        m = _check_argon2(scheme, body)
        params = (int(m.group(2)), int(m.group(3)), int(m.group(4)))
        return params != (ARGON2_MEMORY_KIB, ARGON2_TIME, ARGON2_LANES)
    if scheme == "BLF-CRYPT":
        return _check_bcrypt(scheme, body) < BCRYPT_COST
    return _check_sha_crypt(scheme, body, "6") < SHA_CRYPT_ROUNDS  # SHA512-CRYPT


def verify_password(password: str, stored: str, preferred: str = "ARGON2ID") -> Verified:
    """Check password against a stored ``{SCHEME}…`` hash.

    An empty ``stored`` (no password set) or ``password`` never matches. A malformed or unsupported stored
    hash raises :class:`InvalidInput` (a data problem to report, not a wrong password).
    ``needs_rehash`` is True on a match whose scheme is not ``preferred``, is weak, or whose
    cost parameters differ from (Argon2) or are below (bcrypt, SHA-crypt) what we write.
    """
    preferred = preferred.upper() if isinstance(preferred, str) else ""
    if preferred not in SCHEMES_WRITE:
        raise InvalidInput("password_scheme", f"must be one of {', '.join(SCHEMES_WRITE)}")
    if stored == "":
        return Verified(ok=False, needs_rehash=False, weak=False, scheme="")
    scheme, body = _split(stored)
    _check_body(scheme, body)
    weak = scheme in WEAK_SCHEMES
    try:
        secret = _utf8(password) if isinstance(password, str) else None
    except UnicodeEncodeError:
        secret = None
    if not secret or b"\0" in secret:  # empty, or can't pass Dovecot's auth protocols
        return Verified(ok=False, needs_rehash=False, weak=weak, scheme=scheme)
    ok = _matches(scheme, body, secret)
    rehash = ok and _needs_rehash(scheme, body, preferred)
    return Verified(ok=ok, needs_rehash=rehash, weak=weak, scheme=scheme)


# --------------------------------------------------------------------------- new secrets


def generate_secret(nbytes: int = 16) -> str:
    """A random app password of ``nbytes`` symbols (5 bits each) in groups of 4: ``abcd-ef2h-…``.

    The default 16 symbols (80 bits) read ``xxxx-xxxx-xxxx-xxxx``; the alphabet has no
    ambiguous 0/o/1/l and no upper case, so it can be typed on a phone.
    """
    if not isinstance(nbytes, int) or not 8 <= nbytes <= 64:
        raise ValueError("nbytes must be an integer 8-64")
    chars = "".join(secrets.choice(SYMBOLS) for _ in range(nbytes))
    return "-".join(chars[i : i + 4] for i in range(0, nbytes, 4))


def validate_new_password(password: str) -> None:
    """InvalidInput("password", …) unless 8 characters to 256 bytes, without NUL/CR/LF.

    256 bytes because Dovecot hands checkpassword helpers ``user\0password\0\0`` in at
    most 512 bytes: a longer password could be set but never used to log in.
    """
    if not isinstance(password, str):
        raise InvalidInput("password", "must be a string")
    if not password:
        raise InvalidInput("password", "is empty")
    if len(password.encode("utf-8", "surrogatepass")) > PASSWORD_MAX:
        raise InvalidInput("password", f"is longer than {PASSWORD_MAX} bytes")
    if "\0" in password or "\n" in password or "\r" in password:
        raise InvalidInput("password", "may not contain NUL or line breaks")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("password", "is not valid text") from None
    if len(password) < PASSWORD_MIN:
        raise InvalidInput("password", f"is shorter than {PASSWORD_MIN} characters")
