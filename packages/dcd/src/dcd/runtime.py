"""Process-level CPU settings for the demo, bench and train commands."""

from __future__ import annotations

import ctypes
import sys

__all__ = ["tune_malloc"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc(threshold: int = 256 << 20) -> bool:
    """Keep large freed blocks in glibc's heap (mmap and trim thresholds raised to ``threshold`` bytes).

    Why: feature maps of a few MB are otherwise mmap-ed and unmapped on every allocation, and each fresh page is a
    page fault; on the shared test machines that made e.g. conv → multiply on a 96×112×112 map 40× slower than the
    two ops alone. Dynamic layers create more such temporaries than static ones, so the effect skews comparisons.
    Applies to the whole process (every model alike). Returns False where glibc's ``mallopt`` is unavailable.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, threshold))
