"""pfm-policyd over real sockets with the memory store: counting and answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.cli.main import main as _pfm
from tests.fixtures.policy_requests import PolicyClient
from tests.integration.policyd_harness import address, make_config, metric, running


async def pfm(argv: list[str]) -> int:
    """Run the CLI in a thread: it blocks on the admin socket the daemon serves on this loop."""
    return await asyncio.to_thread(_pfm, argv)


SENDER_3_PER_HOUR = {"sender_hourly": {"key": "sender", "windows": ["3/1h"]}}


async def send_message(
    c: PolicyClient, instance: str, rcpts: list[str], size: int = 100, **kw: str
) -> list[str]:
    """One transaction: RCPT per recipient, then END-OF-MESSAGE with the accepted count."""
    answers = [await c.ask(instance=instance, recipient=r, **kw) for r in rcpts]  # type: ignore[arg-type]
    accepted = sum(1 for a in answers if a == "DUNNO")
    if accepted:
        answers.append(
            await c.ask(
                state="END-OF-MESSAGE", instance=instance, size=size, recipient_count=accepted, **kw
            )  # type: ignore[arg-type]
        )
    return answers


async def test_message_limit_defers_the_fourth(tmp_path: Path) -> None:
    """With 3 messages/hour per sender, the 4th message's RCPT gets DEFER 4.7.1."""
    async with running(make_config(tmp_path, SENDER_3_PER_HOUR)) as svc:
        c = await PolicyClient.connect(*address(svc))
        for i in range(3):
            assert await send_message(c, f"i{i}", ["a@x.test", "b@x.test"]) == ["DUNNO"] * 3
        answer = await c.ask(instance="i3", recipient="a@x.test")
        assert answer.startswith("DEFER 4.7.1 Rate limit exceeded (3 messages per 1h)")
        assert (
            metric(
                svc,
                "pfm_policyd_limit_breaches_total",
                {"limit": "sender_hourly", "mode": "enforce"},
            )
            == 1
        )
        other = await c.ask(instance="i4", sender="carol@example.org")
        assert other == "DUNNO"
        await c.close()


async def test_recipient_limit_defers_only_excess_recipients(tmp_path: Path) -> None:
    """A 2-recipient limit defers exactly the recipients over it and commits the accepted ones."""
    limits = {"rcpts": {"key": "sender", "unit": "recipients", "windows": ["2/1h"]}}
    async with running(make_config(tmp_path, limits)) as svc:
        c = await PolicyClient.connect(*address(svc))
        answers = await send_message(c, "t1", ["a@x.test", "b@x.test", "c@x.test"])
        assert answers[:2] == ["DUNNO", "DUNNO"]
        assert answers[2].startswith("DEFER 4.7.1")
        assert answers[3] == "DUNNO"  # END-OF-MESSAGE
        assert (await c.ask(instance="t2", recipient="d@x.test")).startswith("DEFER")
        await c.close()
        assert (
            await pfm(
                ["policy", "--socket", str(tmp_path / "admin.sock"), "usage", "alice@example.org"]
            )
            == 0
        )


async def test_abandoned_transaction_is_not_charged(tmp_path: Path) -> None:
    """Reservations of a transaction without END-OF-MESSAGE are released by the next instance."""
    limits = {"one": {"key": "sender", "windows": ["1/1h"]}}
    async with running(make_config(tmp_path, limits)) as svc:
        c = await PolicyClient.connect(*address(svc))
        assert await c.ask(instance="rejected-later", recipient="a@x.test") == "DUNNO"
        # Postfix rejected the message after RCPT (e.g. header_checks): no END-OF-MESSAGE.
        assert await send_message(c, "next", ["a@x.test"]) == ["DUNNO", "DUNNO"]
        assert (await c.ask(instance="third")).startswith("DEFER")
        await c.close()


async def test_closed_connection_releases_reservations(tmp_path: Path) -> None:
    """A client that quits mid-transaction leaves nothing reserved."""
    limits = {"one": {"key": "sender", "windows": ["1/1h"]}}
    async with running(make_config(tmp_path, limits)) as svc:
        c = await PolicyClient.connect(*address(svc))
        assert await c.ask(instance="quit") == "DUNNO"
        await c.close()
        c2 = await PolicyClient.connect(*address(svc))
        for _ in range(50):
            answer = await c2.ask(instance="after")
            if answer == "DUNNO":
                break
        assert answer == "DUNNO"
        await c2.close()


async def test_bytes_quota_checked_at_rcpt_debited_at_eom(tmp_path: Path) -> None:
    """A bytes limit lets a message in while under it and defers the one that would exceed it."""
    limits = {"bytes": {"key": "sender", "unit": "bytes", "windows": ["1000/1h"]}}
    async with running(make_config(tmp_path, limits)) as svc:
        c = await PolicyClient.connect(*address(svc))
        assert await send_message(c, "b1", ["a@x.test"], size=600) == ["DUNNO", "DUNNO"]
        answers = await send_message(c, "b2", ["a@x.test"], size=600)
        assert answers[0] == "DUNNO"
        assert answers[1].startswith("DEFER 4.7.1")
        assert await send_message(c, "b3", ["a@x.test"], size=300) == ["DUNNO", "DUNNO"]
        answers = await send_message(
            c, "b4", ["a@x.test"], size=200
        )  # 900 used: RCPT fits, 1100 does not
        assert answers[0] == "DUNNO"
        assert answers[1].startswith("DEFER 4.7.1")
        await c.close()


async def test_shadow_mode_answers_dunno_and_counts(tmp_path: Path) -> None:
    """A shadow limit never refuses but logs and counts the breach."""
    limits = {"trial": {"key": "sender", "windows": ["1/1h"], "mode": "shadow"}}
    async with running(make_config(tmp_path, limits)) as svc:
        c = await PolicyClient.connect(*address(svc))
        for i in range(3):
            assert await send_message(c, f"s{i}", ["a@x.test"]) == ["DUNNO", "DUNNO"]
        assert (
            metric(svc, "pfm_policyd_limit_breaches_total", {"limit": "trial", "mode": "shadow"})
            >= 2
        )
        await c.close()


async def test_hierarchical_limits_all_apply(tmp_path: Path) -> None:
    """User overrides, domain defaults and a client limit are checked in one decision."""
    limits = {
        "user": {
            "key": "sasl_username",
            "windows": ["2/1h"],
            "overrides": {"@big.example": ["4/1h"], "vip@big.example": "unlimited"},
        },
        "client": {"key": "client_address", "windows": ["5/1h"]},
    }
    async with running(make_config(tmp_path, limits)) as svc:
        c = await PolicyClient.connect(*address(svc))
        kw = {"client": "198.51.100.1"}
        for i in range(2):
            assert (await send_message(c, f"u{i}", ["x@y.test"], user="u@small.example", **kw))[
                -1
            ] == "DUNNO"
        assert (await c.ask(instance="u2", user="u@small.example", **kw)).startswith("DEFER")
        for i in range(3):
            assert (await send_message(c, f"b{i}", ["x@y.test"], user="b@big.example", **kw))[
                -1
            ] == "DUNNO"
        # client limit (5) now reached: 2 + 3 messages from 198.51.100.1
        answer = await c.ask(instance="v0", user="vip@big.example", **kw)
        assert answer.startswith("DEFER")
        assert await c.ask(instance="v1", user="vip@big.example", client="198.51.100.2") == "DUNNO"
        await c.close()


async def test_allow_list_and_exemption(tmp_path: Path) -> None:
    """Allow-listed networks are never counted; `pfm policy exempt` lifts limits for a subject."""
    cfg = make_config(
        tmp_path,
        {"one": {"key": "sender", "windows": ["1/1h"]}},
        allow={"networks": ["10.0.0.0/8"]},
    )
    sock = str(tmp_path / "admin.sock")
    async with running(cfg) as svc:
        c = await PolicyClient.connect(*address(svc))
        for i in range(3):
            assert (await send_message(c, f"a{i}", ["x@y.test"], client="10.1.2.3"))[-1] == "DUNNO"
        assert (await send_message(c, "n0", ["x@y.test"]))[-1] == "DUNNO"
        assert (await c.ask(instance="n1")).startswith("DEFER")
        assert (
            await pfm(["policy", "--socket", sock, "exempt", "alice@example.org", "--for", "1h"])
            == 0
        )
        assert await c.ask(instance="n2") == "DUNNO"
        assert (
            await pfm(["policy", "--socket", sock, "exempt", "alice@example.org", "--for", "0"])
            == 0
        )
        assert await pfm(["policy", "--socket", sock, "reset", "alice@example.org"]) == 0
        assert (await send_message(c, "n3", ["x@y.test"]))[-1] == "DUNNO"
        await c.close()


async def test_other_protocol_states_are_dunno(tmp_path: Path) -> None:
    """CONNECT, MAIL, DATA and unknown states are answered DUNNO without counting."""
    async with running(make_config(tmp_path, SENDER_3_PER_HOUR)) as svc:
        c = await PolicyClient.connect(*address(svc))
        for state in ("CONNECT", "EHLO", "MAIL", "DATA", "VRFY", "ETRN", "SOMETHING-NEW"):
            assert await c.ask(state=state) == "DUNNO"
        await c.close()
