"""The process's memory policy for the command line's runs."""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
NEVER = 2**31 - 1


def hold_freed_memory() -> bool:
    """Keep freed memory in the process (glibc's malloc: no mmap for large blocks, no trimming):
    numpy's large temporaries are then reused from one step to the next instead of mapped and
    faulted in again each time (measured: the MNIST CNN's engine step 7-10 % faster, the
    emulator's 81-300 -> 65-67 ms; docs/benchmarks.md). The process keeps its peak resident
    memory. True where it applied; elsewhere (another C library) nothing changes."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process runs on
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER))
