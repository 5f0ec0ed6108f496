"""The package's layers import one way, and every module imports on its own.

Two checks, in the style of multidict's import tests:

- every module of the package imports in a fresh interpreter (one subprocess per
  module), so no module relies on another having been imported first and no import
  circle can come back unnoticed;
- read with ``ast``, no module imports a module of a higher layer at run time. Imports
  under ``if TYPE_CHECKING:`` are exempt (annotations only); imports inside functions
  count, since they run.

The layer table below is the design's (see DESIGN.md, "Layers"). Modules are found by
walking the package, so a new module fails this test until it is given a layer here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import arenapool

PACKAGE = Path(arenapool.__file__).parent

#: module -> layer; a module may import modules of its own layer or lower ones.
#: ``package.*`` gives every module below that package one layer.
LAYERS: dict[str, int] = {
    # 1. units, errors, registries, counters, and what the environment says
    "arenapool._version": 1,
    "arenapool._units": 1,
    "arenapool._errors": 1,
    "arenapool._registry": 1,
    "arenapool._counter": 1,
    "arenapool._container": 1,
    "arenapool._ext": 1,
    "arenapool._ticks": 1,
    # 2. slabs, and the JSON codec (a leaf over errors that Arena.json calls)
    "arenapool._sizeclasses": 2,
    "arenapool._slab": 2,
    "arenapool._waiters": 2,
    "arenapool._decay": 2,
    "arenapool._admission": 2,
    "arenapool._json": 2,
    # 3. the arena
    "arenapool._arena": 3,
    # 4. the slab pool facade (builds arenas)
    "arenapool._slabpool": 4,
    # 5. object pools
    "arenapool._objectpool": 5,
    # 6. memory: readings, governor, census, tracing
    "arenapool._memory": 6,
    "arenapool._breakdown": 6,
    "arenapool._history": 6,
    "arenapool._trace": 6,
    "arenapool._verdict": 6,
    "arenapool._monitor": 6,
    "arenapool._governor": 6,
    "arenapool._trimpolicy": 6,
    "arenapool._pymalloc": 6,
    "arenapool._arenacache": 6,
    "arenapool._blockcache": 6,
    "arenapool._census": 6,
    "arenapool.memory": 6,
    # 7. adapters
    "arenapool.metrics": 7,
    "arenapool.testing": 7,
    "arenapool.cli": 7,
    "arenapool._top": 7,
    "arenapool._adminconfig": 7,
    "arenapool.__main__": 7,
    "arenapool.aiohttp": 7,
    "arenapool.aiohttp.*": 7,  # the adapter package: every module in it
    # 8. the public face: re-exports only
    "arenapool": 8,
}


def _layer(module: str) -> int | None:
    """The module's layer from LAYERS (its own entry, else its package's ``.*``)."""
    if module in LAYERS:
        return LAYERS[module]
    parts = module.split(".")
    for end in range(len(parts) - 1, 0, -1):
        layer = LAYERS.get(".".join(parts[:end]) + ".*")
        if layer is not None:
            return layer
    return None


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["arenapool", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


MODULES = _modules()


def _source(module: str) -> Path:
    relative = Path(*module.split(".")[1:])
    package = PACKAGE / relative / "__init__.py"
    return package if package.exists() else (PACKAGE / relative).with_suffix(".py")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import that runs, resolved to a full name;
    ``from package import name`` counts as importing ``package.name`` when that is a
    module, else ``package``."""
    path = _source(module)
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    visit_stmt(stmt)
                continue
            visit_stmt(child)

    def visit_stmt(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if sub in MODULES else target))
        visit(node)

    visit(tree)
    return [(line, name) for line, name in found if name.split(".")[0] == "arenapool"]


def test_every_module_has_a_layer() -> None:
    """Each module of the package appears in the layer table (add new ones to LAYERS)."""
    missing = [m for m in MODULES if _layer(m) is None]

    assert [] == missing, (
        f"{missing} have no layer: add them to LAYERS in tests/test_layers.py "
        "(see DESIGN.md, 'Layers')"
    )


@pytest.mark.parametrize("module", MODULES)
def test_no_module_imports_a_higher_layer(module: str) -> None:
    """A module imports, at run time, only modules of its own layer or lower ones."""
    layer = _layer(module)
    if layer is None:
        pytest.fail(f"{module} has no layer: add it to LAYERS in tests/test_layers.py")
    upward = [
        f"line {line}: {name} (layer {_layer(name)})"
        for line, name in _runtime_imports(module)
        if (_layer(name) or 0) > layer
    ]

    assert [] == upward, f"{module} (layer {layer}) imports upward: {upward}"


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_in_a_fresh_interpreter(module: str) -> None:
    """Each module imports on its own in a new interpreter, warnings as errors."""
    result = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-c",
            f"import importlib; importlib.import_module({module!r})",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert (0, "") == (result.returncode, result.stderr), result.stderr
