"""Peak RSS of orjson and msgspec decoding a large JSON document from arena memory.

Each decoder runs in a fresh subprocess (so one's heap does not colour the other's):
the document is built, copied into an arena, then decoded from the arena's view.
Reported per decoder, from the OS (getrusage peak RSS and psutil current RSS):

- ``transient``: peak RSS during decode minus RSS right after it (the result still
  alive): the decoder's own work memory, which is what a server pays per request
  on top of the decoded objects;
- ``result``: RSS after decode minus RSS before it: the decoded objects.

Usage: python benchmarks/decoders.py [--mib 27] [--repeats 3]
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, resource, sys
import psutil
from arenapool import SlabPool
from arenapool._json import decode

mib, decoder = int(sys.argv[1]), sys.argv[2]
record = {"id": 0, "name": "widget-0000", "tags": ["a", "b", "c"], "price": 12.5,
          "nested": {"x": 1, "y": [1, 2, 3], "ok": True}}
one = json.dumps(record).encode()
count = mib * 1024 * 1024 // (len(one) + 1)
doc = b"[" + b",".join([one] * count) + b"]"
proc = psutil.Process()
with SlabPool(budget=len(doc) * 2, max_class="16MiB", decay=None) as pool:
    with pool.arena() as arena:
        view = arena.copy(doc)
        del doc
        before = proc.memory_info().rss
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result = decode(view, decoder=decoder)
        after = proc.memory_info().rss
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({
            "decoder": decoder, "doc_bytes": view.nbytes, "items": len(result),
            "before": before, "after": after, "peak": max(peak, peak_before),
            "peak_before": peak_before,
        }))
"""


def run(mib: int, decoder: str) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(mib), decoder],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=27, help="document size in MiB")
    parser.add_argument("--repeats", type=int, default=3, help="runs per decoder (median)")
    args = parser.parse_args()
    mib = 1024 * 1024
    cases = []
    for decoder in ("orjson", "msgspec"):
        runs = [run(args.mib, decoder) for _ in range(args.repeats)]
        # if the peak was set before decode (building the document), transient is 0
        transient = statistics.median(max(0, r["peak"] - r["after"]) for r in runs)
        result = statistics.median(r["after"] - r["before"] for r in runs)
        cases.append(
            {
                "name": f"decode-{decoder}-{args.mib}MiB",
                "decoder": decoder,
                "doc_bytes": runs[0]["doc_bytes"],
                "transient_bytes": int(transient),
                "result_bytes": int(result),
                "transient_ratio_to_doc": transient / runs[0]["doc_bytes"],
            }
        )
    print(f"{'case':<26}{'document':>12}{'transient':>12}{'x doc':>8}{'result':>12}")
    for c in cases:
        print(
            f"{c['name']:<26}{c['doc_bytes'] / mib:>10.1f}Mi{c['transient_bytes'] / mib:>10.1f}Mi"
            f"{c['transient_ratio_to_doc']:>8.2f}{c['result_bytes'] / mib:>10.1f}Mi"
        )
    print(json.dumps({"benchmark": "decoders", "repeats": args.repeats, "cases": cases}))


if __name__ == "__main__":
    main()
