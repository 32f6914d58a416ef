"""Pasting masks into images on the GPU: one thread per output pixel.

The recipe and torchvision's rounding are those of ``kernels/paste_masks.py`` (pad by ``padding``,
grow the box by s = (M + 2p)/M, truncate it to integers, bilinear resize with
align_corners=False, clipped paste). Every pixel of the (N, H, W) result is computed by its own
thread from the box's integer corners and the two bilinear taps of its row and column; a pixel
outside its (clipped) box is 0. So no thread writes another's pixel, and the result needs no
zeroing first. The padded mask is never built: a read outside the M × M mask is the padding's 0.

The device may fuse the box's centre ± half-size into one multiply-add; where that moves a
corner across an integer (a tie, rare and only in the last bit) the pasted box shifts by a pixel.
"""
import math

import numpy as np
from numba import cuda

from .. import array_module
from . import device_array, launch


@cuda.jit(device=True)
def _resize_tap(in_len, out_len, i, like):
    """Bilinear tap (i0, i1, w0, w1) of output i of a resize in_len -> out_len, in the dtype of
    ``like``; the source index floored in float32, as torchvision does."""
    T = type(like)
    src = max(T(in_len) / T(out_len) * (T(i) + T(0.5)) - T(0.5), T(0.0))
    lo = min(int(math.floor(np.float32(src))), in_len - 1)
    lam = min(max(src - T(lo), T(0.0)), T(1.0))
    return lo, lo + 1 if lo < in_len - 1 else lo, T(1.0) - lam, lam


@cuda.jit(device=True)
def _padded(mask, n, r, c, padding):
    """Pixel (r, c) of mask n padded by ``padding`` zeros on each side."""
    r, c = r - padding, c - padding
    M = mask.shape[1]
    return mask[n, r, c] if 0 <= r < M and 0 <= c < M else mask.dtype.type(0)


@cuda.jit
def paste_masks_kernel(masks, boxes, padding, scale, out):
    """Thread layout: one thread per pixel of out (N, H, W), grid-stride, writing every pixel."""
    N, H, W = out.shape
    P = masks.shape[1] + 2 * padding
    half = boxes.dtype.type(0.5)
    for e in range(cuda.grid(1), N * H * W, cuda.gridsize(1)):
        c, r, n = e % W, (e // W) % H, e // (W * H)
        # the grown integer box (kernels/paste_masks.py, steps 2 and 3)
        half_w = (boxes[n, 2] - boxes[n, 0]) * half * scale
        half_h = (boxes[n, 3] - boxes[n, 1]) * half * scale
        cx = (boxes[n, 2] + boxes[n, 0]) * half
        cy = (boxes[n, 3] + boxes[n, 1]) * half
        x0, y0, x1, y1 = int(cx - half_w), int(cy - half_h), int(cx + half_w), int(cy + half_h)
        if not (y0 <= r <= y1 and x0 <= c <= x1):
            out[n, r, c] = masks.dtype.type(0)
            continue
        like = masks[n, 0, 0]
        ry0, ry1, wy0, wy1 = _resize_tap(P, max(y1 - y0 + 1, 1), r - y0, like)
        cx0, cx1, wx0, wx1 = _resize_tap(P, max(x1 - x0 + 1, 1), c - x0, like)
        top = _padded(masks, n, ry0, cx0, padding) * wx0 + _padded(masks, n, ry0, cx1, padding) * wx1
        bottom = _padded(masks, n, ry1, cx0, padding) * wx0 + _padded(masks, n, ry1, cx1, padding) * wx1
        out[n, r, c] = top * wy0 + bottom * wy1


def paste_masks(masks, boxes, im_h, im_w, padding, scale):
    """(N, im_h, im_w) images with each mask (N, M, M) pasted into its box (N, 4); the arguments
    as the CPU kernel's (``scale`` a scalar of the boxes' dtype)."""
    masks, boxes = device_array(masks), device_array(boxes)
    out = array_module(masks).empty((masks.shape[0], im_h, im_w), masks.dtype)
    launch(paste_masks_kernel, out.size, masks, boxes, padding, scale, out)
    return out
