"""keep_freed_memory: large arrays come from malloc's heap (reused when freed), not from a fresh
mmap that the kernel must map and zero again each time."""
import os
import subprocess
import sys

import pytest

from tinymaskrcnn.core import memory

# Allocates a 64 MB array and asks glibc (mallinfo2) how many bytes it holds in mmapped blocks:
# with its defaults the array is one; with the memory kept it comes from the heap.
PROBE = """
import ctypes
import numpy as np
import tinymaskrcnn
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = Info
a = np.ones(16 << 20, np.float32); del a
b = np.ones(16 << 20, np.float32)
print(mallinfo2().hblkhd >> 20)
"""


def _mmapped_mb(**env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "TINYMASKRCNN_KEEP"))}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings: Linux only")
def test_large_arrays_come_from_the_heap():
    kept, default = _mmapped_mb(), _mmapped_mb(TINYMASKRCNN_KEEP_FREED_MEMORY="0")
    assert default >= 64, f"with glibc's defaults a 64 MB array should be mmapped: {default} MB mmapped"
    assert kept < 64, f"the 64 MB array was mmapped although the memory is kept: {kept} MB mmapped"


def test_user_settings_stand(monkeypatch):
    monkeypatch.setenv("TINYMASKRCNN_KEEP_FREED_MEMORY", "0")
    assert memory.keep_freed_memory() is False
    monkeypatch.delenv("TINYMASKRCNN_KEEP_FREED_MEMORY")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert memory.keep_freed_memory() is False
