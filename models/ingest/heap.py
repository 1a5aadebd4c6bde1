"""Keep the memory of a big export's read returnable to the operating system (glibc only).

Reading an export chunk by chunk allocates many arrays of a few hundred kilobytes: the columns of
the rows kept, which stay, interleaved with the same number of short-lived ones. glibc's malloc
raises its mmap threshold every time a large block is freed (up to 32 MiB), so after the first
chunk those arrays all come from the heap, the kept ones pin the freed ones' pages, and the
resident size of a node grows by a third more than its data (measured: 134 MB more peak RSS for
a 1-million-row export). :func:`fix_mmap_threshold` sets the threshold once, to glibc's own
default of 128 KiB, which also turns off that dynamic adjustment (``mallopt(M_MMAP_THRESHOLD)``):
arrays of a chunk's size get their own mappings, given back when freed. Elsewhere (no glibc) it
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

M_MMAP_THRESHOLD = -3
THRESHOLD = 128 * 1024


@cache
def fix_mmap_threshold() -> bool:
    """Set glibc's mmap threshold to 128 KiB for this process (once); whether it was set."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD))
    except (OSError, AttributeError, TypeError):
        return False
