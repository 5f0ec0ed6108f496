"""Workloads: how big request bodies are, how many fly at once, and in what order.

Theory of operation
-------------------
A :class:`Workload` says how big request bodies are (fixed, uniform or log-uniform
between two sizes) and how many requests are in flight. :meth:`Workload.deck` builds a
small set of distinct JSON bodies from a seed, and each body knows the summary the
example service must answer with (``count``, ``sum``, ``digest``), so the load client
counts wrong answers as corruption. A :class:`Plan` walks the deck in a seeded order;
two plans with the same seed send the same bodies in the same order, which is how every
mode in a comparison sees the same traffic.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson

from arenapool import format_size, parse_size

__all__ = [
    "BENCH_WORKLOADS",
    "MIN_BODY",
    "WORKLOADS",
    "Body",
    "Plan",
    "Workload",
    "burst_workload",
    "get_workload",
    "make_body",
    "size_workload",
    "summarize_body",
]

Distribution = Literal["fixed", "uniform", "log-uniform"]

#: Smallest body :func:`make_body` can produce: the JSON envelope with no records.
MIN_BODY = 64

KiB = 1024
MiB = 1024 * 1024

# Log lines are built from this alphabet: mostly ASCII, a few multi-byte characters so
# that the decoders' UTF-8 paths are exercised too.
_ALPHABET = "abcdefghijklmnopqrstuvwxyz      0123456789.,:=/-_éü→"
_LEVELS = ("debug", "info", "info", "info", "warning", "error")


@dataclass(frozen=True)
class Body:
    """One request body and the answer a correct server gives for it."""

    data: bytes
    count: int
    total: int
    digest: str

    def expected(self) -> dict[str, Any]:
        return {"count": self.count, "sum": self.total, "digest": self.digest}


def summarize_body(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary the example service computes: count, sum of ``value``, digest of tags.

    The digest is BLAKE2b (8 bytes, hex) over every record's ``tag`` in order. The
    example service carries its own copy of this function so that it stays a
    self-contained file users can copy; tests check the two agree.
    """
    digest = hashlib.blake2b(digest_size=8)
    total = 0
    for record in records:
        total += record["value"]
        digest.update(record["tag"].encode())
    return {"count": len(records), "sum": total, "digest": digest.hexdigest()}


def make_body(size: int, rng: random.Random) -> Body:
    """A JSON body of exactly ``size`` bytes: ``{"source", "records": [...], "pad"}``.

    Records look like structured log events (id, level, value, tag, message). Records
    are added while they fit; a ``pad`` string fills the rest so the length is exact.
    """
    if size < MIN_BODY:
        msg = f"body size must be at least {MIN_BODY} bytes, got {size!r}"
        raise ValueError(msg)
    text = "".join(rng.choice(_ALPHABET) for _ in range(4096))
    envelope = len(orjson.dumps({"source": "arenapool-loadgen", "records": [], "pad": ""}))
    budget = size - envelope
    records: list[dict[str, Any]] = []
    used = 0
    while True:
        start = rng.randrange(len(text) - 400)
        record = {
            "id": len(records),
            "ts": 1_700_000_000 + rng.randrange(86_400),
            "level": rng.choice(_LEVELS),
            "value": rng.randrange(1_000_000),
            "tag": f"{rng.getrandbits(32):08x}",
            "message": text[start : start + rng.randrange(40, 400)],
        }
        cost = len(orjson.dumps(record)) + (1 if records else 0)
        if used + cost > budget:
            break
        records.append(record)
        used += cost
    doc = {"source": "arenapool-loadgen", "records": records, "pad": " " * (budget - used)}
    data = orjson.dumps(doc)
    if len(data) != size:  # pragma: no cover - the arithmetic above is exact
        msg = f"generated {len(data)} bytes for a {size}-byte body"
        raise AssertionError(msg)
    summary = summarize_body(records)
    return Body(data, summary["count"], summary["sum"], summary["digest"])


@dataclass(frozen=True)
class Workload:
    """Request bodies between ``min_size`` and ``max_size`` and how many fly at once."""

    name: str
    min_size: int
    max_size: int
    distribution: Distribution
    concurrency: int
    deck_size: int = 32
    description: str = ""

    def __post_init__(self) -> None:
        if not MIN_BODY <= self.min_size <= self.max_size:
            msg = (
                f"workload {self.name!r}: need {MIN_BODY} <= min_size <= max_size, "
                f"got {self.min_size!r} and {self.max_size!r}"
            )
            raise ValueError(msg)
        if self.concurrency < 1 or self.deck_size < 1:
            msg = f"workload {self.name!r}: concurrency and deck_size must be positive"
            raise ValueError(msg)

    def sample_size(self, rng: random.Random) -> int:
        lo, hi = self.min_size, self.max_size
        if self.distribution == "fixed" or lo == hi:
            return lo
        if self.distribution == "uniform":
            return rng.randint(lo, hi)
        # log-uniform: every doubling of size is equally likely
        size = round(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        return min(hi, max(lo, size))

    def sizes(self, seed: int) -> list[int]:
        """The deck's body sizes for ``seed`` (the same seed gives the same sizes)."""
        rng = random.Random(f"sizes:{self.name}:{seed}")
        count = 1 if self.distribution == "fixed" else self.deck_size
        return [self.sample_size(rng) for _ in range(count)]

    def deck(self, seed: int) -> list[Body]:
        """Distinct bodies for ``seed``, built deterministically."""
        rng = random.Random(f"bodies:{self.name}:{seed}")
        return [make_body(size, rng) for size in self.sizes(seed)]

    def scaled(self, factor: float) -> Workload:
        """The same workload with every size multiplied by ``factor`` (for quick runs)."""
        return replace(
            self,
            min_size=max(MIN_BODY, int(self.min_size * factor)),
            max_size=max(MIN_BODY, int(self.max_size * factor)),
        )

    def describe(self) -> str:
        if self.min_size == self.max_size:
            sizes = format_size(self.min_size)
        else:
            sizes = f"{format_size(self.min_size)}-{format_size(self.max_size)} {self.distribution}"
        return f"{sizes}, {self.concurrency} in flight"


WORKLOADS: dict[str, Workload] = {
    "small": Workload("small", KiB, KiB, "fixed", 16, description="1 KiB bodies"),
    "large": Workload("large", MiB, 4 * MiB, "uniform", 4, description="1-4 MiB bodies"),
    "mixed": Workload(
        "mixed", KiB, 4 * MiB, "log-uniform", 8, description="1 KiB-4 MiB, log-uniform"
    ),
    # the middle of mixed: past the inline path (64 KiB) and up to aiohttp's read-ahead
    # and a little past it, where arenapool pays most against the trim loop
    "medium": Workload(
        "medium", 64 * KiB, MiB, "log-uniform", 8, description="64 KiB-1 MiB, log-uniform"
    ),
}

#: what ``arenapool bench`` runs when not told (``medium`` is asked for by name)
BENCH_WORKLOADS = ("small", "large", "mixed", "burst")


def burst_workload(budget: int | str, *, factor: int = 4, body: int | str = "4MiB") -> Workload:
    """4 MiB bodies, as many at once as make ``factor`` times ``budget`` in flight."""
    budget_b = parse_size(budget, name="budget")
    body_b = parse_size(body, name="body")
    concurrency = max(1, math.ceil(factor * budget_b / body_b))
    return Workload(
        "burst",
        body_b,
        body_b,
        "fixed",
        concurrency,
        description=f"{concurrency} concurrent {format_size(body_b)} bodies "
        f"({factor}x a {format_size(budget_b)} budget)",
    )


def get_workload(name: str, *, budget: int | str = "256MiB", scale: float = 1.0) -> Workload:
    """A named workload (``small``, ``large``, ``mixed``, ``medium``, ``burst``), sizes
    times ``scale``."""
    if name == "burst":
        # Scale the budget the burst is measured against, not only the body, so a
        # scaled burst keeps its 4x-the-budget shape.
        budget_b = max(MIN_BODY, int(parse_size(budget, name="budget") * scale))
        return burst_workload(budget_b, body=max(MIN_BODY, int(4 * MiB * scale)))
    try:
        workload = WORKLOADS[name]
    except KeyError:
        names = ", ".join([*WORKLOADS, "burst"])
        msg = f"unknown workload {name!r}; choose from {names}"
        raise ValueError(msg) from None
    return workload if scale == 1.0 else workload.scaled(scale)


def size_workload(size: str, *, name: str = "size") -> Workload:
    """The deck the throughput benchmarks send for ``size``: ``mixed`` (the soak's 1 KiB-4
    MiB log-uniform deck), or bodies of that one size (``"64KiB"``), 32 in flight.
    ``name`` is what a size that does not parse is called in its error."""
    if size == "mixed":
        return get_workload("mixed")
    n = parse_size(size, name=name)
    return Workload(size, n, n, "fixed", 32)


class Plan:
    """The seeded order in which a deck's bodies are sent.

    Plans with the same deck and seed yield the same sequence; a plan keeps its place
    across :func:`run_load` calls, so a server driven in slices sees one sequence.
    """

    def __init__(self, deck: list[Body], seed: int) -> None:
        if not deck:
            msg = "a plan needs at least one body"
            raise ValueError(msg)
        self.deck = deck
        self._rng = random.Random(f"plan:{seed}")
        self.sent = 0

    def next_body(self) -> Body:
        self.sent += 1
        if len(self.deck) == 1:
            return self.deck[0]
        return self.deck[self._rng.randrange(len(self.deck))]
