"""The private Postfix fixture itself, and the Postfix policy-protocol facts our design rests on."""

from __future__ import annotations

import asyncio
import contextlib
import re
import smtplib
from collections.abc import AsyncIterator, Callable

import pytest

from tests.e2e.conftest import PostfixFactory
from tests.e2e.smtp_sink import SmtpSink

pytestmark = pytest.mark.e2e

Request = dict[str, str]


class InlinePolicy:
    """A tiny Postfix policy server: records every request, answers ``decide(request)``."""

    def __init__(self, decide: Callable[[Request], str]) -> None:
        self.decide = decide
        self.requests: list[Request] = []
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        request: Request = {}
        try:
            while line := await reader.readline():
                if line == b"\n":
                    self.requests.append(request)
                    writer.write(f"action={self.decide(request)}\n\n".encode())
                    await writer.drain()
                    request = {}
                else:
                    name, _, value = line.decode().rstrip("\n").partition("=")
                    request[name] = value
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def states(self) -> list[str]:
        """protocol_state of each request so far, in order."""
        return [r.get("protocol_state", "") for r in self.requests]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[InlinePolicy]:
        """Listen on a free loopback port while the block runs; close every connection after."""
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for writer in list(self._writers):
                writer.close()
            await server.wait_closed()
            await asyncio.sleep(0)


def send(
    port: int, rcpts: list[str], subject: str = "t", sender: str = "a@example.net"
) -> dict[str, tuple[int, bytes]]:
    """Send one message with smtplib; return the refused recipients (raises if all refused)."""
    msg = f"From: {sender}\r\nSubject: {subject}\r\n\r\nhi\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        return dict(s.sendmail(sender, rcpts, msg))


def policy(port: int) -> str:
    """The check_policy_service clause pointing at a policy server on ``port``."""
    return f"check_policy_service {{ inet:127.0.0.1:{port}, default_action=DUNNO }}"


async def test_message_reaches_sink(postfix_factory: PostfixFactory, smtp_sink: SmtpSink) -> None:
    """A message sent to the private Postfix is relayed to the sink."""
    pf = postfix_factory()
    assert await asyncio.to_thread(send, pf.port, ["user@example.org"]) == {}
    msgs = await asyncio.to_thread(smtp_sink.wait_for, 1, 30)
    assert msgs[0].mail_from == "a@example.net"
    assert msgs[0].rcpt_tos == ("user@example.org",)
    assert b"Subject: t" in msgs[0].data
    pf.wait_for_log(r"to=<user@example\.org>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+.*status=sent")
    assert pf.postqueue_json() == []


async def test_policy_defer_refuses_only_that_recipient(
    postfix_factory: PostfixFactory, smtp_sink: SmtpSink
) -> None:
    """A policy DEFER at RCPT gives that recipient 450 4.7.1; the other one is delivered."""

    def decide(r: Request) -> str:
        return "DEFER 4.7.1 test defer" if r["recipient"] == "blocked@example.org" else "DUNNO"

    async with InlinePolicy(decide).running() as srv:
        pf = postfix_factory(
            smtpd_recipient_restrictions=f"reject_unauth_destination, {policy(srv.port)}"
        )
        refused = await asyncio.to_thread(
            send, pf.port, ["user@example.org", "blocked@example.org"]
        )
        assert list(refused) == ["blocked@example.org"]
        code, text = refused["blocked@example.org"]
        assert code == 450
        assert text.startswith(b"4.7.1 ") and text.endswith(b"test defer")
        msgs = await asyncio.to_thread(smtp_sink.wait_for, 1, 30)
        assert msgs[0].rcpt_tos == ("user@example.org",)
        pf.wait_for_log(
            r"reject: RCPT from localhost\[127\.0\.0\.1\]: 450 4\.7\.1 .*test defer; "
            r"from=<a@example\.net> to=<blocked@example\.org>"
        )
        assert srv.states() == ["RCPT", "RCPT"]
        assert [r["recipient"] for r in srv.requests] == ["user@example.org", "blocked@example.org"]


async def test_protocol_states_sent_by_postfix(postfix_factory: PostfixFactory) -> None:
    """Without smtpd_delay_reject each stage has its own protocol_state; with it all are RCPT."""
    async with InlinePolicy(lambda r: "DUNNO").running() as srv:
        svc = policy(srv.port)
        stages = {
            "smtpd_client_restrictions": svc,
            "smtpd_helo_restrictions": svc,
            "smtpd_sender_restrictions": svc,
            "smtpd_recipient_restrictions": f"reject_unauth_destination, {svc}",
            "smtpd_data_restrictions": svc,
            "smtpd_end_of_data_restrictions": svc,
        }
        pf = postfix_factory(smtpd_delay_reject="no", **stages)
        assert await asyncio.to_thread(send, pf.port, ["user@example.org"]) == {}
        assert srv.states() == ["CONNECT", "EHLO", "MAIL", "RCPT", "DATA", "END-OF-MESSAGE"]
        eom = srv.requests[-1]
        assert (eom["recipient_count"], eom["size"]) == ("1", "39")
        assert re.fullmatch(r"[0-9A-F]{6,}", eom["queue_id"])
        srv.requests.clear()
        pf.extra["smtpd_delay_reject"] = "yes"
        pf.reload()
        pf.wait_for_log(r"reload -- version")
        assert await asyncio.to_thread(send, pf.port, ["user@example.org"]) == {}
        assert srv.states() == ["RCPT"] * 4 + ["DATA", "END-OF-MESSAGE"]


async def test_header_checks_reject_comes_after_end_of_message_request(
    postfix_factory: PostfixFactory, smtp_sink: SmtpSink
) -> None:
    """A header_checks REJECT still gets an END-OF-MESSAGE policy request before the 550."""
    async with InlinePolicy(lambda r: "DUNNO").running() as srv:
        svc = policy(srv.port)
        pf = postfix_factory(
            {"header_checks": "/^Subject: reject-me/ REJECT header says no\n"},
            header_checks="pcre:$config_directory/header_checks",
            smtpd_recipient_restrictions=f"reject_unauth_destination, {svc}",
            smtpd_end_of_data_restrictions=svc,
        )
        with pytest.raises(smtplib.SMTPDataError) as info:
            await asyncio.to_thread(send, pf.port, ["user@example.org"], "reject-me please")
        assert (info.value.smtp_code, info.value.smtp_error) == (550, b"5.7.1 header says no")
        assert srv.states() == ["RCPT", "END-OF-MESSAGE"]
        queue_id = srv.requests[-1]["queue_id"]
        pf.wait_for_log(
            rf"postfix/cleanup\[\d+\]: {queue_id}: reject: header Subject: reject-me please "
            r"from localhost\[127\.0\.0\.1\]; from=<a@example\.net> to=<user@example\.org> "
            r"proto=ESMTP helo=<[^>]*>: 5\.7\.1 header says no$"
        )
        assert f"{queue_id}: reject: END-OF-MESSAGE" not in pf.log_text()
        assert smtp_sink.messages == []


async def test_oversized_message_gets_no_end_of_message_request(
    postfix_factory: PostfixFactory, smtp_sink: SmtpSink
) -> None:
    """A message over message_size_limit (no SIZE= announced) ends with 552 and no EOM request."""

    def send_helo(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.helo("client.test")  # plain SMTP: no SIZE= on MAIL FROM, so smtpd learns late
            s.sendmail("a@example.net", ["user@example.org"], "Subject: big\r\n\r\n" + "x" * 4000)

    async with InlinePolicy(lambda r: "DUNNO").running() as srv:
        svc = policy(srv.port)
        pf = postfix_factory(
            message_size_limit="2000",
            smtpd_recipient_restrictions=f"reject_unauth_destination, {svc}",
            smtpd_end_of_data_restrictions=svc,
        )
        with pytest.raises(smtplib.SMTPDataError) as info:
            await asyncio.to_thread(send_helo, pf.port)
        assert info.value.smtp_code == 552
        assert srv.states() == ["RCPT"]
        pf.wait_for_log(r"warning: [0-9A-F]+: queue file size limit exceeded")
        assert smtp_sink.messages == []
