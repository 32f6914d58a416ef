"""Helpers shared by the tests: comparing ops and modules with torch, reading COCO files,
boxes of masks."""
import contextlib
import io

import numpy as np

import tinymaskrcnn as tm
from tinymaskrcnn.core.gradcheck import rel_error

TOL = {np.float64: 1e-10, np.float32: 1e-5}


def _run_both(tm_fn, torch_fn, ours, theirs, dtype, seed, backward):
    """Outputs of ``tm_fn(*ours)`` and ``torch_fn(*theirs)`` (a tensor or a dict of them, same
    keys, shapes and ``dtype``): returns ({key: relative error}, torch's outputs). With
    ``backward``, one random cotangent per output (seeded apart from the `rng` fixture, so it is
    never a copy of an input, which can cancel a gradient) is pulled back through both."""
    import torch

    out, ref = tm_fn(*ours), torch_fn(*theirs)
    outs, refs = (out, ref) if isinstance(ref, dict) else ({"": out}, {"": ref})
    assert list(outs) == list(refs), f"outputs {list(outs)}, torch gives {list(refs)}"
    errors = {}
    for k in refs:
        assert outs[k].dtype == np.dtype(dtype), f"output {k} dtype {outs[k].dtype}, expected {np.dtype(dtype)}"
        assert outs[k].shape == tuple(refs[k].shape), f"output {k} shape {outs[k].shape}, torch gives {tuple(refs[k].shape)}"
        errors[k] = rel_error(outs[k].data, refs[k].detach().numpy())
    if backward:
        rng = np.random.default_rng(seed)
        cots = {k: rng.standard_normal(outs[k].shape).astype(dtype) for k in outs}
        sum((outs[k] * cots[k]).sum() for k in outs).backward()
        torch.autograd.backward([refs[k] for k in refs], [torch.tensor(cots[k]) for k in refs])
    return errors, ref


def compare_with_torch(tm_fn, torch_fn, arrays, dtype, requires_grad=None, seed=12345):
    """Run ``tm_fn`` on Tensors and ``torch_fn`` on torch tensors made from the same ``arrays``.

    Floating arrays are cast to ``dtype``; integer arrays (labels, indices) are passed as they
    are and get no gradient. A random cotangent is pulled back through both. Returns
    ``(output_error, [gradient_error per input that requires a gradient])``, relative errors
    measured in float64 (the largest over the outputs when there are several).
    """
    import torch

    if requires_grad is None:
        requires_grad = [np.asarray(a).dtype.kind == "f" for a in arrays]
    arrays = [np.asarray(a, dtype=dtype) if np.asarray(a).dtype.kind == "f" else np.asarray(a) for a in arrays]
    ours = [tm.Tensor(a.copy(), requires_grad=g) for a, g in zip(arrays, requires_grad)]
    theirs = [torch.tensor(a.copy(), requires_grad=g) for a, g in zip(arrays, requires_grad)]
    errors, _ = _run_both(tm_fn, torch_fn, ours, theirs, dtype, seed, any(requires_grad))
    grad_errs = []
    for o, t, g in zip(ours, theirs, requires_grad):
        if g:
            assert o.grad is not None, "no gradient reached an input that requires one"
            assert o.grad.dtype == np.dtype(dtype), f"gradient dtype {o.grad.dtype}"
            grad_errs.append(rel_error(o.grad, t.grad.numpy()))
    return max(errors.values()), grad_errs


def assert_matches_torch(tm_fn, torch_fn, arrays, dtype, requires_grad=None, seed=12345):
    """compare_with_torch, asserting every error is within the issue's tolerance for ``dtype``."""
    tol = TOL[np.dtype(dtype).type]
    out_err, grad_errs = compare_with_torch(tm_fn, torch_fn, arrays, dtype, requires_grad, seed)
    assert out_err <= tol, f"forward relative error {out_err:.3g} > {tol:g}"
    for i, e in enumerate(grad_errs):
        assert e <= tol, f"gradient {i} relative error {e:.3g} > {tol:g}"


def compare_module_with_torch(ours, theirs, x, seed=0, backward=True):
    """Run our module and torch's (holding the same weights, in the same mode) on the array
    ``x``, as compare_with_torch runs two functions, and pull one random cotangent per output
    back. Returns ({what: relative error}, torch's output): "output" (or "output <key>" for each
    key of a dict output) and, with ``backward``, "input gradient" and "gradient of <name>" for
    every trainable parameter. Asserts that both sides train the same parameters and that a
    frozen one gets no gradient."""
    import torch

    ours_x = tm.Tensor(x.copy(), requires_grad=backward)
    theirs_x = torch.tensor(x, requires_grad=backward)
    out_errors, ref = _run_both(ours, theirs, [ours_x], [theirs_x], x.dtype, seed, backward)
    errors = {f"output {k}".strip(): e for k, e in out_errors.items()}
    if not backward:
        return errors, ref
    errors["input gradient"] = rel_error(ours_x.grad, theirs_x.grad.numpy())
    theirs_params = dict(theirs.named_parameters())
    trainable = {name for name, p in theirs_params.items() if p.requires_grad}
    assert {name for name, p in ours.named_parameters() if p.requires_grad} == trainable
    for name, p in ours.named_parameters():
        if name not in trainable:
            assert p.grad is None, f"frozen parameter {name} got a gradient"
            continue
        assert p.grad is not None, f"no gradient reached {name}"
        errors[f"gradient of {name}"] = rel_error(p.grad, theirs_params[name].grad.numpy())
    return errors, ref


def load_coco(ann_file):
    """pycocotools' index of an annotation file, without the lines it prints."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(ann_file)


def tight_box(mask):
    """[x1, y1, x2, y2] of the smallest box holding every nonzero pixel of ``mask`` (H, W)."""
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


# The peak resident memory (MB) of the process that runs it, for the scripts the memory tests run
# in a fresh interpreter: /proc/self/status's VmHWM. Not ru_maxrss, which on Linux survives execve:
# a child started by a pytest process that once held 7 GB reports 7 GB, and a before/after
# difference of it reads 0 whatever the child does.
PEAK_RSS_MB = """
def peak_rss_mb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
"""
