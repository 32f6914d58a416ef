"""Hand-written hot paths (Numba), installed as ``tinymaskrcnn.kernels``: the floor of the package.

Every kernel here has a readable NumPy twin with the same signature, named ``<name>_twin`` and
written first in its file, above the Numba kernel: the notebooks explain the twin first, and the
tests hold the two equal. ``kernels/cuda/`` holds the Numba-CUDA kernels of the same families.
Which of the three an op runs is chosen in one table, ``tinymaskrcnn/functional/dispatch.py``
(``TINYMASKRCNN_KERNELS=twins`` runs the whole package on the twins).

The kernels take arrays, dtypes and numbers, and import nothing of the package above them.
"""
import os
import sys
import warnings

import numba
import numba.np.ufunc.parallel
import numpy as np

# The parallel kernels here (roi_align, paste_masks) alternate with NumPy work that runs on
# OpenBLAS's threads. Numba's default OpenMP workers busy-wait for milliseconds after each
# parallel region, keeping the cores from OpenBLAS (convolutions ran several times slower
# when they followed Numba's threads: docs/benchmarks.md), and OMP_WAIT_POLICY cannot reliably stop it (torch,
# when imported first, brings its own libgomp). Numba's built-in "workqueue" layer sleeps at
# once. It must be chosen before anything starts Numba's thread pool (we warn if something
# did); a layer chosen through NUMBA_THREADING_LAYER is kept. workqueue aborts the process if
# parallel kernels are launched from several Python threads at the same time or from inside
# each other: the project does neither (its worker threads run only the serial kernels).
if "NUMBA_THREADING_LAYER" not in os.environ:
    if numba.np.ufunc.parallel._is_initialized and numba.threading_layer() != "workqueue":
        warnings.warn(f"Numba's {numba.threading_layer()!r} thread pool was started before tinymaskrcnn's "
                      "kernels were imported, so its kernels may run several times slower: import "
                      "tinymaskrcnn first, or set NUMBA_THREADING_LAYER=workqueue", RuntimeWarning)
    numba.config.THREADING_LAYER = "workqueue"


def is_cupy(a):
    """True for a CuPy array, told by its type's module (so that CuPy is imported only when one comes in)."""
    return type(a).__module__.startswith("cupy")


def array_module(a):
    """The array module of ``a``: for a CuPy array the package its type comes from (cupy, already
    imported since one of its arrays exists; the tests' CuPy stand-in likewise), else numpy."""
    if is_cupy(a):
        return sys.modules[type(a).__module__.partition(".")[0]]
    return np
