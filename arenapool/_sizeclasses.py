"""Size classes: which block a request of ``n`` bytes gets, and how many share a slab.

Classes run 4 per doubling (jemalloc and Netty space them the same way, so a block
wastes at most a fifth of itself), except from 64 KiB to 1 MiB (:data:`MID_FROM`,
:data:`MID_TO`), where they run ``mid_classes`` per doubling: 1 by default, so 64 KiB, 128 KiB,
256 KiB, 512 KiB, 1 MiB. Small classes share a slab of about ``SLAB_TARGET`` bytes; from
256 KiB up a slab holds one block. A request above ``max_class`` gets a *huge* mapping
of its own, page-rounded. With the default ``max_class`` of 16 MiB::

    class    block    blocks/slab  |  class    block    blocks/slab
    -----    -----    -----------  |  -----    -----    -----------
      0       4 KiB        64      |   17     128 KiB        2
      1       5 KiB        48      |   18     256 KiB        1
      2       6 KiB        40      |   19     512 KiB        1
      3       7 KiB        36      |   20       1 MiB        1
      4       8 KiB        32      |   21    1.25 MiB        1
      5      10 KiB        24      |   22     1.5 MiB        1
      6      12 KiB        21      |   23    1.75 MiB        1
      7      14 KiB        16      |   24       2 MiB        1
      8      16 KiB        16      |   25     2.5 MiB        1
      9      20 KiB        12      |   ...    ...            1
     10      24 KiB        10      |   34      12 MiB        1
     11      28 KiB         9      |   35      14 MiB        1
     12      32 KiB         8      |   36      16 MiB        1
     13      40 KiB         6      |
     14      48 KiB         5      |   above max_class: one huge
     15      56 KiB         4      |   mapping, page-rounded
     16      64 KiB         4      |

(Netty keeps its size-class table in the header of ``SizeClasses.java`` the same way.)
A slab of a class below 16 KiB that is not a whole number of pages holds a multiple of
4 blocks, since any 4 blocks of such a class span whole pages.

Why the middle classes are coarse: a slab there holds one block (or two), so a class's
idle blocks serve only that class, where a general allocator (glibc, jemalloc) hands a
freed chunk's warm pages to the next request of any size. Bodies spread over many fine
classes then need an idle block warm in each of them: either that many committed idle
blocks (RSS), or blocks given back under the pool's ``retain`` cap and faulted in again
on their next lend. One class per doubling keeps a spread of sizes on fewer blocks,
each reused more often and warm; a body never commits the pages of its block it does
not touch, so the coarse class costs address space and budget (a block is charged
whole: up to twice the body), not RSS. Above 1 MiB that no longer holds: a block of 2
MiB or more is backed by transparent huge pages (``SlabPool(huge_pages=True)``), which
commit 2 MiB at a time, so a coarse class there would commit memory its body never
needed; and a body that large costs its handler far more than a fault. Measured in
``benchmarks/README.md`` ("Coarse middle classes").
"""

from __future__ import annotations

import bisect
import mmap
from typing import Final

from ._errors import InvalidSize

__all__ = [
    "MID_FROM",
    "MID_TO",
    "MIN_CLASS",
    "PAGE",
    "SLAB_TARGET",
    "STRETCH_FROM",
    "blocks_per_slab",
    "class_size",
    "size_classes",
]

PAGE: Final = mmap.PAGESIZE
#: The smallest class.
MIN_CLASS: Final = 4096
#: Slabs of small classes hold several blocks; a slab aims at this many bytes.
SLAB_TARGET: Final = 256 * 1024
#: Classes from this size up to :data:`MID_TO` run ``mid_classes`` per doubling.
MID_FROM: Final = 64 * 1024
#: The smallest class whose lends may stretch to a larger class's warm block
#: (``SlabPool(stretch=)``): from here up a slab holds one block.
STRETCH_FROM: Final = 256 * 1024
#: The last class of the middle range; classes above it run 4 per doubling again.
MID_TO: Final = 1024 * 1024
#: the quarters of a doubling each spacing keeps (a class is ``base * quarter // 4``)
_QUARTERS: Final = {1: (4,), 2: (4, 6), 4: (4, 5, 6, 7)}


def size_classes(max_class: int, mid_classes: int = 1) -> list[int]:
    """The block sizes a pool with this ``max_class`` uses: 4 per doubling from 4 KiB,
    ``mid_classes`` per doubling (1, 2 or 4) from :data:`MID_FROM` to :data:`MID_TO`;
    :class:`InvalidSize` (a ``ValueError``) for another spacing."""
    mid_quarters = _QUARTERS.get(mid_classes)
    if mid_quarters is None:
        msg = f"mid_classes must be 1, 2 or 4 per doubling, got {mid_classes!r}"
        raise InvalidSize(msg, value=mid_classes)
    classes: list[int] = []
    base = MIN_CLASS
    while base <= max_class:
        quarters = mid_quarters if MID_FROM <= base < MID_TO else _QUARTERS[4]
        for quarter in quarters:
            size = base * quarter // 4
            if size > max_class:
                break
            classes.append(size)
        base *= 2
    return classes


def class_size(sizes: list[int], max_class: int, nbytes: int) -> int:
    """The size of block a request for ``nbytes`` gets: its class, or page-rounded
    above ``max_class`` (``sizes`` is ``size_classes(max_class)``)."""
    if nbytes <= max_class:
        return sizes[bisect.bisect_left(sizes, nbytes)]
    return -(-nbytes // PAGE) * PAGE


def blocks_per_slab(size: int) -> int:
    """How many blocks of ``size`` one slab holds; slab bytes are a multiple of a page."""
    if size >= SLAB_TARGET:
        return 1
    count = SLAB_TARGET // size
    if size % PAGE:
        # Four blocks of any class below 16 KiB span a whole number of pages
        # (each class is base * q / 4 with base a multiple of 4 KiB).
        count -= count % 4
    return max(count, 1)
