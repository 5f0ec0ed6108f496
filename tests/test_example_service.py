"""The example service (integrations/example_service/app.py) in every mode, over a socket."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from _example import EXAMPLE, load_example
from aiohttp.test_utils import TestClient

from arenapool import _ext
from harness.workload import Body, make_body

example = load_example()

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.mark.parametrize("mode", example.MODES)
@pytest.mark.parametrize("size", [200, 50_000, 600_000])
async def test_every_mode_gives_the_expected_summary(
    aiohttp_client: ClientFactory, mode: str, size: int
) -> None:
    """Small (inline), medium and large bodies get the summary the client expects."""
    client = await aiohttp_client(example.make_app(mode, governor=False))
    body = make_body(size, random.Random(size))
    response = await client.post("/ingest", data=body.data)
    assert (200, body.expected()) == (response.status, await response.json())


@pytest.mark.parametrize("mode", example.MODES)
@pytest.mark.parametrize(
    "data", [b'{"records": [{"value": "x", "tag": "t"}]}', b'{"records": 3}', b"[1, 2"]
)
async def test_every_mode_refuses_a_bad_body_with_400(
    aiohttp_client: ClientFactory, mode: str, data: bytes
) -> None:
    """A wrong shape or malformed JSON is a 400 with a JSON error body, in every mode."""
    client = await aiohttp_client(example.make_app(mode, governor=False))
    response = await client.post("/ingest", data=data)
    assert 400 == response.status
    assert {"error", "detail"} <= set(await response.json())


async def test_trim_loop_and_governor_options_keep_the_answers(
    aiohttp_client: ClientFactory,
) -> None:
    """The malloc_trim loop (orjson+trim), the governor's busy-trim and mmap options and
    the do-nothing middleware (orjson+noop) install without changing what the service
    answers."""
    body = make_body(50_000, random.Random(5))
    apps = [
        example.make_app("orjson", trim_interval=0.05),
        example.make_app("arenapool", busy_trim=None, mmap_threshold="1MiB"),
        example.make_app("orjson", noop_middleware=True),
    ]
    plain = example.make_app("orjson")
    assert len(plain.cleanup_ctx) + 1 == len(apps[0].cleanup_ctx)
    assert [example.do_nothing] == list(apps[2].middlewares)
    for app in apps:
        client = await aiohttp_client(app)
        response = await client.post("/ingest", data=body.data)
        assert (200, body.expected()) == (response.status, await response.json())


async def ingest_and_stats(
    client: TestClient[Any, Any], body: Body
) -> tuple[int, Any, dict[str, Any]]:
    """POST ``body`` to ``/ingest``, then read ``/_arenapool/stats`` (token ``t``): the
    status, the answer and the stats."""
    response = await client.post("/ingest", data=body.data)
    answer = await response.json()
    stats = await client.get("/_arenapool/stats", headers={"Authorization": "Bearer t"})
    return response.status, answer, await stats.json()


async def test_the_lean_pool_options_reach_the_pool(aiohttp_client: ClientFactory) -> None:
    """``retain="0"`` and ``calibrate=False`` (the ``arenapool-lean`` mode's ``--retain 0
    --no-calibrate``) make the service's pool the leanest one, which its stats say, and
    the answers stay the same."""
    client = await aiohttp_client(
        example.make_app("arenapool", retain="0", calibrate=False, admin_token="t")
    )
    body = make_body(600_000, random.Random(7))
    status, answer, stats = await ingest_and_stats(client, body)
    (pool,) = [p for p in stats["slab_pools"] if p["name"] == "ingest"]

    assert (200, body.expected()) == (status, answer)
    assert (0, False) == (pool["retain"], pool["calibrate"])


@pytest.mark.parametrize(("mid_classes", "block"), [(1, 1024 * 1024), (4, 640 * 1024)])
async def test_the_mid_classes_reach_the_pool(
    aiohttp_client: ClientFactory, mid_classes: int, block: int
) -> None:
    """``mid_classes`` (``--mid-classes``, the ``arenapool-fine`` mode's 4) sets the
    pool's spacing above 64 KiB: a 600 kB body lands in a 1 MiB block by default, in a
    640 KiB one with 4 classes per doubling; the answers stay the same."""
    client = await aiohttp_client(
        example.make_app("arenapool", mid_classes=mid_classes, admin_token="t")
    )
    body = make_body(600_000, random.Random(7))
    status, answer, stats = await ingest_and_stats(client, body)
    (pool,) = [p for p in stats["slab_pools"] if p["name"] == "ingest"]
    used = [c["size"] for c in pool["classes"] if c["size"] > 64 * 1024 and c["idle_blocks"]]

    assert (200, body.expected()) == (status, answer)
    assert (mid_classes, [block]) == (pool["mid_classes"], used)


async def test_the_busy_trim_interval_reaches_the_governor(aiohttp_client: ClientFactory) -> None:
    """``busy_trim_interval`` (``--busy-trim-interval``) becomes the governor's least
    time between two trims under load, which its stats say; the answers stay the same.
    The current interval may already have backed off (a trim that freed too little
    doubles it), so it is only bounded by the least and the most."""
    client = await aiohttp_client(
        example.make_app("arenapool", busy_trim_interval=4.0, admin_token="t")
    )
    body = make_body(50_000, random.Random(9))
    status, answer, stats = await ingest_and_stats(client, body)
    busy = stats["governor"]["busy_trim"]

    assert (200, body.expected()) == (status, answer)
    assert (4.0, 32.0) == (busy["min_interval"], busy["max_interval"])
    assert 4.0 <= busy["interval"] <= 32.0


@pytest.mark.parametrize("swing", [True, False])
async def test_the_busy_trim_swing_option_reaches_the_governor(
    aiohttp_client: ClientFactory, swing: bool
) -> None:
    """``busy_trim_swing`` (``--no-busy-trim-swing`` in the ``arenapool-no-swing`` mode)
    says whether the governor's busy trims learn the free heap's swing, which its stats
    say; the answers stay the same."""
    client = await aiohttp_client(
        example.make_app("arenapool", busy_trim_swing=swing, admin_token="t")
    )
    body = make_body(50_000, random.Random(9))
    status, answer, stats = await ingest_and_stats(client, body)

    assert (200, body.expected()) == (status, answer)
    assert swing is stats["governor"]["busy_trim"]["learn_swing"]


@pytest.mark.parametrize(("arena_cache", "limit"), [("32MiB", 32 * 1024 * 1024), (None, 0)])
async def test_the_arena_cache_option_reaches_the_governor(
    aiohttp_client: ClientFactory, arena_cache: str | None, limit: int
) -> None:
    """``arena_cache`` (``--arena-cache``, ``none`` in the ``arenapool-no-arena-cache``
    mode) sets the governor's cache of pymalloc's freed arenas: on at its limit in the
    compiled build (the pure-Python build says why it cannot), off when ``None``; the
    answers stay the same."""
    client = await aiohttp_client(
        example.make_app("arenapool", arena_cache=arena_cache, admin_token="t")
    )
    body = make_body(600_000, random.Random(11))
    status, answer, stats = await ingest_and_stats(client, body)
    cache = stats["governor"]["arena_cache"]

    assert (200, body.expected()) == (status, answer)
    if arena_cache is None:
        assert "off" == cache["state"]
    elif _ext.NO_EXTENSIONS:
        assert "ARENAPOOL_NO_EXTENSIONS" in cache["state"]
    else:
        assert ("on", limit) == (cache["state"], cache["limit"])


@pytest.mark.parametrize(
    ("block_cache", "spread", "warm", "spread_warm"),
    [
        ("16MiB", "3MiB", 16 * 1024 * 1024, 3 * 1024 * 1024),
        ("16MiB", None, 16 * 1024 * 1024, None),
        (None, "3MiB", 0, None),
    ],
)
async def test_the_block_cache_option_reaches_the_governor(
    aiohttp_client: ClientFactory,
    block_cache: str | None,
    spread: str | None,
    warm: int,
    spread_warm: int | None,
) -> None:
    """``block_cache`` (``--block-cache``, ``none`` in the ``arenapool-no-block-cache``
    mode) sets the governor's large-block region: on with its warm bound in the compiled
    build (the pure-Python build says why it cannot), off when ``None``; the answers stay
    the same. ``block_cache_spread`` (``--block-cache-spread``, ``none`` in the
    ``arenapool-no-spread-bound`` mode) sets its bound under a spread of sizes."""
    client = await aiohttp_client(
        example.make_app(
            "arenapool", block_cache=block_cache, block_cache_spread=spread, admin_token="t"
        )
    )
    body = make_body(600_000, random.Random(12))
    status, answer, stats = await ingest_and_stats(client, body)
    region = stats["governor"]["block_cache"]

    assert (200, body.expected()) == (status, answer)
    if block_cache is None:
        assert "off" == region["state"]
    elif _ext.NO_EXTENSIONS:
        assert "ARENAPOOL_NO_EXTENSIONS" in region["state"]
    else:
        assert ("on", warm) == (region["state"], region["warm"])
        assert region["served"] >= 1  # the decoder's work buffer came from the region
        assert (spread_warm, False) == (region["spread_warm"], region["spread_bound"])


def refused(*options: str) -> str:
    """Start the service in arenapool mode with ``options``; it must refuse them before it
    starts (exit status 2, no traceback). Its stderr: argparse's message."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--mode", "arenapool", *options],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (2, False) == (result.returncode, "Traceback" in result.stderr), result.stderr
    return result.stderr


@pytest.mark.parametrize("option", ["--spread-trim-every", "--warm-rate", "--warm-share"])
def test_a_number_option_refuses_a_word_with_argparses_message(option: str) -> None:
    """The options that take a number or ``none`` refuse anything else before the
    service starts: exit status 2 and argparse's message naming the option, not a
    traceback."""
    assert f"argument {option}: expected a number or 'none', got 'soon'" in refused(option, "soon")


@pytest.mark.parametrize(
    ("option", "words"),
    [
        ("--budget", "a size like '8MiB'"),
        ("--limit", "a size like '8MiB'"),
        ("--mmap-threshold", "a size like '8MiB'"),
        ("--retain", "a size like '8MiB' or 'none'"),
        ("--busy-trim", "a size like '8MiB' or 'none'"),
        ("--arena-cache", "a size like '8MiB' or 'none'"),
        ("--block-cache", "a size like '8MiB' or 'none'"),
    ],
)
def test_a_size_option_refuses_a_word_with_argparses_message(option: str, words: str) -> None:
    """The options that take a size (or ``none``) refuse anything else before the service
    starts, as the number options do: exit status 2, argparse's message naming the
    option."""
    assert f"argument {option}: expected {words}, got 'lots'" in refused(option, "lots")


def test_a_setting_arenapool_refuses_ends_with_its_message_not_a_traceback() -> None:
    """A well-formed size arenapool refuses (a budget of 0) is reported by argparse with
    arenapool's own words, exit status 2."""
    assert "error: budget must be positive, got '0'" in refused("--budget", "0")


def test_sizes_take_the_units_arenapool_takes() -> None:
    """The service reads sizes as arenapool does: binary units and their one-letter
    forms in powers of 1024, decimal ones in powers of 1000."""
    assert [8 * 2**20, 8 * 2**20, 8 * 10**6, 3 * 2**10, 3000, 2**40, 512] == [
        example.parse_size(text) for text in ("8MiB", "8m", "8MB", "3KiB", "3kB", "1TiB", "512")
    ]
