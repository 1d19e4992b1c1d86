"""Pure parts of the ``pfm`` directory commands: sizes, --since, diffs, argument parsing."""

from __future__ import annotations

import argparse
import io
from datetime import datetime

import pytest

from services.cli import common
from services.cli.commands import audit, completion
from services.cli.exitcodes import INVALID, USAGE, CliError
from services.cli.main import build_parser
from services.directory.model import AuditEntry, Create, Delete, Domain
from services.directory.ops import Result

GIB = 1024**3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("unlimited", 0),
        ("1024", 1024),
        ("2G", 2 * GIB),
        ("2g", 2 * GIB),
        ("500M", 500 * 1024**2),
        ("500MB", 500 * 1024**2),
        ("750KiB", 750 * 1024),
        ("1.5G", int(1.5 * GIB)),
        ("1T", 1024**4),
        (" 10 M ", 10 * 1024**2),
        ("100b", 100),
        ("1_000", 1000),
    ],
)
def test_parse_size_accepts(text: str, expected: int) -> None:
    """parse_size reads bytes and binary K/M/G/T units; 0 and 'unlimited' mean unlimited."""
    assert common.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-1G", "2X", "G", "nan", "inf", "1.2.3M"])
def test_parse_size_rejects(text: str) -> None:
    """parse_size refuses negative, unitless garbage and unknown units with a clear message."""
    with pytest.raises(ValueError, match="size"):
        common.parse_size(text)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "unlimited"),
        (2 * GIB, "2G"),
        (500 * 1024**2, "500M"),
        (1536, "1536B"),
        (3 * GIB // 2, "1536M"),
    ],
)
def test_format_size(n: int, text: str) -> None:
    """format_size prints the exact size in the largest whole unit, 'unlimited' for 0."""
    assert common.format_size(n) == text


def test_format_size_round_trips() -> None:
    """Whatever format_size prints, parse_size reads back to the same number of bytes."""
    for n in (1, 1000, 1536, 1024, 3 * 1024**2, 7 * GIB, 3 * GIB // 2, 2 * 1024**4):
        assert common.parse_size(common.format_size(n)) == n


def test_size_value_names_the_field() -> None:
    """A bad SIZE becomes a CliError with the INVALID code naming the field."""
    with pytest.raises(CliError) as exc:
        common.size_value("huge", "quota")
    assert exc.value.code == INVALID and str(exc.value).startswith("quota: invalid size")
    assert common.size_value(None, "quota") is None


def test_parse_since_durations_and_dates() -> None:
    """--since takes a duration ago or an ISO date/time (local time when no zone is given)."""
    now = 1_800_000_000.0
    assert common.parse_since("2h", now) == now - 7200
    assert common.parse_since("30m", now) == now - 1800
    assert common.parse_since("7d", now) == now - 7 * 86400
    assert common.parse_since("2026-01-31T12:00:00+00:00", now) == 1769860800.0
    local = datetime(2026, 1, 31).astimezone().timestamp()
    assert common.parse_since("2026-01-31", now) == local
    for bad in ("", "yesterday", "2h ago", "31/01/2026"):
        with pytest.raises(ValueError, match="since"):
            common.parse_since(bad, now)


def test_diff_fields_ignores_timestamps() -> None:
    """diff_fields lists changed fields, leaving out created/modified and creations/removals."""
    before = {"quota": 0, "active": True, "modified": 1.0, "created": 1.0}
    after = {"quota": 5, "active": True, "modified": 2.0, "created": 1.0}
    assert common.diff_fields(before, after) == [("quota", 0, 5)]
    assert common.diff_fields(None, after) == []
    assert common.diff_fields(before, None) == []


def test_audit_summary() -> None:
    """The audit CHANGE column says created, removed, or field: old -> new."""
    assert audit.summary(None, {"name": "x"}) == "created"
    assert audit.summary({"name": "x"}, None) == "removed"
    assert audit.summary({"quota": 0}, {"quota": GIB}) == "quota: unlimited -> 1G"
    assert audit.summary({"active": True}, {"active": False}) == "active: yes -> no"


def test_render_result_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    """A dry-run result prints 'would ...' lines with field changes and 'nothing written'."""
    old = Domain(name="example.org")
    new = Domain(name="example.org", active=False)
    entry = AuditEntry(
        ts=0.0,
        actor="t",
        action="domain.disable",
        object="example.org",
        before={"name": "example.org", "active": True},
        after={"name": "example.org", "active": False},
    )
    res = Result(
        action="domain.disable",
        object=old.name,
        changes=(Create(new), Delete("alias", "a@example.org")),
        audit=(entry,),
        dry_run=True,
    )
    assert common.render_result(res, as_json=False) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "would create domain example.org",
        "would remove alias a@example.org",
        "dry run: nothing written",
    ]
    unchanged = Result(action="mailbox.add", object="a@example.org", message="unchanged")
    common.render_result(unchanged, as_json=False)
    assert capsys.readouterr().out == "mailbox a@example.org unchanged\n"


def test_display_of_idn() -> None:
    """IDNs are displayed as U-labels with the stored A-label alongside."""
    assert common.display_domain("xn--bcher-kva.example") == "bücher.example"
    assert common.display_address("a@xn--bcher-kva.example") == "a@bücher.example"
    assert common.human_domain("example.org") == "example.org"
    assert common.human_domain("xn--bcher-kva.example") == "bücher.example (xn--bcher-kva.example)"
    assert common.display_address("@xn--bcher-kva.example") == "@bücher.example"


def test_read_new_password_prompt() -> None:
    """The prompt asks twice; a mismatch or an empty answer is refused without a password echo."""
    args = argparse.Namespace(password_file=None, password_stdin=False)
    answers = iter(["pw-One-1234", "pw-One-1234"])
    assert common.read_new_password(args, prompt=lambda _: next(answers)) == "pw-One-1234"
    answers = iter(["pw-One-1234", "pw-Two-1234"])
    with pytest.raises(CliError, match="do not match") as exc:
        common.read_new_password(args, prompt=lambda _: next(answers))
    assert "pw-" not in str(exc.value)
    with pytest.raises(CliError, match="empty"):
        common.read_new_password(args, prompt=lambda _: "")


def test_read_new_password_without_terminal() -> None:
    """Without a source and without a terminal, reading a password is a usage error."""
    args = argparse.Namespace(password_file=None, password_stdin=False)
    with pytest.raises(CliError) as exc:
        common.read_new_password(args, stdin=io.StringIO(""))
    assert exc.value.code == USAGE
    args = argparse.Namespace(password_file=None, password_stdin=True)
    assert common.read_new_password(args, stdin=io.StringIO("a b c\r\nnext\n")) == "a b c"


def test_parser_shapes() -> None:
    """The directory commands parse as documented, with no option taking a clear password."""
    p = build_parser()
    a = p.parse_args(["mailbox", "add", "a@example.org", "--quota", "2G", "--password-stdin"])
    assert (a.group, a.action, a.quota, a.password_stdin, a.dry_run) == (
        "mailbox",
        "add",
        "2G",
        True,
        False,
    )
    a = p.parse_args(["alias", "add", "@example.org", "x@example.org", "y@example.org", "-n"])
    assert a.targets == ["x@example.org", "y@example.org"] and a.dry_run
    a = p.parse_args(["limit", "set", "example.org", "outbound", "500/1d", "50/1h", "--json"])
    assert a.windows == ["500/1d", "50/1h"] and a.json
    a = p.parse_args(["admin", "add", "bob", "--role", "domain", "--domain", "a.example"])
    assert a.domains == ["a.example"]
    a = p.parse_args(["audit", "--since", "2h", "--limit", "5"])
    assert (a.since, a.limit) == ("2h", 5)
    tree = completion.walk(p)
    for path, opts in tree.options.items():
        assert "--password" not in opts, path
    assert set(tree.words["mailbox"]) >= {"add", "passwd", "quota", "remove"}
    assert {"--password-file", "--password-hash-file", "--config"} <= tree.file_options


@pytest.mark.parametrize(
    "argv",
    [
        ["mailbox", "add", "a@example.org", "--password-file", "f", "--password-stdin"],
        ["admin", "add", "bob", "--role", "superuser"],
        ["audit", "--limit", "-3"],
        ["domain", "add", "example.org", "--max-mailboxes", "many"],
        ["mailbox", "passwd", "a@example.org", "--password-hash-file", "h"],
    ],
)
def test_parser_refuses(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Conflicting or malformed options are argparse usage errors (exit 2)."""
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == USAGE
    capsys.readouterr()


class _ClosedPipe(io.StringIO):
    """A stdout whose reader has gone away."""

    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_broken_pipe_is_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the reader of stdout goes away (pfm ... | head), pfm exits 141 without a traceback."""
    from services.cli.exitcodes import BROKEN_PIPE
    from services.cli.main import main

    monkeypatch.setattr("sys.stdout", _ClosedPipe())
    assert main(["completion", "bash"]) == BROKEN_PIPE


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_parser_built_for_one_group_matches_the_full_parser() -> None:
    """build_parser(only=NAME) has NAME's full subtree and every other command by name."""
    full = _subcommands(build_parser())
    for name, sub in full.items():
        lean = _subcommands(build_parser(name))
        assert set(lean) == set(full)
        assert sub.format_help() == lean[name].format_help()


def test_group_is_found_after_global_options() -> None:
    """The group named in argv is found after -c FILE / --config=FILE; -h means all groups."""
    from services.cli.main import _group_named

    assert _group_named(["-c", "x.toml", "mailbox", "show", "a@b.c"]) == "mailbox"
    assert _group_named(["--config=x.toml", "dns", "records"]) == "dns"
    assert _group_named(["-cx.toml", "queue"]) == "queue"
    assert _group_named(["--help"]) is None
    assert _group_named([]) is None
