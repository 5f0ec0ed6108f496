"""Generic fixtures for the whole suite. Keep this file small; put specifics in the tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from arenapool import SlabPool
from arenapool.testing import slab_pool_fixture

ROOT = Path(__file__).resolve().parent.parent

#: A 1 MiB SlabPool without decay, checked for leaks and closed at teardown.
pool = slab_pool_fixture(budget="1MiB", decay=None)


@pytest.fixture
def make_pool() -> Iterator[Callable[..., SlabPool]]:
    """Build SlabPools (``decay=None`` unless given) and close them all at teardown."""
    pools: list[SlabPool] = []

    def make(budget: int | str = "1MiB", **kwargs: Any) -> SlabPool:
        kwargs.setdefault("decay", None)
        made = SlabPool(budget, **kwargs)
        pools.append(made)
        return made

    yield make
    for made in pools:
        made.close()


@pytest.fixture
def run_python() -> Callable[..., Any]:
    """Run a Python snippet in a fresh interpreter; return its last stdout line as JSON.

    The snippet imports this checkout of arenapool. A non-zero exit fails the test
    with the snippet's stderr.
    """

    def run(code: str, *, timeout: float = 120.0) -> Any:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "error"}
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run
