"""cross_entropy, binary_cross_entropy_with_logits, smooth_l1_loss against torch and finite differences."""
import numpy as np
import pytest
from helpers import assert_matches_torch

import tinymaskrcnn as tm
import tinymaskrcnn.functional as F
from tinymaskrcnn.core.gradcheck import gradcheck

DTYPES = [np.float64, np.float32]
REDUCTIONS = ["mean", "sum", "none"]


# ----- cross entropy ------------------------------------------------------------------------

CE_CASES = [  # (N, C, targets with ignore_index, ignore_index)
    (1, 2, [1], -100),
    (6, 5, [0, 4, -100, 2, 1, 1], -100),
    (7, 3, [2, 0, 2, 1, 2, 0, 1], 2),  # a real class as ignore_index
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.15])
@pytest.mark.parametrize("n,c,targets,ignore", CE_CASES)
def test_cross_entropy_matches_torch(torch, rng, dtype, reduction, weighted, smoothing, n, c, targets, ignore):
    weight = rng.uniform(0.2, 2.0, c).astype(dtype) if weighted else None
    kw = dict(ignore_index=ignore, reduction=reduction, label_smoothing=smoothing)
    assert_matches_torch(
        lambda x, t: F.cross_entropy(x, t, weight=weight, **kw),
        lambda x, t: torch.nn.functional.cross_entropy(x, t, weight=None if weight is None else torch.tensor(weight), **kw),
        [3 * rng.standard_normal((n, c)), np.array(targets)], dtype)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_all_ignored_is_nan_with_zero_gradient_like_torch(torch, smoothing):
    logits = np.arange(6.0).reshape(2, 3)
    x = tm.Tensor(logits.copy(), requires_grad=True)
    loss = F.cross_entropy(x, np.array([-100, -100]), label_smoothing=smoothing)
    ref = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor([-100, -100]), label_smoothing=smoothing)
    assert np.isnan(loss.item()) and np.isnan(ref.item())
    loss.backward()
    np.testing.assert_array_equal(x.grad, np.zeros((2, 3)))


# Against our own forward: a wrong formula passes here; test_cross_entropy_matches_torch catches it.
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_gradcheck(rng, reduction, smoothing):
    weight = rng.uniform(0.5, 2.0, 3)
    x = tm.Tensor(rng.standard_normal((4, 3)), requires_grad=True)
    fn = lambda x: F.cross_entropy(x, np.array([2, -100, 0, 1]), weight=weight, reduction=reduction,  # noqa: E731
                                   label_smoothing=smoothing)
    assert gradcheck(fn, [x])[0] < 1e-8


# ----- binary cross entropy with logits -----------------------------------------------------

BCE_SHAPE = (3, 4)
BCE_WEIGHTS = [None, BCE_SHAPE, (4,), (3, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight_shape", BCE_WEIGHTS, ids=str)
@pytest.mark.parametrize("pos_weight_shape", [None, (4,)], ids=str)
def test_bce_with_logits_matches_torch(torch, rng, dtype, reduction, weight_shape, pos_weight_shape):
    # input and target get gradients (soft mask targets are probabilities); weights are constants
    w, q = (None if s is None else rng.uniform(0.2, 2.0, s).astype(dtype) for s in (weight_shape, pos_weight_shape))
    tw, tq = (None if a is None else torch.tensor(a) for a in (w, q))
    assert_matches_torch(
        lambda x, t: F.binary_cross_entropy_with_logits(x, t, w, reduction=reduction, pos_weight=q),
        lambda x, t: torch.nn.functional.binary_cross_entropy_with_logits(x, t, tw, reduction=reduction, pos_weight=tq),
        [4 * rng.standard_normal(BCE_SHAPE), rng.uniform(0, 1, BCE_SHAPE)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_with_logits_is_stable_for_large_logits(torch, dtype):
    x = np.array([-800.0, -50.0, -20.0, 0.0, 20.0, 50.0, 800.0])
    t = np.array([1.0, 1.0, 0.0, 0.5, 1.0, 0.0, 0.0])
    q = np.array(3.0, dtype)
    assert_matches_torch(
        lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction="none", pos_weight=q),
        lambda x, t: torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none", pos_weight=torch.tensor(q)),
        [x, t], dtype)


# Against our own forward: a wrong formula passes here; test_bce_with_logits_matches_torch catches it.
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_gradcheck(rng, reduction):
    w, q = rng.uniform(0.5, 2, (2, 1)), rng.uniform(0.5, 2, (3,))
    inputs = [tm.Tensor(rng.standard_normal((2, 3)), requires_grad=True),
              tm.Tensor(rng.uniform(0, 1, (2, 3)), requires_grad=True)]
    fn = lambda x, t: F.binary_cross_entropy_with_logits(x, t, w, reduction=reduction, pos_weight=q)  # noqa: E731
    assert max(gradcheck(fn, inputs)) < 1e-8


def test_bce_with_logits_converts_constant_targets_to_the_input_dtype(rng):
    x = tm.Tensor(rng.standard_normal(4).astype(np.float32), requires_grad=True)
    loss = F.binary_cross_entropy_with_logits(x, np.array([0, 1, 1, 0]))
    loss.backward()
    assert loss.dtype == np.float32 and x.grad.dtype == np.float32


# ----- smooth L1 ----------------------------------------------------------------------------

BETAS = [1.0, 1 / 9, 0.5, 5.0, 0.0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("shape", [(7,), (5, 4)])
def test_smooth_l1_matches_torch(torch, rng, dtype, reduction, beta, shape):
    assert_matches_torch(
        lambda x, t: F.smooth_l1_loss(x, t, reduction=reduction, beta=beta),
        lambda x, t: torch.nn.functional.smooth_l1_loss(x, t, reduction=reduction, beta=beta),
        [rng.standard_normal(shape), rng.standard_normal(shape)], dtype)


# Against our own forward: a wrong formula passes here; test_smooth_l1_matches_torch catches it.
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", [1.0, 0.3, 0.0])
def test_smooth_l1_gradcheck(rng, reduction, beta):
    x, t = rng.standard_normal((2, 5)), rng.standard_normal((2, 5))
    x[np.abs(np.abs(x - t) - beta) < 1e-3] += 0.01  # keep the kinks out of the stencil
    inputs = [tm.Tensor(x, requires_grad=True), tm.Tensor(t, requires_grad=True)]
    assert max(gradcheck(lambda x, t: F.smooth_l1_loss(x, t, reduction=reduction, beta=beta), inputs)) < 1e-8


# ----- bad input ----------------------------------------------------------------------------

LOSSES = [
    ("cross_entropy", lambda **kw: F.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), **kw)),
    ("binary_cross_entropy_with_logits",
     lambda **kw: F.binary_cross_entropy_with_logits(np.zeros(2), np.zeros(2), **kw)),
    ("smooth_l1_loss", lambda **kw: F.smooth_l1_loss(np.zeros(2), np.zeros(2), **kw)),
]


@pytest.mark.parametrize("name,call", LOSSES, ids=[n for n, _ in LOSSES])
def test_unknown_reduction_is_named(name, call):
    with pytest.raises(ValueError, match=f"{name}: unknown reduction 'avg'; use one of 'none', 'mean', 'sum'"):
        call(reduction="avg")


def test_bad_targets_are_named():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="target shape \\(2, 1\\) must be \\(N,\\) = \\(2,\\)"):
        F.cross_entropy(x, np.zeros((2, 1), dtype=np.int64))
    with pytest.raises(TypeError, match="target must hold integer class indices, got dtype float64"):
        F.cross_entropy(x, np.zeros(2))
    with pytest.raises(ValueError, match="target value 3 is out of range for 3 classes"):
        F.cross_entropy(x, np.array([0, 3]))
    with pytest.raises(ValueError, match="input must be logits of shape \\(N, C\\)"):
        F.cross_entropy(np.zeros((2, 3, 4)), np.array([0, 1]))
    with pytest.raises(ValueError, match="weight must have shape \\(3,\\)"):
        F.cross_entropy(x, np.array([0, 1]), weight=np.ones(2))
    with pytest.raises(ValueError, match="cross_entropy: weight gets no gradient"):
        F.cross_entropy(x, np.array([0, 1]), weight=tm.Tensor(np.ones(3), requires_grad=True))
    with pytest.raises(ValueError, match="target shape \\(3, 2\\) must equal input shape \\(2, 3\\)"):
        F.binary_cross_entropy_with_logits(x, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="pos_weight shape \\(2,\\) does not broadcast"):
        F.binary_cross_entropy_with_logits(x, x, pos_weight=np.ones(2))
    with pytest.raises(ValueError, match="weight gets no gradient"):
        F.binary_cross_entropy_with_logits(x, x, tm.Tensor(np.ones(3), requires_grad=True))
    with pytest.raises(ValueError, match="smooth_l1_loss: target shape \\(2,\\) must equal input shape \\(2, 3\\)"):
        F.smooth_l1_loss(x, np.zeros(2))
    with pytest.raises(ValueError, match="beta must be >= 0"):
        F.smooth_l1_loss(x, x, beta=-1.0)
    with pytest.raises(TypeError, match="target dtype float32 differs from input dtype float64"):
        F.smooth_l1_loss(tm.Tensor(x), tm.Tensor(x.astype(np.float32), requires_grad=True))
