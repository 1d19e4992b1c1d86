"""pfm-checkpassword's pure parts: its embedded codec agrees with authd.wire, input, options."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authd import checkpassword as shim
from authd.wire import (
    FrameDecoder,
    Reply,
    ReplyKind,
    Request,
    RequestKind,
    decode_request,
)
from tests.unit.test_authd_wire import (
    AUTH_ALICE,
    AUTH_ALICE_REQUEST,
    FAIL_WRONG,
    LOOKUP_BOB,
    NOUSER,
    OK_ALICE,
    TEMPFAIL_LDAP,
)

SHIM_FILE = Path(shim.__file__)
ALLOWED_IMPORTS = {"__future__", "os", "sys", "time", "_socket", "select"}


def shim_decode(frame: bytes) -> tuple[bytes, dict[str, str]]:
    """Decode one reply frame with the shim's embedded decoder."""
    ftype, length = shim.decode_header(frame[:9])
    assert len(frame) == 9 + length
    return ftype, shim.decode_payload(frame[9:])


def test_shim_imports_only_builtin_modules() -> None:
    """The shim imports nothing but os, sys, time, _socket and select (runs under -I -S)."""
    tree = ast.parse(SHIM_FILE.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
    assert names <= ALLOWED_IMPORTS


def test_shim_encodes_the_golden_auth_and_lookup_frames() -> None:
    """The shim's request encoder produces exactly the golden frames of authd.wire."""
    env = {
        "SERVICE": "imap",
        "TCPREMOTEIP": "192.0.2.7",
        "TCPREMOTEPORT": "54321",
        "AUTH_MECH": "PLAIN",
    }
    fields = shim.request_fields(b"alice", b"secret", env)
    assert shim.encode_request(shim.T_AUTH, fields) == AUTH_ALICE
    lookup = shim.request_fields(b"bob", None, {"SERVICE": "pop3"})
    assert shim.encode_request(shim.T_LOOKUP, lookup) == LOOKUP_BOB


def test_shim_decodes_the_golden_replies() -> None:
    """The shim's reply decoder reads the golden reply frames of authd.wire."""
    assert shim_decode(OK_ALICE) == (
        b"O",
        {
            "user": "alice",
            "home": "/srv/mail/alice",
            "uid": "5000",
            "gid": "5000",
            "userdb_quota_rule": "*:storage=1G",
        },
    )
    assert shim_decode(FAIL_WRONG) == (b"F", {"reason": "wrong password"})
    assert shim_decode(TEMPFAIL_LDAP) == (b"T", {"reason": "ldap down"})
    assert shim_decode(NOUSER) == (b"N", {})


def test_full_dovecot_environment_maps_to_request_fields() -> None:
    """Dovecot's variables map to the wire fields; other AUTH_* become auth_*, never a password."""
    env = {
        "SERVICE": "imap",
        "TCPREMOTEIP": "192.0.2.7",
        "TCPREMOTEPORT": "54321",
        "TCPLOCALIP": "127.0.0.1",
        "TCPLOCALPORT": "143",
        "AUTH_CLIENT_ID": "Thunderbird",
        "MASTER_USER": "admin",
        "AUTH_MECH": "PLAIN",
        "AUTH_SECURED": "secured",
        "AUTH_SESSION": "abc",
        "AUTH_PASSWORD": "secret",
        "AUTH_X-BAD": "dropped",
        "PATH": "/bin",
    }
    frame_bytes = shim.encode_request(shim.T_AUTH, shim.request_fields(b"alice", b"pw", env))
    (frame,) = FrameDecoder().feed(frame_bytes)
    assert decode_request(frame) == Request(
        RequestKind.AUTH,
        user="alice",
        password="pw",
        service="imap",
        remote_ip="192.0.2.7",
        remote_port=54321,
        local_ip="127.0.0.1",
        local_port=143,
        client_id="Thunderbird",
        master_user="admin",
        mechanism="PLAIN",
        secured="secured",
        extra=(("auth_session", "abc"),),
    )


REPLY_KEYS = st.from_regex(r"[a-z][a-z0-9_]{0,30}", fullmatch=True).filter(
    lambda k: k not in {"user", "home", "uid", "gid", "reason"} and not k.startswith("userdb_u")
)
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=30)


@settings(max_examples=200)
@given(
    kind=st.sampled_from(list(ReplyKind)),
    user=TEXT,
    home=TEXT,
    reason=TEXT,
    extra=st.dictionaries(REPLY_KEYS, TEXT, max_size=5),
)
def test_shim_decodes_every_reply_authd_wire_encodes(
    kind: ReplyKind, user: str, home: str, reason: str, extra: dict[str, str]
) -> None:
    """Whatever Reply authd.wire encodes, the shim decodes to the same type and fields."""
    extra.pop("userdb_home", None)
    extra.pop("userdb_gid", None)
    ok = kind is ReplyKind.OK
    reply = Reply(
        kind,
        user=user,
        home=home if ok else "",
        reason=reason,
        extra=tuple(extra.items()) if ok else (),
    )
    ftype, fields = shim_decode(reply.encode())
    assert ftype == kind.value.value
    assert fields == dict(reply.to_fields())


@settings(max_examples=300)
@given(data=st.binary(min_size=9, max_size=200))
def test_shim_decoder_turns_garbage_into_tempfail(data: bytes) -> None:
    """Garbage from the server is always a Trouble with exit 111, never another exception."""
    try:
        shim.decode_header(data[:9])
        shim.decode_payload(data[9:])
    except shim.Trouble as trouble:
        assert trouble.code == 111


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"alice\0secret\0\0", (b"alice", b"secret")),
        (b"alice\0secret\0" + b"1700000000\0", (b"alice", b"secret")),
        (b"alice\0\0", (b"alice", b"")),
        (b"alice\0pa ss\0\0", (b"alice", b"pa ss")),
    ],
)
def test_parse_input_accepts_dovecot_formats(raw: bytes, expected: tuple[bytes, bytes]) -> None:
    """user NUL password NUL, with or without a timestamp, parses to (user, password)."""
    assert shim.parse_input(raw) == expected


@pytest.mark.parametrize("raw", [b"", b"alice", b"alice\0secret", b"\0secret\0\0"])
def test_parse_input_refuses_malformed_input(raw: bytes) -> None:
    """Missing NULs or an empty user is exit 1, and the message holds no password."""
    with pytest.raises(shim.Trouble) as info:
        shim.parse_input(raw)
    assert info.value.code == 1
    assert "secret" not in str(info.value)


def test_parse_args_precedence() -> None:
    """--socket/--timeout beat the environment, which beats the defaults."""
    assert shim.parse_args(["/r"], {}) == ("/run/pfm/authd.sock", 10.0, ["/r"])
    env = {"PFM_AUTHD_SOCKET": "/e.sock", "PFM_AUTHD_TIMEOUT": "2.5"}
    assert shim.parse_args(["/r", "x"], env) == ("/e.sock", 2.5, ["/r", "x"])
    argv = ["--socket", "/o.sock", "--timeout=1", "--", "/r", "--socket"]
    assert shim.parse_args(argv, env) == ("/o.sock", 1.0, ["/r", "--socket"])


@pytest.mark.parametrize(
    "argv", [[], ["--socket"], ["--bogus", "/r"], ["--timeout", "0", "/r"], ["--timeout=x", "/r"]]
)
def test_parse_args_errors_are_tempfail(argv: list[str]) -> None:
    """A usage error is a configuration problem: exit 111, not 'wrong password'."""
    with pytest.raises(shim.Trouble) as info:
        shim.parse_args(argv, {})
    assert info.value.code == 111


def test_reply_environment_for_checkpassword_reply() -> None:
    """OK sets USER, HOME, userdb_* and EXTRA; a missing home unsets HOME; lookups add AUTHORIZED."""
    fields = {"user": "Alice", "home": "/h", "uid": "5000", "userdb_quota_rule": "*:storage=1G"}
    assert shim.reply_environment(fields, "alice", lookup=False) == {
        "USER": "Alice",
        "HOME": "/h",
        "userdb_uid": "5000",
        "userdb_quota_rule": "*:storage=1G",
        "EXTRA": "userdb_uid userdb_quota_rule",
    }
    assert shim.reply_environment({}, "alice", lookup=True) == {
        "USER": "alice",
        "HOME": None,
        "EXTRA": None,
        "AUTHORIZED": "2",
    }


def test_read_input_drains_oversized_input() -> None:
    """More than 512 bytes on fd 3 is read to the end and reported as oversized."""
    r, w = os.pipe()
    os.write(w, b"a" * 5000)
    os.close(w)
    try:
        data, oversized = shim.read_input(r, shim.Deadline(5))
    finally:
        os.close(r)
    assert oversized and len(data) == 512


def test_read_input_times_out_on_a_silent_writer() -> None:
    """A writer that never closes fd 3 ends in exit 111 once the deadline passes."""
    r, w = os.pipe()
    try:
        with pytest.raises(shim.Trouble, match="timeout reading fd 3") as info:
            shim.read_input(r, shim.Deadline(0.05))
    finally:
        os.close(r)
        os.close(w)
    assert info.value.code == 111


def test_read_input_from_a_closed_fd_is_tempfail() -> None:
    """fd 3 not open at all (a misconfiguration) is exit 111, not a traceback."""
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(shim.Trouble, match="cannot read fd 3") as info:
        shim.read_input(r, shim.Deadline(1))
    assert info.value.code == 111


def test_ask_without_server_is_tempfail(tmp_path: Path) -> None:
    """A missing socket is a temporary failure naming the path."""
    with pytest.raises(shim.Trouble, match="unreachable") as info:
        shim.ask(str(tmp_path / "none.sock"), b"", shim.Deadline(1))
    assert info.value.code == 111


def test_request_equals_the_wire_request_golden() -> None:
    """The golden AUTH frame is what authd.wire builds from the same Request."""
    assert AUTH_ALICE_REQUEST.encode() == AUTH_ALICE
