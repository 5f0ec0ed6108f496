"""``python -m harness demo|bench|soak|serve``: the same commands as ``arenapool ...``."""

import sys

from arenapool.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m harness"))
