"""``pfm queue`` against a private real Postfix whose mail is deferred or held."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.cli import exitcodes
from services.cli.main import main
from tests.conftest import free_port, require_binary
from tests.e2e.postfix_instance import PostfixInstance

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# Mail to example.org/example.net goes to a closed loopback port, so it is deferred with
# "Connection refused"; hold@example.org is held at RCPT. Retries are an hour away, so the
# queue stays put while a test runs.
MAIN_CF = {
    "queue_run_delay": "1h",
    "minimal_backoff_time": "1h",
    "maximal_backoff_time": "2h",
    "smtpd_recipient_restrictions": (
        "reject_unauth_destination, "
        "check_recipient_access inline:{ {hold@example.org = HOLD quarantined by test} }"
    ),
}
MAIL = (
    ("alice@example.net", ("bob@example.org", "carol@example.org"), "one"),
    ("alice@example.net", ("dan@example.net",), "two"),
    ("", ("postmaster@example.org",), "bounce"),
    ("mallory@example.net", ("hold@example.org",), "held"),
)


class QueuedPostfix:
    """A private Postfix with MAIL queued in it (3 deferred, 1 held)."""

    def __init__(self) -> None:
        require_binary("postfix")
        for tool in ("postqueue", "postsuper", "postcat"):
            require_binary(tool)
        self.pf = PostfixInstance(free_port(), MAIN_CF)  # nothing listens on the relay port
        self.conf = str(self.pf.conf)

    def send(self, mail: tuple[tuple[str, tuple[str, ...], str], ...] = MAIL) -> None:
        """Send ``mail`` by SMTP and wait until every message is deferred or held."""
        before = len(self.queue())
        with smtplib.SMTP("127.0.0.1", self.pf.port, timeout=30) as s:
            for sender, rcpts, subject in mail:
                body = f"Subject: {subject}\r\nFrom: <{sender}>\r\n\r\nsecret body {subject}\r\n"
                assert s.sendmail(sender, list(rcpts), body) == {}
        want = before + len(mail)
        deadline = time.monotonic() + 20
        while True:
            q = self.queue()
            settled = all(
                m["queue_name"] == "hold"
                or (
                    m["queue_name"] == "deferred"
                    and all("delay_reason" in r for r in m["recipients"])
                )
                for m in q
            )
            if len(q) == want and settled:
                return
            assert time.monotonic() < deadline, f"queue did not settle: {q}"
            time.sleep(0.05)

    def queue(self) -> list[dict[str, Any]]:
        """postqueue -j, straight from Postfix."""
        return self.pf.postqueue_json()

    def where(self) -> dict[str, str]:
        """queue id -> queue name."""
        return {m["queue_id"]: m["queue_name"] for m in self.queue()}

    def ids(self, sender: str) -> list[str]:
        """Queue ids of the messages from ``sender`` (MAILER-DAEMON for bounces)."""
        return sorted(m["queue_id"] for m in self.queue() if m["sender"] == sender)


@pytest.fixture
def postfix() -> Iterator[QueuedPostfix]:
    """A running private Postfix with 3 deferred and 1 held message."""
    qp = QueuedPostfix()
    try:
        qp.pf.start()
        qp.send()
        yield qp
    finally:
        qp.pf.cleanup()


def pfm(capsys: pytest.CaptureFixture[str], qp: QueuedPostfix, *argv: str) -> tuple[int, str, str]:
    """Run ``pfm queue ARGV --postfix-config CONF`` in-process."""
    code = main(["queue", *argv, "--postfix-config", qp.conf])
    out, err = capsys.readouterr()
    return code, out, err


def pfm_json(capsys: pytest.CaptureFixture[str], qp: QueuedPostfix, *argv: str) -> Any:
    code, out, err = pfm(capsys, qp, *argv, "--json")
    assert code == exitcodes.OK, err
    return json.loads(out)


def list_ids(capsys: pytest.CaptureFixture[str], qp: QueuedPostfix, *argv: str) -> set[str]:
    return {m["queue_id"] for m in pfm_json(capsys, qp, "list", *argv)}


# --------------------------------------------------------------------------- list / show


def test_list_json_is_the_real_queue(
    postfix: QueuedPostfix, capsys: pytest.CaptureFixture[str]
) -> None:
    """list --json returns exactly what postqueue -j reports."""
    listed = pfm_json(capsys, postfix, "list")
    assert sorted(listed, key=lambda m: m["queue_id"]) == sorted(
        postfix.queue(), key=lambda m: m["queue_id"]
    )
    assert {m["queue_name"] for m in listed} == {"deferred", "hold"}


def test_list_table(postfix: QueuedPostfix, capsys: pytest.CaptureFixture[str]) -> None:
    """The table shows id, queue, sender, first recipient (+N) and a shortened reason."""
    code, out, _ = pfm(capsys, postfix, "list")
    assert code == exitcodes.OK
    lines = out.splitlines()
    assert lines[0].split() == ["QID", "QUEUE", "AGE", "SIZE", "SENDER", "RECIPIENTS", "REASON"]
    multi = next(ln for ln in lines if "bob@example.org (+1)" in ln)
    assert "deferred" in multi and "alice@example.net" in multi and "Connection refused" in multi
    assert any("MAILER-DAEMON" in ln for ln in lines)
    assert lines[-1].startswith("-- 4 messages")


def test_list_filters(postfix: QueuedPostfix, capsys: pytest.CaptureFixture[str]) -> None:
    """Sender glob, domain, queue, reason, age and explicit ids select the right messages."""
    alice = set(postfix.ids("alice@example.net"))
    held = set(postfix.ids("mallory@example.net"))
    bounce = set(postfix.ids("MAILER-DAEMON"))
    everything = set(postfix.where())
    assert list_ids(capsys, postfix, "--sender", "ALICE@*") == alice
    assert list_ids(capsys, postfix, "--sender", "<>") == bounce
    to_net = {
        m["queue_id"]
        for m in postfix.queue()
        if any(r["address"].endswith("@example.net") for r in m["recipients"])
    }
    assert len(to_net) == 1
    assert list_ids(capsys, postfix, "--domain", "example.net") == to_net
    assert list_ids(capsys, postfix, "--domain", "*.org") == everything - to_net
    assert list_ids(capsys, postfix, "--queue", "hold") == held
    assert list_ids(capsys, postfix, "--queue", "hold", "--queue", "deferred") == everything
    assert list_ids(capsys, postfix, "--reason", "connection REFUSED") == everything - held
    assert (
        list_ids(capsys, postfix, "--recipient", "hold@example.org", "--reason", "refused") == set()
    )
    assert list_ids(capsys, postfix, "--older-than", "1h") == set()
    assert list_ids(capsys, postfix, "--younger-than", "1h") == everything
    assert list_ids(capsys, postfix, *sorted(bounce | held)) == bounce | held


def test_list_bad_filter_is_a_usage_error(
    postfix: QueuedPostfix, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad duration or queue id is exit 2 with a message naming it, no traceback."""
    code, _, err = pfm(capsys, postfix, "list", "--older-than", "soon")
    assert code == exitcodes.USAGE and "--older-than" in err
    code, _, err = pfm(capsys, postfix, "list", "not/a/qid")
    assert code == exitcodes.USAGE and "queue id" in err


def test_show_headers_without_body(
    postfix: QueuedPostfix, capsys: pytest.CaptureFixture[str]
) -> None:
    """show prints envelope and headers via postcat, the body only with --body."""
    qid = postfix.ids("mallory@example.net")[0]
    code, out, _ = pfm(capsys, postfix, "show", qid)
    assert code == exitcodes.OK
    assert "*** hold/" in out and "sender: mallory@example.net" in out
    assert "recipient: hold@example.org" in out and "Subject: held" in out
    assert "secret body" not in out
    code, out, _ = pfm(capsys, postfix, "show", qid, "--body")
    assert code == exitcodes.OK and "secret body held" in out
    data = pfm_json(capsys, postfix, "show", qid)
    assert data["queue_name"] == "hold" and "body" not in data
    assert ["Subject", "held"] in data["headers"]
    assert ["sender", "mallory@example.net"] in data["envelope"]


def test_show_unknown_qid_is_not_found(
    postfix: QueuedPostfix, capsys: pytest.CaptureFixture[str]
) -> None:
    """show of a queue id that is not queued exits NOT_FOUND with a one-line message."""
    code, _, err = pfm(capsys, postfix, "show", "ABCDEF12345")
    assert code == exitcodes.NOT_FOUND
    assert err.strip() == "pfm: no message ABCDEF12345 in the queue"


# --------------------------------------------------------------------------- actions


def test_action_without_filter_is_refused(
    postfix: QueuedPostfix, capsys: pytest.CaptureFixture[str]
) -> None:
    """hold/release/requeue/delete with no filter and no --all refuse and touch nothing."""
    before = postfix.where()
    for action in ("hold", "release", "requeue", "delete"):
        code, _, err = pfm(capsys, postfix, action)
        assert code == exitcodes.USAGE and "--all" in err
    assert postfix.where() == before


def test_dry_run_touches_nothing(
    postfix: QueuedPostfix, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run lists what would be affected and leaves the queue as it was."""
    before = postfix.where()
    code, out, _ = pfm(capsys, postfix, "delete", "--all", "--dry-run")
    assert code == exitcodes.OK and out.splitlines()[-1] == "-- would delete 4 messages"
    data = pfm_json(capsys, postfix, "hold", "--sender", "alice@example.net", "--dry-run")
    assert data["dry_run"] is True and data["matched"] == 2
    assert postfix.where() == before


def test_hold_then_release(postfix: QueuedPostfix, capsys: pytest.CaptureFixture[str]) -> None:
    """hold moves the matching deferred mail to hold; release moves it back to deferred."""
    alice = postfix.ids("alice@example.net")
    code, out, _ = pfm(capsys, postfix, "hold", "--sender", "alice@example.net")
    assert (code, out.strip()) == (exitcodes.OK, "held 2 of 2 matching messages")
    where = postfix.where()
    assert [where[q] for q in alice] == ["hold", "hold"]
    assert where[postfix.ids("MAILER-DAEMON")[0]] == "deferred"
    to_org = {
        m["queue_id"]
        for m in postfix.queue()
        if m["queue_name"] == "hold" and m["recipients"][0]["address"].endswith("@example.org")
    }
    assert len(to_org) == 2  # alice's bob+carol message and mallory's held one
    data = pfm_json(capsys, postfix, "release", "--queue", "hold", "--domain", "example.org")
    assert (set(data["queue_ids"]), data["affected"]) == (to_org, 2)
    where = postfix.where()
    assert all(where[q] == "deferred" for q in to_org)
    assert [q for q, name in where.items() if name == "hold"] == list(set(alice) - to_org)


def test_nothing_matched_is_not_found(
    postfix: QueuedPostfix, capsys: pytest.CaptureFixture[str]
) -> None:
    """An action whose filter matches nothing exits NOT_FOUND and changes nothing."""
    before = postfix.where()
    code, out, _ = pfm(capsys, postfix, "delete", "--sender", "nobody@example.com")
    assert code == exitcodes.NOT_FOUND and "no matching messages" in out
    code, _, _ = pfm(capsys, postfix, "release", "--sender", "alice@example.net")  # not held
    assert code == exitcodes.NOT_FOUND
    assert postfix.where() == before


def test_requeue_takes_mail_out_of_deferred(
    postfix: QueuedPostfix, capsys: pytest.CaptureFixture[str]
) -> None:
    """requeue moves the message to maildrop (pickup later gives it a new queue id)."""
    qid = postfix.ids("MAILER-DAEMON")[0]
    code, out, _ = pfm(capsys, postfix, "requeue", qid)
    assert (code, out.strip()) == (exitcodes.OK, "requeued 1 of 1 matching messages")
    bounces = [m for m in postfix.queue() if m["sender"] == "MAILER-DAEMON"]
    assert len(bounces) == 1
    assert bounces[0]["queue_name"] in ("maildrop", "incoming", "active") or (
        bounces[0]["queue_id"] != qid
    )


def test_delete_by_id_and_all(postfix: QueuedPostfix, capsys: pytest.CaptureFixture[str]) -> None:
    """delete QID removes just that message; delete --all empties the queue."""
    qid = postfix.ids("mallory@example.net")[0]
    code, out, _ = pfm(capsys, postfix, "delete", qid)
    assert (code, out.strip()) == (exitcodes.OK, "deleted 1 of 1 matching messages")
    assert qid not in postfix.where() and len(postfix.where()) == 3
    data = pfm_json(capsys, postfix, "delete", "--all")
    assert (data["matched"], data["affected"]) == (3, 3)
    assert postfix.queue() == []
    code, out, _ = pfm(capsys, postfix, "list")
    assert (code, out.strip()) == (exitcodes.OK, "no matching messages in the queue")


def test_many_ids_go_through_stdin(
    postfix: QueuedPostfix, capsys: pytest.CaptureFixture[str]
) -> None:
    """Holding 60 messages in one call feeds all ids to one postsuper and counts them."""
    postfix.send(tuple((f"bulk{i}@example.net", ("x@example.org",), "bulk") for i in range(60)))
    data = pfm_json(capsys, postfix, "hold", "--sender", "bulk*@example.net")
    assert (data["matched"], data["affected"]) == (60, 60)
    assert sum(v == "hold" for v in postfix.where().values()) == 61


# --------------------------------------------------------------------------- errors / config


def test_wrong_config_dir_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --postfix-config without main.cf exits CONFIG naming the directory and the fix."""
    code = main(["queue", "list", "--postfix-config", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == exitcodes.CONFIG
    assert str(tmp_path) in err and "--postfix-config" in err


def test_config_file_postfix_section(
    postfix: QueuedPostfix, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """[postfix] config_dir in pfm.toml picks the instance when no --postfix-config is given."""
    cfg = tmp_path / "pfm.toml"
    cfg.write_text(f'[postfix]\nconfig_dir = "{postfix.conf}"\n')
    code = main(["--config", str(cfg), "queue", "list", "--json", "--queue", "hold"])
    out = capsys.readouterr().out
    assert code == exitcodes.OK
    assert [m["sender"] for m in json.loads(out)] == ["mallory@example.net"]
    cfg.write_text("[postfix]\nconfig_dir = 5\n")
    code = main(["--config", str(cfg), "queue", "list"])
    assert code == exitcodes.CONFIG and "postfix.config_dir" in capsys.readouterr().err


def test_unprivileged_user_gets_a_clear_error(postfix: QueuedPostfix) -> None:
    """Run as 'nobody', pfm queue fails with exit 1 and says to run as root, no traceback."""
    require_binary("setpriv")
    before = postfix.where()
    proc = subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            sys.executable,
            "-m",
            "services.cli.main",
            "queue",
            "delete",
            "--all",
            "--postfix-config",
            postfix.conf,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    assert proc.returncode == exitcodes.FAILURE, proc.stderr
    assert proc.stderr.startswith("pfm: postqueue failed") and "run as root" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert postfix.where() == before
