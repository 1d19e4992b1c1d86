"""End to end: a private real Postfix asks pfm-policyd, real SMTP shows the limits."""

from __future__ import annotations

import asyncio
import shutil
import smtplib
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.postfix_instance import world_dir
from tests.integration.policyd_harness import address, make_config, metric, running

pytestmark = pytest.mark.e2e


def policy_restrictions(port: int) -> dict[str, str]:
    svc = f"check_policy_service {{ inet:127.0.0.1:{port}, default_action=DUNNO }}"
    return {
        "smtpd_recipient_restrictions": f"reject_unauth_destination, {svc}",
        "smtpd_end_of_data_restrictions": svc,
        "smtpd_policy_service_timeout": "10s",
    }


def send(port: int, sender: str, rcpts: list[str], subject: str = "hello") -> dict[str, Any]:
    """Send one message; returns smtplib's refused-recipients dict (raises if all refused)."""
    msg = f"From: {sender}\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n\r\nbody\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        return dict(s.sendmail(sender, rcpts, msg))


async def test_eleventh_message_deferred(
    tmp_path: Path, postfix_factory: Any, smtp_sink: Any
) -> None:
    """With 10 messages/hour per sender, the 11th gets 4.7.1 in SMTP and in Postfix's log."""
    limits = {"sender_hourly": {"key": "sender", "windows": ["10/1h"]}}
    async with running(make_config(tmp_path, limits)) as svc:
        _, pport = address(svc)
        pf = postfix_factory(**policy_restrictions(pport))
        for i in range(10):
            assert await _to_thread(send, pf.port, "alice@example.org", [f"u{i}@example.org"]) == {}
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            await _to_thread(send, pf.port, "alice@example.org", ["u10@example.org"])
        code, text = info.value.recipients["u10@example.org"]
        assert code == 450
        assert b"4.7.1" in text and b"Rate limit exceeded (10 messages per 1h)" in text
        pf.wait_for_log(r"NOQUEUE: reject: RCPT from .*450 4\.7\.1 <u10@example\.org>", timeout=10)
        await _to_thread(smtp_sink.wait_for, 10, 30)
        assert await _to_thread(send, pf.port, "bob@example.org", ["x@example.org"]) == {}


async def test_recipient_limit_defers_exactly_the_excess(
    tmp_path: Path, postfix_factory: Any, smtp_sink: Any
) -> None:
    """A 3-recipient limit accepts 3 of 5 recipients and defers the other 2; the 3 are delivered."""
    limits = {"rcpts": {"key": "sender", "unit": "recipients", "windows": ["3/1h"]}}
    async with running(make_config(tmp_path, limits)) as svc:
        pf = postfix_factory(**policy_restrictions(address(svc)[1]))
        rcpts = [f"r{i}@example.org" for i in range(5)]
        refused = await _to_thread(send, pf.port, "carol@example.org", rcpts)
        assert sorted(refused) == ["r3@example.org", "r4@example.org"]
        assert all(code == 450 for code, _ in refused.values())
        msgs = await _to_thread(smtp_sink.wait_for, 1, 30)
        assert sorted(msgs[-1].rcpt_tos) == rcpts[:3]


async def test_header_check_reject_is_not_charged(
    tmp_path: Path, postfix_factory: Any, smtp_sink: Any, request: pytest.FixtureRequest
) -> None:
    """A message rejected by header_checks after RCPT does not use up the sender's limit."""
    checks_dir = world_dir("checks-")
    request.addfinalizer(lambda: shutil.rmtree(checks_dir, ignore_errors=True))
    checks = checks_dir / "header_checks"
    checks.write_text("/^Subject: reject-me/ REJECT no thanks\n")
    checks.chmod(0o644)
    limits = {"one": {"key": "sender", "windows": ["1/1h"]}}
    pf = postfix_factory(header_checks=f"regexp:{checks}")
    cfg = make_config(tmp_path, limits, maillog=str(pf.maillog), maillog_poll=0.05)
    async with running(cfg) as svc:
        pf.extra.update(policy_restrictions(address(svc)[1]))
        pf.reload()
        await asyncio.sleep(0.5)
        for i in range(3):
            with pytest.raises(smtplib.SMTPDataError) as info:
                await _to_thread(send, pf.port, "dave@example.org", ["x@example.org"], "reject-me")
            assert info.value.smtp_code == 550
            for _ in range(
                100
            ):  # the cleanup reject reaches the log, pfm-policyd takes the charge back
                if metric(svc, "pfm_policyd_uncommitted_total") == i + 1:
                    break
                await asyncio.sleep(0.05)
            assert metric(svc, "pfm_policyd_uncommitted_total") == i + 1
        assert await _to_thread(send, pf.port, "dave@example.org", ["x@example.org"]) == {}
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            await _to_thread(send, pf.port, "dave@example.org", ["y@example.org"])


async def _to_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)
