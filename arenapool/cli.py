"""The ``arenapool`` command: ``top``, a live view of a server's memory.

``arenapool demo|bench|soak|serve`` run the example service and measure it; they live
in the measuring harness (``harness/``, not part of the installed package) and work from
a source checkout, where this module finds ``harness/`` next to the package directory.
Installed without a checkout, they say so.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from ._version import __version__

__all__ = ["add_command", "main", "positive_float", "positive_int"]

#: the commands that need the harness of a source checkout
HARNESS_COMMANDS = ("demo", "bench", "soak", "serve")

try:  # rich is in the [cli] extra; `top` draws with it
    import rich  # noqa: F401 - only whether it is there

    HAVE_RICH = True
except ImportError:  # pragma: no cover - the dev environment has rich
    HAVE_RICH = False


# --- argument types ---------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        msg = f"must be 1 or more, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        msg = f"must be more than 0, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


# --- top --------------------------------------------------------------------------------

STATS_PATH = "/_arenapool/stats"


def stats_url(url: str, token: str | None) -> str:
    """The stats URL for a server base URL (or a full stats URL), with the token."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    path = parts.path.rstrip("/")
    if not path.endswith(STATS_PATH):
        path += STATS_PATH
    query = urllib.parse.parse_qsl(parts.query)
    if token:
        query = [(k, v) for k, v in query if k != "token"] + [("token", token)]
    return urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, path, urllib.parse.urlencode(query), "")
    )


def cmd_top(args: argparse.Namespace) -> int:
    """The live screen (``arenapool._top``), or one JSON line per poll with --json."""
    from . import _top  # noqa: PLC0415 - rich is imported only by the commands that draw

    return _top.run(
        stats_url(args.url, args.token),
        token=args.token,
        interval=args.interval,
        count=args.count,
        timeout=args.timeout,
        as_json=args.json,
    )


# --- the harness commands -----------------------------------------------------------------


def checkout_root() -> Path:
    """The directory above this package: a source checkout's root, or site-packages."""
    return Path(__file__).resolve().parent.parent


def harness_cli(root: Path | None = None) -> ModuleType | None:
    """``harness.cli`` of the source checkout at ``root``, or None outside a checkout.

    A checkout has ``pyproject.toml`` and ``harness/`` next to ``arenapool/``; its root
    goes on ``sys.path`` (at the end) so ``harness`` imports. A ``harness`` imported
    from anywhere else is refused rather than run.
    """
    root = checkout_root() if root is None else root
    if not ((root / "pyproject.toml").is_file() and (root / "harness" / "cli.py").is_file()):
        return None
    if str(root) not in sys.path:
        sys.path.append(str(root))
    module = importlib.import_module("harness.cli")
    if Path(module.__file__ or "").resolve().parent != (root / "harness").resolve():
        msg = f"imported harness from {module.__file__}, not from the checkout at {root}"
        raise ImportError(msg)
    return module


def _needs_checkout(args: argparse.Namespace) -> int:
    print(
        f"arenapool {args.command}: this command runs the measuring harness, which is not "
        "part of the installed package; run it from a source checkout of arenapool "
        "(git clone, then scripts/bootstrap and .venv/bin/arenapool "
        f"{args.command}, or python -m harness {args.command})",
        file=sys.stderr,
    )
    return 2


def _add_placeholders(sub: Any) -> None:
    """Without a checkout: each harness command exists, and says where to run it."""
    for name in HARNESS_COMMANDS:  # main() lets their options through unparsed
        add_command(
            sub,
            name,
            _needs_checkout,
            help=f"({name} runs from a source checkout of arenapool)",
            description=f"`arenapool {name}` runs the measuring harness of a source checkout.",
        )


# --- parser ------------------------------------------------------------------------------


def add_command(
    sub: Any, name: str, func: Callable[[argparse.Namespace], int], *, help: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand ``name`` that runs ``func(args)``."""
    command: argparse.ArgumentParser = sub.add_parser(name, help=help, description=description)
    command.set_defaults(func=func)
    return command


def _add_top(sub: Any) -> None:
    top = add_command(
        sub,
        "top",
        cmd_top,
        help="live view of a server's /_arenapool/stats",
        description="A live screen of a server's memory, redrawn in place: RSS broken "
        "into parts that add up, the verdict on its trend, the routes sorted by arena "
        "memory (keys m/r/b/n sort, q quits) and each pool's size classes. --json prints "
        "one stats document per poll instead. Stop with q, Ctrl-C, or --count.",
    )
    top.add_argument("url", help="server base URL (http://127.0.0.1:8080) or the stats URL")
    top.add_argument(
        "--token",
        default=os.environ.get("ARENAPOOL_ADMIN_TOKEN"),
        help="admin token (default: $ARENAPOOL_ADMIN_TOKEN)",
    )
    top.add_argument(
        "--interval", type=positive_float, default=1.0, help="seconds between polls (default: 1)"
    )
    top.add_argument("--count", type=positive_int, default=None, help="stop after this many polls")
    top.add_argument(
        "--timeout", type=positive_float, default=5.0, help="seconds per poll (default: 5)"
    )
    top.add_argument(
        "--json", action="store_true", help="print each snapshot as one JSON line instead"
    )


def build_parser(prog: str = "arenapool", *, root: Path | None = None) -> argparse.ArgumentParser:
    """The parser: ``top``, and the harness commands (working ones in a checkout)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Measure and watch arenapool: a side-by-side demo, the benchmark "
        "matrix, a soak test (from a source checkout), and a live view of a server's memory.",
    )
    parser.add_argument("--version", action="version", version=f"arenapool {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    harness = harness_cli(root)
    if harness is None:
        _add_placeholders(sub)
    else:
        harness.add_commands(sub)
    _add_top(sub)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "arenapool") -> int:
    """Entry point of the ``arenapool`` console script and ``python -m arenapool``."""
    parser = build_parser(prog)
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.func is not _needs_checkout:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not HAVE_RICH:  # pragma: no cover
        parser.error("the arenapool command needs rich: pip install 'arenapool[cli]'")
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, RuntimeError, ImportError) as exc:
        print(f"{prog} {args.command}: {exc}", file=sys.stderr)
        return 2
    return code
