"""Resizing a 4-D input with 'nearest' or 'bilinear' sampling, torch's exact index rules.

Both modes are separable: each output row is a fixed combination of input rows, each output
column one of input columns. Along one axis the sampling is a matrix A (out x in) with one
(nearest) or two (linear) non-zeros per row, and for a map X (H, W)

forward   Y = A_h X A_w^T                       (rows resampled by A_h, columns by A_w)
backward  dL/dX = A_h^T (dL/dY) A_w             (the transpose: every input pixel collects
                                                 the gradient of each output that sampled it,
                                                 weighted as it was sampled)

so the backward is the scatter-add of the forward's gather. A has few non-zeros per row, and so
has A^T per row (an input index feeds at most a handful of outputs), so both directions are
applied the same way: as a gather of those non-zeros along the axis, never as a dense product.
(Rows with fewer non-zeros are padded with weight 0, so an inf in the input can make a nearby
output NaN through 0 * inf; torch's zero weights do the same, though not always at the same
outputs. Finite inputs are unaffected.)

Where output index i samples from (per axis, input length L, output length O):

nearest   src = min(floor(i * r), L - 1) with r = 1/scale_factor when a scale factor is used,
          else L/O, computed in float32 whatever the input dtype (as torch); O == L copies and
          O == 2L takes i // 2, whatever r would say.
bilinear  r = (L-1)/(O-1) with align_corners (0 when O == 1); otherwise r = 1/scale_factor or
          L/O as above, in the input's precision. The source coordinate is s = r i
          (align_corners: the corner pixels' centres meet) or s = max(r (i + 1/2) - 1/2, 0)
          (pixel centres map to pixel centres); i0 = min(floor(s), L - 1), i1 = i0 + 1 unless
          i0 is the last pixel, and y_i = (1 - l) X[i0] + l X[i1] with l = clip(s - i0, 0, 1).
          O == L copies.

Which scale is used: with ``size`` the sizes give r. With ``scale_factor`` the output length is
floor(L * scale_factor); recompute_scale_factor=True then forgets the factor and uses L/O,
otherwise r = 1/scale_factor, which differs from L/O when L * scale_factor is not an integer.
"""
from numbers import Real

import numpy as np

from ..core.autograd import Function
from ..core.backend import get_array_module
from .arguments import pair

MODES = ("nearest", "bilinear")


def _nearest_sources(in_size, out_size, scale, xp):
    """Input index each output index copies from, torch's 'nearest' rule."""
    out = xp.arange(out_size)
    if out_size == in_size:
        return out
    if out_size == 2 * in_size:
        return out // 2
    # torch computes this ratio and product in float32 even for float64 inputs
    ratio = np.float32(1.0 / scale) if scale else np.float32(in_size) / np.float32(out_size)
    return xp.minimum(xp.floor(out.astype(np.float32) * ratio).astype(np.int64), in_size - 1)


def _linear_sources(in_size, out_size, scale, align_corners, dtype, xp):
    """The two input indices and weights each output index mixes, torch's 'bilinear' rule.

    Coordinates are computed in ``dtype`` (torch's opmath type: float32 for float32 input).
    """
    out = xp.arange(out_size)
    if out_size == in_size:
        return out, out, xp.ones(out_size, dtype), xp.zeros(out_size, dtype)
    t = dtype.type
    if align_corners:
        ratio = t(in_size - 1) / t(out_size - 1) if out_size > 1 else t(0)
        src = ratio * out.astype(dtype)
    else:
        ratio = t(1.0 / scale) if scale else t(in_size) / t(out_size)
        src = xp.maximum(ratio * (out.astype(dtype) + t(0.5)) - t(0.5), t(0))
    # torch floors through float32 (floorf) in either precision
    i0 = xp.minimum(xp.floor(src.astype(np.float32)).astype(np.int64), in_size - 1)
    lam = xp.clip(src - i0.astype(dtype), 0, 1)
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, 1 - lam, lam


def _sampling_matrix(in_size, out_size, scale, mode, align_corners, dtype, xp):
    """A (out_size, in_size): row i holds the weights output i gives each input index."""
    a = xp.zeros((out_size, in_size), dtype=dtype)
    rows = xp.arange(out_size)
    if mode == "nearest":
        a[rows, _nearest_sources(in_size, out_size, scale, xp)] = 1
    else:
        i0, i1, w0, w1 = _linear_sources(in_size, out_size, scale, align_corners, dtype, xp)
        a[rows, i0] = w0
        a[rows, i1] += w1  # i1 == i0 at the last pixel: the weights add up to 1
    return a


def _nonzeros_by_row(m):
    """Column indices and weights of each row's non-zeros, padded with weight 0 to the longest row."""
    xp = get_array_module(m)
    rows, cols = xp.nonzero(m)  # row-major: grouped by row, columns ascending
    counts = xp.bincount(rows, minlength=m.shape[0])
    slot = xp.arange(rows.size) - (xp.cumsum(counts) - counts)[rows]  # position within its row
    width = int(counts.max())
    index = xp.zeros((m.shape[0], width), dtype=np.int64)
    weight = xp.zeros((m.shape[0], width), dtype=m.dtype)
    index[rows, slot], weight[rows, slot] = cols, m[rows, cols]
    return index, weight


def _apply_along(x, m, axis):
    """m (out, in) applied along ``axis`` of x: y[..., i, ...] = sum_j m[i, j] x[..., j, ...]."""
    xp = get_array_module(x)
    index, weight = (xp.asarray(a) for a in _nonzeros_by_row(m))
    shape = [1] * x.ndim
    shape[axis] = -1
    y = x.take(index[:, 0], axis=axis) * weight[:, 0].reshape(shape)
    for k in range(1, index.shape[1]):
        y += x.take(index[:, k], axis=axis) * weight[:, k].reshape(shape)
    return y


class Interpolate(Function):
    """Y = A_h X A_w^T over (N, C, H, W); dL/dX = A_h^T dL/dY A_w."""

    def forward(self, x, size, scales, mode, align_corners):
        xp = get_array_module(x)
        (h, w), (oh, ow), (sh, sw) = x.shape[2:], size, scales
        # The FPN's top-down path doubles both sides: 'nearest' then copies each pixel into a
        # 2x2 block (A = I ⊗ [1, 1]^T), done in one broadcast instead of two gathers.
        self.doubled = mode == "nearest" and (oh, ow) == (2 * h, 2 * w)
        if self.doubled:
            y = xp.empty(x.shape[:2] + (h, 2, w, 2), x.dtype)
            y[...] = x[:, :, :, None, :, None]
            return y.reshape(x.shape[:2] + (oh, ow))
        # the matrices depend on the sizes only: built on the host, their non-zeros sent to the device
        self.a_h = _sampling_matrix(h, oh, sh, mode, align_corners, x.dtype, np)
        self.a_w = _sampling_matrix(w, ow, sw, mode, align_corners, x.dtype, np)
        return _apply_along(_apply_along(x, self.a_h, 2), self.a_w, 3)

    def backward(self, g):
        if self.doubled:  # each input pixel collects its 2x2 block
            n, c, oh, ow = g.shape
            return (g.reshape(n, c, oh // 2, 2, ow // 2, 2).sum(axis=(3, 5)),)
        return (_apply_along(_apply_along(g, self.a_h.T, 2), self.a_w.T, 3),)


def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None):
    """torch.nn.functional.interpolate for a 4-D input (N, C, H, W), modes 'nearest' and 'bilinear'.

    Give exactly one of ``size`` (int or (H, W)) and ``scale_factor`` (float or pair);
    ``align_corners`` only for 'bilinear' (default False).
    """
    if input.ndim != 4:
        raise ValueError(f"interpolate: expected a 4-D input (N, C, H, W), got shape {tuple(input.shape)}; "
                         f"add a batch axis with x[None] for a single (C, H, W) image")
    if input.shape[1] == 0:
        raise ValueError(f"interpolate: input of shape {tuple(input.shape)} has an empty channel axis; "
                         f"only the batch axis may be empty")
    if mode not in MODES:
        raise ValueError(f"interpolate: unknown mode {mode!r}; supported modes are {', '.join(map(repr, MODES))}")
    if mode == "nearest" and align_corners is not None:
        raise ValueError("interpolate: align_corners can only be set with mode='bilinear'; leave it None for 'nearest'")
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of size and scale_factor")
    in_size = tuple(input.shape[2:])
    if size is not None:
        if recompute_scale_factor:
            raise ValueError("interpolate: recompute_scale_factor=True needs scale_factor, not an explicit size")
        out_size = pair(size, "size", "interpolate")
        scales = (None, None)
    else:
        factors = pair(scale_factor, "scale_factor", "interpolate", kind=Real)
        if min(factors) <= 0:
            raise ValueError(f"interpolate: scale_factor must be positive, got {scale_factor!r}")
        out_size = tuple(int(n * f) for n, f in zip(in_size, factors))  # floor, in double precision
        scales = (None, None) if recompute_scale_factor else factors
    if min(out_size) < 1 or min(in_size) < 1:
        raise ValueError(f"interpolate: input size {in_size} and output size {out_size} must be at least 1 "
                         f"(size={size!r}, scale_factor={scale_factor!r})")
    return Interpolate.apply(input, size=out_size, scales=scales, mode=mode, align_corners=bool(align_corners))
