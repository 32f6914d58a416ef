"""2-D max pooling, torch's rules: output size, padding, dilation, ceil_mode and ties.

forward   y[n, c, i, j] = max over the window of x, where the window of output (i, j) holds
          the input positions (i*s_h - p_h + a*d_h,  j*s_w - p_w + b*d_w),
          a < k_h, b < k_w, that fall inside the image (padding counts as -inf).
          Output size per axis (torch's pooling_output_shape):
              out = floor((L + 2p - d(k-1) - 1 + (s-1 if ceil_mode)) / s) + 1,
          minus one if ceil_mode put the last window's start past the input and left padding.
backward  y is one of the x in its window, so dL/dx = dL/dy at the position that won, 0
          elsewhere; windows overlap when s < k, so one x can win several windows and its
          gradient is the sum (a scatter-add: kernels/pool.py, a Numba kernel and its NumPy
          twin, one ``bincount``).

Which position wins matters for the gradient when values tie. torch scans a window row by row
and takes a value when it is greater than the best so far or NaN, starting from the first
position inside the image. So the first of equal maxima wins, the last NaN wins, and a window
of -inf values routes its gradient to its first in-image position. The forward runs the same
scan (kernels/pool.py: a Numba kernel, and its NumPy twin vectorised over every window at
once, one step per kernel tap (a, b)). (A window
wholly in the padding, which torch's checks let through for some dilations, is refused here:
torch indexes outside the image for it.)
"""
import numpy as np

from ..core.autograd import Function
from ..core.backend import get_array_module
from .arguments import kernel_dtype, pair
from .dispatch import kernel_for


def pool_output_size(size, kernel, stride, padding, dilation, ceil_mode):
    """torch's pooling output length along one axis (see the module docstring)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1  # floor division, as torch's div_rtn, also for negative spans
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window must start inside the image or its left padding
    return out


def _first_inside(starts, kernel, dilation, size):
    """For windows starting at ``starts`` (maybe negative, a NumPy array), the offset of their first in-image tap."""
    first = (np.maximum(-starts, 0) + dilation - 1) // dilation
    if bool(((first >= kernel) | (starts + first * dilation >= size)).any()):
        raise ValueError(f"max_pool2d: a window of kernel {kernel} with dilation {dilation} lies wholly in the "
                         f"padding of an axis of length {size}; reduce padding or dilation")
    return first


class MaxPool2d(Function):
    """Max pooling over (N, C, H, W); backward scatters dL/dy to each window's winning position."""

    def forward(self, x, kernel, stride, padding, dilation, out_size):
        xp = get_array_module(x)
        (kh, kw), (dh, dw), (oh, ow) = kernel, dilation, out_size
        h, w = x.shape[2:]
        # the scan of each window starts at its first in-image tap a * kw + b: known from the
        # shapes, so computed (and checked) on the host and sent to the device, never read back
        top, left = np.arange(oh) * stride[0] - padding[0], np.arange(ow) * stride[1] - padding[1]
        first = _first_inside(top, kh, dh, h)[:, None] * kw + _first_inside(left, kw, dw, w)[None, :]
        best, self.winner = kernel_for("max_pool2d_forward", x)(
            xp.ascontiguousarray(x), *kernel, *stride, *padding, *dilation, *out_size, xp.asarray(first, np.int32))
        self.in_shape, self.geometry = x.shape, (*kernel, *stride, *padding, *dilation)
        self.scatter = kernel_for("max_pool2d_backward", x)  # chosen with the forward's kernel
        return best

    def backward(self, g):
        g = get_array_module(g).ascontiguousarray(g)
        return (self.scatter(g, self.winner, self.in_shape, *self.geometry),)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """torch.nn.functional.max_pool2d on a 4-D input (N, C, H, W).

    ``stride`` defaults to ``kernel_size``; ints or (height, width) pairs everywhere.
    """
    if input.ndim != 4:
        raise ValueError(f"max_pool2d: expected a 4-D input (N, C, H, W), got shape {tuple(input.shape)}; "
                         f"add a batch axis with x[None] for a single (C, H, W) map")
    op = "max_pool2d"
    kernel_dtype(op, "input", input.dtype)
    if 0 in input.shape[1:]:
        raise ValueError(f"max_pool2d: input of shape {tuple(input.shape)} has an empty channel, height or width "
                         f"axis; only the batch axis may be empty")
    kernel = pair(kernel_size, "kernel_size", op, 1)
    stride = kernel if stride is None else pair(stride, "stride", op, 1)
    padding, dilation = pair(padding, "padding", op), pair(dilation, "dilation", op, 1)
    if min(padding) < 0 or padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"max_pool2d: padding {padding} must be between 0 and half the kernel size {kernel}")
    out_size = tuple(pool_output_size(*args, ceil_mode)
                     for args in zip(input.shape[2:], kernel, stride, padding, dilation))
    if min(out_size) < 1:
        raise ValueError(f"max_pool2d: input of shape {tuple(input.shape)} is too small for kernel_size={kernel}, "
                         f"stride={stride}, padding={padding}, dilation={dilation}: output size {out_size}")
    return MaxPool2d.apply(input, kernel=kernel, stride=stride, padding=padding, dilation=dilation,
                           out_size=out_size)
