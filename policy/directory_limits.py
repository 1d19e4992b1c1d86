"""Per-mailbox and per-domain limit overrides from the directory (``pfm limit set``).

The directory is read off the event loop every ``[policyd] directory_refresh`` (so an
override takes effect within that bound), merged into the configured limits and compiled
into a fresh engine only when something changed. A directory override wins over one in
``pfm.toml`` for the same subject; one whose windows don't use the limit's periods, or that
names no configured limit, is skipped and logged. If the directory can't be read, the last
good overrides (or just the configured ones) stay in force: never stricter on failure.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from services.config import DirectoryConfig, PolicydConfig, Window

Found = Mapping[str, Mapping[str, tuple[str, ...]]]  # limit -> subject -> windows


def fetch_overrides(dcfg: DirectoryConfig) -> dict[str, dict[str, tuple[str, ...]]]:
    """Read every override from the directory (blocking: run it in a thread)."""
    from services.directory.backend import open_backend
    from services.directory.ops import Directory

    if dcfg.backend == "sqlite" and not os.path.exists(dcfg.path):
        raise FileNotFoundError(f"no directory at {dcfg.path}")
    backend = open_backend(dcfg, create=False)
    try:
        return Directory(backend, actor="pfm-policyd").limit_overrides()
    finally:
        backend.close()


def merge_overrides(cfg: PolicydConfig, found: Found) -> tuple[PolicydConfig, list[str]]:
    """``cfg`` with the directory's overrides added; also the skipped ones, explained."""
    skipped: list[str] = []
    limits: dict[str, Any] = dict(cfg.limits)
    for name, subjects in found.items():
        lim = limits.get(name)
        if lim is None:
            skipped.append(f"{name}: no such limit in [policyd.limits] ({len(subjects)} subjects)")
            continue
        spans = {w.seconds for w in lim.windows}
        merged = dict(lim.overrides)
        for subject, windows in subjects.items():
            try:
                parsed = tuple(Window.parse(w) for w in windows)
            except ValueError as exc:
                skipped.append(f"{name} {subject}: {exc}")
                continue
            if parsed and {w.seconds for w in parsed} - spans:
                skipped.append(f"{name} {subject}: windows must use the limit's periods")
                continue
            merged[subject.lower()] = parsed
        limits[name] = dataclasses.replace(lim, overrides=merged)
    return dataclasses.replace(cfg, limits=limits), skipped
