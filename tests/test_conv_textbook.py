"""The textbook convolution (functional/conv_textbook.py): its functions on their own against torch,
im2col and col2im adjoint to each other, and fast = textbook (``tm.use_kernels("twins")``) in
float64 to rounding on every conv case of test_conv.py (Winograd's algorithm included). The
switch itself, and the whole model on both, are tested in test_twins.py."""
import numpy as np
import pytest
from test_conv import CONV2D, CONV_TRANSPOSE2D, WINOGRAD_CASES

import tinymaskrcnn as tm
import tinymaskrcnn.functional as F
from tinymaskrcnn.core.gradcheck import rel_error
from tinymaskrcnn.functional import conv_textbook as textbook, conv_schedule

ROUNDING = 1e-12  # float64: the two paths sum the same products in different orders


def _pairs(kwargs, *names):
    """stride, padding, dilation as (height, width) pairs, as the textbook functions take them."""
    out = []
    for name in names:
        v = kwargs.get(name, 1 if name in ("stride", "dilation") else 0)  # torch's defaults
        out.append(tuple(v) if isinstance(v, tuple) else (v, v))
    return out


@pytest.mark.parametrize("case", CONV2D, ids=[c[0] for c in CONV2D])
def test_conv2d_forward_and_backward_match_torch(torch, rng, case):
    _, shape_x, shape_w, kwargs = case
    x, w, b = rng.standard_normal(shape_x), rng.standard_normal(shape_w), rng.standard_normal(shape_w[0])
    stride, padding, dilation = _pairs(kwargs, "stride", "padding", "dilation")
    groups = kwargs.get("groups", 1)
    y = textbook.conv2d_forward(x, w, b, stride, padding, dilation, groups)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, **kwargs)
    assert rel_error(y, ty.detach().numpy()) < 1e-12
    g = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(g))
    for ours, theirs in zip(textbook.conv2d_backward(g, x, w, stride, padding, dilation, groups), (tx, tw, tb)):
        assert rel_error(ours, theirs.grad.numpy()) < 1e-12


@pytest.mark.parametrize("case", CONV_TRANSPOSE2D, ids=[c[0] for c in CONV_TRANSPOSE2D])
def test_conv_transpose2d_forward_and_backward_match_torch(torch, rng, case):
    _, shape_x, shape_w, kwargs = case
    if np.any(np.array(_pairs(kwargs, "output_padding")[0]) >= np.array(_pairs(kwargs, "stride")[0])):
        pytest.skip("output_padding >= stride: F.conv_transpose2d pads x first (tested below)")
    groups = kwargs.get("groups", 1)
    x, w, b = rng.standard_normal(shape_x), rng.standard_normal(shape_w), rng.standard_normal(shape_w[1] * groups)
    stride, padding, dilation = _pairs(kwargs, "stride", "padding", "dilation")
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv_transpose2d(tx, tw, tb, **kwargs)
    y = textbook.conv_transpose2d_forward(x, w, b, tuple(ty.shape[2:]), stride, padding, dilation, groups)
    assert rel_error(y, ty.detach().numpy()) < 1e-12
    g = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(g))
    grads = textbook.conv_transpose2d_backward(g, x, w, stride, padding, dilation, groups)
    for ours, theirs in zip(grads, (tx, tw, tb)):
        assert rel_error(ours, theirs.grad.numpy()) < 1e-12


@pytest.mark.parametrize("case", CONV2D, ids=[c[0] for c in CONV2D])
def test_col2im_is_the_adjoint_of_im2col(rng, case):
    """<im2col(x), c> = <x, col2im(c)> for every x and c: col2im is im2col's transpose."""
    _, shape_x, shape_w, kwargs = case
    args = (shape_w[2:], *_pairs(kwargs, "stride", "padding", "dilation"))
    x = rng.standard_normal(shape_x)
    cols = textbook.im2col(x, *args)
    c = rng.standard_normal(cols.shape)
    assert np.isclose(np.vdot(cols, c), np.vdot(x, textbook.col2im(c, shape_x, *args)), rtol=1e-12)


def _run(name, arrays, kwargs):
    """Output and the three gradients (under a fixed cotangent) of F.<name> on Tensors."""
    tensors = [tm.Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = getattr(F, name)(*tensors, **kwargs)
    out.backward(np.random.default_rng(1).standard_normal(out.shape))
    return [out.data] + [t.grad for t in tensors]


def _assert_paths_agree(name, arrays, kwargs):
    fast = _run(name, arrays, kwargs)
    with tm.use_kernels("twins"):
        twins = _run(name, arrays, kwargs)
    for what, a, b in zip(("output", "dx", "dw", "db"), fast, twins):
        assert rel_error(a, b) < ROUNDING, f"{name} {kwargs}: {what} differs by {rel_error(a, b):.3g}"


@pytest.mark.parametrize("table,name", [(CONV2D, "conv2d"), (CONV_TRANSPOSE2D, "conv_transpose2d")])
def test_fast_equals_textbook_in_float64(rng, table, name):
    for _, shape_x, shape_w, kwargs in table:
        cout = shape_w[0] if name == "conv2d" else shape_w[1] * kwargs.get("groups", 1)
        _assert_paths_agree(name, [rng.standard_normal(shape_x), rng.standard_normal(shape_w),
                                   rng.standard_normal(cout)], kwargs)


def test_fast_winograd_equals_textbook_in_float64(rng, monkeypatch):
    """Winograd's algorithm for every 3x3 stride-1 conv (as conv2d, and as the conv_transpose2d
    that transposes one) against the textbook im2col product."""
    calls = []
    real = conv_schedule.winograd_input
    monkeypatch.setattr(conv_schedule, "winograd_input", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(conv_schedule, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv_schedule, "WINOGRAD_MIN_FLOPS", 0)
    for _, shape_x, shape_w, kwargs in WINOGRAD_CASES:
        arrays = [rng.standard_normal(shape_x), rng.standard_normal(shape_w), rng.standard_normal(shape_w[0])]
        _assert_paths_agree("conv2d", arrays, kwargs)
        shape_t = (shape_x[0], shape_w[0]) + shape_x[2:]  # conv_transpose2d's input has weight.shape[0] channels
        transposed = [rng.standard_normal(shape_t), rng.standard_normal(shape_w), rng.standard_normal(shape_w[1])]
        _assert_paths_agree("conv_transpose2d", transposed, kwargs)
    assert calls, "Winograd's algorithm was not used"

