"""Weak registries of live pools, so readings and metrics can find them.

Pools add themselves on construction; nothing here keeps a pool alive.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._objectpool import ObjectPool
    from ._slabpool import SlabPool

__all__ = ["object_pools", "register_object_pool", "register_slab_pool", "slab_pools"]

_SLAB_POOLS: weakref.WeakSet[SlabPool] = weakref.WeakSet()
_OBJECT_POOLS: weakref.WeakSet[ObjectPool[Any]] = weakref.WeakSet()


def register_slab_pool(pool: SlabPool) -> None:
    _SLAB_POOLS.add(pool)


def register_object_pool(pool: ObjectPool[Any]) -> None:
    _OBJECT_POOLS.add(pool)


def slab_pools() -> list[SlabPool]:
    """Every live, unclosed :class:`SlabPool` in this process."""
    return [p for p in list(_SLAB_POOLS) if not p.closed]


def object_pools() -> list[ObjectPool[Any]]:
    """Every live, unclosed :class:`ObjectPool` in this process."""
    return [p for p in list(_OBJECT_POOLS) if not p.closed]
