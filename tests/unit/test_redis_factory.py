"""Redis factory helpers: URL redaction, password files, client construction (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.redis import create_redis, read_password_file, redact_url


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://app:p%40ss:w@redis.example:6380/1", "rediss://app:***@redis.example:6380/1"),
        ("redis://app@host/0", "redis://app@host/0"),
        ("unix://:sekret@/run/redis.sock?db=2", "unix://:***@/run/redis.sock?db=2"),
        ("redis://host/0?password=qwerty&db=1", "redis://host/0?password=***&db=1"),
    ],
)
def test_redact_url(url: str, expect: str) -> None:
    """Passwords in the userinfo or the query are masked; everything else is kept."""
    assert redact_url(url) == expect


def test_password_file_first_line_stripped(tmp_path: Path) -> None:
    """The password is the file's first line without its newline."""
    f = tmp_path / "pw"
    f.write_text("s3cr3t pass\n")
    assert read_password_file(str(f)) == "s3cr3t pass"
    f.write_text("")
    assert read_password_file(str(f)) == ""


def test_missing_password_file_error_names_file_only(tmp_path: Path) -> None:
    """An unreadable password file is a ValueError naming the path and the reason."""
    with pytest.raises(ValueError, match="cannot read redis password file .*nope: No such file"):
        read_password_file(str(tmp_path / "nope"))


def test_client_has_timeouts_and_never_shows_the_password(tmp_path: Path) -> None:
    """The client carries connect/command timeouts, one bounded retry, and its repr hides the password."""
    f = tmp_path / "pw"
    f.write_text("top-secret-pw\n")
    client = create_redis(
        "redis://127.0.0.1:1/0", connect_timeout=0.2, command_timeout=0.3, password_file=str(f)
    )
    kw = client.connection_pool.connection_kwargs  # type: ignore[union-attr]
    assert kw["socket_connect_timeout"] == 0.2 and kw["socket_timeout"] == 0.3
    assert kw["password"] == "top-secret-pw"
    assert kw["retry"].get_retries() == 1
    assert "top-secret-pw" not in repr(client)


@pytest.mark.parametrize("bad", ["nohost", "host:port", "[::1]"])
def test_sentinel_addresses_validated(bad: str) -> None:
    """A malformed sentinel address is a ValueError naming it."""
    with pytest.raises(ValueError, match="invalid sentinel address"):
        create_redis("redis://x/0", sentinel_master="mymaster", sentinels=[bad])
