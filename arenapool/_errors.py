"""One error tree for arenapool.

Every error is an :class:`ArenaPoolError` and also the builtin a caller would
naturally catch (``MemoryError`` for budget and limits, ``ValueError`` for bad
arguments and bad JSON, ``TimeoutError`` for waits, ``RuntimeError`` for lifecycle
misuse). Errors carry data (``requested``, ``limit``, ``available`` ...) and an HTTP
``status_hint`` that the aiohttp middleware turns into a response.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ArenaLimitExceeded",
    "ArenaPoolError",
    "ArenaReleasedError",
    "BodyTimeout",
    "BodyTooLarge",
    "BudgetExhausted",
    "DoubleRelease",
    "IncompleteBody",
    "InvalidJSON",
    "InvalidSize",
    "NotBytesLike",
    "PoolClosedError",
    "PoolTimeout",
    "UnsupportedMediaType",
]


class ArenaPoolError(Exception):
    """Root of every error arenapool raises.

    ``status_hint`` is the HTTP status a server should answer with when this error
    escapes a request handler (500 unless a subclass says otherwise).
    """

    status_hint: int = 500

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        for key, val in data.items():
            setattr(self, key, val)


class InvalidSize(ArenaPoolError, ValueError):
    """A size argument is negative, zero, not a size, or has an unknown unit."""

    status_hint = 500
    value: object


class NotBytesLike(ArenaPoolError, TypeError):
    """Data given to :meth:`Arena.copy` does not support the buffer protocol."""

    value: object


class BudgetExhausted(ArenaPoolError, MemoryError):
    """The pool cannot lend more without going over its budget (or waiting timed out).

    Attributes: ``requested`` (bytes asked for), ``available`` (bytes the budget still
    allows), ``budget``, ``waited`` (seconds spent waiting), ``retry_after`` (a hint in
    seconds for clients).
    """

    status_hint = 503
    requested: int
    available: int
    budget: int
    waited: float
    retry_after: float


class ArenaLimitExceeded(ArenaPoolError, MemoryError):
    """An arena would grow past its ``limit``.

    Attributes: ``requested``, ``used``, ``limit``.
    """

    status_hint = 413
    requested: int
    used: int
    limit: int


class BodyTooLarge(ArenaLimitExceeded):
    """A request body is (or declares itself) larger than the arena limit."""

    status_hint = 413


class ArenaReleasedError(ArenaPoolError, RuntimeError):
    """An operation was attempted on an arena that is not OPEN. ``state`` names it."""

    status_hint = 500
    state: str


class PoolClosedError(ArenaPoolError, RuntimeError):
    """The pool (a :class:`~arenapool.SlabPool` or :class:`~arenapool.ObjectPool`) is closed."""

    status_hint = 503


class DoubleRelease(ArenaPoolError, RuntimeError):
    """An object was returned to an :class:`~arenapool.ObjectPool` that does not hold it out."""

    status_hint = 500


class PoolTimeout(ArenaPoolError, TimeoutError):
    """Waiting for an :class:`~arenapool.ObjectPool` object timed out.

    Attributes: ``timeout``, ``maxsize``.
    """

    status_hint = 503
    timeout: float
    maxsize: int


class InvalidJSON(ArenaPoolError, ValueError):
    """A JSON document could not be decoded.

    Attributes: ``position`` (0-based byte offset of the error, or ``None`` when the
    decoder does not say), ``line`` and ``column`` (1-based, or ``None``), ``detail``
    (the decoder's own message).
    """

    status_hint = 400
    position: int | None
    line: int | None
    column: int | None
    detail: str


class IncompleteBody(ArenaPoolError, ValueError):
    """The request body ended before its declared Content-Length (or the client left).

    Attributes: ``received``, ``expected``.
    """

    status_hint = 400
    received: int
    expected: int


class UnsupportedMediaType(ArenaPoolError, ValueError):
    """A JSON body was required but the request's Content-Type says otherwise."""

    status_hint = 415
    content_type: str


class BodyTimeout(ArenaPoolError, TimeoutError):
    """The request body did not arrive within ``body_timeout`` seconds."""

    status_hint = 408
    timeout: float | None
