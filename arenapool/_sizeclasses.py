"""Size classes: which block a request of ``n`` bytes gets, and how many share a slab.

Classes run 4 per doubling from 4 KiB up to a pool's ``max_class`` (jemalloc and Netty
space them the same way), so a block wastes at most a fifth of itself. Small classes
share a slab of about ``SLAB_TARGET`` bytes; from 256 KiB up a slab holds one block.
A request above ``max_class`` gets a *huge* mapping of its own, page-rounded. With the
default ``max_class`` of 16 MiB::

    class    block    blocks/slab  |  class    block    blocks/slab
    -----    -----    -----------  |  -----    -----    -----------
      0       4 KiB        64      |   16      64 KiB        4
      1       5 KiB        48      |   17      80 KiB        3
      2       6 KiB        40      |   18      96 KiB        2
      3       7 KiB        36      |   19     112 KiB        2
      4       8 KiB        32      |   20     128 KiB        2
      5      10 KiB        24      |   21     160 KiB        1
      6      12 KiB        21      |   22     192 KiB        1
      7      14 KiB        16      |   23     224 KiB        1
      8      16 KiB        16      |   24     256 KiB        1
      9      20 KiB        12      |   ...    ...            1
     10      24 KiB        10      |   44      12 MiB        1
     11      28 KiB         9      |   45      14 MiB        1
     12      32 KiB         8      |   46      16 MiB        1
     13      40 KiB         6      |
     14      48 KiB         5      |   above max_class: one huge
     15      56 KiB         4      |   mapping, page-rounded

(Netty keeps its size-class table in the header of ``SizeClasses.java`` the same way.)
A slab of a class below 16 KiB that is not a whole number of pages holds a multiple of
4 blocks, since any 4 blocks of such a class span whole pages.
"""

from __future__ import annotations

import bisect
import mmap
from typing import Final

__all__ = ["MIN_CLASS", "PAGE", "SLAB_TARGET", "blocks_per_slab", "class_size", "size_classes"]

PAGE: Final = mmap.PAGESIZE
#: The smallest class.
MIN_CLASS: Final = 4096
#: Slabs of small classes hold several blocks; a slab aims at this many bytes.
SLAB_TARGET: Final = 256 * 1024


def size_classes(max_class: int) -> list[int]:
    """The block sizes a pool with this ``max_class`` uses: 4 per doubling from 4 KiB."""
    classes: list[int] = []
    base = MIN_CLASS
    while base <= max_class:
        for quarter in (4, 5, 6, 7):
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
