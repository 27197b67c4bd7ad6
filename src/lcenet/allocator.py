"""Keep freed memory in the training process for the next step (glibc's malloc).

glibc serves a request above its mmap threshold (dynamic, never above 32 MiB) with a fresh mapping and unmaps
it when freed, and returns freed memory at the top of its heap to the system past a trim threshold. A training
step that allocates the same large tensors every step therefore has the kernel fault them in, 4 KiB at a time,
on every step: at 13,330 labels and R = 1,000 each of LCENet's four [L, R] gradients is 53 MB, and the base's
activations and embedding gradient add more. Raising both thresholds keeps every freed block in the heap, where
the next step reuses it (PyTorch's CPU tuning guide gets the same from jemalloc or tcmalloc; this needs no other
library). The process keeps its peak memory until it exits; ``train.reuse_freed_memory`` (on by default) calls
this when a Trainer starts. Measured on a whole training step in benchmarks/results (README, "Speed and scale").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["reuse_freed_memory"]

# mallopt's parameter numbers (malloc.h) and the largest value it takes (an int).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
NEVER = 2**31 - 1


def reuse_freed_memory() -> bool:
    """Make glibc keep freed blocks of any size (up to 2 GiB) for reuse instead of unmapping or trimming them.
    True once set; False where the C library is not glibc (nothing changes there)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    return bool(libc.mallopt(M_MMAP_THRESHOLD, NEVER)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER))
