"""Import/export planning (services.directory.transfer): parsing, validation, plans.

The planner reads a real SQLite directory in a temp dir (fast, no server); hashes are real
argon2id/SSHA512 hashes checked by services.directory.passwords.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.directory import transfer
from services.directory.model import (
    Alias,
    AuditEntry,
    Create,
    Domain,
    Mailbox,
)
from services.directory.passwords import hash_password
from services.directory.sqlite import SqliteBackend
from services.directory.transfer import (
    CsvSource,
    ImportError_,
    RowError,
    plan_import,
)


@pytest.fixture(scope="module")
def argon_hash() -> str:
    """One real argon2id hash for the whole module (hashing is slow on purpose)."""
    return hash_password("Unit-test-password-1")


def ssha512(password: str, salt: bytes = b"saltsalt") -> str:
    digest = hashlib.sha512(password.encode() + salt).digest()
    return "{SSHA512}" + base64.b64encode(digest + salt).decode()


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[SqliteBackend]:
    """An empty SQLite directory with example.org (max 3 mailboxes) and example.net."""
    b = SqliteBackend(str(tmp_path / "d.db"))
    b.write(
        [Create(Domain("example.org", max_mailboxes=3)), Create(Domain("example.net"))],
        [],
    )
    try:
        yield b
    finally:
        b.close()


def write(tmp: Path, name: str, text: str | bytes) -> str:
    p = tmp / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return str(p)


def plan(
    backend: SqliteBackend, paths: list[str], **kw: object
) -> tuple[transfer.ImportPlan, list[str]]:
    errors: list[str] = []
    p = plan_import(backend, paths, on_error=errors.append, **kw)  # type: ignore[arg-type]
    return p, errors


# --------------------------------------------------------------------------- values


def test_size_accepts_bytes_and_binary_suffixes() -> None:
    """Sizes are bytes or K/M/G/T (1024-based), JSON ints pass through."""
    assert transfer._size("1024", "quota") == 1024
    assert transfer._size("2G", "quota") == 2 * 1024**3
    assert transfer._size("500MiB", "quota") == 500 * 1024**2
    assert transfer._size(7, "quota") == 7


@pytest.mark.parametrize("bad", ["-1", "1.5G", "lots", "", True, -3])
def test_size_rejects_bad_values_naming_the_field(bad: object) -> None:
    """A negative, fractional or non-numeric size is a RowError naming the field."""
    with pytest.raises(RowError, match=r"^quota: "):
        transfer._size(bad, "quota")


def test_bool_accepts_common_spellings() -> None:
    """active accepts true/false, yes/no, 1/0 and JSON booleans; anything else is an error."""
    assert transfer._bool("Yes", "active") is True
    assert transfer._bool("0", "active") is False
    assert transfer._bool(False, "active") is False
    with pytest.raises(RowError, match="active: 'maybe' is not true or false"):
        transfer._bool("maybe", "active")


def test_limits_parse_csv_syntax_and_check_known_names() -> None:
    """limits cells are NAME=W,W;NAME=unlimited; unknown names are refused when names are known."""
    got = transfer._limits("user_messages=500/1d,50/1h;rcpt=unlimited", "limits", None)
    assert got == {"user_messages": ("500/1d", "50/1h"), "rcpt": ()}
    with pytest.raises(RowError, match="no limit named 'nope'"):
        transfer._limits("nope=1/1h", "limits", {"user_messages"})
    with pytest.raises(RowError, match="is not NAME=WINDOWS"):
        transfer._limits("500/1d", "limits", None)


def test_address_errors_read_like_the_docs() -> None:
    """An address without a domain is reported as 'address: 'x@' is not an address'."""
    with pytest.raises(RowError) as exc:
        transfer._address("x@", "address")
    assert str(exc.value) == "address: 'x@' is not an address"


def test_detect_kind_from_header() -> None:
    """Each kind is recognised from its characteristic header columns."""
    assert transfer.detect_kind(["address", "password_hash"]) == "mailboxes"
    assert transfer.detect_kind(["source", "targets"]) == "aliases"
    assert transfer.detect_kind(["name", "target"]) == "alias-domains"
    assert transfer.detect_kind(["Name", "description"]) == "domains"
    assert transfer.detect_kind(["foo", "bar"]) is None


# --------------------------------------------------------------------------- CSV reading


def source(data: bytes, kind: transfer.ImportKind | None = None) -> CsvSource:
    return CsvSource(io.BufferedReader(io.BytesIO(data)), "f.csv", kind)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"address\x00,x\n", "binary data"),
        (b"\x1f\x8b\x08\x00rest", "gzip-compressed"),
        (b"address\nm\xfcller@example.org\n", "not UTF-8"),
        (b"", "empty file"),
        (b"foo,bar\n1,2\n", "names no known columns"),
        (b"address,colour\n", "unknown column 'colour'"),
        (b"source\n", r"need the column\(s\) targets"),
        (b"address,address\n", "appears twice"),
    ],
)
def test_unreadable_files_are_refused_with_a_reason(data: bytes, message: str) -> None:
    """Binary, compressed, non-UTF-8, empty or wrongly headed files raise ImportError_."""
    with pytest.raises(ImportError_, match=message):
        list(source(data).rows())


def test_rows_carry_the_line_where_the_record_starts() -> None:
    """A quoted field spanning lines does not shift later line numbers; blank lines skipped."""
    data = b'\xef\xbb\xbfsource,targets\n"a@x.org","b@x.org\nc@x.org"\n\nd@x.org,e@x.org\n'
    rows = list(source(data).rows())
    assert [w for w, _ in rows] == ["f.csv:2", "f.csv:5"]
    assert rows[0][1]["targets"] == "b@x.org\nc@x.org"


def test_headerless_file_with_kind_uses_documented_columns() -> None:
    """With --kind and no header, the documented column order applies from line 1."""
    rows = list(source(b"info@example.org,a@example.org\n", "aliases").rows())
    assert rows == [("f.csv:1", {"source": "info@example.org", "targets": "a@example.org"})]


def test_broken_records_become_row_errors() -> None:
    """NUL characters and too many fields are per-row problems, not fatal for the file."""
    data = b"source,targets\na@x.org,b@x.org,extra\nc@x.org,d@x.org\n"
    rows = list(source(data).rows())
    assert "3 fields, the header has 2" in rows[0][1]["\0error"]
    assert rows[1][1] == {"source": "c@x.org", "targets": "d@x.org"}


# --------------------------------------------------------------------------- planning


def test_every_bad_row_is_reported_and_nothing_planned(
    tmp_path: Path, backend: SqliteBackend, argon_hash: str
) -> None:
    """Each bad row gives one 'file:line: field: problem' message; the plan has no changes."""
    text = (
        "address,password_hash,quota\n"
        f'ok@example.net,"{argon_hash}",1G\n'
        f'x@,"{argon_hash}",\n'
        f'bob@nowhere.example,"{argon_hash}",\n'
        "carol@example.net,{ARGON2ID}garbage,\n"
        f'dave@example.net,"{argon_hash}",-5\n'
        "erin@example.net,,\n"
        f'OK@Example.NET,"{argon_hash}",\n'
    )
    p, errors = plan(backend, [write(tmp_path, "mailboxes.csv", text)])
    assert p.errors == 6 and not p.ok and p.changes == []
    assert errors[0] == "mailboxes.csv:3: address: 'x@' is not an address"
    assert errors[1].startswith("mailboxes.csv:4: address: domain nowhere.example does not exist")
    assert errors[2].startswith("mailboxes.csv:5: password_hash: ")
    assert errors[3].startswith("mailboxes.csv:6: quota: ")
    assert errors[4].startswith("mailboxes.csv:7: password_hash: missing")
    assert errors[5] == (
        "mailboxes.csv:8: mailbox ok@example.net appears twice (first at mailboxes.csv:2)"
    )


def test_bad_hash_messages_never_show_the_hash(tmp_path: Path, backend: SqliteBackend) -> None:
    """A malformed hash is reported by field and scheme, never by its value."""
    secret = "{SSHA512}c2VjcmV0LXNlY3JldA"
    p, errors = plan(
        backend, [write(tmp_path, "m.csv", f"address,password_hash\na@example.net,{secret}\n")]
    )
    assert p.errors == 1
    assert "c2VjcmV0" not in errors[0] and errors[0].startswith("m.csv:2: password_hash")


def test_domains_created_earlier_in_the_same_import_count(
    tmp_path: Path, backend: SqliteBackend
) -> None:
    """Mailboxes and aliases may use a domain the same import creates (files in any order)."""
    mb = write(tmp_path, "mailboxes.csv", f"address,password_hash\nu@new.example,{ssha512('p')}\n")
    al = write(tmp_path, "aliases.csv", "source,targets\n@new.example,u@new.example\n")
    dom = write(tmp_path, "domains.csv", "name,default_quota\nnew.example,2G\n")
    p, errors = plan(backend, [al, mb, dom])
    assert errors == [] and p.ok
    kinds = [(type(c).__name__, type(c.obj).__name__) for c in p.changes]  # type: ignore[union-attr]
    assert kinds == [("Create", "Domain"), ("Create", "Mailbox"), ("Create", "Alias")]
    mailbox = p.changes[1].obj  # type: ignore[union-attr]
    assert isinstance(mailbox, Mailbox) and mailbox.quota == 2 * 1024**3


def test_alias_loops_through_existing_aliases_are_refused(
    tmp_path: Path, backend: SqliteBackend
) -> None:
    """An imported alias closing a loop with a stored alias is an error at its line."""
    backend.write([Create(Alias("b@example.net", ("c@example.net",)))], [])
    text = "source,targets\nself@example.net,self@example.net other@x.org\nc@example.net,b@example.net\n"
    p, errors = plan(backend, [write(tmp_path, "aliases.csv", text)])
    assert errors == [
        "aliases.csv:3: targets: alias loop: c@example.net -> b@example.net -> c@example.net"
    ]


def test_alias_of_a_mailbox_must_keep_a_copy(
    tmp_path: Path, backend: SqliteBackend, argon_hash: str
) -> None:
    """An alias whose source is a mailbox (stored or imported) must include the mailbox."""
    mb = write(tmp_path, "mailboxes.csv", f'address,password_hash\nm@example.net,"{argon_hash}"\n')
    al = write(
        tmp_path,
        "aliases.csv",
        "source,targets\nm@example.net,x@y.org\n",
    )
    p, errors = plan(backend, [mb, al])
    assert len(errors) == 1 and "include m@example.net itself" in errors[0]
    al2 = write(tmp_path, "aliases.csv", "source,targets\nm@example.net,m@example.net;x@y.org\n")
    p, errors = plan(backend, [mb, al2])
    assert errors == [] and p.ok


def test_mailbox_behind_a_stored_alias_is_refused(
    tmp_path: Path, backend: SqliteBackend, argon_hash: str
) -> None:
    """A new mailbox whose address is a stored alias not delivering to it is an error."""
    backend.write([Create(Alias("m@example.net", ("x@y.org",)))], [])
    mb = write(tmp_path, "mailboxes.csv", f'address,password_hash\nm@example.net,"{argon_hash}"\n')
    p, errors = plan(backend, [mb])
    assert len(errors) == 1 and errors[0].startswith(
        "mailboxes.csv:2: address: m@example.net is an alias"
    )


def test_domain_caps_are_enforced(tmp_path: Path, backend: SqliteBackend) -> None:
    """example.org allows 3 mailboxes: the 4th imported one is an error at its line."""
    h = ssha512("p")
    rows = "".join(f"u{i}@example.org,{h}\n" for i in range(4))
    p, errors = plan(backend, [write(tmp_path, "m.csv", "address,password_hash\n" + rows)])
    assert errors == ["m.csv:5: address: domain example.org is at its cap of 3 mailboxes"]


def test_rerun_is_unchanged_and_differences_are_conflicts_without_update(
    tmp_path: Path, backend: SqliteBackend, argon_hash: str
) -> None:
    """Equal rows are unchanged; differing ones are conflicts, or updates with update=True."""
    f = write(
        tmp_path,
        "m.csv",
        f'address,password_hash,name,quota\na@example.net,"{argon_hash}",Ann,1G\n',
    )
    p, errors = plan(backend, [f])
    transfer.apply_plan(backend, p, "tester")
    again, errors = plan(backend, [f])
    assert errors == [] and again.changes == []
    assert again.counts["mailboxes"].unchanged == 1
    # the hash column left empty keeps the stored hash: still unchanged
    g = write(tmp_path, "m2.csv", "address,password_hash,name\na@example.net,,Ann\n")
    assert plan(backend, [g])[0].changes == []
    h = write(tmp_path, "m3.csv", "address,name,quota\na@example.net,Ann B,2G\n")
    p, errors = plan(backend, [h])
    assert errors == [
        "m3.csv:2: mailbox a@example.net exists with a different name, quota "
        "(use --update to change it)"
    ]
    p, errors = plan(backend, [h], update=True)
    assert errors == [] and p.counts["mailboxes"].update == 1
    transfer.apply_plan(backend, p, "tester")
    mb = backend.get_mailbox("a@example.net")
    assert mb is not None and mb.name == "Ann B" and mb.quota == 2 * 1024**3
    assert mb.password_hash == argon_hash  # never rehashed


def test_alias_domains_must_point_at_real_domains(tmp_path: Path, backend: SqliteBackend) -> None:
    """An alias domain may not be a real domain, point at itself or at a missing domain."""
    text = (
        "name,target\n"
        "alias.example,example.org\n"
        "example.net,example.org\n"
        "self.example,self.example\n"
        "other.example,missing.example\n"
    )
    p, errors = plan(backend, [write(tmp_path, "ad.csv", text)])
    assert [e.split(": ", 1)[0] for e in errors] == ["ad.csv:3", "ad.csv:4", "ad.csv:5"]
    assert p.counts["alias-domains"].create == 1


def test_json_documents_are_checked_like_csv(tmp_path: Path, backend: SqliteBackend) -> None:
    """JSON rows are reported as 'file: kind[i]: ...'; unknown keys and bad JSON are refused."""
    doc = {"domains": [{"name": "j.example"}], "mailboxes": [{"address": "x@j.example"}, 3]}
    p, errors = plan(backend, [write(tmp_path, "d.json", json.dumps(doc))])
    assert errors == [
        "d.json: mailboxes[0]: password_hash: missing: a new mailbox needs one "
        "(export with --with-hashes)",
        "d.json: mailboxes[1]: must be an object",
    ]
    with pytest.raises(ImportError_, match="unknown key 'users'"):
        plan(backend, [write(tmp_path, "e.json", '{"users": []}')])
    with pytest.raises(ImportError_, match=r"bad.json:2: not valid JSON"):
        plan(backend, [write(tmp_path, "bad.json", '{\n"domains": [,]}')])


def test_export_leaves_out_totp_and_hashes_unless_asked(
    backend: SqliteBackend, argon_hash: str
) -> None:
    """Exports never carry TOTP secrets; password hashes only with with_hashes."""
    backend.write(
        [
            Create(
                Mailbox("t@example.net", password_hash=argon_hash, totp_secret="JBSWY3DPEHPK3PXP")
            )
        ],
        [],
    )
    plain = io.StringIO()
    transfer.write_json(plain, backend)
    assert "JBSWY3DP" not in plain.getvalue() and argon_hash not in plain.getvalue()
    full = io.StringIO()
    transfer.write_json(full, backend, with_hashes=True)
    doc = json.loads(full.getvalue())
    assert doc["mailboxes"][0]["password_hash"] == argon_hash
    assert "JBSWY3DP" not in full.getvalue() and "totp" not in full.getvalue()


def test_import_audit_holds_counts_only(tmp_path: Path, backend: SqliteBackend) -> None:
    """The one audit entry of an import names the files and counts, never a value or hash."""
    h = ssha512("audit")
    p, _ = plan(backend, [write(tmp_path, "m.csv", f"address,password_hash\nz@example.net,{h}\n")])
    entry = transfer.import_audit(p, "tester", clock=lambda: 5.0)
    assert isinstance(entry, AuditEntry) and entry.action == "import" and entry.object == "m.csv"
    assert entry.after == {
        "counts": {
            "domains": {"create": 0, "update": 0, "unchanged": 0},
            "alias-domains": {"create": 0, "update": 0, "unchanged": 0},
            "mailboxes": {"create": 1, "update": 0, "unchanged": 0},
            "aliases": {"create": 0, "update": 0, "unchanged": 0},
        }
    }
    assert h not in json.dumps(entry.after)


def test_atomic_writer_leaves_nothing_on_failure(tmp_path: Path) -> None:
    """A failing block leaves neither the target nor a temp file; success gives mode 0600."""
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), transfer.atomic_writer(target) as fh:
        fh.write(b"partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with transfer.atomic_writer(target) as fh:
        fh.write(b"{}")
    assert target.read_bytes() == b"{}" and (target.stat().st_mode & 0o777) == 0o600


def test_bad_quoting_is_a_row_error_and_reading_goes_on() -> None:
    """A CSV syntax error spoils only its own record; an unquoted argon2 hash gets a hint."""
    rows = list(source(b'source,targets\na@x.org,"b@x.org"c\nc@x.org,d@x.org\n').rows())
    assert rows[0][0] == "f.csv:2" and "not valid CSV" in rows[0][1]["\0error"]
    assert rows[1] == ("f.csv:3", {"source": "c@x.org", "targets": "d@x.org"})
    data = b"address,password_hash\na@x.org,{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$s$h\n"
    ((_, row),) = source(data).rows()
    assert "put values holding commas in double quotes" in row["\0error"]
