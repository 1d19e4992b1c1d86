"""``pfm import`` / ``pfm export`` end to end against real SQLite directories in temp dirs.

Most tests call the real entry point ``services.cli.main.main([...])`` in-process; the large
broken file and the progress bar run ``python -m services.cli.main`` as a subprocess.
"""

from __future__ import annotations

import csv
import json
import os
import pty
import resource
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.cli import exitcodes
from services.cli.main import main
from services.directory.model import Alias, AliasDomain, Create, Domain, Mailbox, public
from services.directory.passwords import hash_password
from services.directory.sqlite import SqliteBackend

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    code: int
    out: str
    err: str


@dataclass
class Env:
    root: Path
    config: Path
    db: Path
    run: Callable[..., Run]

    def backend(self) -> SqliteBackend:
        return SqliteBackend(str(self.db))


def _make_env(root: Path, capsys: pytest.CaptureFixture[str]) -> Env:
    root.mkdir(parents=True, exist_ok=True)
    db = root / "directory.db"
    config = root / "pfm.toml"
    config.write_text(
        f'[directory]\npath = "{db}"\n\n'
        '[policyd.limits.user_messages]\nkey = ["sasl_username"]\nwindows = ["100/1h"]\n'
    )

    def run(*argv: str) -> Run:
        capsys.readouterr()
        code = main(["--config", str(config), *argv])
        cap = capsys.readouterr()
        return Run(code, cap.out, cap.err)

    return Env(root, config, db, run)


@pytest.fixture
def env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Env:
    """A pfm.toml naming a fresh SQLite directory, and a runner for ``pfm -c pfm.toml ...``."""
    return _make_env(tmp_path / "a", capsys)


@pytest.fixture
def other(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Env:
    """A second, empty directory to import into."""
    return _make_env(tmp_path / "b", capsys)


@pytest.fixture(scope="module")
def argon_hash() -> str:
    """One real argon2id hash for the module."""
    return hash_password("Integration-password-1")


def _populate(env: Env, argon_hash: str) -> None:
    b = env.backend()
    try:
        b.write(
            [
                Create(Domain("example.org", description="Ex", default_quota=1 << 30)),
                Create(Domain("xn--bcher-kva.example", limits={"user_messages": ("500/1d",)})),
                Create(AliasDomain("alias.example", target="example.org")),
                Create(
                    Mailbox(
                        "alice@example.org",
                        password_hash=argon_hash,
                        name="Alice Ä",
                        quota=5 << 30,
                        totp_secret="JBSWY3DPEHPK3PXP",
                        limits={"user_messages": ("50/1h", "500/1d")},
                    )
                ),
                Create(
                    Mailbox("bob@xn--bcher-kva.example", password_hash=argon_hash, active=False)
                ),
                Create(
                    Alias("info@example.org", ("alice@example.org", "bob@xn--bcher-kva.example"))
                ),
                Create(Alias("@xn--bcher-kva.example", ("bob@xn--bcher-kva.example",))),
            ],
            [],
        )
    finally:
        b.close()


def _objects(env: Env) -> dict[str, Any]:
    """Every importable object without timestamps (and the hashes, which public() drops)."""
    b = env.backend()
    try:

        def strip(o: Any) -> dict[str, Any]:
            d = public(o)
            for k in ("created", "modified", "password_changed", "totp_enrolled"):
                d.pop(k, None)
            if isinstance(o, Mailbox):
                d["password_hash"] = o.password_hash
            return d

        return {
            "domains": [strip(o) for o in b.list_domains()],
            "alias_domains": [strip(o) for o in b.list_alias_domains()],
            "mailboxes": [strip(o) for o in b.list_mailboxes()],
            "aliases": [strip(o) for o in b.list_aliases()],
        }
    finally:
        b.close()


def _audit_actions(env: Env) -> list[str]:
    b = env.backend()
    try:
        return [e.action for e in b.audit_log()]
    finally:
        b.close()


def test_json_export_import_round_trips(env: Env, other: Env, argon_hash: str) -> None:
    """export --with-hashes to JSON then import into an empty directory gives equal objects."""
    _populate(env, argon_hash)
    out = env.root / "dir.json"
    r = env.run("export", "--out", str(out), "--with-hashes")
    assert r.code == 0, r.err
    assert (out.stat().st_mode & 0o777) == 0o600
    text = out.read_text()
    assert "JBSWY3DP" not in text and "totp" not in text
    r = other.run("import", str(out))
    assert r.code == 0, r.err
    want = _objects(env)
    got = _objects(other)
    assert got == want
    assert got["mailboxes"][0]["password_hash"] == argon_hash
    b = other.backend()
    try:
        alice = b.get_mailbox("alice@example.org")
        assert alice is not None and alice.totp_secret == ""  # TOTP never travels
    finally:
        b.close()


def test_csv_directory_export_import_round_trips(env: Env, other: Env, argon_hash: str) -> None:
    """CSV export of every kind into a directory imports back into an empty directory."""
    _populate(env, argon_hash)
    out = env.root / "export"
    r = env.run("export", "--format", "csv", "--out", str(out), "--with-hashes")
    assert r.code == 0, r.err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["alias-domains.csv", "aliases.csv", "domains.csv", "mailboxes.csv"]
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in out.iterdir())
    r = other.run("import", str(out))
    assert r.code == 0, r.err
    assert _objects(other) == _objects(env)


def test_export_without_hashes_omits_them(env: Env, argon_hash: str) -> None:
    """Without --with-hashes no hash column is written; such a file re-imports as unchanged."""
    _populate(env, argon_hash)
    r = env.run("export", "--format", "csv", "--kind", "mailboxes")
    assert r.code == 0, r.err
    assert "password_hash" not in r.out and "$argon2id$" not in r.out
    assert r.out.splitlines()[0] == "address,name,quota,active,limits"
    path = env.root / "mb.csv"
    path.write_text(r.out)
    r = env.run("import", str(path), "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["counts"]["mailboxes"] == {"create": 0, "update": 0, "unchanged": 2}
    assert summary["applied"] is False


def test_rerun_is_a_no_op_with_one_audit_entry(env: Env, other: Env, argon_hash: str) -> None:
    """The first import writes one 'import' audit entry with counts; a re-run writes nothing."""
    _populate(env, argon_hash)
    out = env.root / "dir.json"
    assert env.run("export", "--out", str(out), "--with-hashes").code == 0
    assert other.run("import", str(out)).code == 0
    assert _audit_actions(other) == ["import"]
    r = other.run("import", str(out))
    assert r.code == 0 and "nothing to change" in r.out
    assert _audit_actions(other) == ["import"]
    b = other.backend()
    try:
        entry = b.audit_log()[0]
    finally:
        b.close()
    blob = json.dumps(entry.after)
    assert "argon2" not in blob and entry.after is not None
    assert entry.after["counts"]["mailboxes"]["create"] == 2


def test_dry_run_reports_counts_and_writes_nothing(env: Env, argon_hash: str) -> None:
    """--dry-run prints create/update/unchanged per kind and leaves the directory alone."""
    f = env.root / "d.csv"
    f.write_text("name,description\nexample.org,Ex\nexample.net,\n")
    r = env.run("import", str(f), "--dry-run")
    assert r.code == 0, r.err
    assert "domains        2       0       0" in r.out and "dry run: nothing written" in r.out
    assert _objects(env)["domains"] == []


def test_conflicts_need_update(env: Env, argon_hash: str) -> None:
    """A row differing from the stored object fails (exit 65) unless --update; then it's applied."""
    _populate(env, argon_hash)
    f = env.root / "m.csv"
    f.write_text("address,name\nalice@example.org,Alice Liddell\n")
    r = env.run("import", str(f))
    assert r.code == exitcodes.INVALID
    assert "m.csv:2: mailbox alice@example.org exists with a different name" in r.err
    assert "1 error(s) found: nothing written" in r.err
    r = env.run("import", str(f), "--update")
    assert r.code == 0, r.err
    b = env.backend()
    try:
        alice = b.get_mailbox("alice@example.org")
    finally:
        b.close()
    assert alice is not None and alice.name == "Alice Liddell"
    assert alice.password_hash == argon_hash and alice.totp_secret == "JBSWY3DPEHPK3PXP"


def test_every_bad_row_reported_and_nothing_written(env: Env, argon_hash: str) -> None:
    """Several bad rows across files: each reported with file:line, no object written."""
    (env.root / "domains.csv").write_text("name\nexample.org\nbad_domain!\n")
    (env.root / "mailboxes.csv").write_text(
        f'address,password_hash\nok@example.org,"{argon_hash}"\nx@,"{argon_hash}"\n'
    )
    (env.root / "aliases.csv").write_text(
        "source,targets\na@example.org,b@example.org\nb@example.org,a@example.org\n"
    )
    r = env.run("import", str(env.root))
    assert r.code == exitcodes.INVALID
    lines = r.err.splitlines()
    assert lines[0].startswith("domains.csv:3: name: ")
    assert lines[1] == "mailboxes.csv:3: address: 'x@' is not an address"
    assert lines[2].startswith("aliases.csv:2: targets: alias loop: a@example.org -> b@example.org")
    assert lines[3] == "pfm: 3 error(s) found: nothing written"
    assert _objects(env) == {"domains": [], "alias_domains": [], "mailboxes": [], "aliases": []}


def test_binary_and_nul_inputs_are_refused(env: Env) -> None:
    """A binary file is refused as a whole; a row with a NUL is a row error."""
    blob = env.root / "photo.csv"
    blob.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    r = env.run("import", str(blob))
    assert r.code == exitcodes.INVALID
    assert r.err.strip() == (
        "pfm: photo.csv: binary data (NUL bytes); expected a UTF-8 CSV or JSON file"
    )
    head = "name\nexample.org\n" + "x" * 9000 + "\n"
    nul = env.root / "nul.csv"
    nul.write_bytes(head.encode() + b"evil\x00.example\n")
    r = env.run("import", str(nul))
    assert r.code == exitcodes.INVALID
    assert "nul.csv:4: contains a NUL character" in r.err


def test_import_from_stdin(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """'-' reads a CSV from standard input, the kind taken from its header."""
    import io

    data = io.BytesIO(b"name,description\nstdin.example,from a pipe\n")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(data)))
    r = env.run("import", "-")
    assert r.code == 0, r.err
    assert [d["name"] for d in _objects(env)["domains"]] == ["stdin.example"]


def _big_broken_csv(path: Path, argon_hash: str, rows: int) -> list[int]:
    """~10 MB of mailbox rows with a few broken ones; returns their line numbers."""
    broken: dict[int, list[str]] = {
        1_000: ["no-at-sign.example", argon_hash, "x", "1G"],
        25_000: ["u25000@example.org", "{ARGON2ID}not-a-hash", "x", "1G"],
        50_000: ["u50000@missing.example", argon_hash, "x", "1G"],
        75_000: ["u75000@example.org", argon_hash, "x", "-7"],
        99_000: ["u10@example.org", argon_hash, "dup", "1G"],
    }
    bad_lines = []
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["address", "password_hash", "name", "quota"])
        for i in range(rows):
            row = broken.get(i, [f"u{i}@example.org", argon_hash, f"User number {i}", "1G"])
            if i in broken:
                bad_lines.append(i + 2)
            w.writerow(row)
    return bad_lines


def test_large_broken_csv_reports_lines_and_writes_nothing(env: Env, argon_hash: str) -> None:
    """A ~10 MB CSV (100k rows, 5 broken) is streamed: each broken line reported, nothing written."""
    dom = env.root / "domains.csv"
    dom.write_text("name\nexample.org\n")
    big = env.root / "mailboxes.csv"
    bad = _big_broken_csv(big, argon_hash, 100_000)
    assert big.stat().st_size > 10_000_000
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "-c",
            str(env.config),
            "import",
            str(dom),
            str(big),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    elapsed = time.monotonic() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert proc.returncode == exitcodes.INVALID, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert [int(line.split(":")[1]) for line in lines[:-1]] == bad
    assert lines[0] == "mailboxes.csv:1002: address: 'no-at-sign.example' is not an address"
    assert argon_hash.rsplit("$", 1)[-1] not in proc.stderr and "not-a-hash" not in proc.stderr
    assert lines[-1] == "pfm: 5 error(s) found: nothing written"
    assert "\r" not in proc.stderr  # no progress bar when stderr is not a terminal
    assert _objects(env)["domains"] == [] and _objects(env)["mailboxes"] == []
    assert elapsed < 60
    assert rss_mb < 400, f"peak RSS {rss_mb:.0f} MB"


def test_progress_bar_only_on_a_terminal(env: Env, argon_hash: str) -> None:
    """With stderr on a pseudo-terminal the import draws a '\\rimport: NN%' progress line."""
    f = env.root / "mailboxes.csv"
    (env.root / "domains.csv").write_text("name\nexample.org\n")
    with f.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["address", "password_hash"])
        for i in range(5000):
            w.writerow([f"p{i}@example.org", argon_hash])
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "-c", str(env.config), "import", str(env.root)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=30) == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert b"\rimport: 100%" in out


def test_csv_export_of_every_kind_needs_an_output_dir(env: Env) -> None:
    """Exporting every kind as CSV needs --out DIR (usage error otherwise)."""
    r = env.run("export", "--format", "csv")
    assert r.code == exitcodes.USAGE and "needs --out DIR" in r.err
