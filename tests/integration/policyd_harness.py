"""Start an in-process pfm-policyd on free ports for integration tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from policy.server import PolicyService
from services.config import Config, build_config


def make_config(tmp: Path, limits: dict[str, Any] | None = None, **policyd: Any) -> Config:
    """A config listening on a free port with its admin socket in tmp."""
    section: dict[str, Any] = {
        "listen": ["127.0.0.1:0"],
        "admin_socket": str(tmp / "admin.sock"),
        "metrics_listen": "",
        "limits": limits or {},
    }
    section.update(policyd)
    return build_config({"policyd": section})


@contextlib.asynccontextmanager
async def running(
    config: Config,
    *,
    config_path: str | None = None,
    clock: Callable[[], float] | None = None,
    **kw: Any,
) -> AsyncIterator[PolicyService]:
    """A started PolicyService, stopped afterwards."""
    extra: dict[str, Any] = {"registry": CollectorRegistry(), **kw}
    if clock is not None:
        extra["clock"] = clock
    service = PolicyService(config, config_path=config_path, **extra)
    await service.start()
    try:
        yield service
    finally:
        await service.stop(1.0)


def address(service: PolicyService) -> tuple[str, int]:
    """(host, port) of the first TCP listener."""
    assert service.net is not None
    for a in service.net.addresses:
        if not a.startswith("unix:"):
            host, _, port = a.rpartition(":")
            return host.strip("[]"), int(port)
    raise AssertionError("no TCP listener")


def metric(service: PolicyService, name: str, labels: dict[str, str] | None = None) -> float:
    """A sample value from the service's registry (0 when absent)."""
    v = service.registry.get_sample_value(name, labels or {})
    return float(v or 0.0)
