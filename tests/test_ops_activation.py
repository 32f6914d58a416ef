"""relu, sigmoid, softmax, log_softmax: forward and backward against torch, finite differences, errors."""
import warnings

import numpy as np
import pytest
from helpers import assert_matches_torch

import tinymaskrcnn as tm
import tinymaskrcnn.functional as F
from tinymaskrcnn.core.gradcheck import gradcheck

DTYPES = [np.float64, np.float32]
SHAPES = [(5,), (4, 1), (2, 3, 7, 9)]

# (name, ours, torch's): dim -1 and 1 cover the last and an inner axis.
OPS = [
    ("relu", F.relu, lambda x: x.relu()),
    ("sigmoid", F.sigmoid, lambda x: x.sigmoid()),
    ("softmax_last", lambda x: F.softmax(x, -1), lambda x: x.softmax(-1)),
    ("softmax_0", lambda x: F.softmax(x, 0), lambda x: x.softmax(0)),
    ("log_softmax_last", lambda x: F.log_softmax(x, -1), lambda x: x.log_softmax(-1)),
    ("log_softmax_0", lambda x: F.log_softmax(x, 0), lambda x: x.log_softmax(0)),
]
IDS = [o[0] for o in OPS]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name,ours,theirs", OPS, ids=IDS)
def test_matches_torch(torch, rng, dtype, shape, name, ours, theirs):
    assert_matches_torch(ours, theirs, [3 * rng.standard_normal(shape)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,ours,theirs", OPS, ids=IDS)
def test_extreme_inputs_stay_finite_and_match_torch(torch, dtype, name, ours, theirs):
    x = np.array([[-1000.0, -100.0, -20.0, 0.0], [20.0, 100.0, 1000.0, -3.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow in exp would warn
        assert_matches_torch(ours, theirs, [x], dtype)


@pytest.mark.parametrize("name,ours,theirs", OPS, ids=IDS)
def test_gradcheck(rng, name, ours, theirs):
    x = rng.standard_normal((3, 4))
    x[np.abs(x) < 1e-3] = 0.5  # keep relu's kink out of the finite-difference stencil
    (err,) = gradcheck(ours, [tm.Tensor(x, requires_grad=True)])
    assert err < 1e-8


@pytest.mark.parametrize("fn", [F.softmax, F.log_softmax])
def test_bad_dim_is_named(fn):
    x = tm.Tensor(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="dim 2 is out of range.*shape \\(2, 3\\)"):
        fn(x, 2)
    with pytest.raises(TypeError, match="dim must be an int"):
        fn(x, None)
