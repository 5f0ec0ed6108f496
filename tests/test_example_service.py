"""The example service (integrations/example_service/app.py) in every mode, over a socket."""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from harness.workload import make_body

# the service is a script users copy, not a package: load it from its file
_SPEC = importlib.util.spec_from_file_location(
    "example_service_app",
    Path(__file__).resolve().parents[1] / "integrations" / "example_service" / "app.py",
)
assert _SPEC is not None
assert _SPEC.loader is not None
example = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(example)

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.mark.parametrize("mode", example.MODES)
@pytest.mark.parametrize("size", [200, 50_000, 600_000])
async def test_every_mode_gives_the_expected_summary(
    aiohttp_client: ClientFactory, mode: str, size: int
) -> None:
    """Small (inline), medium and large bodies get the summary the client expects."""
    client = await aiohttp_client(example.make_app(mode, governor=False))
    body = make_body(size, random.Random(size))
    response = await client.post("/ingest", data=body.data)
    assert (200, body.expected()) == (response.status, await response.json())


@pytest.mark.parametrize("mode", example.MODES)
@pytest.mark.parametrize(
    "data", [b'{"records": [{"value": "x", "tag": "t"}]}', b'{"records": 3}', b"[1, 2"]
)
async def test_every_mode_refuses_a_bad_body_with_400(
    aiohttp_client: ClientFactory, mode: str, data: bytes
) -> None:
    """A wrong shape or malformed JSON is a 400 with a JSON error body, in every mode."""
    client = await aiohttp_client(example.make_app(mode, governor=False))
    response = await client.post("/ingest", data=data)
    assert 400 == response.status
    assert {"error", "detail"} <= set(await response.json())
