"""glibc malloc settings for training and inference on a CPU with the PyTorch backend.

Why: glibc hands every allocation above its mmap threshold (128 KiB, rising
to at most 32 MiB as large blocks are freed) fresh pages from the kernel, and
returns freed memory at the top of its heap beyond its trim threshold. A
convolutional network at batch 128 allocates and frees activations of 1-60
MiB at every layer, so every batch faults its working memory in again, page
by page; with freed memory kept in the process it does not (the page faults
and speed measured: reports/throughput_notes.md, benchmarks/throughput.py). PyTorch's CPU
allocator caches nothing itself; the jemalloc or tcmalloc that PyTorch's
performance tuning guide suggests keep freed memory in the same way.

The cost: memory freed after a peak stays with the process (reused by the
next batch) instead of going back to the system.

A user's own MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ (glibc's
environment variables) win: then nothing is changed.
"""

import ctypes
import os
import platform

# mallopt parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Keep blocks of up to 1 GiB in the heap and up to 1 GiB of free heap top.
KEEP_BYTES = 1 << 30
ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_applied = None


def keep_freed_memory():
    """Sets glibc's mmap and trim thresholds to KEEP_BYTES once per process.
    Returns True where they are set (now or before), False where this is not
    glibc on Linux or the user set glibc's own variables."""
    global _applied
    if _applied is None:
        _applied = False
        if (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
                and not any(name in os.environ for name in ENVIRONMENT)):
            libc = ctypes.CDLL("libc.so.6")
            _applied = bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)
                            and libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
    return _applied


def tune_for_backend(backend):
    """keep_freed_memory() on the PyTorch backend, where it was measured; the
    TensorFlow and JAX backends are left as they are."""
    return keep_freed_memory() if backend == "torch" else False
