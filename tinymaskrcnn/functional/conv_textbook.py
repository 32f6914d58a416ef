"""The textbook convolution: pad, im2col, one matrix product (the slow twin of functional/conv.py).

For an image x (C, H, W) and a weight w (Cout, C, kh, kw), im2col lays out every window the
kernel sees as one column: X^[(c*kh + ki)*kw + kj, oh*Wo + ow] = xpad[c, oh*sh + ki*dh, ow*sw + kj*dw].
Then, with W = w.reshape(Cout, K) and K = C*kh*kw,

    forward   Y = W X^ + b                   dL/dW = sum over images of dY X^^T
    dL/db = sum of dY                        dL/dx = col2im(W^T dY)

col2im is im2col's adjoint: it adds every column entry back onto the pixel it was copied from.
conv_transpose2d is conv2d's adjoint in x, so its forward is conv2d's input gradient and its
input gradient is conv2d's forward. With groups G, channels split into G independent slices and
every product is taken per group (a batched matmul). ``tm.use_kernels("twins")`` (or
TINYMASKRCNN_KERNELS=twins) runs the whole package on this file and the kernels' NumPy twins
(functional/dispatch.py); tests hold it equal to the fast path and to torch.

On the GPU (CuPy arrays) this file is the path: the same products, with im2col and col2im the
Numba-CUDA kernels of kernels/cuda/im2col.py (same layout; col2im a gather, one thread per
pixel) and the products cuBLAS's batched matmul.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..core.backend import get_array_module
from ..kernels.im2col import conv_output_hw
from .dispatch import kernel_for


def im2col(x, kernel_hw, stride, padding, dilation):
    """(N, C, H, W) -> X^ (N, C*kh*kw, Ho*Wo): zero padding, then every dilated window (a view
    of the padded image) taken at the stride, copied out once by the reshape."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_hw, stride, padding, dilation
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    windows = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]  # (N, C, Ho, Wo, kh, kw)
    n, c, ho, wo = windows.shape[:4]
    return windows.transpose(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, ho * wo)


def col2im(cols, x_shape, kernel_hw, stride, padding, dilation):
    """im2col's adjoint: (N, C*kh*kw, Ho*Wo) -> (N, C, H, W), each entry added onto the pixel
    that im2col copied it from (overlapping windows sum), what fell in the padding dropped."""
    (n, c, h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw) = x_shape, kernel_hw, stride, padding, dilation
    ho, wo = conv_output_hw((h, w), kernel_hw, stride, padding, dilation)
    taps = cols.reshape(n, c, kh, kw, ho, wo)
    x = np.zeros((n, c, h + 2 * ph, w + 2 * pw), cols.dtype)
    for ki in range(kh):  # tap (ki, kj) saw the padded pixels (ki*dh + oh*sh, kj*dw + ow*sw)
        for kj in range(kw):
            rows = slice(ki * dh, ki * dh + sh * (ho - 1) + 1, sh)
            columns = slice(kj * dw, kj * dw + sw * (wo - 1) + 1, sw)
            x[:, :, rows, columns] += taps[:, :, ki, kj]
    return x[:, :, ph:ph + h, pw:pw + w]


def _pointwise(kernel_hw, stride, padding):
    """A 1x1 kernel at stride 1 without padding: im2col and col2im are the identity (each
    column is one pixel's channels), so they are skipped."""
    return tuple(kernel_hw) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)


def _columns(x, kernel_hw, stride, padding, dilation):
    """im2col(x): by the kernel table's im2col, or for a pointwise conv x itself seen as (N, C, H*W)."""
    if _pointwise(kernel_hw, stride, padding):
        return x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3])
    return kernel_for("im2col", x)(x, kernel_hw, stride, padding, dilation)


def _per_group(a, groups):
    """(N, R, L) or (N, R, H, W) -> (N, G, R/G, L = H*W): each group's rows (sizes spelled
    out, as -1 is ambiguous for an empty batch)."""
    return a.reshape(a.shape[0], groups, a.shape[1] // groups, int(np.prod(a.shape[2:])))


def conv2d_forward(x, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """y = W im2col(x) + b: x (N, C, H, W), weight (Cout, C/G, kh, kw) -> (N, Cout, Ho, Wo)."""
    n, cout = x.shape[0], weight.shape[0]
    ho, wo = conv_output_hw(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    # the above on NumPy arrays, the CUDA kernel of the same layout on CUDA arrays
    cols = _per_group(_columns(x, weight.shape[2:], stride, padding, dilation), groups)
    y = (weight.reshape(groups, cout // groups, -1) @ cols).reshape(n, cout, ho, wo)  # per group: W X^
    return y if bias is None else y + bias.reshape(1, -1, 1, 1)


def conv2d_input_grad(g, weight, x_shape, stride, padding, dilation, groups=1):
    """dL/dx = col2im(W^T dY), x of shape ``x_shape``: the transposed product, then im2col's adjoint."""
    n, cout = g.shape[:2]
    w_t = weight.reshape(groups, cout // groups, -1).transpose(0, 2, 1)  # (G, K/G, Cout/G)
    cols = w_t @ _per_group(g, groups)  # (N, G, K/G, L)
    cols = cols.reshape(n, groups * cols.shape[2], cols.shape[3])
    if _pointwise(weight.shape[2:], stride, padding):
        return cols.reshape(x_shape)
    return kernel_for("col2im", g)(cols, x_shape, weight.shape[2:], stride, padding, dilation)


def conv2d_weight_grad(g, x, kernel_hw, stride, padding, dilation, groups=1):
    """dL/dW = sum over images of dY X^^T, shaped (Cout, C/G, kh, kw): one product per group
    over the images' positions side by side, dY (Cout/G, N*L) times X^^T (N*L, K/G), instead of
    a product per image and their sum (an (N, Cout, K) temporary: 600 MB for 256 mask RoIs)."""
    cout = g.shape[1]
    cols = _per_group(_columns(x, kernel_hw, stride, padding, dilation), groups)  # (N, G, K/G, L)
    dw = _side_by_side(_per_group(g, groups)) @ _side_by_side(cols).transpose(0, 2, 1)
    return dw.reshape(cout, x.shape[1] // groups, *kernel_hw)


def _side_by_side(a):
    """(N, G, R, L) -> (G, R, N*L): each group's rows with the images' positions side by side (a
    copy only when there are several images)."""
    n, groups, rows, length = a.shape
    return get_array_module(a).ascontiguousarray(a.transpose(1, 2, 0, 3)).reshape(groups, rows, n * length)


def conv2d_backward(g, x, weight, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """(dL/dx, dL/dW, dL/db) of y = conv2d_forward(x, weight, b, ...) given g = dL/dy."""
    return (conv2d_input_grad(g, weight, x.shape, stride, padding, dilation, groups),
            conv2d_weight_grad(g, x, weight.shape[2:], stride, padding, dilation, groups),
            g.sum(axis=(0, 2, 3)))


def conv_transpose2d_forward(x, weight, bias, out_hw, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """y = col2im(W^T x) + b: the input gradient of the conv2d whose weight is ``weight``
    (Cin, Cout/G, kh, kw), which maps (N, Cout, *out_hw) images to x's (N, Cin, H, W)."""
    y = conv2d_input_grad(x, weight, (x.shape[0], weight.shape[1] * groups, *out_hw), stride, padding, dilation,
                          groups)
    return y if bias is None else y + bias.reshape(1, -1, 1, 1)


def conv_transpose2d_backward(g, x, weight, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """(dL/dx, dL/dW, dL/db): dx = W im2col(dy) is that conv2d's forward on dy, dW = x im2col(dy)^T
    its weight gradient with x in dY's place."""
    return (conv2d_forward(g, weight, None, stride, padding, dilation, groups),
            conv2d_weight_grad(x, g, weight.shape[2:], stride, padding, dilation, groups),
            g.sum(axis=(0, 2, 3)))
