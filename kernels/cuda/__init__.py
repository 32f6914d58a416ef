"""Numba-CUDA kernels, installed as ``tinymaskrcnn.kernels.cuda``: the GPU twins of ``kernels/``.

Each module here holds ``@cuda.jit`` kernels and their launchers for one family: im2col and
col2im, RoIAlign forward and backward, NMS, mask pasting, max pooling forward and backward.
Every kernel computes what a CPU kernel of ``kernels/`` and its NumPy twin compute (the tests
hold them equal); the docstrings say how the work is laid out over threads.

Common rules
------------
- **Grid-stride loops.** A kernel that has one thread per output element is written as a loop
  ``for e in range(cuda.grid(1), total, cuda.gridsize(1))``: with as many threads as elements
  each thread does one, with fewer each does several, and the result is the same. The launchers
  cap the grid (``launch_config``), tightly under the simulator, where a thread costs ~0.1 ms.
- **Typed constants.** ``T = x.dtype.type`` and every literal written ``T(0.5)``: a bare ``0.5`` is
  a float64, and float32 arithmetic with it is done in float64 on the device.
- **Allocation and streams.** A launcher allocates its outputs with the inputs' array module
  (CuPy on a GPU, NumPy under the simulator) and launches on CuPy's current stream, so kernels
  and CuPy's own work stay in order without synchronising.
- The device fuses multiply-adds (a·b + c rounded once), so results equal the twins to
  rounding, not bit for bit; sums without products (col2im, NMS) are exact.

These modules import ``numba.cuda`` (the ``numba-cuda`` package), so they are imported only when
a CUDA array (or the simulator switch of ``tinymaskrcnn.core.backend``) reaches an op
(``tinymaskrcnn/functional/dispatch.py``). Like the CPU kernels they take arrays and import
nothing of the package: an array's module (CuPy on a GPU, NumPy under the simulator) is read
off the array itself (``array_module``).
"""
import numpy as np
from numba import config, cuda

from .. import array_module, is_cupy

THREADS = 256
MAX_BLOCKS = 65535  # grid-stride loops cover any size with at most this many blocks
SIM_THREADS, SIM_MAX_BLOCKS = 32, 2  # under the simulator: few threads, each doing many elements


def simulated():
    """True when numba runs kernels in its CUDA simulator (NUMBA_ENABLE_CUDASIM=1 before import)."""
    return bool(config.ENABLE_CUDASIM)


def launch_config(total):
    """(blocks, threads) for a grid-stride kernel over ``total`` elements."""
    threads, max_blocks = (SIM_THREADS, SIM_MAX_BLOCKS) if simulated() else (THREADS, MAX_BLOCKS)
    return max(1, min(max_blocks, -(-total // threads))), threads


def stream_for(*arrays):
    """The stream to launch on: CuPy's current stream when a CuPy array comes in (the
    simulator has streams of its own only), else the default."""
    for a in arrays:
        if is_cupy(a) and not simulated():
            return cuda.external_stream(array_module(a).cuda.get_current_stream().ptr)
    return 0


def kernel_args(*args):
    """The arguments as a launch takes them. On a GPU, unchanged. Under the simulator, which
    runs kernels on NumPy arrays only, a device array of another module (the tests' CuPy
    stand-in, tests/cupy_standin.py) is handed over as the NumPy array over its memory, read
    from its ``__cuda_array_interface__`` (the simulator's device memory is host memory)."""
    if not simulated():
        return args
    return tuple(np.asarray(_HostView(a.__cuda_array_interface__)) if is_cupy(a) else a for a in args)


class _HostView:
    """A CUDA array interface read as NumPy's array interface (the same keys), for the simulator."""

    def __init__(self, interface):
        self.__array_interface__ = dict(interface, version=3)


def device_array(a):
    """``a`` as a C-contiguous, writable array of its own module (the simulator cannot take
    read-only or strided NumPy arrays)."""
    xp = array_module(a)
    a = xp.ascontiguousarray(a)
    if xp is np and not a.flags.writeable:
        a = a.copy()
    return a


def launch(kernel, total, *args):
    """Run a grid-stride ``kernel`` over ``total`` elements on the arguments' stream."""
    if total == 0:
        return
    blocks, threads = launch_config(total)
    kernel[blocks, threads, stream_for(*args)](*kernel_args(*args))
