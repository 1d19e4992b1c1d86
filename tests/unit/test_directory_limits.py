"""Merging directory limit overrides into pfm-policyd's configured limits (pure)."""

from __future__ import annotations

from policy.directory_limits import merge_overrides
from services.config import Window, build_config

CFG = build_config(
    {
        "policyd": {
            "limits": {
                "user_messages": {
                    "key": "sasl_username",
                    "windows": ["100/1h", "1000/1d"],
                    "overrides": {"alice@example.org": ["5000/1d"], "@example.net": ["10/1h"]},
                }
            }
        }
    }
).policyd


def test_directory_override_is_added_and_wins_over_config() -> None:
    """A directory override joins the configured ones and replaces one for the same subject."""
    merged, skipped = merge_overrides(
        CFG, {"user_messages": {"bob@example.org": ("50/1h",), "alice@example.org": ("7/1d",)}}
    )
    ov = merged.limits["user_messages"].overrides
    assert ov["bob@example.org"] == (Window.parse("50/1h"),)
    assert ov["alice@example.org"] == (Window.parse("7/1d"),)
    assert ov["@example.net"] == (Window.parse("10/1h"),)
    assert skipped == []


def test_unlimited_override_is_an_empty_tuple() -> None:
    """An empty window list from the directory means unlimited for that subject."""
    merged, _ = merge_overrides(CFG, {"user_messages": {"@example.com": ()}})
    assert merged.limits["user_messages"].overrides["@example.com"] == ()


def test_unknown_limit_and_foreign_period_are_skipped_with_reason() -> None:
    """Overrides for no configured limit, or with periods the limit lacks, are skipped."""
    merged, skipped = merge_overrides(
        CFG,
        {
            "nope": {"x@example.org": ("1/1h",)},
            "user_messages": {"y@example.org": ("5/1m",), "z@example.org": ("bogus",)},
        },
    )
    assert len(skipped) == 3
    assert "y@example.org" not in merged.limits["user_messages"].overrides
    assert any("nope" in s for s in skipped)


def test_merge_leaves_the_original_config_untouched() -> None:
    """The configured limits object is not modified by a merge (reload re-merges from it)."""
    before = dict(CFG.limits["user_messages"].overrides)
    merge_overrides(CFG, {"user_messages": {"bob@example.org": ("50/1h",)}})
    assert dict(CFG.limits["user_messages"].overrides) == before
