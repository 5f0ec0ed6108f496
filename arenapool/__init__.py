"""arenapool: memory-predictable long-running Python servers.

Request-scoped arenas carved from a process-wide slab pool with a budget, reusable
object pools, and memory given back to the OS. See the README for the tour.
"""

from typing import TYPE_CHECKING, Any

from ._adminconfig import AdminConfig
from ._arena import Arena, ArenaState, ViewEscapedWarning, current_arena
from ._errors import (
    ArenaLimitExceeded,
    ArenaPoolError,
    ArenaReleasedError,
    BodyTimeout,
    BodyTooLarge,
    BudgetExhausted,
    DoubleRelease,
    IncompleteBody,
    InvalidJSON,
    InvalidSize,
    JSONTooDeep,
    NotBytesLike,
    PoolClosedError,
    PoolTimeout,
    UnsupportedMediaType,
)
from ._governor import Governor, GovernorConfig
from ._sizeclasses import size_classes
from ._slabpool import SlabPool
from ._units import format_size, parse_size
from ._version import __version__

if TYPE_CHECKING:
    from ._objectpool import ObjectLeakWarning, ObjectPool

__all__ = [
    "AdminConfig",
    "Arena",
    "ArenaLimitExceeded",
    "ArenaPoolError",
    "ArenaReleasedError",
    "ArenaState",
    "BodyTimeout",
    "BodyTooLarge",
    "BudgetExhausted",
    "DoubleRelease",
    "Governor",
    "GovernorConfig",
    "IncompleteBody",
    "InvalidJSON",
    "InvalidSize",
    "JSONTooDeep",
    "NotBytesLike",
    "ObjectLeakWarning",
    "ObjectPool",
    "PoolClosedError",
    "PoolTimeout",
    "SlabPool",
    "UnsupportedMediaType",
    "ViewEscapedWarning",
    "__version__",
    "current_arena",
    "format_size",
    "parse_size",
    "size_classes",
]


#: Public names loaded on first use: a server that keeps no object pool does not hold
#: their module (``benchmarks/startup_rss.py`` measures what a server holds at rest).
_LAZY = {"ObjectPool": "._objectpool", "ObjectLeakWarning": "._objectpool"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    from importlib import import_module  # noqa: PLC0415

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # once: later lookups find it here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
