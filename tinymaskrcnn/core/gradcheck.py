"""Finite-difference gradient checks, in float64.

The analytic gradient from ``backward`` is compared with the central difference

    dL/dx_i  ~  (L(x + h e_i) - L(x - h e_i)) / 2h,      L(x) = sum(f(x) * G)

for a fixed random cotangent G (so every output element is weighted, as in CS231n's
``eval_numerical_gradient_array``). The truncation error is O(h^2) and the rounding error
O(eps/h); h = 1e-6 balances them in float64 to about 1e-9 relative.
"""
import numpy as np

from .autograd import Tensor


def rel_error(a, b):
    """||a - b|| / max(||a||, ||b||): one number for how far two arrays are apart."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denom = max(np.linalg.norm(a), np.linalg.norm(b), 1e-300)
    return float(np.linalg.norm(a - b) / denom)


def numerical_gradient(f, x, cotangent, h=1e-6):
    """Central-difference gradient of sum(f(x) * cotangent) with respect to the array ``x``.

    ``f`` takes no arguments and reads ``x``, which is perturbed in place and restored.
    """
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        plus = np.sum(f() * cotangent)
        x[i] = old - h
        minus = np.sum(f() * cotangent)
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
        it.iternext()
    return grad


def gradcheck(fn, inputs, h=1e-6, seed=0):
    """Compare ``backward`` with finite differences for ``fn(*inputs)``.

    ``inputs`` are float64 Tensors; those with ``requires_grad`` are checked. Returns a list
    of relative errors, one per checked input.
    """
    for t in inputs:
        if isinstance(t, Tensor) and t.requires_grad and t.dtype != np.float64:
            raise TypeError(f"gradcheck needs float64 inputs, got {t.dtype}: rounding in float32 swamps the check")
    out = fn(*inputs)
    cotangent = np.random.default_rng(seed).standard_normal(out.shape)
    for t in inputs:
        if isinstance(t, Tensor):
            t.grad = None
    out.backward(cotangent)

    def value():
        return fn(*[Tensor(t.data) if isinstance(t, Tensor) else t for t in inputs]).data

    errors = []
    for t in inputs:
        if isinstance(t, Tensor) and t.requires_grad:
            numeric = numerical_gradient(value, t.data, cotangent, h)
            analytic = t.grad if t.grad is not None else np.zeros_like(t.data)
            errors.append(rel_error(analytic, numeric))
    return errors
