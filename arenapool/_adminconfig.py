"""How the admin routes are exposed: :class:`AdminConfig`, free of any web framework.

It lives here, not in the aiohttp adapter, so ``from arenapool import AdminConfig``
works without importing aiohttp; ``arenapool.aiohttp`` re-exports the same class.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from ._errors import ArenaPoolError

__all__ = ["LOOPBACK", "AdminConfig", "AdminConfigError"]

LOOPBACK: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


class AdminConfigError(ArenaPoolError, ValueError):
    """The admin configuration is unsafe or malformed."""


@dataclass(frozen=True)
class AdminConfig:
    """How the admin routes are exposed, and what they keep.

    ``token=None`` serves without a token, which is allowed only for loopback peers
    (``allow_remote=True`` then raises). ``allowed_networks`` lists the peers served
    while ``allow_remote`` is off (loopback by default).

    Memory history: a breakdown every ``history_interval`` seconds, kept for
    ``history_points`` readings at that pace and then one per minute for a day
    (``GET {prefix}/history``); the verdict judges the last ``verdict_window`` seconds.
    Trace windows (``POST {prefix}/trace``): at most one per ``trace_min_interval``
    seconds, each at most ``trace_max_seconds`` long and ``trace_max_frames`` deep.
    """

    token: str | None
    allow_remote: bool = False
    prefix: str = "/_arenapool"
    census_min_interval: float = 30.0
    census_top: int = 25
    census_timeout: float = 120.0
    allowed_networks: Sequence[str] = LOOPBACK
    history_interval: float = 1.0
    history_points: int = 3600
    verdict_window: float = 600.0
    trace_min_interval: float = 60.0
    trace_max_seconds: float = 60.0
    trace_max_frames: int = 25

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/") or self.prefix == "/":
            msg = f"prefix must be a path like '/_arenapool', got {self.prefix!r}"
            raise AdminConfigError(msg)
        object.__setattr__(self, "prefix", self.prefix.rstrip("/"))
        if self.token is not None and not self.token:
            msg = "token must be a non-empty string, or None for no token (loopback only)"
            raise AdminConfigError(msg)
        if self.allow_remote and self.token is None:
            msg = "allow_remote=True needs a token: remote admin access without one is refused"
            raise AdminConfigError(msg)
        if self.history_interval <= 0 or self.history_points < 1:
            msg = (
                f"history_interval must be positive and history_points at least 1, got "
                f"{self.history_interval!r} and {self.history_points!r}"
            )
            raise AdminConfigError(msg)
        try:
            nets = tuple(ipaddress.ip_network(n) for n in self.allowed_networks)
        except ValueError as exc:
            msg = f"allowed_networks has a bad network: {exc}"
            raise AdminConfigError(msg) from None
        object.__setattr__(self, "allowed_networks", tuple(str(n) for n in nets))
