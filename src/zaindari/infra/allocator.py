"""glibc malloc settings for a long-lived function process (a warm Lambda container).

By default glibc gives freed heap back to the kernel as soon as more than 128 KiB sits free at
its top, and serves every allocation above a (self-adjusting) threshold with a fresh ``mmap``.
A batch of 1,000 readings allocates and frees a few MiB (pydantic models, row dicts, JSON
buffers, numpy windows), so every invocation faulted the same pages in again: ~2,800 minor page
faults per batch, 35-40% of the handler's own CPU on the benchmark machine
(``bench/bench_score_event.py`` prints the count). Keeping freed heap mapped costs resident
memory up to the largest batch's peak, which a function process keeps anyway between invocations.

Called by ``score_event``'s Lambda adapter. The edge server does not call it yet: its one-reading
requests were not measured with it.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["retain_freed_heap"]

# mallopt(3) parameter numbers (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def retain_freed_heap(*, trim_threshold: int = 256 << 20, mmap_threshold: int = 16 << 20) -> bool:
    """Ask glibc to keep up to ``trim_threshold`` bytes of freed heap, and to serve allocations
    below ``mmap_threshold`` bytes from the heap (reused) rather than from fresh mappings.

    Call once per process, at start-up (score_event's adapter does, next to its settings). Returns False,
    changing nothing, where the C library is not glibc (macOS, musl-based images). Setting either
    threshold also turns off glibc's self-adjusting thresholds, so the process behaves the same
    from its first invocation on.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success (musl's stub returns 0)
    trimmed = mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    mapped = mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    return bool(trimmed == 1 and mapped == 1)
