"""Keeping freed memory for the next array: glibc's malloc settings for array-heavy work.

Every op returns a fresh NumPy array, and a ResNet-50-FPN forward pass at 800x1088 frees and
allocates activations of 14-56 MB dozens of times. glibc serves every block over its mmap
threshold (at most 32 MB, and 128 kB until a large block has been freed once) with a fresh
mmap and unmaps it on free, so the next array of that size is page-faulted in again, 4 kB at
a time, before any arithmetic: about a fifth of that forward pass (docs/benchmarks.md).

``keep_freed_memory`` raises the threshold so that such blocks come from the heap, and lets
the heap keep up to ``top_pad`` bytes free at its top, so freed activations are reused as
they are. The peak resident memory does not grow (the same blocks are reused); the resident
memory after a run may stay up to ``top_pad`` higher. It runs when tinymaskrcnn is imported,
on Linux with glibc only, unless TINYMASKRCNN_KEEP_FREED_MEMORY=0 or any MALLOC_* variable
is set (then the user's own settings stand).
"""
import ctypes
import ctypes.util
import os
import sys

# mallopt's parameter numbers (glibc's malloc.h)
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 2 ** 31 - 1  # mallopt takes an int: the largest, i.e. "never mmap an array"
TOP_PAD = 512 << 20


def keep_freed_memory(mmap_threshold=MMAP_THRESHOLD, top_pad=TOP_PAD):
    """Set glibc's mmap threshold and top pad (see the module docstring). Returns True if set."""
    if not sys.platform.startswith("linux") or os.environ.get("TINYMASKRCNN_KEEP_FREED_MEMORY") == "0":
        return False
    if any(name.startswith("MALLOC_") for name in os.environ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TOP_PAD, top_pad))
