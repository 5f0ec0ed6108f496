"""Prometheus metrics for arenapool: ``arenapool.metrics.register()``.

One custom collector reads everything at scrape time (one :func:`snapshot` per scrape,
so the figures are mutually consistent): process readings, every slab pool (per size
class with a ``size_class`` label), every object pool, the governor's actions and the
aiohttp adapter's per-route counters. Names start with ``arenapool_``, carry their unit
(``_bytes``, ``_seconds``) and counters end in ``_total``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - exercised by the extra being absent
    msg = "arenapool.metrics needs prometheus_client: pip install 'arenapool[metrics]'"
    raise ImportError(msg) from exc

from ._memory import RoutesSource, snapshot

if TYPE_CHECKING:
    from ._governor import Governor
    from ._objectpool import ObjectPool
    from ._slabpool import SlabPool

__all__ = ["ArenapoolCollector", "register"]

SlabSource = Callable[[], Iterable["SlabPool"]] | Iterable["SlabPool"] | None
ObjectSource = Callable[[], Iterable["ObjectPool[Any]"]] | Iterable["ObjectPool[Any]"] | None

# (stats key, metric suffix, HELP) for each per-pool figure of a SlabPool.
_SLAB_GAUGES = (
    ("budget", "budget_bytes", "Most bytes the pool lends out (and quarantines) at once."),
    ("lent_bytes", "lent_bytes", "Bytes lent to arenas now (block sizes)."),
    ("lent_blocks", "lent_blocks", "Blocks lent to arenas now."),
    ("idle_bytes", "idle_bytes", "Bytes in idle blocks, ready to lend."),
    ("idle_blocks", "idle_blocks", "Idle blocks, ready to lend."),
    ("quarantined_bytes", "quarantined_bytes", "Bytes held back because a view escaped."),
    ("quarantined_blocks", "quarantined_blocks", "Blocks held back because a view escaped."),
    ("mapped_bytes", "mapped_bytes", "Bytes of address space the pool has mapped."),
    ("high_water_lent_bytes", "high_water_lent_bytes", "Most bytes ever lent at once."),
    ("waiting", "waiting_requests", "Async lends waiting for budget now."),
    ("arenas_open", "arenas_open", "Arenas open now."),
)
_SLAB_COUNTERS = (
    ("waits", "waits", "Lends that had to wait for budget."),
    ("wait_timeouts", "wait_timeouts", "Waits that timed out (BudgetExhausted)."),
    ("returned_bytes", "returned_bytes", "Bytes given back to the OS (decay and trims)."),
    ("trims", "trims", "Trims that returned memory to the OS."),
    ("escapes", "escapes", "Blocks quarantined because a view outlived its arena."),
    ("arenas_total", "arenas", "Arenas opened."),
)
_CLASS_GAUGES = (
    ("lent_bytes", "lent_bytes", "Bytes lent in this size class."),
    ("lent_blocks", "lent_blocks", "Blocks lent in this size class."),
    ("idle_bytes", "idle_bytes", "Idle bytes in this size class."),
    ("idle_blocks", "idle_blocks", "Idle blocks in this size class."),
    ("quarantined_bytes", "quarantined_bytes", "Quarantined bytes in this size class."),
    ("quarantined_blocks", "quarantined_blocks", "Quarantined blocks in this size class."),
    ("high_water_blocks", "high_water_blocks", "Most blocks ever lent at once in this class."),
)
_OBJECT_GAUGES = (
    ("maxsize", "max_objects", "Most objects the pool keeps."),
    ("idle", "idle_objects", "Objects waiting in the pool."),
    ("in_use", "in_use_objects", "Objects borrowed now."),
    ("high_water", "high_water_objects", "Most objects ever borrowed at once."),
)
_OBJECT_COUNTERS = (
    ("created", "created_objects", "Objects the factory made."),
    ("waits", "waits", "Acquires that had to wait."),
    ("timeouts", "timeouts", "Waits that timed out."),
    ("leaks", "leaks", "Objects never returned (collected while borrowed)."),
)
_ROUTE_COUNTERS = (
    ("requests", "requests", "Requests served by this route."),
    ("bytes_read", "read_bytes", "Request body bytes read into arenas."),
    ("waits", "waits", "Requests that waited for pool budget."),
    ("escapes", "escapes", "Arena views of this route that outlived the request."),
)
#: Always exported per route (zero until they happen); other status_* keys as they come.
_ROUTE_STATUSES = ("status_400", "status_413", "status_503")


def _pools(source: Any) -> list[Any] | None:
    if source is None:
        return None
    return list(source() if callable(source) else source)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0


class ArenapoolCollector(Collector):
    """A prometheus_client collector for everything arenapool can read.

    ``slab_pools``/``object_pools`` default to every live pool; ``governor`` adds the
    governor's counters; ``routes`` is a callable returning the aiohttp adapter's
    per-route counters ``{route: {"requests", "bytes_read", "arena_high_water",
    "waits", "status_413", "status_503", "status_400"}}``.
    """

    def __init__(
        self,
        *,
        slab_pools: SlabSource = None,
        object_pools: ObjectSource = None,
        governor: Governor | None = None,
        routes: RoutesSource | None = None,
    ) -> None:
        self._slab_pools = slab_pools
        self._object_pools = object_pools
        self._governor = governor
        self._routes = routes

    def describe(self) -> Iterable[Metric]:
        # Nothing up front: the families depend on which pools exist at scrape time.
        return []

    def collect(self) -> Iterator[Metric]:
        reading = snapshot(
            slab_pools=_pools(self._slab_pools),
            object_pools=_pools(self._object_pools),
            routes=self._routes,
        )
        yield from self._process(reading.as_dict())
        yield from self._slabs(reading.slab_pools)
        yield from self._objects(reading.object_pools)
        if self._governor is not None:
            yield from self._governor_metrics(self._governor.stats())
        yield from self._route_metrics(reading.routes)

    @staticmethod
    def _process(r: dict[str, Any]) -> Iterator[Metric]:
        gauges = (
            ("rss_bytes", "rss", "Resident set size of the process."),
            ("rss_peak_bytes", "peak_rss", "Peak resident set size of the process."),
            ("c_heap_in_use_bytes", "heap_in_use", "C heap in use (glibc mallinfo2)."),
            ("c_heap_free_bytes", "heap_free", "Free C heap still held (glibc fordblks)."),
            ("c_heap_mmapped_bytes", "heap_mmapped", "C heap blocks served by mmap (hblkhd)."),
            ("c_heap_arena_bytes", "heap_arena", "Non-mmapped C heap obtained from the OS."),
            (
                "unaccounted_bytes",
                "unaccounted",
                "RSS minus C heap in use and slab lent/quarantined bytes.",
            ),
            ("python_allocated_blocks", "py_allocated_blocks", "pymalloc blocks allocated."),
            ("snapshot_duration_seconds", "duration", "Seconds the last reading took."),
        )
        for name, key, doc in gauges:
            if r[key] is not None:  # unknown on this platform: no sample, never a guess
                yield GaugeMetricFamily(f"arenapool_{name}", doc, value=r[key])
        collections = CounterMetricFamily(
            "arenapool_python_gc_collections_total",
            "Garbage collections per generation.",
            labels=["generation"],
        )
        for gen, count in enumerate(r["gc_collections"]):
            collections.add_metric([str(gen)], count)
        yield collections

    @staticmethod
    def _slabs(pools: Iterable[Any]) -> Iterator[Metric]:
        pools = list(pools)
        for key, suffix, doc in _SLAB_GAUGES:
            family = GaugeMetricFamily(f"arenapool_slab_{suffix}", doc, labels=["pool"])
            for stats in pools:
                family.add_metric([str(stats["name"])], _number(stats.get(key)))
            yield family
        for key, suffix, doc in _SLAB_COUNTERS:
            counter = CounterMetricFamily(f"arenapool_slab_{suffix}_total", doc, labels=["pool"])
            for stats in pools:
                counter.add_metric([str(stats["name"])], _number(stats.get(key)))
            yield counter
        for key, suffix, doc in _CLASS_GAUGES:
            family = GaugeMetricFamily(
                f"arenapool_slab_class_{suffix}", doc, labels=["pool", "size_class"]
            )
            for stats in pools:
                for cls in stats.get("classes", ()):
                    labels = [str(stats["name"]), str(cls["size"])]
                    family.add_metric(labels, _number(cls.get(key)))
            yield family

    @staticmethod
    def _objects(pools: Iterable[Any]) -> Iterator[Metric]:
        pools = list(pools)
        for key, suffix, doc in _OBJECT_GAUGES:
            family = GaugeMetricFamily(f"arenapool_object_pool_{suffix}", doc, labels=["pool"])
            for stats in pools:
                family.add_metric([str(stats["name"])], _number(stats.get(key)))
            yield family
        for key, suffix, doc in _OBJECT_COUNTERS:
            counter = CounterMetricFamily(
                f"arenapool_object_pool_{suffix}_total", doc, labels=["pool"]
            )
            for stats in pools:
                counter.add_metric([str(stats["name"])], _number(stats.get(key)))
            yield counter

    @staticmethod
    def _governor_metrics(g: dict[str, Any]) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "arenapool_governor_shedding",
            "1 while the governor sheds requests with a body (past the hard watermark).",
            value=1.0 if g["shedding"] else 0.0,
        )
        yield GaugeMetricFamily(
            "arenapool_governor_in_flight_requests",
            "Requests in flight as the governor counts them.",
            value=g["in_flight"],
        )
        for key, doc in (
            ("soft_limit", "RSS at which the governor trims at once."),
            ("hard_limit", "RSS at which the governor starts shedding."),
        ):
            if g[key] is not None:
                yield GaugeMetricFamily(f"arenapool_governor_{key}_bytes", doc, value=g[key])
        for name, key, doc in (
            ("trims_total", "trims", "Trims the governor ran (idle, soft watermark, manual)."),
            ("trimmed_bytes_total", "trimmed_bytes", "RSS drop measured across its trims."),
            ("trim_seconds_total", "trim_seconds", "Seconds spent trimming (off the loop)."),
            ("shed_requests_total", "shed_count", "Requests answered 503 while shedding."),
            ("shed_episodes_total", "shed_episodes", "Times the hard watermark was crossed."),
        ):
            yield CounterMetricFamily(f"arenapool_governor_{name}", doc, value=g[key])

    @staticmethod
    def _route_metrics(routes: Any) -> Iterator[Metric]:
        rows = dict(routes)
        for key, suffix, doc in _ROUTE_COUNTERS:
            counter = CounterMetricFamily(f"arenapool_route_{suffix}_total", doc, labels=["route"])
            for route, row in rows.items():
                counter.add_metric([route], _number(row.get(key)))
            yield counter
        for key, name, doc in (
            ("arena_high_water", "arena_high_water_bytes", "Largest arena one request used."),
            ("in_flight", "in_flight_requests", "Requests of this route in flight now."),
        ):
            gauge = GaugeMetricFamily(f"arenapool_route_{name}", doc, labels=["route"])
            for route, row in rows.items():
                if key in row:
                    gauge.add_metric([route], _number(row[key]))
            yield gauge
        errors = CounterMetricFamily(
            "arenapool_route_errors_total",
            "Requests refused by status: 400 bad JSON, 408 body timeout, 413 too large, "
            "415 media type, 503 no budget or overloaded.",
            labels=["route", "status"],
        )
        for route, row in rows.items():
            keys = {*_ROUTE_STATUSES, *(k for k in row if k.startswith("status_"))}
            for key in sorted(keys):
                errors.add_metric([route, key.removeprefix("status_")], _number(row.get(key)))
        yield errors


def register(
    registry: CollectorRegistry | None = None,
    *,
    slab_pools: SlabSource = None,
    object_pools: ObjectSource = None,
    governor: Governor | None = None,
    routes: RoutesSource | None = None,
) -> ArenapoolCollector:
    """Register an :class:`ArenapoolCollector` (on the default registry unless given)."""
    collector = ArenapoolCollector(
        slab_pools=slab_pools, object_pools=object_pools, governor=governor, routes=routes
    )
    (REGISTRY if registry is None else registry).register(collector)
    return collector
