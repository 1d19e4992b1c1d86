"""The decision engine with the memory store: two-phase accounting and answers, no sockets."""

from __future__ import annotations

from typing import Any

from policy.decide import Decision, Engine, Session
from policy.protocol import PolicyRequest
from policy.store_memory import MemoryStore
from services.config import build_config
from tests.fixtures.policy_requests import request


class Harness:
    """Engine + memory store + one connection's session, driven synchronously."""

    def __init__(self, limits: dict[str, Any], **policyd: Any) -> None:
        self.now = 1_000_000.0
        self.store = MemoryStore(clock=lambda: self.now)
        self.engine = Engine(build_config({"policyd": {"limits": limits, **policyd}}).policyd)
        self.session = Session()

    def ask(self, **kw: Any) -> Decision:
        plan = self.engine.plan(PolicyRequest(request(**kw)), self.session)
        if plan.stale:
            self.store.release_now(plan.stale)
        if plan.early is not None:
            return plan.early
        if plan.op == "reserve":
            return self.engine.conclude(plan, self.store.reserve_now(plan.charges, self.engine.ttl))
        return self.engine.conclude(plan, self.store.commit_now(plan.charges, plan.release))

    def message(self, instance: str, rcpts: int = 1, size: int = 100, **kw: Any) -> list[str]:
        verbs = [
            str(self.ask(instance=instance, recipient=f"r{i}@x.test", **kw).action)
            for i in range(rcpts)
        ]
        ok = verbs.count("DUNNO")
        verbs.append(
            str(
                self.ask(
                    state="END-OF-MESSAGE", instance=instance, recipient_count=ok, size=size, **kw
                ).action
            )
        )
        return verbs


def test_no_limits_is_dunno() -> None:
    """Without limits every request is DUNNO with reason no_limit."""
    h = Harness({})
    d = h.ask()
    assert (str(d.action), d.reason) == ("DUNNO", "no_limit")


def test_reservation_counts_while_pending() -> None:
    """A reserved but not yet committed message already counts for concurrent transactions."""
    h = Harness({"one": {"key": "sender", "windows": ["1/1h"]}})
    assert str(h.ask(instance="a").action) == "DUNNO"
    other = Harness.__new__(Harness)
    other.__dict__.update(h.__dict__, session=Session())
    assert str(other.ask(instance="b").action).startswith("DEFER")


def test_messages_unit_counts_once_per_transaction() -> None:
    """Many recipients of one message use one message of the budget."""
    h = Harness({"two": {"key": "sender", "windows": ["2/1h"]}})
    assert h.message("a", rcpts=5) == ["DUNNO"] * 6
    assert h.message("b", rcpts=1) == ["DUNNO"] * 2
    assert str(h.ask(instance="c").action).startswith("DEFER")


def test_rcpt_accounting_mode_counts_at_rcpt() -> None:
    """accounting = rcpt charges at RCPT, without END-OF-MESSAGE."""
    h = Harness({"two": {"key": "sender", "windows": ["2/1h"]}}, accounting="rcpt")
    assert str(h.ask(instance="a").action) == "DUNNO"
    assert str(h.ask(instance="b").action) == "DUNNO"
    assert str(h.ask(instance="c").action).startswith("DEFER")


def test_end_of_message_only_wiring() -> None:
    """With the policy only at END-OF-MESSAGE, messages and recipients are charged there."""
    h = Harness({"rc": {"key": "sender", "unit": "recipients", "windows": ["5/1h"]}})
    ok = h.ask(state="END-OF-MESSAGE", instance="a", recipient_count=4)
    assert str(ok.action) == "DUNNO"
    over = h.ask(state="END-OF-MESSAGE", instance="b", recipient_count=2)
    assert str(over.action).startswith("DEFER")


def test_recipient_domain_limit() -> None:
    """A per-recipient-domain limit counts each domain separately."""
    h = Harness({"dom": {"key": "recipient_domain", "unit": "recipients", "windows": ["1/1h"]}})
    assert str(h.ask(instance="a", recipient="x@one.test").action) == "DUNNO"
    assert str(h.ask(instance="a", recipient="y@two.test").action) == "DUNNO"
    assert str(h.ask(instance="a", recipient="z@one.test").action).startswith("DEFER")


def test_prepend_and_hold_accept_but_mark() -> None:
    """Non-blocking breach actions answer PREPEND/HOLD and still count the mail."""
    h = Harness(
        {
            "tag": {
                "key": "sender",
                "windows": ["1/1h"],
                "action": "prepend",
                "prepend_header": "X-Rate: high",
            },
            "hold": {"key": "client_address", "windows": ["2/1h"], "action": "hold"},
        }
    )
    assert h.message("a") == ["DUNNO", "DUNNO"]
    assert h.message("b")[0] == "PREPEND X-Rate: high"
    d = h.ask(instance="c")
    assert str(d.action).startswith("HOLD")  # hold outranks prepend; both limits breached


def test_strongest_answer_wins() -> None:
    """When a reject and a defer limit are both breached, REJECT is answered."""
    h = Harness(
        {
            "soft": {"key": "sender", "windows": ["1/1h"]},
            "hard": {"key": "client_address", "windows": ["1/1h"], "action": "reject"},
        }
    )
    h.message("a")
    d = h.ask(instance="b")
    assert d.action.verb == "REJECT" and d.rule == "hard"


def test_allow_list_and_exemption_skip_counting() -> None:
    """Allow-listed senders and exempt subjects are never counted."""
    h = Harness(
        {"one": {"key": "sender", "windows": ["1/1h"]}}, allow={"senders": ["vip@example.org"]}
    )
    for i in range(3):
        assert h.ask(instance=f"v{i}", sender="vip@example.org").reason == "allowlisted"
    h.engine.exempt = {"example.net": 60.0}
    for i in range(3):
        assert h.ask(instance=f"e{i}", sender="a@example.net").reason == "exempt"


def test_unauthenticated_rule_ignores_logged_in_users() -> None:
    """applies_to = unauthenticated leaves SASL users alone."""
    h = Harness(
        {"anon": {"key": "client_prefix", "windows": ["1/1h"], "applies_to": "unauthenticated"}}
    )
    h.message("a")
    assert str(h.ask(instance="b").action).startswith("DEFER")
    assert str(h.ask(instance="c", user="u@example.org").action) == "DUNNO"


def test_bytes_reserve_uses_declared_size() -> None:
    """At RCPT a bytes limit reserves the size declared in MAIL FROM SIZE=."""
    h = Harness({"b": {"key": "sender", "unit": "bytes", "windows": ["1000/1h"]}})
    assert str(h.ask(instance="a", size=1500).action).startswith("DEFER")
    assert str(h.ask(instance="b", size=900).action) == "DUNNO"
