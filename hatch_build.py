"""Hatch build hook: compile arenapool's hot paths with Cython, or build pure Python.

arenapool ships its hot paths the way aiohttp, multidict and yarl do: a readable Python
*twin* and a compiled module with the same names, chosen at import (``arenapool._ext``).
Here the compiled module is the twin itself: each module in ``arenapool._ext.TWINS`` is
copied to ``build/cython/`` under the name ``<module>_c`` and compiled by Cython in
pure-Python mode, so the two can never drift apart (multidict keeps ``_multidict_py`` beside its C
``_multidict`` for the same reason). Its extension lands beside the twin, in the source
tree, so an editable install (``pip install -e .``) finds it as a normal wheel does.

The build never fails for want of a compiler: any error is reported as a warning and
the wheel is built pure (the package then warns at import that the twins run).
``ARENAPOOL_NO_EXTENSIONS`` set at build time skips compiling, as aiohttp's
``AIOHTTP_NO_EXTENSIONS`` does.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

#: Cython directives: plain Python semantics (annotations are not C types: a handler
#: may pass anything where the twin's annotation says ``int``), no bounds games.
DIRECTIVES = {
    "language_level": 3,
    "annotation_typing": False,
    "binding": True,
    "embedsignature": True,
}


class CythonBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Compiles the twins into extension modules for the wheel (and editable)."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        if os.environ.get("ARENAPOOL_NO_EXTENSIONS"):
            self.app.display_info("arenapool: ARENAPOOL_NO_EXTENSIONS is set; pure Python")
            return
        root = Path(self.root)
        try:
            built = compile_twins(root)
        except Exception as exc:  # no compiler, no headers, no Cython: build pure
            self.app.display_warning(
                f"arenapool: compiling the hot paths failed ({type(exc).__name__}: {exc}); "
                "building pure Python (slower; the package warns at import)"
            )
            return
        if not built:
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version == "editable":
            return  # the extensions sit beside their twins, where the editable path leads
        for path in built:
            build_data["force_include"][str(path)] = str(path.relative_to(root))


def twins(root: Path) -> list[str]:
    """The twins to compile (``arenapool._ext.TWINS``, read from that file without
    importing the package), as source paths relative to ``root``; a twin that does
    not exist yet is left out."""
    spec = importlib.util.spec_from_file_location("_arenapool_ext", root / "arenapool/_ext.py")
    if spec is None or spec.loader is None:
        msg = f"cannot load {root / 'arenapool/_ext.py'}"
        raise FileNotFoundError(msg)
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    paths = [name.replace(".", "/") + ".py" for name in ext.TWINS]
    return [path for path in paths if (root / path).exists()]


def compile_twins(root: Path) -> list[Path]:
    """Cythonize and compile every twin that exists; the extension files made."""
    from Cython.Build import cythonize  # noqa: PLC0415 - build-time only
    from setuptools import Distribution, Extension  # noqa: PLC0415

    work = root / "build" / "cython"
    extensions = []
    for twin in twins(root):
        source = root / twin
        if not source.exists():
            continue
        copy = work / Path(twin).with_name(Path(twin).stem + "_c.py")
        copy.parent.mkdir(parents=True, exist_ok=True)
        text = source.read_bytes()
        # ties the build to this source: arenapool._ext.source_digest, the same sum
        digest = hashlib.sha256(text).hexdigest()[:16]
        copy.write_bytes(text + f"\n__twin_digest__ = {digest!r}\n".encode())
        name = ".".join(Path(twin).with_suffix("").parts) + "_c"
        extensions.append(Extension(name, [str(copy.relative_to(root))]))
    if sys.platform.startswith("linux"):
        # plain C, not a twin: what it does has no pure-Python equivalent that could run
        # safely (arenapool/_pymalloc.py says why)
        extensions.append(Extension("arenapool._pymalloc_c", ["arenapool/_pymalloc_c.c"]))
        # plain C too: an arena allocator runs inside pymalloc, where no Python may run
        extensions.append(Extension("arenapool._arenacache_c", ["arenapool/_arenacache_c.c"]))
        # plain C too: a PyMem allocator runs inside CPython's allocation calls
        extensions.append(Extension("arenapool._blockcache_c", ["arenapool/_blockcache_c.c"]))
    if not extensions:
        return []
    here = Path.cwd()
    os.chdir(root)  # relative paths: short names in the C files and the build tree
    try:
        modules = cythonize(
            extensions,
            compiler_directives=DIRECTIVES,
            build_dir=str((work / "c").relative_to(root)),
            quiet=True,
            force=True,
        )
        dist = Distribution({"ext_modules": modules, "script_name": "hatch_build.py"})
        command: Any = dist.get_command_obj("build_ext")
        command.inplace = False
        command.build_lib = str(work / "lib")
        command.build_temp = str(work / "temp")
        command.ensure_finalized()
        command.run()
    finally:
        os.chdir(here)
    made = []
    for ext in modules:
        built = Path(command.get_ext_fullpath(ext.name))
        target = root / built.relative_to(work / "lib")
        # a new file renamed over the old one: a process that has the old one loaded
        # keeps its mapping (writing into it in place could crash that process)
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(built, partial)
        os.replace(partial, target)
        made.append(target)
    print(f"arenapool: compiled {', '.join(e.name for e in modules)}", file=sys.stderr)
    return made
