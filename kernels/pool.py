"""Max pooling's forward scan and backward scatter: the NumPy twins and the Numba kernels.

Forward: for every output (i, j) of every (image, channel) plane, the maximum of the window's
in-image taps and which tap won, scanning the window row by row as torch does: a tap replaces
the best so far when it is greater, or when it is NaN; the scan starts from the first in-image
tap (the winner of a window of -inf values). Padding never wins. The rules and the output size
are in ``tinymaskrcnn.functional.pool``; the arguments arrive checked from there: x (N, C, H, W)
floating, the kernel (kh, kw), stride, padding and dilation, the output size (oh, ow), and
``first`` (oh, ow), the tap (a*kw + b) each window starts its scan from.

Backward: dL/dx is dL/dy scattered onto the input positions that won, i*sh - ph + a*dh and
j*sw - pw + b*dw for winner a*kw + b; a position that won several overlapping windows gets the
sum. Both versions add in float64, output by output in (i, j) order, and round once at the end,
so they agree to the bit.
"""
import numpy as np
from numba import njit, prange


def max_pool2d_forward_twin(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, first):
    """The NumPy twin: the same scan, vectorised over every window at once, one step per tap."""
    n, c, h, w = x.shape
    # -inf padding never wins; ceil_mode's last window may reach past the right/bottom edge
    rows_needed, cols_needed = (oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1
    padded = np.full((n, c, max(rows_needed, ph + h), max(cols_needed, pw + w)), -np.inf, dtype=x.dtype)
    padded[:, :, ph:ph + h, pw:pw + w] = x
    best = np.full((n, c, oh, ow), -np.inf, dtype=x.dtype)
    winner = np.broadcast_to(first.astype(np.int32), best.shape).copy()
    has_nan = bool(np.isnan(x).any())  # only then is the NaN test worth a pass per tap
    for a in range(kh):
        for b in range(kw):
            v = padded[:, :, a * dh:a * dh + (oh - 1) * sh + 1:sh, b * dw:b * dw + (ow - 1) * sw + 1:sw]
            take = v > best
            if has_nan:
                take |= v != v  # torch lets a NaN replace the best so far
            np.copyto(best, v, where=take)
            np.copyto(winner, a * kw + b, where=take)
    return best, winner


def max_pool2d_backward_twin(g, winner, in_shape, kh, kw, sh, sw, ph, pw, dh, dw):
    """dL/dx (in_shape) from dL/dy and the forward's winners, both (N, C, oh, ow): the NumPy twin,
    one flat index per output into the whole input, then one scatter-add (``bincount``) there."""
    n, c, h, w = in_shape
    oh, ow = g.shape[2:]
    a, b = np.divmod(winner, kw)
    rows = (np.arange(oh) * sh - ph)[:, None] + a * dh
    cols = (np.arange(ow) * sw - pw)[None, :] + b * dw
    flat = (np.arange(n * c).reshape(n, c, 1, 1) * h + rows) * w + cols
    dx = np.bincount(flat.ravel(), weights=g.ravel(), minlength=n * c * h * w)
    return dx.astype(g.dtype, copy=False).reshape(in_shape)


@njit(parallel=True, cache=True)
def max_pool2d_forward(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, first):
    """(best (N, C, oh, ow), winner (N, C, oh, ow) int32): the Numba kernel, parallel over planes."""
    n, c, h, w = x.shape
    best = np.empty((n, c, oh, ow), x.dtype)
    winner = np.empty((n, c, oh, ow), np.int32)
    for plane in prange(n * c):
        image, channel = plane // c, plane % c
        src = x[image, channel]
        for i in range(oh):
            for j in range(ow):
                value = -np.inf
                won = first[i, j]
                for a in range(kh):
                    row = i * sh - ph + a * dh
                    if row < 0 or row >= h:
                        continue
                    for b in range(kw):
                        col = j * sw - pw + b * dw
                        if col < 0 or col >= w:
                            continue
                        v = src[row, col]
                        if v > value or v != v:
                            value = v
                            won = a * kw + b
                best[image, channel, i, j] = value
                winner[image, channel, i, j] = won
    return best, winner


@njit(parallel=True, cache=True)
def max_pool2d_backward(g, winner, in_shape, kh, kw, sh, sw, ph, pw, dh, dw):
    """dL/dx (in_shape) from dL/dy and the winners: the Numba kernel, parallel over planes (a
    plane's windows lie in its own plane, so no two threads add into one pixel), each a serial
    scatter-add over its outputs."""
    n, c, h, w = in_shape
    oh, ow = g.shape[2], g.shape[3]
    dx = np.empty((n, c, h, w), g.dtype)
    for plane in prange(n * c):
        image, channel = plane // c, plane % c
        acc = np.zeros((h, w), np.float64)
        for i in range(oh):
            for j in range(ow):
                won = winner[image, channel, i, j]
                acc[i * sh - ph + (won // kw) * dh, j * sw - pw + (won % kw) * dw] += g[image, channel, i, j]
        dx[image, channel] = acc
    return dx
