"""A JSON ingest service, written the ways people write it today and with arenapool.

POST /ingest takes ``{"records": [{"value": int, "tag": str, ...}, ...], ...}`` and
answers ``{"count": n, "sum": <sum of value>, "digest": <BLAKE2b-64 of the tags>}``, so a
client can check every answer. GET /health answers ``{"status": "ok", ...}``.

Modes (the only difference between them is how the body is read and the answer built):

- ``plain``: ``await request.json()`` and ``web.json_response`` (aiohttp's defaults).
- ``orjson``: ``orjson.loads(await request.read())`` and ``orjson.dumps`` — the usual
  "fast JSON" version of the same handler.
- ``arenapool``: the body is read into a request-scoped arena from a budgeted
  ``SlabPool`` and decoded from there with orjson (``read_json``); the answer is built
  with ``json_response``.
- ``msgspec``: plain aiohttp plus ``msgspec.json.Decoder(Ingest).decode(await
  request.read())``: msgspec decodes into typed records (small ``Struct``s) and checks
  their shape in C; the answer is built with ``orjson.dumps``. The baseline for
  ``arenapool-msgspec``.
- ``arenapool-msgspec``: arenapool's body path decoding with the same ``Ingest`` Struct
  (``read_json(request, type=Ingest)``).

``--trim-interval SECONDS`` (any mode) adds what users write by hand against a growing
C heap (aiohttp issue #11043): a task that calls glibc's ``malloc_trim(0)`` every
``SECONDS``, busy or idle. The benchmarks call ``orjson`` with it ``orjson+trim``.

Run it::

    python app.py --mode arenapool --port 8080 --budget 256MiB --limit 8MiB
    gunicorn 'app:make_app("arenapool")' --worker-class aiohttp.GunicornWebWorker

``arenapool demo``/``bench``/``soak`` start this file as a subprocess. It depends only on
aiohttp and orjson (plus arenapool and msgspec for those modes), so it can be copied.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import hashlib
import os
import re
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

MODES = ("plain", "orjson", "msgspec", "arenapool", "arenapool-msgspec")
MODE_KEY = web.AppKey("example_mode", str)


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Count the records, add up their ``value``s and hash their ``tag``s in order."""
    digest = hashlib.blake2b(digest_size=8)
    total = 0
    for record in records:
        total += record["value"]
        digest.update(record["tag"].encode())
    return {"count": len(records), "sum": total, "digest": digest.hexdigest()}


def records_of(doc: Any) -> list[dict[str, Any]]:
    """The ``records`` list of a decoded body, or a 400 that says what was wrong."""
    records = doc.get("records") if isinstance(doc, dict) else None
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and isinstance(r.get("value"), int) and isinstance(r.get("tag"), str)
        for r in records
    ):
        detail = 'expected {"records": [{"value": int, "tag": str, ...}, ...]}'
        raise bad_request("bad_request", detail)
    return records


def bad_request(code: str, detail: str) -> web.HTTPBadRequest:
    text = orjson.dumps({"error": code, "detail": detail}).decode()
    return web.HTTPBadRequest(text=text, content_type="application/json")


# --- the handlers, one per mode ------------------------------------------------------


async def ingest_plain(request: web.Request) -> web.Response:
    try:
        doc = await request.json()
    except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError
        raise bad_request("invalid_json", str(exc)) from None
    return web.json_response(summarize(records_of(doc)))


async def ingest_orjson(request: web.Request) -> web.Response:
    try:
        doc = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise bad_request("invalid_json", str(exc)) from None
    body = orjson.dumps(summarize(records_of(doc)))
    return web.Response(body=body, content_type="application/json")


def ingest_type() -> Any:
    """The ``Ingest`` Struct both msgspec modes decode into (msgspec imported here, so
    the other modes run without it). Other fields of a record are ignored; a missing or
    mistyped one is a 400."""
    import msgspec  # noqa: PLC0415

    record = msgspec.defstruct("Record", [("value", int), ("tag", str)])
    return msgspec.defstruct("Ingest", [("records", list[record])])  # type: ignore[valid-type]


def summarize_typed(records: list[Any]) -> dict[str, Any]:
    """:func:`summarize` for ``Record`` Structs."""
    digest = hashlib.blake2b(digest_size=8)
    total = 0
    for record in records:
        total += record.value
        digest.update(record.tag.encode())
    return {"count": len(records), "sum": total, "digest": digest.hexdigest()}


def msgspec_handler() -> Any:
    """Plain aiohttp with msgspec: ``request.read()`` then a typed decode."""
    import msgspec  # noqa: PLC0415

    decoder = msgspec.json.Decoder(ingest_type())

    async def ingest_msgspec(request: web.Request) -> web.Response:
        try:
            records = decoder.decode(await request.read()).records
        except (msgspec.DecodeError, RecursionError) as exc:  # ValidationError is one
            raise bad_request("invalid_json", str(exc)) from None
        body = orjson.dumps(summarize_typed(records))
        return web.Response(body=body, content_type="application/json")

    return ingest_msgspec


def arenapool_handler(typed: bool) -> Any:
    """The arenapool handler (imported here, so the other modes run without arenapool)."""
    from arenapool.aiohttp import json_response, read_json  # noqa: PLC0415

    async def ingest_arenapool(request: web.Request) -> web.Response:
        # read_json reads the body into this request's arena (small bodies: decodes the
        # bytes aiohttp already holds); a bad body becomes a 400 (InvalidJSON) or 413
        # (over the limit) in the middleware.
        doc = await read_json(request)
        return json_response(summarize(records_of(doc)))

    if not typed:
        return ingest_arenapool
    ingest = ingest_type()

    async def ingest_typed(request: web.Request) -> web.Response:
        # decoded and validated by msgspec in one pass; a wrong shape is a 400
        records = (await read_json(request, type=ingest)).records
        return json_response(summarize_typed(records))

    return ingest_typed


def add_trim_loop(app: web.Application, interval: float) -> None:
    """Call glibc's ``malloc_trim(0)`` every ``interval`` seconds while the app runs.

    The hand-written remedy of aiohttp issue #11043: it returns the C heap's free pages
    to the OS whatever the load, on the event loop (the call holds the GIL). Does
    nothing where the C library has no ``malloc_trim`` (not glibc).
    """
    libc_name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc_name), "malloc_trim", None) if libc_name else None
    if trim is None:
        return

    async def trim_forever() -> None:
        while True:
            await asyncio.sleep(interval)
            trim(0)

    async def trim_context(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(trim_forever())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(trim_context)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "mode": request.app[MODE_KEY], "pid": os.getpid()})


def make_app(
    mode: str = "arenapool",
    *,
    budget: str = "256MiB",
    limit: str = "8MiB",
    decay: float = 10.0,
    retain: str | None = "2MiB",  # the SlabPool default
    stretch: float = 4.0,  # the SlabPool default
    calibrate: bool = True,  # the SlabPool default
    mid_classes: int = 1,  # the SlabPool default
    keep_huge_warm: bool = True,  # the SlabPool default
    warm_rate: float | None = None,  # the SlabPool default
    warm_share: float | None = 0.25,  # the SlabPool default
    populate: bool = True,  # the SlabPool default
    governor: bool = True,
    admin_token: str | None = None,
    trim_interval: float = 0.0,
    busy_trim: str | None = "2MiB",
    busy_trim_interval: float = 1.0,
    heap_trim_every: float | None = None,
    spread_trim_every: float | None = 1.0,
    mmap_threshold: str | None = None,
    hold_heap: bool = True,
    release_pymalloc: bool = True,
    freeze_gc: bool = True,
    gc_full_every: int | None = 40,
    gc_young_every: int | None = 10_000,
    gc_young_threshold: int | None = None,
    settle_busy_trims: bool = True,
    busy_trim_swing: bool = True,
    gc_young_tick: bool = True,
    arena_cache: str | None = "32MiB",
    block_cache: str | None = "16MiB",
    block_cache_huge_pages: bool = False,
    block_cache_fit: bool = False,
    block_cache_spread: str | None = "3MiB",
    noop_middleware: bool = False,
) -> web.Application:
    """The ingest service in ``mode`` (one of :data:`MODES`).

    ``limit`` caps one request body in every mode (aiohttp's ``client_max_size`` for
    ``plain``/``orjson``, the arena limit for arenapool); ``budget`` and ``decay`` size
    arenapool's ``SlabPool``, as do ``retain``, ``stretch``, ``calibrate`` (the warm reserves
    recalibrated from the traffic), ``mid_classes`` (size classes per doubling
    from 64 KiB to 1 MiB), ``keep_huge_warm`` (idle blocks of 2 MiB and more kept warm
    too), ``warm_rate`` (the lends a second a class needs to keep idle blocks warm),
    ``warm_share`` (the share of the lends a class needs to keep a calibrated reserve) and
    ``populate`` (a cold block's pages faulted in with one call before it is filled);
    ``governor`` runs arenapool's memory governor (it gives freed C heap back to the OS
    when the server goes idle); ``admin_token`` turns on
    arenapool's admin routes (``/_arenapool/stats`` and the dashboard);
    ``trim_interval`` > 0 runs the ``malloc_trim(0)`` loop (:func:`add_trim_loop`).
    The governor trims under load when ``busy_trim`` of freed C heap is worth it
    (``None``: only when idle), at most once every ``busy_trim_interval`` seconds while
    the trims pay; while the body sizes are spread over the pool's classes it calls
    ``malloc_trim(0)`` every ``spread_trim_every`` seconds instead
    (``GovernorConfig.spread_trim_every``; ``None``: the busy trims whatever the sizes),
    and with ``heap_trim_every`` that often under load whatever the sizes
    (``GovernorConfig.heap_trim_every``). It pins glibc's mmap threshold at
    ``mmap_threshold`` when given (large buffers then get mappings of their own,
    returned on free); otherwise it holds the C heap (``GovernorConfig.hold_heap``)
    unless ``hold_heap`` is False. Its trims give back pymalloc's empty pools unless
    ``release_pymalloc`` is False (``GovernorConfig.release_pymalloc``). At its start it
    freezes what the process holds out of the cyclic collector's sight unless
    ``freeze_gc`` is False (``GovernorConfig.freeze_gc``), and then spaces full
    collections ``gc_full_every`` middle-generation collections apart
    (``GovernorConfig.gc_full_every``; ``None``: CPython's 10). It lets
    ``gc_young_every`` tracked objects come between two young collections
    (``GovernorConfig.gc_young_every``; ``None``: CPython's 700). In any mode,
    ``gc_young_threshold`` sets that first threshold at startup without arenapool (what
    the governor does, for the baselines). A busy trim whose return
    the traffic takes straight back counts as one that did not pay unless
    ``settle_busy_trims`` is False (``GovernorConfig.settle_busy_trims``), and the busy
    trims learn the free heap's swing unless ``busy_trim_swing`` is False
    (``GovernorConfig.busy_trim_swing``). It caches up to
    ``arena_cache`` of the arenas pymalloc frees (``GovernorConfig.arena_cache``;
    ``None``: no cache), and serves the decoder's work buffers from its large-block
    region, ``block_cache`` of their pages kept warm (``GovernorConfig.block_cache``;
    ``None``: glibc serves them), in transparent huge pages when
    ``block_cache_huge_pages``; while the body sizes are spread over the pool's classes
    it keeps no more than ``block_cache_spread`` warm (``GovernorConfig.block_cache_spread``;
    ``None``: ``block_cache`` whatever the traffic); with ``block_cache_fit`` that bound
    moves with the traffic (``GovernorConfig.block_cache_fit``). ``noop_middleware``
    appends one middleware that does nothing: what aiohttp's middleware machinery alone
    costs a request (arenapool's own runs as one).
    """
    if mode not in MODES:
        msg = f"unknown mode {mode!r}; choose from {', '.join(MODES)}"
        raise ValueError(msg)
    max_size = parse_size(limit)
    app = web.Application(client_max_size=max_size)
    app[MODE_KEY] = mode
    app.router.add_get("/health", health)
    if mode == "plain":
        app.router.add_post("/ingest", ingest_plain)
    elif mode == "orjson":
        app.router.add_post("/ingest", ingest_orjson)
    elif mode == "msgspec":
        app.router.add_post("/ingest", msgspec_handler())
    else:
        # Imported here so the plain and orjson modes run without arenapool loaded.
        import arenapool  # noqa: PLC0415
        import arenapool.aiohttp  # noqa: PLC0415

        # named, so that every worker's pool carries the same label in the metrics
        # (under gunicorn with PROMETHEUS_MULTIPROC_DIR they add up per pool)
        pool = arenapool.SlabPool(
            budget=budget,
            max_class="16MiB",
            decay=decay,
            retain=retain,
            stretch=stretch,
            calibrate=calibrate,
            mid_classes=mid_classes,
            keep_huge_warm=keep_huge_warm,
            warm_rate=warm_rate,
            warm_share=warm_share,
            populate=populate,
            name="ingest",
        )
        governor_config = (
            arenapool.GovernorConfig(
                busy_trim_threshold=busy_trim,
                busy_trim_interval=busy_trim_interval,
                busy_trim_max_interval=max(32.0, busy_trim_interval),
                heap_trim_every=heap_trim_every,
                spread_trim_every=spread_trim_every,
                mmap_threshold=mmap_threshold,
                hold_heap=hold_heap,
                release_pymalloc=release_pymalloc,
                freeze_gc=freeze_gc,
                gc_full_every=gc_full_every,
                gc_young_every=gc_young_every,
                settle_busy_trims=settle_busy_trims,
                busy_trim_swing=busy_trim_swing,
                gc_young_tick=gc_young_tick,
                arena_cache=arena_cache,
                block_cache=block_cache,
                block_cache_huge_pages=block_cache_huge_pages,
                block_cache_fit=block_cache_fit,
                block_cache_spread=block_cache_spread,
            )
            if governor
            else None
        )
        arenapool.aiohttp.setup(
            app,
            pool=pool,
            limit=limit,
            governor=governor_config,
            admin=_admin(admin_token),
        )
        app.router.add_post("/ingest", arenapool_handler(typed=mode == "arenapool-msgspec"))
    if gc_young_threshold is not None:
        set_young_threshold(app, gc_young_threshold)
    if trim_interval > 0:
        add_trim_loop(app, trim_interval)
    if noop_middleware:
        app.middlewares.append(do_nothing)
    return app


def set_young_threshold(app: web.Application, every: int) -> None:
    """Set CPython's first collection threshold to ``every`` as ``app`` starts, as
    arenapool's governor does (``GovernorConfig.gc_young_every``), without arenapool: the
    baselines' ``+gc`` modes, so a benchmark can tell that share of arenapool's gain from
    the arena's."""

    async def on_startup(app: web.Application) -> None:
        _, second, third = gc.get_threshold()
        gc.set_threshold(every, second, third)

    app.on_startup.append(on_startup)


@web.middleware
async def do_nothing(request: web.Request, handler: Any) -> web.StreamResponse:
    """A middleware that only calls the handler (see ``make_app(noop_middleware=)``)."""
    response: web.StreamResponse = await handler(request)
    return response


def _admin(token: str | None) -> Any:
    if not token:
        return False
    from arenapool.aiohttp import AdminConfig  # noqa: PLC0415

    return AdminConfig(token=token)


# the units arenapool.parse_size takes: KiB (or K), MiB, GiB, TiB in powers of 1024,
# kB, MB, GB, TB in powers of 1000 (written out here, not imported: the plain, orjson and
# msgspec modes are the baselines and run without arenapool loaded)
_UNITS = {"": 1, "b": 1} | {
    letter + tail: base**power
    for power, letter in enumerate("kmgt", start=1)
    for tail, base in (("", 1024), ("ib", 1024), ("b", 1000))
}


def parse_size(text: str) -> int:
    """``"8MiB"`` -> 8388608 (bytes, or the units arenapool's sizes take: KiB, MiB,
    GiB, TiB, kB, MB, GB, TB)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if match is None or match[2].lower() not in _UNITS:
        msg = f"{text!r} is not a size like '8MiB'"
        raise ValueError(msg)
    return int(float(match[1]) * _UNITS[match[2].lower()])


def _checked_size(text: str, expected: str) -> str:
    """``text`` as written, once :func:`parse_size` takes it; else argparse's error,
    saying what was ``expected`` (argparse names the option in its message)."""
    try:
        parse_size(text)
    except ValueError:
        msg = f"expected {expected}, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    return text


def size_text(text: str) -> str:
    """An option's size, checked and passed on as written."""
    return _checked_size(text, "a size like '8MiB'")


def size_or_none(text: str) -> str | None:
    """An option's value that is a size or ``none`` (see :func:`size_text`)."""
    if text.lower() == "none":
        return None
    return _checked_size(text, "a size like '8MiB' or 'none'")


def number_or_none(text: str) -> float | None:
    """An option's value that is a number or ``none`` (argparse names the option in its
    message when this raises)."""
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        msg = f"expected a number or 'none', got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def count_or_none(text: str) -> int | None:
    """An option's value that is a whole number of at least 1, or ``none``."""
    if text.lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"expected a whole number of at least 1 or 'none', got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _app_of(args: argparse.Namespace) -> web.Application:
    """The app that ``main``'s parsed options describe."""
    return make_app(
        args.mode,
        budget=args.budget,
        limit=args.limit,
        decay=args.decay,
        retain=args.retain,
        stretch=args.stretch,
        calibrate=args.calibrate,
        mid_classes=args.mid_classes,
        keep_huge_warm=args.keep_huge_warm,
        warm_rate=args.warm_rate,
        warm_share=args.warm_share,
        populate=args.populate,
        governor=args.governor,
        admin_token=args.admin_token,
        trim_interval=args.trim_interval,
        busy_trim=args.busy_trim,
        busy_trim_interval=args.busy_trim_interval,
        heap_trim_every=args.heap_trim_every,
        spread_trim_every=args.spread_trim_every,
        mmap_threshold=args.mmap_threshold,
        hold_heap=not args.glibc_heap,
        release_pymalloc=not args.keep_pymalloc_pools,
        freeze_gc=not args.no_gc_freeze,
        gc_full_every=args.gc_full_every,
        gc_young_every=args.gc_young_every,
        gc_young_threshold=args.gc_young_threshold,
        settle_busy_trims=not args.unsettled_busy_trims,
        busy_trim_swing=not args.no_busy_trim_swing,
        gc_young_tick=not args.no_gc_young_tick,
        arena_cache=args.arena_cache,
        block_cache=args.block_cache,
        block_cache_huge_pages=args.block_cache_huge_pages,
        block_cache_fit=args.block_cache_fit,
        block_cache_spread=args.block_cache_spread,
        noop_middleware=args.noop_middleware,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The arenapool example ingest service.")
    parser.add_argument("--mode", choices=MODES, default="arenapool", help="how bodies are read")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to bind (8080)")
    parser.add_argument(
        "--budget", default="256MiB", type=size_text, help="arenapool budget (256MiB)"
    )
    parser.add_argument(
        "--limit", default="8MiB", type=size_text, help="largest request body (8MiB)"
    )
    parser.add_argument("--decay", type=float, default=10.0, help="seconds before idle slabs go")
    parser.add_argument(
        "--retain",
        default="2MiB",
        type=size_or_none,
        help="most idle slab memory kept resident between decays (2MiB, the SlabPool "
        "default; 'none': no cap)",
    )
    parser.add_argument(
        "--stretch",
        type=float,
        default=4.0,
        help="a lend of 256 KiB or more with no warm block in its class may take a larger "
        "class's, up to this factor of its size (4, the SlabPool default; 1: never)",
    )
    parser.add_argument(
        "--no-calibrate",
        dest="calibrate",
        action="store_false",
        help="arenapool modes: keep the warm reserves at their floor instead of "
        "recalibrating them from the traffic (SlabPool calibrate=False)",
    )
    parser.add_argument(
        "--mid-classes",
        type=int,
        choices=(1, 2, 4),
        default=1,
        help="arenapool modes: size classes per doubling from 64 KiB to 1 MiB (1, the "
        "SlabPool default; 4: as fine as elsewhere)",
    )
    parser.add_argument(
        "--cold-huge",
        dest="keep_huge_warm",
        action="store_false",
        help="arenapool modes: idle blocks of 2 MiB and more (in huge pages) go back to the "
        "OS soon after each large body, however often they are lent (SlabPool "
        "keep_huge_warm=False)",
    )
    parser.add_argument(
        "--warm-rate",
        default="none",
        type=number_or_none,
        help="arenapool modes: lends a second a size class needs to keep idle blocks warm "
        "('none', the SlabPool default: every class keeps its calibrated reserve)",
    )
    parser.add_argument(
        "--warm-share",
        default="0.25",
        type=number_or_none,
        help="arenapool modes: the share of the pool's lends a size class needs to keep a "
        "calibrated warm reserve (0.25, the SlabPool default; 'none': every class keeps "
        "its own)",
    )
    parser.add_argument(
        "--no-populate",
        dest="populate",
        action="store_false",
        help="arenapool modes: a block whose pages were given back faults them in page by "
        "page as its body is read into it (SlabPool populate=False)",
    )
    parser.add_argument(
        "--no-governor",
        dest="governor",
        action="store_false",
        help="arenapool modes: do not run the memory governor",
    )
    parser.add_argument(
        "--admin-token",
        default=os.environ.get("ARENAPOOL_ADMIN_TOKEN"),
        help="enable /_arenapool/ admin routes with this token (env ARENAPOOL_ADMIN_TOKEN)",
    )
    parser.add_argument(
        "--trim-interval",
        type=float,
        default=0.0,
        help="call malloc_trim(0) every this many seconds (default: 0, never)",
    )
    parser.add_argument(
        "--busy-trim",
        default="2MiB",
        type=size_or_none,
        help="arenapool modes: freed C heap that makes the governor trim under load "
        "(2MiB; 'none': only when idle)",
    )
    parser.add_argument(
        "--busy-trim-interval",
        type=float,
        default=1.0,
        help="arenapool modes: least seconds between two busy trims while they pay (1.0)",
    )
    parser.add_argument(
        "--spread-trim-every",
        default="1",
        type=number_or_none,
        help="arenapool modes: while the body sizes are spread over the pool's classes, "
        "malloc_trim(0) every this many seconds under load instead of the busy trims "
        "(1, the GovernorConfig default; 'none': the busy trims whatever the sizes)",
    )
    parser.add_argument(
        "--heap-trim-every",
        type=float,
        default=None,
        help="arenapool modes: under load, malloc_trim(0) every this many seconds on the "
        "loop instead of the busy trims (default: off)",
    )
    parser.add_argument(
        "--mmap-threshold",
        default=None,
        type=size_text,
        help="arenapool modes: pin glibc's mmap threshold at this size (default: leave it)",
    )
    parser.add_argument(
        "--glibc-heap",
        action="store_true",
        help="arenapool modes: leave glibc's heap thresholds dynamic (no hold_heap)",
    )
    parser.add_argument(
        "--keep-pymalloc-pools",
        action="store_true",
        help="arenapool modes: the governor's trims leave pymalloc's empty pools resident",
    )
    parser.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="arenapool modes: the governor leaves the cyclic collector as it is instead "
        "of freezing the objects alive at its start (GovernorConfig(freeze_gc=False))",
    )
    parser.add_argument(
        "--gc-full-every",
        default="40",
        type=count_or_none,
        help="arenapool modes: after the freeze, middle-generation collections between two "
        "full ones (40, the GovernorConfig default; 'none': CPython's own 10)",
    )
    parser.add_argument(
        "--gc-young-every",
        default="10000",
        type=count_or_none,
        help="arenapool modes: tracked objects between two young collections (10000, the "
        "GovernorConfig default; 'none': CPython's own 700)",
    )
    parser.add_argument(
        "--gc-young-threshold",
        default=None,
        type=count_or_none,
        help="any mode: set CPython's first collection threshold to this at startup, as "
        "arenapool's governor does (the baselines' +gc modes; default: leave it)",
    )
    parser.add_argument(
        "--unsettled-busy-trims",
        action="store_true",
        help="arenapool modes: judge a busy trim only by the RSS drop right after it, not "
        "again at the next reading (GovernorConfig(settle_busy_trims=False))",
    )
    parser.add_argument(
        "--no-gc-young-tick",
        action="store_true",
        help="arenapool modes: no young collection at the governor's check under load "
        "(GovernorConfig(gc_young_tick=False))",
    )
    parser.add_argument(
        "--no-busy-trim-swing",
        action="store_true",
        help="arenapool modes: busy trims by the threshold and the back-off alone, not "
        "past the free heap's swing (GovernorConfig(busy_trim_swing=False))",
    )
    parser.add_argument(
        "--arena-cache",
        default="32MiB",
        type=size_or_none,
        help="arenapool modes: most bytes of pymalloc's freed arenas the governor keeps "
        "for reuse (32MiB; 'none': no cache)",
    )
    parser.add_argument(
        "--block-cache",
        default="16MiB",
        type=size_or_none,
        help="arenapool modes: bytes of the large-block region (the decoder's work "
        "buffers) the governor keeps warm (16MiB; 'none': glibc serves those blocks)",
    )
    parser.add_argument(
        "--block-cache-huge-pages",
        action="store_true",
        help="arenapool modes: back the large-block region with transparent huge pages "
        "(GovernorConfig(block_cache_huge_pages=True))",
    )
    parser.add_argument(
        "--block-cache-fit",
        action="store_true",
        help="arenapool modes: move the large-block region's warm bound with the traffic, "
        "up to --block-cache (GovernorConfig(block_cache_fit=True))",
    )
    parser.add_argument(
        "--block-cache-spread",
        default="3MiB",
        type=size_or_none,
        help="arenapool modes: while the body sizes are spread over the pool's classes, "
        "keep at most this many bytes of the large-block region warm (3MiB; 'none': "
        "--block-cache whatever the traffic; GovernorConfig(block_cache_spread=))",
    )
    parser.add_argument(
        "--backlog",
        type=int,
        default=2048,
        help="listen backlog (default 2048, gunicorn's; aiohttp's own is 128)",
    )
    parser.add_argument(
        "--noop-middleware",
        action="store_true",
        help="append one do-nothing middleware (measures aiohttp's middleware cost)",
    )
    parser.add_argument(
        "--idle-thread",
        action="store_true",
        help="start one thread that waits forever: glibc then runs the process as "
        "multi-threaded (a lock on every malloc and free), as any thread makes it",
    )
    args = parser.parse_args(argv)
    try:
        app = _app_of(args)
    except ValueError as exc:  # a setting arenapool refuses (a budget of 0, say)
        parser.error(str(exc))
    if args.idle_thread:
        threading.Thread(target=threading.Event().wait, name="idle", daemon=True).start()
    ready = f"example service ({args.mode}) on http://{args.host}:{args.port} pid {os.getpid()}"
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        # aiohttp's default listen backlog is 128: a burst of 2,048 new connections then
        # waits in SYN-ACK retries (1 s, 3 s, 7 s) before the server sees a byte of them,
        # and no answer, not even a quick 503, can be faster than that. The kernel caps
        # it at net.core.somaxconn (4096 on most systems); gunicorn's default is 2048.
        backlog=args.backlog,
        access_log=None,
        print=lambda _: print(ready, file=sys.stderr, flush=True),
    )


if __name__ == "__main__":
    main()
