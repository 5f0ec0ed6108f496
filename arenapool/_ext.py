"""Which build runs: a hot module compiled by Cython, or its pure-Python twin.

arenapool ships its hot paths the way aiohttp, multidict and yarl do: readable Python
(the *twin*, the specification) and a compiled build of it. Here the compiled build is
the twin itself, compiled by Cython in pure-Python mode at install (``hatch_build.py``)
under the name ``<twin>_c``, so the two cannot drift apart. A twin module ends with::

    _ext.load_compiled(__name__, globals())

which rebinds every function and class the compiled build defines over the twin's own,
so everything that imports a name from the twin gets one object, the selected one;
except the names the twin lists in ``INTERPRETED``: those keep running as written,
where the interpreter runs them faster than the compiled build does (measured; the twin
says why).

- ``ARENAPOOL_NO_EXTENSIONS`` set to a non-empty value selects the twins (read once,
  at import), as ``AIOHTTP_NO_EXTENSIONS`` does for aiohttp.
- When a compiled build is missing (the install found no compiler and built pure
  Python) the twins run and a :class:`RuntimeWarning` says so at import: loudly,
  since every request then pays for it.
- A compiled build made from another version of the twin's source (an editable
  install whose ``.py`` was edited since) is not used: the twin runs and its name is
  listed in :data:`STALE` (the extension tests fail on it; rebuild with
  ``pip install -e .``).
"""

from __future__ import annotations

import hashlib
import importlib
import warnings
from os import environ
from pathlib import Path
from types import ModuleType
from typing import Final

__all__ = [
    "LOADED",
    "NO_EXTENSIONS",
    "STALE",
    "TWINS",
    "c_module",
    "load_compiled",
    "source_digest",
]

#: The twins compiled at install (``hatch_build.py`` reads this list from this file):
#: each ends with ``_ext.load_compiled(__name__, globals())``. The core (``_arena``,
#: ``_slabpool``) is not here: compiled as plain classes it ran more instructions than
#: CPython 3.11's specialising interpreter (``benchmarks/callgrind_core.py``).
TWINS: Final = ("arenapool.aiohttp._hotpath",)

#: True when ``ARENAPOOL_NO_EXTENSIONS`` asks for the pure-Python twins.
NO_EXTENSIONS: Final = bool(environ.get("ARENAPOOL_NO_EXTENSIONS"))

#: Twin module name -> its compiled module's name, for every twin running compiled.
LOADED: dict[str, str] = {}
#: Twin modules whose compiled build was made from another version of their source.
STALE: list[str] = []

#: The attribute the build adds to a compiled module: the digest of the twin it was
#: compiled from (see :func:`source_digest`).
DIGEST_ATTR: Final = "__twin_digest__"


def c_module(name: str) -> ModuleType | None:
    """The plain-C module ``name`` (not a twin: ``arenapool._pymalloc_c``,
    ``arenapool._arenacache_c``), or ``None`` when ``ARENAPOOL_NO_EXTENSIONS`` is set or
    the install did not build it (``hatch_build.py``)."""
    if NO_EXTENSIONS:
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def source_digest(source: bytes) -> str:
    """The digest that ties a compiled build to the twin source it was made from."""
    return hashlib.sha256(source).hexdigest()[:16]


def load_compiled(name: str, namespace: dict[str, object]) -> bool:
    """Rebind the functions and classes of twin module ``name`` (its ``globals()``)
    to those of its compiled build ``name + "_c"``; True when the compiled build runs.

    Does nothing inside the compiled build itself, nor when ``ARENAPOOL_NO_EXTENSIONS``
    is set; warns when the compiled build is missing, and records ``name`` in
    :data:`STALE` when it was built from another version of the twin.
    """
    if NO_EXTENSIONS or name.endswith("_c"):
        return False
    compiled_name = name + "_c"
    try:
        compiled = importlib.import_module(compiled_name)
    except ImportError as exc:
        warnings.warn(
            f"arenapool: the compiled build of {name} is not available ({exc}); running "
            "its pure-Python twin, which is slower. Reinstall arenapool where a C compiler "
            "and the Python headers are present, or set ARENAPOOL_NO_EXTENSIONS=1 to "
            "choose the twins and silence this warning.",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    twin_file = namespace.get("__file__")
    if isinstance(twin_file, str):
        digest = source_digest(Path(twin_file).read_bytes())
        if getattr(compiled, DIGEST_ATTR, None) != digest:
            STALE.append(name)
            return False
    interpreted = namespace.get("INTERPRETED", ())
    assert isinstance(interpreted, tuple)
    for attr, value in vars(compiled).items():
        if (
            getattr(value, "__module__", None) == compiled_name
            and attr in namespace
            and attr not in interpreted
        ):
            namespace[attr] = value
    LOADED[name] = compiled_name
    return True
