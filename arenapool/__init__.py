"""arenapool: memory-predictable long-running Python servers.

Request-scoped arenas carved from a process-wide slab pool with a budget, reusable
object pools, and memory given back to the OS. See the README for the tour.
"""

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
from ._objectpool import ObjectLeakWarning, ObjectPool
from ._sizeclasses import size_classes
from ._slabpool import SlabPool
from ._units import format_size, parse_size
from ._version import __version__

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
