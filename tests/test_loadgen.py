"""The load generator: bodies, workloads, seeds, and a client that always stops."""

from __future__ import annotations

import asyncio
import math
import mmap
import os
import random
import sys
from typing import Any

import orjson
import pytest
from _example import load_example
from aiohttp import web

from arenapool import _memory
from harness.loadgen import LoadResult, Pacing, percentile, run_load
from harness.modes import baseline_of, pair_groups, resolve_modes, round_groups, round_order
from harness.procstat import read_stat, wait_quiet
from harness.soak import percentile_of
from harness.workload import (
    MIN_BODY,
    WORKLOADS,
    Body,
    Plan,
    Workload,
    burst_workload,
    get_workload,
    make_body,
    summarize_body,
)
from harness.wrk import deck_files, parse_wrk_output, run_wrk

KiB = 1024
MiB = 1024 * KiB

# --- bodies ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [MIN_BODY, 100, 1024, 4096, 65_537, 1_000_003])
def test_body_has_exactly_the_requested_size(size: int) -> None:
    """make_body pads the JSON document to exactly the requested number of bytes."""
    body = make_body(size, random.Random(size))
    assert size == len(body.data)


def test_body_knows_its_answer() -> None:
    """A body's expected summary is what summarize_body computes from its records."""
    body = make_body(50_000, random.Random(7))
    doc = orjson.loads(body.data)
    assert summarize_body(doc["records"]) == body.expected()
    assert body.count == len(doc["records"]) > 0


def test_example_service_summarizes_like_the_client() -> None:
    """The example service's summarize() and the client's agree, so answers verify."""
    example = load_example()
    body = make_body(20_000, random.Random(3))
    records = orjson.loads(body.data)["records"]
    assert body.expected() == example.summarize(records)


def test_body_below_the_envelope_is_refused() -> None:
    """A size smaller than the empty JSON envelope raises ValueError."""
    with pytest.raises(ValueError, match="at least"):
        make_body(MIN_BODY - 1, random.Random(0))


# --- workloads and seeds -------------------------------------------------------------


@pytest.mark.parametrize("name", [*WORKLOADS, "burst"])
def test_workload_sizes_stay_within_bounds(name: str) -> None:
    """Every sampled body size lies between the workload's min and max size."""
    workload = get_workload(name)
    rng = random.Random(1)
    sizes = [workload.sample_size(rng) for _ in range(2000)]
    assert all(workload.min_size <= s <= workload.max_size for s in sizes)


@pytest.mark.parametrize(
    ("name", "low", "high"), [("mixed", KiB, 4 * MiB), ("medium", 64 * KiB, MiB)]
)
def test_mixed_and_medium_are_log_uniform(name: str, low: int, high: int) -> None:
    """Each doubling between the workload's bounds (mixed: 1 KiB-4 MiB, medium: 64 KiB-
    1 MiB) gets a share of its sizes."""
    workload = get_workload(name)
    assert (low, high) == (workload.min_size, workload.max_size)
    rng = random.Random(5)
    sizes = [workload.sample_size(rng) for _ in range(12_000)]
    doublings = round(math.log2(workload.max_size / workload.min_size))
    buckets = [0] * doublings
    for size in sizes:
        buckets[min(doublings - 1, int(math.log2(size / workload.min_size)))] += 1
    expected = len(sizes) / doublings
    assert all(0.8 * expected < b < 1.2 * expected for b in buckets)


def test_same_seed_same_deck() -> None:
    """The same seed builds byte-identical decks; another seed builds a different one."""
    workload = get_workload("mixed", scale=0.01)
    first = [b.data for b in workload.deck(11)]
    again = [b.data for b in workload.deck(11)]
    other = [b.data for b in workload.deck(12)]
    assert first == again
    assert first != other


def test_same_seed_same_order() -> None:
    """Two plans with the same deck and seed send the same bodies in the same order."""
    deck = get_workload("mixed", scale=0.01).deck(1)
    a, b = Plan(deck, 9), Plan(deck, 9)
    assert [a.next_body() for _ in range(50)] == [b.next_body() for _ in range(50)]


def test_scaled_workload_shrinks_sizes() -> None:
    """scale multiplies sizes and never goes below the smallest possible body."""
    large = get_workload("large", scale=0.001)
    assert (max(MIN_BODY, int(1024 * 1024 * 0.001)), int(4 * 1024 * 1024 * 0.001)) == (
        large.min_size,
        large.max_size,
    )


def test_burst_is_four_budgets_in_flight() -> None:
    """The burst workload keeps 4x the budget of 4 MiB bodies in flight at once."""
    burst = burst_workload("256MiB")
    assert (4 * 1024 * 1024, 256) == (burst.max_size, burst.concurrency)


def test_unknown_workload() -> None:
    """An unknown workload name says which names exist."""
    with pytest.raises(ValueError, match="small, large, mixed, medium, burst"):
        get_workload("huge")


def test_bad_workload_bounds() -> None:
    """A workload whose minimum is above its maximum is refused."""
    with pytest.raises(ValueError, match="min_size <= max_size"):
        Workload("bad", 2048, 1024, "uniform", 1)


def test_percentile() -> None:
    """Percentiles interpolate linearly and are None without values."""
    assert percentile([], 50) is None
    assert 2.5 == percentile([1.0, 2.0, 3.0, 4.0], 50)
    assert 4.0 == percentile([4.0, 1.0, 3.0, 2.0], 100)


# --- the client, against small servers -------------------------------------------------


def tiny_plan(seed: int = 1) -> Plan:
    return Plan(get_workload("mixed", scale=0.002).deck(seed), seed)


def summary_app(transform: Any = None, status: int = 200) -> web.Application:
    async def ingest(request: web.Request) -> web.StreamResponse:
        doc = orjson.loads(await request.read())
        answer = summarize_body(doc["records"])
        if transform is not None:
            answer = transform(answer)
        return web.Response(body=orjson.dumps(answer), status=status)

    app = web.Application()
    app.router.add_post("/ingest", ingest)
    return app


async def drive(server: Any, plan: Plan, **kwargs: Any) -> LoadResult:
    options: dict[str, Any] = {"concurrency": 4, "requests": 40, "duration": 60.0}
    options.update(kwargs)
    return await run_load(server.host, server.port, plan, **options)


async def test_stops_at_the_request_count(aiohttp_server: Any) -> None:
    """With a long duration, the run stops after exactly `requests` requests."""
    server = await aiohttp_server(summary_app())
    result = await drive(server, tiny_plan(), requests=23)
    assert (23, 23, 0) == (result.completed, result.ok, result.errors)


async def test_stops_at_the_deadline(aiohttp_server: Any) -> None:
    """With a huge request count, the run stops by itself once `duration` has passed."""
    server = await aiohttp_server(summary_app())
    result = await drive(server, tiny_plan(), requests=10**12, duration=0.3)
    assert 0 < result.completed < 10**12
    assert result.completed == result.ok


async def test_stops_when_the_server_hangs(aiohttp_server: Any) -> None:
    """A server that never answers costs one `timeout` per request, then the run ends."""
    never = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await never.wait()
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_post("/ingest", hang)
    server = await aiohttp_server(app)
    result = await drive(
        server, tiny_plan(), concurrency=2, requests=10**6, duration=0.2, timeout=0.3
    )
    assert result.ok == 0
    assert result.errors == result.completed > 0
    assert "TimeoutError" in result.error_samples[0]


async def test_wrong_answers_count_as_corrupt(aiohttp_server: Any) -> None:
    """A 200 whose summary does not match the body counts as corrupt, not ok."""
    server = await aiohttp_server(summary_app(lambda a: {**a, "sum": a["sum"] + 1}))
    result = await drive(server, tiny_plan(), requests=10)
    assert (0, 10) == (result.ok, result.corrupt)


async def test_503_counts_as_shed(aiohttp_server: Any) -> None:
    """503 answers are counted as shed load, apart from errors."""
    server = await aiohttp_server(summary_app(status=503))
    result = await drive(server, tiny_plan(), requests=10)
    assert (10, 0, {503: 10}) == (result.shed, result.errors, result.statuses)


async def test_other_statuses_count_as_errors(aiohttp_server: Any) -> None:
    """A 500 is an error, and a sample of it is kept."""
    server = await aiohttp_server(summary_app(status=500))
    result = await drive(server, tiny_plan(), requests=5)
    assert 5 == result.errors
    assert result.error_samples[0].startswith("HTTP 500")


async def test_chunked_answers_are_read(aiohttp_server: Any) -> None:
    """Chunked responses are decoded and verified like Content-Length ones."""

    async def ingest(request: web.Request) -> web.StreamResponse:
        doc = orjson.loads(await request.read())
        answer = orjson.dumps(summarize_body(doc["records"]))
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(answer[:5])
        await response.write(answer[5:])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/ingest", ingest)
    server = await aiohttp_server(app)
    result = await drive(server, tiny_plan(), requests=12)
    assert 12 == result.ok


async def test_paced_bodies_arrive_in_pieces(aiohttp_server: Any) -> None:
    """With a Pacing, each body goes out in pieces, the next one only after the pause:
    the handler reads each piece on its own while the rest is still to come, and the
    answers are checked as usual."""
    arrived: asyncio.Queue[int] = asyncio.Queue()
    reads: list[list[int]] = []

    async def ingest(request: web.Request) -> web.StreamResponse:
        chunks: list[int] = []
        reads.append(chunks)
        data = bytearray()
        while chunk := await request.content.readany():
            chunks.append(len(chunk))
            data += chunk
            if len(data) < (request.content_length or 0):  # more to come: say so
                arrived.put_nowait(len(chunk))
        answer = summarize_body(orjson.loads(data)["records"])
        return web.Response(body=orjson.dumps(answer))

    app = web.Application()
    app.router.add_post("/ingest", ingest)
    server = await aiohttp_server(app)
    plan = Plan(Workload("paced", 4 * KiB, 4 * KiB, "fixed", 1).deck(1), 1)
    piece = 512

    async def pause() -> None:  # until the server has read what was sent so far
        await arrived.get()

    result = await drive(server, plan, concurrency=1, requests=4, pacing=Pacing(piece, pause))
    assert (4, 0) == (result.ok, result.errors)
    for chunks in reads:
        # never two pieces in one read: the client waited for each to be read
        assert all(n <= piece for n in chunks)
        assert sum(chunks) == 4 * KiB
        assert len(chunks) >= 4 * KiB // piece


def test_pacing_needs_a_piece() -> None:
    with pytest.raises(ValueError, match="at least 1 byte"):
        Pacing(0, asyncio.sleep)


async def test_stale_keep_alive_is_retried_once() -> None:
    """A server that silently closes each connection after one answer costs retries only."""
    plan = tiny_plan()
    bodies = {b.data: b for b in plan.deck}

    async def one_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        body = bodies[await reader.readexactly(length)]
        answer = orjson.dumps(body.expected())
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
        await writer.drain()
        writer.close()  # no "Connection: close": the client learns on its next request

    server = await asyncio.start_server(one_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await run_load(
            "127.0.0.1", port, plan, concurrency=1, requests=6, duration=60.0, timeout=5.0
        )
    finally:
        server.close()
        await server.wait_closed()
    assert (6, 0, 5) == (result.ok, result.errors, result.retried)


def test_load_result_dict_has_documented_fields() -> None:
    """LoadResult.to_dict carries the fields the JSON outputs document."""
    fields = LoadResult(ok=1, latencies=[0.001]).to_dict()
    for key in ("requests", "ok", "shed", "errors", "corrupt", "retried", "rps", "p50_ms"):
        assert key in fields


def test_body_type_is_frozen() -> None:
    """Bodies are shared between plans, so they cannot be changed."""
    body = Body(b"{}", 0, 0, "")
    with pytest.raises(AttributeError):
        body.count = 1  # type: ignore[misc]


# --- wrk, /proc counters, soak statistics ----------------------------------------------


async def test_wrk_posts_every_body_of_the_deck_and_reports_counts(
    aiohttp_server: Any,
) -> None:
    """run_wrk posts the deck's bodies (read by the Lua script from files) to /ingest with
    the given connections for a bounded time; every request it counts got a 200 here."""
    example = load_example()
    app = example.make_app("msgspec")
    seen: set[int] = set()

    @web.middleware
    async def sizes(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.add(request.content_length or 0)
        return await handler(request)

    app.middlewares.append(sizes)
    server = await aiohttp_server(app)
    deck = [make_body(size, random.Random(size)) for size in (200, 3000, 70_000)]
    with deck_files(deck) as (script, bodies):
        result = await run_wrk(server.port, script, bodies, duration=1, connections=2)
    assert (0, 0) == (result.status_errors, result.socket_errors)
    assert result.requests > 0
    assert {200, 3000, 70_000} == seen
    assert result.percentiles_ms[50] <= result.percentiles_ms[99]


def test_wrk_output_without_the_result_line_is_an_error() -> None:
    """wrk output that lacks the script's result line raises, quoting the output."""
    with pytest.raises(RuntimeError, match="no result line"):
        parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_wrk_result_goes_into_a_load_result() -> None:
    """A wrk result fills the bench's LoadResult: ok, errors, elapsed and percentiles."""
    line = (
        'ARENAPOOL-WRK {"requests":100,"duration_us":2000000,"bytes":5,"status_errors":3,'
        '"connect":0,"read":1,"write":0,"timeout":1,"p50_us":1500,"p90_us":2000,'
        '"p99_us":9000,"max_us":12000}'
    )
    result = parse_wrk_output("Running 2s test\n" + line + "\n").into(LoadResult())
    assert (97, 5, 2.0, 48.5) == (result.ok, result.errors, result.elapsed, result.rps)
    assert (1.5, 9.0) == (result.percentile_ms(50), result.percentile_ms(99))


def test_proc_stat_counts_this_process_faults_and_cpu() -> None:
    """read_stat reads this process's minor faults and CPU time; touching fresh memory
    adds faults, and the counters only grow."""
    before = read_stat(os.getpid())
    with mmap.mmap(-1, 8 * 1024 * 1024) as block:  # a fresh mapping: every page faults in
        for i in range(0, len(block), mmap.PAGESIZE):
            block[i] = 1
    delta = read_stat(os.getpid()) - before
    assert delta.minflt > 0
    assert delta.cpu >= 0


async def test_wait_quiet_tells_a_process_at_rest_from_a_busy_one() -> None:
    """wait_quiet returns once a process used (almost) no CPU over an interval: at once
    for one blocked on a read, never (None, after its bound) for one that spins."""
    code = {"resting": "import sys; sys.stdin.read()", "spinning": "while True: pass"}
    waits = {}
    for name, source in code.items():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", source, stdin=asyncio.subprocess.PIPE
        )
        try:
            waits[name] = await wait_quiet(proc.pid, limit=0.5)
        finally:
            proc.kill()
            await proc.communicate()
    assert (True, None) == (waits["resting"] is not None, waits["spinning"])


def test_soak_percentiles_by_nearest_rank() -> None:
    """percentile_of gives the nearest-rank percentile; None for no readings."""
    values = list(range(1, 101))
    assert (50, 95, 100, None) == (
        percentile_of(values, 50),
        percentile_of(values, 95),
        percentile_of(values, 100),
        percentile_of([], 50),
    )


def test_every_arenapool_mode_has_a_like_for_like_baseline() -> None:
    """arenapool is compared with orjson, arenapool-msgspec with msgspec, and the trim
    variants with their decoder's plain mode."""
    assert ["orjson", "msgspec", "orjson", "msgspec", "orjson"] == [
        baseline_of(m)
        for m in ("arenapool", "arenapool-msgspec", "orjson+trim", "msgspec+trim", "plain")
    ]


# --- the order of a benchmark's rounds ------------------------------------------------


def test_each_arenapool_mode_runs_beside_its_baseline_and_sides_swap() -> None:
    names = ["orjson", "arenapool", "msgspec", "arenapool-msgspec", "orjson-floor"]
    groups = pair_groups(names)
    assert groups == [["orjson", "arenapool"], ["msgspec", "arenapool-msgspec"], ["orjson-floor"]]
    firsts = set()
    for round_ in range(6):
        order = round_order(groups, round_)
        assert sorted(order) == sorted(names)
        for mode in ("arenapool", "arenapool-msgspec"):
            i, j = order.index(mode), order.index(baseline_of(mode))
            assert abs(i - j) == 1  # the ratio's two runs are back to back
        assert (order.index("arenapool") < order.index("orjson")) == (round_ % 2 == 1)
        firsts.add(order[0])
    assert len(firsts) == 5  # the groups rotate: every mode of a pair and the floor lead


def test_a_control_runs_beside_the_baseline_it_repeats() -> None:
    """``orjson#2`` (an A/A control) is a second server of ``orjson``: the same mode under
    another name, compared with orjson, and next to it in every round, as arenapool is."""
    (control, base), _ = resolve_modes(["orjson#2", "orjson"])
    assert control.name == "orjson#2"
    assert (control.service, control.args, dict(control.env)) == (
        base.service,
        base.args,
        dict(base.env),
    )
    assert baseline_of("orjson#2") == "orjson"
    names = ["orjson", "arenapool", "msgspec", "orjson#2"]
    groups = pair_groups(names)
    assert groups == [["orjson#2", "orjson", "arenapool"], ["msgspec"]]
    for round_ in range(4):
        order = round_order(groups, round_)
        assert sorted(order) == sorted(names)
        for other in ("orjson#2", "arenapool"):
            assert abs(order.index(other) - order.index("orjson")) == 1
    with pytest.raises(ValueError, match="unknown mode"):
        resolve_modes(["nosuch#2"])


def test_a_mode_without_its_baseline_stands_alone() -> None:
    assert pair_groups(["arenapool", "orjson+trim"]) == [["arenapool"], ["orjson+trim"]]
    assert round_order([], 3) == []


def test_loaded_at_once_every_mode_gets_a_group_with_its_baseline() -> None:
    """``every_with_baseline``: a variant joins its baseline in a group of its own (the
    baseline then stands alone nowhere); a control stays beside the mode it repeats, a
    mode whose baseline is not run stays alone, and without the flag nothing changes."""
    names = ["orjson", "arenapool", "arenapool-no-governor", "orjson#2", "msgspec+trim"]
    assert pair_groups(names, every_with_baseline=True) == [
        ["orjson#2", "orjson", "arenapool"],
        ["arenapool-no-governor", "orjson"],
        ["msgspec+trim"],
    ]
    assert pair_groups(["orjson", "orjson+trim"], every_with_baseline=True) == [
        ["orjson+trim", "orjson"]
    ]
    assert pair_groups(["orjson", "orjson+trim"]) == [["orjson"], ["orjson+trim"]]


def test_the_held_heap_modes_pin_what_the_governor_pins() -> None:
    (mode,), _ = resolve_modes(["orjson+hold"])
    assert mode.env == {
        "MALLOC_MMAP_THRESHOLD_": str(_memory.MAX_MMAP_THRESHOLD),
        "MALLOC_TRIM_THRESHOLD_": str(_memory.HOLD_TRIM_THRESHOLD),
        "MALLOC_MMAP_MAX_": "0",
    }
    assert baseline_of("msgspec+hold") == "msgspec"


def test_round_groups_rotate_and_reverse_and_round_order_flattens_them() -> None:
    """A round's groups (what ``--side-by-side`` loads at once) rotate by one each round
    and reverse every other round; the one-after-the-other order is the same groups back
    to back."""
    groups = [["orjson", "arenapool"], ["msgspec", "arenapool-msgspec"], ["orjson-floor"]]
    assert round_groups(groups, 0) == groups
    assert round_groups(groups, 1) == [
        ["arenapool-msgspec", "msgspec"],
        ["orjson-floor"],
        ["arenapool", "orjson"],
    ]
    for round_ in range(6):
        assert round_order(groups, round_) == [n for g in round_groups(groups, round_) for n in g]
    assert round_groups([], 2) == []
