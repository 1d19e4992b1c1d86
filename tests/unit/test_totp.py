"""TOTP: RFC 6238 vectors, agreement with pyotp, the password+code split, single use, drift."""

from __future__ import annotations

import asyncio
import base64
import time

import pyotp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authd.state import MemoryState
from authd.totp import (
    TotpResult,
    TotpSecretError,
    TotpVerifier,
    decode_secret,
    hotp,
    match_offset,
    split_code,
    time_step,
)

RFC_SECRET = b"12345678901234567890"
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
T0 = 1_700_000_010.0  # 10 s into a step


class FakeClock:
    """A settable clock."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def code_at(t: float, secret: str = SECRET) -> str:
    """The code an authenticator app shows at time t (pyotp as the independent oracle)."""
    return pyotp.TOTP(secret).at(int(t))


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        (59, "94287082"),
        (1111111109, "07081804"),
        (1111111111, "14050471"),
        (1234567890, "89005924"),
        (2000000000, "69279037"),
        (20000000000, "65353130"),
    ],
)
def test_rfc6238_sha1_vectors(t: int, expected: str) -> None:
    """hotp() reproduces RFC 6238 Appendix B (SHA-1, 8 digits) and its last 6 digits."""
    assert hotp(RFC_SECRET, time_step(t), 8) == expected
    assert hotp(RFC_SECRET, time_step(t), 6) == expected[-6:]


@settings(max_examples=200, deadline=None)
@given(secret=st.binary(min_size=14, max_size=40), t=st.integers(0, 2**34))
def test_codes_agree_with_pyotp(secret: bytes, t: int) -> None:
    """For any key and time, our code equals pyotp's."""
    b32 = base64.b32encode(secret).decode()
    assert hotp(decode_secret(b32), time_step(t)) == pyotp.TOTP(b32).at(t)


@given(
    password=st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s),
    code=st.from_regex(r"\A[0-9]{6}\Z"),
)
def test_split_is_always_the_final_six_ascii_digits(password: str, code: str) -> None:
    """password + code splits back into exactly those, even when the password ends in digits."""
    assert split_code(password + code) == (password, code)


@pytest.mark.parametrize(
    "typed",
    [
        "123456",
        "",
        "secret",
        "secret12345",
        "secret12345x",
        "pw\u0661\u0662\u0663\u0664\u0665\u0666",
        "pw12 3456",
        "pw123456\n",
    ],
)
def test_split_refuses_input_without_a_code(typed: str) -> None:
    """No password before the digits, fewer than 6 digits, non-ASCII digits: no split."""
    assert split_code(typed) is None


def test_split_of_digit_password_takes_last_six() -> None:
    """A password made of digits keeps all but the last 6 digits."""
    assert split_code("2024123456") == ("2024", "123456")


@settings(max_examples=100, deadline=None)
@given(t=st.floats(1e9, 4e9), offset=st.sampled_from([-1, 0, 1]))
def test_codes_within_one_step_are_accepted_exactly_once(t: float, offset: int) -> None:
    """A code of step now-1, now or now+1 is accepted once, then refused as replayed."""
    clock = FakeClock(t)
    v = TotpVerifier(MemoryState(clock=clock), clock=clock)
    code = code_at(t + offset * 30)
    if code in {code_at(t + o * 30) for o in (-1, 0, 1) if o != offset}:
        return  # two steps share a code: the offset is ambiguous (1 in ~500,000)

    async def run() -> tuple[TotpResult, TotpResult]:
        return await v.verify("alice", SECRET, code), await v.verify("alice", SECRET, code)

    first, second = asyncio.run(run())
    assert first == TotpResult(True, "ok", offset)
    assert second == TotpResult(False, "replayed", offset)


@settings(max_examples=100, deadline=None)
@given(t=st.floats(1e9, 4e9), offset=st.sampled_from([-5, -3, -2, 2, 3, 7]))
def test_codes_further_away_are_refused(t: float, offset: int) -> None:
    """A code two or more steps away is a bad code (unless it collides with a valid one)."""
    clock = FakeClock(t)
    v = TotpVerifier(MemoryState(clock=clock), clock=clock)
    code = code_at(t + offset * 30)
    if code in {code_at(t + o * 30) for o in (-1, 0, 1)}:
        return
    assert asyncio.run(v.verify("alice", SECRET, code)) == TotpResult(False, "bad_code")


@pytest.mark.parametrize(
    "code", ["", "12345", "1234567", "12a456", "\u0661\u0662\u0663\u0664\u0665\u0666", " 12345"]
)
async def test_malformed_codes(code: str) -> None:
    """Anything but exactly 6 ASCII digits is malformed, and touches no state."""
    state = MemoryState()
    assert await TotpVerifier(state).verify("alice", SECRET, code) == TotpResult(False, "malformed")
    assert await state.drift("alice") is None


async def test_older_step_refused_after_newer_one() -> None:
    """After the code of step now was used, the (still valid) code of now-1 is refused."""
    clock = FakeClock()
    v = TotpVerifier(MemoryState(clock=clock), clock=clock)
    assert (await v.verify("alice", SECRET, code_at(T0))).ok
    assert await v.verify("alice", SECRET, code_at(T0 - 30)) == TotpResult(False, "replayed", -1)
    clock.now += 30
    assert (await v.verify("alice", SECRET, code_at(clock.now))).ok


async def test_replay_guard_is_per_user_and_case_insensitive() -> None:
    """Another user may use the same step; the same user with other case may not."""
    clock = FakeClock()
    v = TotpVerifier(MemoryState(clock=clock), clock=clock)
    code = code_at(T0)
    assert (await v.verify("alice@example.org", SECRET, code)).ok
    assert (await v.verify("bob@example.org", SECRET, code)).ok
    assert (await v.verify("Alice@Example.org", SECRET, code)).reason == "replayed"


async def test_drift_is_remembered() -> None:
    """The offset of the last accepted code is kept per user while the step is guarded."""
    clock = FakeClock()
    v = TotpVerifier(MemoryState(clock=clock), clock=clock)
    assert await v.drift("alice") is None
    assert (await v.verify("alice", SECRET, code_at(T0 + 30))).drift == 1
    assert await v.drift("alice") == 1
    clock.now += v.step_ttl + 1
    assert await v.drift("alice") is None


async def test_step_ttl_outlives_the_code() -> None:
    """A used code stays refused for as long as it could be valid (3 steps) and then some."""
    clock = FakeClock()
    v = TotpVerifier(MemoryState(clock=clock), clock=clock)
    code = code_at(T0 + 30)
    assert (await v.verify("alice", SECRET, code)).ok
    assert v.step_ttl == 210.0
    for _ in range(2):
        clock.now += 30
        assert (await v.verify("alice", SECRET, code)).ok is False


async def test_bad_secret_error_hides_the_secret() -> None:
    """An unusable stored secret raises TotpSecretError without the secret in its text."""
    for secret in ("NOT*BASE32!!", "MFRGG"):
        with pytest.raises(TotpSecretError) as info:
            await TotpVerifier(MemoryState()).verify("alice", secret, "123456")
        assert secret not in str(info.value) and secret not in repr(info.value)


def test_secret_formats_tolerated() -> None:
    """Lower case, spaces and missing padding decode to the same key."""
    key = decode_secret(SECRET)
    assert decode_secret(SECRET.lower()) == key
    assert decode_secret(" ".join(SECRET[i : i + 4] for i in range(0, 32, 4))) == key
    assert decode_secret("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ") == RFC_SECRET


async def test_results_and_reprs_carry_no_code_or_secret() -> None:
    """Neither the result nor the verifier repr contains the code or the secret."""
    clock = FakeClock()
    v = TotpVerifier(MemoryState(clock=clock), clock=clock)
    code = code_at(T0)
    result = await v.verify("alice", SECRET, code)
    for text in (repr(result), str(result), repr(v)):
        assert code not in text and SECRET not in text


def test_match_offset_prefers_nearest_step() -> None:
    """match_offset reports the offset of the matching step, None for no match."""
    key = decode_secret(SECRET)
    assert match_offset(key, code_at(T0), T0) == 0
    assert match_offset(key, code_at(T0 - 30), T0) == -1
    assert match_offset(key, code_at(T0 + 30), T0) == 1


async def test_verification_costs_well_under_a_millisecond() -> None:
    """A full verify (3 HMACs, constant-time compares, replay guard in memory) takes < 1 ms."""
    clock = FakeClock()
    v = TotpVerifier(MemoryState(clock=clock), clock=clock)
    n = 2000
    start = time.perf_counter()
    for i in range(n):
        await v.verify(f"user{i}", SECRET, "000000")  # bad code: all 3 steps computed
    bad = (time.perf_counter() - start) / n
    code = code_at(T0)
    start = time.perf_counter()
    for i in range(n):
        await v.verify(f"user{i}", SECRET, code)  # accepted: also writes the replay guard
    good = (time.perf_counter() - start) / n
    print(f"totp verify: bad code {bad * 1e6:.1f} us, accepted {good * 1e6:.1f} us")
    assert bad < 0.001 and good < 0.001


def test_invalid_parameters_rejected() -> None:
    """Nonsense periods, skews or digit counts are refused at construction."""
    with pytest.raises(ValueError, match="period"):
        TotpVerifier(MemoryState(), period=0)
    with pytest.raises(ValueError, match="digits"):
        TotpVerifier(MemoryState(), digits=4)
