"""Keep freed large blocks inside the process (glibc), so big tensors are not page-faulted anew.

glibc serves allocations above its mmap threshold (at most 32 MiB, adjusted dynamically)
with fresh mmap'd pages and returns them to the OS on free. A PyTorch CPU workload that
allocates the same large tensors every step (states, GEMM outputs, gradients) then pays a
page fault per 4 KiB page each time: on the bench machine a fresh 33 MB tensor costs
~10 ms to first touch versus ~1.7 ms to copy into an existing one, which dominates an S5
layer's time. Raising the mmap and trim thresholds keeps those blocks for reuse, at the
price of a process that holds on to its peak memory.

The `s5ssm` command calls `keep_freed_memory()` for its own process. Library users can
call `s5ssm.keep_freed_memory()` at the start of their script (`s5ssm bench --sections
allocator` shows what it changes), or set the environment before Python starts:
    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=2147483647
The library never changes the allocator on import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 1 << 30, trim_threshold: int = (1 << 31) - 1) -> bool:
    """Raise glibc's mmap and trim thresholds for this process. Returns False where not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
