"""The cache of pymalloc's freed arenas (``arenapool._arenacache``).

pymalloc unmaps an arena when its last object dies, so a request that makes and drops
megabytes of small objects (a large JSON decode) maps and faults them in again every
time. The cache keeps the freed arenas for pymalloc to take again. These tests check
what it is for: the pages do not fault in again (the OS's own fault counter), the
objects made in reused arenas are intact, what it holds is bounded by its limit, and it
gives the memory back when asked (the OS's RSS). Each measuring test runs in a fresh
interpreter, so no other test's objects share its arenas. The compiled build caches; the
pure-Python build (``ARENAPOOL_NO_EXTENSIONS=1``) says why it cannot and changes
nothing; CI runs both.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from _governed import ClientFactory, governed_decoder, post_times, run_python, scrape

from arenapool import GovernorConfig, InvalidSize, _ext
from arenapool.memory import (
    ArenaCacheStats,
    cache_pymalloc_arenas,
    pymalloc_arena_cache,
    release_pymalloc_arenas,
)

COMPILED = not _ext.NO_EXTENSIONS
MiB = 1024 * 1024

# Run in a fresh interpreter: churn about 20 MiB of small objects (made, then dropped)
# with the cache at LIMIT, count the minor faults of the churns after the first, check
# the objects made in reused arenas, then give the cache back and read RSS around it.
CHURN = """
import gc, json, resource, sys
from arenapool.metrics import register
from arenapool.memory import (
    cache_pymalloc_arenas, current_rss, pymalloc_arena_cache, release_pymalloc_arenas,
)
gc.disable()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def churn(tag):
    junk = [("%d%s" % (i, tag)) * 3 for i in range(250_000)]
    ok = all(s == ("%d%s" % (i, tag)) * 3 for i, s in enumerate(junk))
    del junk
    return ok
keep = [("%d=" % i) * 5 for i in range(1000)]
installed = cache_pymalloc_arenas(int(sys.argv[1]))
ok = churn("a")
before = faults()
for tag in "bcde":
    ok = churn(tag) and ok
per_churn = (faults() - before) / 4
ok = ok and all(s == ("%d=" % i) * 5 for i, s in enumerate(keep))
rss_held = current_rss()
held = pymalloc_arena_cache()
given = release_pymalloc_arenas()
rss_after = current_rss()
print(json.dumps({
    "installed": installed, "ok": ok, "faults": per_churn, "held": vars(held),
    "given": given, "rss_held": rss_held, "rss_after": rss_after,
    "after": vars(pymalloc_arena_cache()),
}))
"""


def run_churn(limit: int) -> dict[str, Any]:
    return run_python(CHURN, str(limit))


def test_the_cache_stops_the_faults_and_gives_the_memory_back() -> None:
    """With the cache, churns after the first fault in a small fraction of the pages
    they fault in without it (the OS's count), every object made in a reused arena reads
    back as written, and a release gives back what the cache held: RSS drops by at least
    half of it, and the cache is empty."""
    cached = run_churn(64 * MiB)
    plain = run_churn(0)
    assert cached["ok"] is True
    assert plain["ok"] is True
    if not COMPILED:
        assert (False, False) == (cached["installed"], plain["installed"])
        assert cached["held"]["available"] is False
        assert "ARENAPOOL_NO_EXTENSIONS" in str(cached["held"]["reason"])
        assert 0 == cached["given"]
        return
    # about 20 MiB of strings each churn: some 5,000 pages without the cache
    assert plain["faults"] > 2000
    assert cached["faults"] < plain["faults"] / 3
    held = cached["held"]
    assert held["installed"] is True
    assert held["hits"] >= 4 * 10  # the four later churns reused arenas
    assert held["cached_arenas"] >= 10
    assert held["cached_bytes"] == held["cached_arenas"] * MiB
    assert held["limit"] == 64 * MiB
    assert cached["given"] == held["cached_bytes"]
    assert cached["rss_held"] - cached["rss_after"] >= cached["given"] // 2
    after = cached["after"]
    assert (0, 0) == (after["cached_arenas"], after["cached_bytes"])
    assert after["released"] == held["released"] + held["cached_arenas"]
    # limit 0: a pass-through, nothing kept
    assert (0, 0) == (plain["held"]["cached_arenas"], plain["held"]["kept"])
    assert plain["held"]["overflow"] > 0


def test_the_cache_holds_no_more_than_its_limit() -> None:
    """A 4 MiB cache keeps 4 arenas of the 20-odd each churn frees; the rest are unmapped
    as pymalloc would (``overflow``)."""
    small = run_churn(4 * MiB)
    assert small["ok"] is True
    if not COMPILED:
        assert small["installed"] is False
        return
    held = small["held"]
    assert (4, 4 * MiB, 4 * MiB) == (held["cached_arenas"], held["cached_bytes"], held["limit"])
    assert held["overflow"] > 0
    assert held["hits"] >= 4 * 4  # each later churn took the 4 back


def test_the_functions_refuse_what_makes_no_sense() -> None:
    """Limits outside 0-4 GiB and negative ages are refused in both builds."""
    with pytest.raises(ValueError, match="limit must be 0 to"):
        cache_pymalloc_arenas(-1)
    with pytest.raises(ValueError, match="limit must be 0 to"):
        cache_pymalloc_arenas(8 * 1024 * MiB)
    if COMPILED:
        with pytest.raises(ValueError, match="must not be negative"):
            release_pymalloc_arenas(older_than=-1.0)
    with pytest.raises(InvalidSize, match="arena_cache must be at most 4 GiB"):
        GovernorConfig(arena_cache="5GiB")
    with pytest.raises(InvalidSize, match="arena_cache_decay"):
        GovernorConfig(arena_cache_decay=-1.0)


def test_stats_say_whether_this_build_can_cache() -> None:
    found = pymalloc_arena_cache()
    assert isinstance(found, ArenaCacheStats)
    if COMPILED:
        assert (True, None) == (found.available, found.reason)
    else:
        assert found.available is False
        assert "ARENAPOOL_NO_EXTENSIONS" in str(found.reason)
        assert cache_pymalloc_arenas(64 * MiB) is False
        assert 0 == release_pymalloc_arenas()


def use_up_free_pools() -> list[object]:
    """Small objects until pymalloc has to map fresh arenas (through the installed cache):
    the empty pools that earlier tests left in this process's arenas are taken, so the
    objects made next land in arenas of their own and free them whole when they die.
    Without this a decode can fit in the leftovers, and no arena comes or goes."""
    start = pymalloc_arena_cache()
    ballast: list[object] = []
    for _ in range(400):  # about 0.6 MiB each: 240 MiB at most
        ballast.append([(i,) for i in range(10_000)])
        now = pymalloc_arena_cache()
        if now.hits + now.misses - start.hits - start.misses >= 2:
            return ballast
    msg = "pymalloc mapped no arena for 240 MiB of small objects: is the arena cache installed?"
    raise AssertionError(msg)


def big_doc(records: int) -> bytes:
    return orjson.dumps(
        {
            "records": [
                {"value": i, "tag": f"t{i:07d}", "pad": "x" * (i % 17)} for i in range(records)
            ]
        }
    )


async def test_a_server_reuses_arenas_and_its_governor_gives_them_back(
    aiohttp_client: ClientFactory,
) -> None:
    """A real server decoding 2 MiB bodies: its governor installs the cache, later
    requests take arenas the earlier ones freed (hits), an idle check gives them all
    back, and stopping the last governor turns the cache into a pass-through."""
    client, governor = await governed_decoder(
        aiohttp_client, "arenacache-test", "records", arena_cache="64MiB"
    )
    body = big_doc(30_000)
    assert len(body) > 1 * MiB
    ballast = use_up_free_pools() if COMPILED else []
    before = pymalloc_arena_cache()
    await post_times(client, body, 4, 30_000)
    stats = governor.stats()["arena_cache"]
    if not COMPILED:
        assert stats["state"] == "needs the compiled arenapool._arenacache_c " + (
            "(ARENAPOOL_NO_EXTENSIONS is set)"
        )
        assert 0 == stats["hits"]
        return
    assert "on" == stats["state"]
    assert stats["hits"] - before.hits >= 3  # the later decodes reused arenas
    # the decodes' freed arenas went into the cache
    assert stats["kept"] - before.kept >= 3
    # some 10 MiB of small objects in fresh arenas, dropped: those arenas are kept
    junk = [str(i) * 3 for i in range(250_000)]
    del junk
    stats = governor.stats()["arena_cache"]
    assert stats["cached_bytes"] > 0
    scraped = scrape(governor)
    assert scraped["arenapool_governor_arena_cache_hits_total"] >= stats["hits"]
    assert scraped["arenapool_governor_arena_cache_bytes"] == stats["cached_bytes"]
    del ballast  # its arenas go to the cache too; the idle check below takes them all
    await governor.check()  # idle (nothing in flight, idle_after=0): all of it goes
    stats = governor.stats()["arena_cache"]
    assert 0 == stats["cached_bytes"]
    assert stats["released_bytes"] > 0
    await governor.stop()
    assert 0 == pymalloc_arena_cache().limit  # the last user stopped: a pass-through
