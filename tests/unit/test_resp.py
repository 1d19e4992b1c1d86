"""The lean RESP client's encoder (the client itself is exercised against redis-server)."""

from __future__ import annotations

import hiredis
from hypothesis import given
from hypothesis import strategies as st

from services.resp import encode


def test_encode_basic() -> None:
    """Commands encode as RESP arrays of bulk strings."""
    assert (
        encode(("SET", "k", 12, b"v")) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n$1\r\nv\r\n"
    )


def test_encode_non_ascii_and_surrogates() -> None:
    """Non-ASCII and surrogate-escaped bytes from mail keep their exact bytes and lengths."""
    raw = "ü\udcff".encode("utf-8", "surrogateescape")
    wire = encode(("GET", "ü\udcff"))
    assert wire == b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(raw), raw)


@given(st.lists(st.one_of(st.text(), st.binary(), st.integers()), min_size=1, max_size=8))
def test_encode_round_trips_through_hiredis(args: list[object]) -> None:
    """Whatever the arguments, a RESP parser reads back exactly their bytes."""
    reader = hiredis.Reader()
    reader.feed(encode(args))
    got = reader.gets()
    expected = [
        a if isinstance(a, bytes) else str(a).encode("utf-8", "surrogateescape") for a in args
    ]
    assert got == expected
