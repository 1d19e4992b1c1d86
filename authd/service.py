"""pfm-authd's decision: one wire request in, one reply out (no sockets here).

AUTH, in order:

1. Normalise the login (an address: lower case); an invalid one is NOUSER.
2. Brute-force guard (:mod:`authd.guard`): ``block`` -> FAIL; ``tarpit`` -> sleep, go on.
3. Mailbox lookup: unknown -> NOUSER; inactive mailbox or domain -> FAIL.
4. Credentials. For a TOTP user on a service in ``totp_services`` the typed password must
   end in the 6-digit code: the password part is verified first, then the code (single use,
   through the state store). Or an app password scoped to the service. Or a grace hit: the
   same user typed the same full string (password+code) from the same client id and
   network prefix within ``grace_ttl`` after a TOTP login (IMAP clients reconnect with the
   credentials they have). Everyone else: the password, or an app password.
5. Record: failures go to the guard with the typed string (the guard keeps a keyed hash
   only), successes clear the IP+login window.

Failure modes (decided and documented): a directory outage or timeout is TEMPFAIL, never
FAIL. A state-store outage (Redis down) skips the guard (fail open: state loss only makes
limits more lenient) but is TEMPFAIL for a TOTP login that needs the replay guard: a code
must never be accepted twice, so we fail closed for exactly those logins. Grace hits live in
this process's memory and keep working.

LOOKUP (Dovecot userdb, ``AUTHORIZED=1``): user, home ``mail_root/domain/local``, uid/gid
``mail_uid``/``mail_gid``, ``userdb_quota_rule`` when the mailbox has a quota.

One log line per attempt: user, service, rip, result, reason, mechanism, latency_ms, and
whether TOTP, an app password or the cache was used — never a password, code or secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.config import AuthdConfig, DirectoryConfig
from services.directory.credentials import SERVICE_SCOPES, canonical_app_password
from services.directory.model import InvalidInput, normalize_address
from services.logging import get_logger

from .guard import Guard, Verdict, normalize_ip
from .state import StateError
from .telemetry import AuthMetrics
from .totp import TotpSecretError, TotpVerifier, split_code
from .verify import Account, BadStoredHash, DirectoryDown, Verifier
from .wire import Reply, ReplyKind, Request, RequestKind

log = get_logger("pfm.authd")
perf = time.perf_counter
_APP_PASSWORD_RE = re.compile(r"[a-z2-9]{4}(?:-[a-z2-9]{4}){1,15}\Z")


def looks_like_app_password(typed: str) -> bool:
    """True when ``typed`` has the shape of one of our app passwords (xxxx-xxxx-...)."""
    return bool(_APP_PASSWORD_RE.match(canonical_app_password(typed)))


class GraceCache:
    """Recent TOTP logins: (user, typed string, client id, network prefix) -> expiry.

    Only keyed hashes (per-process key) are kept, with the mailbox's password stamp so a
    password change ends the grace at once.
    """

    def __init__(
        self, ttl: float, size: int = 100_000, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self._key = os.urandom(32)
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def __repr__(self) -> str:
        return f"GraceCache(ttl={self.ttl}, entries={len(self._entries)})"

    def _k(self, user: str, typed: str, client_id: str, prefix: str) -> str:
        data = "\0".join((user, typed, client_id, prefix)).encode("utf-8", "surrogatepass")
        return hmac.new(self._key, data, hashlib.sha256).hexdigest()

    def hit(self, user: str, typed: str, client_id: str, prefix: str, stamp: Any) -> bool:
        """True while a TOTP login with exactly these credentials is recent enough."""
        if self.ttl <= 0:
            return False
        k = self._k(user, typed, client_id, prefix)
        found = self._entries.get(k)
        if found is None:
            return False
        if found[0] <= self.clock() or found[1] != stamp:
            del self._entries[k]
            return False
        return True

    def add(self, user: str, typed: str, client_id: str, prefix: str, stamp: Any) -> None:
        """Remember a TOTP login (expires after ``ttl``)."""
        if self.ttl <= 0:
            return
        k = self._k(user, typed, client_id, prefix)
        self._entries.pop(k, None)
        self._entries[k] = (self.clock() + self.ttl, stamp)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


@dataclass(slots=True)
class Attempt:
    """What one attempt did, for the log line and the metrics (never a secret)."""

    user: str
    service: str
    rip: str
    result: str = ""
    reason: str = ""
    mechanism: str = "none"
    totp: bool = False
    app_password: bool = False
    cached: bool = False
    tarpit_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class AuthService:
    """Decides AUTH/LOOKUP/PING requests; owns the verifier, guard, TOTP and caches."""

    def __init__(
        self,
        config: AuthdConfig,
        directory: DirectoryConfig,
        *,
        verifier: Verifier,
        guard: Guard,
        totp: TotpVerifier,
        metrics: AuthMetrics,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.directory = directory
        self.verifier = verifier
        self.guard = guard
        self.totp = totp
        self.metrics = metrics
        self.clock = clock
        self.sleep = sleep
        self.grace = GraceCache(float(config.grace_ttl))
        self.totp_services = frozenset(config.totp_services)
        self._background: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"AuthService(backend={self.directory.backend}, state={self.guard.state.name})"

    # ------------------------------------------------------------------ entry point

    async def handle(self, request: Request) -> Reply:
        """The reply to one request (never raises for a directory or state problem)."""
        if request.kind is RequestKind.PING:
            return Reply(ReplyKind.OK)
        if request.kind is RequestKind.LOOKUP:
            return await self.lookup(request)
        return await self.authenticate(request)

    # ------------------------------------------------------------------ LOOKUP

    def userdb(self, account: Account) -> Reply:
        """The OK reply with Dovecot's userdb fields for a mailbox."""
        mb = account.mailbox
        d = self.directory
        extra: tuple[tuple[str, str], ...] = ()
        if mb.quota > 0:
            extra = (("userdb_quota_rule", f"*:bytes={mb.quota}"),)
        return Reply(
            ReplyKind.OK,
            user=mb.address,
            home=f"{d.mail_root.rstrip('/')}/{mb.domain}/{mb.local_part}",
            uid=str(d.mail_uid),
            gid=str(d.mail_gid),
            extra=extra,
        )

    async def lookup(self, request: Request) -> Reply:
        """A userdb lookup (no password)."""
        t0 = perf()
        att = Attempt(request.user, request.service or "-", request.remote_ip or "-")
        try:
            user = normalize_address(request.user)
        except InvalidInput:
            return self._finish(att, Reply(ReplyKind.NOUSER, reason="invalid_user"), t0, "lookup")
        att.user = user
        try:
            account = await self.verifier.account(user)
        except DirectoryDown as exc:
            return self._directory_down(att, exc, t0, "lookup")
        if account is None:
            return self._finish(att, Reply(ReplyKind.NOUSER, reason="unknown_user"), t0, "lookup")
        if not account.mailbox.active or not account.domain_active:
            return self._finish(att, Reply(ReplyKind.FAIL, reason="disabled"), t0, "lookup")
        att.mechanism = "lookup"
        return self._finish(att, self.userdb(account), t0, "lookup")

    # ------------------------------------------------------------------ AUTH

    async def authenticate(self, request: Request) -> Reply:
        """Check a login; see the module docstring for the order of checks."""
        t0 = perf()
        service = (request.service or "").strip().lower()
        ip = request.remote_ip
        att = Attempt(request.user, service or "-", ip or "-")
        typed = request.password or ""
        try:
            user = normalize_address(request.user)
        except InvalidInput:
            return self._finish(att, Reply(ReplyKind.NOUSER, reason="invalid_user"), t0)
        att.user = user
        state_ok = True
        try:
            verdict = await self.guard.check(ip, user)
        except StateError as exc:
            state_ok = False
            verdict = Verdict("allow", reason="state_unavailable")
            self._state_failed(exc)
        if verdict.blocked:
            self.metrics.guard_blocks.labels(reason=verdict.reason or "blocked").inc()
            att.extra["blocked_for_s"] = round(max(verdict.until - self.clock(), 0.0))
            return self._finish(
                att, Reply(ReplyKind.FAIL, reason="blocked"), t0, block=verdict.reason
            )
        if verdict.action == "tarpit" and verdict.delay > 0:
            att.tarpit_s = verdict.delay
            await self.sleep(verdict.delay)
        try:
            account = await self.verifier.account(user)
            if account is None:
                await self.verifier.equalise_unknown_user(typed)
                await self._failed(att, ip, user, typed, state_ok)
                return self._finish(att, Reply(ReplyKind.NOUSER, reason="unknown_user"), t0)
            if not account.mailbox.active or not account.domain_active:
                reason = "disabled" if not account.mailbox.active else "domain_disabled"
                return self._finish(att, Reply(ReplyKind.FAIL, reason=reason), t0)
            reply = await self._credentials(att, account, service, typed, request, state_ok)
        except DirectoryDown as exc:
            return self._directory_down(att, exc, t0)
        except BadStoredHash as exc:
            log.error("bad_stored_hash", user=user, error=str(exc))
            return self._finish(att, Reply(ReplyKind.FAIL, reason="bad_stored_hash"), t0)
        if reply.kind is ReplyKind.OK:
            if state_ok:
                try:
                    await self.guard.record_success(ip, user)
                except StateError as exc:
                    self._state_failed(exc)
        elif reply.kind is ReplyKind.FAIL:
            await self._failed(att, ip, user, typed, state_ok)
        return self._finish(att, reply, t0)

    async def _credentials(
        self,
        att: Attempt,
        account: Account,
        service: str,
        typed: str,
        request: Request,
        state_ok: bool,
    ) -> Reply:
        mb = account.mailbox
        user = mb.address
        app_ok = self.config.app_passwords and service in SERVICE_SCOPES
        app_first = app_ok and looks_like_app_password(typed)
        if app_first and await self._app_password(att, user, typed, service, request.remote_ip):
            return self.userdb(account)
        if mb.totp_secret and service in self.totp_services:
            att.totp = True
            prefix = self._prefix(request.remote_ip)
            if self.grace.hit(user, typed, request.client_id, prefix, account.stamp):
                att.mechanism = "totp_grace"
                return self.userdb(account)
            parts = split_code(typed)
            if parts is None:
                att.mechanism = "password_totp"
                return Reply(ReplyKind.FAIL, reason="totp_code_missing")
            password, code = parts
            checked = await self.verifier.check_password(account, password)
            att.cached = checked.cached
            att.mechanism = "password_totp"
            if not checked.ok:
                return Reply(ReplyKind.FAIL, reason="wrong_password")
            if not state_ok:
                return Reply(ReplyKind.TEMPFAIL, reason="totp_replay_guard_unavailable")
            try:
                result = await self.totp.verify(user, mb.totp_secret, code)
            except StateError as exc:
                self._state_failed(exc)
                return Reply(ReplyKind.TEMPFAIL, reason="totp_replay_guard_unavailable")
            except TotpSecretError:
                log.error("bad_totp_secret", user=user)
                return Reply(ReplyKind.FAIL, reason="bad_totp_secret")
            if not result.ok:
                return Reply(ReplyKind.FAIL, reason=f"totp_{result.reason}")
            att.extra["totp_drift"] = result.drift
            self.grace.add(user, typed, request.client_id, prefix, account.stamp)
            self._maybe_rehash(checked.needs_rehash, user, password)
            return self.userdb(account)
        checked = await self.verifier.check_password(account, typed)
        att.cached = checked.cached
        att.mechanism = "password"
        if checked.ok:
            self._maybe_rehash(checked.needs_rehash, user, typed)
            return self.userdb(account)
        if (
            app_ok
            and not app_first
            and await self._app_password(att, user, typed, service, request.remote_ip)
        ):
            return self.userdb(account)
        return Reply(ReplyKind.FAIL, reason="wrong_password")

    async def _app_password(
        self, att: Attempt, user: str, typed: str, service: str, ip: str
    ) -> bool:
        ap = await self.verifier.app_password(user, typed, service)
        if ap is None:
            return False
        att.mechanism = "app_password"
        att.app_password = True
        att.extra["app_password_id"] = ap.id
        self.spawn(self._record_app_password(ap.id, ip))
        return True

    async def _record_app_password(self, id: str, ip: str) -> None:
        try:
            await self.verifier.record_app_password_use(id, ip)
        except Exception as exc:  # best effort: never fails a login
            log.warning(
                "app_password_use_not_recorded", id=id, error=str(exc) or type(exc).__name__
            )

    def _maybe_rehash(self, needed: bool, user: str, password: str) -> None:
        if needed and self.directory.rehash_on_login:
            self.spawn(self._rehash(user, password))

    async def _rehash(self, user: str, password: str) -> None:
        try:
            if await self.verifier.rehash(user, password):
                log.info("rehashed", user=user, scheme=self.directory.password_scheme)
        except Exception as exc:  # best effort
            log.warning("rehash_failed", user=user, error=str(exc) or type(exc).__name__)

    async def _failed(self, att: Attempt, ip: str, user: str, typed: str, state_ok: bool) -> None:
        if not state_ok:
            return
        try:
            verdict = await self.guard.record_failure(ip, user, typed)
        except StateError as exc:
            self._state_failed(exc)
            return
        if verdict.blocked:
            self.metrics.guard_blocks.labels(reason=verdict.reason or "blocked").inc()
            att.extra["now_blocked"] = verdict.reason

    def _prefix(self, ip: str) -> str:
        addr = normalize_ip(ip)
        return str(self.guard.prefix_of(addr)) if addr is not None else ""

    # ------------------------------------------------------------------ outcome

    def _state_failed(self, exc: BaseException) -> None:
        self.metrics.state_errors.inc()
        log.warning("state_unavailable", store=self.guard.state.name, error=str(exc)[:200])

    def _directory_down(
        self, att: Attempt, exc: BaseException, t0: float, kind: str = "auth"
    ) -> Reply:
        self.metrics.directory_errors.inc()
        att.extra["error"] = str(exc)[:200]
        return self._finish(
            att, Reply(ReplyKind.TEMPFAIL, reason="directory_unavailable"), t0, kind
        )

    def _finish(
        self, att: Attempt, reply: Reply, t0: float, kind: str = "auth", block: str = ""
    ) -> Reply:
        elapsed = perf() - t0
        att.result = reply.kind.name.lower()
        att.reason = reply.reason
        if kind == "auth":
            self.metrics.login(att.service, att.mechanism, att.result, elapsed)
            if att.cached:
                self.metrics.cache_hits.inc()
        fields: dict[str, Any] = {
            "user": att.user[:256],
            "service": att.service,
            "rip": att.rip,
            "result": att.result,
            "reason": att.reason or None,
            "mechanism": att.mechanism,
            "latency_ms": round(elapsed * 1000, 2),
            # not "totp"/"app_password": the log redactor blanks values under those names
            "totp_used": att.totp,
            "app_password_used": att.app_password,
            "cached": att.cached,
        }
        if att.tarpit_s:
            fields["tarpit_s"] = att.tarpit_s
        if block:
            fields["block"] = block
        fields.update(att.extra)
        log.info(kind, **fields)
        return reply

    # ------------------------------------------------------------------ background

    def spawn(self, coro: Any) -> None:
        """Run a best-effort background job, tracked for shutdown."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self, grace: float) -> None:
        """Wait for background jobs (app password use, rehash) for up to ``grace`` seconds."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=max(grace, 0.1))
