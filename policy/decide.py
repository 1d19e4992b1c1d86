"""The decision layer: request + transaction state -> store plan -> answer.

Two-phase accounting. At RCPT every applicable limit *reserves* one recipient (or the
message, or the declared size) and only recipients over a limit are refused; a refused
request charges nothing. At END-OF-MESSAGE the reservations of the transaction (Postfix's
``instance``) are committed with the accepted ``recipient_count`` and the real ``size``.
Reservations of a transaction that never reaches END-OF-MESSAGE are released when the
connection moves on to a new instance or closes, and expire on their own otherwise.

Planning and concluding are pure; the caller runs the store operation in between, either
synchronously (memory) or awaited (Redis).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from services.config import PolicydConfig, Window

from .protocol import DUNNO, Action, PolicyRequest
from .rules import SEVERITY, Rule, allowed, compile_rules, domain_of, parse_action
from .store import Charge, Counter, Outcome

Op = Literal["none", "reserve", "commit"]


@dataclass(slots=True)
class Reserved:
    """What one transaction holds on one counter."""

    rule: Rule
    subject: str
    window: Window
    members: list[str]


@dataclass(slots=True)
class Txn:
    """The open message transaction of one policy connection."""

    instance: str
    reserved: dict[Counter, Reserved] = field(default_factory=dict)

    def members(self) -> list[tuple[Counter, str]]:
        return [(c, m) for c, r in self.reserved.items() for m in r.members]


@dataclass(slots=True)
class Session:
    """Per-connection state: the transaction in progress."""

    txn: Txn | None = None


# One limit window's view of a request, for logs and metrics (logged as a JSON array):
# (limit, subject, used before, weight, max, window seconds, breached, shadow)
Hit = tuple[str, str, int, int, int, float, bool, bool]
HIT_RULE, HIT_SUBJECT, HIT_USED, HIT_WEIGHT, HIT_MAX, HIT_WINDOW, HIT_BREACHED, HIT_SHADOW = range(
    8
)


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer and why."""

    action: Action
    reason: str
    rule: str = ""
    hits: tuple[Hit, ...] = ()
    fallback: bool = False


@dataclass(slots=True)
class Plan:
    """What the store must do for one request; ``early`` is set when no store call is needed."""

    op: Op
    request: PolicyRequest
    session: Session
    charges: list[Charge] = field(default_factory=list)
    meta: list[tuple[Rule, str, Window]] = field(default_factory=list)
    release: list[tuple[Counter, str]] = field(default_factory=list)
    stale: list[tuple[Counter, str]] = field(default_factory=list)
    early: Decision | None = None
    fail_closed: bool = False


class CommitLog:
    """Recent END-OF-MESSAGE commits by queue id, so a later cleanup reject can undo them."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self.entries: OrderedDict[str, list[tuple[Counter, str]]] = OrderedDict()

    def add(self, queue_id: str, members: list[tuple[Counter, str]]) -> None:
        self.entries[queue_id] = members
        if len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)

    def pop(self, queue_id: str) -> list[tuple[Counter, str]] | None:
        return self.entries.pop(queue_id, None)


_NO_LIMITS = Decision(DUNNO, "no_limit")
_IGNORED_STATE = Decision(DUNNO, "state")


class Engine:
    """Turns requests into store plans and store outcomes into answers, for one config."""

    def __init__(self, cfg: PolicydConfig) -> None:
        self.cfg = cfg
        self.rules: tuple[Rule, ...] = compile_rules(cfg)
        self.tempfail = parse_action(cfg.tempfail_action, "policyd.tempfail_action")
        self.bad_request = parse_action(cfg.bad_request_action, "policyd.bad_request_action")
        self.overload = parse_action(cfg.overload_action, "policyd.overload_action")
        self.two_phase = cfg.accounting == "two-phase"
        self.ttl = float(cfg.reservation_ttl)
        self.exempt: Mapping[str, float] = {}
        self.commits: CommitLog | None = None  # set when the mail log is followed
        self._allow_early = Decision(DUNNO, "allowlisted")
        self._exempt_early = Decision(DUNNO, "exempt")

    # ------------------------------------------------------------------ planning

    def plan(self, req: PolicyRequest, session: Session) -> Plan:
        """Work out the store operation a request needs (pure apart from session reads)."""
        state = req.protocol_state
        attrs = req.attrs
        instance = req.instance
        plan = Plan("none", req, session)
        txn = session.txn
        if txn is not None and instance and txn.instance != instance:
            # The previous transaction of this connection ended without END-OF-MESSAGE.
            plan.stale = txn.members()
            session.txn = txn = None
        if state == "RCPT":
            if self._skip(attrs, plan):
                return plan
            return self._plan_rcpt(req, plan, txn)
        if state == "END-OF-MESSAGE":
            if self._skip(attrs, plan):
                if txn is not None:
                    plan.stale += txn.members()
                    session.txn = None
                return plan
            if txn is not None:
                plan.release = txn.members()
            return self._plan_eom(req, plan, txn)
        plan.early = _IGNORED_STATE
        return plan

    def _skip(self, attrs: Mapping[str, str], plan: Plan) -> bool:
        if not self.rules:
            plan.early = _NO_LIMITS
            return True
        if self.cfg.allow and allowed(self.cfg.allow, attrs):
            plan.early = self._allow_early
            return True
        if self.exempt:
            ex = self.exempt
            sender = attrs.get("sender", "").lower()
            for v in (
                attrs.get("sasl_username", "").lower(),
                sender,
                domain_of(sender),
                attrs.get("client_address", ""),
            ):
                if v and v in ex:
                    plan.early = self._exempt_early
                    return True
        return False

    def _subjects(self, rule: Rule, attrs: Mapping[str, str]) -> str:
        if not rule.applies(attrs):
            return ""
        subject = rule.subject(attrs)
        if not subject or (self.exempt and subject in self.exempt):
            return ""
        return subject

    def _plan_rcpt(self, req: PolicyRequest, plan: Plan, txn: Txn | None) -> Plan:
        attrs = req.attrs
        instance = req.instance or "-"
        two_phase = self.two_phase
        tag = "r:" if two_phase else "c:"
        msg_member = tag + instance
        rcpt_member = ""
        exempt = self.exempt
        authed = bool(attrs.get("sasl_username"))
        charges, meta = plan.charges, plan.meta
        for rule in self.rules:
            if rule.auth and authed != (rule.auth == 1):
                continue
            if rule.filtered and not rule.passes_filters(attrs):
                continue
            getters = rule.getters
            subject = getters[0](attrs) if len(getters) == 1 else rule.subject(attrs)
            if not subject or (exempt and subject in exempt):
                continue
            unit = rule.cfg.unit
            if unit == "messages":
                weight, member = 1, msg_member
            elif unit == "recipients":
                if not rcpt_member:
                    rcpt_member = f"{tag}{instance}/{attrs.get('recipient', '').lower()}"
                weight, member = 1, rcpt_member
            elif two_phase:
                weight, member = max(1, req.size), msg_member
            else:
                continue  # size is only real at END-OF-MESSAGE
            enforce = rule.blocking and not rule.shadow
            if not rule.fail_open:
                plan.fail_closed = True
            for c, w in rule.counters(subject):
                charges.append(Charge(c, weight, member, enforce))
                meta.append((rule, subject, w))
        if not charges:
            plan.early = _NO_LIMITS
            return plan
        plan.op = "reserve" if self.two_phase else "commit"
        if self.two_phase and txn is None:
            plan.session.txn = Txn(req.instance)
        return plan

    def _plan_eom(self, req: PolicyRequest, plan: Plan, txn: Txn | None) -> Plan:
        attrs = req.attrs
        instance = "c:" + (req.instance or "-")
        size = req.size
        rcpt_count = max(req.recipient_count, 0)
        charges, meta = plan.charges, plan.meta
        if txn is not None:
            # Commit what RCPT reserved, adjusted to what Postfix really accepted.
            budget = rcpt_count
            for counter, held in txn.reserved.items():
                rule = held.rule
                unit = rule.cfg.unit
                enforce = False
                if unit == "messages":
                    weight = 1
                elif unit == "recipients":
                    weight = min(len(held.members), budget) if rule.per_recipient else rcpt_count
                else:
                    weight = size
                    enforce = rule.blocking and not rule.shadow
                    if not rule.fail_open:
                        plan.fail_closed = True
                charges.append(Charge(counter, weight, instance, enforce))
                meta.append((rule, held.subject, held.window))
            plan.session.txn = None
        else:
            # No RCPT state (RCPT-only accounting, or END-OF-MESSAGE-only wiring).
            for rule in self.rules:
                unit = rule.cfg.unit
                if rule.per_recipient or (not self.two_phase and unit != "bytes"):
                    continue
                subject = self._subjects(rule, attrs)
                if not subject:
                    continue
                weight = 1 if unit == "messages" else rcpt_count if unit == "recipients" else size
                enforce = rule.blocking and not rule.shadow
                if not rule.fail_open:
                    plan.fail_closed = True
                for c, w in rule.counters(subject):
                    charges.append(Charge(c, weight, instance, enforce))
                    meta.append((rule, subject, w))
        if not charges and not plan.release:
            plan.early = _NO_LIMITS
            return plan
        plan.op = "commit"
        return plan

    # ------------------------------------------------------------------ concluding

    def conclude(self, plan: Plan, outcomes: list[Outcome], fallback: bool = False) -> Decision:
        """Turn store outcomes into the answer, and record reservations in the session."""
        worst: tuple[int, Rule, str, Window] | None = None
        hits: list[Hit] = []
        blocked = False
        for charge, (rule, subject, w), out in zip(plan.charges, plan.meta, outcomes, strict=True):
            breached = not out.allowed
            hits.append(
                (
                    rule.name,
                    subject,
                    out.used,
                    charge.weight,
                    w.count,
                    w.seconds,
                    breached,
                    rule.shadow,
                )
            )
            if breached and not rule.shadow:
                sev = SEVERITY[rule.cfg.action]
                if worst is None or sev > worst[0]:
                    worst = (sev, rule, subject, w)
                if charge.enforce:
                    blocked = True
        if plan.op == "reserve" and not blocked:
            txn = plan.session.txn
            if txn is not None:
                reserved = txn.reserved
                for charge, (rule, subject, w) in zip(plan.charges, plan.meta, strict=True):
                    held = reserved.get(charge.counter)
                    if held is None:
                        reserved[charge.counter] = Reserved(rule, subject, w, [charge.member])
                    elif charge.member not in held.members:
                        held.members.append(charge.member)
        if plan.op == "commit" and not blocked and self.commits is not None and plan.charges:
            qid = plan.request.queue_id
            if qid:
                self.commits.add(qid, [(ch.counter, ch.member) for ch in plan.charges])
        if worst is None:
            return Decision(DUNNO, "ok", hits=tuple(hits), fallback=fallback)
        _, rule, subject, w = worst
        return Decision(
            rule.breach_action(w, subject), "limit", rule.name, tuple(hits), fallback=fallback
        )

    def store_failed(self, plan: Plan) -> Decision:
        """The answer when the store is unreachable and no fallback is used."""
        if plan.fail_closed:
            return Decision(self.tempfail, "store_error")
        return Decision(DUNNO, "store_error")


def now() -> float:
    """Wall-clock seconds; one place to read the clock."""
    return time.time()
