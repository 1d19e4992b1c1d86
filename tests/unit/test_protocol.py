"""policy.protocol: golden tables fed at several read sizes, plus property tests."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.protocol import (
    ACTIONS,
    DUNNO,
    MAX_TEXT,
    Action,
    BadRequestType,
    DuplicateAttribute,
    LineTooLong,
    MalformedLine,
    PolicyParser,
    PolicyRequest,
    ProtocolError,
    RequestTooLarge,
    TooManyAttributes,
)

READ_SIZES = (1, 16, 128, 4096)

# A Postfix 3.7 RCPT request, in the order smtpd sends the attributes.
RCPT_LINES = [
    ("request", "smtpd_access_policy"),
    ("protocol_state", "RCPT"),
    ("protocol_name", "ESMTP"),
    ("helo_name", "mail.example.net"),
    ("queue_id", ""),
    ("sender", "alice@example.org"),
    ("recipient", "bob@example.net"),
    ("recipient_count", "0"),
    ("client_address", "192.0.2.10"),
    ("client_name", "mail.example.net"),
    ("reverse_client_name", "mail.example.net"),
    ("instance", "1a2b.6543210f.1"),
    ("sasl_method", "PLAIN"),
    ("sasl_username", "alice@example.org"),
    ("sasl_sender", ""),
    ("size", "0"),
    ("ccert_subject", ""),
    ("ccert_issuer", ""),
    ("ccert_fingerprint", ""),
    ("encryption_protocol", "TLSv1.3"),
    ("encryption_cipher", "TLS_AES_256_GCM_SHA384"),
    ("encryption_keysize", "256"),
    ("etrn_domain", ""),
    ("stress", ""),
    ("ccert_pubkey_fingerprint", ""),
    ("client_port", "52114"),
    ("policy_context", ""),
    ("server_address", "198.51.100.25"),
    ("server_port", "587"),
]
RCPT = dict(RCPT_LINES)
EOM = {
    **RCPT,
    "protocol_state": "END-OF-MESSAGE",
    "recipient": "",
    "queue_id": "4Xk2Lq0bWnz9tN",
    "size": "48213",
    "recipient_count": "3",
}


def wire(attrs: dict[str, str], eol: str = "\n") -> bytes:
    """Encode a request the way Postfix does."""
    return ("".join(f"{k}={v}{eol}" for k, v in attrs.items()) + eol).encode(
        "utf-8", "surrogateescape"
    )


def feed_in(data: bytes, size: int, parser: PolicyParser | None = None) -> list[Any]:
    """Feed ``data`` in reads of ``size`` bytes; return every outcome."""
    parser = parser or PolicyParser()
    out: list[Any] = []
    for i in range(0, len(data), size):
        out.extend(parser.feed(data[i : i + size]))
    return out


def norm(items: list[Any]) -> list[Any]:
    """Comparable form: attribute dicts for requests, error classes for errors."""
    return [dict(i.attrs) if isinstance(i, PolicyRequest) else type(i) for i in items]


SMALL = {"max_line": 64, "max_attributes": 4, "max_request": 128}
MINI = {"request": "smtpd_access_policy", "sender": "a@b.c"}

# name, limits, stream, expected outcomes (attribute dicts or error classes)
REQUESTS: list[tuple[str, dict[str, int], bytes, list[Any]]] = [
    ("postfix-3.7-rcpt", {}, wire(RCPT), [RCPT]),
    ("end-of-message", {}, wire(EOM), [EOM]),
    ("pipelined", {}, wire(RCPT) + wire(EOM) + wire(RCPT), [RCPT, EOM, RCPT]),
    ("crlf", {}, wire(RCPT, "\r\n"), [RCPT]),
    (
        "value-with-equals",
        {},
        wire({**MINI, "ccert_subject": "CN=mx,O=Example=1"}),
        [{**MINI, "ccert_subject": "CN=mx,O=Example=1"}],
    ),
    (
        "utf8-sender",
        {},
        wire({**MINI, "sender": "jörg@exämple.de"}),
        [{**MINI, "sender": "jörg@exämple.de"}],
    ),
    (
        "invalid-utf8-kept",
        {},
        b"request=smtpd_access_policy\nhelo_name=\xff\xfe\n\n",
        [{"request": "smtpd_access_policy", "helo_name": "\udcff\udcfe"}],
    ),
    ("cr-inside-value", {}, wire({**MINI, "x": "a\rb"}), [{**MINI, "x": "a\rb"}]),
    ("stray-empty-lines", {}, b"\n\n" + wire(MINI) + b"\n\n\n" + wire(MINI), [MINI, MINI]),
    (
        "no-equals",
        {},
        b"request=smtpd_access_policy\nbogus\n\n" + wire(MINI),
        [MalformedLine, MINI],
    ),
    ("empty-name", {}, b"request=smtpd_access_policy\n=x\n\n" + wire(MINI), [MalformedLine, MINI]),
    (
        "duplicate",
        {},
        b"request=smtpd_access_policy\nsender=a\nsender=b\n\n" + wire(MINI),
        [DuplicateAttribute, MINI],
    ),
    ("no-request-attr", {}, b"sender=a@b.c\n\n" + wire(MINI), [BadRequestType, MINI]),
    (
        "other-request-type",
        {},
        b"request=junk\nsender=a\n\n" + wire(MINI),
        [BadRequestType, MINI],
    ),
    (
        "too-many-attributes",
        SMALL,
        b"request=smtpd_access_policy\na=1\nb=2\nc=3\nd=4\n\n" + wire(MINI),
        [TooManyAttributes, MINI],
    ),
    (
        "at-max-attributes",
        SMALL,
        b"request=smtpd_access_policy\na=1\nb=2\nc=3\n\n",
        [{"request": "smtpd_access_policy", "a": "1", "b": "2", "c": "3"}],
    ),
    (
        "line-at-max-line",
        SMALL,
        wire({**MINI, "x": "v" * 62}),
        [{**MINI, "x": "v" * 62}],
    ),
    (
        "line-too-long-kills",
        SMALL,
        wire(MINI) + wire({**MINI, "x": "v" * 63}) + wire(MINI),
        [MINI, LineTooLong],
    ),
    (
        "unterminated-long-line",
        SMALL,
        b"request=smtpd_access_policy\nx=" + b"v" * 500,
        [LineTooLong],
    ),
    (
        "request-at-max-request",
        SMALL,
        b"request=smtpd_access_policy\nx=" + b"v" * 57 + b"\ny=" + b"w" * 37 + b"\n\n",
        [{"request": "smtpd_access_policy", "x": "v" * 57, "y": "w" * 37}],
    ),
    (
        "request-too-large",
        SMALL,
        b"request=smtpd_access_policy\nx=" + b"v" * 57 + b"\ny=" + b"w" * 38 + b"\n\n" + wire(MINI),
        [RequestTooLarge],
    ),
    (
        "earliest-limit-wins",
        {"max_line": 100, "max_attributes": 100, "max_request": 40},
        b"a=1\n" * 8 + b"x=" + b"v" * 200 + b"\n\n",
        [RequestTooLarge],
    ),
    ("partial-request-waits", {}, wire(MINI) + b"request=smtpd_access_policy\nsen", [MINI]),
]


@pytest.mark.parametrize("size", READ_SIZES)
@pytest.mark.parametrize(
    ("name", "limits", "stream", "expected"), REQUESTS, ids=[r[0] for r in REQUESTS]
)
def test_request_table(
    name: str, limits: dict[str, int], stream: bytes, expected: list[Any], size: int
) -> None:
    """Each golden stream parses to the same requests and errors at every read size."""
    assert norm(feed_in(stream, size, PolicyParser(**limits))) == expected


def decide(item: PolicyRequest | ProtocolError) -> Action:
    """A toy decision for the request->answer table."""
    if isinstance(item, ProtocolError):
        return Action("DEFER_IF_PERMIT", f"4.3.0 bad request: {item.reason}")
    if item.protocol_state == "END-OF-MESSAGE" and item.size > 40000:
        return Action("REJECT", "5.3.4 message too big")
    return DUNNO


ANSWERS: list[tuple[str, bytes, bytes]] = [
    ("rcpt", wire(RCPT), b"action=DUNNO\n\n"),
    (
        "rcpt-eom",
        wire(RCPT) + wire(EOM),
        b"action=DUNNO\n\naction=REJECT 5.3.4 message too big\n\n",
    ),
    (
        "bad-then-good",
        b"request=x\n\n" + wire(RCPT),
        b"action=DEFER_IF_PERMIT 4.3.0 bad request: bad_request_type\n\naction=DUNNO\n\n",
    ),
]


@pytest.mark.parametrize("size", READ_SIZES)
@pytest.mark.parametrize(("name", "stream", "answer"), ANSWERS, ids=[a[0] for a in ANSWERS])
def test_request_answer_table(name: str, stream: bytes, answer: bytes, size: int) -> None:
    """A responder built on the codec writes the golden answer bytes at every read size."""
    assert b"".join(decide(i).encode() for i in feed_in(stream, size)) == answer


ACTION_TABLE: list[tuple[str, bytes]] = [
    ("DUNNO", b"action=DUNNO\n\n"),
    ("ok", b"action=OK\n\n"),
    ("REJECT", b"action=REJECT\n\n"),
    ("REJECT 5.7.1 Rate limit exceeded", b"action=REJECT 5.7.1 Rate limit exceeded\n\n"),
    ("DEFER 4.7.1 too many", b"action=DEFER 4.7.1 too many\n\n"),
    ("  defer_if_permit   4.3.0 try later ", b"action=DEFER_IF_PERMIT 4.3.0 try later\n\n"),
    ("DEFER_IF_REJECT", b"action=DEFER_IF_REJECT\n\n"),
    ("451 4.7.1 slow down", b"action=451 4.7.1 slow down\n\n"),
    ("550 no thanks", b"action=550 no thanks\n\n"),
    ("421 4.7.0 go away", b"action=421 4.7.0 go away\n\n"),
    ("HOLD", b"action=HOLD\n\n"),
    ("HOLD rate limit exceeded", b"action=HOLD rate limit exceeded\n\n"),
    ("DISCARD", b"action=DISCARD\n\n"),
    ("INFO note", b"action=INFO note\n\n"),
    ("WARN over limit", b"action=WARN over limit\n\n"),
    ("BCC audit@example.org", b"action=BCC audit@example.org\n\n"),
    ("REDIRECT quarantine@example.org", b"action=REDIRECT quarantine@example.org\n\n"),
    ("FILTER smtp:[127.0.0.1]:10025", b"action=FILTER smtp:[127.0.0.1]:10025\n\n"),
    ("PREPEND X-Rate-Limit: over", b"action=PREPEND X-Rate-Limit: over\n\n"),
    ("\tWARN\tnaïve", "action=WARN naïve\n\n".encode()),
]


@pytest.mark.parametrize(("text", "expected"), ACTION_TABLE, ids=[a[0] for a in ACTION_TABLE])
def test_action_table(text: str, expected: bytes) -> None:
    """Each action string parses and encodes to the golden wire bytes."""
    action = Action.parse(text)
    assert action.encode() == expected
    assert Action.parse(str(action)) == action


@pytest.mark.parametrize(("text", "expected"), ACTION_TABLE, ids=[a[0] for a in ACTION_TABLE])
@pytest.mark.parametrize("size", READ_SIZES)
def test_action_table_read_back(text: str, expected: bytes, size: int) -> None:
    """The encoded answer, read back in chunks like Postfix does, yields the same action."""
    data = Action.parse(text).encode() * 2
    buf = b"".join(data[i : i + size] for i in range(0, len(data), size))
    answers = [a for a in buf.split(b"\n\n") if a]
    assert [Action.parse(a.decode().removeprefix("action=")) for a in answers] == [
        Action.parse(text)
    ] * 2


BAD_ACTIONS = [
    ("", "empty action"),
    ("ACCEPT", "unknown access(5) action"),
    ("permit", "unknown access(5) action"),
    ("250 ok", "unknown access(5) action"),
    ("450", "needs a text"),
    ("451 5.7.1 mismatch", "must start with 4."),
    ("REJECT 4.7.1 mismatch", "must start with 5."),
    ("DEFER 5.7.1 mismatch", "must start with 4."),
    ("DUNNO extra", "takes no text"),
    ("BCC", "needs a user@domain"),
    ("REDIRECT nobody", "needs a user@domain"),
    ("FILTER nowhere", "needs a transport:destination"),
    ("PREPEND not a header", "needs a 'Name: value' header"),
]


@pytest.mark.parametrize(
    ("text", "message"), BAD_ACTIONS, ids=[b[0] or "empty" for b in BAD_ACTIONS]
)
def test_bad_actions(text: str, message: str) -> None:
    """Unknown verbs and arguments Postfix would refuse raise ValueError naming the problem."""
    with pytest.raises(ValueError, match=re.escape(message)):
        Action.parse(text)


def test_action_text_cannot_break_framing() -> None:
    """CR, LF and NUL in the text become spaces and the text is bounded."""
    action = Action("REJECT", "5.7.1 a\r\nb\0c\n" + "x" * 5000)
    wire_ = action.encode()
    assert wire_.startswith(b"action=REJECT 5.7.1 a b c ")
    assert wire_.count(b"\n") == 2 and wire_.endswith(b"\n\n")
    assert len(action.text) == MAX_TEXT


def test_action_constants_and_repr() -> None:
    """DUNNO is the module constant and the cached wire bytes stay out of repr and equality."""
    assert DUNNO.encode() == b"action=DUNNO\n\n"
    assert Action("dunno") == DUNNO
    assert repr(Action("HOLD", "x")) == "Action(verb='HOLD', text='x')"
    assert {"OK", "DUNNO", "REJECT", "DEFER", "HOLD", "DISCARD", "PREPEND"} <= ACTIONS


def test_request_properties() -> None:
    """The convenience properties read, normalise and default the attributes."""
    req = feed_in(wire({**EOM, "protocol_state": "end-of-message"}), 4096)[0]
    assert req.protocol_state == "END-OF-MESSAGE"
    assert (req.size, req.recipient_count) == (48213, 3)
    assert (req.sender, req.recipient, req.sasl_username) == (
        "alice@example.org",
        "",
        EOM["sasl_username"],
    )
    assert (req.client_address, req.queue_id, req.instance) == (
        "192.0.2.10",
        "4Xk2Lq0bWnz9tN",
        "1a2b.6543210f.1",
    )
    assert req.get("client_port") == "52114" and req.get("nope", "d") == "d"
    bare = PolicyRequest({"size": "12k", "recipient_count": ""})
    assert (bare.size, bare.recipient_count, bare.protocol_state, bare.sender) == (0, 0, "", "")


def test_errors_carry_reason_and_resync() -> None:
    """Every error has a metric label; only framing-losing errors have resync False."""
    expected = {
        LineTooLong: ("line_too_long", False),
        RequestTooLarge: ("request_too_large", False),
        TooManyAttributes: ("too_many_attributes", True),
        MalformedLine: ("malformed_line", True),
        DuplicateAttribute: ("duplicate_attribute", True),
        BadRequestType: ("bad_request_type", True),
    }
    for cls, (reason, resync) in expected.items():
        assert issubclass(cls, ProtocolError)
        assert (cls.reason, cls.resync) == (reason, resync)


def test_pending_and_dead() -> None:
    """pending reports a buffered partial request; a framing error makes the parser dead."""
    parser = PolicyParser(**SMALL)
    assert not parser.pending
    assert parser.feed(b"request=smtpd_access_policy\n") == []
    assert parser.pending and not parser.dead
    assert norm(parser.feed(b"\n")) == [{"request": "smtpd_access_policy"}]
    assert not parser.pending
    parser.feed(b"\r")
    assert parser.pending  # a lone CR may start a CRLF
    assert norm(parser.feed(b"\n" + b"x" * 100)) == [LineTooLong]
    assert parser.dead and not parser.pending
    assert parser.feed(wire(MINI)) == []


def test_invalid_limits_rejected() -> None:
    """Limits below one byte or attribute are refused."""
    with pytest.raises(ValueError, match="limits"):
        PolicyParser(max_line=0)


def test_invalid_bytes_round_trip() -> None:
    """Values decode without error and re-encode to the exact bytes received."""
    raw = bytes(range(256)).replace(b"\n", b"").replace(b"\r", b"")
    req = feed_in(b"request=smtpd_access_policy\nx=" + raw + b"\n\n", 4096)[0]
    assert req.get("x").encode("utf-8", "surrogateescape") == raw


# --------------------------------------------------------------------------- properties

noise = st.binary(max_size=400) | st.lists(
    st.sampled_from(
        [b"\n", b"\r", b"=", b"a", b"request=smtpd_access_policy\n", b"\n\n", b"x=1\n"]
    ),
    max_size=60,
).map(b"".join)
limits = st.sampled_from([{}, SMALL, {"max_line": 8, "max_attributes": 2, "max_request": 24}])


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split ``data`` at the given offsets."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=400, deadline=None)
@given(data=noise, cuts=st.lists(st.integers(0, 10_000), max_size=20), lim=limits)
def test_arbitrary_bytes_only_yield_protocol_errors(
    data: bytes, cuts: list[int], lim: dict[str, int]
) -> None:
    """Arbitrary bytes never raise: every outcome is a request or a ProtocolError."""
    parser = PolicyParser(**lim)
    for chunk in chunked(data, cuts):
        for item in parser.feed(chunk):
            assert isinstance(item, PolicyRequest | ProtocolError)
            assert isinstance(item.reason if isinstance(item, ProtocolError) else "", str)


@settings(max_examples=400, deadline=None)
@given(data=noise, cuts=st.lists(st.integers(0, 10_000), max_size=20), lim=limits)
def test_split_points_do_not_matter(data: bytes, cuts: list[int], lim: dict[str, int]) -> None:
    """Splitting a stream anywhere gives the same outcomes as one read."""
    whole = PolicyParser(**lim)
    expected = norm(whole.feed(data))
    parser = PolicyParser(**lim)
    got: list[Any] = []
    for chunk in chunked(data, cuts):
        got.extend(parser.feed(chunk))
    assert norm(got) == expected
    assert (parser.pending, parser.dead) == (whole.pending, whole.dead)


names = st.from_regex(r"[a-z_]{1,20}", fullmatch=True).filter(lambda n: n != "request")
values = st.binary(max_size=60).filter(lambda v: b"\n" not in v and not v.endswith(b"\r"))
requests = st.dictionaries(names, values, max_size=30).map(
    lambda d: (
        {"request": "smtpd_access_policy"}
        | {k: v.decode("utf-8", "surrogateescape") for k, v in d.items()}
    )
)


@settings(max_examples=300, deadline=None)
@given(reqs=st.lists(requests, min_size=1, max_size=5), cuts=st.lists(st.integers(0, 10_000)))
def test_valid_requests_round_trip(reqs: list[dict[str, str]], cuts: list[int]) -> None:
    """Generated valid requests come back attribute for attribute, however they are split."""
    stream = b"".join(wire(r) for r in reqs)
    parser = PolicyParser()
    got: list[Any] = []
    for chunk in chunked(stream, cuts):
        got.extend(parser.feed(chunk))
    assert norm(got) == reqs
    assert not parser.pending


@settings(max_examples=300, deadline=None)
@given(
    verb=st.sampled_from(["REJECT", "DEFER", "HOLD", "WARN", "INFO", "DISCARD", "550", "451"]),
    text=st.text(max_size=600),
)
def test_action_text_always_safe(verb: str, text: str) -> None:
    """Any text yields a single-line answer or a ValueError, never broken framing."""
    try:
        action = Action(verb, text)
    except ValueError:
        return
    data = action.encode()
    assert data.endswith(b"\n\n") and data.count(b"\n") == 2
    assert b"\r" not in data and b"\0" not in data
    assert Action.parse(str(action)) == action
