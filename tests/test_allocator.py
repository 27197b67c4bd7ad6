"""reuse_freed_memory: a large block freed in one step is reused by the next without page faults."""

from __future__ import annotations

import platform
import resource

import pytest
import torch

from lcenet.allocator import reuse_freed_memory

SIZE = 64 << 20  # above glibc's largest dynamic mmap threshold (32 MiB)


def step_faults() -> int:
    """Minor page faults of one 'step' that allocates, fills and frees blocks of 64 and 32 MiB."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    first = torch.empty(SIZE, dtype=torch.uint8).fill_(1)
    second = torch.empty(SIZE // 2, dtype=torch.uint8).fill_(1)
    del first
    third = torch.empty(SIZE, dtype=torch.uint8).fill_(1)
    del second, third
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_large_blocks_are_reused_without_page_faults():
    assert reuse_freed_memory()
    faults = [step_faults() for _ in range(6)]
    # The first steps may grow the heap; once it holds the blocks, next to none (glibc's defaults: 40,960 faults,
    # a 4 KiB page at a time, on every step).
    assert min(faults[-2:]) < (SIZE >> 12) // 20
