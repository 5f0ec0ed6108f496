"""Reading request bodies into the request's arena, and decoding JSON from them.

Theory of operation
-------------------
Both functions go through one dispatcher (``_hotpath.read_into_arena``, or for small
declared bodies ``_hotpath.read_inline``), which uses the arena's public API only:

- a declared ``Content-Length`` above the room left in the arena is refused (413)
  before a byte is read (not for a content-coded body: its length is the compressed
  size; it is cut off at the limit as it inflates);
- the body is read into one allocation sized to what has arrived: all of a declared
  body already buffered (one allocation, one copy); a declared body that has sent
  :data:`FIRST_STEP` is admitted as a whole and read into one allocation of its
  declared size (filled in place, no copy but the one from aiohttp's chunks); else
  :data:`FIRST_STEP`, grown with ``Arena.realloc_async`` as bytes arrive (to the
  declared size once admitted; doubling, or to what is buffered, without one). A
  connection that has sent less than ``FIRST_STEP`` holds that step and no admission,
  so slow senders cannot hold the budget (cf. fasthttp PR #2408);
- every wait for budget is FIFO, bounded by ``queue_timeout`` and given up when the
  client leaves; every read is bounded by ``body_timeout`` and ``body_min_rate`` (408).

Both live in ``_hotpath`` (compiled when built) and are re-exported here.
:func:`read_json` decodes small declared bodies from the ``bytes`` aiohttp already holds
(up to ``inline_max``) and everything else from the arena.
"""

from __future__ import annotations

from ._hotpath import DISCONNECT_POLL, FIRST_STEP, check_json_type, read_body, read_json

__all__ = ["DISCONNECT_POLL", "FIRST_STEP", "check_json_type", "read_body", "read_json"]
