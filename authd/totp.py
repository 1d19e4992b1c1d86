"""TOTP (RFC 6238) for logins typed as password followed by a 6-digit code.

Split rule: for a user who enrolled TOTP, the code is always the **final 6 ASCII digits**
of what was typed and the password is everything before them (at least one character).
A password that itself ends in digits is fine: ``"hunter2"`` + ``"123456"`` is typed
``"hunter2123456"`` and splits back into exactly those. Input that does not end in six
ASCII digits (or has nothing before them) is ``malformed``.

Verification accepts the codes of steps now-1, now and now+1 (30 s steps, HMAC-SHA1,
6 digits: what authenticator apps use), compared in constant time, and is then
single use (RFC 6238 §5.2): the matched step is recorded with the state store's atomic
``use_step``, which refuses a step not greater than the last one used, so a code (or
an older one) is accepted once, across every host sharing the store. The observed step
offset (-1, 0, +1) is returned and remembered as the user's drift.

Call :meth:`TotpVerifier.verify` only after the password was verified, so a guessed
code with a wrong password cannot burn the user's current step. Nothing here puts a
code or a secret in a message or a repr.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
import time
from dataclasses import dataclass
from typing import Literal

from .state import AuthState, Clock

DIGITS = 6
PERIOD = 30
SKEW = 1
REPLAY_MARGIN = 120.0
_ASCII_DIGITS = frozenset("0123456789")

Reason = Literal["ok", "bad_code", "replayed", "malformed"]


class TotpSecretError(ValueError):
    """A stored TOTP secret is not usable base32 (the message never contains the secret)."""


@dataclass(frozen=True, slots=True)
class TotpResult:
    """Outcome of one verification; ``drift`` is the matched step offset, when one matched."""

    ok: bool
    reason: Reason
    drift: int | None = None


def split_code(typed: str, digits: int = DIGITS) -> tuple[str, str] | None:
    """(password, code): the code is the final ``digits`` ASCII digits; None if there are none.

    The password must be non-empty.
    """
    if len(typed) <= digits:
        return None
    code = typed[-digits:]
    if not _ASCII_DIGITS.issuperset(code):
        return None
    return typed[:-digits], code


def is_code(code: str, digits: int = DIGITS) -> bool:
    """True for exactly ``digits`` ASCII digits."""
    return len(code) == digits and _ASCII_DIGITS.issuperset(code)


def decode_secret(secret: str) -> bytes:
    """The key bytes of a base32 secret (case, spaces and missing padding tolerated)."""
    text = secret.replace(" ", "").replace("-", "").upper().rstrip("=")
    text += "=" * (-len(text) % 8)
    try:
        key = base64.b32decode(text, casefold=False)
    except (binascii.Error, ValueError):
        raise TotpSecretError("TOTP secret is not valid base32") from None
    if len(key) < 10:
        raise TotpSecretError("TOTP secret is shorter than 80 bits")
    return key


def hotp(key: bytes, counter: int, digits: int = DIGITS) -> str:
    """RFC 4226 HOTP value of ``counter`` (HMAC-SHA1, dynamic truncation), zero-padded."""
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def time_step(now: float, period: int = PERIOD) -> int:
    """The RFC 6238 time step (T0 = 0) containing ``now``."""
    return int(now // period)


def match_offset(
    key: bytes, code: str, now: float, *, period: int = PERIOD, skew: int = SKEW
) -> int | None:
    """The step offset in [-skew, skew] whose code equals ``code``, or None.

    Every candidate is computed and compared in constant time (no early exit); on the
    (1 in a million) chance that two steps share a code, the smallest |offset| wins.
    """
    step = time_step(now, period)
    digits = len(code)
    candidate = code.encode("ascii")
    found: int | None = None
    for offset in sorted(range(-skew, skew + 1), key=abs):
        same = hmac.compare_digest(hotp(key, step + offset, digits).encode("ascii"), candidate)
        if same and found is None:
            found = offset
    return found


class TotpVerifier:
    """Verifies codes against a secret, single use per step through the state store."""

    def __init__(
        self,
        state: AuthState,
        *,
        clock: Clock = time.time,
        period: int = PERIOD,
        skew: int = SKEW,
        digits: int = DIGITS,
        replay_margin: float = REPLAY_MARGIN,
    ) -> None:
        if period < 1 or skew < 0 or not 6 <= digits <= 8 or replay_margin < 0:
            raise ValueError("totp: period >= 1, skew >= 0, digits 6..8, replay_margin >= 0")
        self.state = state
        self.clock = clock
        self.period = period
        self.skew = skew
        self.digits = digits
        # A step stays valid for at most (2*skew + 1) periods after it is first accepted.
        self.step_ttl = (2 * skew + 1) * period + replay_margin

    def __repr__(self) -> str:
        return f"TotpVerifier(period={self.period}, skew={self.skew}, state={self.state.name})"

    @staticmethod
    def user_key(user: str) -> str:
        """The replay-guard key of a login (case-insensitive, so case cannot dodge it)."""
        return user.strip().lower()

    async def verify(self, user: str, secret: str, code: str) -> TotpResult:
        """Check ``code`` for ``user`` now; accept each step once. StateError passes through.

        TotpSecretError when the stored secret is unusable (a directory problem).
        """
        if not is_code(code, self.digits):
            return TotpResult(False, "malformed")
        key = decode_secret(secret)
        now = self.clock()
        offset = match_offset(key, code, now, period=self.period, skew=self.skew)
        if offset is None:
            return TotpResult(False, "bad_code")
        step = time_step(now, self.period) + offset
        if not await self.state.use_step(self.user_key(user), step, offset, self.step_ttl):
            return TotpResult(False, "replayed", offset)
        return TotpResult(True, "ok", offset)

    async def drift(self, user: str) -> int | None:
        """The step offset of the user's last accepted code, while the store remembers it."""
        return await self.state.drift(self.user_key(user))
