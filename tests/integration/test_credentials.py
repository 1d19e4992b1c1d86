"""TOTP enrolment and app passwords (services.directory.credentials) on real directories.

The operation tests run against every backend in ``directory_backends.BACKENDS`` (a SQLite
file and a private slapd); one slapd serves the whole module and each test works in a
domain of its own. Codes are made with pyotp, independently of our code.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pyotp
import pytest

from services.directory.backend import Backend
from services.directory.credentials import (
    MAX_APP_PASSWORDS,
    Credentials,
    canonical_app_password,
    normalize_scopes,
    otpauth_uri,
)
from services.directory.model import (
    Conflict,
    InvalidInput,
    NotFound,
    Replace,
)
from services.directory.ops import Directory
from tests.conftest import require_binary
from tests.integration.directory_backends import BACKENDS

pytestmark = pytest.mark.integration

PASSWORD = "Correct-Horse-9-battery"
_serial = itertools.count()


class Clock:
    """A settable clock for expiry tests."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    backend: Backend
    ops: Directory
    creds: Credentials
    clock: Clock
    address: str
    domain: str


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def shared_backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    """One directory of each backend for the module (one slapd, not one per test)."""
    with BACKENDS[request.param](tmp_path_factory.mktemp(request.param)) as b:
        yield b


@pytest.fixture
def w(shared_backend: Backend) -> World:
    """A fresh domain with one mailbox, operations with a settable clock."""
    clock = Clock(time.time())
    ops = Directory(shared_backend, actor="tester", password_scheme="SHA512-CRYPT", clock=clock)
    dom = f"d{next(_serial)}.example.org"
    ops.add_domain(dom)
    address = f"bob@{dom}"
    ops.add_mailbox(address, password=PASSWORD)
    return World(shared_backend, ops, Credentials(ops), clock, address, dom)


def _audit_text(w: World) -> str:
    """Every audit entry of the directory as one JSON string."""
    return json.dumps(
        [(a.action, a.object, a.before, a.after) for a in w.backend.audit_log()], default=str
    )


# --------------------------------------------------------------------------- TOTP


def test_enroll_stores_a_valid_160_bit_secret(w: World) -> None:
    """Enrolment stores 32 upper-case base32 chars (160 bits) that pyotp codes verify against."""
    result, secret, uri = w.creds.enroll_totp(w.address)
    assert result.applied and result.action == "totp.enroll"
    assert len(secret) == 32 and secret == secret.upper() and "=" not in secret
    assert len(base64.b32decode(secret)) == 20
    stored = w.ops.get_mailbox(w.address)
    assert stored.totp_secret == secret and stored.totp_last_step == 0
    totp = pyotp.TOTP(stored.totp_secret)
    assert totp.verify(totp.now())
    parsed = pyotp.parse_uri(uri)
    assert isinstance(parsed, pyotp.TOTP)
    assert (parsed.secret, parsed.issuer, parsed.name) == (secret, "Postfix Manager", w.address)
    assert w.creds.totp_status(w.address).enrolled


def test_reenroll_needs_force_and_resets_the_step(w: World) -> None:
    """A second enrolment is a Conflict; with force it stores a new secret and step 0."""
    _, first, _ = w.creds.enroll_totp(w.address)
    mb = w.ops.get_mailbox(w.address)
    w.backend.write([Replace(dataclasses.replace(mb, totp_last_step=59_000_000))], [])
    with pytest.raises(Conflict, match="--force"):
        w.creds.enroll_totp(w.address)
    result, second, _ = w.creds.enroll_totp(w.address, force=True)
    assert second != first and "replaced" in result.message
    stored = w.ops.get_mailbox(w.address)
    assert (stored.totp_secret, stored.totp_last_step) == (second, 0)


def test_disable_clears_and_is_idempotent(w: World) -> None:
    """disable removes the secret; disabling again changes nothing."""
    w.creds.enroll_totp(w.address)
    assert w.creds.disable_totp(w.address).applied
    assert w.ops.get_mailbox(w.address).totp_secret == ""
    assert not w.creds.totp_status(w.address).enrolled
    again = w.creds.disable_totp(w.address)
    assert not again.changed and "not enrolled" in again.message


def test_enroll_dry_run_writes_and_reveals_nothing(w: World) -> None:
    """A dry-run enrolment stores no secret and returns no secret or URI."""
    result, secret, uri = w.creds.enroll_totp(w.address, dry_run=True)
    assert result.dry_run and result.changed and not result.applied
    assert (secret, uri) == ("", "")
    assert w.ops.get_mailbox(w.address).totp_secret == ""


def test_totp_secret_never_reaches_the_audit_log(w: World) -> None:
    """Audit entries of enrol/re-enrol/disable carry totp_enrolled, never the secret."""
    _, s1, _ = w.creds.enroll_totp(w.address)
    _, s2, _ = w.creds.enroll_totp(w.address, force=True)
    w.creds.disable_totp(w.address)
    text = _audit_text(w)
    assert s1 not in text and s2 not in text
    entries = [a for a in w.backend.audit_log() if a.object == w.address]
    actions = [a.action for a in entries]
    assert actions[-3:] == ["totp.enroll", "totp.enroll", "totp.disable"]
    assert entries[-3].after is not None and entries[-3].after["totp_enrolled"] is True


def test_enroll_unknown_mailbox_and_bad_issuer(w: World) -> None:
    """An unknown mailbox is NotFound; an issuer with a colon is InvalidInput naming issuer."""
    with pytest.raises(NotFound):
        w.creds.enroll_totp(f"nobody@{w.domain}")
    with pytest.raises(InvalidInput, match="^issuer:"):
        w.creds.enroll_totp(w.address, issuer="Evil:Corp")


# --------------------------------------------------------------------------- app passwords


def test_app_password_verifies_only_for_its_scopes(w: World) -> None:
    """An imap+smtp app password opens imap and submission, not pop3, sieve or bad secrets."""
    new = w.creds.add_app_password(w.address, name="Phone", scopes=["imap", "submission"])
    result, secret = new
    assert result.applied and new.app_password.id.startswith("ap-")
    assert len(new.app_password.id) == 11
    ap = w.creds.verify_app_password(w.address, secret, "imap")
    assert ap is not None and ap.id == new.app_password.id
    assert ap.scopes == ("imap", "smtp")
    assert w.creds.verify_app_password(w.address, secret, "submission") is not None
    assert w.creds.verify_app_password(w.address, secret, "smtp") is not None
    assert w.creds.verify_app_password(w.address, secret, "pop3") is None
    assert w.creds.verify_app_password(w.address, secret, "sieve") is None
    assert w.creds.verify_app_password(w.address, secret, "ftp") is None
    assert w.creds.verify_app_password(w.address, PASSWORD, "imap") is None
    assert w.creds.verify_app_password(w.address, "", "imap") is None
    typed = secret.replace("-", " ").upper()
    assert w.creds.verify_app_password(w.address.upper(), typed, "IMAP") is not None


def test_app_password_is_stored_as_salted_ssha512(w: World) -> None:
    """Only a {SSHA512} hash is stored; two app passwords never share a hash."""
    _, s1 = w.creds.add_app_password(w.address, name="A")
    _, s2 = w.creds.add_app_password(w.address, name="B")
    aps = w.backend.list_app_passwords(w.address)
    assert sorted(a.name for a in aps) == ["A", "B"]
    for ap in aps:
        assert ap.password_hash.startswith("{SSHA512}")
        assert s1 not in ap.password_hash and s2 not in ap.password_hash
    assert aps[0].password_hash != aps[1].password_hash


def test_app_password_expires(w: World) -> None:
    """An app password works until its expiry time and is refused from then on."""
    start = w.clock.now
    _, secret = w.creds.add_app_password(w.address, name="Temp", expires=start + 3600)
    assert w.creds.verify_app_password(w.address, secret, "imap") is not None
    w.clock.now = start + 3599
    assert w.creds.verify_app_password(w.address, secret, "imap") is not None
    w.clock.now = start + 3600
    assert w.creds.verify_app_password(w.address, secret, "imap") is None
    with pytest.raises(InvalidInput, match="^expires:"):
        w.creds.add_app_password(w.address, name="Past", expires=start)


def test_revoked_app_password_is_refused(w: World) -> None:
    """Revoking by id refuses that one only; --all refuses the rest."""
    r1, s1 = w.creds.add_app_password(w.address, name="One")
    _, s2 = w.creds.add_app_password(w.address, name="Two")
    _, s3 = w.creds.add_app_password(w.address, name="Three")
    id1 = r1.object
    dry = w.creds.revoke_app_password(w.address, id1, dry_run=True)
    assert dry.changed and not dry.applied
    assert w.creds.verify_app_password(w.address, s1, "imap") is not None
    assert w.creds.revoke_app_password(w.address, id1).applied
    assert w.creds.verify_app_password(w.address, s1, "imap") is None
    assert w.creds.verify_app_password(w.address, s2, "imap") is not None
    with pytest.raises(NotFound):
        w.creds.revoke_app_password(w.address, id1)
    result = w.creds.revoke_app_password(w.address, all=True)
    assert len(result.changes) == 2 and "revoked 2" in result.message
    assert w.creds.verify_app_password(w.address, s2, "imap") is None
    assert w.creds.verify_app_password(w.address, s3, "pop3") is None
    assert w.creds.list_app_passwords(w.address) == []


def test_revoke_needs_the_owner(w: World) -> None:
    """An app password id of another mailbox is NotFound for this one, and stays."""
    w.ops.add_mailbox(f"eve@{w.domain}", password=PASSWORD)
    r, _ = w.creds.add_app_password(w.address, name="Bob's")
    with pytest.raises(NotFound, match="has no app password"):
        w.creds.revoke_app_password(f"eve@{w.domain}", r.object)
    assert len(w.creds.list_app_passwords(w.address)) == 1
    with pytest.raises(InvalidInput):
        w.creds.revoke_app_password(w.address)


def test_password_change_revokes_all_app_passwords(w: World) -> None:
    """ops.set_password (pfm mailbox passwd) deletes every app password of the mailbox."""
    _, s1 = w.creds.add_app_password(w.address, name="One")
    _, s2 = w.creds.add_app_password(w.address, name="Two", scopes=["pop3"])
    result = w.ops.set_password(w.address, "Another-Staple-7-river")
    assert "revoked 2" in result.message
    assert w.creds.verify_app_password(w.address, s1, "imap") is None
    assert w.creds.verify_app_password(w.address, s2, "pop3") is None


def test_disabled_mailbox_app_passwords_are_refused(w: World) -> None:
    """A disabled mailbox's app passwords verify to None; enabled again they work."""
    _, secret = w.creds.add_app_password(w.address, name="Laptop")
    w.ops.update_mailbox(w.address, active=False)
    assert w.creds.verify_app_password(w.address, secret, "imap") is None
    w.ops.update_mailbox(w.address, active=True)
    assert w.creds.verify_app_password(w.address, secret, "imap") is not None


def test_record_use_writes_no_audit_entry(w: World) -> None:
    """record_app_password_use stores last_used and last_ip without adding an audit entry."""
    r, _ = w.creds.add_app_password(w.address, name="Laptop")
    before = len(w.backend.audit_log())
    assert w.creds.record_app_password_use(r.object, 1_800_000_000.5, "2001:db8::1")
    assert len(w.backend.audit_log()) == before
    ap = w.backend.get_app_password(r.object)
    assert ap is not None and ap.last_used == pytest.approx(1_800_000_000.5, abs=1)
    assert ap.last_ip == "2001:db8::1"
    with pytest.raises(InvalidInput, match="^ip:"):
        w.creds.record_app_password_use(r.object, 1.0, "not-an-ip")
    assert not w.creds.record_app_password_use("ap-00000000", 1.0, "192.0.2.1")


def test_app_password_limits_and_validation(w: World) -> None:
    """Names are required and unique per mailbox, scopes known, at most MAX_APP_PASSWORDS."""
    with pytest.raises(InvalidInput, match="^name:"):
        w.creds.add_app_password(w.address, name="  ")
    with pytest.raises(InvalidInput, match="^scope:.*'ftp'"):
        w.creds.add_app_password(w.address, name="X", scopes=["imap", "ftp"])
    with pytest.raises(InvalidInput, match="^scope:"):
        w.creds.add_app_password(w.address, name="X", scopes=[])
    small = Credentials(w.ops, max_app_passwords=2)
    small.add_app_password(w.address, name="One")
    with pytest.raises(Conflict, match="named 'one' already"):
        small.add_app_password(w.address, name="one")
    small.add_app_password(w.address, name="Two")
    with pytest.raises(Conflict, match="most allowed"):
        small.add_app_password(w.address, name="Three")
    assert MAX_APP_PASSWORDS == 20


def test_app_password_secrets_never_in_audit(w: World) -> None:
    """Add and revoke audit entries hold neither the secret nor its hash."""
    r, secret = w.creds.add_app_password(w.address, name="Phone")
    stored = w.backend.get_app_password(r.object)
    assert stored is not None
    w.creds.revoke_app_password(w.address, all=True)
    text = _audit_text(w)
    assert secret not in text and stored.password_hash not in text
    assert "SSHA512" not in text
    actions = [(a.action, a.object) for a in w.backend.audit_log()]
    assert ("app_password.add", r.object) in actions
    assert ("app_password.revoke", w.address) in actions
    assert secret not in repr(w.creds.add_app_password(w.address, name="Other"))


# --------------------------------------------------------------------------- pure parts, doveadm


def test_otpauth_uri_is_percent_encoded() -> None:
    """The URI label and issuer are percent-encoded (%20, not +) and carry all parameters."""
    uri = otpauth_uri("JBSWY3DPEHPK3PXP", "bob@xn--bcher-kva.example", "Example Mail & Co")
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    assert parts.path == "/Example%20Mail%20%26%20Co:bob@xn--bcher-kva.example"
    assert "+" not in uri
    q = parse_qs(parts.query)
    assert q == {
        "secret": ["JBSWY3DPEHPK3PXP"],
        "issuer": ["Example Mail & Co"],
        "algorithm": ["SHA1"],
        "digits": ["6"],
        "period": ["30"],
    }
    assert unquote(parts.path[1:]).split(":", 1)[0] == "Example Mail & Co"


def test_scopes_and_typed_secrets_normalise() -> None:
    """Scopes come back in canonical order (submission = smtp); typed secrets regroup."""
    assert normalize_scopes(["SMTP", "imap", "submission"]) == ("imap", "smtp")
    assert normalize_scopes("sieve,pop3") == ("pop3", "sieve")
    assert canonical_app_password("ABCD EFGH jkmn-pqrs") == "abcd-efgh-jkmn-pqrs"
    assert canonical_app_password("not one of ours!") == "not one of ours!"


def test_doveadm_verifies_app_password_hashes(tmp_path: Path) -> None:
    """Dovecot's own `doveadm pw -t` accepts our {SSHA512} app password hashes."""
    from services.directory.credentials import hash_app_password
    from services.directory.passwords import generate_secret

    doveadm = require_binary("doveadm")
    secret = generate_secret()
    stored = hash_app_password(secret)
    proc = subprocess.run(
        [doveadm, "-c", "/dev/null", "pw", "-t", stored, "-p", secret],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and "(verified)" in proc.stdout, proc.stderr
