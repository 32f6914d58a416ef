"""RoIAlign forward and backward: the NumPy twins and the Numba kernels.

RoIAlign (Mask R-CNN, He et al. 2017) cuts a fixed-size ph × pw patch out of a feature map for
each region of interest (RoI), without rounding the RoI to the pixel grid:

    the RoI [x1, y1, x2, y2] (image coordinates) is scaled to the map by spatial_scale and, when
    aligned, shifted by -0.5 so that pixel centres sit at integer coordinates;
    it is cut into ph × pw bins; each bin gets grid_h × grid_w evenly spaced sample points;
    each sample reads the map by bilinear interpolation of its four neighbouring pixels;
    the bin's value is the mean of its samples.

torchvision's exact rules, reproduced here:
- legacy mode (aligned=False) clamps the RoI's width and height to at least 1 and does not
  shift; aligned=True shifts by -0.5 and does not clamp;
- grid_h = sampling_ratio if it is > 0, else ceil(roi_height / ph) (likewise grid_w); the mean
  divides by count = max(grid_h · grid_w, 1);
- a sample with y < -1 or y > H (x < -1 or x > W) contributes 0 but still counts;
- otherwise y (x) is clamped to ≥ 0; a sample at or past the last row (column) reads that row
  alone (the "edge rule"), so pixels outside the map are never read.

The samples are separable: a sample's y depends only on its bin row and grid row, its x only on
its bin column and grid column. So each RoI is described by two short tables of bilinear taps,
one per axis (``_axis_taps``), and the 2-D weights are products of the two.

All functions take NumPy arrays already validated by ``tinymaskrcnn.ops.roi_align``: input
(N, C, H, W) float32 or float64 with H, W > 0, rois (K, 5) of the same dtype, finite, rows
[batch_index, x1, y1, x2, y2] with 0 ≤ batch_index < N, and ``spatial_scale`` a scalar of that
dtype (so float32 arithmetic stays float32, as torchvision's kernel computes in the input type).
"""
import numpy as np
from numba import njit, prange


# ----- NumPy twins -----------------------------------------------------------------------------


def sample_coordinates(lo, hi, pooled, spatial_scale, sampling_ratio, aligned):
    """One RoI, one axis: where its samples fall on the map (pixel centres at integers).

    ``lo``, ``hi``: the RoI's edges in the image (x1, x2 or y1, y2), scalars of one float type.
    Returns (start, extent, coord): the RoI's first edge and length on the map after the
    scale, the half-pixel shift and the legacy clamp, and the (pooled, grid) coordinates of the
    samples, sample i of bin p at start + (p + (i + 1/2) / grid) · extent / pooled.
    """
    T = type(lo)
    offset = T(0.5) if aligned else T(0.0)
    start = lo * spatial_scale - offset
    extent = (hi * spatial_scale - offset) - start
    if not aligned:
        extent = max(extent, T(1.0))
    bin_size = extent / T(pooled)
    grid = sampling_ratio if sampling_ratio > 0 else max(int(np.ceil(extent / T(pooled))), 0)
    p = np.arange(pooled, dtype=T)[:, None]
    i = np.arange(grid, dtype=T)[None, :]
    return start, extent, start + p * bin_size + (i + T(0.5)) * bin_size / T(grid)


def _axis_taps_twin(lo, hi, size, pooled, spatial_scale, sampling_ratio, aligned):
    """One RoI, one axis: (pooled, grid) arrays low, high, frac, valid, and the grid size."""
    T = type(lo)
    _, _, coord = sample_coordinates(lo, hi, pooled, spatial_scale, sampling_ratio, aligned)
    grid = coord.shape[1]
    valid = (coord >= -1) & (coord <= size)
    # clamp at 0 (the rule); clamping at `size` only tames invalid samples for the integer cast
    coord = np.clip(coord, 0, size)
    low = coord.astype(np.int64)
    at_edge = low >= size - 1
    low = np.where(at_edge, size - 1, low)
    high = np.where(at_edge, size - 1, low + 1)
    frac = np.where(at_edge, T(0.0), coord - low.astype(T))
    return low, high, frac, valid, grid


def _bilinear_taps_twin(roi, height, width, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned):
    """The four bilinear taps of every sample of one RoI, and the sample count.

    Each tap is (rows, cols, weight), three arrays of shape (ph, grid_h, pw, grid_w): sample
    (py, iy, px, ix) reads pixel (rows, cols) with that weight (zero for invalid samples).
    """
    rule = (spatial_scale, sampling_ratio, aligned)
    ylow, yhigh, ly, vy, gh = _axis_taps_twin(roi[2], roi[4], height, pooled_h, *rule)
    xlow, xhigh, lx, vx, gw = _axis_taps_twin(roi[1], roi[3], width, pooled_w, *rule)
    hy, hx = 1 - ly, 1 - lx
    valid = vy[:, :, None, None] & vx[None, None, :, :]

    def tap(rows, cols, wy, wx):
        weight = (wy[:, :, None, None] * wx[None, None, :, :]) * valid
        return rows[:, :, None, None], cols[None, None, :, :], weight

    taps = [tap(ylow, xlow, hy, hx), tap(ylow, xhigh, hy, lx), tap(yhigh, xlow, ly, hx), tap(yhigh, xhigh, ly, lx)]
    return taps, type(roi[0])(max(gh * gw, 1))


def roi_align_forward_twin(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned):
    """(K, C, pooled_h, pooled_w) RoIAlign of ``input`` (N, C, H, W) (readable NumPy twin).

    out[k, c, py, px] = (1 / count) Σ_samples Σ_taps weight · input[b_k, c, row, col]
    """
    _, C, H, W = input.shape
    out = np.zeros((len(rois), C, pooled_h, pooled_w), dtype=input.dtype)
    for k, roi in enumerate(rois):
        fmap = input[int(roi[0])]  # (C, H, W)
        taps, count = _bilinear_taps_twin(roi, H, W, pooled_h, pooled_w, spatial_scale, sampling_ratio,
                                               aligned)
        samples = sum(weight * fmap[:, rows, cols] for rows, cols, weight in taps)  # (C, ph, gh, pw, gw)
        out[k] = samples.sum(axis=(2, 4)) / count
    return out


def roi_align_backward_twin(grad_output, rois, batch_size, height, width, spatial_scale, sampling_ratio, aligned):
    """(N, C, H, W) input gradient from the (K, C, ph, pw) output gradient (readable NumPy twin).

    The transpose of the forward sum: grad_input[b_k, c, row, col] += weight / count ·
    grad_output[k, c, py, px] for every tap. Taps repeat pixels, so it is a scatter-add.
    """
    K, C, pooled_h, pooled_w = grad_output.shape
    grad_input = np.zeros((batch_size, C, height, width), dtype=grad_output.dtype)
    for k, roi in enumerate(rois):
        taps, count = _bilinear_taps_twin(roi, height, width, pooled_h, pooled_w, spatial_scale,
                                               sampling_ratio, aligned)
        g = grad_output[k][:, :, None, :, None]  # (C, ph, 1, pw, 1): one value per bin
        for rows, cols, weight in taps:
            np.add.at(grad_input[int(roi[0])], (slice(None), rows, cols), g * weight / count)
    return grad_input


# ----- Numba kernels ---------------------------------------------------------------------------


@njit(cache=True)
def _axis_taps(rois, lo_col, hi_col, size, pooled, spatial_scale, sampling_ratio, aligned):
    """Bilinear taps of every sample along one axis of every RoI.

    The axis is x (columns 1 and 3 of ``rois``, ``size`` = W) or y (columns 2 and 4, H).
    RoI k has ``pooled`` bins of ``grid[k]`` samples; sample i of bin p is entry
    ``ptr[k] + p * grid[k] + i`` of ``low`` and ``high`` (the two pixels it reads) and
    ``wlow`` and ``whigh`` (their weights, 1 - frac and frac). An invalid sample gets weights 0,
    which zeroes its 2-D weights too: it adds 0, as in torchvision, and the loops need no branch.
    """
    T = rois.dtype.type
    K = rois.shape[0]
    offset = T(0.5) if aligned else T(0.0)
    start = np.empty(K, dtype=rois.dtype)
    bin_size = np.empty(K, dtype=rois.dtype)
    grid = np.empty(K, dtype=np.int64)
    for k in range(K):
        start[k] = rois[k, lo_col] * spatial_scale - offset
        extent = (rois[k, hi_col] * spatial_scale - offset) - start[k]
        if not aligned:
            extent = max(extent, T(1.0))
        bin_size[k] = extent / T(pooled)
        # an inverted RoI (aligned=True only) gets a negative adaptive grid: no samples
        grid[k] = sampling_ratio if sampling_ratio > 0 else max(int(np.ceil(extent / T(pooled))), 0)

    ptr = np.zeros(K + 1, dtype=np.int64)
    for k in range(K):
        ptr[k + 1] = ptr[k] + pooled * grid[k]
    low = np.zeros(ptr[K], dtype=np.int64)
    high = np.zeros(ptr[K], dtype=np.int64)
    wlow = np.zeros(ptr[K], dtype=rois.dtype)
    whigh = np.zeros(ptr[K], dtype=rois.dtype)
    for k in range(K):
        g = grid[k]
        for p in range(pooled):
            for i in range(g):
                # torchvision's order of operations, so float32 rounds the same way
                coord = start[k] + T(p) * bin_size[k] + (T(i) + T(0.5)) * bin_size[k] / T(g)
                e = ptr[k] + p * g + i
                if coord < -1.0 or coord > size:
                    continue  # more than a pixel outside the map: weights stay 0
                if coord <= 0:
                    coord = T(0.0)
                lo = int(coord)
                if lo >= size - 1:  # the edge rule: read the last pixel alone
                    low[e], high[e], wlow[e] = size - 1, size - 1, T(1.0)
                else:
                    frac = coord - T(lo)
                    low[e], high[e], wlow[e], whigh[e] = lo, lo + 1, T(1.0) - frac, frac
    return grid, ptr, low, high, wlow, whigh


@njit(cache=True)
def _sample_tables(rois, height, width, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned):
    """Both axes' taps, and each RoI's sample count (the divisor of the mean)."""
    ytaps = _axis_taps(rois, 2, 4, height, pooled_h, spatial_scale, sampling_ratio, aligned)
    xtaps = _axis_taps(rois, 1, 3, width, pooled_w, spatial_scale, sampling_ratio, aligned)
    count = np.empty(rois.shape[0], dtype=rois.dtype)
    for k in range(rois.shape[0]):
        count[k] = max(ytaps[0][k] * xtaps[0][k], 1)
    return ytaps, xtaps, count


@njit(parallel=True, cache=True)
def roi_align_forward(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned):
    """(K, C, pooled_h, pooled_w) RoIAlign of ``input`` (N, C, H, W) (Numba kernel).

    Parallel over (RoI, channel) pairs: each writes its own output plane. Planes are read
    flat (row · W + column): cheaper indexing in the innermost loop.
    """
    T = input.dtype.type
    N, C, H, W = input.shape
    K = rois.shape[0]
    planes = input.reshape(N * C, H * W)
    out = np.zeros((K, C, pooled_h, pooled_w), dtype=input.dtype)
    (ygrid, yptr, ylow, yhigh, ywlow, ywhigh), (xgrid, xptr, xlow, xhigh, xwlow, xwhigh), count = _sample_tables(
        rois, H, W, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned)
    for j in prange(K * C):
        k, c = j // C, j % C
        plane = planes[int(rois[k, 0]) * C + c]
        gh, gw = ygrid[k], xgrid[k]
        for py in range(pooled_h):
            for px in range(pooled_w):
                acc = T(0.0)
                for iy in range(gh):
                    ey = yptr[k] + py * gh + iy
                    row0, row1, hy, ly = ylow[ey] * W, yhigh[ey] * W, ywlow[ey], ywhigh[ey]
                    for ix in range(gw):
                        ex = xptr[k] + px * gw + ix
                        x0, x1, hx, lx = xlow[ex], xhigh[ex], xwlow[ex], xwhigh[ex]
                        acc += ((hy * hx) * plane[row0 + x0] + (hy * lx) * plane[row0 + x1]
                                + (ly * hx) * plane[row1 + x0] + (ly * lx) * plane[row1 + x1])
                out[k, c, py, px] = acc / count[k]
    return out


@njit(parallel=True, cache=True)
def roi_align_backward(grad_output, rois, batch_size, height, width, spatial_scale, sampling_ratio, aligned):
    """(N, C, H, W) gradient of the input, given the (K, C, ph, pw) output gradient (Numba kernel).

    The transpose of the forward: each sample hands grad · weight / count back to the four
    pixels it read. Different RoIs read the same pixels, so the scatter is parallel over
    (image, channel) planes — each thread owns one plane of the result, no races — and runs
    serially over the RoIs inside a plane, in torchvision's order.
    """
    K, C, pooled_h, pooled_w = grad_output.shape
    grad_input = np.zeros((batch_size, C, height, width), dtype=grad_output.dtype)
    planes = grad_input.reshape(batch_size * C, height * width)
    (ygrid, yptr, ylow, yhigh, ywlow, ywhigh), (xgrid, xptr, xlow, xhigh, xwlow, xwhigh), count = _sample_tables(
        rois, height, width, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned)
    for j in prange(batch_size * C):
        b, c = j // C, j % C
        plane = planes[j]
        for k in range(K):
            if int(rois[k, 0]) != b:
                continue
            gh, gw = ygrid[k], xgrid[k]
            for py in range(pooled_h):
                for px in range(pooled_w):
                    g = grad_output[k, c, py, px]
                    for iy in range(gh):
                        ey = yptr[k] + py * gh + iy
                        row0, row1, hy, ly = ylow[ey] * width, yhigh[ey] * width, ywlow[ey], ywhigh[ey]
                        for ix in range(gw):
                            ex = xptr[k] + px * gw + ix
                            x0, x1, hx, lx = xlow[ex], xhigh[ex], xwlow[ex], xwhigh[ex]
                            plane[row0 + x0] += g * (hy * hx) / count[k]
                            plane[row0 + x1] += g * (hy * lx) / count[k]
                            plane[row1 + x0] += g * (ly * hx) / count[k]
                            plane[row1 + x1] += g * (ly * lx) / count[k]
    return grad_input
