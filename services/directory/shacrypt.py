"""SHA-crypt (``$5$`` SHA256-CRYPT, ``$6$`` SHA512-CRYPT) in pure Python, no I/O.

Ulrich Drepper's "Unix crypt using SHA-256 and SHA-512" (the algorithm glibc's and
libxcrypt's ``crypt()`` implement, which Dovecot's ``{SHA512-CRYPT}`` uses). Python's ``crypt``
module is deprecated and removed in 3.13, hence this small copy.

``rounds`` defaults to 5000 and is then left out of the output, as glibc does; given
explicitly it is written as ``rounds=N$`` (clamped to 1000..999999999 like the spec says).
The salt is cut to 16 characters and may not contain ``$``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

ROUNDS_DEFAULT = 5000
ROUNDS_MIN = 1000
ROUNDS_MAX = 999_999_999
SALT_MAX = 16
ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# Byte order of the final digest in the output (spec steps 22e), three bytes per 4 characters.
_ORDER_256 = (
    (0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14),
    (15, 25, 5), (6, 16, 26), (27, 7, 17), (18, 28, 8), (9, 19, 29),
)  # fmt: skip
_ORDER_512 = (
    (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26),
    (6, 27, 48), (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32),
    (12, 33, 54), (34, 55, 13), (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38),
    (18, 39, 60), (40, 61, 19), (62, 20, 41),
)  # fmt: skip


def _b64(value: int, count: int) -> str:
    out = []
    for _ in range(count):
        out.append(ALPHABET[value & 0x3F])
        value >>= 6
    return "".join(out)


def _encode(digest: bytes) -> str:
    if len(digest) == 32:
        body = [_b64((digest[a] << 16) | (digest[b] << 8) | digest[c], 4) for a, b, c in _ORDER_256]
        body.append(_b64((digest[31] << 8) | digest[30], 3))
    else:
        body = [_b64((digest[a] << 16) | (digest[b] << 8) | digest[c], 4) for a, b, c in _ORDER_512]
        body.append(_b64(digest[63], 2))
    return "".join(body)


def _repeat(block: bytes, length: int) -> bytes:
    return (block * (length // len(block) + 1))[:length]


def _digest(password: bytes, salt: bytes, rounds: int, new: Callable[..., hashlib._Hash]) -> bytes:
    plen = len(password)
    b = new(password + salt + password).digest()  # steps 4-8
    a = new(password + salt)  # steps 1-3
    a.update(_repeat(b, plen))  # step 9-10
    i = plen
    while i:  # step 11
        a.update(b if i & 1 else password)
        i >>= 1
    c = a.digest()  # step 12
    p = _repeat(new(password * plen).digest(), plen)  # steps 13-16
    s = _repeat(new(salt * (16 + c[0])).digest(), len(salt))  # steps 17-20
    # Step 21: round r hashes C then a tail (even r) or a head then C (odd r); the pieces
    # depend only on r % 42, so build the 42 of them once (passlib's trick).
    heads: list[bytes] = []
    tails: list[bytes] = []
    for r in range(42):
        middle = (s if r % 3 else b"") + (p if r % 7 else b"")
        heads.append(p + middle)
        tails.append(middle + p)
    for r in range(rounds):
        k = r % 42
        c = new(heads[k] + c).digest() if r & 1 else new(c + tails[k]).digest()
    return c


def sha_crypt(password: bytes, salt: str, rounds: int | None = None, *, bits: int = 512) -> str:
    """The full ``$6$[rounds=N$]salt$hash`` (``$5$`` for ``bits=256``) of password."""
    if bits not in (256, 512):
        raise ValueError("bits must be 256 or 512")
    if "$" in salt or "\0" in salt or "\n" in salt:
        raise ValueError("the salt may not contain '$', NUL or a newline")
    salt = salt[:SALT_MAX]
    prefix = "$5$" if bits == 256 else "$6$"
    if rounds is None:
        effective = ROUNDS_DEFAULT
    else:
        effective = min(max(rounds, ROUNDS_MIN), ROUNDS_MAX)
        prefix += f"rounds={effective}$"
    new = hashlib.sha256 if bits == 256 else hashlib.sha512
    digest = _digest(password, salt.encode("utf-8"), effective, new)
    return f"{prefix}{salt}${_encode(digest)}"


def sha_crypt_verify(password: bytes, stored: str) -> bool:
    """True when ``stored`` (``$5$…`` or ``$6$…``, well-formed) is password's SHA-crypt."""
    bits = 256 if stored.startswith("$5$") else 512
    rest = stored[3:]
    rounds: int | None = None
    if rest.startswith("rounds="):
        spec, _, rest = rest.partition("$")
        rounds = int(spec[len("rounds=") :])
    salt = rest.rpartition("$")[0]
    computed = sha_crypt(password, salt, rounds, bits=bits)
    return hmac.compare_digest(computed.encode("utf-8"), stored.encode("utf-8"))
