"""The directory backend contract: every backend in ``directory_backends.BACKENDS`` passes it.

Conventions every backend follows (the ops layer and the CLI rely on them):

* keys are stored normalised (lower-case, IDN as A-label) and lookups normalise their
  argument, so ``get_mailbox("Bob@Example.ORG")`` finds ``bob@example.org``;
* listings are sorted by key;
* a mailbox, alias or alias domain whose domain is missing raises NotFound; deleting a domain
  still used by mailboxes, aliases or alias domains raises Conflict;
* ``audit_log(since, limit)`` returns entries with ``ts >= since`` oldest first, and with
  ``limit > 0`` only the newest ``limit`` of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.directory.backend import Backend
from services.directory.model import (
    Admin,
    Alias,
    AliasDomain,
    AlreadyExists,
    AppPassword,
    AuditEntry,
    Change,
    Conflict,
    Create,
    Delete,
    DirectoryError,
    DirectoryObject,
    Domain,
    Mailbox,
    NotFound,
    Replace,
    key_of,
)
from tests.integration.directory_backends import BACKENDS

pytestmark = pytest.mark.integration

HASH = "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHQxMjM0$QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
AP_HASH = "{SHA512-CRYPT}$6$saltsalt$Zm9vYmFyYmF6cXV4"
TOTP = "JBSWY3DPEHPK3PXP"


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """An empty directory of each registered backend."""
    with BACKENDS[request.param](tmp_path) as b:
        yield b


def domain(name: str = "example.org", **kw: object) -> Domain:
    return Domain(name=name, created=1000.0, modified=1000.0, **kw)  # type: ignore[arg-type]


def mailbox(address: str = "bob@example.org", **kw: object) -> Mailbox:
    base: dict[str, object] = {
        "password_hash": HASH,
        "name": "Bob Example",
        "created": 1000.0,
        "modified": 1000.0,
        "password_changed": 1000.0,
    }
    base.update(kw)
    return Mailbox(address=address, **base)  # type: ignore[arg-type]


def populated(b: Backend) -> None:
    """One domain with two mailboxes, an alias, an alias domain, an app password, an admin."""
    b.write(
        [
            Create(domain()),
            Create(mailbox()),
            Create(mailbox("alice@example.org", name="Alice")),
            Create(Alias("info@example.org", ("bob@example.org", "alice@example.org"))),
            Create(AliasDomain("example.net", "example.org")),
            Create(AppPassword("ap-1", "bob@example.org", "phone", AP_HASH, ("imap",))),
            Create(Admin("carol", "domain", ("example.org",))),
        ],
        [],
    )


def samples() -> list[DirectoryObject]:
    """One object of each kind, valid in a populated() directory but not yet in it."""
    return [
        domain("example.com"),
        mailbox("dave@example.org"),
        Alias("sales@example.org", ("bob@example.org",)),
        AliasDomain("example.info", "example.org"),
        AppPassword("ap-2", "alice@example.org", "laptop", AP_HASH),
        Admin("root", "global"),
    ]


def get(b: Backend, obj: DirectoryObject) -> DirectoryObject | None:
    """Read back the stored object with the same kind and key."""
    getters = {
        Domain: b.get_domain,
        Mailbox: b.get_mailbox,
        Alias: b.get_alias,
        AliasDomain: b.get_alias_domain,
        AppPassword: b.get_app_password,
        Admin: b.get_admin,
    }
    found: DirectoryObject | None = getters[type(obj)](key_of(obj))
    return found


KIND = {
    Domain: "domain",
    Mailbox: "mailbox",
    Alias: "alias",
    AliasDomain: "alias_domain",
    AppPassword: "app_password",
    Admin: "admin",
}


# --------------------------------------------------------------------------- basics


def test_backend_names_its_kind(backend: Backend) -> None:
    """Every backend says which kind it is (the name used in the config)."""
    assert backend.kind in BACKENDS


def test_empty_directory_reads_nothing(backend: Backend) -> None:
    """A new directory has no objects, and lookups of absent keys return None."""
    assert backend.list_domains() == []
    assert backend.list_mailboxes() == []
    assert backend.list_aliases() == []
    assert backend.list_alias_domains() == []
    assert backend.list_admins() == []
    assert backend.list_app_passwords("bob@example.org") == []
    assert backend.audit_log() == []
    assert backend.get_domain("example.org") is None
    assert backend.get_mailbox("bob@example.org") is None
    assert backend.get_alias("@example.org") is None
    assert backend.get_alias_domain("example.net") is None
    assert backend.get_app_password("ap-1") is None
    assert backend.get_admin("carol") is None
    assert backend.count_mailboxes("example.org") == 0


def test_empty_write_is_a_no_op(backend: Backend) -> None:
    """write() with no changes and no audit entries changes nothing."""
    backend.write([], [])
    assert backend.list_domains() == [] and backend.audit_log() == []


@pytest.mark.parametrize("index", range(6), ids=list(KIND.values()))
def test_every_kind_round_trips(backend: Backend, index: int) -> None:
    """Each kind of object is read back exactly as created, then replaced, then deleted."""
    populated(backend)
    obj = samples()[index]
    backend.write([Create(obj)], [])
    assert get(backend, obj) == obj
    changed: DirectoryObject
    if isinstance(obj, Domain):
        changed = Domain(obj.name, False, "desc", 5, 6, 1 << 30, {"send": ("100/1h",)}, 1.0, 2.0)
    elif isinstance(obj, Mailbox):
        changed = Mailbox(
            obj.address, "{BLF-CRYPT}$2y$05$x", "Dave", 123, False, {"rcpt": ()}, TOTP, 7, 3.0
        )
    elif isinstance(obj, Alias):
        changed = Alias(obj.address, ("x@elsewhere.test", "bob@example.org"), False, 1.0, 2.0)
    elif isinstance(obj, AliasDomain):
        changed = AliasDomain(obj.name, obj.target, False, 1.0, 2.0)
    elif isinstance(obj, AppPassword):
        changed = AppPassword(
            obj.id, obj.address, "new", AP_HASH, ("smtp", "imap"), 9.0, 1.0, 8.0, "192.0.2.1"
        )
    else:
        changed = Admin(obj.name, "domain", ("example.org", "example.com"), False, 1.0, 2.0)
    backend.write([Replace(changed)], [])
    assert get(backend, obj) == changed
    backend.write([Delete(KIND[type(obj)], key_of(obj))], [])  # type: ignore[arg-type]
    assert get(backend, obj) is None


def test_listings_are_sorted_and_complete(backend: Backend) -> None:
    """Listings return every object of a kind, sorted by key."""
    populated(backend)
    backend.write([Create(domain("a-first.org")), Create(Admin("alice", "global"))], [])
    assert [d.name for d in backend.list_domains()] == ["a-first.org", "example.org"]
    assert [m.address for m in backend.list_mailboxes()] == [
        "alice@example.org",
        "bob@example.org",
    ]
    assert [a.address for a in backend.list_aliases()] == ["info@example.org"]
    assert backend.list_alias_domains() == [AliasDomain("example.net", "example.org")]
    assert [a.name for a in backend.list_admins()] == ["alice", "carol"]
    assert backend.list_admins()[1].domains == ("example.org",)


def test_mailbox_keeps_secrets_and_limits(backend: Backend) -> None:
    """A mailbox's hash, TOTP secret, replay step and limits are stored unchanged."""
    backend.write([Create(domain())], [])
    mb = mailbox(
        totp_secret=TOTP,
        totp_last_step=57_000_000,
        limits={"send": ("10/1m", "500/1d"), "rcpt": ()},
    )
    backend.write([Create(mb)], [])
    got = backend.get_mailbox(mb.address)
    assert got == mb
    assert (
        got is not None and got.limits["send"] == ("10/1m", "500/1d") and got.limits["rcpt"] == ()
    )


# --------------------------------------------------------------------------- normalisation


def test_lookups_normalise_their_argument(backend: Backend) -> None:
    """Mixed-case and trailing-dot keys find the normalised stored objects."""
    populated(backend)
    assert backend.get_mailbox("Bob@Example.ORG") == backend.get_mailbox("bob@example.org")
    assert backend.get_mailbox("Bob@Example.ORG") is not None
    assert backend.get_domain("EXAMPLE.org.") is not None
    assert backend.get_alias("INFO@example.org") is not None
    assert backend.count_mailboxes("Example.Org") == 2


def test_idn_domain_is_stored_as_a_label(backend: Backend) -> None:
    """An IDN domain and its mailbox are stored as A-labels and found by either form."""
    backend.write(
        [Create(domain("xn--bcher-kva.example")), Create(mailbox("anna@xn--bcher-kva.example"))], []
    )
    assert [d.name for d in backend.list_domains()] == ["xn--bcher-kva.example"]
    assert backend.get_domain("bücher.example") == backend.get_domain("xn--bcher-kva.example")
    got = backend.get_mailbox("anna@bücher.example")
    assert got is not None and got.address == "anna@xn--bcher-kva.example"
    assert [m.address for m in backend.list_mailboxes("bücher.example")] == [
        "anna@xn--bcher-kva.example"
    ]


def test_invalid_lookup_keys_find_nothing(backend: Backend) -> None:
    """Keys that can't be addresses or domains return None instead of raising."""
    populated(backend)
    assert backend.get_mailbox("not-an-address") is None
    assert backend.get_domain("localhost") is None
    assert backend.get_alias("") is None


# --------------------------------------------------------------------------- filters


def test_list_mailboxes_filters_by_domain(backend: Backend) -> None:
    """list_mailboxes(domain) returns only that domain's mailboxes; count_mailboxes agrees."""
    populated(backend)
    backend.write([Create(domain("other.org")), Create(mailbox("zed@other.org"))], [])
    assert [m.address for m in backend.list_mailboxes("example.org")] == [
        "alice@example.org",
        "bob@example.org",
    ]
    assert [m.address for m in backend.list_mailboxes("other.org")] == ["zed@other.org"]
    assert backend.list_mailboxes("nothing.org") == []
    assert len(backend.list_mailboxes()) == 3
    assert backend.count_mailboxes("example.org") == 2
    assert backend.count_mailboxes("other.org") == 1
    assert backend.count_mailboxes("nothing.org") == 0


def test_list_mailboxes_with_limits_returns_only_those_with_overrides(backend: Backend) -> None:
    """list_mailboxes_with_limits() returns exactly the mailboxes that carry limit overrides."""
    populated(backend)
    backend.write(
        [
            Create(mailbox("carol@example.org", limits={"user_messages": ("5/1h",)})),
            Create(mailbox("dave@example.org", limits={"user_messages": ()})),
        ],
        [],
    )
    found = backend.list_mailboxes_with_limits()
    assert [m.address for m in found] == ["carol@example.org", "dave@example.org"]
    assert found[0].limits == {"user_messages": ("5/1h",)}
    assert found[1].limits == {"user_messages": ()}


def test_list_aliases_filters_by_domain_including_catch_all(backend: Backend) -> None:
    """list_aliases(domain) returns that domain's aliases, the catch-all included."""
    populated(backend)
    backend.write(
        [
            Create(domain("other.org")),
            Create(Alias("@example.org", ("bob@example.org",))),
            Create(Alias("x@other.org", ("bob@example.org",))),
        ],
        [],
    )
    assert [a.address for a in backend.list_aliases("example.org")] == [
        "@example.org",
        "info@example.org",
    ]
    assert [a.address for a in backend.list_aliases("other.org")] == ["x@other.org"]
    assert backend.get_alias("@example.org") == Alias("@example.org", ("bob@example.org",))


def test_alias_targets_keep_order_and_are_replaced_wholly(backend: Backend) -> None:
    """Alias targets come back in order; a Replace swaps the whole target list."""
    populated(backend)
    many = tuple(f"t{i}@example.com" for i in range(30))
    backend.write([Replace(Alias("info@example.org", many))], [])
    got = backend.get_alias("info@example.org")
    assert got is not None and got.targets == many
    backend.write([Replace(Alias("info@example.org", ("bob@example.org",)))], [])
    got = backend.get_alias("info@example.org")
    assert got is not None and got.targets == ("bob@example.org",)


def test_app_passwords_listed_per_mailbox(backend: Backend) -> None:
    """list_app_passwords(address) returns only that mailbox's app passwords."""
    populated(backend)
    backend.write([Create(AppPassword("ap-9", "alice@example.org", "tablet", AP_HASH))], [])
    assert [p.id for p in backend.list_app_passwords("bob@example.org")] == ["ap-1"]
    assert [p.id for p in backend.list_app_passwords("alice@example.org")] == ["ap-9"]
    got = backend.get_app_password("ap-1")
    assert got is not None and got.scopes == ("imap",) and got.password_hash == AP_HASH


def test_app_passwords_go_with_their_mailbox(backend: Backend) -> None:
    """Deleting a mailbox removes its app passwords too."""
    populated(backend)
    backend.write([Delete("mailbox", "bob@example.org")], [])
    assert backend.get_app_password("ap-1") is None
    assert backend.list_app_passwords("bob@example.org") == []
    assert backend.get_mailbox("alice@example.org") is not None


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("index", range(6), ids=list(KIND.values()))
def test_create_existing_key_raises_already_exists(backend: Backend, index: int) -> None:
    """Creating an object whose key is taken raises AlreadyExists naming it."""
    populated(backend)
    obj = samples()[index]
    backend.write([Create(obj)], [])
    with pytest.raises(AlreadyExists, match=key_of(obj)):
        backend.write([Create(obj)], [])


@pytest.mark.parametrize("index", range(6), ids=list(KIND.values()))
def test_replace_absent_raises_not_found(backend: Backend, index: int) -> None:
    """Replacing an object that does not exist raises NotFound naming it."""
    populated(backend)
    obj = samples()[index]
    with pytest.raises(NotFound, match=key_of(obj)):
        backend.write([Replace(obj)], [])
    assert get(backend, obj) is None


@pytest.mark.parametrize("index", range(6), ids=list(KIND.values()))
def test_delete_absent_raises_not_found(backend: Backend, index: int) -> None:
    """Deleting an object that does not exist raises NotFound naming it."""
    populated(backend)
    obj = samples()[index]
    with pytest.raises(NotFound, match=key_of(obj)):
        backend.write([Delete(KIND[type(obj)], key_of(obj))], [])  # type: ignore[arg-type]


def test_delete_domain_with_mailboxes_conflicts(backend: Backend) -> None:
    """Deleting a domain that still has mailboxes raises Conflict and deletes nothing."""
    populated(backend)
    with pytest.raises(Conflict, match="example.org"):
        backend.write([Delete("domain", "example.org")], [])
    assert backend.get_domain("example.org") is not None
    assert backend.count_mailboxes("example.org") == 2


def test_delete_emptied_domain_succeeds(backend: Backend) -> None:
    """A domain emptied in the same batch is deleted with everything in it."""
    populated(backend)
    backend.write(
        [
            Delete("alias_domain", "example.net"),
            Delete("alias", "info@example.org"),
            Delete("app_password", "ap-1"),
            Delete("mailbox", "bob@example.org"),
            Delete("mailbox", "alice@example.org"),
            Delete("domain", "example.org"),
        ],
        [],
    )
    assert backend.list_domains() == [] and backend.list_mailboxes() == []


@pytest.mark.parametrize(
    "obj",
    [
        mailbox("x@missing.org"),
        Alias("x@missing.org", ("bob@example.org",)),
        AliasDomain("example.info", "missing.org"),
        AppPassword("ap-x", "nobody@example.org", "n", AP_HASH),
    ],
    ids=["mailbox", "alias", "alias_domain", "app_password"],
)
def test_object_without_parent_raises_not_found(backend: Backend, obj: DirectoryObject) -> None:
    """An object whose domain (or mailbox) does not exist raises NotFound and is not stored."""
    populated(backend)
    with pytest.raises(NotFound):
        backend.write([Create(obj)], [])
    assert get(backend, obj) is None


def test_error_messages_carry_no_secrets(backend: Backend) -> None:
    """Errors about a mailbox name it but never show its password hash or TOTP secret."""
    populated(backend)
    with pytest.raises(DirectoryError) as err:
        backend.write([Create(mailbox(totp_secret=TOTP))], [])
    assert "bob@example.org" in str(err.value)
    assert HASH not in str(err.value) and TOTP not in str(err.value)


# --------------------------------------------------------------------------- atomicity


def test_failed_batch_leaves_nothing(backend: Backend) -> None:
    """A batch whose third change fails leaves no trace of the first two, nor its audit."""
    populated(backend)
    before = backend.audit_log()
    batch: list[Change] = [
        Create(mailbox("new1@example.org")),
        Replace(mailbox("alice@example.org", name="Renamed")),
        Create(mailbox("bob@example.org")),  # exists: fails
        Create(mailbox("new2@example.org")),
    ]
    entry = AuditEntry(2000.0, "tester", "mailbox.add", "new1@example.org", None, {"a": 1})
    with pytest.raises(AlreadyExists):
        backend.write(batch, [entry])
    assert backend.get_mailbox("new1@example.org") is None
    assert backend.get_mailbox("new2@example.org") is None
    alice = backend.get_mailbox("alice@example.org")
    assert alice is not None and alice.name == "Alice"
    assert backend.audit_log() == before


def test_failed_large_batch_leaves_nothing(backend: Backend) -> None:
    """A long run of creates failing at its end leaves none of them behind."""
    backend.write([Create(domain())], [])
    batch: list[Change] = [Create(mailbox(f"u{i:03d}@example.org")) for i in range(200)]
    batch.append(Create(mailbox("u000@example.org")))  # duplicate within the batch
    with pytest.raises(AlreadyExists, match="u000@example.org"):
        backend.write(batch, [])
    assert backend.count_mailboxes("example.org") == 0


def test_batch_may_create_then_use(backend: Backend) -> None:
    """Changes in one batch see the earlier ones: a domain, its mailbox and an alias together."""
    backend.write(
        [
            Create(domain("fresh.org")),
            Create(mailbox("a@fresh.org")),
            Create(Alias("b@fresh.org", ("a@fresh.org",))),
            Replace(mailbox("a@fresh.org", quota=5)),
        ],
        [],
    )
    got = backend.get_mailbox("a@fresh.org")
    assert got is not None and got.quota == 5
    assert backend.get_alias("b@fresh.org") is not None


# --------------------------------------------------------------------------- audit


def test_audit_entries_round_trip(backend: Backend) -> None:
    """Audit entries are appended with their before/after data and get increasing ids."""
    populated(backend)
    e1 = AuditEntry(
        2000.0,
        "root (sudo: alice)",
        "mailbox.add",
        "dave@example.org",
        None,
        {"address": "dave@example.org", "quota": 0},
    )
    e2 = AuditEntry(
        2001.0,
        "alice",
        "mailbox.update",
        "dave@example.org",
        {"quota": 0},
        {"quota": 5, "limits": {"send": ["1/1m"]}},
    )
    backend.write([Create(mailbox("dave@example.org"))], [e1])
    backend.write([Replace(mailbox("dave@example.org", quota=5))], [e2])
    log = backend.audit_log()
    assert [(e.ts, e.actor, e.action, e.object) for e in log] == [
        (2000.0, "root (sudo: alice)", "mailbox.add", "dave@example.org"),
        (2001.0, "alice", "mailbox.update", "dave@example.org"),
    ]
    assert log[0].before is None and dict(log[0].after or {}) == e1.after
    assert dict(log[1].before or {}) == {"quota": 0}
    assert dict(log[1].after or {}) == {"quota": 5, "limits": {"send": ["1/1m"]}}
    assert 0 < log[0].id < log[1].id


def test_audit_log_since_and_limit(backend: Backend) -> None:
    """audit_log filters by ts >= since and keeps the newest `limit` entries, oldest first."""
    entries = [AuditEntry(float(1000 + i), "a", "x.y", f"o{i}") for i in range(10)]
    backend.write([], entries[:5])
    backend.write([], entries[5:])
    assert [e.object for e in backend.audit_log()] == [f"o{i}" for i in range(10)]
    assert [e.object for e in backend.audit_log(since=1007.0)] == ["o7", "o8", "o9"]
    assert [e.object for e in backend.audit_log(limit=2)] == ["o8", "o9"]
    assert [e.object for e in backend.audit_log(since=1003.0, limit=20)] == [
        f"o{i}" for i in range(3, 10)
    ]
    assert backend.audit_log(since=5000.0) == []


def test_audit_may_be_written_alone(backend: Backend) -> None:
    """A write with audit entries but no changes records them (e.g. a failed login report)."""
    backend.write([], [AuditEntry(5.0, "authd", "mailbox.lock", "bob@example.org")])
    assert [e.action for e in backend.audit_log()] == ["mailbox.lock"]
