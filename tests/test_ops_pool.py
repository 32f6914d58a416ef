"""max_pool2d against torch: output sizes, padding, dilation, ceil_mode, ties, NaN, -inf, errors."""
import itertools

import numpy as np
import pytest
from helpers import TOL, assert_matches_torch

import tinymaskrcnn as tm
import tinymaskrcnn.functional as F
from tinymaskrcnn.core.gradcheck import gradcheck, rel_error
from tinymaskrcnn.functional.pool import pool_output_size

DTYPES = [np.float64, np.float32]
# (kernel_size, stride, padding, dilation, ceil_mode)
CONFIGS = [
    (2, 2, 0, 1, False),
    (3, 2, 1, 1, False),  # ResNet's stem
    (3, 2, 1, 1, True),
    (3, 1, 1, 2, False),
    (2, 3, 1, 1, True),  # stride > kernel: gaps between windows
    (1, 2, 0, 1, False),  # FPN's LastLevelMaxPool
    ((3, 2), (2, 1), (1, 0), (1, 2), True),
    (4, 3, 2, 1, True),
]
SHAPES = [(2, 3, 7, 9), (1, 2, 8, 5)]


def _pool(config, torch=None):
    """Our max_pool2d with ``config`` and, given torch, torch's."""
    ours = lambda x: F.max_pool2d(x, *config)  # noqa: E731
    return ours if torch is None else (ours, lambda x: torch.nn.functional.max_pool2d(x, *config))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_matches_torch(torch, rng, dtype, shape, config):
    assert_matches_torch(*_pool(config, torch), [rng.standard_normal(shape)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_ties_route_the_gradient_where_torch_does(torch, rng, dtype, config):
    # few distinct values: most windows hold several equal maxima, and overlapping windows
    # send gradient to the same input
    assert_matches_torch(*_pool(config, torch), [rng.integers(0, 3, (2, 2, 7, 8)).astype(float)], dtype)
    assert_matches_torch(*_pool(config, torch), [np.ones((1, 1, 6, 7))], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_minus_inf_windows_follow_torch(torch, rng, dtype):
    x = rng.standard_normal((1, 2, 6, 7))
    x[0, 0, 1, 1] = x[0, 0, 1, 3] = x[0, 0, 4, 2] = np.nan  # the last NaN in a window wins
    x[0, 1, :3, :3] = -np.inf  # a window of -inf: its first in-image position gets the gradient
    x = x.astype(dtype)
    ours, theirs = tm.Tensor(x.copy(), requires_grad=True), torch.tensor(x, requires_grad=True)
    out = F.max_pool2d(ours, 3, 2, 1)
    ref = torch.nn.functional.max_pool2d(theirs, 3, 2, 1)
    np.testing.assert_array_equal(out.data, ref.detach().numpy())
    cot = rng.standard_normal(out.shape).astype(dtype)
    out.backward(cot)
    ref.backward(torch.tensor(cot))
    # float32: where two windows pick the same input, the sum may round differently
    assert rel_error(ours.grad, theirs.grad.numpy()) <= TOL[np.dtype(dtype).type]


def test_output_size_rule_matches_torch_on_a_grid(torch):
    for size, k, s, d, ceil in itertools.product(range(1, 8), range(1, 4), range(1, 4), (1, 2), (False, True)):
        for p in range(k // 2 + 1):
            x = torch.zeros(1, 1, size, 1)
            try:
                expected = torch.nn.functional.max_pool2d(x, (k, 1), (s, 1), (p, 0), (d, 1), ceil).shape[2]
            except RuntimeError:  # torch refuses: output smaller than 1
                expected = None
            args = (size, k, s, p, d, ceil)
            if expected is None:
                assert pool_output_size(*args) < 1, args
                with pytest.raises(ValueError, match="too small"):
                    F.max_pool2d(np.zeros((1, 1, size, 1)), (k, 1), (s, 1), (p, 0), (d, 1), ceil)
            else:
                assert pool_output_size(*args) == expected, args


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_gradcheck(rng, config):
    # distinct values spaced far wider than the finite-difference step: no ties to flip
    x = rng.permutation(2 * 5 * 6).reshape(1, 2, 5, 6) * 0.1
    (err,) = gradcheck(_pool(config), [tm.Tensor(x, requires_grad=True)])
    assert err < 1e-8


def test_bad_input_is_named():
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(ValueError, match="4-D input.*got shape \\(1, 4, 4\\)"):
        F.max_pool2d(np.zeros((1, 4, 4)), 2)
    with pytest.raises(ValueError, match="padding \\(2, 2\\) must be between 0 and half the kernel size"):
        F.max_pool2d(x, 3, padding=2)
    with pytest.raises(ValueError, match="stride must be positive"):
        F.max_pool2d(x, 2, stride=0)
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair"):
        F.max_pool2d(x, 2.5)
    with pytest.raises(ValueError, match="too small for kernel_size=\\(5, 5\\)"):
        F.max_pool2d(x, 5)
    with pytest.raises(ValueError, match="lies wholly in the padding"):
        F.max_pool2d(x, 2, 1, 1, dilation=5)  # torch answers -inf with an index outside the image
