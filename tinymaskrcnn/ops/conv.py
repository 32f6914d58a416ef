"""2-D convolution and transposed convolution (torch.nn.functional.conv2d / conv_transpose2d).

Convolution as a matrix product
-------------------------------
For one image x (C, H, W) and a weight w (Cout, C, kh, kw), im2col copies every input pixel
that kernel tap (c, ki, kj) sees at output position l = oh*Wo + ow into

    X^[(c*kh + ki)*kw + kj, l] = x[c, oh*sh - ph + ki*dh, ow*sw - pw + kj*dw]   (0 in the padding)

so that, with W = w.reshape(Cout, K) (K = C*kh*kw) and L = Ho*Wo,

    forward:   Y = W X^ + b 1^T                Y (Cout, L) = y.reshape(Cout, Ho, Wo)

(see kernels/im2col.py). With ``groups`` = G the channels split into G independent slices:
W is block-diagonal, so each group is its own product of its (Cout/G, K/G) block with its
K/G rows of X^.

Backward. Y is linear in W, in b and in X^, and X^ = A x for the fixed 0/1 copy matrix A
(im2col). From dL = sum(dY * dY_in):

    dL/dW = dY X^^T                 (Cout, K): summed over the images of the batch
    dL/db = sum over images and positions l of dY
    dL/dX^ = W^T dY                 (K, L)
    dL/dx = A^T (W^T dY) = col2im(W^T dY)

A^T adds each entry back onto the pixel it was copied from (col2im). Written out, dL/dx is
the full correlation of the stride-dilated dY with the spatially flipped kernel: the
"convolution backward is a convolution with the flipped kernel" rule, computed here as one
matrix product and one col2im instead.

Transposed convolution
----------------------
conv_transpose2d is the adjoint of conv2d with respect to its input: its forward pass is
exactly conv2d's input-gradient map. Its weight (Cin, Cout/G, kh, kw) is the weight of the
conv2d it transposes (that conv maps Cout channels to Cin), so with W = w.reshape(Cin, K),
K = Cout*kh*kw / G per group and x seen as (Cin, H*W):

    forward:   y = col2im(W^T x) + b                            (Cout, Hout, Wout)
    dL/dx = W im2col(dy)          a conv2d of dy with the same weight
    dL/dW = x im2col(dy)^T        (since y = A^T (W^T x): dL/d(W^T x) = A dy = im2col(dy))
    dL/db = sum of dy over images and positions

Hout = (H - 1)*sh - 2*ph + dh*(kh - 1) + output_padding + 1: output_padding adds rows at the
bottom/right that no input reaches (they only receive the bias), resolving which of the
output sizes that map to H under the strided conv is meant.

Choices made for speed and memory
---------------------------------
* The products run per image and per band of output rows: X^ restricted to the columns of
  rows [start, stop) is filled into one reused buffer of at most BAND_BYTES (32 MB), and BLAS
  writes W X^_band straight into those columns of y (a strided view: no copy). A conv never
  holds more than one band: the full X^ of the FPN's 3x3 conv on the stride-4 level at
  800x1088 would be 500 MB. dL/dx and dL/dW go band by band too: col2im adds each band into
  dL/dx, and dL/dW sums dY_band X^_band^T.
* 1x1, stride-1, unpadded convolutions (a third of ResNet-50's) skip im2col: X^ is the image
  itself seen as a (C, H*W) matrix, and dL/dx = W^T dY needs no col2im.
* The backward recomputes X^ from x instead of caching it from the forward pass. X^ is kh*kw
  times larger than x, so caching every conv's X^ would add gigabytes to the peak memory of a
  ResNet-50-FPN training step at 800x1088, while x is kept alive by the tape anyway and im2col
  is a memory-bound copy costing a few percent of the two matrix products of the backward.
* The backward skips what ``needs_input_grad`` says is not needed: the first conv of a network
  (or a frozen one) computes no dL/dx, a frozen conv no dL/dW.
"""
import threading
from collections import namedtuple
from numbers import Integral

import numpy as np

from ..autograd import Function
from ..backend import get_array_module
from ..kernels.im2col import col2im, conv_output_size, im2col


class _Geometry(namedtuple("_Geometry", "kh kw sh sw ph pw dh dw")):
    """Kernel size, stride, padding and dilation, in the order the im2col kernels take them."""

    @property
    def pointwise(self):
        """A 1x1, stride-1, unpadded conv: the image itself is the im2col matrix."""
        return self.kh == self.kw == 1 and self.sh == self.sw == 1 and self.ph == self.pw == 0

    def output_hw(self, h, w):
        return (conv_output_size(h, self.kh, self.sh, self.ph, self.dh),
                conv_output_size(w, self.kw, self.sw, self.pw, self.dw))


# ----- the three products, shared by conv2d and conv_transpose2d -----------------------------

# im2col runs over bands of output rows whose matrix is at most BAND_BYTES, so a conv never
# holds more than one band (the full matrix of the FPN's stride-4 3x3 conv at 800x1088 would be
# 500 MB). Smaller bands would stay in the cache between im2col and BLAS, but every band hands
# the cores from Numba's threads to OpenBLAS's and back, which costs about a millisecond on 2
# cores, and far more when other processes keep the cores busy (4 MB bands ran 5-10x slower
# than 64 MB ones next to one busy process). Measured on 2 cores, 32 MB was the best size. A
# band spans at least MIN_BAND_POSITIONS output pixels, as BLAS slows down on narrower matrices.
BAND_BYTES = 32 << 20
MIN_BAND_POSITIONS = 512

_band_buffers = threading.local()  # per thread: dtype -> the flat buffer bands are filled into


def _band_buffer(xp, size, dtype):
    """A flat buffer of at least ``size`` elements, kept from call to call (a fresh buffer per
    conv would be page-faulted in by the OS every time). One per thread and dtype: a conv
    never needs two at once."""
    buffers = _band_buffers.__dict__
    buffer = buffers.get(dtype)
    if buffer is None or buffer.size < size:
        buffer = buffers[dtype] = xp.empty(size, dtype)
    return buffer


class _Bands:
    """The output rows of one image split into bands [start, stop), and one reusable buffer
    for a band's im2col matrix (C*kh*kw, rows*Wo).

    A 1x1 stride-1 unpadded conv needs no im2col (the image itself is the matrix), so it is
    one band covering the whole image.
    """

    def __init__(self, xp, channels, out_hw, geom, dtype):
        self.geom, (self.ho, self.wo) = geom, out_hw
        k = channels * geom.kh * geom.kw
        if geom.pointwise:
            rows, self.buffer = self.ho, None
        else:
            row_bytes = k * self.wo * xp.dtype(dtype).itemsize
            rows = min(self.ho, max(1, BAND_BYTES // row_bytes, -(-MIN_BAND_POSITIONS // self.wo)))
            self.buffer = _band_buffer(xp, k * rows * self.wo, xp.dtype(dtype))
        self.k = k
        self.ranges = [(r, min(r + rows, self.ho)) for r in range(0, self.ho, rows)]

    def positions(self, start, stop):
        """The slice of flattened output positions oh*Wo + ow that a band covers."""
        return slice(start * self.wo, stop * self.wo)

    def empty(self, start, stop):
        """The buffer, seen as the (C*kh*kw, positions) matrix of the band."""
        return self.buffer[:self.k * (stop - start) * self.wo].reshape(self.k, -1)

    def cols(self, x_n, start, stop):
        """im2col of the band of one (C, H, W) image."""
        if self.geom.pointwise:
            return x_n.reshape(x_n.shape[0], -1)[:, self.positions(start, stop)]
        return im2col(x_n, *self.geom, start, stop, out=self.empty(start, stop))


def _correlate(x, weight, geom, groups):
    """y[n] = W im2col(x[n]) per group: conv2d's forward, conv_transpose2d's input gradient.

    x (N, C, H, W), weight (Cout, C/G, kh, kw) -> (N, Cout, Ho, Wo).
    """
    xp = get_array_module(x)
    n_img, c, h, w = x.shape
    cout = weight.shape[0]
    out_hw = geom.output_hw(h, w)
    w_groups = weight.reshape(groups, cout // groups, -1)
    y = xp.empty((n_img, cout) + out_hw, x.dtype)
    bands = _Bands(xp, c, out_hw, geom, x.dtype)
    for n in range(n_img):
        y_n = y[n].reshape(groups, cout // groups, -1)
        for start, stop in bands.ranges:
            cols = bands.cols(x[n], start, stop).reshape(groups, -1, (stop - start) * bands.wo)
            xp.matmul(w_groups, cols, out=y_n[:, :, bands.positions(start, stop)])
    return y


def _correlate_transpose(g, weight, geom, groups, out_chw):
    """x[n] = col2im(W^T g[n]) per group: conv2d's input gradient, conv_transpose2d's forward.

    g (N, Cout, Ho, Wo), weight (Cout, C/G, kh, kw) -> (N, C, H, W) with (C, H, W) = out_chw.
    """
    xp = get_array_module(g)
    n_img, cout, ho, wo = g.shape
    c, h, w = out_chw
    w_t = weight.reshape(groups, cout // groups, -1).transpose(0, 2, 1)  # a view: BLAS transposes
    if geom.pointwise:  # col2im of a 1x1 stride-1 conv is the identity
        x = xp.empty((n_img, c, h, w), g.dtype)
        for n in range(n_img):
            xp.matmul(w_t, g[n].reshape(groups, cout // groups, -1), out=x[n].reshape(groups, c // groups, -1))
        return x
    x = xp.zeros((n_img, c, h, w), g.dtype)  # col2im adds each band's contributions into it
    bands = _Bands(xp, c, (ho, wo), geom, g.dtype)
    for n in range(n_img):
        g_n = g[n].reshape(groups, cout // groups, -1)
        for start, stop in bands.ranges:
            cols = bands.empty(start, stop)
            xp.matmul(w_t, g_n[:, :, bands.positions(start, stop)], out=cols.reshape(groups, -1, cols.shape[1]))
            col2im(cols, c, h, w, *geom, start, stop, out=x[n])
    return x


def _weight_grad(g, x, geom, groups):
    """dW = sum_n g[n] im2col(x[n])^T per group, shaped (Cout, C/G, kh, kw).

    conv2d: g = dL/dy, x = its input. conv_transpose2d: g = its input, x = dL/dy.
    """
    xp = get_array_module(g)
    n_img, cout, ho, wo = g.shape
    c = x.shape[1]
    bands = _Bands(xp, c, (ho, wo), geom, g.dtype)
    dw = xp.zeros((groups, cout // groups, bands.k // groups), g.dtype)
    term = xp.empty_like(dw)
    for n in range(n_img):
        g_n = g[n].reshape(groups, cout // groups, -1)
        for start, stop in bands.ranges:
            cols = bands.cols(x[n], start, stop).reshape(groups, -1, (stop - start) * wo)
            xp.matmul(g_n[:, :, bands.positions(start, stop)], cols.transpose(0, 2, 1), out=term)
            dw += term
    return dw.reshape(cout, c // groups, geom.kh, geom.kw)


def _bias_grad(g):
    """dL/db[c] = sum of g[:, c] over images and positions (summed along contiguous rows first)."""
    n_img, c, h, w = g.shape
    return g.reshape(n_img, c, h * w).sum(axis=2).sum(axis=0)  # explicit sizes: n_img may be 0


# ----- the ops ------------------------------------------------------------------------------


class Conv2d(Function):
    """y = conv2d(x, w, b): forward Y = W im2col(x) + b; backward dW = dY im2col(x)^T,
    db = sum dY, dx = col2im(W^T dY) (derivation in the module docstring)."""

    def forward(self, x, weight, bias, geom, groups):
        xp = get_array_module(x)
        x, weight = xp.ascontiguousarray(x), xp.ascontiguousarray(weight)
        self.x, self.weight, self.geom, self.groups = x, weight, geom, groups
        y = _correlate(x, weight, geom, groups)
        if bias is not None:
            y += bias.reshape(1, -1, 1, 1)
        return y

    def backward(self, g):
        g = get_array_module(g).ascontiguousarray(g)
        need_x, need_w, need_b = self.needs_input_grad
        dx = _correlate_transpose(g, self.weight, self.geom, self.groups, self.x.shape[1:]) if need_x else None
        dw = _weight_grad(g, self.x, self.geom, self.groups) if need_w else None
        db = _bias_grad(g) if need_b else None
        return dx, dw, db


class ConvTranspose2d(Function):
    """y = conv_transpose2d(x, w, b): forward y = col2im(W^T x) + b; backward
    dx = W im2col(dy), dW = x im2col(dy)^T, db = sum dy (derivation in the module docstring)."""

    def forward(self, x, weight, bias, geom, groups, out_hw):
        xp = get_array_module(x)
        x, weight = xp.ascontiguousarray(x), xp.ascontiguousarray(weight)
        h, w = x.shape[2:]
        # The conv this op transposes maps out_hw to hc x wc. That is h x w unless an
        # output_padding >= stride (allowed when < dilation) added positions that no input
        # reaches: give them zero inputs, so the two maps are each other's adjoint exactly.
        hc, wc = geom.output_hw(*out_hw)
        if (hc, wc) != (h, w):
            x = xp.pad(x, ((0, 0), (0, 0), (0, hc - h), (0, wc - w)))
        self.x, self.weight, self.geom, self.groups, self.in_hw = x, weight, geom, groups, (h, w)
        cout = weight.shape[1] * groups
        y = _correlate_transpose(x, weight, geom, groups, (cout,) + tuple(out_hw))
        if bias is not None:
            y += bias.reshape(1, -1, 1, 1)
        return y

    def backward(self, g):
        xp = get_array_module(g)
        g = xp.ascontiguousarray(g)
        need_x, need_w, need_b = self.needs_input_grad
        dx = None
        if need_x:
            h, w = self.in_hw
            dx = _correlate(g, self.weight, self.geom, self.groups)
            if dx.shape[2:] != (h, w):
                dx = xp.ascontiguousarray(dx[:, :, :h, :w])
        dw = _weight_grad(self.x, g, self.geom, self.groups) if need_w else None
        db = _bias_grad(g) if need_b else None
        return dx, dw, db


# ----- argument checks ----------------------------------------------------------------------


def _pair(value, name, op, minimum):
    """An int or a pair of ints -> (int, int), each at least ``minimum``."""
    items = value if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2 or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in items):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints (height, width), got {value!r}")
    if min(items) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value!r}")
    return int(items[0]), int(items[1])


def _check_common(op, input, weight, bias, groups):
    """Checks shared by both ops: array module, ranks, dtypes, groups."""
    for name, value in (("input", input), ("weight", weight), ("bias", bias)):
        if not (hasattr(value, "ndim") and hasattr(value, "dtype")) and not (name == "bias" and value is None):
            raise TypeError(f"{op}: {name} must be a Tensor or an array, got {type(value).__name__}")
    if get_array_module(input, weight, bias) is not np:
        raise NotImplementedError(f"{op} on CuPy arrays: the GPU kernels come in a later chapter "
                                  "(GPU kernels); use NumPy arrays for now")
    if input.ndim != 4:
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W), got shape {tuple(input.shape)}; "
                         "for a single (C, H, W) image pass x[None]")
    if weight.ndim != 4:
        raise ValueError(f"{op}: weight must be 4-D, got shape {tuple(weight.shape)}")
    if input.dtype.kind != "f" or input.dtype != weight.dtype or (bias is not None and bias.dtype != input.dtype):
        bias_dtype = None if bias is None else bias.dtype
        raise TypeError(f"{op}: input, weight and bias must share one floating dtype, got "
                        f"{input.dtype}, {weight.dtype} and {bias_dtype}; cast them with .astype(...)")
    if not isinstance(groups, Integral) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")


def _check_bias(op, bias, out_channels):
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise ValueError(f"{op}: bias must have shape ({out_channels},) (one per output channel), "
                         f"got {tuple(bias.shape)}")


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """torch.nn.functional.conv2d: input (N, Cin, H, W), weight (Cout, Cin/groups, kh, kw),
    bias (Cout,) or None -> (N, Cout, Ho, Wo), Ho = (H + 2p - d(kh-1) - 1) // s + 1.

    stride, padding and dilation are ints or (height, width) pairs.
    """
    op = "conv2d"
    _check_common(op, input, weight, bias, groups)
    stride, padding = _pair(stride, "stride", op, 1), _pair(padding, "padding", op, 0)
    dilation = _pair(dilation, "dilation", op, 1)
    n, cin, h, w = input.shape
    cout, cin_g, kh, kw = weight.shape
    if cin != cin_g * groups:
        raise ValueError(f"{op}: input has {cin} channels (shape {tuple(input.shape)}) but weight of shape "
                         f"{tuple(weight.shape)} with groups={groups} expects {cin_g * groups}")
    if cout % groups:
        raise ValueError(f"{op}: groups={groups} must divide the {cout} output channels of weight "
                         f"{tuple(weight.shape)}")
    _check_bias(op, bias, cout)
    geom = _Geometry(kh, kw, *stride, *padding, *dilation)
    ho, wo = geom.output_hw(h, w)
    if ho < 1 or wo < 1:
        raise ValueError(f"{op}: input of shape {tuple(input.shape)} is smaller than the dilated kernel "
                         f"{tuple(weight.shape[2:])} (dilation {dilation}) plus padding {padding}")
    return Conv2d.apply(input, weight, bias, geom=geom, groups=int(groups))


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """torch.nn.functional.conv_transpose2d: input (N, Cin, H, W), weight (Cin, Cout/groups, kh, kw),
    bias (Cout,) or None -> (N, Cout, Hout, Wout), Hout = (H-1)s - 2p + d(kh-1) + output_padding + 1.

    stride, padding, output_padding and dilation are ints or (height, width) pairs;
    output_padding must be smaller than the stride or the dilation (as in torch).
    """
    op = "conv_transpose2d"
    _check_common(op, input, weight, bias, groups)
    stride, padding = _pair(stride, "stride", op, 1), _pair(padding, "padding", op, 0)
    dilation = _pair(dilation, "dilation", op, 1)
    output_padding = _pair(output_padding, "output_padding", op, 0)
    n, cin, h, w = input.shape
    cin_w, cout_g, kh, kw = weight.shape
    if cin != cin_w:
        raise ValueError(f"{op}: input has {cin} channels (shape {tuple(input.shape)}) but weight of shape "
                         f"{tuple(weight.shape)} expects {cin_w} (weight is (Cin, Cout/groups, kh, kw))")
    if cin % groups:
        raise ValueError(f"{op}: groups={groups} must divide the {cin} input channels")
    for extra, s, d in zip(output_padding, stride, dilation):
        if extra >= s and extra >= d:
            raise ValueError(f"{op}: output_padding {output_padding} must be smaller than the stride "
                             f"{stride} or the dilation {dilation}")
    cout = cout_g * groups
    _check_bias(op, bias, cout)
    geom = _Geometry(kh, kw, *stride, *padding, *dilation)
    out_hw = tuple((size - 1) * s - 2 * p + d * (k - 1) + extra + 1
                   for size, s, p, d, k, extra in zip((h, w), stride, padding, dilation, (kh, kw), output_padding))
    if min(out_hw) < 1:
        raise ValueError(f"{op}: padding {padding} is too large for input of shape {tuple(input.shape)} "
                         f"and weight {tuple(weight.shape)}: the output would be {out_hw}")
    return ConvTranspose2d.apply(input, weight, bias, geom=geom, groups=int(groups), out_hw=out_hw)
