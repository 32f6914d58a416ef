"""im2col and col2im on the GPU: a convolution as one batched matrix product.

The CPU kernels (``kernels/im2col.py``) split the image into stride phases and work on a wide
output grid, so that every copy is a long contiguous run for one core. A GPU hides memory
latency with many threads instead, so here the plain layout is used: for a batch x (N, C, H, W),

    cols[n, (c*kh + ki)*kw + kj, oh*Wo + ow] = x[n, c, oh*sh - ph + ki*dh, ow*sw - pw + kj*dw]

(0 outside the image), and the convolution is ``w.reshape(Cout, -1) @ cols``, a batched GEMM of
(Cout, C*kh*kw) by (N, C*kh*kw, Ho*Wo) (cuBLAS through CuPy). These columns are the CPU kernels'
wide-grid columns with the extra positions (ow >= Wo) dropped; the tests hold them equal.

col2im, the adjoint, adds every entry of cols back onto the pixel it was copied from. Written
as a scatter, threads would collide on shared pixels and need atomic adds, whose order (and so
rounding) changes from run to run. Written as a gather it is deterministic: one thread per
*input* pixel (i, j) visits the taps that read it, ki with i + ph - ki*dh = oh*sh for an output
row 0 <= oh < Ho (kj likewise), and sums them in (ki, kj) order, the CPU kernel's order.
"""
from numba import cuda

from .. import array_module
from ..im2col import conv_output_hw
from . import device_array, launch


@cuda.jit
def im2col_kernel(x, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cols):
    """Thread layout: one thread per entry of cols (N, C*kh*kw, Ho*Wo), grid-stride, the output
    position fastest so neighbouring threads write neighbouring columns."""
    N, C, H, W = x.shape
    taps, positions = C * kh * kw, ho * wo
    zero = x.dtype.type(0)
    for e in range(cuda.grid(1), N * taps * positions, cuda.gridsize(1)):
        p, r, n = e % positions, (e // positions) % taps, e // (positions * taps)
        c, ki, kj = r // (kh * kw), (r // kw) % kh, r % kw
        i = (p // wo) * sh - ph + ki * dh
        j = (p % wo) * sw - pw + kj * dw
        cols[n, r, p] = x[n, c, i, j] if 0 <= i < H and 0 <= j < W else zero


@cuda.jit
def col2im_kernel(cols, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, x):
    """Thread layout: one thread per pixel of x (N, C, H, W), grid-stride, gathering the entries
    of cols (N, C*kh*kw, Ho*Wo) copied from it: no two threads write the same pixel."""
    N, C, H, W = x.shape
    for e in range(cuda.grid(1), N * C * H * W, cuda.gridsize(1)):
        j, i, c, n = e % W, (e // W) % H, (e // (W * H)) % C, e // (W * H * C)
        acc = x.dtype.type(0)
        for ki in range(kh):
            t = i + ph - ki * dh  # = oh * sh for the output row oh whose tap ki reads row i
            if t < 0 or t % sh != 0 or t // sh >= ho:
                continue
            for kj in range(kw):
                u = j + pw - kj * dw
                if u < 0 or u % sw != 0 or u // sw >= wo:
                    continue
                acc += cols[n, (c * kh + ki) * kw + kj, (t // sh) * wo + u // sw]
        x[n, c, i, j] = acc


def im2col(x, kernel, stride, padding, dilation):
    """cols (N, C*kh*kw, Ho*Wo) of the batch x (N, C, H, W); each geometry argument a pair."""
    x = device_array(x)
    N, C, H, W = x.shape
    ho, wo = conv_output_hw((H, W), kernel, stride, padding, dilation)
    cols = array_module(x).empty((N, C * kernel[0] * kernel[1], ho * wo), x.dtype)
    launch(im2col_kernel, cols.size, x, *kernel, *stride, *padding, *dilation, ho, wo, cols)
    return cols


def col2im(cols, x_shape, kernel, stride, padding, dilation):
    """The adjoint of im2col: the (N, C, H, W) image whose pixels are the sums of their copies in cols."""
    cols = device_array(cols)
    N, C, H, W = x_shape
    ho, wo = conv_output_hw((H, W), kernel, stride, padding, dilation)
    if cols.shape != (N, C * kernel[0] * kernel[1], ho * wo):
        raise ValueError(f"col2im: cols has shape {cols.shape}, expected {(N, C * kernel[0] * kernel[1], ho * wo)} "
                         f"for an image batch of shape {tuple(x_shape)}")
    x = array_module(cols).empty((N, C, H, W), cols.dtype)
    launch(col2im_kernel, x.size, cols, *kernel, *stride, *padding, *dilation, ho, wo, x)
    return x
