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

Each function comes twice: a plain NumPy version (suffix ``_reference``) to read first, which
copies one kernel tap (ki, kj) for all channels and output pixels at a time with a strided slice
of the zero-padded image, and the Numba kernel that the ops run, which fills the rows of cols in
parallel without building the padded image. Both have the same signature and results.
"""
import os
import warnings

import numba
import numba.np.ufunc.parallel
import numpy as np
from numba import njit, prange

# A convolution alternates im2col (Numba's threads) with matrix products (OpenBLAS's threads)
# many times. Numba's default OpenMP workers busy-wait for milliseconds after each parallel
# region, keeping the cores from OpenBLAS (measured: 3-10x slower on 2 cores), and
# OMP_WAIT_POLICY cannot reliably stop it (torch, when imported first, brings its own libgomp).
# Numba's built-in "workqueue" layer sleeps at once. It must be chosen before anything starts
# Numba's thread pool (we warn if something did); a layer chosen through NUMBA_THREADING_LAYER
# is kept. workqueue aborts the process if parallel kernels are launched from several Python
# threads at the same time or from inside each other: the project does neither.
if "NUMBA_THREADING_LAYER" not in os.environ:
    if numba.np.ufunc.parallel._is_initialized and numba.threading_layer() != "workqueue":
        warnings.warn(f"Numba's {numba.threading_layer()!r} thread pool was started before tinymaskrcnn's "
                      "kernels were imported, so convolutions may run several times slower: import "
                      "tinymaskrcnn first, or set NUMBA_THREADING_LAYER=workqueue", RuntimeWarning)
    numba.config.THREADING_LAYER = "workqueue"


@njit(cache=True)
def conv_output_size(size, kernel, stride, padding, dilation):
    """Output length of a convolution along one axis: floor((n + 2p - d(k-1) - 1) / s) + 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@njit(cache=True)
def _valid_outputs(offset, stride, size, n_out):
    """The range [lo, hi) of output positions o with 0 <= o*stride + offset < size.

    Outside it the kernel tap reads the zero padding; inside it reads the image, so the copy
    loops need no bounds test per pixel.
    """
    lo = max(0, -(offset // stride))  # ceil(-offset / stride)
    hi = min(n_out, (size - 1 - offset) // stride + 1)
    return lo, max(lo, hi)


# ----- im2col -------------------------------------------------------------------------------


def im2col_reference(x, kh, kw, sh, sw, ph, pw, dh, dw, row_start=0, row_stop=None, out=None):
    """cols (C*kh*kw, (row_stop - row_start)*Wo) of the image ``x`` (C, H, W): the columns of
    output rows row_start <= oh < row_stop (all rows by default). Written into ``out`` if given.

    Plain NumPy: pad the image with zeros once, then for every kernel tap (ki, kj) take the
    strided slice of the padded image that the tap sees at all those output positions.
    """
    C, H, W = x.shape
    ho = conv_output_size(H, kh, sh, ph, dh)
    wo = conv_output_size(W, kw, sw, pw, dw)
    row_stop = ho if row_stop is None else min(row_stop, ho)
    rows = row_stop - row_start
    cols = np.empty((C * kh * kw, rows * wo), x.dtype) if out is None else out
    if cols.shape != (C * kh * kw, rows * wo):
        raise ValueError("im2col: out must have shape (C*kh*kw, (row_stop - row_start)*Wo)")
    padded = np.pad(x, ((0, 0), (ph, ph), (pw, pw)))
    taps = cols.reshape(C, kh, kw, rows, wo)  # a view: row (c*kh + ki)*kw + kj is taps[c, ki, kj]
    for ki in range(kh):
        for kj in range(kw):
            i0 = ki * dh + row_start * sh  # where the tap sits in the padded image at (row_start, 0)
            j0 = kj * dw
            taps[:, ki, kj] = padded[:, i0:i0 + sh * (rows - 1) + 1:sh, j0:j0 + sw * (wo - 1) + 1:sw]
    return cols


@njit(parallel=True, cache=True)
def im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, row_start=0, row_stop=None, out=None):
    """cols (C*kh*kw, (row_stop - row_start)*Wo) of the image ``x`` (C, H, W): the columns of
    output rows row_start <= oh < row_stop (all rows by default). Written into ``out`` if given.

    Numba: the rows of cols are independent, so they are filled in parallel. Consecutive rows
    share a channel, so a thread keeps re-reading the same image plane from its cache.
    """
    C, H, W = x.shape
    ho = conv_output_size(H, kh, sh, ph, dh)
    wo = conv_output_size(W, kw, sw, pw, dw)
    if row_stop is None:
        stop = ho
    else:
        stop = min(row_stop, ho)
    rows = stop - row_start
    if out is None:
        cols = np.empty((C * kh * kw, rows * wo), x.dtype)
    else:
        cols = out
    if cols.shape[0] != C * kh * kw or cols.shape[1] != rows * wo:
        raise ValueError("im2col: out must have shape (C*kh*kw, (row_stop - row_start)*Wo)")
    for r in prange(C * kh * kw):
        c = r // (kh * kw)
        ki = (r // kw) % kh
        kj = r % kw
        offset = kj * dw - pw  # input column = ow*sw + offset
        lo, hi = _valid_outputs(offset, sw, W, wo)
        for oh in range(row_start, stop):
            i = oh * sh - ph + ki * dh
            base = (oh - row_start) * wo
            if i < 0 or i >= H:
                for ow in range(wo):
                    cols[r, base + ow] = 0
                continue
            for ow in range(lo):
                cols[r, base + ow] = 0
            for ow in range(hi, wo):
                cols[r, base + ow] = 0
            if hi > lo:  # a slice copy: Numba compiles it to a tighter loop than indexing
                cols[r, base + lo:base + hi] = x[c, i, lo * sw + offset:(hi - 1) * sw + offset + 1:sw]
    return cols


# ----- col2im -------------------------------------------------------------------------------


def col2im_reference(cols, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, row_start=0, row_stop=None, out=None):
    """The adjoint of im2col: adds every entry of ``cols`` (as im2col lays out output rows
    row_start <= oh < row_stop) onto the pixel of the (C, H, W) image it came from; entries
    that came from the padding are dropped. Adds into ``out`` if given, else into zeros.
    """
    ho = conv_output_size(H, kh, sh, ph, dh)
    wo = conv_output_size(W, kw, sw, pw, dw)
    row_stop = ho if row_stop is None else min(row_stop, ho)
    rows = row_stop - row_start
    if cols.shape != (C * kh * kw, rows * wo):
        raise ValueError("col2im: cols must have shape (C*kh*kw, (row_stop - row_start)*Wo)")
    padded = np.zeros((C, H + 2 * ph, W + 2 * pw), cols.dtype)
    taps = cols.reshape(C, kh, kw, rows, wo)
    for ki in range(kh):
        for kj in range(kw):
            i0, j0 = ki * dh + row_start * sh, kj * dw
            # one tap never hits the same pixel twice, so += on the slice is a correct sum
            padded[:, i0:i0 + sh * (rows - 1) + 1:sh, j0:j0 + sw * (wo - 1) + 1:sw] += taps[:, ki, kj]
    x = np.zeros((C, H, W), cols.dtype) if out is None else out
    x += padded[:, ph:ph + H, pw:pw + W]
    return x


@njit(parallel=True, cache=True)
def col2im(cols, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, row_start=0, row_stop=None, out=None):
    """The adjoint of im2col: adds every entry of ``cols`` (as im2col lays out output rows
    row_start <= oh < row_stop) onto the pixel of the (C, H, W) image it came from; entries
    that came from the padding are dropped. Adds into ``out`` if given, else into zeros.

    Numba: overlapping windows make several cols entries land on one pixel, so threads that
    shared a channel would race on its pixels. Every channel's pixels get contributions only
    from that channel's kh*kw rows, so the parallel loop runs over channels: race-free.
    """
    ho = conv_output_size(H, kh, sh, ph, dh)
    wo = conv_output_size(W, kw, sw, pw, dw)
    if row_stop is None:
        stop = ho
    else:
        stop = min(row_stop, ho)
    rows = stop - row_start
    if cols.shape[0] != C * kh * kw or cols.shape[1] != rows * wo:
        raise ValueError("col2im: cols must have shape (C*kh*kw, (row_stop - row_start)*Wo)")
    if out is None:
        x = np.zeros((C, H, W), cols.dtype)
    else:
        x = out
    if x.shape[0] != C or x.shape[1] != H or x.shape[2] != W:
        raise ValueError("col2im: out must have shape (C, H, W)")
    for c in prange(C):
        for ki in range(kh):
            for kj in range(kw):
                r = (c * kh + ki) * kw + kj
                offset = kj * dw - pw
                lo, hi = _valid_outputs(offset, sw, W, wo)
                if hi == lo:
                    continue
                for oh in range(row_start, stop):
                    i = oh * sh - ph + ki * dh
                    if i < 0 or i >= H:
                        continue
                    # the image pixels this tap hits on row i, and the cols entries they receive
                    target = x[c, i, lo * sw + offset:(hi - 1) * sw + offset + 1:sw]
                    source = cols[r, (oh - row_start) * wo + lo:(oh - row_start) * wo + hi]
                    for k in range(hi - lo):
                        target[k] += source[k]
    return x
