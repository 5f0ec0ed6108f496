"""Integrity: every answer is checked against what was sent (the server hashes the body it
read into its arena and counts what it parsed), across slow readers, concurrent large
bodies and injected faults. ``benchmarks/chaos.py`` runs the same checks at 20,000.
"""

from __future__ import annotations

from harness.hostile import hostile_server
from harness.idle import wait_idle
from harness.mix import FAULT_MIX, OUTCOME, run_mix

MiB = 1024 * 1024
SERVER = {"budget": "256MiB", "limit": "2MiB", "body_timeout": 10.0, "queue_timeout": 5.0}


async def test_two_thousand_answers_none_corrupted() -> None:
    """2,100 valid requests (about 2% large bodies, 1% slow readers of a large echoed
    response, a fifth chunked) at 16 concurrent: every one answered 200 with the hash,
    length and item count of what was sent, and the pool ends idle."""
    async with hostile_server(**SERVER) as srv:
        tally = await run_mix(
            srv.port, requests=2100, concurrency=16, seed=7, faults={}, large_share=0.02
        )
        assert (0, 0, {"200": 2100}) == (tally.corrupted, tally.unexpected, tally.outcomes)
        assert tally.sent["valid_large"] > 20
        assert tally.sent["slow_reader"] > 5
        await wait_idle(srv.pool, [srv.objects])


async def test_concurrent_large_bodies_are_never_mixed() -> None:
    """48 bodies of 256 KiB to 1.5 MiB, 16 in flight, a quarter of them echoed back to
    slow readers: every answer matches its own body byte for byte."""
    async with hostile_server(**SERVER) as srv:
        tally = await run_mix(
            srv.port,
            requests=48,
            concurrency=16,
            seed=11,
            faults={},
            large_share=0.75,
            slow_share=0.25,
        )
        assert (0, 0, {"200": 48}) == (tally.corrupted, tally.unexpected, tally.outcomes)
        await wait_idle(srv.pool, [srv.objects])


async def test_fault_mix_answers_everything_as_documented() -> None:
    """1,000 requests of the soak's fault mix (aborted uploads, handler errors, client
    and server cancellations, malformed JSON, oversize bodies) at 32 concurrent: each
    gets its documented outcome, no valid answer is corrupted, and the pool and the
    object pool end idle with nothing quarantined."""
    async with hostile_server(**SERVER, handler_cancellation=True) as srv:
        tally = await run_mix(srv.port, requests=1000, concurrency=32, seed=3, limit=2 * MiB)
        assert (0, 0) == (tally.corrupted, tally.unexpected), tally.examples
        assert set(FAULT_MIX) <= set(tally.sent)
        expected = {OUTCOME[kind] for kind in tally.sent}
        assert expected == set(tally.outcomes)
        stats = await wait_idle(srv.pool, [srv.objects])
        assert (0, 0) == (stats["lent_bytes"], stats["quarantined_bytes"])
