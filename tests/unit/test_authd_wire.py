"""The pfm-authd wire format: golden frames at every read size, round trips, typed errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authd.wire import (
    MAX_PAYLOAD,
    BadMagic,
    BadPayload,
    Frame,
    FrameDecoder,
    FrameTooLarge,
    FrameType,
    Reply,
    ReplyKind,
    Request,
    RequestKind,
    TruncatedFrame,
    UnknownFrameType,
    UnsupportedVersion,
    WireError,
    decode_payload,
    decode_reply,
    decode_request,
    encode_frame,
)

READ_SIZES = (1, 16, 128, 4096)

# Golden frames, also used by test_checkpassword_unit to prove the shim agrees.
AUTH_ALICE = (
    b"PFA1A\x00\x00\x00^user\x00alice\x00password\x00secret\x00service\x00imap\x00"
    b"remote_ip\x00192.0.2.7\x00remote_port\x0054321\x00mechanism\x00PLAIN\x00"
)
LOOKUP_BOB = b"PFA1L\x00\x00\x00\x16user\x00bob\x00service\x00pop3\x00"
PING = b"PFA1P\x00\x00\x00\x00"
OK_ALICE = (
    b"PFA1O\x00\x00\x00Quser\x00alice\x00home\x00/srv/mail/alice\x00uid\x005000\x00"
    b"gid\x005000\x00userdb_quota_rule\x00*:storage=1G\x00"
)
FAIL_WRONG = b"PFA1F\x00\x00\x00\x16reason\x00wrong password\x00"
TEMPFAIL_LDAP = b"PFA1T\x00\x00\x00\x11reason\x00ldap down\x00"
NOUSER = b"PFA1N\x00\x00\x00\x00"

AUTH_ALICE_REQUEST = Request(
    RequestKind.AUTH,
    user="alice",
    password="secret",
    service="imap",
    remote_ip="192.0.2.7",
    remote_port=54321,
    mechanism="PLAIN",
)
OK_ALICE_REPLY = Reply(
    ReplyKind.OK,
    user="alice",
    home="/srv/mail/alice",
    uid="5000",
    gid="5000",
    extra=(("userdb_quota_rule", "*:storage=1G"),),
)

ALICE_FIELDS = (
    ("user", "alice"),
    ("password", "secret"),
    ("service", "imap"),
    ("remote_ip", "192.0.2.7"),
    ("remote_port", "54321"),
    ("mechanism", "PLAIN"),
)

# name, stream, frames expected, error expected after them (None = clean)
GOLDEN: list[tuple[str, bytes, list[Frame], type[WireError] | None]] = [
    ("auth", AUTH_ALICE, [Frame(FrameType.AUTH, ALICE_FIELDS)], None),
    (
        "lookup",
        LOOKUP_BOB,
        [Frame(FrameType.LOOKUP, (("user", "bob"), ("service", "pop3")))],
        None,
    ),
    ("ping", PING, [Frame(FrameType.PING)], None),
    (
        "ok",
        OK_ALICE,
        [
            Frame(
                FrameType.OK,
                (
                    ("user", "alice"),
                    ("home", "/srv/mail/alice"),
                    ("uid", "5000"),
                    ("gid", "5000"),
                    ("userdb_quota_rule", "*:storage=1G"),
                ),
            )
        ],
        None,
    ),
    (
        "pipelined",
        PING + FAIL_WRONG + TEMPFAIL_LDAP + NOUSER,
        [
            Frame(FrameType.PING),
            Frame(FrameType.FAIL, (("reason", "wrong password"),)),
            Frame(FrameType.TEMPFAIL, (("reason", "ldap down"),)),
            Frame(FrameType.NOUSER),
        ],
        None,
    ),
    (
        "utf8 value",
        b"PFA1O\x00\x00\x00\x0buser\x00j\xc3\xb6rg\x00",
        [Frame(FrameType.OK, (("user", "jörg"),))],
        None,
    ),
    ("http", b"GET / HTTP/1.1\r\n\r\n", [], BadMagic),
    ("garbage after frame", PING + b"\x00\x01", [Frame(FrameType.PING)], BadMagic),
    ("version 2", b"PFA2P\x00\x00\x00\x00", [], UnsupportedVersion),
    ("unknown type", b"PFA1Z\x00\x00\x00\x00", [], UnknownFrameType),
    ("too large", b"PFA1A\x00\x01\x00\x01", [], FrameTooLarge),
    ("too large, no payload sent", b"PFA1A\xff\xff\xff\xff", [], FrameTooLarge),
    ("no final NUL", b"PFA1A\x00\x00\x00\x0auser\x00alice", [], BadPayload),
    ("key without value", b"PFA1A\x00\x00\x00\x05user\x00", [], BadPayload),
    ("upper-case key", b"PFA1A\x00\x00\x00\x0bUSER\x00alice\x00", [], BadPayload),
    ("empty key", b"PFA1A\x00\x00\x00\x02\x00\x00", [], BadPayload),
    ("duplicate key", b"PFA1A\x00\x00\x00\x0cuser\x00a\x00user\x00b\x00", [], BadPayload),
    ("invalid utf-8", b"PFA1A\x00\x00\x00\x08user\x00\xff\xfe\x00", [], BadPayload),
]


def feed_in_chunks(stream: bytes, size: int) -> tuple[list[Frame], WireError | None]:
    """Feed stream in chunks of size; return the frames and the error that ended it."""
    decoder = FrameDecoder()
    frames: list[Frame] = []
    for i in range(0, len(stream), size):
        try:
            frames += decoder.feed(stream[i : i + size])
        except WireError as exc:
            return frames + exc.frames, exc
    return frames, None


@pytest.mark.parametrize("size", READ_SIZES)
@pytest.mark.parametrize(("name", "stream", "frames", "error"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_streams_at_every_read_size(
    size: int, name: str, stream: bytes, frames: list[Frame], error: type[WireError] | None
) -> None:
    """Each golden stream yields the same frames and the same typed error at any read size."""
    got, exc = feed_in_chunks(stream, size)
    assert got == frames
    assert type(exc) is error if error else exc is None


def test_golden_request_and_reply_encodings() -> None:
    """Request and Reply objects encode to the golden bytes and decode back to themselves."""
    assert AUTH_ALICE_REQUEST.encode() == AUTH_ALICE
    assert OK_ALICE_REPLY.encode() == OK_ALICE
    assert Request(RequestKind.LOOKUP, user="bob", service="pop3").encode() == LOOKUP_BOB
    assert Request(RequestKind.PING).encode() == PING
    assert Reply(ReplyKind.FAIL, reason="wrong password").encode() == FAIL_WRONG
    assert Reply(ReplyKind.TEMPFAIL, reason="ldap down").encode() == TEMPFAIL_LDAP
    assert Reply(ReplyKind.NOUSER).encode() == NOUSER
    (frame,) = FrameDecoder().feed(AUTH_ALICE)
    assert decode_request(frame) == AUTH_ALICE_REQUEST
    (frame,) = FrameDecoder().feed(OK_ALICE)
    assert decode_reply(frame) == OK_ALICE_REPLY


def test_oversized_length_rejected_before_payload_arrives() -> None:
    """A header announcing more than MAX_PAYLOAD fails at once, nothing is buffered."""
    decoder = FrameDecoder()
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"PFA1A" + (MAX_PAYLOAD + 1).to_bytes(4, "big"))
    assert decoder.at_boundary


def test_payload_of_exactly_max_size_is_accepted() -> None:
    """A payload of MAX_PAYLOAD bytes is the largest allowed frame."""
    value = "x" * (MAX_PAYLOAD - len("user\0\0"))
    frame = encode_frame(FrameType.OK, {"user": value})
    assert FrameDecoder().feed(frame) == [Frame(FrameType.OK, (("user", value),))]
    with pytest.raises(FrameTooLarge):
        encode_frame(FrameType.OK, {"user": value + "x"})


def test_decoder_stays_broken_after_an_error() -> None:
    """After a protocol error every further feed raises again, even with valid bytes."""
    decoder = FrameDecoder()
    with pytest.raises(BadMagic):
        decoder.feed(b"X")
    with pytest.raises(BadMagic):
        decoder.feed(PING)


def test_eof_inside_a_frame_is_truncated() -> None:
    """eof() raises TruncatedFrame with a partial frame buffered, and nothing at a boundary."""
    decoder = FrameDecoder()
    decoder.feed(PING + AUTH_ALICE[:10])
    with pytest.raises(TruncatedFrame):
        decoder.eof()
    clean = FrameDecoder()
    clean.feed(PING)
    clean.eof()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"User": "x"}, "invalid field name"),
        ({"": "x"}, "invalid field name"),
        ({"k" * 65: "x"}, "invalid field name"),
        ({"user": "a\0b"}, "contains NUL"),
        ({"user": "\udcff"}, "not valid UTF-8"),
    ],
)
def test_encode_refuses_bad_fields(fields: dict[str, str], message: str) -> None:
    """encode_frame names the bad field and refuses it with BadPayload."""
    with pytest.raises(BadPayload, match=message):
        encode_frame(FrameType.AUTH, fields)


def test_encode_refuses_duplicate_keys() -> None:
    """A key given twice in a field list is refused."""
    with pytest.raises(BadPayload, match="duplicate"):
        encode_frame(FrameType.AUTH, [("user", "a"), ("user", "b")])


@pytest.mark.parametrize(
    ("ftype", "fields", "message"),
    [
        (FrameType.AUTH, {"service": "x"}, "'user' is required"),
        (FrameType.AUTH, {"user": "al"}, "'password' is required"),
        (FrameType.LOOKUP, {"user": "a", "password": "p"}, "not allowed in LOOKUP"),
        (FrameType.PING, {"password": "p"}, "not allowed in PING"),
        (FrameType.LOOKUP, {"user": "a", "remote_port": "70000"}, "'remote_port'"),
        (FrameType.LOOKUP, {"user": "a", "local_port": "-1"}, "'local_port'"),
        (FrameType.LOOKUP, {"user": "a", "local_port": "\u0661"}, "'local_port'"),
        (FrameType.LOOKUP, {"user": "a", "auth_password": "p"}, "auth_password"),
        (FrameType.OK, {}, "not a request"),
    ],
)
def test_bad_requests_name_the_field(
    ftype: FrameType, fields: dict[str, str], message: str
) -> None:
    """A well-formed frame with a wrong request is refused with BadPayload naming the field."""
    (frame,) = FrameDecoder().feed(encode_frame(ftype, fields))
    with pytest.raises(BadPayload, match=message) as info:
        decode_request(frame)
    assert "'p'" not in str(info.value)


def test_request_ignores_unknown_keys_and_keeps_auth_extras() -> None:
    """Unknown keys are ignored (forward compatible); auth_* fields land in extra, sorted."""
    frame = Frame(
        FrameType.LOOKUP,
        (("user", "a"), ("auth_rip", "192.0.2.1"), ("future_field", "x"), ("auth_lip", "::1")),
    )
    request = decode_request(frame)
    assert request.extra == (("auth_lip", "::1"), ("auth_rip", "192.0.2.1"))
    assert request.password is None


def test_bad_replies_are_refused() -> None:
    """Reply fields clashing with the fixed ones, or userdb fields on FAIL, are refused."""
    clash = Frame(FrameType.OK, (("user", "a"), ("userdb_home", "/x")))
    with pytest.raises(BadPayload, match="userdb_home"):
        decode_reply(clash)
    with pytest.raises(BadPayload, match="not a reply"):
        decode_reply(Frame(FrameType.AUTH, (("user", "a"),)))
    with pytest.raises(BadPayload, match="userdb fields"):
        Reply(ReplyKind.FAIL, home="/x")


def test_non_ok_reply_keeps_only_user_and_reason() -> None:
    """A FAIL reply's unknown and userdb keys are ignored; user and reason are kept."""
    frame = Frame(FrameType.FAIL, (("user", "a"), ("reason", "no"), ("home", "/x")))
    assert decode_reply(frame) == Reply(ReplyKind.FAIL, user="a", reason="no")


def test_reprs_and_errors_never_show_the_password() -> None:
    """repr of a Request or Frame masks the password; errors never quote a value."""
    (frame,) = FrameDecoder().feed(AUTH_ALICE)
    assert "secret" not in repr(frame)
    assert "password=***" in repr(frame)
    assert "secret" not in repr(AUTH_ALICE_REQUEST)
    assert "secret" not in str(AUTH_ALICE_REQUEST)
    with pytest.raises(BadPayload) as info:
        encode_frame(FrameType.AUTH, {"password": "secret\0"})
    assert "secret" not in str(info.value)
    bad_utf8 = b"PFA1A\x00\x00\x00\x0epassword\x00sec\xff\x00"
    with pytest.raises(BadPayload) as info2:
        FrameDecoder().feed(bad_utf8)
    assert "sec" not in str(info2.value).replace("field 'password'", "")


def test_empty_payload_decodes_to_no_fields() -> None:
    """An empty payload is a frame without fields."""
    assert decode_payload(b"") == ()


KEYS = st.from_regex(r"[a-z][a-z0-9_]{0,63}", fullmatch=True)
VALUES = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=40)
TYPES = st.sampled_from(list(FrameType))


@settings(max_examples=300)
@given(
    ftype=TYPES, fields=st.dictionaries(KEYS, VALUES, max_size=12), size=st.sampled_from(READ_SIZES)
)
def test_round_trip_of_arbitrary_field_maps(
    ftype: FrameType, fields: dict[str, str], size: int
) -> None:
    """encode then decode at any read size gives back the type and the fields in order."""
    stream = encode_frame(ftype, fields) * 2
    got, exc = feed_in_chunks(stream, size)
    assert exc is None
    assert got == [Frame(ftype, tuple(fields.items()))] * 2


@settings(max_examples=500)
@given(data=st.binary(max_size=300), prefix=st.sampled_from([b"", b"PFA", b"PFA1", b"PFA1A"]))
def test_garbage_raises_only_typed_errors(data: bytes, prefix: bytes) -> None:
    """Arbitrary bytes never raise anything but a WireError, and decoded frames re-encode."""
    decoder = FrameDecoder()
    try:
        frames = decoder.feed(prefix + data)
        decoder.eof()
    except WireError:
        return
    for frame in frames:
        assert FrameDecoder().feed(encode_frame(frame.type, frame.fields)) == [frame]


@settings(max_examples=200)
@given(
    user=VALUES.filter(bool),
    password=VALUES,
    port=st.one_of(st.none(), st.integers(0, 65535)),
    extra=st.dictionaries(KEYS.map(lambda k: ("auth_" + k)[:64]), VALUES, max_size=4),
)
def test_request_round_trip(
    user: str, password: str, port: int | None, extra: dict[str, str]
) -> None:
    """Any AUTH request encodes and decodes to an equal Request."""
    extra.pop("auth_password", None)
    request = Request(
        RequestKind.AUTH, user=user, password=password, remote_port=port, extra=tuple(extra.items())
    )
    (frame,) = FrameDecoder().feed(request.encode())
    assert decode_request(frame) == request
