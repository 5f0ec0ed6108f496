"""``python -m arenapool``: the same as the ``arenapool`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
