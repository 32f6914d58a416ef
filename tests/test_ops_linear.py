"""linear: y = x W^T + b over any leading axes, against torch and finite differences."""
import numpy as np
import pytest
from helpers import assert_matches_torch

import tinymaskrcnn as tm
import tinymaskrcnn.functional as F
from tinymaskrcnn.core.gradcheck import gradcheck

DTYPES = [np.float64, np.float32]
INPUT_SHAPES = [(5,), (1, 5), (3, 5), (2, 3, 5), (2, 1, 3, 5)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", INPUT_SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_torch(torch, rng, dtype, shape, with_bias):
    arrays = [rng.standard_normal(shape), rng.standard_normal((7, 5))]
    if with_bias:
        arrays.append(rng.standard_normal(7))
    assert_matches_torch(F.linear, torch.nn.functional.linear, arrays, dtype)


def test_only_needed_gradients_are_computed(rng):
    x = tm.Tensor(rng.standard_normal((2, 3)))
    w = tm.Tensor(rng.standard_normal((4, 3)), requires_grad=True)
    F.linear(x, w).sum().backward()
    assert x.grad is None and w.grad.shape == (4, 3)


@pytest.mark.parametrize("with_bias", [True, False])
def test_gradcheck(rng, with_bias):
    inputs = [tm.Tensor(rng.standard_normal((2, 3, 4)), requires_grad=True),
              tm.Tensor(rng.standard_normal((5, 4)), requires_grad=True)]
    if with_bias:
        inputs.append(tm.Tensor(rng.standard_normal(5), requires_grad=True))
    assert max(gradcheck(F.linear, inputs)) < 1e-8


def test_bad_shapes_and_dtypes_are_named():
    x, w = np.zeros((2, 3)), np.zeros((4, 3))
    with pytest.raises(ValueError, match="in_features=3"):
        F.linear(np.zeros((2, 5)), w)
    with pytest.raises(ValueError, match="weight must be 2-D"):
        F.linear(x, np.zeros(3))
    with pytest.raises(ValueError, match="bias shape \\(3,\\) must be"):
        F.linear(x, w, np.zeros(3))
    with pytest.raises(TypeError, match="weight dtype float32 differs from input dtype float64"):
        F.linear(x, w.astype(np.float32))
