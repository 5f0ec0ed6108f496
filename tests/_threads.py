"""Run a worker in several threads at once (the thread-safety tests)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable


def run_threads(
    worker: Callable[[int], object], count: int = 4, *, switch_interval: float | None = None
) -> None:
    """Run ``worker(i)`` for i in range(count), each in its own thread, and join them.

    ``switch_interval`` (seconds) makes the interpreter switch threads that often while
    they run, to shake out races; the old interval comes back afterwards.
    """
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    old = sys.getswitchinterval()
    if switch_interval is not None:
        sys.setswitchinterval(switch_interval)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        sys.setswitchinterval(old)
