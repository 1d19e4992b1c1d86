"""Logging: JSON lines, secrets redacted everywhere, the fast event writer's shape."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import re
import time
from pathlib import Path

import orjson
import pytest

from services.logging import (
    EventWriter,
    configure_logging,
    flush_logs,
    get_logger,
    is_secret_key,
    redact_secrets,
)


def test_secret_key_names() -> None:
    """Password, OTP, token and *_secret style keys are secret; ordinary ones are not."""
    for k in (
        "password",
        "PASSWORD",
        "otp",
        "app_password",
        "redis_password",
        "oath_secret",
        "token",
    ):
        assert is_secret_key(k), k
    for k in ("sender", "sasl_username", "passes", "client", "secretary"):
        assert not is_secret_key(k), k


def test_redaction_is_recursive() -> None:
    """Secrets nested in dicts and lists are redacted too."""
    event = {
        "event": "x",
        "password": "hunter2",
        "ctx": {"otp": "123456", "user": "a"},
        "l": [{"token": "t"}],
    }
    out = redact_secrets(None, "info", event)
    assert out["password"] == "[redacted]"
    assert out["ctx"] == {"otp": "[redacted]", "user": "a"}
    assert out["l"] == [{"token": "[redacted]"}]


def test_json_lines_never_contain_secrets() -> None:
    """A structlog JSON line carries the fields but never a password value."""
    buf = io.StringIO()
    configure_logging("info", "json", buf)
    get_logger("pfm.test").info("login", user="alice", password="s3cret-value")
    line = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert line["event"] == "login" and line["user"] == "alice" and line["level"] == "info"
    assert line["component"] == "pfm.test"
    assert "s3cret-value" not in buf.getvalue()


def test_level_filtering() -> None:
    """Below the configured level nothing is written."""
    buf = io.StringIO()
    configure_logging("warning", "json", buf)
    get_logger("pfm.test2").info("quiet")
    assert buf.getvalue() == ""


def test_event_writer_shape_and_redaction() -> None:
    """The fast writer emits the same line shape as structlog and redacts secret keys."""
    buf = io.BytesIO()

    class Stream:
        buffer = buf

        def flush(self) -> None:
            pass

    w = EventWriter("pfm.policyd", stream=Stream())
    w.emit(
        "decision",
        {"state": "RCPT", "counts": (("l", "s", 1, 1, 5, 60.0, False, False),), "secret": "x"},
    )
    line = orjson.loads(buf.getvalue().splitlines()[0])
    assert (
        line["event"] == "decision"
        and line["component"] == "pfm.policyd"
        and line["level"] == "info"
    )
    assert line["counts"] == [["l", "s", 1, 1, 5, 60.0, False, False]]
    assert line["secret"] == "[redacted]"
    assert line["timestamp"].endswith("Z")


def test_spec_secret_keys_redacted_in_json() -> None:
    """Every secret key named by the spec, at top level and nested, is redacted in the JSON line."""
    buf = io.StringIO()
    configure_logging("info", "json", buf)
    names = [
        *("password", "passwd", "pass", "secret", "otp", "totp", "token", "app_password"),
        *("authorization", "credentials", "ldap_secret", "bind_password"),
    ]
    values = {n: f"VALUE-{i}" for i, n in enumerate(names)}
    get_logger("pfm.t").info("x", nested={"deeper": dict(values)}, items=[dict(values)], **values)
    text = buf.getvalue()
    assert "VALUE-" not in text
    line = json.loads(text)
    assert all(line[n] == "[redacted]" for n in names)
    assert line["nested"]["deeper"]["otp"] == "[redacted]"
    assert line["items"][0]["token"] == "[redacted]"


def test_json_line_shape_and_utc_timestamp() -> None:
    """A JSON line carries event, level, component and an ISO-8601 UTC timestamp ending in Z."""
    buf = io.StringIO()
    configure_logging("debug", "json", buf)
    get_logger("pfm.shape").debug("hello", n=1, ratio=0.5, ok=True, none=None)
    line = json.loads(buf.getvalue())
    assert line == {
        "event": "hello",
        "level": "debug",
        "component": "pfm.shape",
        "n": 1,
        "ratio": 0.5,
        "ok": True,
        "none": None,
        "timestamp": line["timestamp"],
    }
    stamp = line["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    parsed = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)
    assert abs(parsed.timestamp() - time.time()) < 5


def test_exception_is_rendered_in_json() -> None:
    """log.exception puts the traceback into the JSON line's exception field."""
    buf = io.StringIO()
    configure_logging("info", "json", buf)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("pfm.exc").exception("failed")
    line = json.loads(buf.getvalue())
    assert line["level"] == "error" and "RuntimeError: boom" in line["exception"]


def test_console_format_redacts_too() -> None:
    """The console renderer shows the fields but not the secret."""
    buf = io.StringIO()
    configure_logging("info", "console", buf)
    get_logger("pfm.console").info("login", user="bob", password="hunter2-xyz")
    out = buf.getvalue()
    assert "login" in out and "bob" in out and "hunter2-xyz" not in out


def test_logger_follows_reconfiguration() -> None:
    """A logger made before configure_logging (module level) follows every later configuration."""
    log = get_logger("pfm.early")
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", first)
    log.info("one")
    configure_logging("error", "json", second)
    log.info("two")
    log.error("three")
    assert [json.loads(x)["event"] for x in first.getvalue().splitlines()] == ["one"]
    assert [json.loads(x)["event"] for x in second.getvalue().splitlines()] == ["three"]


@pytest.mark.parametrize(("level", "fmt"), [("verbose", "json"), ("info", "xml")])
def test_unknown_level_or_format_is_an_error(level: str, fmt: str) -> None:
    """An unknown level or format raises ValueError naming it."""
    with pytest.raises(ValueError, match=f"{level if level == 'verbose' else fmt}"):
        configure_logging(level, fmt, io.StringIO())


def test_auto_format_is_json_off_a_tty(tmp_path: Path) -> None:
    """fmt='auto' writes JSON lines to a file (not a TTY)."""
    path = tmp_path / "log.jsonl"
    with path.open("w") as f:
        configure_logging("info", "auto", f)
        get_logger("pfm.auto").info("hello", k="v")
        flush_logs()
        assert json.loads(path.read_text())["k"] == "v"
    configure_logging("info", "json", io.StringIO())  # release the file


async def test_info_lines_batched_in_loop_errors_flushed_at_once(tmp_path: Path) -> None:
    """In a running loop info lines reach the file within the flush delay, errors immediately."""
    path = tmp_path / "log.jsonl"
    with path.open("w") as f:
        configure_logging("info", "json", f)
        log = get_logger("pfm.batch")
        log.info("first")
        log.error("second")
        assert [json.loads(x)["event"] for x in path.read_text().splitlines()] == [
            "first",
            "second",
        ]
        log.info("third")
        assert "third" not in path.read_text()  # buffered: one write per batch
        await asyncio.sleep(0.2)
        assert json.loads(path.read_text().splitlines()[-1])["event"] == "third"
    configure_logging("info", "json", io.StringIO())


def test_filtered_level_is_cheap() -> None:
    """A call below the configured level writes nothing and costs next to nothing."""
    buf = io.StringIO()
    configure_logging("info", "json", buf)
    log = get_logger("pfm.cheap")
    log.debug("warm")
    n = 20000
    t = time.perf_counter()
    for _ in range(n):
        log.debug("decision", a=1, b=2)
    per_call = (time.perf_counter() - t) / n
    assert buf.getvalue() == ""
    assert per_call < 20e-6  # generous bound for slow CI machines; typically ~0.3 us
