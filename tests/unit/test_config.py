"""Config loader: typed, frozen, errors naming key and line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from services.config import (
    Config,
    ConfigError,
    Duration,
    Window,
    build_config,
    config_path,
    load_config,
    parse_config_text,
)

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
[policyd]
listen = ["127.0.0.1:10040", "unix:/tmp/x.sock"]

[policyd.limits.sender_hourly]
key = "sender"
windows = ["10/1h", "100/1d"]
overrides = { "alice@example.org" = ["50/1h"], "@example.org" = "unlimited" }

[policyd.limits.ip]
key = ["client_prefix"]
unit = "recipients"
windows = "100/1m"
action = "reject"
allow = { networks = ["10.0.0.0/8"] }
"""


def test_example_config_loads() -> None:
    """The shipped example config is valid and defines limits."""
    cfg = load_config(ROOT / "configs" / "pfm.toml.example")
    assert cfg.policyd.limits
    assert cfg.policyd.limits["user_messages"].overrides["bulk@example.org"] == ()


def test_defaults_without_file_content() -> None:
    """An empty mapping gives every default."""
    cfg = build_config({})
    assert cfg.policyd.listen == ("127.0.0.1:10040",)
    assert cfg.policyd.state == "memory"
    assert cfg.policyd.on_store_error == "open"


def test_values_are_typed_and_frozen() -> None:
    """Windows, durations and networks are parsed; the config cannot be mutated."""
    cfg = parse_config_text(GOOD)
    lim = cfg.policyd.limits["sender_hourly"]
    assert lim.windows == (Window(10, 3600.0), Window(100, 86400.0))
    assert lim.key == ("sender",)
    assert cfg.policyd.limits["ip"].windows == (Window(100, 60.0),)
    assert str(cfg.policyd.limits["ip"].allow.networks[0]) == "10.0.0.0/8"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.policyd.state = "redis"  # type: ignore[misc]
    with pytest.raises(TypeError):
        lim.overrides["x"] = ()  # type: ignore[index]


@pytest.mark.parametrize(
    ("old", "new", "key", "line"),
    [
        ('unit = "recipients"', 'unit = "recips"', "policyd.limits.ip.unit", 12),
        ('action = "reject"', "actoin = 1", "policyd.limits.ip.actoin", 14),
        ('"10/1h"', '"10/1x"', "policyd.limits.sender_hourly.windows[0]", 7),
        ('listen = ["127', 'listen = [1, "127', "policyd.listen[0]", 3),
        ("[policyd]", "[policyd]\nmax_connections = true", "policyd.max_connections", 3),
    ],
)
def test_errors_name_key_and_line(old: str, new: str, key: str, line: int) -> None:
    """Unknown keys, bad enums and wrong types are reported with the dotted key and line."""
    with pytest.raises(ConfigError) as info:
        parse_config_text(GOOD.replace(old, new, 1), "pfm.toml")
    assert info.value.key == key
    assert info.value.line == line
    assert str(info.value).startswith(f"pfm.toml:{line}: {key}: ")


def test_unknown_section_is_an_error() -> None:
    """A misspelt section is not silently ignored."""
    with pytest.raises(ConfigError, match="policyd2: unknown key"):
        build_config({"policyd2": {}})


def test_toml_syntax_error_has_line() -> None:
    """A TOML syntax error names its line."""
    with pytest.raises(ConfigError) as info:
        parse_config_text("[policyd]\nlisten = [1,,]\n", "x.toml")
    assert info.value.line is not None


def test_override_must_use_known_periods() -> None:
    """An override with a period the limit does not have is refused."""
    with pytest.raises(ConfigError, match="override windows must use"):
        parse_config_text(GOOD.replace('["50/1h"]', '["5/1m"]'))


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        ({"key": [], "windows": ["1/1h"]}, "at least one key part"),
        ({"key": "global", "windows": []}, "at least one window"),
        ({"key": ["global", "sender"], "windows": ["1/1h"]}, "cannot be combined"),
        ({"key": "sender", "windows": ["1/1h", "2/60m"]}, "same period"),
        ({"key": "sender", "windows": ["1/1h"], "action": "prepend"}, "needs a header"),
        ({"key": "recipient", "windows": ["1/1h"]}, "use unit = 'recipients'"),
        ({"windows": ["1/1h"]}, "is required"),
    ],
)
def test_limit_validation(limit: dict[str, object], message: str) -> None:
    """Inconsistent limits are refused with a clear message."""
    with pytest.raises(ConfigError, match=message):
        build_config({"policyd": {"limits": {"x": limit}}})


def test_bad_action_strings_refused() -> None:
    """Configured answers must be Postfix access(5) actions."""
    with pytest.raises(ConfigError, match="policyd.tempfail_action"):
        build_config({"policyd": {"tempfail_action": "MAYBE later"}})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (30, 30.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("500ms", 0.5),
        ("hour", 3600.0),
    ],
)
def test_duration_parse(text: object, seconds: float) -> None:
    """Durations accept numbers and unit suffixes."""
    assert Duration.parse(text) == seconds


@pytest.mark.parametrize("bad", ["1x", "-5", True, "", "1/0h"])
def test_duration_rejects_garbage(bad: object) -> None:
    """Invalid durations raise ValueError."""
    with pytest.raises(ValueError):
        Duration.parse(bad)


def test_config_path_precedence() -> None:
    """--config beats $PFM_CONFIG beats the default path."""
    assert config_path("a.toml", {"PFM_CONFIG": "b.toml"}) == "a.toml"
    assert config_path(None, {"PFM_CONFIG": "b.toml"}) == "b.toml"
    assert config_path(None, {}) == "/etc/pfm/pfm.toml"


def test_missing_file_is_clear(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming the path."""
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_config_is_dataclass() -> None:
    """build_config returns the Config type with its source recorded."""
    cfg = build_config({}, source="x.toml")
    assert isinstance(cfg, Config)
    assert cfg.source == "x.toml"
