"""The large-block region (``arenapool._blockcache``): ``PyMem_Malloc``'s large blocks,
a JSON decoder's work buffer first, from a region of arenapool's own.

orjson takes a buffer of about 12 times the document on every ``loads``; above glibc's
largest mmap threshold (a document of about 2.7 MiB) glibc maps it afresh each time and
every page it touches faults in again. These tests check what the region is for: the
buffer's pages do not fault in again (the OS's own fault counter), what it holds between
requests is bounded by ``warm``, it gives the pages back when asked (mincore, and the
OS's RSS), blocks grown and shrunk through it keep their contents, and ``tracemalloc``
cannot knock it out. Each measuring test runs in a fresh interpreter. The compiled build
serves; the pure-Python build (``ARENAPOOL_NO_EXTENSIONS=1``) says why it cannot and
changes nothing; CI runs both.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from _governed import (
    ClientFactory,
    governed_decoder,
    hand_calibrated,
    lend_and_calibrate,
    post_times,
    run_python,
    scrape,
)

from arenapool import GovernorConfig, InvalidSize, SlabPool, _ext, _slab
from arenapool.memory import (
    BlockCacheStats,
    cache_large_blocks,
    large_block_cache,
    read_breakdown,
    release_large_blocks,
)

COMPILED = not _ext.NO_EXTENSIONS
MiB = 1024 * 1024

# Run in a fresh interpreter: decode a 3.5 MiB document five times with the region at
# WARM (or without it: WARM < 0), count the minor faults of the decodes after the first,
# check the results (the first in full, the others by their size and last row), then
# give the region back and read RSS around it. pymalloc's freed arenas are cached in
# both runs, so that the objects' pages do not fault either and what is left is the
# work buffer's.
DECODE = """
import json, resource, sys
import orjson
from arenapool.memory import (
    cache_large_blocks, cache_pymalloc_arenas, current_rss, large_block_cache,
    release_large_blocks,
)
from arenapool._blockcache import take_spread
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
warm = int(sys.argv[1])
huge = len(sys.argv) < 3 or sys.argv[2] == "huge"
doc = orjson.dumps(
    {"rows": [{"id": i, "tag": "t%07d" % i, "v": i / 7} for i in range(70_000)]}
)
cache_pymalloc_arenas(256 * 1024 * 1024)
installed = cache_large_blocks(warm, huge_pages=huge) if warm >= 0 else False
first = orjson.loads(doc)
ok = orjson.dumps(first) == doc
del first
before = faults()
for _ in range(4):
    found = orjson.loads(doc)
    ok = ok and len(found["rows"]) == 70_000 and found["rows"][-1]["tag"] == "t0069999"
    del found
per_decode = (faults() - before) / 4
held = large_block_cache()
spread = take_spread()
rss_held = current_rss()
given = release_large_blocks()
print(json.dumps({
    "installed": installed, "ok": ok, "faults": per_decode, "size": len(doc),
    "held": held.to_dict(), "given": given, "rss_held": rss_held,
    "spread": [spread.freed, spread.warm, spread.by_mib], "again": take_spread().by_mib,
    "rss_after": current_rss(), "after": large_block_cache().to_dict(),
}))
"""


def test_the_region_stops_the_buffer_faults_and_gives_the_pages_back() -> None:
    """With the region warm enough for the buffer, decodes after the first fault in a
    small fraction of the pages they fault in with glibc alone (the OS's count), every
    result is right, and a release gives back what the region held: RSS drops by at
    least half of it and no page of it stays resident."""
    warm = run_python(DECODE, str(64 * MiB))
    plain = run_python(DECODE, "-1")
    assert warm["ok"] is True
    assert plain["ok"] is True
    if not COMPILED:
        assert warm["installed"] is False
        assert warm["held"]["available"] is False
        assert "ARENAPOOL_NO_EXTENSIONS" in str(warm["held"]["reason"])
        assert 0 == warm["given"]
        return
    # glibc maps the 40 MiB buffer afresh every time: the document's copy and its
    # values, some 3 times the document, fault in page by page
    buffer_pages = 3 * warm["size"] // 4096
    assert plain["faults"] > buffer_pages // 2
    assert warm["faults"] < plain["faults"] / 4
    held = warm["held"]
    assert (True, 64 * MiB, 0) == (held["installed"], held["warm"], held["in_use"])
    assert held["served"] >= 5  # one buffer per decode
    assert 0 == held["passed"]
    assert held["peak"] >= 12 * warm["size"]  # orjson's buffer: about 12 x the document
    assert held["resident"] >= buffer_pages * 4096 // 2  # the last buffer's pages, warm
    assert warm["given"] > 0
    assert warm["rss_held"] - warm["rss_after"] >= held["resident"] // 2
    assert 0 == warm["after"]["resident"]
    # nothing reached past a 64 MiB bound (and in huge pages nothing is counted)
    assert (0, 0) == (held["over_warm"], held["over_warm_bytes"])


def test_in_huge_pages_a_region_that_keeps_nothing_warm_still_saves_the_faults() -> None:
    """With ``warm`` at 0 every freed buffer's pages go back at once. In 4 KiB pages each
    decode then faults all of them in again, as glibc's fresh mappings do; in huge pages
    (the default, where the kernel's THP mode allows them) it faults them in 2 MiB at a
    time: a small fraction of the faults, and still nothing held between decodes."""
    small = run_python(DECODE, "0", "small")
    huge = run_python(DECODE, "0", "huge")
    assert small["ok"] is True
    assert huge["ok"] is True
    if not COMPILED:
        assert huge["installed"] is False
        return
    assert small["held"]["huge_pages"] is False
    assert huge["held"]["huge_pages"] is _slab.thp_available()
    buffer_pages = 3 * small["size"] // 4096
    assert small["faults"] > buffer_pages // 2
    for found in (small, huge):
        held = found["held"]
        assert (0, 0) == (held["warm"], held["in_use"])
        assert held["served"] >= 5
        assert held["resident"] < 2 * MiB  # given back as each buffer was freed
    # In 4 KiB pages every freed buffer had its pages above the bound (0) in use, and
    # what went back is what the next decode faulted in again: the OS's count of the
    # four decodes after the first, against the region's of all five.
    held = small["held"]
    assert held["over_warm"] >= 5
    given_per_decode = held["over_warm_bytes"] / held["over_warm"]
    assert small["faults"] * 4096 / 2 < given_per_decode < small["faults"] * 4096 * 2
    # The same pages by where they lay, a MiB a bucket: all of them, from the region's
    # start (the buffer's copy of the document) to past the document's size; read once.
    freed, warm, by_mib = small["spread"]
    assert (held["freed"], 0) == (freed, warm)
    assert held["over_warm_bytes"] == sum(by_mib)
    assert by_mib[0] > 0
    assert len(by_mib) > small["size"] // MiB
    assert [] == small["again"]
    if huge["held"]["huge_pages"]:
        assert huge["faults"] < small["faults"] / 8


# Fresh interpreter: the region with a small warm bound; a decode, then lists whose item
# arrays grow and shrink through PyMem_Realloc inside the region.
BOUNDS = """
import json, sys
import orjson
from arenapool.memory import cache_large_blocks, large_block_cache
cache_large_blocks(1024 * 1024, huge_pages=False)
doc = orjson.dumps([{"k": i, "s": "x" * (i % 13)} for i in range(60_000)])
ok = orjson.loads(doc)[-1] == {"k": 59_999, "s": "x" * (59_999 % 13)}
after_decode = large_block_cache().to_dict()
grown = list(range(50_000))        # presized: PyMem_Malloc, from the region
served = large_block_cache().served
grown.extend(range(50_000, 400_000))  # PyMem_Realloc of a region block: moved, copied
ok = ok and grown == list(range(400_000))
moved = large_block_cache().served - served
del grown[1000:]                    # shrinks in place
ok = ok and grown == list(range(1000))
live = large_block_cache().in_use
del grown
print(json.dumps({
    "ok": ok, "after_decode": after_decode, "moved": moved, "live": live,
    "end": large_block_cache().to_dict(),
}))
"""


def test_the_region_keeps_no_more_than_warm_and_blocks_keep_their_contents() -> None:
    """With ``warm`` at 1 MiB a decode's 5 MiB buffer leaves at most 1 MiB resident once
    freed, and the region counts the pages it had in use above the bound; a list's item
    array grown through the region (``PyMem_Realloc``: a new block, the old contents
    copied) and shrunk again reads back as written, and once the list is gone nothing of
    the region is in use."""
    found = run_python(BOUNDS)
    assert found["ok"] is True
    if not COMPILED:
        assert found["end"]["installed"] is False
        return
    decoded = found["after_decode"]
    assert decoded["served"] >= 1
    assert decoded["peak"] > 4 * MiB
    assert 0 == decoded["in_use"]
    assert decoded["resident"] <= 1 * MiB
    assert decoded["given_back"] > 0
    # the decode's buffer had pages in use past the 1 MiB bound: counted as they went
    assert 1 == decoded["over_warm"]
    assert 1 * MiB < decoded["over_warm_bytes"] <= decoded["given_back"]
    assert found["moved"] >= 1
    assert found["live"] > 0
    end = found["end"]
    assert 0 == end["in_use"]
    assert end["resident"] <= 1 * MiB


# Fresh interpreter: tracemalloc tracing refuses the region; tracemalloc started after it
# wraps it and, stopped, puts it back, while blocks of the region stay alive.
TRACING = """
import json, tracemalloc
import orjson
from arenapool.memory import cache_large_blocks, large_block_cache
doc = orjson.dumps([{"k": i} for i in range(40_000)])
tracemalloc.start()
refused = cache_large_blocks(4 * 1024 * 1024)
reason = large_block_cache().reason
tracemalloc.stop()
installed = cache_large_blocks(4 * 1024 * 1024)
kept = list(range(100_000))      # a region block made before tracing starts
tracemalloc.start()
ok = orjson.loads(doc) == [{"k": i} for i in range(40_000)]
traced = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
ok = ok and orjson.loads(doc)[-1] == {"k": 39_999} and kept == list(range(100_000))
del kept
print(json.dumps({
    "refused": refused, "reason": reason, "installed": installed, "ok": ok,
    "traced": traced, "end": large_block_cache().to_dict(),
}))
"""


def test_tracemalloc_cannot_knock_the_region_out() -> None:
    """While tracemalloc traces, the region is not installed (its ``stop()`` would put
    back the allocator it found, with region blocks alive) and says why; installed
    first, it keeps serving through a tracemalloc start and stop, tracemalloc sees its
    blocks, and a block made before the tracing is freed into it afterwards."""
    found = run_python(TRACING)
    assert found["ok"] is True
    assert found["refused"] is False
    if not COMPILED:
        assert found["installed"] is False
        return
    assert "tracemalloc" in str(found["reason"])
    assert found["installed"] is True
    assert found["traced"] > 12 * 40_000 * 9  # the decode's buffer, traced
    end = found["end"]
    assert end["served"] >= 3  # the list, and the buffer of each decode
    assert 0 == end["in_use"]


def test_the_functions_refuse_what_makes_no_sense() -> None:
    """Bounds outside the region and negative floors are refused in both builds."""
    with pytest.raises(ValueError, match="warm must be 0 to"):
        cache_large_blocks(-1)
    with pytest.raises(ValueError, match="warm must be 0 to"):
        cache_large_blocks(2 * 1024 * MiB)
    with pytest.raises(ValueError, match="min_size must be 4096 to"):
        cache_large_blocks(MiB, min_size=100)
    with pytest.raises(ValueError, match="keep must not be negative"):
        release_large_blocks(keep=-1)
    with pytest.raises(InvalidSize, match="block_cache must be at most 1 GiB"):
        GovernorConfig(block_cache="2GiB")
    with pytest.raises(InvalidSize, match="block_cache_min must be 4 KiB"):
        GovernorConfig(block_cache_min="1KiB")
    with pytest.raises(InvalidSize, match="block_cache_fit_budget must be positive"):
        GovernorConfig(block_cache_fit_budget=0)
    with pytest.raises(InvalidSize, match="block_cache_fit_hold must not be negative"):
        GovernorConfig(block_cache_fit_hold=-1.0)


def test_stats_say_whether_this_build_can_serve() -> None:
    found = large_block_cache()
    assert isinstance(found, BlockCacheStats)
    if COMPILED:
        assert found.available is True
    else:
        assert found.available is False
        assert "ARENAPOOL_NO_EXTENSIONS" in str(found.reason)
        assert cache_large_blocks(4 * MiB) is False
        assert 0 == release_large_blocks()


def big_doc(rows: int) -> bytes:
    return orjson.dumps({"rows": [{"id": i, "tag": f"t{i:07d}", "v": i / 7} for i in range(rows)]})


async def test_a_server_decodes_from_the_region_and_its_governor_gives_it_back(
    aiohttp_client: ClientFactory,
) -> None:
    """A real server decoding 3.5 MiB bodies: its governor installs the region, every
    decode's buffer comes from it, the breakdown and Prometheus show it, an idle check
    gives its pages back, and stopping the last governor makes it a pass-through."""
    client, governor = await governed_decoder(
        aiohttp_client, "blockcache-test", "rows", block_cache="64MiB"
    )
    body = big_doc(70_000)
    assert len(body) > 3 * MiB
    before = large_block_cache()
    await post_times(client, body, 3, 70_000)
    stats = governor.stats()["block_cache"]
    if not COMPILED:
        assert stats["state"] == "needs the compiled arenapool._blockcache_c " + (
            "(ARENAPOOL_NO_EXTENSIONS is set)"
        )
        assert 0 == stats["served"]
        return
    assert ("on", 64 * MiB) == (stats["state"], stats["warm"])
    assert stats["served"] - before.served >= 3  # each decode's buffer
    assert stats["resident"] > 3 * MiB  # the last buffer's pages, kept warm
    assert read_breakdown().parts["large_blocks"] > 3 * MiB
    scraped = scrape(governor)
    assert scraped["arenapool_governor_block_cache_served_total"] >= stats["served"]
    assert scraped["arenapool_governor_block_cache_resident_bytes"] > 0
    assert scraped["arenapool_governor_block_cache_over_warm_total"] == stats["over_warm"]
    assert (
        scraped["arenapool_governor_block_cache_over_warm_bytes_total"] == stats["over_warm_bytes"]
    )
    await governor.check()  # idle (nothing in flight, idle_after=0): the pages go back
    stats = governor.stats()["block_cache"]
    assert 0 == stats["resident"]
    assert stats["released_bytes"] > 0
    await governor.stop()
    assert large_block_cache().min_size >= 1 << 30  # the last user stopped: pass-through


async def test_under_a_spread_of_sizes_the_region_keeps_less_warm(
    aiohttp_client: ClientFactory,
) -> None:
    """``block_cache_spread``: once the server's pool finds its lends spread over sizes
    (real lends, the pool's own calibration pass), the governor's next check lowers the
    region's warm bound and gives back the free pages above it at once, while requests
    are in flight; a large document's decode then reaches past the bound and says so
    (``over_warm``). Once the pool sees one steady size again, the next check puts the
    bound back, and the next decode's pages stay warm."""
    with SlabPool("64MiB", decay=None, retain=0) as pool:
        client, governor = await governed_decoder(
            aiohttp_client,
            "spread-bound-test",
            "rows",
            pool=pool,
            block_cache="64MiB",
            block_cache_spread="2MiB",
        )
        body = big_doc(70_000)
        await post_times(client, body, 2, 70_000)
        stats = governor.stats()["block_cache"]
        if not COMPILED:
            assert stats["state"].startswith("needs the compiled arenapool._blockcache_c")
            assert (None, False, 0) == (
                stats["spread_warm"],
                stats["spread_bound"],
                stats["spread_moves"],
            )
            return
        assert (64 * MiB, 2 * MiB, False) == (
            stats["warm"],
            stats["spread_warm"],
            stats["spread_bound"],
        )
        assert stats["resident"] > 3 * MiB  # the last buffer, kept warm

        async def check_under_load() -> dict[str, Any]:
            """A check with a request in flight (no idle release of the region)."""
            governor.note_request_start()
            try:
                await governor.check()
            finally:
                governor.note_request_end()
            region: dict[str, Any] = governor.stats()["block_cache"]
            return region

        start = hand_calibrated(pool)
        spread = [64 * 1024 << i for i in range(5)] + [5 * MiB // 4, 3 * MiB // 2]
        assert lend_and_calibrate(pool, spread, 10, start + 1.0)
        stats = await check_under_load()
        assert (2 * MiB, True, 1) == (stats["warm"], stats["spread_bound"], stats["spread_moves"])
        assert stats["resident"] <= 2 * MiB  # the pages above the bound went back at once
        over = stats["over_warm"]
        await post_times(client, body, 1, 70_000)
        stats = governor.stats()["block_cache"]
        assert stats["over_warm"] == over + 1  # the decode reached past the lowered bound
        assert stats["resident"] <= 2 * MiB

        assert not lend_and_calibrate(pool, [1 * MiB] * 3, 40, start + 2.0)
        stats = await check_under_load()
        assert (64 * MiB, False, 2) == (stats["warm"], stats["spread_bound"], stats["spread_moves"])
        await post_times(client, body, 1, 70_000)
        stats = governor.stats()["block_cache"]
        assert stats["over_warm"] == over + 1
        assert stats["resident"] > 3 * MiB
        scraped = scrape(governor)
        assert (64 * MiB, 2) == (
            scraped["arenapool_governor_block_cache_warm_bytes"],
            scraped["arenapool_governor_block_cache_spread_moves_total"],
        )
        actions = [a for a in governor.stats()["actions"] if a["action"] == "block_cache_spread"]
        assert [("lower", 2 * MiB), ("raise", 64 * MiB)] == [
            (a["reason"], a["warm"]) for a in actions
        ]


def test_config_checks_the_spread_bound() -> None:
    """``block_cache_spread`` is a size up to the region's 1 GiB, or ``None``."""
    assert GovernorConfig(block_cache_spread=None).block_cache_spread is None
    assert GovernorConfig(block_cache_spread="0").block_cache_spread == "0"
    with pytest.raises(InvalidSize, match="block_cache_spread must be at most 1 GiB"):
        GovernorConfig(block_cache_spread="2GiB")
    with pytest.raises(InvalidSize):
        GovernorConfig(block_cache_spread="lots")


# Fresh interpreter: an address-space limit (``ulimit -v``) leaves no room for the region.
NO_ROOM = """
import json, resource
import psutil
from arenapool.memory import cache_large_blocks, large_block_cache
room = psutil.Process().memory_info().vms + 256 * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (room, room))
installed = cache_large_blocks(4 * 1024 * 1024)
found = large_block_cache()
print(json.dumps({"installed": installed, "reason": found.reason, "on": found.installed}))
"""


def test_no_room_for_the_region_is_said_not_raised() -> None:
    """Where the address space is limited below the region's 1 GiB (``ulimit -v``; strict
    overcommit does the same), installing returns False and the stats say why; the
    process goes on with glibc serving every block."""
    found = run_python(NO_ROOM)
    assert (False, False) == (found["installed"], found["on"])
    if COMPILED:
        assert "could not reserve the region" in str(found["reason"])
    else:
        assert "ARENAPOOL_NO_EXTENSIONS" in str(found["reason"])


async def test_the_warm_bound_follows_how_far_the_decodes_reach(
    aiohttp_client: ClientFactory,
) -> None:
    """With ``block_cache_fit`` the region's warm bound starts at ``block_cache`` and
    halves at each judgement that finds almost nothing in use above it, to 1 MiB when
    the decodes all stay under it. A run of large documents that reach past it then
    raises it to the lowest MiB that keeps what they give back in use within half again
    the budget; a step down from there goes too far, and the next judgement puts it
    back."""
    budget = 128 * 1024
    client, governor = await governed_decoder(
        aiohttp_client,
        "fit-test",
        "rows",
        block_cache="8MiB",
        block_cache_fit=True,
        block_cache_fit_budget=budget,
        block_cache_fit_hold=0,
    )
    small = big_doc(6_000)  # its buffer touches under 1 MiB of the region
    large = big_doc(30_000)  # about 4.5 MiB

    async def judge(body: bytes, count: int) -> list[dict[str, Any]]:
        """20 decodes of ``body`` (what a judgement needs), a judgement, and its moves."""
        before = governor.stats()["block_cache"]["fit_moves"]
        await post_times(client, body, 20, count)
        await governor.check()
        moves = [a for a in governor.stats()["actions"] if a["action"] == "block_cache_fit"]
        return moves[len(moves) - (governor.stats()["block_cache"]["fit_moves"] - before) :]

    await governor.check()  # the first window starts here
    halvings = [await judge(small, 6_000) for _ in range(4)]
    stats = governor.stats()["block_cache"]
    assert stats["fit"] is True
    if not COMPILED:
        assert "ARENAPOOL_NO_EXTENSIONS" in stats["state"]
        assert 0 == stats["fit_moves"]
        return
    assert 1 * MiB == stats["warm"]
    steps = [(m["reason"], m["warm_before"] // MiB, m["warm"] // MiB) for j in halvings for m in j]
    assert [("lower", 8, 4), ("lower", 4, 2), ("lower", 2, 1)] == steps
    (rise,) = await judge(large, 30_000)  # each one reached MiBs past the bound
    assert ("raise", 1 * MiB) == (rise["reason"], rise["warm_before"])
    assert rise["over_per_block"] > budget
    raised = large_block_cache()
    assert 2 * MiB <= raised.warm == rise["warm"] <= 8 * MiB
    # under the raised bound, what they give back in use is within half again the
    # budget (what a bound may give back before it rises) ...
    moves = await judge(large, 30_000)
    after = large_block_cache()
    assert after.freed - raised.freed >= 20
    per_block = (after.over_warm_bytes - raised.over_warm_bytes) / (after.freed - raised.freed)
    assert per_block <= budget * 1.5
    if per_block > budget:  # (between the two marks the bound stays)
        assert [] == moves
        await governor.stop()
        return
    # ... and it is the lowest such MiB: the step down it allowed gives back more, and
    # the next judgement puts the bound back
    (step,) = moves
    assert ("lower", raised.warm) == (step["reason"], step["warm_before"])
    assert step["warm"] < raised.warm
    (back,) = await judge(large, 30_000)
    assert ("raise", raised.warm) == (back["reason"], back["warm"])
    assert back["over_per_block"] > budget * 1.5
    await governor.stop()
