"""roi_align forward and backward against torchvision.ops.roi_align, finite differences, and the
Numba kernels against their NumPy twins."""
import numpy as np
import pytest

import tinymaskrcnn as tm
from tinymaskrcnn.core.gradcheck import gradcheck, rel_error
from tinymaskrcnn.kernels.roi_align import roi_align_backward, roi_align_backward_twin, roi_align_forward, roi_align_forward_twin
from tinymaskrcnn.ops.roi_align import roi_align

from helpers import assert_matches_torch

DTYPES = [np.float32, np.float64]
# the kernels and their twins sum the same products in a different order: rounding only
TWIN_TOL = {np.float32: 1e-6, np.float64: 1e-13}
N, C, H, W = 3, 2, 9, 11
OUT = (3, 4)  # not square, so a swapped height and width cannot pass


def _rois(rng, scale, k=12):
    """(K, 5) RoIs on an N-image batch whose H × W map covers (W / scale) × (H / scale) pixels:
    random boxes plus every awkward case."""
    sx, sy = W / scale, H / scale
    x1, y1 = rng.uniform(-0.3 * sx, sx, k), rng.uniform(-0.3 * sy, sy, k)
    w, h = rng.uniform(0.2, 0.7 * sx, k), rng.uniform(0.2, 0.7 * sy, k)
    boxes = np.stack([x1, y1, x1 + w, y1 + h], axis=1)
    special = np.array([
        [-0.8 * sx, -0.8 * sy, -0.5 * sx, -0.3 * sy],         # wholly outside, above left
        [1.2 * sx, 1.1 * sy, 1.6 * sx, 1.5 * sy],             # wholly outside, below right
        [-0.25 * sx, 0.4 * sy, 0.3 * sx, 1.3 * sy],           # partly outside
        [0.3 * sx, 0.3 * sy, 0.3 * sx + 0.2, 0.3 * sy + 0.1],  # tiny
        [0.5 * sx, 0.5 * sy, 0.5 * sx, 0.5 * sy],             # a point
        [0.0, 0.0, sx, sy],                                   # the whole map
        [0.6 * sx, 0.5 * sy, 0.2 * sx, 0.1 * sy],             # inverted (x2 < x1, y2 < y1)
    ])
    # boxes whose outermost samples fall exactly on the limits -1 and W (H) of the valid range,
    # one map pixel per bin (4 × 3 pixels): the first sample sits 0.5 / grid into its bin and
    # aligned boxes move by -0.5; for grids of 1 and 2 (sampling_ratio -1, 0 and 2), both modes
    inset, offset = np.array([0.5, 0.25, 0.5, 0.25]), np.array([0.0, 0.0, 0.5, 0.5])
    lo = -1 - inset + offset  # the first sample at -1
    x_hi, y_hi = W - 4 + inset + offset, H - 3 + inset + offset  # the last sample at W (H)
    edges = np.concatenate([np.stack([x_hi, lo, x_hi + 4, lo + 3], axis=1),
                            np.stack([lo, y_hi, lo + 4, y_hi + 3], axis=1)]) / scale
    boxes = np.concatenate([boxes, special, edges])
    batch = rng.integers(0, N, (len(boxes), 1))
    return np.concatenate([batch, boxes], axis=1)


def _torch_roi_align(**kw):
    import torchvision

    return lambda x, rois: torchvision.ops.roi_align(x, rois, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
@pytest.mark.parametrize("spatial_scale", [1.0, 0.25])
def test_matches_torchvision(torch, rng, dtype, aligned, sampling_ratio, spatial_scale):
    """Forward and the input's gradient under a random cotangent."""
    x, rois = rng.standard_normal((N, C, H, W)), _rois(rng, spatial_scale)
    kw = dict(output_size=OUT, spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, aligned=aligned)
    assert_matches_torch(lambda x, r: roi_align(x, r, **kw), _torch_roi_align(**kw), [x, rois], dtype,
                         requires_grad=[True, False])


def test_list_of_boxes_and_int_output_size(torch, rng):
    """Per-image (Ki, 4) boxes (one image without any) give image i's boxes batch index i."""
    x = rng.standard_normal((N, C, H, W))
    boxes = [_rois(rng, 1.0)[:5, 1:], np.zeros((0, 4)), _rois(rng, 1.0)[:3, 1:]]
    ours = roi_align(tm.Tensor(x), [tm.Tensor(b) for b in boxes], 5, 0.5, 2)
    ref = _torch_roi_align(output_size=5, spatial_scale=0.5, sampling_ratio=2)(
        torch.tensor(x), [torch.tensor(b) for b in boxes])
    assert ours.shape == (8, C, 5, 5)
    assert rel_error(ours.data, ref.numpy()) <= 1e-10


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_gradcheck(rng, aligned, sampling_ratio):
    x = tm.Tensor(rng.standard_normal((2, 2, 5, 6)), requires_grad=True)
    rois = np.array([[0, 0.3, 0.6, 9.1, 7.7], [1, -2.0, 1.0, 3.5, 12.0], [1, 4.2, 2.2, 5.0, 2.5], [0, 1, 1, 7, 7]])
    (err,) = gradcheck(lambda x: roi_align(x, rois, (2, 3), 0.5, sampling_ratio, aligned), [x])
    assert err < 1e-8


def test_empty_rois(rng):
    x = tm.Tensor(rng.standard_normal((N, C, H, W)), requires_grad=True)
    for boxes in (np.zeros((0, 5)), [np.zeros((0, 4))] * N):
        out = roi_align(x, boxes, OUT)
        assert out.shape == (0, C) + OUT
        x.grad = None
        out.backward(np.zeros(out.shape))
        assert x.grad.shape == x.shape and not x.grad.any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_keeps_dtype(rng, dtype):
    x = tm.Tensor(rng.standard_normal((N, C, H, W)).astype(dtype), requires_grad=True)
    out = roi_align(x, _rois(rng, 1.0).astype(np.float64 if dtype == np.float32 else np.float32), OUT)
    out.backward(np.ones(out.shape))
    assert out.dtype == dtype and x.grad.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
def test_kernels_match_numpy_twins(rng, dtype, aligned, sampling_ratio):
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    rois = _rois(rng, 0.5).astype(dtype)
    args = (dtype(0.5), sampling_ratio, aligned)
    out = roi_align_forward(x, rois, *OUT, *args)
    assert out.dtype == dtype
    assert rel_error(out, roi_align_forward_twin(x, rois, *OUT, *args)) <= TWIN_TOL[dtype]
    g = rng.standard_normal(out.shape).astype(dtype)
    grad = roi_align_backward(g, rois, N, H, W, *args)
    assert grad.dtype == dtype
    assert rel_error(grad, roi_align_backward_twin(g, rois, N, H, W, *args)) <= TWIN_TOL[dtype]


@pytest.mark.parametrize("call, error, words", [
    (lambda x, r: roi_align(x[0], r, 2), ValueError, "(N, C, H, W)"),
    (lambda x, r: roi_align(x.astype(np.int64), r, 2), TypeError, "float32 or float64"),
    (lambda x, r: roi_align(x[:, :, :0], r, 2), ValueError, "empty feature map"),
    (lambda x, r: roi_align(x, r[:, 1:], 2), ValueError, "(K, 5)"),
    (lambda x, r: roi_align(x, [r], 2), ValueError, "(Ki, 4)"),
    (lambda x, r: roi_align(x, r + [[N, 0, 0, 0, 0]], 2), ValueError, "batch indices"),
    (lambda x, r: roi_align(x, r * np.nan, 2), ValueError, "NaN"),
    (lambda x, r: roi_align(x, r, (2, 0)), ValueError, "output_size"),
    (lambda x, r: roi_align(x, r, 2.0), TypeError, "output_size"),
    (lambda x, r: roi_align(x, r, 2, sampling_ratio=1.5), TypeError, "sampling_ratio"),
])
def test_bad_input(rng, call, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        call(rng.standard_normal((N, C, H, W)), _rois(rng, 1.0))
