"""The Prometheus collector: names, units, HELP text and labels."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from arenapool import ObjectPool, SlabPool
from arenapool._governor import Governor, GovernorConfig
from arenapool.metrics import ArenapoolCollector, register

RunPython = Callable[..., Any]  # conftest's run_python fixture


@pytest.fixture
def slab() -> Iterator[SlabPool]:
    pool = SlabPool(budget="8MiB", name="metrics-test", decay=None)
    yield pool
    pool.close()


def scrape(registry: CollectorRegistry) -> dict[str, Metric]:
    text = generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_every_family_is_prefixed_typed_and_documented(slab: SlabPool) -> None:
    """Every family starts with arenapool_, has HELP text; counters end in _total."""
    registry = CollectorRegistry()
    register(registry, slab_pools=[slab], governor=Governor(GovernorConfig(use_cgroup=False)))
    text = generate_latest(registry).decode()
    families = list(text_string_to_metric_families(text))
    assert len(families) > 40
    for family in families:
        assert family.name.startswith("arenapool_"), family.name
        assert family.documentation, f"{family.name} has no HELP"
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
    assert "arenapool_rss_bytes" in text
    assert "arenapool_governor_trimmed_bytes_total" in text
    assert "arenapool_governor_pymalloc_released_bytes_total" in text
    assert "arenapool_governor_trim_seconds_total" in text
    assert "arenapool_governor_arena_cache_bytes" in text
    assert "arenapool_governor_arena_cache_hits_total" in text
    assert "arenapool_governor_arena_cache_released_bytes_total" in text


def test_slab_classes_carry_a_size_class_label(slab: SlabPool) -> None:
    """Per-class slab figures are labelled by pool and size class."""
    with slab.arena() as arena:
        arena.alloc(100_000)
        registry = CollectorRegistry()
        register(registry, slab_pools=[slab])
        families = scrape(registry)
    lent = families["arenapool_slab_class_lent_bytes"].samples
    assert lent, "one class is in use"
    assert {"pool", "size_class"} == set(lent[0].labels)
    assert "metrics-test" == lent[0].labels["pool"]
    assert sum(s.value for s in lent) >= 100_000
    pool_lent = families["arenapool_slab_lent_bytes"].samples
    assert [("metrics-test", sum(s.value for s in lent))] == [
        (s.labels["pool"], s.value) for s in pool_lent
    ]


def test_object_pools_and_routes() -> None:
    """Object pool gauges/counters and per-route counters and peaks are exposed."""
    pool: ObjectPool[bytearray] = ObjectPool(lambda: bytearray(16), maxsize=4, name="bufs")
    try:
        with pool.borrow():
            registry = CollectorRegistry()
            routes = {
                "/upload": {
                    "requests": 9,
                    "bytes_read": 1000,
                    "arena_high_water": 65536,
                    "waits": 1,
                    "status_400": 1,
                    "status_413": 2,
                    "status_503": 3,
                    "status_415": 4,
                    "in_flight": 2,
                }
            }
            register(registry, object_pools=[pool], slab_pools=[], routes=lambda: routes)
            families = scrape(registry)
    finally:
        pool.close()
    in_use = families["arenapool_object_pool_in_use_objects"].samples
    assert [({"pool": "bufs"}, 1.0)] == [(s.labels, s.value) for s in in_use]
    assert 65536 == families["arenapool_route_arena_high_water_bytes"].samples[0].value
    assert 1000 == families["arenapool_route_read_bytes"].samples[0].value
    errors = {s.labels["status"]: s.value for s in families["arenapool_route_errors"].samples}
    assert {"400": 1, "413": 2, "415": 4, "503": 3} == errors
    assert 2 == families["arenapool_route_in_flight_requests"].samples[0].value


def test_register_defaults_to_the_global_registry() -> None:
    """register() with no registry adds the collector to prometheus_client's REGISTRY."""
    collector = register(slab_pools=[])
    try:
        assert isinstance(collector, ArenapoolCollector)
        assert REGISTRY.get_sample_value("arenapool_rss_bytes") is not None
    finally:
        REGISTRY.unregister(collector)


def test_missing_prometheus_client_fails_loudly(run_python: RunPython) -> None:
    """Without prometheus_client, importing arenapool.metrics names the extra to install."""
    out = run_python(
        """
import json, sys
sys.modules["prometheus_client"] = None  # what an absent package looks like to import
try:
    import arenapool.metrics
except ImportError as exc:
    print(json.dumps(str(exc)))
"""
    )
    assert "arenapool.metrics needs prometheus_client: pip install 'arenapool[metrics]'" == out
