"""Prometheus metrics for arenapool: ``arenapool.metrics.register()``.

One custom collector reads everything at scrape time (one :func:`snapshot` per scrape,
so the figures are mutually consistent): process readings, every slab pool (per size
class with a ``size_class`` label), every object pool, the governor's actions and the
aiohttp adapter's per-route counters. Names start with ``arenapool_``, carry their unit
(``_bytes``, ``_seconds``) and counters end in ``_total``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
        StateSetMetricFamily,
    )
    from prometheus_client.metrics import Counter, Gauge
    from prometheus_client.multiprocess import MultiProcessCollector
    from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - exercised by the extra being absent
    msg = "arenapool.metrics needs prometheus_client: pip install 'arenapool[metrics]'"
    raise ImportError(msg) from exc

from ._memory import RoutesSource, snapshot
from ._verdict import KINDS

if TYPE_CHECKING:
    from ._census import Census
    from ._governor import Governor
    from ._monitor import MemoryMonitor
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
        monitor: MemoryMonitor | None = None,
        census: Census | None = None,
    ) -> None:
        self._slab_pools = slab_pools
        self._object_pools = object_pools
        self._governor = governor
        self._routes = routes
        self._monitor = monitor
        self._census = census

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
        yield from _memory_metrics(reading.breakdown, self._monitor, self._census)
        yield from _route_histograms(reading.routes)

    @staticmethod
    def _process(r: dict[str, Any]) -> Iterator[Metric]:
        gauges = (
            ("rss_bytes", "rss", "Resident set size of the process."),
            ("rss_peak_bytes", "peak_rss", "Peak resident set size of the process."),
            ("c_heap_in_use_bytes", "heap_in_use", "C heap in use (glibc mallinfo2)."),
            (
                "c_heap_free_bytes",
                "heap_free",
                "Free C heap by glibc's count (fordblks), pages a trim gave back included.",
            ),
            (
                "c_heap_resident_bytes",
                "heap_resident",
                "Resident bytes of glibc's main heap, page by page (mincore).",
            ),
            ("c_heap_mmapped_bytes", "heap_mmapped", "C heap blocks served by mmap (hblkhd)."),
            ("c_heap_arena_bytes", "heap_arena", "Non-mmapped C heap obtained from the OS."),
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
        yield from _admission_metrics(pools)

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
            ("trim_seconds_total", "trim_seconds", "Seconds spent trimming."),
            (
                "pymalloc_released_bytes_total",
                "pymalloc_released_bytes",
                "Bytes of pymalloc's empty pools its trims gave back to the OS.",
            ),
            ("shed_requests_total", "shed_count", "Requests answered 503 while shedding."),
            ("shed_episodes_total", "shed_episodes", "Times the hard watermark was crossed."),
        ):
            yield CounterMetricFamily(f"arenapool_governor_{name}", doc, value=g[key])
        yield from _families(
            "arenapool_governor_arena_cache",
            g.get("arena_cache"),
            gauges=(
                (
                    "bytes",
                    "cached_bytes",
                    "Bytes of pymalloc's freed arenas the governor's cache holds for reuse.",
                ),
            ),
            counters=(
                ("hits_total", "hits", "Arenas pymalloc took from the cache instead of mapping."),
                ("misses_total", "misses", "Arenas pymalloc mapped with the cache empty."),
                (
                    "released_bytes_total",
                    "released_bytes",
                    "Bytes of cached arenas the governor gave back to the OS.",
                ),
            ),
        )
        yield from _families(
            "arenapool_governor_block_cache",
            g.get("block_cache"),
            gauges=(
                ("in_use_bytes", "in_use", "Bytes of live blocks in the large-block region."),
                (
                    "resident_bytes",
                    "resident",
                    "Resident bytes of the large-block region (in use or kept warm).",
                ),
                (
                    "warm_bytes",
                    "warm",
                    "The large-block region's warm bound now: free pages below it stay "
                    "resident (lower while the body sizes are spread: block_cache_spread).",
                ),
            ),
            counters=(
                (
                    "spread_moves_total",
                    "spread_moves",
                    "Times the governor moved the region's warm bound as the body sizes "
                    "became spread or steady (block_cache_spread).",
                ),
                ("served_total", "served", "Large PyMem blocks the region handed out."),
                ("passed_total", "passed", "Large PyMem blocks the region had no room for."),
                (
                    "over_warm_total",
                    "over_warm",
                    "Freed blocks of the region that had pages in use above its warm bound.",
                ),
                (
                    "over_warm_bytes_total",
                    "over_warm_bytes",
                    "Bytes of pages in use above the region's warm bound, given back as "
                    "their blocks were freed (faulted in again by the next such block).",
                ),
                (
                    "released_bytes_total",
                    "released_bytes",
                    "Bytes of the region's free range the governor advised away.",
                ),
            ),
        )
        yield from _families(
            "arenapool_governor_heap_trims",
            g.get("heap_trims"),
            gauges=(),
            counters=(
                (
                    "total",
                    "count",
                    "malloc_trim(0) calls under load (heap_trim_every, spread_trim_every).",
                ),
                (
                    "spread_total",
                    "spread_count",
                    "Of those, the calls made while the traffic was spread over body sizes.",
                ),
                ("seconds_total", "seconds", "Seconds those calls took, on the event loop."),
            ),
        )
        returns = g.get("heap_returns") or {}
        for suffix, key, doc in (
            (
                "heap_returned_bytes_total",
                "returned_bytes",
                "Resident bytes of the main heap the governor's trims gave back, by reason.",
            ),
            (
                "heap_judged_bytes_total",
                "judged_bytes",
                "Of those, the bytes of trims the governor's next reading has looked at.",
            ),
            (
                "heap_back_bytes_total",
                "back_bytes",
                "Of the judged bytes, those resident again at that reading, by reason.",
            ),
        ):
            family = CounterMetricFamily(f"arenapool_governor_{suffix}", doc, labels=["reason"])
            for reason, row in sorted(returns.items()):
                family.add_metric([reason], _number(row.get(key)))
            yield family
        yield from _container_metrics(g.get("container"))

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


def _memory_metrics(
    parts: Mapping[str, int], monitor: MemoryMonitor | None, census: Census | None
) -> Iterator[Metric]:
    """Issue 14: the breakdown's parts, the verdict, the census's leak suspects."""
    if parts:
        family = GaugeMetricFamily(
            "arenapool_memory_part_bytes",
            "RSS in parts that sum to it: code, pymalloc, C heap, slabs, stacks, unexplained.",
            labels=["part"],
        )
        for part, value in parts.items():
            family.add_metric([part], value)
        yield family
    if monitor is not None:
        kind = monitor.verdict().kind
        yield StateSetMetricFamily(
            "arenapool_memory_verdict",
            "The breakdown's trend over the monitor's window (one state is true).",
            value={k: k == kind for k in KINDS},
        )
    if census is not None:
        last = census.last or {}
        suspects = last.get("suspects") or []
        yield GaugeMetricFamily(
            "arenapool_leak_suspects",
            "Types whose count grew in each of the last censuses.",
            value=len(suspects),
        )
        objects = GaugeMetricFamily(
            "arenapool_leak_suspect_objects",
            "Live objects of each leak suspect at the last census.",
            labels=["type"],
        )
        for row in suspects[:20]:
            objects.add_metric([str(row["type"])], row["count"])
        yield objects


def _route_histograms(routes: Mapping[str, Mapping[str, int]]) -> Iterator[Metric]:
    """Arena bytes per request by route, from the adapter's cumulative bucket counts."""
    family = HistogramMetricFamily(
        "arenapool_route_arena_bytes",
        "Arena bytes one request of this route used (its arena's high water).",
        labels=["route"],
    )
    for route, row in routes.items():
        bounds = sorted(
            (int(k.removeprefix("arena_bytes_le_")), v)
            for k, v in row.items()
            if k.startswith("arena_bytes_le_") and k != "arena_bytes_le_inf"
        )
        if "arena_bytes_le_inf" not in row:
            continue
        buckets = [(str(float(b)), float(v)) for b, v in bounds]
        buckets.append(("+Inf", float(row["arena_bytes_le_inf"])))
        family.add_metric([route], buckets, sum_value=float(row.get("arena_bytes_sum", 0)))
    yield family


def register(
    registry: CollectorRegistry | None = None,
    *,
    slab_pools: SlabSource = None,
    object_pools: ObjectSource = None,
    governor: Governor | None = None,
    routes: RoutesSource | None = None,
    monitor: MemoryMonitor | None = None,
    census: Census | None = None,
) -> ArenapoolCollector:
    """Register an :class:`ArenapoolCollector` (on the default registry unless given).

    ``monitor`` adds the verdict on the breakdown's trend; ``census`` the leak suspects.
    """
    collector = ArenapoolCollector(
        slab_pools=slab_pools,
        object_pools=object_pools,
        governor=governor,
        routes=routes,
        monitor=monitor,
        census=census,
    )
    target = REGISTRY if registry is None else registry
    path = multiprocess_dir()
    if path is None:
        target.register(collector)
    else:  # every worker's figures and their totals, from the shared directory
        target.register(MultiprocessView(publisher().add(collector), path))
    return collector


_ADMISSION_GAUGES = (
    ("reserved_bytes", "reserved_bytes", "Room kept for admitted bodies not yet lent."),
    ("queued", "queued_requests", "Bodies waiting to be admitted."),
    ("queued_bytes", "queued_bytes", "Bytes the bodies waiting to be admitted need."),
    (
        "return_rate",
        "return_rate_bytes",
        "Bytes per second given back while requests "
        "queue (the admission predictor's rate; 0 until measured).",
    ),
    ("shedding", "shedding", "1 while the admission queue stands (CoDel): arrivals refused."),
)


def _admission_metrics(pools: list[Any]) -> Iterator[Metric]:
    """The admission ledger of each pool (issue 13)."""
    rows = [(str(p["name"]), p["admission"]) for p in pools if p.get("admission")]
    for key, suffix, doc in _ADMISSION_GAUGES:
        family = GaugeMetricFamily(f"arenapool_admission_{suffix}", doc, labels=["pool"])
        for name, row in rows:
            family.add_metric([name], _number(row.get(key)))
        yield family
    admits = CounterMetricFamily(
        "arenapool_admission_admits", "Bodies admitted (at once or after a wait).", labels=["pool"]
    )
    refusals = CounterMetricFamily(
        "arenapool_admission_refusals",
        "Bodies refused: too-large, predicted (would miss its deadline), "
        "standing-queue (CoDel), expired.",
        labels=["pool", "reason"],
    )
    for name, row in rows:
        admits.add_metric([name], _number(row.get("admits")))
        for reason in ("too-large", "predicted", "standing-queue", "expired"):
            refusals.add_metric([name, reason], _number(row.get("refusals", {}).get(reason)))
    yield admits
    yield refusals


def _families(
    prefix: str,
    values: Mapping[str, Any] | None,
    *,
    gauges: tuple[tuple[str, str, str], ...],
    counters: tuple[tuple[str, str, str], ...],
) -> Iterator[Metric]:
    """``prefix_<suffix>`` gauges and counters read from ``values`` by key (nothing when
    ``values`` is None): each entry is ``(suffix, key, help)``."""
    if values is None:
        return
    for suffix, key, doc in gauges:
        yield GaugeMetricFamily(f"{prefix}_{suffix}", doc, value=_number(values.get(key)))
    for suffix, key, doc in counters:
        yield CounterMetricFamily(f"{prefix}_{suffix}", doc, value=_number(values.get(key)))


def _container_metrics(c: Mapping[str, Any] | None) -> Iterator[Metric]:
    """The container's memory as the governor last read it (issue 13)."""
    if not c:
        return
    for key, name, doc in (
        ("limit", "limit_bytes", "The container's memory limit (cgroup memory.max/high)."),
        ("usage", "usage_bytes", "Memory charged to the container (memory.current)."),
        ("working_set", "working_set_bytes", "Usage minus inactive file cache (kubelet's)."),
        ("inactive_file", "inactive_file_bytes", "Page cache the kernel can drop at once."),
        (
            "pressure_some_avg10",
            "pressure_some_ratio",
            "Share of time some tasks stalled on memory over 10 s (PSI).",
        ),
        (
            "pressure_full_avg10",
            "pressure_full_ratio",
            "Share of time all tasks stalled on memory over 10 s (PSI).",
        ),
    ):
        value = c.get(key)
        if value is not None:
            if key.startswith("pressure_"):
                value = value / 100.0
            yield GaugeMetricFamily(f"arenapool_container_{name}", doc, value=value)
    yield CounterMetricFamily(
        "arenapool_container_oom_kills",
        "Processes the kernel OOM-killed in the container (memory.events oom_kill).",
        value=c.get("oom_kills") or 0,
    )


# -- multiprocess mode (gunicorn and friends) ---------------------------------------------
#
# With PROMETHEUS_MULTIPROC_DIR set, each worker writes its own figures into
# prometheus_client's shared files: every gauge as ``arenapool_worker_<name>`` in
# ``liveall`` mode (a ``pid`` label per live worker; gunicorn's ``child_exit`` hook removes
# a dead worker's files), every counter as ``arenapool_worker_<name>_total`` with a ``pid``
# label (kept after the worker dies, so totals never go back). A scrape of any worker
# reads all the files and adds, under the usual names, the container's totals computed
# from them at that moment: the sum over workers, or the max for figures every worker
# reads alike (the container's limit, usage and pressure, the watermarks, shedding), so a
# total always equals what its per-worker figures add up to. Histograms and state sets
# cannot be merged from files; a scrape shows those of the worker it reached, with its
# ``pid``.

log = logging.getLogger("arenapool.metrics")

WORKER_PREFIX = "arenapool_worker_"

#: families whose container total is the max over workers, not the sum
SHARED_FAMILIES = frozenset(
    {
        "arenapool_container_limit_bytes",
        "arenapool_container_usage_bytes",
        "arenapool_container_working_set_bytes",
        "arenapool_container_inactive_file_bytes",
        "arenapool_container_pressure_some_ratio",
        "arenapool_container_pressure_full_ratio",
        "arenapool_container_oom_kills",
        "arenapool_governor_soft_limit_bytes",
        "arenapool_governor_hard_limit_bytes",
        "arenapool_governor_shedding",
        "arenapool_snapshot_duration_seconds",
    }
)


def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR``, if set (prometheus_client's multiprocess mode)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def _worker_name(name: str) -> str:
    return WORKER_PREFIX + name.removeprefix("arenapool_")


class Publisher:
    """Writes this worker's figures into the multiprocess files (one per process).

    Several collectors may feed it (the adapter's, the admin routes'): a gauge set twice
    is the same, and a counter is advanced by its growth since the last value published
    under the same name and labels, so nothing is counted twice.
    """

    def __init__(self) -> None:
        self._collectors: list[ArenapoolCollector] = []
        self._metrics: dict[str, Any] = {}
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._lock = threading.Lock()

    def add(self, collector: ArenapoolCollector) -> Publisher:
        with self._lock:
            self._collectors.append(collector)
        return self

    def publish(self) -> list[Metric]:
        """Write every gauge and counter; return the families that cannot be written."""
        pid = str(os.getpid())
        others: list[Metric] = []
        with self._lock:
            for collector in self._collectors:
                for family in collector.collect():
                    if family.type in ("gauge", "counter"):
                        self._write(family, pid)
                    elif all(o.name != family.name for o in others):
                        others.append(family)
        return others

    def _write(self, family: Metric, pid: str) -> None:
        name = _worker_name(family.name)
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = dict(sample.labels)
            if family.type == "gauge":
                gauge = self._metric(name, family, tuple(sorted(labels)))
                (gauge.labels(**labels) if labels else gauge).set(sample.value)
                continue
            labels["pid"] = pid
            counter = self._metric(name, family, tuple(sorted(labels)))
            key = (name, tuple(sorted(labels.items())))
            growth = sample.value - self._last.get(key, 0.0)
            if growth < 0:  # its source started over (a new pool): count it anew
                growth = sample.value
            if growth > 0:
                counter.labels(**labels).inc(growth)
            self._last[key] = sample.value

    def _metric(self, name: str, family: Metric, labelnames: tuple[str, ...]) -> Any:
        metric = self._metrics.get(name)
        if metric is None:
            if family.type == "gauge":
                metric = Gauge(
                    name,
                    family.documentation,
                    labelnames,
                    registry=None,
                    multiprocess_mode="liveall",
                )
            else:
                metric = Counter(name, family.documentation, labelnames, registry=None)
            self._metrics[name] = metric
        return metric


_publisher: Publisher | None = None
_publisher_lock = threading.Lock()


def publisher() -> Publisher:
    """This process's :class:`Publisher`."""
    global _publisher
    with _publisher_lock:
        if _publisher is None:
            _publisher = Publisher()
        return _publisher


class MultiprocessView(Collector):
    """A scrape in multiprocess mode: every worker's figures (``pid``) and the totals."""

    def __init__(self, source: Publisher, path: str) -> None:
        self._publisher = source
        self._path = path

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        others = self._publisher.publish()  # this worker's figures, fresh
        files = MultiProcessCollector(None, self._path)  # type: ignore[no-untyped-call]
        for family in files.collect():  # type: ignore[no-untyped-call]
            yield family
            if family.name.startswith(WORKER_PREFIX):
                yield _total(family)
        pid = str(os.getpid())
        for family in others:
            own = Metric(_worker_name(family.name), family.documentation, family.type)
            for sample in family.samples:
                own.add_sample(
                    _worker_name(sample.name), {**sample.labels, "pid": pid}, sample.value
                )
            yield own


def _total(family: Metric) -> Metric:
    """The container's total of a per-worker family (sum, or max for shared figures)."""
    name = "arenapool_" + family.name.removeprefix(WORKER_PREFIX)
    total = Metric(name, family.documentation, family.type)
    shared = name in SHARED_FAMILIES
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for sample in family.samples:
        labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "pid"))
        key = ("arenapool_" + sample.name.removeprefix(WORKER_PREFIX), labels)
        if key not in values:
            values[key] = sample.value
        elif shared:
            values[key] = max(values[key], sample.value)
        else:
            values[key] += sample.value
    for (sample_name, labels), value in values.items():
        total.add_sample(sample_name, dict(labels), value)
    return total


async def publish_forever(
    *,
    slab_pools: SlabSource = None,
    governor: Governor | None = None,
    routes: RoutesSource | None = None,
    interval: float = 1.0,
) -> None:
    """Publish this worker's figures every ``interval`` seconds (multiprocess mode), so a
    scrape of another worker sees them; the adapter's ``setup()`` runs it per worker."""
    source = publisher().add(
        ArenapoolCollector(slab_pools=slab_pools, governor=governor, routes=routes)
    )
    while True:
        try:  # on the loop: the readings walk state only the loop's thread changes
            source.publish()
        except Exception:  # a failed reading: try again at the next tick
            log.exception("publishing multiprocess metrics failed")
        await asyncio.sleep(interval)
