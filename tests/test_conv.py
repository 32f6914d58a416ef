"""conv2d and conv_transpose2d: forward and all three gradients against torch, finite differences,
the fast paths (1x1, row bands), and the argument checks. The tests taking ``conv_path`` run on
the fast path and on the textbook one (functional/conv_textbook.py), which are also held equal to
each other."""
import numpy as np
import pytest
from helpers import assert_matches_torch

import tinymaskrcnn as tm
import tinymaskrcnn.functional as F
from tinymaskrcnn.core.gradcheck import gradcheck
from tinymaskrcnn.core import threads as parallel
from tinymaskrcnn.functional import conv, conv_schedule

DTYPES = [np.float64, np.float32]

# (id, input shape, weight shape, keyword arguments); weight is (Cout, Cin/groups, kh, kw)
CONV2D = [
    ("3x3_odd_nonsquare_batch2", (2, 3, 7, 9), (4, 3, 3, 3), dict(padding=1)),
    ("3x3_stride2_pad1", (2, 4, 9, 8), (6, 4, 3, 3), dict(stride=2, padding=1)),
    ("3x3_dilation2", (1, 3, 10, 9), (5, 3, 3, 3), dict(padding=2, dilation=2)),
    ("per_axis_args", (2, 4, 11, 8), (6, 4, 3, 2), dict(stride=(2, 3), padding=(2, 0), dilation=(2, 1))),
    ("valid_no_padding", (1, 2, 6, 7), (3, 2, 4, 2), dict()),
    ("groups2", (2, 4, 9, 9), (6, 2, 3, 3), dict(stride=2, padding=1, groups=2)),
    ("depthwise", (1, 6, 5, 7), (6, 1, 3, 3), dict(padding=1, groups=6)),
    ("1x1", (2, 5, 6, 5), (7, 5, 1, 1), dict()),
    ("1x1_groups", (2, 4, 3, 5), (6, 2, 1, 1), dict(groups=2)),
    ("1x1_stride2", (1, 4, 8, 7), (6, 4, 1, 1), dict(stride=2)),
    ("1x1_padded", (1, 3, 4, 4), (2, 3, 1, 1), dict(padding=1)),
    ("7x7_stride2_stem", (1, 3, 17, 14), (5, 3, 7, 7), dict(stride=2, padding=3)),
]

# weight is (Cin, Cout/groups, kh, kw)
CONV_TRANSPOSE2D = [
    ("2x2_stride2_mask_head", (2, 4, 5, 6), (4, 3, 2, 2), dict(stride=2)),
    ("3x3_stride2_output_padding", (1, 3, 4, 5), (3, 4, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ("4x4_stride2_pad1", (2, 2, 3, 4), (2, 3, 4, 4), dict(stride=2, padding=1)),
    ("per_axis_groups_dilation", (2, 4, 5, 5), (4, 3, 3, 2),
     dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0), groups=2, dilation=(1, 2))),
    ("output_padding_above_stride", (1, 2, 4, 4), (2, 3, 3, 3), dict(dilation=3, output_padding=2)),
    ("1x1", (2, 4, 5, 5), (4, 2, 1, 1), dict()),
    ("3x3_stride1_pad1", (1, 3, 6, 5), (3, 2, 3, 3), dict(padding=1)),
]


def _params(table):
    return pytest.mark.parametrize("shape_x,shape_w,kwargs", [c[1:] for c in table], ids=[c[0] for c in table])


def _torch_conv2d(torch, kwargs, bias=True):
    if bias:
        return lambda x, w, b: torch.nn.functional.conv2d(x, w, b, **kwargs)
    return lambda x, w: torch.nn.functional.conv2d(x, w, None, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@_params(CONV2D)
def test_conv2d_matches_torch(conv_path, torch, rng, dtype, shape_x, shape_w, kwargs):
    arrays = [rng.standard_normal(shape_x), rng.standard_normal(shape_w), rng.standard_normal(shape_w[0])]
    assert_matches_torch(lambda x, w, b: F.conv2d(x, w, b, **kwargs), _torch_conv2d(torch, kwargs), arrays, dtype)


@_params([case for case in CONV2D if case[3].get("groups", 1) == 1])
def test_conv2d_equals_scipy_correlation_summed_over_channels(conv_path, rng, shape_x, shape_w, kwargs):
    """A referee written by others, and no torch needed: y[n, co] = b[co] + the sum over c of
    SciPy's 2-D cross-correlation of x[n, c] (padded by np.pad) with w[co, c] (dilated by
    zeros between its taps), kept at every stride-th position (float64)."""
    from scipy.signal import correlate2d

    x, w, b = rng.standard_normal(shape_x), rng.standard_normal(shape_w), rng.standard_normal(shape_w[0])
    (sh, sw), (ph, pw), (dh, dw) = (np.broadcast_to(kwargs.get(name, default), 2)
                                    for name, default in (("stride", 1), ("padding", 0), ("dilation", 1)))
    x_padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    w_dilated = np.zeros(shape_w[:2] + ((shape_w[2] - 1) * dh + 1, (shape_w[3] - 1) * dw + 1))
    w_dilated[:, :, ::dh, ::dw] = w
    expected = np.array([[b[co] + sum(correlate2d(x_padded[n, c], w_dilated[co, c], mode="valid")
                                      for c in range(shape_x[1]))
                          for co in range(shape_w[0])] for n in range(shape_x[0])])[:, :, ::sh, ::sw]
    y = F.conv2d(tm.Tensor(x), tm.Tensor(w), tm.Tensor(b), **kwargs).data
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@_params(CONV_TRANSPOSE2D)
def test_conv_transpose2d_matches_torch(conv_path, torch, rng, dtype, shape_x, shape_w, kwargs):
    cout = shape_w[1] * kwargs.get("groups", 1)
    arrays = [rng.standard_normal(shape_x), rng.standard_normal(shape_w), rng.standard_normal(cout)]
    assert_matches_torch(lambda x, w, b: F.conv_transpose2d(x, w, b, **kwargs),
                         lambda x, w, b: torch.nn.functional.conv_transpose2d(x, w, b, **kwargs), arrays, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_without_bias_and_without_input_gradient(conv_path, torch, rng, dtype):
    """The first conv of a network: no bias, and its input (the image) needs no gradient."""
    kwargs = dict(stride=2, padding=3)
    arrays = [rng.standard_normal((2, 3, 13, 12)), rng.standard_normal((4, 3, 7, 7))]
    assert_matches_torch(lambda x, w: F.conv2d(x, w, **kwargs), _torch_conv2d(torch, kwargs, bias=False),
                         arrays, dtype, requires_grad=[False, True])
    assert_matches_torch(lambda x, w: F.conv_transpose2d(x, w, stride=2),
                         lambda x, w: torch.nn.functional.conv_transpose2d(x, w, stride=2),
                         [rng.standard_normal((1, 3, 4, 4)), rng.standard_normal((3, 2, 2, 2))],
                         dtype, requires_grad=[False, True])


def test_frozen_weight_gives_only_the_input_gradient(conv_path, rng):
    x = tm.Tensor(rng.standard_normal((1, 2, 5, 5)), requires_grad=True)
    w, b = tm.Tensor(rng.standard_normal((3, 2, 3, 3))), tm.Tensor(rng.standard_normal(3))
    F.conv2d(x, w, b, padding=1).sum().backward()
    assert x.grad is not None and w.grad is None and b.grad is None


def _out_channels(name, shape_w, kwargs):
    """The output channels (the bias's length): conv2d's weight is (Cout, ...), conv_transpose2d's (Cin, Cout/G, ...)."""
    return shape_w[0] if name == "conv2d" else shape_w[1] * kwargs.get("groups", 1)


def _random_case(rng, name, shape_x, shape_w, kwargs):
    """Input, weight and bias of a table row, drawn from ``rng``."""
    return [rng.standard_normal(shape_x), rng.standard_normal(shape_w),
            rng.standard_normal(_out_channels(name, shape_w, kwargs))]


def _case_matches_torch(torch, name, arrays, kwargs):
    """conv2d or conv_transpose2d (``name``) on ``arrays`` gives torch's outputs and gradients in float64."""
    ours, theirs = getattr(F, name), getattr(torch.nn.functional, name)
    assert_matches_torch(lambda x, w, b: ours(x, w, b, **kwargs), lambda x, w, b: theirs(x, w, b, **kwargs),
                         arrays, np.float64)


@pytest.mark.parametrize("table,name", [(CONV2D, "conv2d"), (CONV_TRANSPOSE2D, "conv_transpose2d")])
def test_empty_batch_matches_torch(conv_path, torch, rng, table, name):
    """No images (the mask head when nothing was detected): empty outputs and input gradients,
    zero weight and bias gradients, as torch."""
    for _, shape_x, shape_w, kwargs in table:
        _case_matches_torch(torch, name, _random_case(rng, name, (0,) + shape_x[1:], shape_w, kwargs), kwargs)


@pytest.mark.parametrize("tiling", ["row_bands", "image_groups"])
@pytest.mark.parametrize("table,name", [(CONV2D, "conv2d"), (CONV_TRANSPOSE2D, "conv_transpose2d")])
def test_tilings_and_threads_match_torch(torch, rng, monkeypatch, table, name, tiling):
    """However the work is cut into tiles and shared among threads, the results are torch's:
    tiles of the fewest output rows allowed, or of several whole images (a batch of 5, so that
    some tiles hold fewer), shared among 3 worker threads."""
    monkeypatch.setattr(conv_schedule, "TILE_BYTES", 1)
    monkeypatch.setattr(conv_schedule, "MIN_TILE_POSITIONS", 1 if tiling == "row_bands" else 100)
    monkeypatch.setattr(conv_schedule, "PARALLEL_MIN_FLOPS", 0)  # share out even these tiny convs
    monkeypatch.setattr(parallel, "num_workers", lambda: 3)
    monkeypatch.setattr(conv_schedule, "num_workers", lambda: 3)
    for _, shape_x, shape_w, kwargs in table:
        if tiling == "image_groups":
            shape_x = (5,) + shape_x[1:]
        _case_matches_torch(torch, name, _random_case(rng, name, shape_x, shape_w, kwargs), kwargs)


@pytest.mark.parametrize("table,name", [(CONV2D, "conv2d"), (CONV_TRANSPOSE2D, "conv_transpose2d")])
def test_one_worker_cuts_the_forward_into_cache_sized_tiles(torch, rng, monkeypatch, table, name):
    """With one worker (a data-parallel rank) a conv too small to share out still runs its
    forward product tile by tile, each tile's im2col matrix at most TILE_BYTES: torch's results."""
    monkeypatch.setattr(conv_schedule, "TILE_BYTES", 1)
    monkeypatch.setattr(conv_schedule, "MIN_TILE_POSITIONS", 1)
    monkeypatch.setattr(conv_schedule, "num_workers", lambda: 1)
    products = []
    im2col = conv_schedule._Tiles.im2col
    monkeypatch.setattr(conv_schedule._Tiles, "im2col", lambda self, q, tile: products.append(tile) or im2col(self, q, tile))
    banded = 0
    for _, shape_x, shape_w, kwargs in table:
        arrays = _random_case(rng, name, shape_x, shape_w, kwargs)
        products.clear()
        y = getattr(F, name)(*arrays, **kwargs)
        banded += any(stop - start < y.shape[2] for _, _, start, stop in products)  # not whole images
        _case_matches_torch(torch, name, arrays, kwargs)
    assert banded >= len(table) // 2 if name == "conv2d" else banded == 0  # conv_transpose2d's forward: col2im


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("table,name", [(CONV2D, "conv2d"), (CONV_TRANSPOSE2D, "conv_transpose2d")])
def test_both_weight_gradient_products_match_torch(torch, rng, monkeypatch, table, name, transposed):
    """dW as dY X^T, or as (X^ dY^T)^T (conv_schedule._transposed_weight_grad), in row bands
    shared among 3 threads: torch's gradients either way."""
    monkeypatch.setattr(conv_schedule, "TRANSPOSED_WEIGHT_GRAD_MIN_POSITIONS", 0 if transposed else 1 << 62)
    monkeypatch.setattr(conv_schedule, "TILE_BYTES", 1)
    monkeypatch.setattr(conv_schedule, "MIN_WEIGHT_GRAD_POSITIONS", 1)
    monkeypatch.setattr(conv_schedule, "PARALLEL_MIN_FLOPS", 0)
    monkeypatch.setattr(parallel, "num_workers", lambda: 3)
    monkeypatch.setattr(conv_schedule, "num_workers", lambda: 3)
    calls = []
    spy = conv_schedule._transposed_weight_grad
    monkeypatch.setattr(conv_schedule, "_transposed_weight_grad", lambda *a: calls.append(spy(*a)) or calls[-1])
    for _, shape_x, shape_w, kwargs in table:
        _case_matches_torch(torch, name, _random_case(rng, name, shape_x, shape_w, kwargs), kwargs)
    assert calls and set(calls) == {transposed}


# 3x3 stride-1 convs that go through Winograd's algorithm (once its channel minimum is lifted):
# odd and even outputs, paddings 0, 1, 2 and per axis, a single output pixel, no bias
WINOGRAD_CASES = [
    ("pad1_odd", (2, 3, 7, 9), (4, 3, 3, 3), dict(padding=1)),
    ("pad0_even", (1, 2, 8, 6), (3, 2, 3, 3), dict()),
    ("pad2_per_axis", (2, 3, 5, 4), (2, 3, 3, 3), dict(padding=(2, 1))),
    ("one_pixel", (3, 4, 3, 3), (5, 4, 3, 3), dict()),
]


@pytest.fixture
def winograd_spy(monkeypatch):
    """Winograd's algorithm for any channel count and size; returns the list of pieces it
    transformed."""
    monkeypatch.setattr(conv_schedule, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv_schedule, "WINOGRAD_MIN_FLOPS", 0)
    calls = []
    real = conv_schedule.winograd_input

    def spy(*args, **kwargs):
        calls.append(args[3:7])
        return real(*args, **kwargs)

    monkeypatch.setattr(conv_schedule, "winograd_input", spy)
    return calls


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@_params(WINOGRAD_CASES)
def test_winograd_matches_torch(torch, rng, winograd_spy, dtype, bias, shape_x, shape_w, kwargs):
    arrays = [rng.standard_normal(shape_x), rng.standard_normal(shape_w)] + [rng.standard_normal(shape_w[0])] * bias
    assert_matches_torch(lambda x, w, *b: F.conv2d(x, w, *b, **kwargs), _torch_conv2d(torch, kwargs, bias),
                         arrays, dtype)
    assert winograd_spy, "the conv did not go through Winograd's algorithm"


@pytest.mark.parametrize("tiling", ["row_bands", "image_groups"])
def test_winograd_tilings_and_threads_match_torch(torch, rng, monkeypatch, winograd_spy, tiling):
    """Pieces of one tile row each, or of several whole images of a batch of 5 (so that some
    pieces hold fewer), shared among 3 worker threads: still torch's results."""
    monkeypatch.setattr(conv_schedule, "WINOGRAD_PIECE_BYTES", 1)
    monkeypatch.setattr(conv_schedule, "WINOGRAD_MIN_COLUMNS", 1 if tiling == "row_bands" else 2 * 20)
    monkeypatch.setattr(conv_schedule, "WINOGRAD_WEIGHT_GRAD_COLUMNS", 1 if tiling == "row_bands" else 2 * 20)
    monkeypatch.setattr(conv_schedule, "PARALLEL_MIN_FLOPS", 0)
    monkeypatch.setattr(parallel, "num_workers", lambda: 3)
    monkeypatch.setattr(conv_schedule, "num_workers", lambda: 3)
    for _, shape_x, shape_w, kwargs in WINOGRAD_CASES:
        if tiling == "image_groups":
            shape_x = (5,) + shape_x[1:]
        arrays = [rng.standard_normal(shape_x), rng.standard_normal(shape_w), rng.standard_normal(shape_w[0])]
        winograd_spy.clear()
        assert_matches_torch(lambda x, w, b: F.conv2d(x, w, b, **kwargs), _torch_conv2d(torch, kwargs),
                             arrays, np.float64)
        images = {n1 - n0 for n0, n1, r0, r1 in winograd_spy}
        rows = {r1 - r0 for n0, n1, r0, r1 in winograd_spy}
        if tiling == "row_bands":
            assert images == rows == {1}
        else:
            assert max(images) > 1


def test_winograd_is_used_where_it_applies(rng, monkeypatch):
    """With the default settings a large 3x3 stride-1 conv goes through Winograd's algorithm, a
    small one does not; nor do strided, dilated, grouped, 1x1, too-thin or switched-off convs."""
    calls = []
    real = conv_schedule.winograd_input
    monkeypatch.setattr(conv_schedule, "winograd_input", lambda *a, **k: calls.append(1) or real(*a, **k))

    def used(shape_x, shape_w, **kwargs):
        calls.clear()
        F.conv2d(rng.standard_normal(shape_x).astype(np.float32), rng.standard_normal(shape_w).astype(np.float32),
                 **kwargs)
        return bool(calls)

    assert used((1, 128, 100, 136), (128, 128, 3, 3), padding=1)
    assert not used((1, 16, 8, 8), (32, 16, 3, 3), padding=1)
    monkeypatch.setattr(conv_schedule, "WINOGRAD_MIN_FLOPS", 0)
    assert used((1, 16, 8, 8), (32, 16, 3, 3), padding=1)
    assert not used((1, 16, 8, 8), (32, 16, 3, 3), padding=1, stride=2)
    assert not used((1, 16, 8, 8), (32, 16, 3, 3), padding=2, dilation=2)
    assert not used((1, 16, 8, 8), (32, 8, 3, 3), padding=1, groups=2)
    assert not used((1, 16, 8, 8), (32, 16, 1, 1))
    assert not used((1, 3, 8, 8), (32, 3, 3, 3), padding=1)
    assert not used((1, 16, 8, 8), (32, 16, 3, 3), padding=3)
    monkeypatch.setattr(conv_schedule, "WINOGRAD", False)
    assert not used((1, 16, 8, 8), (32, 16, 3, 3), padding=1)


GRADCHECK = [
    ("conv2d", (1, 2, 5, 4), (3, 2, 3, 2), dict(stride=(2, 1), padding=1, dilation=(1, 2))),
    ("conv2d", (2, 4, 4, 4), (2, 2, 3, 3), dict(padding=1, groups=2)),
    ("conv2d", (1, 3, 3, 3), (2, 3, 1, 1), dict()),
    ("conv_transpose2d", (1, 2, 3, 3), (2, 2, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ("conv_transpose2d", (2, 2, 2, 3), (2, 1, 2, 2), dict(stride=(2, 1), groups=2, dilation=(1, 2))),
]


@pytest.mark.parametrize("name,shape_x,shape_w,kwargs", GRADCHECK,
                         ids=[f"{g[0]}-{i}" for i, g in enumerate(GRADCHECK)])
def test_gradcheck(conv_path, rng, name, shape_x, shape_w, kwargs):
    inputs = [tm.Tensor(a, requires_grad=True) for a in _random_case(rng, name, shape_x, shape_w, kwargs)]
    op = getattr(F, name)
    for err in gradcheck(lambda x, w, b: op(x, w, b, **kwargs), inputs):
        assert err < 1e-8


def test_winograd_gradcheck(rng, winograd_spy):
    inputs = [tm.Tensor(rng.standard_normal(s), requires_grad=True) for s in ((2, 2, 5, 4), (3, 2, 3, 3), (3,))]
    for err in gradcheck(lambda x, w, b: F.conv2d(x, w, b, padding=(1, 2)), inputs):
        assert err < 1e-8
    assert winograd_spy


def test_non_contiguous_inputs(conv_path, torch, rng):
    """Strided views (a transposed input, a flipped weight) give the same results as copies."""
    x = rng.standard_normal((2, 9, 7, 3)).transpose(0, 3, 1, 2)  # (2, 3, 9, 7), channels last in memory
    w = rng.standard_normal((4, 3, 3, 3))[:, :, ::-1, :]
    cot = rng.standard_normal((2, 4, 5, 4))
    ours_x, ours_w = tm.Tensor(x, requires_grad=True), tm.Tensor(w, requires_grad=True)
    F.conv2d(ours_x, ours_w, stride=2, padding=1).backward(cot)
    ref_x, ref_w = (torch.tensor(a.copy(), requires_grad=True) for a in (x, w))
    out = torch.nn.functional.conv2d(ref_x, ref_w, stride=2, padding=1)
    out.backward(torch.tensor(cot))
    np.testing.assert_allclose(ours_x.grad, ref_x.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours_w.grad, ref_w.grad.numpy(), rtol=1e-12, atol=1e-12)


# ----- bad input --------------------------------------------------------------------------


def _arrays(shape_x=(1, 3, 8, 8), shape_w=(4, 3, 3, 3), dtype=np.float32):
    return np.zeros(shape_x, dtype), np.zeros(shape_w, dtype)


@pytest.mark.parametrize("op", [F.conv2d, F.conv_transpose2d])
def test_rank_errors_name_the_shapes(op):
    x, w = _arrays()
    with pytest.raises(ValueError, match=r"input must be 4-D .*\(3, 8, 8\).*x\[None\]"):
        op(x[0], w)
    with pytest.raises(ValueError, match=r"weight must be 4-D.*\(4, 3, 9\)"):
        op(x, w.reshape(4, 3, 9))


def test_channel_mismatch_names_the_shapes():
    x, w = _arrays((1, 5, 8, 8), (4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"5 channels \(shape \(1, 5, 8, 8\)\).*\(4, 3, 3, 3\).*groups=1 expects 3"):
        F.conv2d(x, w)
    with pytest.raises(ValueError, match=r"5 channels \(shape \(1, 5, 8, 8\)\).*\(4, 3, 3, 3\) expects 4"):
        F.conv_transpose2d(x, w)


def test_groups_errors():
    x, w = _arrays((1, 4, 8, 8), (3, 2, 3, 3))
    with pytest.raises(ValueError, match="groups=2 must divide the 3 output channels"):
        F.conv2d(x, w, groups=2)
    x, w = _arrays((1, 3, 8, 8), (3, 2, 3, 3))
    with pytest.raises(ValueError, match="groups=2 must divide the 3 input channels"):
        F.conv_transpose2d(x, w, groups=2)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="groups must be a positive int"):
            F.conv2d(*_arrays(), groups=bad)


@pytest.mark.parametrize("name,value,error", [
    ("stride", 0, ValueError), ("stride", (1, 0), ValueError), ("stride", 1.5, TypeError),
    ("stride", (1, 2, 3), TypeError), ("padding", -1, ValueError), ("padding", "same", TypeError),
    ("dilation", 0, ValueError),
])
def test_bad_stride_padding_dilation(name, value, error):
    with pytest.raises(error, match=f"conv2d: {name} must"):
        F.conv2d(*_arrays(), **{name: value})


def test_other_argument_errors():
    x, w = _arrays()
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\).*got \(3,\)"):
        F.conv2d(x, w, np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="share one floating dtype.*float32, float64"):
        F.conv2d(x, w.astype(np.float64))
    with pytest.raises(TypeError, match="share one floating dtype"):
        F.conv2d(x.astype(np.int64), w.astype(np.int64))
    with pytest.raises(TypeError, match="input must be a Tensor or an array, got list"):
        F.conv2d(x.tolist(), w)
    with pytest.raises(ValueError, match=r"smaller than the dilated kernel"):
        F.conv2d(np.zeros((1, 3, 2, 8), np.float32), w)
    with pytest.raises(ValueError, match="output_padding .* must be smaller than the stride"):
        F.conv_transpose2d(np.zeros((1, 4, 3, 3), np.float32), w, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="padding .* is too large"):
        F.conv_transpose2d(np.zeros((1, 4, 1, 1), np.float32), w, padding=2)


def test_arrays_on_two_devices_are_refused(monkeypatch):
    """A CuPy weight with a NumPy input (say) gets a TypeError saying how to move them."""
    for op, arrays in ((F.conv2d, _arrays()), (F.conv_transpose2d, _arrays((1, 4, 8, 8)))):
        weight = arrays[1]
        monkeypatch.setattr(conv, "get_array_module", lambda a, w=weight: "cupy" if a is w else np)
        with pytest.raises(TypeError, match="must be on one device"):
            op(*arrays)
