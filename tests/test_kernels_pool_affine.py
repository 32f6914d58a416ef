"""kernels/pool.py and kernels/affine.py: each Numba kernel against its NumPy twin."""
import numpy as np
import pytest

from tinymaskrcnn.kernels.affine import channel_affine, channel_affine_twin
from tinymaskrcnn.kernels.pool import max_pool2d_backward, max_pool2d_backward_twin, max_pool2d_forward, max_pool2d_forward_twin
from tinymaskrcnn.functional.pool import _first_inside, pool_output_size

# (H, W, kernel, stride, padding, dilation, ceil_mode)
POOLS = [
    (9, 11, (3, 3), (2, 2), (1, 1), (1, 1), False),   # ResNet's stem pool
    (8, 8, (1, 1), (2, 2), (0, 0), (1, 1), False),    # the FPN's extra level
    (10, 7, (3, 2), (2, 1), (1, 0), (2, 1), True),    # per-axis, dilated, ceil mode
    (5, 5, (2, 2), (2, 2), (0, 0), (1, 1), True),     # ceil mode: a last window past the edge
]


def _plan(h, w, kernel, stride, padding, dilation, ceil_mode):
    out = tuple(pool_output_size(*a, ceil_mode) for a in zip((h, w), kernel, stride, padding, dilation))
    top = np.arange(out[0]) * stride[0] - padding[0]
    left = np.arange(out[1]) * stride[1] - padding[1]
    first = (_first_inside(top, kernel[0], dilation[0], h)[:, None] * kernel[1]
             + _first_inside(left, kernel[1], dilation[1], w)[None, :]).astype(np.int32)
    return (*kernel, *stride, *padding, *dilation, *out), first


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", POOLS)
def test_max_pool_kernel_equals_twin(cfg, dtype, rng):
    """Same maxima and the same winning taps, with ties, NaNs and -inf in the input."""
    h, w = cfg[:2]
    x = rng.integers(-3, 3, (2, 3, h, w)).astype(dtype)  # small integers: many ties
    x[0, 0, 1, 1] = np.nan
    x[0, 1] = -np.inf
    x[1, 2, 0, :3] = np.nan
    args, first = _plan(*cfg)
    best, winner = max_pool2d_forward(x, *args, first)
    best_ref, winner_ref = max_pool2d_forward_twin(x, *args, first)
    assert best.dtype == dtype and winner.dtype == np.int32
    np.testing.assert_array_equal(best, best_ref)  # NaN where the twin has NaN
    np.testing.assert_array_equal(winner, winner_ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", POOLS)
def test_max_pool_backward_kernel_equals_twin_and_the_definition(cfg, dtype, rng):
    """dL/dx: each output's gradient added onto its window's winner; overlapping windows (stride
    below the kernel) that share a winner sum, bit for bit alike in the kernel and the twin."""
    h, w = cfg[:2]
    x = rng.integers(-3, 3, (2, 3, h, w)).astype(dtype)  # ties: one pixel wins several windows
    args, first = _plan(*cfg)
    _, winner = max_pool2d_forward(x, *args, first)
    g = rng.standard_normal(winner.shape).astype(dtype)
    geometry = args[:8]
    dx = max_pool2d_backward(g, winner, x.shape, *geometry)
    assert dx.dtype == dtype and dx.shape == x.shape
    np.testing.assert_array_equal(dx, max_pool2d_backward_twin(g, winner, x.shape, *geometry))
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    expected = np.zeros(x.shape)
    for (n, c, i, j), won in np.ndenumerate(winner):
        expected[n, c, i * sh - ph + won // kw * dh, j * sw - pw + won % kw * dw] += g[n, c, i, j]
    np.testing.assert_array_equal(dx, expected.astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (4, 6), (1, 2, 3, 4, 5)])
def test_channel_affine_kernel_equals_twin(shape, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype)
    scale, shift = rng.standard_normal(shape[1]).astype(dtype), rng.standard_normal(shape[1]).astype(dtype)
    y = channel_affine(x, scale, shift)
    assert y.dtype == dtype and y.shape == shape
    np.testing.assert_array_equal(y, channel_affine_twin(x, scale, shift))  # the same two roundings
