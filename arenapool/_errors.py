"""One error tree for arenapool.

Every error is an :class:`ArenaPoolError` and also the builtin a caller would
naturally catch (``MemoryError`` for budget and limits, ``ValueError`` for bad
arguments and bad JSON, ``TimeoutError`` for waits, ``RuntimeError`` for lifecycle
misuse). Errors carry data (``requested``, ``limit``, ``available`` ...) and an HTTP
``status_hint`` that the aiohttp middleware turns into a response: the one source of
each error's HTTP status. Errors whose fields every caller must give have typed
constructors, so a missing or misspelt field is a type error, not a missing attribute.
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
    "CensusFailed",
    "CensusRateLimited",
    "DoubleRelease",
    "IncompleteBody",
    "InvalidContentEncoding",
    "InvalidJSON",
    "InvalidSize",
    "JSONTooDeep",
    "NotBytesLike",
    "PoolClosedError",
    "PoolTimeout",
    "UnsupportedMediaType",
]


class ArenaPoolError(Exception):
    """Root of every error arenapool raises.

    ``status_hint`` is the HTTP status a server should answer with when this error
    escapes a request handler (500 unless a subclass says otherwise), and ``code`` the
    stable string of the JSON error answer (``{"error": code, ...}``): together the one
    table from error to answer. The aiohttp adapter answers every error whose status
    is not 500 in that shape; a 500 is a bug and escapes to the server's own handling.
    """

    status_hint: int = 500
    code = "internal_error"

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
    code = "budget_exhausted"
    requested: int
    available: int
    budget: int
    waited: float
    retry_after: float

    def __init__(
        self,
        message: str,
        *,
        requested: int,
        available: int,
        budget: int,
        waited: float,
        retry_after: float,
    ) -> None:
        super().__init__(
            message,
            requested=requested,
            available=available,
            budget=budget,
            waited=waited,
            retry_after=retry_after,
        )


class ArenaLimitExceeded(ArenaPoolError, MemoryError):
    """An arena would grow past its ``limit``.

    Attributes: ``requested``, ``used``, ``limit``.
    """

    status_hint = 413
    code = "body_too_large"
    requested: int
    used: int
    limit: int

    def __init__(self, message: str, *, requested: int, used: int, limit: int) -> None:
        super().__init__(message, requested=requested, used=used, limit=limit)


class BodyTooLarge(ArenaLimitExceeded):
    """A request body is (or declares itself) larger than the arena limit."""

    status_hint = 413


class ArenaReleasedError(ArenaPoolError, RuntimeError):
    """An operation was attempted on an arena that is not OPEN. ``state`` names it."""

    status_hint = 500
    state: str
    operation: str

    def __init__(self, message: str, *, state: str, operation: str) -> None:
        super().__init__(message, state=state, operation=operation)


class PoolClosedError(ArenaPoolError, RuntimeError):
    """The pool (a :class:`~arenapool.SlabPool` or :class:`~arenapool.ObjectPool`) is closed."""

    status_hint = 503
    code = "pool_closed"


class DoubleRelease(ArenaPoolError, RuntimeError):
    """An object was returned to an :class:`~arenapool.ObjectPool` that does not hold it out."""

    status_hint = 500


class PoolTimeout(ArenaPoolError, TimeoutError):
    """Waiting for an :class:`~arenapool.ObjectPool` object timed out.

    Attributes: ``timeout``, ``maxsize``.
    """

    status_hint = 503
    code = "pool_timeout"
    timeout: float
    maxsize: int

    def __init__(self, message: str, *, timeout: float, maxsize: int) -> None:
        super().__init__(message, timeout=timeout, maxsize=maxsize)


class InvalidJSON(ArenaPoolError, ValueError):
    """A JSON document could not be decoded.

    Attributes: ``position`` (0-based byte offset of the error, or ``None`` when the
    decoder does not say), ``line`` and ``column`` (1-based, or ``None``), ``detail``
    (the decoder's own message).
    """

    status_hint = 400
    code = "invalid_json"
    position: int | None
    line: int | None
    column: int | None
    detail: str
    #: ``"syntax"`` (not JSON), ``"number_out_of_range"``, ``"too_deep"``
    #: (:class:`JSONTooDeep`) or ``"schema"`` (valid JSON, wrong shape; no position)
    reason: str = "syntax"


class JSONTooDeep(InvalidJSON):
    """A JSON document nests deeper than the decoder can go (``reason`` ``"too_deep"``).

    Attributes, beyond :class:`InvalidJSON`'s: ``limit`` (the deepest nesting the
    decoder accepts there) and ``decoder`` (``"orjson"`` or ``"msgspec"``).
    """

    status_hint = 400
    reason = "too_deep"
    limit: int
    decoder: str

    def __init__(
        self,
        message: str,
        *,
        position: int,
        line: int,
        column: int,
        detail: str,
        limit: int,
        decoder: str,
    ) -> None:
        super().__init__(message, position=position, line=line, column=column, detail=detail)
        self.limit = limit
        self.decoder = decoder


class IncompleteBody(ArenaPoolError, ValueError):
    """The request body ended before its declared Content-Length (or the client left).

    Attributes: ``received``, ``expected``.
    """

    status_hint = 400
    code = "incomplete_body"
    received: int
    expected: int


class InvalidContentEncoding(ArenaPoolError, ValueError):
    """A request body could not be decoded from its ``Content-Encoding`` (not gzip
    although it says gzip, an unknown coding ...). Attribute: ``encoding``."""

    status_hint = 400
    code = "invalid_content_encoding"
    encoding: str


class UnsupportedMediaType(ArenaPoolError, ValueError):
    """A JSON body was required but the request's Content-Type says otherwise."""

    status_hint = 415
    code = "unsupported_media_type"
    content_type: str


class BodyTimeout(ArenaPoolError, TimeoutError):
    """The request body did not arrive within ``body_timeout`` seconds."""

    status_hint = 408
    code = "body_timeout"
    timeout: float | None


class CensusRateLimited(ArenaPoolError, RuntimeError):
    """A heap census ran too recently (or is running). ``retry_after`` says when to retry."""

    status_hint = 429
    code = "rate_limited"
    retry_after: float

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, retry_after=retry_after)


class CensusFailed(ArenaPoolError, RuntimeError):
    """The census child failed, died, or overran its timeout."""

    status_hint = 500
    code = "census_failed"
