"""Password verification against the directory, off the event loop, with a verify cache.

Every directory read and every hash or bind runs in a bounded thread pool
(``verify_workers`` threads): argon2 and ldap3 never block the loop. Backends:

* **sqlite**: the mailbox's ``{SCHEME}...`` hash is checked with
  :func:`services.directory.passwords.verify_password`. The file is ``stat``-ed before each
  read: a removed file is an outage (the open connection would otherwise keep reading the
  unlinked inode), a replaced one (restore, migration) is reopened.
* **ldap**: the mailbox is read with the service account, the password is checked by a
  simple bind as the mailbox's DN (``mail=ADDRESS,ou=mailboxes,BASE``) on a small pool of
  bind-only connections, each with connect and receive timeouts.

An unreachable or timed-out directory raises :class:`DirectoryDown` (the daemon answers
TEMPFAIL), never "wrong password". The verify cache remembers only *successful*
verifications, keyed by (login, HMAC-SHA256 of the password with a per-process random key),
for ``verify_cache_ttl``; an entry is only used while the mailbox's password stamp
(``password_changed``, ``modified``, a digest of the stored hash) is unchanged, which the
caller reads on every request anyway. Failures are never cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import math
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from services.config import DirectoryConfig
from services.directory.backend import Backend, open_backend
from services.directory.credentials import Credentials
from services.directory.model import (
    AppPassword,
    DirectoryError,
    InvalidInput,
    Mailbox,
    Unavailable,
)
from services.directory.ops import Directory

T = TypeVar("T")
Clock = Callable[[], float]
Stamp = tuple[float, float, str]


class DirectoryDown(Exception):
    """The directory could not answer (outage, timeout); the login is a temporary failure."""


class BadStoredHash(Exception):
    """The stored hash of a mailbox is unusable (a data problem, reported without the hash)."""


@dataclass(frozen=True, slots=True)
class Account:
    """What a login decision needs about a mailbox (no secret in the repr)."""

    mailbox: Mailbox
    domain_active: bool

    @property
    def stamp(self) -> Stamp:
        """Changes whenever the password (or anything else of the mailbox) changes."""
        mb = self.mailbox
        digest = hashlib.sha256(mb.password_hash.encode("utf-8", "replace")).hexdigest()[:16]
        return (mb.password_changed, mb.modified, digest)


@dataclass(frozen=True, slots=True)
class Checked:
    """Outcome of one password check."""

    ok: bool
    cached: bool = False
    needs_rehash: bool = False


class VerifyCache:
    """Successful verifications only, bounded, expiring, tied to the password stamp."""

    def __init__(self, ttl: float, size: int = 100_000, *, clock: Clock = time.monotonic) -> None:
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self._key = os.urandom(32)
        self._entries: OrderedDict[tuple[str, str], tuple[float, Stamp]] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"VerifyCache(ttl={self.ttl}, entries={len(self._entries)})"

    def _k(self, user: str, password: str) -> tuple[str, str]:
        mac = hmac.new(self._key, password.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return user, mac.hexdigest()

    def hit(self, user: str, password: str, stamp: Stamp) -> bool:
        """True when this password was verified for this user, recently, for this stamp."""
        if self.ttl <= 0:
            return False
        k = self._k(user, password)
        with self._lock:
            found = self._entries.get(k)
            if found is None:
                return False
            expires, seen = found
            if expires <= self.clock() or seen != stamp:
                del self._entries[k]
                return False
            return True

    def add(self, user: str, password: str, stamp: Stamp) -> None:
        """Remember a successful verification."""
        if self.ttl <= 0:
            return
        k = self._k(user, password)
        with self._lock:
            self._entries.pop(k, None)
            self._entries[k] = (self.clock() + self.ttl, stamp)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def forget(self, user: str) -> None:
        """Drop every entry of a user."""
        with self._lock:
            for k in [k for k in self._entries if k[0] == user]:
                del self._entries[k]

    def __len__(self) -> int:
        return len(self._entries)


class _LdapBinder:
    """Simple binds as a mailbox DN over a bounded set of bind-only connections."""

    def __init__(self, cfg: DirectoryConfig, size: int) -> None:
        from services.directory.ldap3_compat import ldap3
        from services.directory.ldap_dit import Dit

        self.ldap3 = ldap3
        self.cfg = cfg.ldap
        self.dit = Dit(cfg.ldap.base_dn)
        self.servers = [
            ldap3.Server(uri, connect_timeout=float(self.cfg.connect_timeout), get_info=ldap3.NONE)
            for uri in self.cfg.uris
        ]
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue(maxsize=max(size, 1))

    def _new(self, server: Any) -> Any:
        return self.ldap3.Connection(
            server,
            client_strategy=self.ldap3.SYNC,
            raise_exceptions=False,
            receive_timeout=max(1, math.ceil(float(self.cfg.timeout))),
            check_names=False,
            auto_referrals=False,
        )

    def bind(self, address: str, password: str) -> bool:
        """True for a successful bind, False for invalid credentials; DirectoryDown else."""
        if not password or "\0" in password:
            return False
        dn = self.dit.dn("mailbox", address)
        failure = "no server answered"
        tries = [None, *self.servers] if not self._idle.empty() else list(self.servers)
        for server in tries:
            conn = None
            if server is None:
                try:
                    conn = self._idle.get_nowait()
                except queue.Empty:
                    continue
            else:
                # ldap3 marks an address unavailable for a while after a failure; the
                # directory coming back must be used at once
                server.reset_availability()
                conn = self._new(server)
            try:
                if conn.closed:
                    conn.open(read_server_info=False)
                if self.cfg.start_tls and not conn.tls_started and not conn.start_tls():
                    raise OSError("StartTLS failed")
                conn.user, conn.password = dn, password
                conn.authentication = self.ldap3.SIMPLE
                ok = bool(conn.bind(read_server_info=False))
                code = (conn.result or {}).get("result")
            except Exception as exc:  # socket errors, timeouts: try the next server
                failure = type(exc).__name__
                _unbind(conn)
                continue
            if ok or code in (49, 32, 34, 50, 53):  # invalid creds, no such object, ...
                self._give_back(conn)
                return ok
            failure = str((conn.result or {}).get("description") or code)
            _unbind(conn)
        raise DirectoryDown(f"LDAP bind to {', '.join(self.cfg.uris)} failed: {failure}")

    def _give_back(self, conn: Any) -> None:
        try:
            self._idle.put_nowait(conn)
        except queue.Full:
            _unbind(conn)

    def close(self) -> None:
        while True:
            try:
                _unbind(self._idle.get_nowait())
            except queue.Empty:
                return


def _unbind(conn: Any) -> None:
    with contextlib.suppress(Exception):  # closing a dead connection may fail
        conn.unbind()


class Verifier:
    """Directory reads and password checks for pfm-authd (all in the worker pool)."""

    def __init__(
        self,
        config: DirectoryConfig,
        *,
        workers: int = 0,
        timeout: float = 8.0,
        cache_ttl: float = 300.0,
        cache_size: int = 100_000,
        account_ttl: float = 0.0,
        clock: Clock = time.time,
        backend: Backend | None = None,
    ) -> None:
        self.config = config
        self.workers = workers or os.cpu_count() or 2
        self.timeout = timeout
        self.clock = clock
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="pfm-authd-verify")
        self.cache = VerifyCache(cache_ttl, cache_size)
        self._backend: Backend | None = backend
        self._given = backend is not None
        self._identity: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._binder = _LdapBinder(config, self.workers) if config.backend == "ldap" else None
        self.hashes = 0  # password hashes or binds really computed (not cache hits)
        # address -> (expiry on the monotonic clock, account or None for "no such mailbox")
        self.account_ttl = account_ttl
        self._accounts: dict[str, tuple[float, Account | None]] = {}
        self.account_hits = 0
        self._dummy_hash = ""  # made on first use: costs one hash of the configured scheme

    def __repr__(self) -> str:
        return f"Verifier(backend={self.config.backend}, workers={self.workers})"

    # ------------------------------------------------------------------ plumbing

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the pool within the timeout; DirectoryDown on outage or timeout."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self.pool, fn), self.timeout)
        except TimeoutError:
            raise DirectoryDown(f"directory did not answer within {self.timeout:g} s") from None

    def _open(self) -> Backend:
        """The backend, (re)opened when needed; called in a worker thread."""
        if self._given:
            assert self._backend is not None
            return self._backend
        cfg = self.config
        with self._lock:
            if cfg.backend == "sqlite":
                try:
                    st = os.stat(cfg.path)
                except FileNotFoundError:
                    self._drop()
                    raise DirectoryDown(f"directory database {cfg.path} is missing") from None
                except OSError as exc:
                    raise DirectoryDown(f"directory database {cfg.path}: {exc.strerror}") from None
                identity = (st.st_dev, st.st_ino)
                if self._backend is not None and identity != self._identity:
                    self._drop()
                self._identity = identity
            if self._backend is None:
                try:
                    self._backend = open_backend(cfg, create=False)
                except Unavailable as exc:
                    raise DirectoryDown(str(exc)) from None
                except DirectoryError as exc:
                    raise DirectoryDown(str(exc)) from None
            return self._backend

    def _drop(self) -> None:
        if self._backend is not None and not self._given:
            backend, self._backend = self._backend, None
            backend.close()

    def _directory(self) -> Directory:
        return Directory(
            self._open(),
            actor="pfm-authd",
            password_scheme=self.config.password_scheme,
            revoke_app_passwords_on_passwd=self.config.revoke_app_passwords_on_passwd,
            clock=self.clock,
        )

    # ------------------------------------------------------------------ reads

    def _account(self, address: str) -> Account | None:
        backend = self._open()
        try:
            mb = backend.get_mailbox(address)
            if mb is None:
                return None
            dom = backend.get_domain(mb.domain)
        except Unavailable as exc:
            raise DirectoryDown(str(exc)) from None
        return Account(mb, dom is not None and dom.active)

    async def account(self, address: str) -> Account | None:
        """The mailbox and its domain's state, or None; DirectoryDown on outage.

        Reused for ``account_ttl`` seconds (an IMAP client reconnecting, a phone polling):
        with LDAP that saves two searches per login. A disable or password change is seen
        at the latest that much later; an outage is never cached.
        """
        ttl = self.account_ttl
        if ttl <= 0:
            return await self.run(lambda: self._account(address))
        now = time.monotonic()
        hit = self._accounts.get(address)
        if hit is not None and hit[0] > now:
            self.account_hits += 1
            return hit[1]
        found = await self.run(lambda: self._account(address))
        if len(self._accounts) >= 50_000:
            self._accounts = {k: v for k, v in self._accounts.items() if v[0] > now}
            if len(self._accounts) >= 50_000:
                self._accounts.clear()
        self._accounts[address] = (now + ttl, found)
        return found

    def forget_account(self, address: str) -> None:
        """Drop a cached account (after this daemon itself changed it, e.g. a rehash)."""
        self._accounts.pop(address, None)

    # ------------------------------------------------------------------ passwords

    def _check(self, account: Account, password: str) -> Checked:
        mb = account.mailbox
        if self._binder is not None:
            return Checked(self._binder.bind(mb.address, password))
        from services.directory import passwords

        try:
            v = passwords.verify_password(password, mb.password_hash, self.config.password_scheme)
        except InvalidInput:
            raise BadStoredHash(f"the stored password hash of {mb.address} is unusable") from None
        return Checked(v.ok, needs_rehash=v.needs_rehash)

    async def check_password(self, account: Account, password: str) -> Checked:
        """Check a password (cache first); DirectoryDown on outage, BadStoredHash on bad data."""
        user = account.mailbox.address
        stamp = account.stamp
        if self.cache.hit(user, password, stamp):
            return Checked(True, cached=True)
        self.hashes += 1
        result = await self.run(lambda: self._check(account, password))
        if result.ok:
            self.cache.add(user, password, stamp)
        return result

    def _dummy_check(self, password: str) -> None:
        """Verify against a throw-away hash of the configured scheme (costs what a real one does)."""
        from services.directory import passwords

        dummy = self._dummy_hash
        if not dummy:
            dummy = passwords.hash_password(
                passwords.generate_secret(), self.config.password_scheme
            )
            self._dummy_hash = dummy
        passwords.verify_password(password, dummy, self.config.password_scheme)

    async def equalise_unknown_user(self, password: str) -> None:
        """Spend a hash verification on a login that names no mailbox.

        Without it an unknown user is answered much faster than a wrong password, which tells
        an attacker which logins exist.
        """
        self.hashes += 1
        await self.run(lambda: self._dummy_check(password))

    def _app_password(self, address: str, secret: str, service: str) -> AppPassword | None:
        creds = Credentials(self._directory())
        try:
            return creds.verify_app_password(address, secret, service)
        except Unavailable as exc:
            raise DirectoryDown(str(exc)) from None

    async def app_password(self, address: str, secret: str, service: str) -> AppPassword | None:
        """The app password ``secret`` opens for ``service``, else None; DirectoryDown."""
        return await self.run(lambda: self._app_password(address, secret, service))

    async def record_app_password_use(self, id: str, ip: str) -> None:
        """Store the last use of an app password (best effort)."""

        def record() -> None:
            creds = Credentials(self._directory())
            try:
                creds.record_app_password_use(id, self.clock(), ip)
            except InvalidInput:
                creds.record_app_password_use(id, self.clock(), "")

        await self.run(record)

    async def rehash(self, address: str, password: str) -> bool:
        """Store a fresh hash of an outdated one (``rehash_on_login``)."""
        done = await self.run(lambda: self._directory().rehash(address, password))
        self.forget_account(address)
        return done

    def close(self) -> None:
        """Stop the pool and close the directory connections."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self._binder is not None:
            self._binder.close()
        with self._lock:
            self._drop()
