"""Process-wide memory allocator setting for training: keep freed activation buffers for reuse."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the system at once.

    A training step frees and reallocates the same few-MB activation buffers every step; by default
    glibc hands buffers that large back to the system and maps them afresh, and the page faults of
    touching them again are a noticeable part of a step (docs/performance.md). It helps torch.nn.GRU
    as much as our cells; it is a process-wide setting, so only `train` and the benchmarks call it.
    Returns whether it applied (glibc only).
    """
    name = ctypes.util.find_library("c")
    if not name or platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(name)
        M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
        return bool(
            libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
            and libc.mallopt(M_TRIM_THRESHOLD, 256 << 20)
            and libc.mallopt(M_TOP_PAD, 64 << 20)
        )
    except (OSError, AttributeError):
        return False
