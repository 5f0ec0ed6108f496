"""The compiled hot paths: the build chosen at import is the one that runs.

arenapool's hot modules (``arenapool._ext.TWINS``) run compiled by Cython when the
install could build them, and as their pure-Python twins when
``ARENAPOOL_NO_EXTENSIONS`` is set. CI runs the whole suite both ways (``.ci/run``);
these tests check, in each run, that the selection is the one asked for: an install
made where a compiler exists must not quietly run the twins, and the variable must
really select them.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import types

from arenapool import _ext

# Snippet run in a fresh interpreter: import every twin, report what was selected.
REPORT = """
import importlib, json
from arenapool import _ext
kinds = {}
for name in _ext.TWINS:
    module = importlib.import_module(name)
    kinds[name] = sorted({
        type(value).__name__
        for value in vars(module).values()
        if callable(value) and (getattr(value, "__module__", None) or "").startswith(name)
    })
print(json.dumps({"loaded": _ext.LOADED, "stale": _ext.STALE, "kinds": kinds}))
"""


def twin_modules() -> list[types.ModuleType]:
    return [importlib.import_module(name) for name in _ext.TWINS]


def report(env: dict[str, str]) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", REPORT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert (0, "") == (result.returncode, result.stderr), result.stderr
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


def test_this_run_uses_the_build_it_asked_for() -> None:
    """Without ARENAPOOL_NO_EXTENSIONS every twin runs compiled: its functions are
    Cython's, from ``<twin>_c``, and none is stale (built from another source). With it,
    every twin runs as plain Python functions. CI runs the suite both ways, so each run
    checks its own selection."""
    modules = twin_modules()
    if _ext.NO_EXTENSIONS:
        for module in modules:
            kinds = {
                type(value).__name__
                for value in vars(module).values()
                if callable(value) and getattr(value, "__module__", None) == module.__name__
            }
            assert "cython_function_or_method" not in kinds
        assert {} == _ext.LOADED
        return
    assert ({m.__name__: m.__name__ + "_c" for m in modules}, []) == (_ext.LOADED, _ext.STALE)
    for module in modules:
        compiled = importlib.import_module(module.__name__ + "_c")
        functions = {
            name: value
            for name, value in vars(compiled).items()
            if getattr(value, "__module__", None) == compiled.__name__
        }
        assert functions, f"{compiled.__name__} defines nothing"
        interpreted = getattr(module, "INTERPRETED", ())
        for name, value in functions.items():
            if name in interpreted:  # kept as written on purpose (see _ext.load_compiled)
                assert type(getattr(module, name)) is types.FunctionType, name
                continue
            assert value is getattr(module, name), f"{module.__name__}.{name} is the twin's"
        assert set(interpreted) <= set(functions), "INTERPRETED names what the build defines"


def test_the_variable_selects_the_twins_in_a_fresh_interpreter() -> None:
    """ARENAPOOL_NO_EXTENSIONS=1, read at import, makes a fresh interpreter run the
    twins (plain functions), whatever this run uses."""
    env = dict(os.environ, ARENAPOOL_NO_EXTENSIONS="1")
    seen = report(env)

    assert {} == seen["loaded"]
    assert [] == seen["stale"]
    for kinds in dict(seen["kinds"]).values():  # type: ignore[call-overload]
        assert "cython_function_or_method" not in kinds


def test_a_fresh_interpreter_without_the_variable_runs_compiled() -> None:
    """Without the variable a fresh interpreter selects the compiled build, with no
    warning (the test runs it with warnings as errors)."""
    env = {k: v for k, v in os.environ.items() if k != "ARENAPOOL_NO_EXTENSIONS"}
    seen = report(env)

    assert {name: name + "_c" for name in _ext.TWINS} == seen["loaded"]


def test_the_digest_names_the_source() -> None:
    """The digest tying a compiled build to its twin changes with any byte of it."""
    assert _ext.source_digest(b"a") != _ext.source_digest(b"b")
    assert 16 == len(_ext.source_digest(b""))
