"""Running a script of ``benchmarks/`` for real, as its tests do: in a subprocess of this
interpreter, its JSON written to a file the test then reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_benchmark(name: str, out: Path, *args: str, timeout: float = 300) -> dict[str, Any]:
    """Run ``benchmarks/<name>`` with ``args`` and ``--out out`` (it must succeed within
    ``timeout`` seconds); the JSON it wrote there."""
    subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args, "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=timeout,
    )
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc
