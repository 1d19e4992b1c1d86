"""Logging: JSON lines, secrets redacted everywhere, the fast event writer's shape."""

from __future__ import annotations

import io
import json

import orjson

from services.logging import (
    EventWriter,
    configure_logging,
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
