"""Every Python code block in the docs imports public names that exist.

Walks README.md, docs/*.md and integrations/** (the ```python blocks of Markdown files,
and whole .py files), parses each with ``ast`` and, for every import of arenapool:

- no module path has a private part (``arenapool._memory``, ``arenapool.aiohttp._admin``);
- the module imports and has every name imported from it;
- ``module.attribute`` chains on an imported arenapool module resolve
  (``memory.snapshot``).

Third-party imports must import too (aiohttp, prometheus_client: the dev extra has them).
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
_FENCE = re.compile(r"^```(?:python|py)[ \t]*\n(.*?)^```", re.S | re.M)


def _sources() -> list[tuple[str, str]]:
    """``(label, code)`` for every Python block of the docs and every integration .py."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    docs += sorted((ROOT / "integrations").rglob("*.md"))
    out: list[tuple[str, str]] = []
    for path in docs:
        text = path.read_text()
        for n, match in enumerate(_FENCE.finditer(text), 1):
            line = text.count("\n", 0, match.start()) + 2
            out.append((f"{path.relative_to(ROOT)}:{line} (block {n})", match.group(1)))
    for path in sorted((ROOT / "integrations").rglob("*.py")):
        out.append((str(path.relative_to(ROOT)), path.read_text()))
    return out


SOURCES = _sources()


def _parse(code: str) -> ast.Module:
    # blocks may await at top level, as a REPL session or a handler body would
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    tree = compile(code, "<doc>", "exec", flags=flags, dont_inherit=True)
    assert isinstance(tree, ast.Module)
    return tree


def _is_private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split("."))


def test_the_docs_have_python_blocks() -> None:
    """The walk finds the blocks (a broken fence pattern would pass everything)."""
    assert len(SOURCES) >= 5
    assert any("from arenapool" in code for _, code in SOURCES)


@pytest.mark.parametrize(("label", "code"), SOURCES, ids=[label for label, _ in SOURCES])
def test_doc_block_imports_public_names_that_exist(label: str, code: str) -> None:
    """Every arenapool import in the block names a public module and existing names."""
    tree = _parse(code)
    modules: dict[str, object] = {}  # local alias -> imported arenapool module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            root = node.module.split(".")[0]
            if root == "arenapool":
                assert not _is_private(node.module), f"{label}: imports {node.module}"
            module = importlib.import_module(node.module)
            for alias in node.names:
                if alias.name == "*":
                    continue
                assert not alias.name.startswith("_") or root != "arenapool", (
                    f"{label}: imports private {alias.name} from {node.module}"
                )
                if not hasattr(module, alias.name):
                    # a submodule imported by name: `from arenapool import memory`
                    importlib.import_module(f"{node.module}.{alias.name}")
                value = getattr(module, alias.name)
                if root == "arenapool" and type(value).__name__ == "module":
                    modules[alias.asname or alias.name] = value
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "arenapool":
                    assert not _is_private(alias.name), f"{label}: imports {alias.name}"
                module = importlib.import_module(alias.name)
                if alias.name.split(".")[0] == "arenapool":
                    if alias.asname:
                        modules[alias.asname] = module
                    else:
                        modules["arenapool"] = importlib.import_module("arenapool")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain: list[str] = []
        cur: ast.expr = node
        while isinstance(cur, ast.Attribute):
            chain.append(cur.attr)
            cur = cur.value
        if not isinstance(cur, ast.Name) or cur.id not in modules:
            continue
        obj = modules[cur.id]
        for attr in reversed(chain):
            if type(obj).__name__ != "module":
                break  # past the module: an attribute of a public object, not checked
            assert not attr.startswith("_"), f"{label}: uses private {cur.id}.{attr}"
            if not hasattr(obj, attr):
                importlib.import_module(f"{obj.__name__}.{attr}")  # type: ignore[attr-defined]
            obj = getattr(obj, attr)


def test_admin_config_is_public_without_aiohttp(run_python: Any) -> None:
    """``from arenapool import AdminConfig`` works and imports no aiohttp; the adapter
    re-exports the very same class."""
    code = """
import json, sys
from arenapool import AdminConfig
config = AdminConfig(token="t")
loaded = "aiohttp" in sys.modules
from arenapool.aiohttp import AdminConfig as Again
print(json.dumps({"aiohttp_loaded": loaded, "same": Again is AdminConfig}))
"""
    assert {"aiohttp_loaded": False, "same": True} == run_python(code)
