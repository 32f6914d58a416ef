"""Pasting M × M mask probabilities into full-size images: the NumPy twin and the Numba kernel.

The mask head predicts each detection's mask on a small M × M grid (28 × 28) covering its box.
To give a mask in image coordinates, torchvision's ``paste_masks_in_image``

    1. pads the mask with ``padding`` zero pixels on each side, (M + 2p) × (M + 2p), so that the
       mask fades to 0 at its border instead of being cut off;
    2. grows the box about its centre by the same factor s = (M + 2p) / M, so that the padded
       mask still lines up with the object:  half-width · s, half-height · s;
    3. makes the grown box integer by truncation toward zero (a float → int64 cast), x0..x1 and
       y0..y1 inclusive, size w = max(x1 - x0 + 1, 1), h = max(y1 - y0 + 1, 1);
    4. resizes the padded mask to h × w by bilinear interpolation with align_corners=False
       (``F.interpolate``): output pixel i reads the source at
           src = max((M + 2p)/h · (i + 1/2) - 1/2, 0),  i0 = floor(src) (at most the last row),
           i1 = i0 + 1 (i0 at the last row), weights 1 - (src - i0) and src - i0;
       rows and columns alike, the columns combined first;
    5. writes it into a zero image at rows y0..y1, columns x0..x1, clipped to the image.

torchvision computes steps 2 and 4 in the dtype of the boxes and of the masks respectively (the
factor s rounded to that dtype), and floors the source index in float32 (``floorf``) even for
float64 masks; both are reproduced, so every box and every tap is the same. The sums of step 4
agree to rounding, not to the bit: torch's CPU resize picks one of two loop orders by output
size, and its compiler may fuse multiply-adds.

Where the clipped box is empty (a box wholly outside the image) the result is a zero image;
torchvision's slicing raises or wraps around there, and Mask R-CNN never gets such a box since
its boxes are clipped to the image.

Memory: only the clipped box region of each image is written, straight into the (N, H, W)
result. The kernel allocates nothing of image size per mask; the twin only transient arrays the
size of one pasted region. Both functions take NumPy arrays already validated by
``tinymaskrcnn.ops.paste_masks``: masks (N, M, M) floating with M > 0, boxes (N, 4) floating and
finite, and ``scale`` = s as a scalar of the boxes' dtype.
"""
import numpy as np
from numba import njit, prange


# ----- NumPy twin ------------------------------------------------------------------------------


def _resize_taps_twin(in_len, out_len, start, stop, dtype):
    """Bilinear taps (i0, i1, w0, w1) of outputs start..stop-1 of a resize in_len → out_len."""
    T = np.dtype(dtype).type
    ratio = T(in_len) / T(out_len)
    src = np.maximum(ratio * (np.arange(start, stop, dtype=T) + T(0.5)) - T(0.5), 0)
    i0 = np.minimum(np.floor(src.astype(np.float32)).astype(np.int64), in_len - 1)
    lam = np.clip(src - i0.astype(T), 0, 1)
    i1 = np.where(i0 < in_len - 1, i0 + 1, i0)
    return i0, i1, 1 - lam, lam


def paste_masks_twin(masks, boxes, im_h, im_w, padding, scale):
    """(N, im_h, im_w) images with each mask pasted into its box (readable NumPy twin)."""
    N, M = masks.shape[0], masks.shape[1]
    P = M + 2 * padding
    out = np.zeros((N, im_h, im_w), dtype=masks.dtype)
    padded = np.pad(masks, ((0, 0), (padding, padding), (padding, padding)))  # step 1
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale  # step 2
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    cx, cy = (boxes[:, 2] + boxes[:, 0]) * 0.5, (boxes[:, 3] + boxes[:, 1]) * 0.5
    grown = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1).astype(np.int64)  # step 3
    for n, (x0, y0, x1, y1) in enumerate(grown):
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        r0, r1 = max(y0, 0), min(y1 + 1, im_h)  # step 5: the part of the box inside the image
        c0, c1 = max(x0, 0), min(x1 + 1, im_w)
        if r1 <= r0 or c1 <= c0:
            continue
        # step 4, only for the rows and columns that land in the image
        ry0, ry1, wy0, wy1 = _resize_taps_twin(P, h, r0 - y0, r1 - y0, masks.dtype)
        cx0, cx1, wx0, wx1 = _resize_taps_twin(P, w, c0 - x0, c1 - x0, masks.dtype)
        columns_done = padded[n][:, cx0] * wx0 + padded[n][:, cx1] * wx1  # (P, c1 - c0)
        out[n, r0:r1, c0:c1] = columns_done[ry0] * wy0[:, None] + columns_done[ry1] * wy1[:, None]
    return out


# ----- Numba kernel ----------------------------------------------------------------------------


@njit(cache=True)
def _resize_taps(in_len, out_len, start, stop, like):
    """Bilinear taps (i0, i1, w0, w1) of outputs start..stop-1 of a resize in_len → out_len,
    the weights in the dtype of the array ``like``."""
    T = like.dtype.type
    n = stop - start
    i0 = np.empty(n, dtype=np.int64)
    i1 = np.empty(n, dtype=np.int64)
    w0 = np.empty(n, dtype=like.dtype)
    w1 = np.empty(n, dtype=like.dtype)
    ratio = T(in_len) / T(out_len)
    for j in range(n):
        src = max(ratio * (T(start + j) + T(0.5)) - T(0.5), T(0.0))
        lo = min(int(np.floor(np.float32(src))), in_len - 1)
        lam = min(max(src - T(lo), T(0.0)), T(1.0))
        i0[j] = lo
        i1[j] = lo + 1 if lo < in_len - 1 else lo
        w0[j] = T(1.0) - lam
        w1[j] = lam
    return i0, i1, w0, w1


@njit(cache=True)
def _expand_box(box, scale):
    """The integer box (x0, y0, x1, y1) of steps 2 and 3, in the boxes' dtype."""
    half = box.dtype.type(0.5)
    half_w = (box[2] - box[0]) * half * scale
    half_h = (box[3] - box[1]) * half * scale
    cx = (box[2] + box[0]) * half
    cy = (box[3] + box[1]) * half
    return int(cx - half_w), int(cy - half_h), int(cx + half_w), int(cy + half_h)


@njit(parallel=True, cache=True)
def paste_masks(masks, boxes, im_h, im_w, padding, scale):
    """(N, im_h, im_w) images with each mask pasted into its box (Numba kernel, parallel over masks)."""
    N, M = masks.shape[0], masks.shape[1]
    P = M + 2 * padding
    out = np.zeros((N, im_h, im_w), dtype=masks.dtype)
    for n in prange(N):
        x0, y0, x1, y1 = _expand_box(boxes[n], scale)
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        r0, r1 = max(y0, 0), min(y1 + 1, im_h)
        c0, c1 = max(x0, 0), min(x1 + 1, im_w)
        if r1 <= r0 or c1 <= c0:
            continue
        padded = np.zeros((P, P), dtype=masks.dtype)
        padded[padding:padding + M, padding:padding + M] = masks[n]
        ry0, ry1, wy0, wy1 = _resize_taps(P, h, r0 - y0, r1 - y0, masks)
        cx0, cx1, wx0, wx1 = _resize_taps(P, w, c0 - x0, c1 - x0, masks)
        for r in range(r1 - r0):
            a, b = padded[ry0[r]], padded[ry1[r]]
            for c in range(c1 - c0):
                top = a[cx0[c]] * wx0[c] + a[cx1[c]] * wx1[c]
                bottom = b[cx0[c]] * wx0[c] + b[cx1[c]] * wx1[c]
                out[n, r0 + r, c0 + c] = top * wy0[r] + bottom * wy1[r]
    return out
