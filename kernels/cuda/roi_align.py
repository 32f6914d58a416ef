"""RoIAlign forward and backward on the GPU (torchvision's CUDA kernel's layout).

The rules (bins, adaptive sampling grid, the legacy clamp, the edge rule, invalid samples) are
those of ``kernels/roi_align.py``, computed in the same order of operations. The CPU kernel
precomputes per-axis tap tables; here every thread recomputes the taps of its own bin, which
costs a few flops and saves a table in global memory.

Forward: one thread per output bin (k, c, py, px), grid-stride. It loops over the bin's
grid_h × grid_w samples, reads four pixels for each and writes the mean: no thread writes
another's output, so no synchronisation.

Backward: the same thread per bin, handing grad · weight / count back to the four pixels of
each sample with ``cuda.atomic.add`` into a zeroed gradient, as torchvision does. Bins of one
RoI and overlapping RoIs share pixels, so the adds collide and their order varies between runs:
the gradient equals the CPU kernel's to rounding, not bit for bit.
"""
import math

from numba import cuda

from .. import array_module
from . import device_array, launch


@cuda.jit(device=True)
def _axis(lo, hi, pooled, spatial_scale, sampling_ratio, aligned):
    """One axis of a RoI: (start, bin size, samples per bin), in the boxes' dtype."""
    T = type(lo)
    offset = T(0.5) if aligned else T(0.0)
    start = lo * spatial_scale - offset
    extent = (hi * spatial_scale - offset) - start
    if not aligned:
        extent = max(extent, T(1.0))
    bin_size = extent / T(pooled)
    grid = sampling_ratio if sampling_ratio > 0 else max(int(math.ceil(extent / T(pooled))), 0)
    return start, bin_size, grid


@cuda.jit(device=True)
def _tap(coord, size):
    """Bilinear tap of one sample along one axis: (low, high, weight of low, weight of high);
    weights 0 for a sample more than a pixel outside the map."""
    T = type(coord)
    if coord < T(-1.0) or coord > T(size):
        return 0, 0, T(0.0), T(0.0)
    if coord <= T(0.0):
        coord = T(0.0)
    low = int(coord)
    if low >= size - 1:  # the edge rule: the last pixel alone
        return size - 1, size - 1, T(1.0), T(0.0)
    frac = coord - T(low)
    return low, low + 1, T(1.0) - frac, frac


@cuda.jit(device=True)
def _sample(start, bin_size, grid, p, i):
    """Coordinate of sample i of bin p, in torchvision's order of operations."""
    T = type(start)
    return start + T(p) * bin_size + (T(i) + T(0.5)) * bin_size / T(grid)


@cuda.jit(device=True)
def _bin(e, rois, C, PH, PW, spatial_scale, sampling_ratio, aligned):
    """Flat bin index ``e`` of a (K, C, PH, PW) output -> its (px, py, c, k), the RoI's image b, and
    each axis's (start, bin size, samples per bin): what the forward and backward threads share."""
    px, py, c, k = e % PW, (e // PW) % PH, (e // (PW * PH)) % C, e // (PW * PH * C)
    ys, yb, gh = _axis(rois[k, 2], rois[k, 4], PH, spatial_scale, sampling_ratio, aligned)
    xs, xb, gw = _axis(rois[k, 1], rois[k, 3], PW, spatial_scale, sampling_ratio, aligned)
    return px, py, c, k, int(rois[k, 0]), ys, yb, gh, xs, xb, gw


@cuda.jit
def roi_align_forward_kernel(input, rois, spatial_scale, sampling_ratio, aligned, out):
    """Thread layout: one thread per output bin of out (K, C, ph, pw), grid-stride."""
    T = input.dtype.type
    K, C, PH, PW = out.shape
    H, W = input.shape[2], input.shape[3]
    for e in range(cuda.grid(1), K * C * PH * PW, cuda.gridsize(1)):
        px, py, c, k, b, ys, yb, gh, xs, xb, gw = _bin(e, rois, C, PH, PW, spatial_scale, sampling_ratio, aligned)
        acc = T(0.0)
        for iy in range(gh):
            y0, y1, hy, ly = _tap(_sample(ys, yb, gh, py, iy), H)
            for ix in range(gw):
                x0, x1, hx, lx = _tap(_sample(xs, xb, gw, px, ix), W)
                acc += ((hy * hx) * input[b, c, y0, x0] + (hy * lx) * input[b, c, y0, x1]
                        + (ly * hx) * input[b, c, y1, x0] + (ly * lx) * input[b, c, y1, x1])
        out[k, c, py, px] = acc / T(max(gh * gw, 1))


@cuda.jit
def roi_align_backward_kernel(grad_output, rois, spatial_scale, sampling_ratio, aligned, grad_input):
    """Thread layout: one thread per bin of grad_output (K, C, ph, pw), grid-stride, atomically
    adding into grad_input (N, C, H, W), which must start at zero."""
    T = grad_output.dtype.type
    K, C, PH, PW = grad_output.shape
    H, W = grad_input.shape[2], grad_input.shape[3]
    for e in range(cuda.grid(1), K * C * PH * PW, cuda.gridsize(1)):
        px, py, c, k, b, ys, yb, gh, xs, xb, gw = _bin(e, rois, C, PH, PW, spatial_scale, sampling_ratio, aligned)
        count = T(max(gh * gw, 1))
        g = grad_output[k, c, py, px]
        for iy in range(gh):
            y0, y1, hy, ly = _tap(_sample(ys, yb, gh, py, iy), H)
            for ix in range(gw):
                x0, x1, hx, lx = _tap(_sample(xs, xb, gw, px, ix), W)
                if hy + ly == T(0.0) or hx + lx == T(0.0):
                    continue  # an invalid sample: nothing to add
                cuda.atomic.add(grad_input, (b, c, y0, x0), g * (hy * hx) / count)
                cuda.atomic.add(grad_input, (b, c, y0, x1), g * (hy * lx) / count)
                cuda.atomic.add(grad_input, (b, c, y1, x0), g * (ly * hx) / count)
                cuda.atomic.add(grad_input, (b, c, y1, x1), g * (ly * lx) / count)


def roi_align_forward(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned):
    """(K, C, pooled_h, pooled_w) RoIAlign of input (N, C, H, W); the arguments as the CPU kernel's
    (``spatial_scale`` a scalar of the input's dtype, rois (K, 5) of that dtype)."""
    input, rois = device_array(input), device_array(rois)
    out = array_module(input).empty((rois.shape[0], input.shape[1], pooled_h, pooled_w), input.dtype)
    launch(roi_align_forward_kernel, out.size, input, rois, spatial_scale, sampling_ratio, aligned, out)
    return out


def roi_align_backward(grad_output, rois, batch_size, height, width, spatial_scale, sampling_ratio, aligned):
    """(N, C, H, W) input gradient from the (K, C, ph, pw) output gradient."""
    grad_output, rois = device_array(grad_output), device_array(rois)
    grad_input = array_module(grad_output).zeros((batch_size, grad_output.shape[1], height, width),
                                                     grad_output.dtype)
    launch(roi_align_backward_kernel, grad_output.size, grad_output, rois, spatial_scale, sampling_ratio, aligned,
           grad_input)
    return grad_input
