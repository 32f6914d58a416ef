"""batch_norm (training with running statistics, eval) and frozen_batch_norm against torch."""
import numpy as np
import pytest
from helpers import TOL, assert_matches_torch

import tinymaskrcnn as tm
import tinymaskrcnn.functional as F
from tinymaskrcnn.core.gradcheck import gradcheck, rel_error

DTYPES = [np.float64, np.float32]
SHAPES = [(2, 3, 5, 7), (4, 3), (3, 3, 5), (1, 3, 2, 2)]
# helpers' cotangent comes from default_rng(seed); seed 0 would equal the rng fixture's first
# draw, and a cotangent equal to x is one whose training-mode gradient cancels to ~0.
SEED = 1


def _stats(rng, c):
    return rng.standard_normal(c), rng.uniform(0.5, 2.0, c)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_eval_matches_torch(torch, rng, dtype, shape, affine):
    rm, rv = (s.astype(dtype) for s in _stats(rng, shape[1]))
    arrays = [rng.standard_normal(shape)] + ([rng.standard_normal(3), rng.standard_normal(3)] if affine else [])
    assert_matches_torch(
        lambda x, *wb: F.batch_norm(x, rm, rv, *wb, eps=1e-3),
        lambda x, *wb: torch.nn.functional.batch_norm(x, torch.tensor(rm), torch.tensor(rv), *wb, eps=1e-3),
        arrays, dtype, seed=SEED)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_training_matches_torch(torch, rng, dtype, shape, affine):
    arrays = [2 + 3 * rng.standard_normal(shape)] + ([rng.standard_normal(3), rng.standard_normal(3)] if affine else [])
    assert_matches_torch(
        lambda x, *wb: F.batch_norm(x, None, None, *wb, training=True),
        lambda x, *wb: torch.nn.functional.batch_norm(x, None, None, *wb, training=True),
        arrays, dtype, seed=SEED)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.1, 0.3, 1.0])
def test_training_updates_running_statistics_like_torch(torch, rng, dtype, momentum):
    rm, rv = (s.astype(dtype) for s in _stats(rng, 3))
    ours_rm, ours_rv = tm.Tensor(rm.copy()), rv.copy()  # a Tensor buffer and a plain array
    torch_rm, torch_rv = torch.tensor(rm), torch.tensor(rv)
    for step in range(3):  # several steps: the update compounds
        x = (1 + step + 2 * rng.standard_normal((2, 3, 4, 5))).astype(dtype)
        F.batch_norm(tm.Tensor(x), ours_rm, ours_rv, training=True, momentum=momentum)
        torch.nn.functional.batch_norm(torch.tensor(x), torch_rm, torch_rv, training=True, momentum=momentum)
    tol = TOL[np.dtype(dtype).type]
    assert ours_rm.data.dtype == dtype and ours_rv.dtype == dtype
    assert rel_error(ours_rm.data, torch_rm.numpy()) <= tol
    assert rel_error(ours_rv, torch_rv.numpy()) <= tol


def test_eval_does_not_touch_running_statistics(rng):
    rm, rv = _stats(rng, 3)
    before = rm.copy(), rv.copy()
    F.batch_norm(rng.standard_normal((2, 3, 4)), rm, rv)
    np.testing.assert_array_equal(rm, before[0])
    np.testing.assert_array_equal(rv, before[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 3, 1, 1)])
def test_frozen_matches_torchvision(torch, rng, dtype, shape):
    from torchvision.ops.misc import FrozenBatchNorm2d

    w, b = rng.standard_normal(3).astype(dtype), rng.standard_normal(3).astype(dtype)
    rm, rv = (s.astype(dtype) for s in _stats(rng, 3))
    module = FrozenBatchNorm2d(3).to(getattr(torch, np.dtype(dtype).name))
    for name, v in (("weight", w), ("bias", b), ("running_mean", rm), ("running_var", rv)):
        getattr(module, name).copy_(torch.tensor(v))
    assert_matches_torch(lambda x: F.frozen_batch_norm(x, w, b, rm, rv), module,
                         [rng.standard_normal(shape)], dtype, seed=SEED)


def test_gradcheck_training(rng):
    inputs = [tm.Tensor(rng.standard_normal((3, 2, 2, 3)), requires_grad=True),
              tm.Tensor(rng.standard_normal(2), requires_grad=True),
              tm.Tensor(rng.standard_normal(2), requires_grad=True)]
    errors = gradcheck(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), inputs, seed=SEED)
    assert max(errors) < 1e-7


def test_gradcheck_eval_and_frozen(rng):
    rm, rv = _stats(rng, 2)
    x, w, b = (tm.Tensor(rng.standard_normal(s), requires_grad=True) for s in [(2, 2, 3), (2,), (2,)])
    assert max(gradcheck(lambda x, w, b: F.batch_norm(x, rm, rv, w, b), [x, w, b])) < 1e-8
    (err,) = gradcheck(lambda x: F.frozen_batch_norm(x, w.data, b.data, rm, rv), [x])
    assert err < 1e-8


def test_bad_input_is_named(rng):
    x = rng.standard_normal((2, 3, 4))
    rm, rv = _stats(rng, 3)
    with pytest.raises(ValueError, match="weight shape \\(2,\\) must be \\(3,\\)"):
        F.batch_norm(x, rm, rv, weight=np.ones(2))
    with pytest.raises(ValueError, match="eval mode .*running_mean and running_var"):
        F.batch_norm(x, None, None)
    with pytest.raises(ValueError, match="give both running_mean and running_var"):
        F.batch_norm(x, rm, None, training=True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(rng.standard_normal((1, 3)), None, None, training=True)
    with pytest.raises(ValueError, match="momentum=None"):
        F.batch_norm(x, rm, rv, training=True, momentum=None)
    with pytest.raises(TypeError, match="running_var dtype float32 differs"):
        F.batch_norm(x, rm, rv.astype(np.float32))
    with pytest.raises(ValueError, match="at least 2 axes"):
        F.batch_norm(np.zeros(3), rm, rv)
    with pytest.raises(ValueError, match="frozen_batch_norm: weight requires a gradient"):
        F.frozen_batch_norm(x, tm.Tensor(np.ones(3), requires_grad=True), np.zeros(3), rm, rv)
    with pytest.raises(ValueError, match="frozen_batch_norm: bias is required"):
        F.frozen_batch_norm(x, np.ones(3), None, rm, rv)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (3, 3, 5), (1, 3, 2, 2)])
@pytest.mark.parametrize("affine", [True, False])
def test_instance_norm_matches_torch(torch, rng, dtype, shape, affine):
    arrays = [2 + 3 * rng.standard_normal(shape)] + ([rng.standard_normal(3), rng.standard_normal(3)] if affine else [])
    assert_matches_torch(
        lambda x, *wb: F.instance_norm(x, *wb, eps=1e-3),
        lambda x, *wb: torch.nn.functional.instance_norm(x, None, None, *wb, eps=1e-3),
        arrays, dtype, seed=SEED)


def test_instance_norm_gradcheck(rng):
    inputs = [tm.Tensor(rng.standard_normal((3, 2, 2, 3)), requires_grad=True),
              tm.Tensor(rng.standard_normal(2), requires_grad=True),
              tm.Tensor(rng.standard_normal(2), requires_grad=True)]
    assert max(gradcheck(lambda x, w, b: F.instance_norm(x, w, b), inputs, seed=SEED)) < 1e-7


def test_instance_norm_module_matches_torch_and_ignores_the_batch(torch, rng):
    ours = tm.nn.InstanceNorm2d(3, affine=True).to(dtype=np.float64)
    theirs = torch.nn.InstanceNorm2d(3, affine=True).double()
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.uniform_(-1, 1)
    ours.load_state_dict({k: v.numpy().copy() for k, v in theirs.state_dict().items()})
    assert list(ours.state_dict()) == ["weight", "bias"]
    x = rng.standard_normal((2, 3, 4, 5))
    for mode in (True, False):
        ours.train(mode), theirs.train(mode)
        out = ours(tm.Tensor(x)).data
        assert rel_error(out, theirs(torch.tensor(x)).detach().numpy()) < 1e-12
        assert rel_error(out[1:], ours(tm.Tensor(x[1:])).data) < 1e-12  # the other sample plays no part
    with pytest.raises(ValueError, match=r"track_running_stats=True\) is not supported"):
        tm.nn.InstanceNorm2d(3, track_running_stats=True)
