"""im2col and col2im: turning a convolution into one matrix product.

A 2-D convolution (cross-correlation, as in every deep-learning library) of a (C, H, W) image
with a (Cout, C, kh, kw) kernel computes, for every output pixel (oh, ow),

    y[co, oh, ow] = sum_{c, ki, kj} w[co, c, ki, kj] * x[c, oh*sh - ph + ki*dh, ow*sw - pw + kj*dw]

(s = stride, p = zero padding, d = dilation; pixels outside the image read as 0). If we copy,
for each (c, ki, kj), the input pixels that this kernel tap sees at every output position into
one row of a matrix

    cols[(c*kh + ki)*kw + kj, oh*Wo + ow] = x[c, oh*sh - ph + ki*dh, ow*sw - pw + kj*dw]

(shape (C*kh*kw, Ho*Wo)), the convolution is a single matrix product with the kernel seen as a
(Cout, C*kh*kw) matrix:

    y.reshape(Cout, Ho*Wo) = w.reshape(Cout, C*kh*kw) @ cols

which BLAS computes near the machine's peak. The layout is chosen so that neither factor nor
the product needs a transpose or a copy: ``w`` is already (Cout, C*kh*kw) in memory and the
product is already the (Cout, Ho, Wo) output.

col2im is the adjoint (transpose) of im2col: it adds every entry of a cols matrix back onto the
image pixel it was copied from. Where the kernel windows overlap, a pixel was copied into
several entries, so col2im sums them. That is exactly what the backward pass needs
(dL/dx = col2im(w^T @ dL/dy)), and what a transposed convolution computes in its forward pass.

Making every copy contiguous
----------------------------
Copied entry by entry, with a test for the padding at every pixel, im2col runs at a fraction
of the memory's speed. Three changes of layout turn each row of cols into long contiguous
copies:

1. Zero padding: with x padded by (ph, pw) into xp, tap (ki, kj) at output (oh, ow) reads
   xp[c, oh*sh + ki*dh, ow*sw + kj*dw]: no more bounds tests.
2. Phases: write ki*dh = qi*sh + pi with 0 <= pi < sh (and kj*dw = qj*sw + pj). The pixel read
   is q[pi, pj][c, oh + qi, ow + qj], where the phase image q[pi, pj] = xp[:, pi::sh, pj::sw]
   holds the pixels at offset (pi, pj) of every stride-sized cell. A stride-1 conv has one phase
   (xp itself); a stride-2 conv four. Every tap now reads its phase image at stride 1.
3. A wide output grid: number the output positions p = oh*Wq + ow on a grid as wide as the
   phase images (Wq = Wo + qj_max columns). Then tap (ki, kj) reads element p + qi*Wq + qj of
   its flattened phase image: for all positions of output rows [r0, r1) at once, that is one
   contiguous slice. Positions with ow >= Wo are extra: they compute values nobody asked for,
   which are dropped (2 extra columns per row for a 3x3 conv, under 1% at 272 columns).

So ``phase_split`` copies x once into its padded phase images ((sh*sw, C, Hq*Wq), where
Hq = Ho + qi_max + 1: one more row catches the last extra positions' reads), ``im2col`` fills
cols for a band of output rows with kh*kw*C contiguous copies, and the conv's product gives
that band on the wide grid, whose first Wo columns of each row are the output. The backward
runs the adjoints in the reverse order: ``col2im`` adds each row of cols back onto its slice of
the phase images, and ``phase_merge`` gathers the phase images back into an image of x's shape
(what landed in the padding is dropped).

Each function comes twice: a plain NumPy version (suffix ``_twin``) to read first, which
works a kernel tap at a time with slices, and the Numba kernel that the ops run, with the same
signature and results. The Numba kernels are single-threaded and release the GIL: the conv op
runs one per core at a time on its own band, followed on the same core by that band's matrix
product (tinymaskrcnn/core/threads.py says why).
"""
import numpy as np
from numba import njit


@njit(cache=True)
def conv_output_size(size, kernel, stride, padding, dilation):
    """Output length of a convolution along one axis: floor((n + 2p - d(k-1) - 1) / s) + 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_output_hw(hw, kernel, stride, padding, dilation):
    """(Ho, Wo) of a convolution of an (H, W) image, each argument a (height, width) pair."""
    return tuple(conv_output_size(*axis) for axis in zip(hw, kernel, stride, padding, dilation))


@njit(cache=True)
def phase_grid(H, W, kh, kw, sh, sw, ph, pw, dh, dw):
    """(Ho, Wo, Hq, Wq): the output size, and the size of the phase images, whose width Wq is
    also the width of the wide output grid (see the module docstring)."""
    ho = conv_output_size(H, kh, sh, ph, dh)
    wo = conv_output_size(W, kw, sw, pw, dw)
    return ho, wo, ho + (kh - 1) * dh // sh + 1, wo + (kw - 1) * dw // sw


@njit(cache=True)
def _tap(ki, kj, sh, sw, dh, dw, wq):
    """Tap (ki, kj): its phase (pi*sw + pj) and the offset qi*Wq + qj of its slice."""
    return (ki * dh % sh) * sw + kj * dw % sw, (ki * dh // sh) * wq + kj * dw // sw


# ----- NumPy twins ----------------------------------------------------------------------------


def phase_split_twin(x, kh, kw, sh, sw, ph, pw, dh, dw, out=None):
    """The phase images (sh*sw, C, Hq*Wq) of the image ``x`` (C, H, W):
    q[pi*sw + pj, c, u*Wq + v] = x[c, u*sh + pi - ph, v*sw + pj - pw], 0 outside x.
    Only the phases some tap reads are written (the others are never read)."""
    C, H, W = x.shape
    _, _, hq, wq = phase_grid(H, W, kh, kw, sh, sw, ph, pw, dh, dw)
    q = np.zeros((sh * sw, C, hq * wq), x.dtype) if out is None else out
    if q.shape != (sh * sw, C, hq * wq):
        raise ValueError("phase_split: out must have shape (sh*sw, C, Hq*Wq)")
    # pad x so that every phase image is a whole (hq, wq) slice of it
    padded = np.zeros((C, sh * hq + sh, sw * wq + sw), x.dtype)
    rows, cols = min(H, sh * hq - ph), min(W, sw * wq - pw)
    padded[:, ph:ph + rows, pw:pw + cols] = x[:, :rows, :cols]
    for pi in sorted({ki * dh % sh for ki in range(kh)}):
        for pj in sorted({kj * dw % sw for kj in range(kw)}):
            q[pi * sw + pj] = padded[:, pi::sh, pj::sw][:, :hq, :wq].reshape(C, -1)
    return q


def im2col_twin(q, kh, kw, sh, sw, dh, dw, wq, row_start, row_stop, out=None):
    """cols (C*kh*kw, (row_stop - row_start)*Wq) of output rows [row_start, row_stop) on the wide
    grid, from the phase images q (sh*sw, C, Hq*Wq): row (c*kh + ki)*kw + kj is the slice of
    its phase image that tap (ki, kj) reads."""
    C, n = q.shape[1], (row_stop - row_start) * wq
    cols = np.empty((C * kh * kw, n), q.dtype) if out is None else out
    if cols.shape != (C * kh * kw, n):
        raise ValueError("im2col: out must have shape (C*kh*kw, (row_stop - row_start)*Wq)")
    taps = cols.reshape(C, kh, kw, n)  # a view: row (c*kh + ki)*kw + kj is taps[c, ki, kj]
    for ki in range(kh):
        for kj in range(kw):
            phase, offset = _tap(ki, kj, sh, sw, dh, dw, wq)
            start = row_start * wq + offset
            taps[:, ki, kj] = q[phase, :, start:start + n]
    return cols


def col2im_twin(cols, q, kh, kw, sh, sw, dh, dw, wq, row_start, row_stop):
    """The adjoint of im2col: adds every row of ``cols`` onto the slice of the phase images
    ``q`` (sh*sw, C, Hq*Wq) it was copied from, in place."""
    C, n = q.shape[1], (row_stop - row_start) * wq
    if cols.shape != (C * kh * kw, n):
        raise ValueError("col2im: cols must have shape (C*kh*kw, (row_stop - row_start)*Wq)")
    taps = cols.reshape(C, kh, kw, n)
    for ki in range(kh):
        for kj in range(kw):
            phase, offset = _tap(ki, kj, sh, sw, dh, dw, wq)
            start = row_start * wq + offset
            q[phase, :, start:start + n] += taps[:, ki, kj]
    return q


def phase_merge_twin(q, H, W, kh, kw, sh, sw, ph, pw, dh, dw, out=None):
    """The adjoint of phase_split: the (C, H, W) image whose pixel (i, j) is the phase-image
    entry phase_split put it in. Written into ``out`` if given."""
    C = q.shape[1]
    _, _, hq, wq = phase_grid(H, W, kh, kw, sh, sw, ph, pw, dh, dw)
    if q.shape != (sh * sw, C, hq * wq):
        raise ValueError("phase_merge: q must have shape (sh*sw, C, Hq*Wq)")
    padded = np.zeros((C, sh * hq + sh, sw * wq + sw), q.dtype)
    for pi in range(sh):
        for pj in range(sw):
            padded[:, pi::sh, pj::sw][:, :hq, :wq] = q[pi * sw + pj].reshape(C, hq, wq)
    x = np.empty((C, H, W), q.dtype) if out is None else out
    x[...] = 0
    rows, cols = min(H, sh * hq - ph), min(W, sw * wq - pw)
    x[:, :rows, :cols] = padded[:, ph:ph + rows, pw:pw + cols]
    return x


# ----- Numba kernels --------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def phase_split(x, kh, kw, sh, sw, ph, pw, dh, dw, out=None):
    """The phase images (sh*sw, C, Hq*Wq) of the image ``x`` (C, H, W):
    q[pi*sw + pj, c, u*Wq + v] = x[c, u*sh + pi - ph, v*sw + pj - pw], 0 outside x.
    Only the phases some tap reads are written (the others are never read).

    Numba: row by row of each phase image: the zeros of the padding, then a strided run of x.
    """
    C, H, W = x.shape
    _, _, hq, wq = phase_grid(H, W, kh, kw, sh, sw, ph, pw, dh, dw)
    if out is None:
        q = np.zeros((sh * sw, C, hq * wq), x.dtype)
    else:
        q = out
    if q.shape[0] != sh * sw or q.shape[1] != C or q.shape[2] != hq * wq:
        raise ValueError("phase_split: out must have shape (sh*sw, C, Hq*Wq)")
    used_rows = np.zeros(sh, np.bool_)
    used_cols = np.zeros(sw, np.bool_)
    for ki in range(kh):
        used_rows[ki * dh % sh] = True
    for kj in range(kw):
        used_cols[kj * dw % sw] = True
    for pi in range(sh):
        for pj in range(sw):
            if not (used_rows[pi] and used_cols[pj]):
                continue
            # columns v with 0 <= v*sw + pj - pw < W read x; the others are padding
            first = max(0, -((pj - pw) // sw))
            last = min(wq, (W - 1 - pj + pw) // sw + 1)
            last = max(first, last)
            for c in range(C):
                plane = q[pi * sw + pj, c]
                for u in range(hq):
                    row = plane[u * wq:(u + 1) * wq]
                    i = u * sh + pi - ph
                    if i < 0 or i >= H:
                        row[:] = 0
                        continue
                    src = x[c, i]
                    for v in range(first):
                        row[v] = 0
                    for v in range(first, last):
                        row[v] = src[v * sw + pj - pw]
                    for v in range(last, wq):
                        row[v] = 0
    return q


@njit(nogil=True, cache=True)
def im2col(q, kh, kw, sh, sw, dh, dw, wq, row_start, row_stop, out=None):
    """cols (C*kh*kw, (row_stop - row_start)*Wq) of output rows [row_start, row_stop) on the wide
    grid, from the phase images q (sh*sw, C, Hq*Wq): row (c*kh + ki)*kw + kj is the slice of
    its phase image that tap (ki, kj) reads.

    Numba: one contiguous copy per row of cols. ``out`` may be a strided view (the columns of
    one image among several).
    """
    C = q.shape[1]
    n = (row_stop - row_start) * wq
    if out is None:
        cols = np.empty((C * kh * kw, n), q.dtype)
    else:
        cols = out
    if cols.shape[0] != C * kh * kw or cols.shape[1] != n:
        raise ValueError("im2col: out must have shape (C*kh*kw, (row_stop - row_start)*Wq)")
    for c in range(C):
        for ki in range(kh):
            for kj in range(kw):
                phase, offset = _tap(ki, kj, sh, sw, dh, dw, wq)
                start = row_start * wq + offset
                src = q[phase, c, start:start + n]
                dst = cols[(c * kh + ki) * kw + kj]
                for t in range(n):
                    dst[t] = src[t]
    return cols


@njit(nogil=True, cache=True)
def col2im(cols, q, kh, kw, sh, sw, dh, dw, wq, row_start, row_stop):
    """The adjoint of im2col: adds every row of ``cols`` onto the slice of the phase images
    ``q`` (sh*sw, C, Hq*Wq) it was copied from, in place.

    Numba: one contiguous add per row of cols. Slices of neighbouring taps and of neighbouring
    bands overlap, so two threads must not add into the same rows of q at once (the conv op
    makes sure of that).
    """
    C = q.shape[1]
    n = (row_stop - row_start) * wq
    if cols.shape[0] != C * kh * kw or cols.shape[1] != n:
        raise ValueError("col2im: cols must have shape (C*kh*kw, (row_stop - row_start)*Wq)")
    for c in range(C):
        for ki in range(kh):
            for kj in range(kw):
                phase, offset = _tap(ki, kj, sh, sw, dh, dw, wq)
                start = row_start * wq + offset
                dst = q[phase, c, start:start + n]
                src = cols[(c * kh + ki) * kw + kj]
                for t in range(n):
                    dst[t] += src[t]
    return q


@njit(nogil=True, cache=True)
def phase_merge(q, H, W, kh, kw, sh, sw, ph, pw, dh, dw, out=None):
    """The adjoint of phase_split: the (C, H, W) image whose pixel (i, j) is the phase-image
    entry phase_split put it in. Written into ``out`` if given.

    Numba: row by row of the image, each phase's pixels of the row at a time.
    """
    C = q.shape[1]
    _, _, hq, wq = phase_grid(H, W, kh, kw, sh, sw, ph, pw, dh, dw)
    if q.shape[0] != sh * sw or q.shape[2] != hq * wq:
        raise ValueError("phase_merge: q must have shape (sh*sw, C, Hq*Wq)")
    if out is None:
        x = np.empty((C, H, W), q.dtype)
    else:
        x = out
    if x.shape[0] != C or x.shape[1] != H or x.shape[2] != W:
        raise ValueError("phase_merge: out must have shape (C, H, W)")
    for c in range(C):
        for i in range(H):
            u, pi = (i + ph) // sh, (i + ph) % sh
            row = x[c, i]
            if u >= hq:
                row[:] = 0
                continue
            for pj in range(sw):  # the pixels j = j0, j0 + sw, ... come from phase (pi, pj)
                j0 = (pj - pw) % sw
                v0 = (j0 + pw) // sw
                src = q[pi * sw + pj, c, u * wq:(u + 1) * wq]
                for t in range((W - j0 + sw - 1) // sw):
                    row[j0 + t * sw] = src[v0 + t] if v0 + t < wq else 0
    return x
