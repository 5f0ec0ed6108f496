"""What the governor's memory settings save a large decode: page faults and CPU.

Three of the governor's settings act on the memory a decode itself uses, not on the body:

- ``GovernorConfig(arena_cache=)``: pymalloc's freed arenas are kept for reuse
  (``arenapool.memory.cache_pymalloc_arenas``) instead of being unmapped, so the next
  decode's small objects do not fault their pages in again;
- ``GovernorConfig(hold_heap=True)``: glibc's thresholds pinned and its own mappings
  stopped (``arenapool.memory.hold_heap``), so orjson's work buffer (12 times the
  document) comes from the warm heap even above glibc's 32 MiB mmap threshold;
- ``GovernorConfig(block_cache=)``: that work buffer comes from arenapool's large-block
  region instead (``arenapool.memory.cache_large_blocks``), which keeps the pages of a
  freed buffer warm up to a bound (here 64 MiB, so that every size here fits) and gives
  back the rest.

Each run is a fresh interpreter that decodes one document of the example service's
shape (``{"records": [{"value", "tag", "pad"}, ...]}``) ``--decodes`` times after two
unmeasured decodes, with some long-lived objects scattered over pymalloc's arenas first
(as a server has), and reads its own minor faults (``getrusage``) and CPU
(``process_time``) around them, then its RSS (psutil) before and after giving the
cache and the region back. Six setups per size: ``plain`` (none), ``cache``, ``hold``,
``both`` (cache and hold), ``region``, and ``all`` (cache, hold and region: what the
governor does), in an order that rotates every run. Ratios are
against ``plain`` in the same run; the table shows medians over ``--runs``.

    .venv/bin/python benchmarks/arena_cache.py                  # 1, 2, 3, 4 MiB x 5 runs
    .venv/bin/python benchmarks/arena_cache.py --sizes 4MiB --runs 3 --decoder msgspec
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any

from arenapool import parse_size

SETUPS = ("plain", "cache", "hold", "both", "region", "all")

# One run, in a fresh interpreter: argv = size in bytes, setup, decodes, decoder.
RUN = """
import json, random, resource, sys, time
import orjson
from arenapool.memory import (
    cache_large_blocks, cache_pymalloc_arenas, current_rss, hold_heap, release_large_blocks,
    release_pymalloc_arenas,
)
size, setup, decodes, decoder = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
rng = random.Random(1)
records, total = [], 13
while total < size:
    record = {"value": rng.randrange(1 << 30), "tag": "t%07d" % len(records),
              "pad": "x" * rng.randrange(24)}
    records.append(record)
    total += len(orjson.dumps(record)) + 1
doc = orjson.dumps({"records": records})
del records
if decoder == "msgspec":
    import msgspec
    Record = msgspec.defstruct("Record", [("value", int), ("tag", str)])
    Ingest = msgspec.defstruct("Ingest", [("records", list[Record])])
    loads = msgspec.json.Decoder(Ingest).decode
else:
    loads = orjson.loads
# long-lived objects scattered over the arenas, as a running server has
scattered = [str(i) * 3 for i in range(200_000)][::50]
if setup in ("hold", "both", "all"):
    assert hold_heap(), "hold_heap needs glibc"
if setup in ("cache", "both", "all"):
    assert cache_pymalloc_arenas(32 * 1024 * 1024), "the cache needs the compiled build"
if setup in ("region", "all"):
    assert cache_large_blocks(64 * 1024 * 1024), "the region needs the compiled build"
for _ in range(2):
    loads(doc)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
cpu = time.process_time()
for _ in range(decodes):
    loads(doc)
cpu = time.process_time() - cpu
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
rss = current_rss()
given = release_pymalloc_arenas()
release_large_blocks()
print(json.dumps({
    "bytes": len(doc), "faults": faults / decodes, "cpu_us": cpu / decodes * 1e6,
    "rss": rss, "rss_after_release": current_rss(), "released": given,
}))
"""


def run_one(size: int, setup: str, decodes: int, decoder: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", RUN, str(size), setup, str(decodes), decoder],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1MiB,2MiB,3MiB,4MiB", help="document sizes")
    parser.add_argument("--runs", type=int, default=5, help="runs per size (5)")
    parser.add_argument("--decodes", type=int, default=20, help="measured decodes per run")
    parser.add_argument("--decoder", choices=("orjson", "msgspec"), default="orjson")
    parser.add_argument("--out", help="also write the JSON to this file")
    args = parser.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    rows = []
    for label in sizes:
        size = parse_size(label, name="size")
        runs: dict[str, list[dict[str, Any]]] = {setup: [] for setup in SETUPS}
        for run in range(args.runs):
            shift = run % len(SETUPS)
            for setup in SETUPS[shift:] + SETUPS[:shift]:
                runs[setup].append(run_one(size, setup, args.decodes, args.decoder))
        row: dict[str, Any] = {"size": label, "bytes": runs["plain"][0]["bytes"], "setups": {}}
        for setup in SETUPS:
            results = runs[setup]
            row["setups"][setup] = {
                "faults": statistics.median(r["faults"] for r in results),
                "cpu_us": statistics.median(r["cpu_us"] for r in results),
                "cpu_ratio": statistics.median(
                    r["cpu_us"] / p["cpu_us"] for r, p in zip(results, runs["plain"], strict=True)
                ),
                "rss": statistics.median(r["rss"] for r in results),
                "rss_after_release": statistics.median(r["rss_after_release"] for r in results),
                "released": statistics.median(r["released"] for r in results),
            }
        rows.append(row)
    print(f"{args.decoder}, {args.decodes} decodes per run, medians of {args.runs} runs")
    print(
        "| document | setup | faults per decode | CPU per decode | CPU / plain | RSS | "
        "RSS after release |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        for setup, s in row["setups"].items():
            print(
                f"| {row['bytes']:,} B | {setup} | {s['faults']:,.1f} | {s['cpu_us']:,.0f} us | "
                f"{s['cpu_ratio']:.3f}x | {s['rss'] / 2**20:.1f} MiB | "
                f"{s['rss_after_release'] / 2**20:.1f} MiB |"
            )
    report = {
        "benchmark": "arena_cache",
        "decoder": args.decoder,
        "runs": args.runs,
        "decodes": args.decodes,
        "rows": rows,
    }
    text = json.dumps(report)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
