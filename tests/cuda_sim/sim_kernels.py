"""Each CUDA kernel, run in the simulator on tiny inputs, equals its CPU kernel's NumPy twin.

Forwards to rounding (the device fuses multiply-adds; the simulator does not, so most are equal
to the last bit here), atomic backwards within a tolerance for the order of the adds. Each case
stays at a few thousand simulated threads' worth of work.
"""
import numpy as np
import pytest
from numba import config

from tinymaskrcnn.kernels import im2col as cpu_im2col, nms as cpu_nms, paste_masks as cpu_paste, pool as cpu_pool
from tinymaskrcnn.kernels import roi_align as cpu_roi
from tinymaskrcnn.kernels.cuda import im2col as gpu_im2col, nms as gpu_nms, paste_masks as gpu_paste
from tinymaskrcnn.kernels.cuda import pool as gpu_pool, roi_align as gpu_roi

DTYPES = [np.float64, np.float32]


def rtol(dtype):
    return 1e-12 if dtype == np.float64 else 1e-5


def test_runs_in_the_simulator():
    assert config.ENABLE_CUDASIM


GEOMETRIES = [  # kernel, stride, padding, dilation
    ((3, 3), (1, 1), (1, 1), (1, 1)),
    ((3, 3), (2, 2), (1, 1), (1, 1)),
    ((1, 1), (2, 2), (0, 0), (1, 1)),
    ((3, 2), (2, 1), (1, 0), (2, 1)),
]


def wide_columns(x, kernel, stride, padding, dilation):
    """The CPU twins' columns on the wide grid, per image: (N, C*kh*kw, Ho, Wq)."""
    out = []
    for image in x:
        q = cpu_im2col.phase_split_twin(image, *kernel, *stride, *padding, *dilation)
        ho, wo, hq, wq = cpu_im2col.phase_grid(*image.shape[1:], *kernel, *stride, *padding, *dilation)
        cols = cpu_im2col.im2col_twin(q, *kernel, *stride, *dilation, wq, 0, ho)
        out.append(cols.reshape(cols.shape[0], ho, wq))
    return np.stack(out), (ho, wo, hq, wq)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_im2col_equals_the_twin(rng, dtype, geometry):
    x = rng.standard_normal((2, 2, 5, 6)).astype(dtype)
    wide, (ho, wo, _, _) = wide_columns(x, *geometry)
    cols = gpu_im2col.im2col(x, *geometry)
    assert cols.dtype == dtype
    np.testing.assert_array_equal(cols.reshape(wide.shape[:2] + (ho, wo)), wide[..., :wo])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_col2im_gather_equals_the_twins_scatter(rng, dtype, geometry):
    kernel, stride, padding, dilation = geometry
    x_shape = (2, 2, 5, 6)
    ho, wo, hq, wq = cpu_im2col.phase_grid(*x_shape[2:], *kernel, *stride, *padding, *dilation)
    cols = rng.standard_normal((2, 2 * kernel[0] * kernel[1], ho, wo)).astype(dtype)
    expected = []
    for image_cols in cols:  # the twins on the wide grid, extra columns zero
        wide = np.zeros(image_cols.shape[:2] + (wq,), dtype)
        wide[..., :wo] = image_cols
        q = np.zeros((stride[0] * stride[1], 2, hq * wq), dtype)
        cpu_im2col.col2im_twin(wide.reshape(len(wide), -1), q, *kernel, *stride, *dilation, wq, 0, ho)
        expected.append(cpu_im2col.phase_merge_twin(q, *x_shape[2:], *kernel, *stride, *padding, *dilation))
    dx = gpu_im2col.col2im(cols.reshape(2, cols.shape[1], -1), x_shape, *geometry)
    np.testing.assert_allclose(dx, np.stack(expected), rtol=rtol(dtype), atol=rtol(dtype))


def random_rois(rng, n, h, w, batch, dtype):
    """RoIs of all kinds: inside, partly outside, tiny, and one inverted."""
    x1, y1 = rng.uniform(-3, w, n), rng.uniform(-3, h, n)
    rois = np.stack([rng.integers(0, batch, n), x1, y1, x1 + rng.uniform(0.2, w, n), y1 + rng.uniform(0.2, h, n)], 1)
    rois[0, 1:] = [w - 1, h - 1, 1.5, 2.0]  # inverted: aligned=True gets no samples
    return rois.astype(dtype)


ROI_CASES = [  # pooled, spatial_scale, sampling_ratio, aligned
    ((2, 3), 1.0, 2, False),
    ((3, 2), 0.5, -1, False),
    ((2, 2), 0.5, -1, True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ROI_CASES)
def test_roi_align_forward_and_backward_equal_the_twins(rng, dtype, case):
    (ph, pw), scale, ratio, aligned = case
    x = rng.standard_normal((2, 3, 7, 8)).astype(dtype)
    rois = random_rois(rng, 6, 14, 16, 2, dtype)
    args = (dtype(scale), ratio, aligned)
    out = gpu_roi.roi_align_forward(x, rois, ph, pw, *args)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, cpu_roi.roi_align_forward_twin(x, rois, ph, pw, *args),
                               rtol=rtol(dtype), atol=rtol(dtype))
    g = rng.standard_normal(out.shape).astype(dtype)
    dx = gpu_roi.roi_align_backward(g, rois, 2, 7, 8, *args)
    assert dx.dtype == dtype
    np.testing.assert_allclose(dx, cpu_roi.roi_align_backward_twin(g, rois, 2, 7, 8, *args),
                               rtol=rtol(dtype), atol=rtol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 70, 150])
def test_nms_equals_the_twin(rng, dtype, n):
    """150 boxes span three blocks of 64; ties in score and duplicated boxes included."""
    xy = rng.uniform(0, 40, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 15, (n, 2))], 1).astype(dtype)
    scores = rng.integers(0, 20, n).astype(dtype)  # many ties: the order among them matters
    if n > 2:
        boxes[1] = boxes[0]
        boxes[2] = [5, 5, 5, 5]  # empty: 0/0 with another empty box never suppresses
    for threshold in (0.3, 0.5):
        expected = cpu_nms.nms_twin(boxes, scores, threshold)
        np.testing.assert_array_equal(gpu_nms.nms(boxes, scores, threshold), expected)
        np.testing.assert_array_equal(cpu_nms.nms(boxes, scores, threshold), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nms_threshold_compared_as_the_cpu_kernel(dtype):
    """An IoU of exactly float32(0.3) is above the threshold 0.3 (float64 compare), as on the CPU."""
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 3]], dtype)  # IoU 30/100
    scores = np.array([1, 0.5], dtype)
    iou = dtype(30) / dtype(100)
    expected = [0] if np.float64(iou) > 0.3 else [0, 1]
    np.testing.assert_array_equal(gpu_nms.nms(boxes, scores, 0.3), expected)
    np.testing.assert_array_equal(cpu_nms.nms_twin(boxes, scores, 0.3), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_paste_masks_equals_the_twin(rng, dtype):
    masks = rng.uniform(0, 1, (3, 5, 5)).astype(dtype)
    boxes = np.array([[2.3, 1.7, 9.6, 8.2], [-3, 4, 6.5, 20], [10, 11, 10.5, 11.4]], dtype)
    scale = dtype(7 / 5)
    out = gpu_paste.paste_masks(masks, boxes, 13, 14, 1, scale)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, cpu_paste.paste_masks_twin(masks, boxes, 13, 14, 1, scale),
                               rtol=rtol(dtype), atol=rtol(dtype))


POOL_CASES = [  # kernel, stride, padding, dilation
    ((3, 3), (2, 2), (1, 1), (1, 1)),
    ((1, 1), (2, 2), (0, 0), (1, 1)),
    ((2, 3), (1, 2), (1, 1), (2, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool_forward_and_backward_equal_the_cpu_path(rng, dtype, case):
    from tinymaskrcnn.functional.pool import _first_inside, pool_output_size

    kernel, stride, padding, dilation = case
    x = rng.integers(-3, 4, (2, 2, 6, 7)).astype(dtype)  # ties: the first maximum must win
    x[0, 0, 1, 1] = np.nan
    oh, ow = (pool_output_size(*a, False) for a in zip(x.shape[2:], kernel, stride, padding, dilation))
    first = (_first_inside(np.arange(oh) * stride[0] - padding[0], kernel[0], dilation[0], 6)[:, None] * kernel[1]
             + _first_inside(np.arange(ow) * stride[1] - padding[1], kernel[1], dilation[1], 7)[None, :])
    args = (*kernel, *stride, *padding, *dilation)
    best, winner = gpu_pool.max_pool2d_forward(x, *args, oh, ow, first.astype(np.int32))
    ref_best, ref_winner = cpu_pool.max_pool2d_forward_twin(x, *args, oh, ow, first)
    np.testing.assert_array_equal(best, ref_best)
    np.testing.assert_array_equal(winner, ref_winner)
    # the backward: scatter dL/dy to each window's winner (the CPU path's bincount, written out)
    g = rng.standard_normal(best.shape).astype(dtype)
    expected = np.zeros(x.shape, np.float64)
    a, b = np.divmod(ref_winner, kernel[1])
    rows = (np.arange(oh) * stride[0] - padding[0])[:, None] + a * dilation[0]
    cols = (np.arange(ow) * stride[1] - padding[1])[None, :] + b * dilation[1]
    n, c = np.indices(best.shape)[:2]
    np.add.at(expected, (n, c, rows, cols), g)
    dx = gpu_pool.max_pool2d_backward(g, winner, x.shape, *args)
    np.testing.assert_allclose(dx, expected.astype(dtype), rtol=rtol(dtype), atol=rtol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_adamw_equals_the_twin(rng, dtype):
    from tinymaskrcnn.kernels import adamw as cpu_adamw
    from tinymaskrcnn.kernels.cuda import adamw as gpu_adamw

    p, g, m = (rng.standard_normal((5, 7)).astype(dtype) for _ in range(3))
    v = rng.uniform(0, 1, (5, 7)).astype(dtype)
    settings = (1e-3, 0.9, 0.999, 1e-8, 1e-2, 3.0)
    expected = [a.copy() for a in (p, g, m, v)]
    cpu_adamw.adamw_update_twin(*expected, *settings)
    gpu_adamw.adamw_update(p, g, m, v, *settings)
    for got, want in zip((p, m, v), (expected[0], expected[2], expected[3])):
        np.testing.assert_allclose(got, want, rtol=rtol(dtype), atol=rtol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_per_category_in_one_launch_equals_the_twin(rng, dtype):
    xy = rng.uniform(0, 30, (70, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 20, (70, 2))], 1).astype(dtype)
    scores = rng.integers(0, 20, 70).astype(dtype)  # ties among and across categories
    categories = rng.integers(0, 4, 70)
    kept = np.sort(np.concatenate([np.nonzero(categories == c)[0][cpu_nms.nms_twin(boxes[categories == c],
                                                                                   scores[categories == c], 0.5)]
                                   for c in range(4)]))
    expected = kept[np.argsort(-scores[kept], kind="stable")]  # by score, ties: lower index first
    np.testing.assert_array_equal(gpu_nms.nms(boxes, scores, 0.5, categories), expected)
