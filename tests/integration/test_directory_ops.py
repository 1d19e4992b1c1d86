"""The directory operations layer's rules, on a real SQLite directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.directory.model import AlreadyExists, Conflict, InvalidInput, NotFound
from services.directory.ops import Directory
from services.directory.sqlite import SqliteBackend

pytestmark = pytest.mark.integration


@pytest.fixture
def d(tmp_path: Path) -> Iterator[Directory]:
    backend = SqliteBackend(str(tmp_path / "dir.db"))
    ops = Directory(
        backend,
        actor="tester",
        password_scheme="SHA512-CRYPT",
        known_limits={"user_messages": type("L", (), {"windows": ()})()},
    )
    ops.add_domain("example.org")
    yield ops
    backend.close()


def _hash() -> str:
    from services.directory.passwords import hash_password

    return hash_password("correct horse", "SHA512-CRYPT")


def test_ensure_changes_only_the_fields_given(d: Directory) -> None:
    """add --ensure on an existing domain keeps the values it was not asked to change."""
    d.add_domain("example.net", description="main", max_mailboxes=5)
    r = d.add_domain("example.net", ensure=True, default_quota=100)
    dom = d.get_domain("example.net")
    assert r.changed
    assert (dom.description, dom.max_mailboxes, dom.default_quota) == ("main", 5, 100)
    assert not d.add_domain("example.net", ensure=True).changed


def test_add_twice_without_ensure_is_refused(d: Directory) -> None:
    """Adding an existing domain or mailbox without ensure raises AlreadyExists."""
    with pytest.raises(AlreadyExists):
        d.add_domain("EXAMPLE.org.")
    d.add_mailbox("a@example.org", password_hash=_hash())
    with pytest.raises(AlreadyExists):
        d.add_mailbox("A@Example.org", password_hash=_hash())


def test_mailbox_needs_its_domain_and_respects_the_cap(d: Directory) -> None:
    """A mailbox in an unknown domain is NotFound; past max_mailboxes it is a Conflict."""
    with pytest.raises(NotFound, match="pfm domain add"):
        d.add_mailbox("a@nowhere.example", password_hash=_hash())
    d.add_domain("small.example", max_mailboxes=1)
    d.add_mailbox("one@small.example", password_hash=_hash())
    with pytest.raises(Conflict, match="cap"):
        d.add_mailbox("two@small.example", password_hash=_hash())


def test_new_mailbox_gets_the_domain_default_quota(d: Directory) -> None:
    """Without a quota a new mailbox takes its domain's default quota."""
    d.add_domain("q.example", default_quota=1000)
    d.add_mailbox("u@q.example", password_hash=_hash())
    assert d.get_mailbox("u@q.example").quota == 1000


def test_alias_loop_is_refused_but_self_copy_is_fine(d: Directory) -> None:
    """a->b->a is refused; a mailbox aliased to itself plus another address is allowed."""
    d.add_alias("a@example.org", ["b@example.org"])
    with pytest.raises(Conflict, match="loop"):
        d.add_alias("b@example.org", ["a@example.org"])
    d.add_mailbox("m@example.org", password_hash=_hash())
    d.add_alias("m@example.org", ["m@example.org", "x@elsewhere.example"])
    assert d.get_alias("m@example.org").targets == ("m@example.org", "x@elsewhere.example")


def test_alias_shadowing_a_mailbox_is_refused(d: Directory) -> None:
    """An alias for a mailbox address must keep the mailbox among its targets."""
    d.add_mailbox("m@example.org", password_hash=_hash())
    with pytest.raises(Conflict, match="copy"):
        d.add_alias("m@example.org", ["other@example.org"])


def test_mailbox_behind_an_alias_is_refused(d: Directory) -> None:
    """A mailbox can't be added under an address an alias already forwards elsewhere."""
    d.add_alias("info@example.org", ["x@elsewhere.example"])
    with pytest.raises(Conflict, match="alias"):
        d.add_mailbox("info@example.org", password_hash=_hash())


def test_remove_domain_needs_cascade_and_cascade_removes_everything(d: Directory) -> None:
    """A domain with content is only removed with cascade, which removes its content."""
    d.add_mailbox("a@example.org", password_hash=_hash())
    d.add_alias("b@example.org", ["a@example.org"])
    d.add_domain("alias.example")
    d.remove_domain("alias.example")
    d.add_alias_domain("alias.example", "example.org")
    with pytest.raises(Conflict, match="--cascade"):
        d.remove_domain("example.org")
    r = d.remove_domain("example.org", cascade=True)
    assert r.applied
    assert d.list_domains() == [] and d.list_alias_domains() == []


def test_dry_run_writes_nothing(d: Directory) -> None:
    """A dry run returns the changes but leaves objects and audit log as they were."""
    before = len(d.audit_log())
    r = d.add_mailbox("a@example.org", password_hash=_hash(), dry_run=True)
    assert r.changed and not r.applied
    with pytest.raises(NotFound):
        d.get_mailbox("a@example.org")
    assert len(d.audit_log()) == before


def test_audit_never_holds_the_hash(d: Directory) -> None:
    """Audit before/after omit password hashes but say which scheme is used."""
    h = _hash()
    d.add_mailbox("a@example.org", password_hash=h)
    d.set_password("a@example.org", "another good one")
    text = repr(d.audit_log())
    assert h not in text and "$6$" not in text
    assert d.audit_log()[-1].after is not None
    assert d.audit_log()[-1].after["password_scheme"] == "SHA512-CRYPT"


def test_limit_override_is_validated_and_collected_for_policyd(d: Directory) -> None:
    """set_limit checks the limit name and windows; limit_overrides gathers them by subject."""
    d.add_mailbox("a@example.org", password_hash=_hash())
    with pytest.raises(InvalidInput, match="no limit named"):
        d.set_limit("a@example.org", "nope", "5/1h")
    with pytest.raises(InvalidInput):
        d.set_limit("a@example.org", "user_messages", "five per hour")
    d.set_limit("a@example.org", "user_messages", "5/1h")
    d.set_limit("example.org", "user_messages", "unlimited")
    assert d.limit_overrides() == {
        "user_messages": {"@example.org": (), "a@example.org": ("5/1h",)}
    }
    d.update_mailbox("a@example.org", active=False)
    assert d.limit_overrides() == {"user_messages": {"@example.org": ()}}


def test_rehash_upgrades_an_outdated_scheme_after_login(d: Directory) -> None:
    """rehash() replaces a weak hash when the password verifies, and not otherwise."""
    import base64
    import hashlib

    salt = b"salt"
    weak = "{SSHA}" + base64.b64encode(hashlib.sha1(b"pw" + salt).digest() + salt).decode()
    d.add_mailbox("old@example.org", password_hash=weak)
    assert not d.rehash("old@example.org", "wrong")
    assert d.rehash("old@example.org", "pw")
    assert d.get_mailbox("old@example.org").password_hash.startswith("{SHA512-CRYPT}")
