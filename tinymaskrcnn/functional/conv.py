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

How it runs
-----------
The ops below hold the math and the checks, and call three products: y = W im2col(x) + b,
dL/dx = col2im(W^T dY) and dL/dW = dY im2col(x)^T. Two modules compute them with the same
signatures: functional/conv_schedule.py, fast (tiles of output rows shared among worker threads,
Winograd's algorithm for 3x3 stride-1 convs), and functional/conv_textbook.py, the textbook
(pad, im2col with sliding windows, one matrix product). The kernel table
(functional/dispatch.py) chooses between them: the fast products by default, the textbook ones
under ``tm.use_kernels("twins")``, and on CUDA arrays the textbook products with the
Numba-CUDA im2col and col2im kernels and cuBLAS's batched matmul. The backward computes only
what ``needs_input_grad`` asks for: the first conv of a network (or a frozen one) no dL/dx, a
frozen conv no dL/dW.
"""
from numbers import Integral

from ..core.autograd import Function
from ..core.backend import get_array_module
from ..kernels.im2col import conv_output_hw
from .arguments import kernel_dtype, pair
from .dispatch import kernel_for


def _bias_grad(g):
    """dL/db[c] = sum of g[:, c] over images and positions (summed along contiguous rows first)."""
    n_img, c, h, w = g.shape
    return g.reshape(n_img, c, h * w).sum(axis=2).sum(axis=0)  # explicit sizes: n_img may be 0


class Conv2d(Function):
    """y = conv2d(x, w, b): forward Y = W im2col(x) + b; backward dW = dY im2col(x)^T,
    db = sum dY, dx = col2im(W^T dY) (derivation in the module docstring)."""

    def forward(self, x, weight, bias, stride, padding, dilation, groups):
        xp = get_array_module(x)
        x, weight = xp.ascontiguousarray(x), xp.ascontiguousarray(weight)
        self.x, self.weight, self.args = x, weight, (stride, padding, dilation, groups)
        # the backward's products are chosen now: it runs on the kernels the forward ran on
        self.input_grad, self.weight_grad = kernel_for("conv2d_input_grad", x), kernel_for("conv2d_weight_grad", x)
        return kernel_for("conv2d_forward", x)(x, weight, bias, *self.args)

    def backward(self, g):
        g = get_array_module(g).ascontiguousarray(g)
        need_x, need_w, need_b = self.needs_input_grad
        dx = self.input_grad(g, self.weight, self.x.shape, *self.args) if need_x else None
        dw = self.weight_grad(g, self.x, self.weight.shape[2:], *self.args) if need_w else None
        db = _bias_grad(g) if need_b else None
        return dx, dw, db


class ConvTranspose2d(Function):
    """y = conv_transpose2d(x, w, b), the adjoint of conv2d with weight w in its input: forward
    y = col2im(W^T x) + b (conv2d's input gradient); backward dx = W im2col(dy) (conv2d's
    forward), dW = x im2col(dy)^T (conv2d's weight gradient), db = sum dy."""

    def forward(self, x, weight, bias, stride, padding, dilation, groups, out_hw):
        xp = get_array_module(x)
        x, weight = xp.ascontiguousarray(x), xp.ascontiguousarray(weight)
        h, w = x.shape[2:]
        # The conv this op transposes maps out_hw to hc x wc. That is h x w unless an
        # output_padding >= stride (allowed when < dilation) added positions that no input
        # reaches: give them zero inputs, so the two maps are each other's adjoint exactly.
        hc, wc = conv_output_hw(out_hw, weight.shape[2:], stride, padding, dilation)
        if (hc, wc) != (h, w):
            x = xp.pad(x, ((0, 0), (0, 0), (0, hc - h), (0, wc - w)))
        self.x, self.weight, self.args, self.in_hw = x, weight, (stride, padding, dilation, groups), (h, w)
        self.conv2d, self.weight_grad = kernel_for("conv2d_forward", x), kernel_for("conv2d_weight_grad", x)
        out_shape = (x.shape[0], weight.shape[1] * groups) + tuple(out_hw)
        y = kernel_for("conv2d_input_grad", x)(x, weight, out_shape, *self.args)
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
            dx = self.conv2d(g, self.weight, None, *self.args)
            if dx.shape[2:] != (h, w):
                dx = xp.ascontiguousarray(dx[:, :, :h, :w])
        dw = self.weight_grad(self.x, g, self.weight.shape[2:], *self.args) if need_w else None
        db = _bias_grad(g) if need_b else None
        return dx, dw, db


# ----- argument checks ----------------------------------------------------------------------


def _check_common(op, input, weight, bias, groups):
    """Checks shared by both ops: array module, ranks, dtypes, groups."""
    for name, value in (("input", input), ("weight", weight), ("bias", bias)):
        if not (hasattr(value, "ndim") and hasattr(value, "dtype")) and not (name == "bias" and value is None):
            raise TypeError(f"{op}: {name} must be a Tensor or an array, got {type(value).__name__}")
    if len({get_array_module(a) for a in (input, weight, bias) if a is not None}) > 1:
        raise TypeError(f"{op}: input, weight and bias must be on one device (all NumPy or all CuPy); "
                        "move the model with model.to(device=...) and the input with backend.to_device")
    if input.ndim != 4:
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W), got shape {tuple(input.shape)}; "
                         "for a single (C, H, W) image pass x[None]")
    if weight.ndim != 4:
        raise ValueError(f"{op}: weight must be 4-D, got shape {tuple(weight.shape)}")
    if input.dtype.kind != "f" or input.dtype != weight.dtype or (bias is not None and bias.dtype != input.dtype):
        bias_dtype = None if bias is None else bias.dtype
        raise TypeError(f"{op}: input, weight and bias must share one floating dtype, got "
                        f"{input.dtype}, {weight.dtype} and {bias_dtype}; cast them with .astype(...)")
    kernel_dtype(op, "input", input.dtype)
    if input.shape[1] == 0:
        raise ValueError(f"{op}: input of shape {tuple(input.shape)} has no channel (torch answers with an "
                         f"output of no channel, whatever the weight and bias)")
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
    stride, padding = pair(stride, "stride", op, 1), pair(padding, "padding", op, 0)
    dilation = pair(dilation, "dilation", op, 1)
    _, cin, h, w = input.shape
    cout, cin_g, kh, kw = weight.shape
    if cout == 0:
        raise ValueError(f"{op}: weight of shape {tuple(weight.shape)} has no output channel")
    if cin != cin_g * groups:
        raise ValueError(f"{op}: input has {cin} channels (shape {tuple(input.shape)}) but weight of shape "
                         f"{tuple(weight.shape)} with groups={groups} expects {cin_g * groups}")
    if cout % groups:
        raise ValueError(f"{op}: groups={groups} must divide the {cout} output channels of weight "
                         f"{tuple(weight.shape)}")
    _check_bias(op, bias, cout)
    ho, wo = conv_output_hw((h, w), (kh, kw), stride, padding, dilation)
    if ho < 1 or wo < 1:
        raise ValueError(f"{op}: input of shape {tuple(input.shape)} is smaller than the dilated kernel "
                         f"{tuple(weight.shape[2:])} (dilation {dilation}) plus padding {padding}")
    return Conv2d.apply(input, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=int(groups))


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """torch.nn.functional.conv_transpose2d: input (N, Cin, H, W), weight (Cin, Cout/groups, kh, kw),
    bias (Cout,) or None -> (N, Cout, Hout, Wout), Hout = (H-1)s - 2p + d(kh-1) + output_padding + 1.

    stride, padding, output_padding and dilation are ints or (height, width) pairs;
    output_padding must be smaller than the stride or the dilation (as in torch).
    """
    op = "conv_transpose2d"
    _check_common(op, input, weight, bias, groups)
    stride, padding = pair(stride, "stride", op, 1), pair(padding, "padding", op, 0)
    dilation = pair(dilation, "dilation", op, 1)
    output_padding = pair(output_padding, "output_padding", op, 0)
    _, cin, h, w = input.shape
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
    if cout_g == 0:
        raise ValueError(f"{op}: weight of shape {tuple(weight.shape)} has no output channel")
    cout = cout_g * groups
    _check_bias(op, bias, cout)
    out_hw = tuple((size - 1) * s - 2 * p + d * (k - 1) + extra + 1
                   for size, s, p, d, k, extra in zip((h, w), stride, padding, dilation, (kh, kw), output_padding))
    if min(out_hw) < 1:
        raise ValueError(f"{op}: padding {padding} is too large for input of shape {tuple(input.shape)} "
                         f"and weight {tuple(weight.shape)}: the output would be {out_hw}")
    return ConvTranspose2d.apply(input, weight, bias, stride=stride, padding=padding, dilation=dilation,
                                 groups=int(groups), out_hw=out_hw)
