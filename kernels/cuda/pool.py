"""Max pooling forward and backward on the GPU.

Forward: one thread per output (n, c, i, j), grid-stride, running torch's scan of its window
(``kernels/pool.py``): row by row, a tap replaces the best so far when greater or NaN, starting
from ``first[i, j]``; it writes the maximum and the winning tap a*kw + b.

Backward: the gradient of the input is a sum over the windows a pixel won. Written as a gather
it is deterministic: one thread per input pixel (row, col) visits the windows that contain it,
output row i with i*sh - ph + a*dh = row for a tap row a (likewise j, b), and adds dL/dy[i, j]
where the winner is its own tap (a, b). Taps are visited from the last to the first, which is
i and then j ascending: the order in which the CPU kernel and its twin add them (they add in
float64, this kernel in the gradient's dtype: equal to rounding in float32).
"""
import math

from numba import cuda

from .. import array_module
from . import device_array, launch


@cuda.jit
def max_pool2d_forward_kernel(x, kh, kw, sh, sw, ph, pw, dh, dw, first, best, winner):
    """Thread layout: one thread per output of best/winner (N, C, oh, ow), grid-stride."""
    N, C, H, W = x.shape
    oh, ow = best.shape[2], best.shape[3]
    for e in range(cuda.grid(1), N * C * oh * ow, cuda.gridsize(1)):
        j, i, c, n = e % ow, (e // ow) % oh, (e // (ow * oh)) % C, e // (ow * oh * C)
        value = -x.dtype.type(math.inf)
        won = first[i, j]
        for a in range(kh):
            row = i * sh - ph + a * dh
            if row < 0 or row >= H:
                continue
            for b in range(kw):
                col = j * sw - pw + b * dw
                if col < 0 or col >= W:
                    continue
                v = x[n, c, row, col]
                if v > value or v != v:
                    value = v
                    won = a * kw + b
        best[n, c, i, j] = value
        winner[n, c, i, j] = won


@cuda.jit
def max_pool2d_backward_kernel(g, winner, kh, kw, sh, sw, ph, pw, dh, dw, dx):
    """Thread layout: one thread per pixel of dx (N, C, H, W), grid-stride, gathering from g and
    winner (N, C, oh, ow): no two threads write the same pixel."""
    N, C, H, W = dx.shape
    oh, ow = g.shape[2], g.shape[3]
    for e in range(cuda.grid(1), N * C * H * W, cuda.gridsize(1)):
        col, row, c, n = e % W, (e // W) % H, (e // (W * H)) % C, e // (W * H * C)
        acc = dx.dtype.type(0)
        for a in range(kh - 1, -1, -1):
            t = row + ph - a * dh  # = i * sh for the window i whose tap row a is this row
            if t < 0 or t % sh != 0 or t // sh >= oh:
                continue
            for b in range(kw - 1, -1, -1):
                u = col + pw - b * dw
                if u < 0 or u % sw != 0 or u // sw >= ow:
                    continue
                if winner[n, c, t // sh, u // sw] == a * kw + b:
                    acc += g[n, c, t // sh, u // sw]
        dx[n, c, row, col] = acc


def max_pool2d_forward(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, first):
    """(best (N, C, oh, ow), winner (N, C, oh, ow) int32): the arguments as the CPU kernel's."""
    x, first = device_array(x), device_array(first)
    xp = array_module(x)
    best = xp.empty((x.shape[0], x.shape[1], oh, ow), x.dtype)
    winner = xp.empty(best.shape, xp.int32)
    launch(max_pool2d_forward_kernel, best.size, x, kh, kw, sh, sw, ph, pw, dh, dw, first, best, winner)
    return best, winner


def max_pool2d_backward(g, winner, in_shape, kh, kw, sh, sw, ph, pw, dh, dw):
    """dL/dx (in_shape) from dL/dy and the winners of the forward."""
    g, winner = device_array(g), device_array(winner)
    dx = array_module(g).empty(in_shape, g.dtype)
    launch(max_pool2d_backward_kernel, dx.size, g, winner, kh, kw, sh, sw, ph, pw, dh, dw, dx)
    return dx
