"""What any aiohttp middleware costs on small bodies, next to arenapool's.

    python benchmarks/middleware_cost.py                 # 3 rounds x 3 variants, ~2 min
    python benchmarks/middleware_cost.py --rounds 1 --requests 5000   # a quick look

Three servers, each the example service (``integrations/example_service/app.py``) in a
fresh subprocess on 127.0.0.1, driven in turn by the same bounded client with the
``small`` workload (1 KiB bodies, 16 in flight):

- ``orjson``: the ``orjson`` mode as it is (no middleware);
- ``orjson+noop``: the same with one do-nothing ``@web.middleware`` appended;
- ``arenapool``: the ``arenapool`` mode (``read_json`` under arenapool's middleware).

The variants run in a rotating order every round; each gets a warm-up, then
``--requests`` requests. Prints requests/s per round, the medians and their ratios to
``orjson`` from the same run, then one JSON line. It answers one question: how much of
arenapool's small-body gap is the price of having a middleware at all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# The checkout's root: harness/ (and arenapool, when the checkout is not installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import arenapool
from harness.benchkit import EXAMPLE_SERVE
from harness.loadgen import run_load
from harness.server import find_example_service, free_port, service_env
from harness.workload import Plan, get_workload

VARIANTS = ["orjson", "orjson+noop", "arenapool"]


def start(variant: str, port: int) -> subprocess.Popen[str]:
    mode = "orjson" if variant.startswith("orjson") else "arenapool"
    noop = "1" if variant.endswith("+noop") else "0"
    service = str(find_example_service())
    return subprocess.Popen(
        [sys.executable, "-c", EXAMPLE_SERVE, service, mode, noop, str(port)],
        env=service_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


async def wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return


async def measure(variant: str, requests: int, seed: int) -> float:
    """Requests/s of one variant over ``requests`` small requests (after a warm-up)."""
    port = free_port()
    proc = start(variant, port)
    try:
        await wait_listening(port)
        workload = get_workload("small")
        plan = Plan(workload.deck(seed), seed)
        common: dict[str, Any] = {"concurrency": workload.concurrency, "duration": 120.0}
        await run_load("127.0.0.1", port, plan, requests=2000, **common)  # warm-up
        started = time.perf_counter()
        result = await run_load("127.0.0.1", port, plan, requests=requests, **common)
        elapsed = time.perf_counter() - started
        if result.ok != requests:
            msg = f"{variant}: {result.ok} of {requests} requests answered correctly"
            raise RuntimeError(msg)
        return requests / elapsed
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for round_ in range(args.rounds):
        order = VARIANTS[round_ % 3 :] + VARIANTS[: round_ % 3]
        for variant in order:
            rps = await measure(variant, args.requests, args.seed)
            runs[variant].append(rps)
            print(f"  round {round_ + 1} {variant:<12} {rps:8.0f} req/s", flush=True)
    medians = {v: statistics.median(r) for v, r in runs.items()}
    base = medians["orjson"]
    return {
        "benchmark": "middleware_cost",
        "arenapool": arenapool.__version__,
        "requests": args.requests,
        "rounds": args.rounds,
        "rps": runs,
        "median_rps": medians,
        "vs_orjson": {v: m / base for v, m in medians.items()},
        "per_round_vs_orjson": {
            v: [r / b for r, b in zip(runs[v], runs["orjson"], strict=True)] for v in VARIANTS
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all variants (3)")
    parser.add_argument("--requests", type=int, default=20000, help="requests per run (20000)")
    parser.add_argument("--seed", type=int, default=1, help="seed for the bodies (1)")
    args = parser.parse_args(argv)
    print(f"middleware cost, small bodies: {args.rounds} rounds x {len(VARIANTS)} variants")
    record = asyncio.run(main_async(args))
    print(f"{'variant':<14} {'median req/s':>12} {'x orjson':>9}  per round")
    for variant in VARIANTS:
        rounds = " ".join(f"{x:.2f}" for x in record["per_round_vs_orjson"][variant])
        print(
            f"{variant:<14} {record['median_rps'][variant]:12.0f} "
            f"{record['vs_orjson'][variant]:8.2f}x  {rounds}"
        )
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
