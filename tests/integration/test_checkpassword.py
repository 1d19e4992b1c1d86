"""pfm-checkpassword run as Dovecot runs it, with Dovecot's real checkpassword-reply.

The shim gets fd 3 (a pipe carrying user NUL password NUL NUL) and fd 4 (where
checkpassword-reply writes its answer), Dovecot's environment, and talks to a fake pfm-authd
(tests/fixtures/fake_authd.py) on a unix socket in a temp dir.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import authd.checkpassword
from authd.wire import RequestKind
from tests.conftest import require_binary
from tests.fixtures.fake_authd import FakeAuthd, FakeUser

pytestmark = pytest.mark.integration

SHIM = str(Path(authd.checkpassword.__file__))
FAST = [sys.executable, "-I", "-S", SHIM]
REPO = str(Path(SHIM).parent.parent)
USERS = {
    "alice": FakeUser(
        "secret",
        home="/srv/mail/alice",
        uid="5000",
        gid="5000",
        extra=(("userdb_quota_rule", "*:storage=1G"),),
    ),
    "bob": FakeUser("hunter2"),
}


@dataclass
class Outcome:
    """What one shim run did."""

    code: int
    reply: bytes  # what checkpassword-reply wrote on fd 4
    stderr: str
    write_error: OSError | None  # what the fd-3 writer saw
    seconds: float


def high_fd(fd: int) -> int:
    """Move fd to a number >= 10 so the shell can place it on 3 or 4 without clobbering."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return new


def run_shim(
    reply_program: str,
    socket_path: Path | None,
    data: bytes | None,
    env: dict[str, str] | None = None,
    command: list[str] | None = None,
    write_delay: float = 0.0,
) -> Outcome:
    """Run the shim like Dovecot: fd 3 = input pipe, fd 4 = reply pipe, Dovecot's env."""
    r3, w3 = os.pipe()
    r4, w4 = os.pipe()
    r3, w4 = high_fd(r3), high_fd(w4)
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": "/root",
        "SERVICE": "imap",
        "TCPREMOTEIP": "192.0.2.7",
        "TCPREMOTEPORT": "54321",
        "TCPLOCALIP": "127.0.0.1",
        "TCPLOCALPORT": "143",
        "AUTH_MECH": "PLAIN",
        "AUTH_CLIENT_ID": "pytest",
        "ORIG_UID": str(os.getuid()),
        **({"PFM_AUTHD_SOCKET": str(socket_path)} if socket_path else {}),
        **(env or {}),
    }
    argv = [*(command or FAST), reply_program]
    wrapper = f'exec 3<&{r3} 4>&{w4} {r3}<&- {w4}>&- "$@"'
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["/bin/bash", "-c", wrapper, "bash", *argv],
        pass_fds=(r3, w4),
        env=full_env,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    os.close(r3)
    os.close(w4)
    write_error: list[OSError] = []

    def writer() -> None:
        time.sleep(write_delay)
        try:
            if data is not None:
                _write_all(w3, data)
        except OSError as exc:
            write_error.append(exc)
        finally:
            os.close(w3)

    thread = threading.Thread(target=writer)
    thread.start()
    chunks = []
    while chunk := os.read(r4, 65536):
        chunks.append(chunk)
    os.close(r4)
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    code = proc.wait(30)
    thread.join(30)
    return Outcome(
        code,
        b"".join(chunks),
        stderr,
        write_error[0] if write_error else None,
        time.perf_counter() - started,
    )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@pytest.fixture
def reply_program() -> str:
    """Dovecot's real checkpassword-reply."""
    return require_binary("/usr/lib/dovecot/checkpassword-reply")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A temp dir with a short path (unix socket paths are limited to 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="pfa-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake(short_dir: Path) -> Iterator[FakeAuthd]:
    """A fake pfm-authd answering alice/secret and bob/hunter2."""
    with FakeAuthd(short_dir / "authd.sock", dict(USERS)) as server:
        yield server


def fields(reply: bytes) -> dict[str, str]:
    """checkpassword-reply's tab-separated key=value output as a dict."""
    items = [item.split("=", 1) for item in reply.decode().split("\t") if item]
    return {k: v for k, v in items}


def test_ok_hands_userdb_fields_to_checkpassword_reply(reply_program: str, fake: FakeAuthd) -> None:
    """A right password execs checkpassword-reply, which writes user, home, uid, gid, extras."""
    out = run_shim(reply_program, fake.path, b"alice\0secret\0\0")
    assert out.code == 0, out.stderr
    assert fields(out.reply) == {
        "user": "alice",
        "userdb_home": "/srv/mail/alice",
        "userdb_uid": "5000",
        "userdb_gid": "5000",
        "userdb_quota_rule": "*:storage=1G",
    }
    (request,) = fake.requests
    assert request.kind is RequestKind.AUTH
    assert (request.service, request.remote_ip, request.remote_port) == ("imap", "192.0.2.7", 54321)
    assert (request.local_ip, request.local_port) == ("127.0.0.1", 143)
    assert (request.mechanism, request.client_id) == ("PLAIN", "pytest")


def test_ok_without_home_does_not_leak_the_helpers_home(
    reply_program: str, fake: FakeAuthd
) -> None:
    """With no home in the reply, HOME is unset so checkpassword-reply sends no userdb_home."""
    out = run_shim(reply_program, fake.path, b"bob\0hunter2\0\0")
    assert out.code == 0, out.stderr
    got = fields(out.reply)
    assert got["user"] == "bob"
    assert "userdb_home" not in got


def test_wrong_password_and_unknown_user_exit_1(reply_program: str, fake: FakeAuthd) -> None:
    """FAIL and NOUSER both exit 1 without running checkpassword-reply or logging the password."""
    for data in (b"alice\0wrong-pw\0\0", b"nobody\0wrong-pw\0\0"):
        out = run_shim(reply_program, fake.path, data)
        assert (out.code, out.reply) == (1, b"")
        assert "wrong-pw" not in out.stderr


def test_lookup_success_sets_authorized_2(reply_program: str, fake: FakeAuthd) -> None:
    """AUTHORIZED=1 sends a LOOKUP without password; OK sets AUTHORIZED=2, reply exits 2."""
    out = run_shim(reply_program, fake.path, b"alice\0\0", env={"AUTHORIZED": "1"})
    assert out.code == 2, out.stderr
    assert fields(out.reply)["user"] == "alice"
    (request,) = fake.requests
    assert request.kind is RequestKind.LOOKUP
    assert request.password is None


def test_lookup_of_unknown_user_exits_3(reply_program: str, fake: FakeAuthd) -> None:
    """A lookup of a user the directory doesn't know exits 3."""
    out = run_shim(reply_program, fake.path, b"nobody\0\0", env={"AUTHORIZED": "1"})
    assert (out.code, out.reply) == (3, b"")


def test_tempfail_exits_111_with_the_reason(reply_program: str, short_dir: Path) -> None:
    """TEMPFAIL from authd is exit 111 and one stderr line with the reason."""
    with FakeAuthd(short_dir / "t.sock", dict(USERS), mode="tempfail") as server:
        out = run_shim(reply_program, server.path, b"alice\0secret\0\0")
    assert (out.code, out.reply) == (111, b"")
    assert out.stderr == "pfm-checkpassword: authd temporary failure: directory unreachable\n"


def test_missing_socket_exits_111_and_still_reads_fd3(reply_program: str, short_dir: Path) -> None:
    """With no daemon the shim still reads fd 3 fully (the writer gets no EPIPE), then exits 111."""
    out = run_shim(reply_program, short_dir / "missing.sock", b"alice\0secret\0\0", write_delay=0.3)
    assert out.code == 111
    assert out.write_error is None
    assert "authd unreachable at" in out.stderr and "secret" not in out.stderr


def test_default_socket_path_is_used_without_configuration(reply_program: str) -> None:
    """Without PFM_AUTHD_SOCKET the shim tries /run/pfm/authd.sock (absent here: exit 111)."""
    if Path("/run/pfm/authd.sock").exists():
        pytest.fail("a real pfm-authd socket exists on this machine; test needs it absent")
    out = run_shim(reply_program, None, b"alice\0secret\0\0")
    assert out.code == 111
    assert "/run/pfm/authd.sock" in out.stderr


def test_connection_refused_exits_111(reply_program: str, short_dir: Path) -> None:
    """A stale socket file nobody listens on is a temporary failure."""
    path = short_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
    out = run_shim(reply_program, path, b"alice\0secret\0\0")
    assert out.code == 111
    assert "unreachable" in out.stderr


def test_hanging_server_hits_the_deadline(reply_program: str, short_dir: Path) -> None:
    """A daemon that never answers costs PFM_AUTHD_TIMEOUT, then exit 111."""
    with FakeAuthd(short_dir / "h.sock", dict(USERS), mode="hang") as server:
        out = run_shim(
            reply_program, server.path, b"alice\0secret\0\0", env={"PFM_AUTHD_TIMEOUT": "0.5"}
        )
    assert out.code == 111
    assert 0.4 < out.seconds < 3
    assert "timeout" in out.stderr


@pytest.mark.parametrize("mode", ["garbage", "close", "oversized"])
def test_broken_server_answers_exit_111(reply_program: str, short_dir: Path, mode: str) -> None:
    """Garbage, a closed connection or an oversized frame from the server is exit 111."""
    with FakeAuthd(short_dir / "g.sock", dict(USERS), mode=mode) as server:
        out = run_shim(reply_program, server.path, b"alice\0secret\0\0")
    assert (out.code, out.reply) == (111, b"")
    assert "protocol error" in out.stderr
    assert "secret" not in out.stderr


def test_oversized_input_is_drained_and_refused(reply_program: str, fake: FakeAuthd) -> None:
    """More than 512 bytes on fd 3 is read to the end (no EPIPE) and refused with exit 1."""
    out = run_shim(reply_program, fake.path, b"alice\0" + b"x" * 100_000 + b"\0\0")
    assert out.code == 1
    assert out.write_error is None
    assert fake.requests == []
    assert "512" in out.stderr


@pytest.mark.parametrize("data", [b"", b"alice\0secr"])
def test_fd3_closed_early_exits_1(reply_program: str, fake: FakeAuthd, data: bytes) -> None:
    """fd 3 closed before user NUL password NUL arrived is refused without asking authd."""
    out = run_shim(reply_program, fake.path, data)
    assert (out.code, out.reply) == (1, b"")
    assert fake.requests == []
    assert "secr" not in out.stderr


def test_silent_fd3_writer_hits_the_deadline(reply_program: str, fake: FakeAuthd) -> None:
    """A writer that keeps fd 3 open without data costs the deadline, then exit 111."""
    out = run_shim(
        reply_program,
        fake.path,
        b"alice",
        env={"PFM_AUTHD_TIMEOUT": "0.3"},
        write_delay=1.0,
    )
    assert out.code == 111
    assert "timeout reading fd 3" in out.stderr


def test_socket_option_beats_environment(reply_program: str, fake: FakeAuthd) -> None:
    """--socket before the reply program (Dovecot's args=) overrides PFM_AUTHD_SOCKET."""
    out = run_shim(
        reply_program,
        Path("/nonexistent.sock"),
        b"alice\0secret\0\0",
        command=[*FAST, "--socket", str(fake.path)],
    )
    assert out.code == 0, out.stderr


def test_missing_reply_program_is_111(fake: FakeAuthd) -> None:
    """An exec failure of the reply program is a temporary failure, not a crash."""
    out = run_shim("/nonexistent/checkpassword-reply", fake.path, b"alice\0secret\0\0")
    assert out.code == 111
    assert "cannot exec" in out.stderr


def test_console_script_path_works_too(reply_program: str, fake: FakeAuthd) -> None:
    """The module entry point run() (what the pfm-checkpassword console script calls) works."""
    command = [sys.executable, "-c", "from authd.checkpassword import run; run()"]
    out = run_shim(reply_program, fake.path, b"alice\0secret\0\0", command=command)
    assert out.code == 0, out.stderr
    assert fields(out.reply)["userdb_uid"] == "5000"


def test_file_runs_directly_through_its_shebang(reply_program: str, fake: FakeAuthd) -> None:
    """The file itself is executable (#!/usr/bin/python3 -IS), usable as Dovecot's args."""
    out = run_shim(reply_program, fake.path, b"alice\0secret\0\0", command=[SHIM])
    assert out.code == 0, out.stderr
    assert fields(out.reply)["user"] == "alice"
