"""Compiled limits: applicability, subjects, overrides and breach answers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from policy.rules import client_prefix, compile_rules, domain_of, in_networks
from services.config import Window, build_config


def rules_for(limits: dict[str, dict[str, object]], **policyd: object):  # type: ignore[no-untyped-def]
    cfg = build_config({"policyd": {"limits": limits, **policyd}})
    return compile_rules(cfg.policyd)


def test_domain_of() -> None:
    """Domains are lower-cased; the null sender has none."""
    assert domain_of("Alice@Example.ORG") == "example.org"
    assert domain_of("") == ""
    assert domain_of("postmaster") == ""


def test_client_prefix_lengths() -> None:
    """Client prefixes use the configured IPv4 and IPv6 lengths."""
    assert client_prefix("192.0.2.77", 24, 64) == "192.0.2.0/24"
    assert client_prefix("2001:db8:1:2:3::4", 24, 64) == "2001:db8:1:2::/64"
    assert client_prefix("unknown", 24, 64) == ""


def test_subject_for_each_key_part() -> None:
    """Each key part reads the right attribute; combined keys join with '|'."""
    (rule,) = rules_for({"x": {"key": ["sasl_username", "client_prefix"], "windows": ["1/1h"]}})
    attrs = {"sasl_username": "Alice@Example.org", "client_address": "198.51.100.9"}
    assert rule.subject(attrs) == "alice@example.org|198.51.100.0/24"
    assert rule.subject({"client_address": "198.51.100.9"}) == ""


def test_applies_to_authenticated_only() -> None:
    """applies_to = authenticated skips requests without a SASL login."""
    (rule,) = rules_for(
        {"x": {"key": "sender", "windows": ["1/1h"], "applies_to": "authenticated"}}
    )
    assert rule.applies({"sasl_username": "a@b.c"})
    assert not rule.applies({"sasl_username": ""})


def test_networks_and_exclusions() -> None:
    """networks selects clients; exclude_networks and exclude_senders drop them."""
    (rule,) = rules_for(
        {
            "x": {
                "key": "client_address",
                "windows": ["1/1h"],
                "networks": ["192.0.2.0/24", "2001:db8::/32"],
                "exclude_networks": ["192.0.2.128/25"],
                "exclude_senders": ["@lists.example.org"],
            }
        }
    )
    assert rule.applies({"client_address": "192.0.2.1"})
    assert rule.applies({"client_address": "2001:db8::1"})
    assert not rule.applies({"client_address": "192.0.2.200"})
    assert not rule.applies({"client_address": "203.0.113.1"})
    assert not rule.applies({"client_address": "192.0.2.1", "sender": "x@lists.example.org"})


def test_in_networks_ignores_garbage() -> None:
    """A non-IP client address is in no network."""
    nets = rules_for({"x": {"key": "global", "windows": ["1/1h"], "networks": ["0.0.0.0/0"]}})[
        0
    ].cfg.networks
    assert not in_networks("unknown", nets)


def test_overrides_user_then_domain_then_default() -> None:
    """A user's override beats the domain default, which beats the limit's windows."""
    (rule,) = rules_for(
        {
            "x": {
                "key": "sasl_username",
                "windows": ["100/1h", "1000/1d"],
                "overrides": {
                    "@example.org": ["500/1d"],
                    "alice@example.org": ["5000/1d"],
                    "bulk@example.org": "unlimited",
                },
            }
        }
    )
    assert rule.windows_for("carol@other.net") == (Window(100, 3600), Window(1000, 86400))
    assert rule.windows_for("bob@example.org") == (Window(100, 3600), Window(500, 86400))
    assert rule.windows_for("alice@example.org") == (Window(100, 3600), Window(5000, 86400))
    assert rule.windows_for("bulk@example.org") == ()


def test_breach_action_text() -> None:
    """The default defer answer is 4.7.1 with the limit filled in; templates work."""
    r1, r2, r3 = rules_for(
        {
            "a": {"key": "sender", "windows": ["10/1h"]},
            "b": {
                "key": "sender",
                "windows": ["10/1h"],
                "action": "reject",
                "reply": "5.7.1 {name} {subject}",
            },
            "c": {
                "key": "sender",
                "windows": ["10/1h"],
                "action": "prepend",
                "prepend_header": "X-Rate: over",
            },
        }
    )
    a = r1.breach_action(Window(10, 3600), "s@x")
    assert a.verb == "DEFER"
    assert a.text == "4.7.1 Rate limit exceeded (10 messages per 1h), try again later"
    b = r2.breach_action(Window(10, 3600), "s@x")
    assert (b.verb, b.text) == ("REJECT", "5.7.1 b s@x")
    c = r3.breach_action(Window(10, 3600), "s@x")
    assert (c.verb, c.text) == ("PREPEND", "X-Rate: over")
    assert r1.blocking and r2.blocking and not r3.blocking


@given(st.ip_addresses(v=4), st.integers(0, 32))
def test_ipv4_prefix_fast_path_matches_ipaddress(ip: object, bits: int) -> None:
    """The dotted-quad fast path agrees with the ipaddress module for every address and length."""
    import ipaddress

    expected = str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))
    assert client_prefix(str(ip), bits, 64) == expected


def test_prefix_rejects_malformed_ipv4() -> None:
    """Out-of-range octets, leading zeros and junk are not addresses."""
    for bad in (
        "256.1.1.1",
        "1.2.3",
        "01.2.3.4",
        "a.b.c.d",
        "1.2.3.4.5",
        "-1.2.3.4",
        " 1.2.3.4",
        "+1.2.3.4",
        "",
    ):
        assert client_prefix(bad, 24, 64) == "", bad


@given(
    st.ip_addresses(v=4), st.lists(st.tuples(st.ip_addresses(v=4), st.integers(0, 32)), max_size=4)
)
def test_in_networks_fast_path_matches_ipaddress(
    ip: object, nets: list[tuple[object, int]]
) -> None:
    """IPv4 membership by integer masks agrees with the ipaddress module."""
    import ipaddress

    networks = tuple(ipaddress.ip_network(f"{n}/{b}", strict=False) for n, b in nets)
    expected = any(ipaddress.ip_address(str(ip)) in n for n in networks)
    assert in_networks(str(ip), networks) == expected


def test_reply_with_explicit_smtp_code() -> None:
    """A reply starting with a 4xx/5xx code is answered with that code; a wrong class is refused."""
    (rule,) = rules_for(
        {"x": {"key": "sender", "windows": ["1/1h"], "reply": "421 4.7.0 Too fast, {subject}"}}
    )
    a = rule.breach_action(Window(1, 3600), "s@x")
    assert (a.verb, a.text) == ("421", "4.7.0 Too fast, s@x")
    import pytest

    from services.config import ConfigError

    with pytest.raises(ConfigError, match="reply"):
        rules_for({"x": {"key": "sender", "windows": ["1/1h"], "reply": "554 5.7.1 no"}})
