"""Instructions per operation on the core's hot paths, counted by valgrind's callgrind.

    python benchmarks/callgrind_core.py                   # every case, 2000 iterations each
    python benchmarks/callgrind_core.py --cases arena_1k lend_64k --iterations 5000
    ARENAPOOL_NO_EXTENSIONS=1 python benchmarks/callgrind_core.py   # the pure-Python twin

Wall time on a shared 2-core machine swings by +-15%; an instruction count does not.
Each case runs in a child process under ``valgrind --tool=callgrind`` with collection
off at start (``--collect-atstart=no``) and toggled on only inside CPython's
``map_next``: the child warms up, then runs ``list(map(op, range(iterations)))``, so
the count (``summary:`` of the callgrind output) is exactly the iterations' own
instructions, with start-up, imports and warm-up left out. Divided by the iterations
(and by the allocations per iteration, where a case makes several), it is the
instructions per operation. Prints a table and one JSON line, naming the build the
child loaded (``arenapool._ext.LOADED``).

Cases (the pool is warm: blocks mapped, pages touched, decay off):
- ``arena_1k``: ``with pool.arena(limit=...) as a: a.alloc(1024)``: a small request's
  whole arena life (create, enter, one chunk lent, bump, release, give back);
- ``arena_batch``: one arena, 64 allocations of 256 bytes, one release (per allocation);
- ``lend_64k``: ``pool.give_back([pool.lend(65536)])``: a slab lend and return;
- ``arena_64k``: an arena holding one 64 KiB body (``alloc(65536)``) and releasing it;
- ``fill_64k``: an arena, a 64 KiB block filled from 16 buffered 4 KiB chunks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # harness/ of this checkout

from harness.benchkit import callgrind_map_next  # noqa: E402

CASES = {
    "arena_1k": (
        "def op(_):\n    with pool.arena(limit=LIMIT) as a:\n        a.alloc(1024)\n",
        1,
    ),
    "arena_batch": (
        "def op(_):\n"
        "    with pool.arena(limit=LIMIT) as a:\n"
        "        alloc = a.alloc\n"
        "        for _ in range(64):\n"
        "            alloc(256)\n",
        64,
    ),
    "lend_64k": ("def op(_):\n    pool.give_back([pool.lend(65536)])\n", 1),
    "arena_64k": (
        "def op(_):\n    with pool.arena(limit=LIMIT) as a:\n        a.alloc(65536)\n",
        1,
    ),
    "fill_64k": (
        "CHUNKS = [bytes(4096)] * 16\n"
        "def op(_):\n"
        "    with pool.arena(limit=LIMIT) as a:\n"
        "        view = a.alloc(65536)\n"
        "        pos = 0\n"
        "        for chunk in CHUNKS:\n"
        "            end = pos + len(chunk)\n"
        "            view[pos:end] = chunk\n"
        "            pos = end\n",
        1,
    ),
}

CHILD = """
import sys
sys.path.insert(0, {root!r})
from arenapool import SlabPool
from arenapool import _ext
pool = SlabPool("64MiB", decay=None, retain=None)
LIMIT = 8 * 1024 * 1024
{body}
for _ in range(200):  # warm: blocks mapped, pages touched, caches filled
    op(0)
list(map(op, range({n})))  # the only code run inside map_next: what is counted
print("LOADED", sorted(_ext.LOADED))
"""


def total_ir(body: str, iterations: int) -> tuple[int, str]:
    """Total instructions of one child run under callgrind, and the build it loaded."""
    code = CHILD.format(root=str(ROOT), body=body, n=iterations)
    total, stdout = callgrind_map_next(code, dict(os.environ, PYTHONHASHSEED="0"))
    build = "compiled" if "LOADED []" not in stdout else "pure-Python"
    return total, build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()
    rows = []
    build = "?"
    for name in args.cases:
        body, per = CASES[name]
        total, build = total_ir(body, args.iterations)
        ir = total / args.iterations / per
        rows.append({"case": name, "ir_per_op": round(ir, 1)})
        print(f"{name:12} {ir:10.1f} Ir/op  ({build})", flush=True)
    print(json.dumps({"benchmark": "callgrind_core", "build": build, "cases": rows}))


if __name__ == "__main__":
    main()
