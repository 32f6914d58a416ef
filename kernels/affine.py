"""A per-channel affine map y = x * scale[c] + shift[c]: frozen batch norm's forward.

NumPy computes ``x * scale + shift`` in two passes over the data on one core; the kernel makes
one pass, parallel over the (image, channel) planes. Arguments arrive checked from
``tinymaskrcnn.functional.norm``: x (N, C, *) C-contiguous, scale and shift (C,) of x's dtype.
"""
import numpy as np
from numba import njit, prange


def channel_affine_twin(x, scale, shift):
    """The NumPy twin: broadcasting over the axes after the channel axis (array code: CuPy too)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return x * scale.reshape(shape) + shift.reshape(shape)


@njit(parallel=True, cache=True)
def channel_affine(x, scale, shift):
    """y = x * scale[c] + shift[c] over x (N, C, *): the Numba kernel."""
    n, c = x.shape[0], x.shape[1]
    planes = x.reshape(n * c, -1)
    y = np.empty_like(planes)
    for p in prange(n * c):
        a, b = scale[p % c], shift[p % c]
        src, dst = planes[p], y[p]
        for k in range(src.size):
            dst[k] = src[k] * a + b
    return y.reshape(x.shape)
