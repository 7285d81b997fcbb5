"""The host allocator's state between timed runs.

On the CPU a run's time depends on whether its tensors land on memory pages the process already
holds or on fresh pages the kernel must fault in and zero (≈0.35 ms per MB on the reference machine,
as much as the arithmetic of a streaming op). glibc serves small sizes from warm heap pages it kept
from the previous run and large ones (≥ 32 MB, or whatever its adaptive threshold reached) from
fresh ``mmap`` pages, so a probe at small T measures a warm heap while a run at the target pays for
fresh pages: a regime change that a power law fitted on the small sizes cannot see (measured: a
76% under-prediction of attention at 8x the largest probe).

:func:`release_free_memory` hands the allocator's free memory back to the operating system
(``malloc_trim(0)``) before each timed run, so every size pays for its pages the way a large run
does and the cost scales smoothly with T. It frees nothing the program holds, changes no allocator
setting, and is a no-op where the C library has no ``malloc_trim`` (macOS, musl, Windows).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Callable, Optional

_TRIM: Optional[Callable[[int], int]] = None
_LOOKED_UP = False


def _malloc_trim() -> Optional[Callable[[int], int]]:
    global _TRIM, _LOOKED_UP
    if _LOOKED_UP:
        return _TRIM
    _LOOKED_UP = True
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    _TRIM = fn
    return _TRIM


def release_free_memory() -> bool:
    """Return the C allocator's free memory to the OS; True when that was possible here."""
    fn = _malloc_trim()
    if fn is None:
        return False
    try:
        fn(0)
    except OSError:
        return False
    return True
