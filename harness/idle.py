"""Waiting without sleeping blindly: poll a condition, or a pool until it is idle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

from arenapool import ObjectPool, SlabPool

__all__ = ["is_idle", "until", "wait_idle"]


async def until(
    predicate: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` every 5 ms until it holds; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout:g}s waiting for {what}"
            raise AssertionError(msg)
        await asyncio.sleep(0.005)


def is_idle(pool: SlabPool, objects: Iterable[ObjectPool[Any]] = ()) -> bool:
    """Nothing lent, nothing quarantined, nobody waiting, every object back."""
    stats = pool.stats()
    return (
        stats["lent_bytes"] == 0
        and stats["quarantined_blocks"] == 0
        and stats["waiting"] == 0
        and all(op.in_use == 0 for op in objects)
    )


async def wait_idle(
    pool: SlabPool, objects: Iterable[ObjectPool[Any]] = (), *, timeout: float = 10.0
) -> dict[str, Any]:
    """Poll until :func:`is_idle`; returns the pool's stats.

    Arenas are released when handlers finish, which may be after the client has its
    answer, so tests poll with a deadline instead of sleeping. Raises
    :class:`AssertionError` showing the pool's state if it is not idle in time.
    """
    pools = list(objects)
    deadline = time.monotonic() + timeout
    while not is_idle(pool, pools):
        if time.monotonic() > deadline:
            out = {op.name: op.in_use for op in pools}
            msg = f"pool not idle after {timeout:g}s: {pool!r}, objects out {out}"
            raise AssertionError(msg)
        await asyncio.sleep(0.005)
    stats: dict[str, Any] = pool.stats()
    return stats
