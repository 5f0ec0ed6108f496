"""Loading the example service (integrations/example_service/app.py) in a test process."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

EXAMPLE = Path(__file__).resolve().parents[1] / "integrations" / "example_service" / "app.py"


def load_example(name: str = "example_service_app") -> Any:
    """A fresh module run from the service's file, named ``name``.

    The service is a script users copy, not a package: it is loaded from its file.
    """
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
