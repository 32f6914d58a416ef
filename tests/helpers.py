"""Helpers for comparing an op with its torch counterpart."""
import numpy as np

import tinymaskrcnn as tm
from tinymaskrcnn.gradcheck import rel_error

TOL = {np.float64: 1e-10, np.float32: 1e-5}


def compare_with_torch(tm_fn, torch_fn, arrays, dtype, requires_grad=None, seed=12345):
    """Run ``tm_fn`` on Tensors and ``torch_fn`` on torch tensors made from the same ``arrays``.

    Floating arrays are cast to ``dtype``; integer arrays (labels, indices) are passed as they
    are and get no gradient. A random cotangent (seeded apart from the `rng` fixture, so it is
    never a copy of the input, which can cancel a gradient) is pulled back through both. Returns
    ``(output_error, [gradient_error per input that requires a gradient])``, relative errors
    measured in float64.
    """
    import torch

    if requires_grad is None:
        requires_grad = [np.asarray(a).dtype.kind == "f" for a in arrays]
    arrays = [np.asarray(a, dtype=dtype) if np.asarray(a).dtype.kind == "f" else np.asarray(a) for a in arrays]
    ours = [tm.Tensor(a.copy(), requires_grad=g) for a, g in zip(arrays, requires_grad)]
    theirs = [torch.tensor(a.copy(), requires_grad=g) for a, g in zip(arrays, requires_grad)]
    out, ref = tm_fn(*ours), torch_fn(*theirs)
    assert out.dtype == np.dtype(dtype), f"output dtype {out.dtype}, expected {np.dtype(dtype)}"
    assert out.shape == tuple(ref.shape), f"output shape {out.shape}, torch gives {tuple(ref.shape)}"
    out_err = rel_error(out.data, ref.detach().numpy())
    grad_errs = []
    if any(requires_grad):
        cot = np.random.default_rng(seed).standard_normal(out.shape).astype(dtype)
        out.backward(cot)
        ref.backward(torch.tensor(cot))
        for o, t, g in zip(ours, theirs, requires_grad):
            if g:
                assert o.grad is not None, "no gradient reached an input that requires one"
                assert o.grad.dtype == np.dtype(dtype), f"gradient dtype {o.grad.dtype}"
                grad_errs.append(rel_error(o.grad, t.grad.numpy()))
    return out_err, grad_errs


def assert_matches_torch(tm_fn, torch_fn, arrays, dtype, requires_grad=None, seed=12345):
    """compare_with_torch, asserting every error is within the issue's tolerance for ``dtype``."""
    tol = TOL[np.dtype(dtype).type]
    out_err, grad_errs = compare_with_torch(tm_fn, torch_fn, arrays, dtype, requires_grad, seed)
    assert out_err <= tol, f"forward relative error {out_err:.3g} > {tol:g}"
    for i, e in enumerate(grad_errs):
        assert e <= tol, f"gradient {i} relative error {e:.3g} > {tol:g}"

